"""What the demo records while it runs, from outside the pipeline's processes.

* :class:`SampleTracer` reads the samples topic the way the trainer does
  (``read_committed``, every partition from the start) and writes each sample with the
  wall-clock time it became visible: ``RUN/samples.tsv.gz``, one line per sample,
  ``partition TAB offset TAB seen_ms TAB sample JSON`` (the Sample JSON has no tab).
* :class:`Progress` samples every stage's counters once a second into
  ``RUN/progress.jsonl`` (Kafka end offsets of the inputs, samples seen, the trainer's and
  the server's ``/metrics``, and the CPU seconds each process of the run has used so far,
  :func:`group_cpu_s`) and prints a line every ``progress_every_s``.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Progress", "SampleTracer", "group_cpu_s", "scrape"]

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _now_ms() -> int:
    return int(time.time() * 1000)


def scrape(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """The unlabelled series of a Prometheus text endpoint (empty when it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (http://127.0.0.1)
            text = r.read().decode()
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def group_cpu_s(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the live processes of each process group
    (name -> pgid; a child of the demo leads its own group, with what it started, e.g.
    PyFlink's JVM)."""
    want = {pgid: name for name, pgid in groups.items()}
    out = dict.fromkeys(groups, 0.0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        name = want.get(int(fields[2]))
        if name is not None:
            out[name] += (int(fields[11]) + int(fields[12])) * _TICK_S
    return out


class SampleTracer(threading.Thread):
    """Consumes the samples topic (read_committed) into ``samples.tsv.gz`` (module doc)."""

    def __init__(self, bootstrap: str, topic: str, path: Path) -> None:
        super().__init__(name="sample-tracer", daemon=True)
        self.bootstrap, self.topic, self.path = bootstrap, topic, path
        self.stop = threading.Event()
        self.count = 0
        self.last_seen_ms = 0
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                group_id=None,
                isolation_level="read_committed",
                fetch_max_wait_ms=50,
                auto_offset_reset="earliest",
            )
        except Exception as e:
            self.error = e
            self.ready.set()
            return
        out = gzip.open(self.path, "wt", compresslevel=1)  # noqa: SIM115 (closed in finally)
        try:
            parts = None
            while not parts and not self.stop.is_set():
                parts = consumer.partitions_for_topic(self.topic)
                if not parts:
                    time.sleep(0.2)
            tps = [TopicPartition(self.topic, p) for p in sorted(parts or [])]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            self.ready.set()
            while not self.stop.is_set():
                got = consumer.poll(timeout_ms=100)
                now = _now_ms()
                for tp, recs in got.items():
                    head = f"{tp.partition}\t"
                    tail = f"\t{now}\t"
                    out.write(  # one write per partition and poll, the values left as they are
                        "".join([f"{head}{r.offset}{tail}{r.value.decode()}\n" for r in recs])
                    )
                    self.count += len(recs)
                if got:
                    self.last_seen_ms = now
        except Exception as e:  # reported by the runner
            self.error = e
        finally:
            self.ready.set()
            out.close()
            consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=30)


class Progress(threading.Thread):
    """Counters of every stage, once a second, into ``progress.jsonl`` (module doc)."""

    def __init__(
        self,
        path: Path,
        *,
        bootstrap: str,
        inputs: list[str],
        tracer: SampleTracer,
        trainer_url: str,
        server_url: str,
        say: Callable[[str], None],
        every_s: float = 5.0,
        cpu: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        super().__init__(name="progress", daemon=True)
        self.path, self.bootstrap, self.inputs = path, bootstrap, inputs
        self.tracer, self.trainer_url, self.server_url = tracer, trainer_url, server_url
        self.say, self.every_s, self.cpu = say, every_s, cpu
        self.stop = threading.Event()
        self.latest: dict[str, Any] = {}
        self.started = time.monotonic()

    def _ends(self, consumer: Any) -> dict[str, int]:
        from kafka import TopicPartition

        out = {}
        for topic in self.inputs:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            out[topic] = sum(consumer.end_offsets(tps).values()) if tps else 0
        return out

    def sample(self, consumer: Any) -> dict[str, Any]:
        tm = scrape(self.trainer_url)
        sm = scrape(self.server_url)
        ends = self._ends(consumer) if consumer is not None else {}
        rec = {
            "w": _now_ms(),
            "events": sum(ends.values()),
            "inputs": ends,
            "samples": self.tracer.count,
            "trained": int(tm.get("fluxrec_trainer_samples_total", 0)),
            "trainer_lag": int(tm.get("fluxrec_trainer_lag", 0)),
            "published": int(tm.get("fluxrec_trainer_export_published_total", 0)),
            "refused": int(tm.get("fluxrec_trainer_export_refused_total", 0)),
            "sequence": int(tm.get("fluxrec_trainer_export_sequence", -1)),
            "applied": int(sm.get("fluxrec_server_applied_versions_total", 0)),
            "version": int(sm.get("fluxrec_server_version", -1)),
            "scored": int(sm.get("fluxrec_server_scored_total", 0)),
        }
        if self.cpu is not None:
            rec["cpu"] = {k: round(v, 2) for k, v in self.cpu().items()}
        self.latest = rec
        return rec

    def line(self, rec: dict[str, Any]) -> str:
        t = time.monotonic() - self.started
        return (
            f"[{t:5.0f}s] events {rec['events']:>8,} | samples {rec['samples']:>8,} | "
            f"trained {rec['trained']:>8,} (lag {rec['trainer_lag']}) | published "
            f"v{rec['sequence']} | server v{rec['version']} ({rec['applied']} applied, "
            f"{rec['scored']:,} scored)"
        )

    def run(self) -> None:
        from kafka import KafkaConsumer

        try:
            consumer: Any = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        except Exception:
            consumer = None
        last_say = time.monotonic()
        with self.path.open("a", buffering=1) as f:
            while not self.stop.wait(1.0):
                try:
                    rec = self.sample(consumer)
                except Exception as e:  # a broker hiccup must not end the demo
                    rec = {"w": _now_ms(), "error": f"{type(e).__name__}: {e}"}
                f.write(json.dumps(rec) + "\n")
                if "error" not in rec and time.monotonic() - last_say >= self.every_s:
                    self.say(self.line(rec))
                    last_say = time.monotonic()
        if consumer is not None:
            consumer.close()

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=30)
