"""Build PyFlink table environments from the deployment config.

The Kafka SQL connector jar is found in ``stack.jars_dir`` (``fluxrec setup`` resolves it
from Maven Central) and passed through ``pipeline.jars``. Without ``flink.jobmanager`` the
job runs in a local MiniCluster inside this process's JVM gateway.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from fluxrec.config import Config
from fluxrec.stack.setup import connector_jar

if TYPE_CHECKING:
    from pyflink.table import TableEnvironment

__all__ = ["create_table_env", "kafka_table_options"]


def create_table_env(
    cfg: Config, parallelism: int | None = None, checkpoint_interval_ms: int | None = None
) -> TableEnvironment:
    """A streaming TableEnvironment with the connector jar, parallelism and checkpointing."""
    try:
        from pyflink.table import EnvironmentSettings, TableEnvironment
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the Flink jobs need pyflink: pip install 'fluxrec[flink]'") from e

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = t_env.get_config()
    conf.set("pipeline.jars", connector_jar(cfg.stack.jars_dir).as_uri())
    conf.set("parallelism.default", str(parallelism or cfg.flink.parallelism))
    conf.set("python.executable", sys.executable)
    conf.set("table.exec.resource.default-parallelism", str(parallelism or cfg.flink.parallelism))
    interval = (
        cfg.flink.checkpoint_interval_ms
        if checkpoint_interval_ms is None
        else checkpoint_interval_ms
    )
    if interval > 0:
        conf.set("execution.checkpointing.interval", f"{interval} ms")
        conf.set("state.checkpoints.dir", (cfg.stack.state_dir / "flink" / "checkpoints").as_uri())
    return t_env


def kafka_table_options(cfg: Config, topic: str, **extra: str) -> str:
    """The ``WITH (...)`` clause of a Kafka table on ``topic`` (values are SQL-quoted)."""
    opts = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": cfg.kafka.bootstrap,
        **extra,
    }
    body = ",\n  ".join(f"'{k}' = '{_quote(v)}'" for k, v in opts.items())
    return f"WITH (\n  {body}\n)"


def _quote(v: str) -> str:
    return v.replace("'", "''")
