"""The stack's end-to-end check: Kafka -> Flink SQL -> Kafka.

Input records (JSON, one per Kafka message)::

    {"id": 7, "kind": "impression", "user_id": "u3", "item_id": "i9", "ts": 1700000000000}

The job keeps ``kind`` in ('impression', 'click'), upper-cases nothing else, and writes::

    {"id": 7, "kind": "impression", "user_id": "u3", "item_id": "i9", "ts": 1700000000000,
     "user_item": "u3|i9"}

The source is bounded at the offsets present when the job starts, so the job ends by itself.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fluxrec.config import Config
from pipelines.flink_env import kafka_table_options

if TYPE_CHECKING:
    from pyflink.table import TableEnvironment, TableResult

__all__ = ["KEPT_KINDS", "smoke_job"]

KEPT_KINDS = ("impression", "click")


def smoke_job(
    t_env: TableEnvironment,
    cfg: Config,
    source_topic: str,
    sink_topic: str,
    group_id: str | None = None,
) -> TableResult:
    """Submit the smoke job; call ``.wait()`` on the result to block until it ends."""
    group = group_id or f"fluxrec-smoke-{uuid.uuid4().hex[:8]}"
    src = kafka_table_options(
        cfg,
        source_topic,
        **{
            "properties.group.id": group,
            "scan.startup.mode": "earliest-offset",
            "scan.bounded.mode": "latest-offset",
            "format": "json",
            "json.ignore-parse-errors": "true",
        },
    )
    dst = kafka_table_options(
        cfg, sink_topic, **{"format": "json", "sink.delivery-guarantee": "at-least-once"}
    )
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE smoke_src (
          id BIGINT, kind STRING, user_id STRING, item_id STRING, ts BIGINT
        ) {src}""")
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE smoke_dst (
          id BIGINT, kind STRING, user_id STRING, item_id STRING, ts BIGINT, user_item STRING
        ) {dst}""")
    kinds = ", ".join(f"'{k}'" for k in KEPT_KINDS)
    return t_env.execute_sql(f"""
        INSERT INTO smoke_dst
        SELECT id, kind, user_id, item_id, ts, CONCAT(user_id, '|', item_id)
        FROM smoke_src WHERE kind IN ({kinds}) AND id IS NOT NULL""")
