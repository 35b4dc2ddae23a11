"""The sample-join job: Kafka impressions + actions -> Flink SQL -> samples + dead letters.

A function of (table environment, config, topic names) so tests pass their own topics.
Status: validation, dedup and the window strategy run in Flink SQL; orphans, bots, late
actions, ``fake_negative`` and the metrics topic are implemented only in
``sample_join/reference.py`` so far.

Run it with ``flink run --python pipelines/join_job.py --config configs/local.yaml``.
"""

from __future__ import annotations

import argparse
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fluxrec.config import Config, load_config
from pipelines.flink_env import create_table_env, kafka_table_options
from sample_join.reference import check_labels
from sample_join.sql import (
    checked_view_sql,
    dead_letter_select_sql,
    interval,
    label_select_sql,
    unique_view_sql,
)

if TYPE_CHECKING:
    from pyflink.table import TableEnvironment, TableResult

__all__ = ["JoinTopics", "join_job", "main"]


@dataclass(frozen=True)
class JoinTopics:
    impressions: str
    actions: str
    samples: str
    dead_letters: str

    @classmethod
    def from_config(cls, cfg: Config) -> JoinTopics:
        t = cfg.kafka.topics
        return cls(t.impressions, t.actions, t.samples, t.dead_letters)


def join_job(
    t_env: TableEnvironment,
    cfg: Config,
    topics: JoinTopics,
    *,
    bounded: bool = False,
    exactly_once: bool = True,
    prefix: str = "fj",
) -> TableResult:
    """Declare the tables and submit the job; ``.wait()`` on the result blocks until it ends.

    ``bounded``: read the input topics up to the offsets present at start, then finish
    (tests and demos); otherwise run until cancelled.
    """
    jc = cfg.join
    check_labels(jc.labels)
    group = f"fluxrec-join-{uuid.uuid4().hex[:8]}"
    t_env.get_config().set("table.exec.state.ttl", f"{jc.dedup_ttl_ms} ms")
    src_opts = {
        "properties.group.id": group,
        "scan.startup.mode": "earliest-offset",
        "format": "raw",
        "scan.watermark.idle-timeout": f"{jc.source_idleness_ms} ms",
        "properties.isolation.level": "read_committed",
    }
    if bounded:
        src_opts["scan.bounded.mode"] = "latest-offset"
    ooo = interval(jc.watermark_out_of_orderness_ms)
    for short, topic in (("imp", topics.impressions), ("act", topics.actions)):
        t_env.execute_sql(f"""
            CREATE TEMPORARY TABLE {prefix}_{short}_raw (
              payload STRING,
              et AS TO_TIMESTAMP_LTZ(COALESCE(
                TRY_CAST(JSON_VALUE(payload, '$.event_time_ms' NULL ON ERROR) AS BIGINT), 0), 3),
              pt AS PROCTIME(),
              WATERMARK FOR et AS et - {ooo}
            ) {kafka_table_options(cfg, topic, **src_opts)}""")
    sink = {
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
    }
    if exactly_once:
        sink |= {
            "sink.delivery-guarantee": "exactly-once",
            "sink.transactional-id-prefix": group,
            "properties.transaction.timeout.ms": str(jc.transaction_timeout_ms),
        }
    else:
        sink["sink.delivery-guarantee"] = "at-least-once"
    for name, topic in (("samples", topics.samples), ("dead", topics.dead_letters)):
        t_env.execute_sql(
            f"CREATE TEMPORARY TABLE {prefix}_{name} (k STRING, v STRING) "
            + kafka_table_options(cfg, topic, **sink)
        )
    for stream in ("impression", "action"):
        t_env.execute_sql(checked_view_sql(prefix, stream, jc))
        t_env.execute_sql(unique_view_sql(prefix, stream))
    stmt = t_env.create_statement_set()
    stmt.add_insert_sql(f"INSERT INTO {prefix}_samples {label_select_sql(prefix, jc)}")
    dead = " UNION ALL ".join(dead_letter_select_sql(prefix, s) for s in ("impression", "action"))
    stmt.add_insert_sql(f"INSERT INTO {prefix}_dead {dead}")
    return stmt.execute()


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``flink run --python pipelines/join_job.py [--config PATH]``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=None)
    p.add_argument("--bounded", action="store_true")
    ns = p.parse_args(argv)
    cfg = load_config(ns.config)
    t_env = create_table_env(cfg)
    join_job(t_env, cfg, JoinTopics.from_config(cfg), bounded=ns.bounded).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
