"""The stack smoke check (`fluxrec smoke`): events -> Kafka -> Flink SQL smoke job -> Kafka.

What `make demo` ran before the whole pipeline landed; kept as a quick check that the
broker and Flink work (`fluxrec smoke` on a running stack).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fluxrec.config import Config

__all__ = ["SmokeReport", "run_smoke", "smoke_events"]


def smoke_events(n: int, seed: int = 7) -> list[bytes]:
    """``n`` JSON events: mostly impressions, some clicks, ~5% of an unknown kind and
    ~1% malformed JSON (both must be dropped by the job)."""
    rng = random.Random(seed)
    t0 = 1_700_000_000_000
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.01:
            out.append(b'{"id": ' + str(i).encode() + b', "kind": ')  # truncated JSON
            continue
        kind = "impression" if r < 0.80 else "click" if r < 0.95 else "pageview"
        rec = {
            "id": i,
            "kind": kind,
            "user_id": f"u{rng.randint(0, 999)}",
            "item_id": f"i{rng.randint(0, 4999)}",
            "ts": t0 + i * 10,
        }
        out.append(json.dumps(rec).encode())
    return out


@dataclass
class SmokeReport:
    sent: int
    expected: int
    received: int
    by_kind: Counter[str] = field(default_factory=Counter)
    job_s: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.received == self.expected


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    try:
        for p in payloads:
            producer.send(topic, p)
        producer.flush()
    finally:
        producer.close()


def consume_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0, read_committed: bool = False
) -> list[bytes]:
    """Values of ``topic`` from the beginning: ``expected`` records (and any beyond them
    already there, a bug worth seeing), or what arrived within ``timeout_s``."""
    from fluxrec.topics import read_topic

    return [
        v
        for _, v in read_topic(
            bootstrap,
            topic,
            expected=expected,
            timeout_s=timeout_s,
            idle_s=0.5,
            read_committed=read_committed,
        )
    ]


def run_smoke(cfg: Config, events: int, keep_stack: bool, start_stack: bool) -> SmokeReport:
    """Send ``events`` through the smoke job and print what it saw."""
    from fluxrec.stack import Stack
    from fluxrec.topics import ensure_topics
    from pipelines.flink_env import create_table_env
    from pipelines.smoke import KEPT_KINDS, smoke_job

    stack = Stack(cfg)
    started: list[str] = []
    if start_stack:
        print("== stack")
        started = stack.up()
        for st in stack.status():
            print(
                f"   {st.name:8} {st.address:32} {st.state}"
                f"{' (started)' if st.name in started else ''}"
            )
    try:
        run = uuid.uuid4().hex[:8]
        src, dst = f"fluxrec.smoke.in.{run}", f"fluxrec.smoke.out.{run}"
        ensure_topics(cfg.kafka.bootstrap, [src, dst], cfg.kafka.partitions)
        payloads = smoke_events(events)
        expected = 0
        for p in payloads:
            with contextlib.suppress(ValueError):
                expected += json.loads(p)["kind"] in KEPT_KINDS
        print(f"== kafka: producing {len(payloads)} events to {src}")
        t = time.monotonic()
        _produce(cfg.kafka.bootstrap, src, payloads)
        print(f"   {len(payloads) / (time.monotonic() - t):,.0f} events/s")

        print(f"== flink: SQL job {src} -> {dst} (parallelism {cfg.flink.parallelism})")
        t = time.monotonic()
        t_env = create_table_env(cfg, checkpoint_interval_ms=0)
        smoke_job(t_env, cfg, src, dst).wait()
        job_s = time.monotonic() - t
        print(f"   job finished in {job_s:.1f}s (includes MiniCluster start)")

        raw = consume_all(cfg.kafka.bootstrap, dst, expected)
        recs = [json.loads(r) for r in raw]
        report = SmokeReport(
            sent=len(payloads),
            expected=expected,
            received=len(recs),
            by_kind=Counter(r["kind"] for r in recs),
            job_s=job_s,
            samples=recs[:3],
        )
        print(
            f"== result: sent {report.sent}, expected {report.expected} "
            f"(dropped {report.sent - report.expected}: unknown kind or malformed), "
            f"received {report.received}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(report.by_kind.items()))
        )
        for r in report.samples:
            print(f"   {json.dumps(r)}")
        print(
            "OK: events flowed through Kafka and Flink"
            if report.ok
            else f"MISMATCH: expected {report.expected}, got {report.received}"
        )
        return report
    finally:
        if started and not keep_stack:
            print("== stack down: " + ", ".join(stack.down()))
