"""Benchmark of the sample-join job (``make bench-join``).

The same event stream (impressions of 1,000 items and 10,000 users, one click per ten
impressions two seconds later, in event-time order) goes through the job twice:

* ``kafka``: produced to the input topics first (not timed), then the production job
  (``pipelines.join_job``: Kafka sources, exactly-once Kafka sinks, checkpoints every
  ``flink.checkpoint_interval_ms``) reads it to the end (bounded) at parallelism 2;
* ``ceiling``: the same views and queries (``JoinSql``) over Flink's ``datagen`` source,
  which builds the identical JSON payloads in the JVM, into ``blackhole`` sinks: the
  engine's own ceiling on this machine.

Each is run with a small and a large input (after one warm-up run of each, not counted:
class loading, code generation, JIT); the rate is ``(large - small) / (t_large - t_small)``
events per second, so job start-up and shutdown cancel out. Both run on a
private stack (Kafka, Redis) started for the benchmark and stopped after it. The last line
of output is one JSON object (``events_per_s``, ``ceiling_events_per_s``, ``ratio``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fluxrec.config import Config, load_config
from fluxrec.stack import Stack
from fluxrec.testing import unique_name, write_test_config
from fluxrec.topics import ensure_topics, read_topic
from pipelines.flink_env import create_table_env
from pipelines.join_job import JoinTopics, declare_join, join_job, prepare_join, source_columns
from sample_join.reference import RawEvent
from sample_join.testing import produce_events

STEP_MS = 2  # event time between two impressions
CLICK_EVERY = 10
CLICK_DELAY_MS = 2_000


def _fields(i: str) -> dict[str, str]:
    """SQL (over a BIGINT column ``i``) of the fields of impression ``i``."""
    return {
        "request_id": f"'r' || CAST({i} AS STRING)",
        "item_id": f"'i' || CAST(MOD({i}, 1000) AS STRING)",
        "user_id": f"'u' || CAST(MOD({i}, 10000) AS STRING)",
    }


def _impression(i: int, t0: int) -> str:
    rid, item, user = f"r{i}", f"i{i % 1000}", f"u{i % 10000}"
    return (
        f'{{"v":1,"request_id":"{rid}","item_id":"{item}","user_id":"{user}",'
        f'"event_time_ms":{t0 + i * STEP_MS},'
        f'"features":{{"sparse":{{"user_id":["{user}"],"item_id":["{item}"]}},'
        f'"dense":{{"pos":{i % 5}}}}}}}'
    )


def _click(i: int, t0: int) -> str:
    return (
        f'{{"v":1,"request_id":"r{i}","item_id":"i{i % 1000}","user_id":"u{i % 10000}",'
        f'"action":"click","event_time_ms":{t0 + i * STEP_MS + CLICK_DELAY_MS}}}'
    )


def events(n: int, t0: int) -> list[RawEvent]:
    """``n`` impressions and their clicks, in event-time order (as the ceiling generates)."""
    out = [RawEvent("impression", _impression(i, t0)) for i in range(n)]
    clicks = [RawEvent("action", _click(i, t0)) for i in range(0, n, CLICK_EVERY)]
    return out + clicks  # separate topics: only the order within each one matters


def run_kafka(cfg: Config, n: int, t0: int) -> tuple[float, int]:
    """Seconds the bounded production job takes over ``n`` impressions; samples out."""
    topics = JoinTopics(*(unique_name("bench") for _ in range(5)))
    ensure_topics(cfg.kafka.bootstrap, list(topics.__dict__.values()), cfg.kafka.partitions)
    produce_events(cfg.kafka.bootstrap, topics.impressions, topics.actions, events(n, t0))
    t_env = create_table_env(cfg)
    started = time.perf_counter()
    join_job(t_env, cfg, topics, bounded=True).wait()
    elapsed = time.perf_counter() - started
    samples = read_topic(cfg.kafka.bootstrap, topics.samples, expected=n, idle_s=1)
    return elapsed, len(samples)


def _datagen_table(name: str, n: int, t0: int, clicks: bool, cfg: Config) -> str:
    """A datagen table whose computed ``payload`` is exactly what :func:`events` sends."""
    rows = (n + CLICK_EVERY - 1) // CLICK_EVERY if clicks else n
    i = f"seq * {CLICK_EVERY}" if clicks else "seq"
    f = _fields(i)
    t = f"{t0} + {i} * {STEP_MS}" + (f" + {CLICK_DELAY_MS}" if clicks else "")
    common = (
        f"""'{{"v":1,"request_id":"' || {f["request_id"]} || '","item_id":"' || {f["item_id"]}"""
        f""" || '","user_id":"' || {f["user_id"]} || '",'"""
    )
    if clicks:
        payload = (
            f"""{common} || '"action":"click","event_time_ms":' || CAST({t} AS STRING) || '}}'"""
        )
    else:
        payload = (
            f"""{common} || '"event_time_ms":' || CAST({t} AS STRING)"""
            f""" || ',"features":{{"sparse":{{"user_id":["' || {f["user_id"]}"""
            f""" || '"],"item_id":["' || {f["item_id"]} || '"]}},"dense":{{"pos":'"""
            f""" || CAST(MOD({i}, 5) AS STRING) || '}}}}}}'"""
        )
    # a computed column cannot name another: et parses the payload expression itself
    rest = source_columns(cfg).split(",", 1)[1].replace("payload", f"({payload})")
    columns = f"seq BIGINT,\n  payload AS {payload},{rest}"
    return (
        f"CREATE TEMPORARY TABLE {name} (\n  {columns}\n) WITH ('connector' = 'datagen', "
        "'rows-per-second' = '1000000000', "  # the default would cap it at 10,000 rows/s
        f"'fields.seq.kind' = 'sequence', 'fields.seq.start' = '0', "
        f"'fields.seq.end' = '{rows - 1}')"
    )


def run_ceiling(cfg: Config, n: int, t0: int) -> float:
    """Seconds the same SQL takes over datagen into blackhole sinks."""
    t_env = create_table_env(cfg)
    prepare_join(t_env, cfg)
    prefix = "cj"
    t_env.execute_sql(_datagen_table(f"{prefix}_imp_raw", n, t0, False, cfg))
    t_env.execute_sql(_datagen_table(f"{prefix}_act_raw", n, t0, True, cfg))
    sinks = {}
    for name in ("samples", "dead", "metrics"):
        sinks[name] = f"{prefix}_{name}_sink"
        t_env.execute_sql(
            f"CREATE TEMPORARY TABLE {sinks[name]} (k STRING, v STRING) "
            "WITH ('connector' = 'blackhole')"
        )
    stmt = declare_join(t_env, cfg, prefix, sinks=sinks)
    started = time.perf_counter()
    stmt.execute().wait()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=20_000, help="impressions of the small run")
    ap.add_argument("--large", type=int, default=400_000, help="impressions of the large run")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fluxrec-bench-join-") as tmp:
        cfg = load_config(write_test_config(Path(tmp), s3_server=False))
        jc = replace(cfg.join, source_idleness_ms=0)
        cfg = replace(cfg, join=jc)
        stack = Stack(cfg)
        stack.up()
        try:
            t0 = int(time.time() * 1000) - a.large * STEP_MS - 3_600_000
            out: dict[str, Any] = {"small": a.small, "large": a.large}
            run_kafka(cfg, a.small, t0)  # warm-up: class loading, code generation, JIT
            run_ceiling(cfg, a.small, t0)
            for size in ("small", "large"):
                n = getattr(a, size)
                t, got = run_kafka(cfg, n, t0)
                out[f"kafka_{size}_s"], out[f"kafka_{size}_samples"] = t, got
                out[f"ceiling_{size}_s"] = run_ceiling(cfg, n, t0)
                c = out[f"ceiling_{size}_s"]
                print(f"{size}: {n} impressions, kafka {t:.1f}s, ceiling {c:.1f}s", flush=True)
        finally:
            stack.down(purge=True)
    events_per_imp = 1 + 1 / CLICK_EVERY
    dn = (a.large - a.small) * events_per_imp
    out["events_per_s"] = dn / (out["kafka_large_s"] - out["kafka_small_s"])
    out["ceiling_events_per_s"] = dn / (out["ceiling_large_s"] - out["ceiling_small_s"])
    out["ratio"] = out["events_per_s"] / out["ceiling_events_per_s"]
    out["samples_ok"] = out["kafka_large_samples"] == a.large
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
