"""Build PyFlink table environments from the deployment config.

The Kafka SQL connector jar is found in ``stack.jars_dir`` (``fluxrec setup`` resolves it
from Maven Central), the sample join's functions jar in ``flink-functions/target`` (``fluxrec
setup`` builds it); both go through ``pipeline.jars``, so a job submitted to a cluster ships
them. Without ``flink.jobmanager`` the job runs in a local MiniCluster inside this process's
JVM gateway.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from fluxrec.config import Config
from fluxrec.errors import ConfigError
from fluxrec.stack.setup import connector_jar, functions_jar
from sample_join.sql import literal

if TYPE_CHECKING:
    from pyflink.table import TableEnvironment

__all__ = ["changelog_options", "create_table_env", "kafka_table_options"]


def create_table_env(
    cfg: Config,
    parallelism: int | None = None,
    checkpoint_interval_ms: int | None = None,
    jobmanager: str | None = None,
    restore_from: str | None = None,
) -> TableEnvironment:
    """A streaming TableEnvironment with the connector jar, parallelism and checkpointing
    (with the changelog state backend: :func:`changelog_options`).

    ``jobmanager`` (REST ``HOST:PORT``) submits to that cluster instead of a local
    MiniCluster; ``restore_from`` is a checkpoint or savepoint path to start from (with the
    changelog, in Flink's ``CLAIM`` mode: the new job owns it and deletes it once a newer
    checkpoint subsumes it). Checkpoints are retained when a job is cancelled, so a later
    run can restore them.
    """
    try:
        from pyflink.common import Configuration
        from pyflink.table import EnvironmentSettings, TableEnvironment
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the Flink jobs need pyflink: pip install 'fluxrec[flink]'") from e

    # PyFlink starts its JVM (and a local MiniCluster in it) at its first Java object in a
    # process, with the flags in $JVM_ARGS
    os.environ.setdefault("JVM_ARGS", cfg.flink.jvm_args)
    interval = (
        cfg.flink.checkpoint_interval_ms
        if checkpoint_interval_ms is None
        else checkpoint_interval_ms
    )
    checkpoints: dict[str, str] = {}
    if interval > 0:
        checkpoints["execution.checkpointing.interval"] = f"{interval} ms"
        checkpoints["execution.checkpointing.externalized-checkpoint-retention"] = (
            "RETAIN_ON_CANCELLATION"
        )
        ckdir = cfg.flink.checkpoint_dir
        if ckdir is None and jobmanager is None:
            ckdir = (cfg.stack.state_dir / "flink" / "checkpoints").as_uri()
        if ckdir:
            checkpoints["execution.checkpointing.dir"] = ckdir
            checkpoints |= changelog_options(cfg, ckdir)
    # set where the job's execution config is made (the table config does not reach it):
    # chained operators hand records on without copying them (no function keeps one); the
    # state backend (a local MiniCluster builds its task managers from this configuration)
    runtime = Configuration()
    runtime.set_string("pipeline.object-reuse", "true")
    for key, value in checkpoints.items():
        runtime.set_string(key, value)
    settings = EnvironmentSettings.new_instance().in_streaming_mode()
    t_env = TableEnvironment.create(settings.with_configuration(runtime).build())
    conf = t_env.get_config()
    jars = [connector_jar(cfg.stack.jars_dir), functions_jar()]
    conf.set("pipeline.jars", ";".join(j.as_uri() for j in jars))
    conf.set("parallelism.default", str(parallelism or cfg.flink.parallelism))
    conf.set("python.executable", sys.executable)
    conf.set("table.exec.resource.default-parallelism", str(parallelism or cfg.flink.parallelism))
    for key, value in checkpoints.items():
        conf.set(key, value)
    if jobmanager:
        host, _, port = jobmanager.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                "flink.jobmanager", str(cfg.source), f"{jobmanager!r} is not HOST:PORT",
                "give the REST address of the JobManager, e.g. 127.0.0.1:8081",
            )  # fmt: skip
        conf.set("execution.target", "remote")
        conf.set("rest.address", host)
        conf.set("rest.port", port)
    if restore_from:
        conf.set("execution.state-recovery.path", restore_from)
        if "state.changelog.enabled" in checkpoints:
            # the changelog backend cannot make the first checkpoint after a restore a full
            # one, which NO_CLAIM (Flink's default) needs: the job takes the checkpoint over
            conf.set("execution.state-recovery.claim-mode", "CLAIM")
    return t_env


def changelog_options(cfg: Config, checkpoint_dir: str) -> dict[str, str]:
    """Flink settings of ``flink.state_changelog``: Flink's changelog state backend over the
    heap state, its log in ``CHECKPOINT_DIR/changelog``, a full copy of the state every
    ``flink.materialize_interval_ms`` (none when ``state_changelog`` is false).

    Without it every checkpoint writes all the keyed state (the join keeps an entry per
    impression for ``join.dedup_ttl_ms``), so a checkpoint's cost grows with the state; with
    it a checkpoint writes what changed since the previous one.
    """
    if not cfg.flink.state_changelog:
        return {}
    if cfg.flink.materialize_interval_ms <= 0:
        raise ConfigError(
            "flink.materialize_interval_ms", str(cfg.source),
            f"{cfg.flink.materialize_interval_ms} is not positive",
            "give the interval of the state's full copies in ms, e.g. 30000, or set "
            "flink.state_changelog: false",
        )  # fmt: skip
    return {
        "state.changelog.enabled": "true",
        "state.changelog.storage": "filesystem",
        "state.changelog.dstl.dfs.base-path": checkpoint_dir.rstrip("/") + "/changelog",
        "state.changelog.periodic-materialize.interval": f"{cfg.flink.materialize_interval_ms} ms",
    }


def kafka_table_options(cfg: Config, topic: str, **extra: str) -> str:
    """The ``WITH (...)`` clause of a Kafka table on ``topic`` (values are SQL-quoted)."""
    opts = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": cfg.kafka.bootstrap,
        **extra,
    }
    body = ",\n  ".join(f"{literal(k)} = {literal(v)}" for k, v in opts.items())
    return f"WITH (\n  {body}\n)"
