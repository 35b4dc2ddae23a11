"""``fluxrec demo``: replay -> join -> trainer + exporter -> scoring server, measured.

One run, in order (every process gets ``RUN/config.yaml``; logs in ``RUN/logs/``)::

    stack up (what is not running)     topics of the run
    fluxrec serve      the example scoring server  (--apply-log RUN/server_applied.jsonl)
    fluxrec train      trainer + exporter thread    (--trace RUN/trainer_trace.jsonl)
    demo join          the Flink join, MiniCluster  (Prometheus on a free port)
    tracer, progress   samples as they become visible, counters of every stage
    demo replay        live, event time == wall clock (RUN/events.jsonl.gz, served.jsonl.gz)
    -- the replay ends (or Ctrl-C) --
    drain: the join is stopped with a savepoint that closes every open window; the
    trainer catches up; a version covering every sample is published and applied
    stop trainer (final checkpoint and export), then the server; collect dead letters,
    reconciliation and manifests; delete the run's topics; stop what the run started
    fluxrec report RUN

Every child runs in its own process group, stopped with SIGTERM (SIGKILL after a
timeout), and its group is checked to be empty at the end: nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from demo.settings import DemoError, DemoOptions, check_options, run_config
from demo.trace import Progress, SampleTracer, group_cpu_s, scrape
from fluxrec.config import Config, default_config_path, load_config
from fluxrec.testing import free_port

__all__ = ["Child", "DemoRun", "run_demo"]

Say = Callable[[str], None]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Child:
    """A process of the run, in its own process group, output to ``log``."""

    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = None

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops us in order
        )
        return self

    @property
    def pid(self) -> int:
        return -1 if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def send(self, sig: int) -> None:
        if self.alive() and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Signal, wait, then SIGKILL the process and whatever is left of its group."""
        if self.proc is None:
            return None
        self.send(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=30)
        self.kill_group()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def kill_group(self) -> None:
        """SIGKILL what remains of the child's process group (e.g. a JVM it started)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)

    def group_alive(self) -> bool:
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


@dataclass
class DemoRun:
    """What a finished run left: its folder, and the report's summary (if it made one)."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    problems: list[str] = field(default_factory=list)


