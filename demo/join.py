"""The demo's join process: ``pipelines.join_job.join_job`` in a local MiniCluster, tuned
for latency, with a Prometheus endpoint and an end-of-stream drain.

``python -m demo.join --config RUN/config.yaml [--prometheus-port N]``

Compared with ``fluxrec join run`` it sets what matters for freshness and is not in the
deployment config: watermarks are emitted every ``--watermark-interval-ms`` (Flink's
default is 200 ms) and network buffers are flushed every ``--buffer-timeout-ms`` (default
100 ms); its JVM compiles with C1 only (:data:`C1_ONLY`, added to ``flink.jvm_args``;
``--jvm-args``). The Flink metrics are served by Flink's Prometheus reporter on
``--prometheus-port``. SIGTERM *drains* the job: stop-with-savepoint advancing to the end
of event time, so every window still open is closed, its samples are emitted and committed
(the end of the replay is the end of the stream); SIGINT cancels it. Prints one line per
state change (``running JOB``, ``drained``, ``cancelled``, ``finished``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["C1_ONLY", "main"]

#: The demo's JVM compiles with C1 only. A fresh Flink JVM spends its first minute or two
#: compiling with C2 (about half a core here, measured: BENCHMARKS.md), longer than a demo
#: runs; C1's code is slower per event, but it is ready within seconds.
C1_ONLY = "-XX:TieredStopAtLevel=1"


def _reporter_on_classpath() -> None:
    """Put Flink's Prometheus reporter jar on the PyFlink gateway's classpath.

    The MiniCluster inside the gateway JVM finds reporters on its classpath only (it loads
    no plugin folder); PyFlink appends ``$HADOOP_CLASSPATH`` to that classpath when it
    launches the gateway, which happens at the first table environment.
    """
    import pyflink

    jars = sorted(Path(pyflink.__file__).parent.glob("plugins/metrics-prometheus/*.jar"))
    if jars:
        extra = os.environ.get("HADOOP_CLASSPATH", "")
        os.environ["HADOOP_CLASSPATH"] = os.pathsep.join([*map(str, jars), extra]).rstrip(
            os.pathsep
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.join", description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--prometheus-port", type=int, default=0, help="0: no Prometheus reporter")
    p.add_argument("--watermark-interval-ms", type=int, default=50)
    p.add_argument("--buffer-timeout-ms", type=int, default=10)
    p.add_argument("--savepoint-dir", type=Path, default=None)
    p.add_argument("--log-dir", type=Path, default=None, help="the Flink JVM's log folder")
    p.add_argument(
        "--jvm-args", default=os.environ.get("JVM_ARGS"),
        help=f"options of the Flink JVM (default: $JVM_ARGS, else {C1_ONLY!r} and the "
        "config's flink.jvm_args)",
    )  # fmt: skip
    ns = p.parse_args(argv)
    from fluxrec.config import load_config

    cfg = load_config(ns.config)
    # PyFlink starts the gateway JVM (and the MiniCluster in it) with $JVM_ARGS
    jvm_args = ns.jvm_args if ns.jvm_args is not None else f"{C1_ONLY} {cfg.flink.jvm_args}"
    os.environ["JVM_ARGS"] = jvm_args.strip()
    if ns.log_dir is not None:  # else PyFlink's JVMs all write one file inside the venv
        ns.log_dir.mkdir(parents=True, exist_ok=True)
        os.environ["FLINK_LOG_DIR"] = str(ns.log_dir)

    from pipelines.flink_env import create_table_env
    from pipelines.join_job import JoinTopics, join_job

    if ns.prometheus_port:
        _reporter_on_classpath()
    t_env = create_table_env(cfg)
    settings = {
        "pipeline.auto-watermark-interval": f"{ns.watermark_interval_ms} ms",
        "execution.buffer-timeout.interval": f"{ns.buffer_timeout_ms} ms",
    }
    if ns.prometheus_port:
        settings |= {
            "metrics.reporter.prom.factory.class": (
                "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
            ),
            "metrics.reporter.prom.port": str(ns.prometheus_port),
            "metrics.reporter.prom.host": "127.0.0.1",
        }
    # the local MiniCluster is built from the execution environment's configuration
    # (reporters, watermark interval), which the table config does not reach
    from pyflink.util.java_utils import get_j_env_configuration

    j_conf = get_j_env_configuration(t_env._get_j_env())
    for key, value in settings.items():
        t_env.get_config().set(key, value)
        j_conf.setString(key, value)
    result = join_job(t_env, cfg, JoinTopics.from_config(cfg))
    client = result.get_job_client()
    job_id = client.get_job_id()
    print(f"fluxrec demo join: running {job_id}", flush=True)

    drain, cancel = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: drain.set())
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    while not (drain.is_set() or cancel.is_set()):
        drain.wait(0.5)
        if client.get_job_status().result().name in ("FINISHED", "FAILED", "CANCELED"):
            result.wait()  # raises the job's failure, if it failed
            print(f"fluxrec demo join: finished {job_id}", flush=True)
            return 0
    if cancel.is_set():
        client.cancel().result()
        print(f"fluxrec demo join: cancelled {job_id}", flush=True)
        return 130
    from pyflink.java_gateway import get_gateway

    # PyFlink's JobClient.stop_with_savepoint misses the format argument of the Java method
    fmt = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.DEFAULT
    target = ns.savepoint_dir or cfg.stack.state_dir / "flink" / "savepoints"
    future = client._j_job_client.stopWithSavepoint(True, target.as_uri(), fmt)
    path = future.get()
    print(f"fluxrec demo join: drained {job_id} (savepoint {path})", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
