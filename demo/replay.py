"""The demo's replay process: a live replay that records what it sends, and live scoring.

``python -m demo.replay --config RUN/config.yaml --out RUN [--speed X]``

Like ``fluxrec replay --time-shift live`` (same sources, faults and Kafka producer), with
four differences the demo needs:

* **speed**: event times are mapped to ``start + (t - t_first) / speed``, so a seven-day
  log plays in minutes (all times scale, click delays included: a ``speed``-times denser
  log). ``--speed 0`` fits the log's impressions into ``--duration-s``. Synthetic streams
  play at speed 1. Events are sent when the wall clock reaches their (mapped) time, so
  event time equals wall-clock time in every process of the run.
* **an end**: actions later than the last impression + ``--tail-ms`` (the label window and
  a margin) are not sent (counted as ``actions_after_end``): the replay ends when the last
  label it can still set has had its time.
* **bursts**: when the next event is not due yet, the replay sleeps at least
  ``--tick-ms`` (5) and then sends every event that came due meanwhile: events leave up
  to a tick late, for a fraction of the wake-ups and of the producer's CPU per event.
* **records**: every event sent goes to ``OUT/events.jsonl.gz``, one JSON line
  ``{"s": stream, "t": event_time_ms, "w": sent_ms, "p": payload, "f": fault}``, and
  ``OUT/replay.json`` gets the summary (counts, speed, oracle AUC, time range).

With ``--score-url`` a thread posts the impressions sent in each ``--score-every-ms`` to
the scoring server (``POST /score {"impressions": [...]}``), the way a serving system
scores requests, and records ``{"n": [event index, ...], "w": ms, "v": version,
"p": [p_click, ...]}`` lines to ``OUT/served.jsonl.gz`` (``v`` null while the server has
no version). SIGTERM or SIGINT ends the replay early (what was sent is recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import itertools
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from fluxrec.signals import stop_on_signals

__all__ = ["main", "plan_times"]


def _gz(path: Path) -> IO[str]:
    """A gzip text file for appending records (level 1: cheap next to the replay)."""
    return gzip.open(path, "wt", compresslevel=1)


def _json_string(text: str) -> str:
    """``text`` as a JSON string literal (the C encoder of the json module)."""
    return str(json.encoder.encode_basestring(text))


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def plan_times(source: Any, limit: int) -> tuple[int, int, int] | None:
    """``(first event time, last impression time, impressions)`` of the first ``limit``
    records (0: all), or None for an empty source."""
    from replay.types import Impression

    first = last_imp = None
    n = 0
    recs = source.records()
    for rec in itertools.islice(recs, limit or None):
        if first is None:
            first = rec.event_time_ms
        if isinstance(rec, Impression):
            last_imp, n = rec.event_time_ms, n + 1
    if first is None or last_imp is None:
        return None
    return first, last_imp, n


class _Scorer(threading.Thread):
    """Posts the impressions sent to the scoring server in small batches (module doc)."""

    def __init__(self, url: str, every_ms: int, out: IO[str]) -> None:
        super().__init__(name="live-scoring", daemon=True)
        u = urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.every_s = every_ms / 1000
        self.out = out
        self.q: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self.requests = self.failed = self.scored = 0
        self._conn: http.client.HTTPConnection | None = None

    def _post(self, body: bytes) -> tuple[int, Any]:
        for attempt in range(2):  # one retry on a dropped keep-alive connection
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                self._conn.request("POST", "/score", body, {"Content-Type": "application/json"})
                resp = self._conn.getresponse()
                return resp.status, json.loads(resp.read() or b"null")
            except (OSError, http.client.HTTPException, ValueError):
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def run(self) -> None:
        done = False
        while not done:
            time.sleep(self.every_s)
            batch: list[tuple[int, str]] = []
            while True:
                try:
                    item = self.q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                batch.append(item)
            if not batch:
                continue
            body = ('{"impressions":[' + ",".join(p for _, p in batch) + "]}").encode()
            self.requests += 1
            try:
                status, answer = self._post(body)
            except (OSError, http.client.HTTPException, ValueError):
                self.failed += 1
                continue
            rec: dict[str, Any] = {"n": [n for n, _ in batch], "w": int(time.time() * 1000)}
            if status == 200:
                rec |= {"v": answer["version"], "p": answer["p_click"]}
                self.scored += len(batch)
            else:
                rec |= {"v": None, "p": None, "status": status}
            self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.q.put(None)
        self.join(timeout=30)
        if self._conn is not None:
            self._conn.close()


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915
    p = argparse.ArgumentParser(prog="python -m demo.replay", description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder for the records")
    p.add_argument("--speed", type=float, default=1.0, help="0: fit into --duration-s")
    p.add_argument("--duration-s", type=float, default=120.0)
    p.add_argument("--tail-ms", type=int, default=0, help="0: no end (send every action)")
    p.add_argument("--lead-ms", type=int, default=1000, help="first event this far from now")
    p.add_argument("--tick-ms", type=float, default=5.0, help="least sleep between bursts")
    p.add_argument("--score-url", default=None)
    p.add_argument("--score-every-ms", type=int, default=100)
    ns = p.parse_args(argv)

    from fluxrec.config import load_config
    from fluxrec.errors import FluxrecError
    from replay.faults import inject
    from replay.produce import Pacer, ensure_topics, produce
    from replay.run import open_configured_source
    from replay.stream import Tally
    from replay.types import Action, Event, Impression, Stream, to_event

    cfg = load_config(ns.config)
    rcfg = cfg.replay
    try:
        source = open_configured_source(cfg)
        endless = rcfg.source == "synthetic" and rcfg.synthetic.impressions >= 10**12
        plan = None if endless else plan_times(source, rcfg.limit)
    except FluxrecError as e:
        print(f"fluxrec demo replay: error: {e}", file=sys.stderr)
        return 1
    if plan is None and not endless:
        print("fluxrec demo replay: the source has no impression", file=sys.stderr)
        return 1
    speed = ns.speed
    if speed <= 0:
        span_s = (plan[1] - plan[0]) / 1000 if plan else 0.0
        speed = max(1.0, span_s / ns.duration_s)
    t_first = plan[0] if plan else None
    start_ms = int(time.time() * 1000) + ns.lead_ms
    end_ms: float = float("inf")
    if plan is not None and ns.tail_ms:
        end_ms = start_ms + (plan[1] - plan[0]) / speed + ns.tail_ms

    stop = stop_on_signals()
    tally = Tally(click_action=rcfg.click_action)
    after_end = 0
    last_impression = 0

    def events() -> Iterator[Event]:
        nonlocal after_end, t_first, last_impression
        for rec in itertools.islice(source.records(), rcfg.limit or None):
            if stop.is_set():
                return
            if t_first is None:
                t_first = rec.event_time_ms
            t = start_ms + round((rec.event_time_ms - t_first) / speed)
            if isinstance(rec, Action) and t > end_ms:
                after_end += 1
                continue
            if isinstance(rec, Impression):
                last_impression = t
            tally.observe(rec)  # it reads ids and p_click, not the time
            yield to_event(rec, t)

    ns.out.mkdir(parents=True, exist_ok=True)
    files = contextlib.ExitStack()
    events_file = files.enter_context(_gz(ns.out / "events.jsonl.gz"))
    scorer = None
    if ns.score_url:
        served_file = files.enter_context(_gz(ns.out / "served.jsonl.gz"))
        scorer = _Scorer(ns.score_url, ns.score_every_ms, served_file)
        scorer.start()
    seq = itertools.count()

    def on_sent(ev: Event) -> None:
        tally.count(ev)
        n = next(seq)
        fault = "null" if ev.fault is None else f'"{ev.fault}"'
        events_file.write(  # {"s":..,"t":..,"w":..,"p":..,"f":..} without a dict per event
            f'{{"s":"{ev.stream}","t":{ev.event_time_ms},"w":{int(time.time() * 1000)},'
            f'"p":{_json_string(ev.payload)},"f":{fault}}}\n'
        )
        if scorer is not None and ev.stream is Stream.IMPRESSION and ev.fault is None:
            scorer.q.put((n, ev.payload))

    topics = {
        Stream.IMPRESSION: cfg.kafka.topics.impressions,
        Stream.ACTION: cfg.kafka.topics.actions,
    }
    ensure_topics(cfg.kafka.bootstrap, list(topics.values()), cfg.kafka.partitions)
    print(
        f"fluxrec demo replay: {source.name} at speed {speed:g}, first event at {start_ms}",
        flush=True,
    )
    t0 = time.monotonic()
    try:
        produce(
            inject(events(), rcfg.faults, rcfg.seed),
            cfg.kafka.bootstrap,
            topics,
            rcfg.producer,
            pacer=Pacer(rcfg.rate, live=True, tick_s=ns.tick_ms / 1000),
            on_sent=on_sent,
        )
    finally:
        if scorer is not None:
            scorer.close()
        files.close()
    summary = {
        "source": source.name,
        "speed": speed,
        "start_ms": start_ms,
        "events": dict(tally.events),
        "actions": dict(tally.actions),
        "faults": dict(tally.faults),
        "skipped": source.stats(),
        "skip_notes": source.notes(),
        "actions_after_end": after_end,
        "first_ms": tally.first_ms,
        "last_impression_ms": last_impression,
        "last_ms": tally.last_ms,
        "oracle_auc": _finite(tally.oracle_auc()),
        "elapsed_s": round(time.monotonic() - t0, 3),
        "interrupted": stop.is_set(),
        "live_scoring": None
        if scorer is None
        else {"requests": scorer.requests, "failed": scorer.failed, "scored": scorer.scored},
    }
    (ns.out / "replay.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("fluxrec demo replay: " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