class _Run:
    """The state of one run (see the module doc for the sequence)."""

    def __init__(self, opts: DemoOptions, say: Say) -> None:
        check_options(opts)
        self.opts, self.say = opts, say
        self.base_path = Path(opts.config or default_config_path())
        self.base = load_config(self.base_path)
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.dir = (opts.run_dir or Path("runs") / self.run_id).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.ports = {"trainer": free_port(), "server": free_port(), "join": free_port()}
        doc = run_config(
            self.base, self.base_path, opts, run_id=self.run_id, run_dir=self.dir, ports=self.ports
        )
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(
            "# written by `fluxrec demo`: the deployment file of this run's processes\n"
            + yaml.safe_dump(doc, sort_keys=False)
        )
        self.cfg: Config = load_config(self.config_path)
        self._check_log()
        self.children: dict[str, Child] = {}
        self.started_services: list[str] = []
        self.tracer: SampleTracer | None = None
        self.progress: Progress | None = None
        self.meta: dict[str, Any] = {
            "run_id": self.run_id,
            "argv": sys.argv,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
            "base_config": str(self.base_path.resolve()),
            "ports": self.ports,
            "times": {"start_ms": _now_ms()},
        }

    def _check_log(self) -> None:
        """Read the log before anything starts: a bad one fails here, in one line."""
        from demo.replay import plan_times
        from replay.run import open_configured_source

        rc = self.cfg.replay
        if rc.source == "synthetic":
            return
        source = open_configured_source(self.cfg)
        if plan_times(source, rc.limit) is None:
            raise DemoError(f"{rc.path}: the log has no impression to replay")
        skipped = source.stats()
        if skipped:
            self.say(
                "   log rows skipped: "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items()))
                + "".join(f"\n     first {k}: {v}" for k, v in sorted(source.notes().items()))
            )

    # ------------------------------------------------------------------ helpers

    def mark(self, name: str) -> None:
        self.meta["times"][name] = _now_ms()

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def child(self, name: str, args: list[str]) -> Child:
        c = Child(name, args, self.dir / "logs" / f"{name}.log").start()
        self.children[name] = c
        return c

    def check_alive(self, *names: str) -> None:
        for n in names:
            c = self.children.get(n)
            if c is not None and not c.alive():
                raise DemoError(
                    f"the {n} process exited with {c.proc.returncode if c.proc else '?'}; "
                    f"its log ({c.log}) ends with:\n{c.tail()}"
                )

    def wait(self, what: str, cond: Callable[[], bool], timeout_s: float, *alive: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            self.check_alive(*alive)
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.2)

    @property
    def urls(self) -> dict[str, str]:
        return {
            "trainer": f"http://127.0.0.1:{self.ports['trainer']}/metrics",
            "server": f"http://127.0.0.1:{self.ports['server']}",
            "join": f"http://127.0.0.1:{self.ports['join']}/metrics",
        }

    # ------------------------------------------------------------------ phases

    def stack_up(self) -> None:
        from fluxrec.stack import Stack
        from fluxrec.topics import ensure_topics

        self.say("== stack")
        stack = Stack(self.base)
        self.started_services = stack.up()
        for st in stack.status():
            note = " (started for this run)" if st.name in self.started_services else ""
            self.say(f"   {st.name:8} {st.address:32} {st.state}{note}")
        topics = list(self.cfg.kafka.topics.all().values())
        ensure_topics(self.cfg.kafka.bootstrap, topics, self.cfg.kafka.partitions)
        self.meta["topics"] = topics

    def start_pipeline(self) -> None:
        cfg, d = str(self.config_path), self.dir
        self.say(f"== pipeline (run {self.run_id}, folder {d})")
        self.child(
            "server",
            self._python(
                "-m",
                "fluxrec.cli",
                "serve",
                "--config",
                cfg,
                "--port",
                str(self.ports["server"]),
                "--apply-log",
                str(d / "server_applied.jsonl"),
            ),
        )
        self.child(
            "trainer",
            self._python(
                "-m",
                "demo.train",
                "--config",
                cfg,
                "--trace",
                str(d / "trainer_trace.jsonl"),
            ),
        )
        self.child(
            "join",
            self._python(
                "-m",
                "demo.join",
                "--config",
                cfg,
                "--prometheus-port",
                str(self.ports["join"]),
                "--log-dir",
                str(d / "logs" / "flink"),
                "--savepoint-dir",
                str(d / "flink" / "savepoints"),
            ),
        )
        self.wait(
            "the scoring server",
            lambda: bool(scrape(self.urls["server"] + "/metrics")),
            120,
            "server",
        )
        self.say(f"   server   {self.urls['server']}  (POST /score, GET /healthz, /metrics)")
        self.wait("the trainer", lambda: bool(scrape(self.urls["trainer"])), 180, "trainer")
        self.say(f"   trainer  {self.urls['trainer']}")
        self.wait("the join job", self._join_checkpointed, 300, "join", "trainer", "server")
        self.say(f"   join     {self.urls['join']}  (Flink metrics)")
        self.mark("pipeline_ready_ms")

    def _join_checkpointed(self) -> bool:
        """The job runs every task: its first checkpoint completed."""
        import urllib.request

        try:
            with urllib.request.urlopen(self.urls["join"], timeout=2) as r:  # noqa: S310
                text = r.read().decode()
        except (OSError, ValueError):
            return False
        for line in text.splitlines():
            if line.startswith("flink_jobmanager_job_numberOfCompletedCheckpoints"):
                with contextlib.suppress(ValueError):
                    return float(line.rsplit(" ", 1)[1]) >= 1
        return False

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process of the run (progress.jsonl ``cpu``): the
        children, the stack's services and this process (tracer and progress)."""
        groups = {name: c.pid for name, c in self.children.items() if c.pid > 0}
        groups |= self.meta.get("service_pids", {})
        out = group_cpu_s(groups)
        t = os.times()
        out["demo"] = t.user + t.system
        return out

    def start_tracing(self) -> None:
        from fluxrec.stack import Stack

        self.meta["service_pids"] = {
            st.name: st.pid for st in Stack(self.base).status() if st.pid is not None
        }
        t = self.cfg.kafka.topics
        self.tracer = SampleTracer(self.cfg.kafka.bootstrap, t.samples, self.dir / "samples.tsv.gz")
        self.tracer.start()
        self.tracer.ready.wait(30)
        self.progress = Progress(
            self.dir / "progress.jsonl",
            bootstrap=self.cfg.kafka.bootstrap,
            inputs=[t.impressions, t.actions],
            tracer=self.tracer,
            trainer_url=self.urls["trainer"],
            server_url=self.urls["server"] + "/metrics",
            say=self.say,
            every_s=self.opts.progress_every_s,
            cpu=self._cpu,
        )
        self.progress.start()

    def replay(self) -> None:
        o = self.opts
        window_ms = max(lb.window_ms for lb in self.cfg.join.labels)
        args = [
            "-m",
            "demo.replay",
            "--config",
            str(self.config_path),
            "--out",
            str(self.dir),
            "--speed",
            str(o.speed if o.data is not None else 1.0),
            "--duration-s",
            str(o.duration_s),
            "--tail-ms",
            "0" if o.until_interrupted else str(window_ms + 2000),
        ]
        if o.live_scoring:
            args += ["--score-url", self.urls["server"]]
        src = self.cfg.replay.source
        self.say(
            f"== replay: {src}"
            + (f" {self.cfg.replay.path}" if self.cfg.replay.path else "")
            + f", live; {self.cfg.join.strategy} join, label window {window_ms / 1000:g} s"
            + ("; Ctrl-C ends it" if o.until_interrupted else "")
        )
        self.mark("replay_start_ms")
        rep = self.child("replay", self._python(*args))
        try:
            while rep.alive():
                self.check_alive("join", "trainer", "server")
                time.sleep(0.5)
            if o.until_interrupted:
                self.say("== the replay has ended; the pipeline keeps running until Ctrl-C")
                while True:
                    self.check_alive("join", "trainer", "server")
                    time.sleep(0.5)
        except KeyboardInterrupt:
            self.say("== Ctrl-C: ending the replay, then draining the pipeline")
            rep.stop(signal.SIGTERM, timeout_s=30)
        rep.stop()
        self.mark("replay_end_ms")
        if rep.proc is not None and rep.proc.returncode not in (0, None):
            raise DemoError(f"the replay failed; its log ({rep.log}) ends with:\n{rep.tail()}")

    def _trained_all(self, seen: dict[int, int]) -> bool:
        path = self.dir / "trainer_trace.jsonl"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 262144))
                lines = f.read().splitlines()
            last = json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError, IndexError):
            return False
        offsets = {int(k): v for k, v in last.get("offsets", {}).items()}
        return all(offsets.get(p, 0) > o for p, o in seen.items())

    def _store_latest(self) -> dict[str, Any] | None:
        from exporter.manifest import LATEST_KEY, manifest_key, parse_latest
        from exporter.store import open_store

        store = open_store(self.cfg.object_store.url, self.cfg.object_store)
        try:
            seq, _ = parse_latest(store.get(LATEST_KEY))
            doc: dict[str, Any] = json.loads(store.get(manifest_key(seq)))
            return doc
        except Exception:
            return None

    def _server_version(self) -> int:
        return int(scrape(self.urls["server"] + "/metrics").get("fluxrec_server_version", -1))

    def drain(self) -> None:
        tracer = self.tracer
        assert tracer is not None
        self.say("== drain: closing the open label windows (stop-with-savepoint)")
        self.mark("drain_start_ms")
        join = self.children["join"]
        join.stop(signal.SIGTERM, timeout_s=120)
        self.mark("join_stopped_ms")
        if join.proc is not None and join.proc.returncode != 0:
            self.say(f"   the join ended with {join.proc.returncode}; its log: {join.log}")
        deadline = time.monotonic() + self.opts.drain_timeout_s
        last = -1
        while time.monotonic() < deadline:  # until no new sample for 2 s
            if tracer.count == last and _now_ms() - tracer.last_seen_ms > 2000:
                break
            last = tracer.count
            time.sleep(0.5)
        seen = self._tracer_max_offsets()
        self.meta["samples_seen"] = tracer.count
        topic = self.cfg.kafka.topics.samples

        def covered() -> bool:
            doc = self._store_latest()
            if doc is None:
                return False
            offs = {int(k): v for k, v in doc.get("kafka_offsets", {}).get(topic, {}).items()}
            return all(offs.get(p, 0) > o for p, o in seen.items())

        try:
            left = max(1.0, deadline - time.monotonic())
            self.wait(
                "the trainer to train every sample",
                lambda: self._trained_all(seen),
                left,
                "trainer",
                "server",
            )
            left = max(1.0, deadline - time.monotonic())
            self.wait("a version covering every sample", covered, left, "trainer", "server")
            doc = self._store_latest() or {}
            target = int(doc.get("sequence", -1))
            self.wait(
                f"the server to apply version {target}",
                lambda: self._server_version() >= target,
                60,
                "server",
            )
        except DemoError as e:
            self.say(f"   {e}")
            self.meta.setdefault("problems", []).append(str(e))
        self.mark("drained_ms")
        if self.progress is not None:
            self.progress.close()
        self.say("== stop: trainer (final checkpoint and export), then the server")
        self.children["trainer"].stop(signal.SIGTERM, timeout_s=120)
        final = self._store_latest() or {}
        target = int(final.get("sequence", -1))
        with contextlib.suppress(DemoError):
            self.wait("the final version", lambda: self._server_version() >= target, 30, "server")
        self.children["server"].stop(signal.SIGTERM, timeout_s=30)
        self.mark("stopped_ms")

    def _tracer_max_offsets(self) -> dict[int, int]:
        import gzip

        out: dict[int, int] = {}
        path = self.dir / "samples.tsv.gz"
        if self.tracer is not None:
            self.tracer.close()  # flushes the file; every committed sample was read
        if not path.exists():
            return out
        with gzip.open(path, "rt") as f:
            for line in f:
                p, o, _ = line.split("\t", 2)
                out[int(p)] = max(out.get(int(p), -1), int(o))
        return out

    def collect(self) -> None:
        """Dead letters, reconciliation and manifests: what the report needs from the stack."""
        from exporter.exporter import list_versions
        from exporter.manifest import manifest_key
        from exporter.store import open_store
        from fluxrec.topics import read_topic
        from sample_join.reconcile import totals, windows

        t = self.cfg.kafka.topics
        boot = self.cfg.kafka.bootstrap
        dead: dict[str, int] = {}
        for _, v in read_topic(boot, t.dead_letters, idle_s=1.5, timeout_s=60):
            try:
                reason = str(json.loads(v)["reason"])
            except (ValueError, KeyError):
                reason = "unreadable"
            dead[reason] = dead.get(reason, 0) + 1
        rows = windows(totals(v for _, v in read_topic(boot, t.metrics, idle_s=1.5, timeout_s=60)))
        counts: dict[str, dict[str, int]] = {}
        for w in rows:
            c = counts.setdefault(w.stream, {})
            for k, n in w.counts.items():
                c[k] = c.get(k, 0) + n
        rec = {
            "dead_letters": dead,
            "totals": counts,
            "windows": len(rows),
            "unbalanced_windows": sum(1 for w in rows if w.balance),
        }
        (self.dir / "join.json").write_text(json.dumps(rec, indent=1) + "\n")
        store = open_store(self.cfg.object_store.url, self.cfg.object_store)
        with (self.dir / "versions.jsonl").open("w") as f:
            for seq in list_versions(store):
                with contextlib.suppress(Exception):
                    m = json.loads(store.get(manifest_key(seq)))
                    keep = (
                        "sequence",
                        "kind",
                        "kafka_offsets",
                        "watermark_ms",
                        "trainer_step",
                        "samples",
                        "created_ms",
                        "published_ms",
                    )
                    f.write(json.dumps({k: m.get(k) for k in keep}) + "\n")

    def stop_all(self) -> list[str]:
        """Stop every child still running; names of process groups that survived."""
        for c in reversed(list(self.children.values())):
            if c.alive():
                c.stop(signal.SIGTERM, timeout_s=30)
            else:
                c.stop(timeout_s=1)
        for th in (self.progress, self.tracer):
            if th is not None:
                th.close()
        return [c.name for c in self.children.values() if c.group_alive()]

    def cleanup(self) -> None:
        from fluxrec.stack import Stack
        from fluxrec.topics import delete_topics

        left = self.stop_all()
        self.meta["left_running"] = left
        if left:
            self.say(f"   WARNING: processes of {', '.join(left)} are still running")
        if not self.opts.keep_topics and self.meta.get("topics"):
            with contextlib.suppress(Exception):
                delete_topics(self.cfg.kafka.bootstrap, self.meta["topics"])
        if self.started_services and not self.opts.keep_stack:
            stack = Stack(self.base)
            for name in reversed(self.started_services):
                stack.service(name).proc.stop()
            self.say("== stack down: " + ", ".join(reversed(self.started_services)))
        self.mark("end_ms")
        self.meta["replay"] = _read_json(self.dir / "replay.json")
        (self.dir / "run.json").write_text(json.dumps(self.meta, indent=1) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_demo(opts: DemoOptions, say: Say = print) -> DemoRun:
    """One demo run (module doc); returns its folder and the report's summary."""
    run = _Run(opts, say)
    result = DemoRun(run.dir)
    interrupted = False
    try:
        run.stack_up()
        run.start_pipeline()
        run.start_tracing()
        run.replay()
        run.drain()
        run.collect()
    except KeyboardInterrupt:
        interrupted = True
        say("== interrupted: stopping everything")
        result.problems.append("interrupted before the end of the run")
    except DemoError as e:
        result.problems.append(str(e))
        say(f"== error: {e}")
    finally:
        run.cleanup()
    result.problems += run.meta.get("problems", [])
    if run.meta.get("left_running"):
        result.problems.append(f"left running: {run.meta['left_running']}")
    if opts.report and not interrupted and (run.dir / "samples.tsv.gz").exists():
        from demo.report import write_report

        say("== report")
        result.summary = write_report(run.dir, say=say)
        result.problems += result.summary.get("problems", [])
    result.ok = not result.problems
    return result
