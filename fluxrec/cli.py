"""``fluxrec``: the command line. Only argument parsing lives here; each subcommand calls
one function of the package that does the work.

Exit codes: 0 success, 1 a fluxrec error (one line on stderr), 2 bad usage,
3 ``stack status`` found a service not healthy.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fluxrec.errors import FluxrecError

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

# Each package above the ground floor (the stages, then the demo) adds its own subcommands:
# ``register(subs, sub, arg)`` in PKG/cli.py, where ``sub`` and ``arg`` are :func:`_sub` and
# :func:`_arg` below. Those modules must import cheaply (no torch, no pyflink at module level).
_PACKAGE_CLIS = (
    "replay.cli",
    "pipelines.cli",
    "trainer.cli",
    "exporter.cli",
    "serving.cli",
    "demo.cli",
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _arg(
    p: argparse.ArgumentParser,
    *flags: str,
    env: str,
    default: Any = None,
    help: str = "",
    **kw: Any,
) -> None:
    """An option whose default falls back to ``$env`` (shown in ``--help``)."""
    typ = kw.get("type", str)
    if kw.get("action") == "store_true":
        value: Any = os.environ.get(env, "").lower() in ("1", "true", "yes") or bool(default)
    elif env in os.environ:
        value = typ(os.environ[env])
    else:
        value = default
    p.add_argument(*flags, default=value, help=f"{help} [env {env}]", **kw)


def _config_arg(p: argparse.ArgumentParser) -> None:
    from fluxrec.config import default_config_path

    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="deployment YAML [env FLUXREC_CONFIG; default: configs/local.yaml "
        f"in the working directory, else {default_config_path()}]",
    )


def _sub(
    subs: Any,
    name: str,
    handler: Handler,
    help: str,
    config: bool = True,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subs.add_parser(
        name, help=help, description=help, formatter_class=_Formatter
    )
    if config:
        _config_arg(p)
    p.set_defaults(handler=handler)
    return p


def _load(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fluxrec.config import load_config

    return load_config(ns.config)


# --------------------------------------------------------------------------- handlers


def _cmd_setup(ns: argparse.Namespace) -> int:
    from fluxrec.stack.setup import (
        FUNCTIONS_DIR,
        build_functions,
        ensure_debian_packages,
        find_java,
        resolve_all,
    )

    cfg = _load(ns)
    if not ns.no_apt:
        installed = ensure_debian_packages()
        if installed:
            print(f"installed Debian packages: {' '.join(installed)}")
    find_java()
    for name, changed in resolve_all(cfg.stack.jars_dir, force=ns.force).items():
        where = cfg.stack.jars_dir / name
        print(f"{name:8} jars {'resolved into' if changed else 'up to date in'} {where}")
    if FUNCTIONS_DIR.is_dir():  # a checkout of the repository: build the join's functions
        built = build_functions(force=ns.force)
        print(f"functions jar {'built in' if built else 'up to date in'} {FUNCTIONS_DIR}/target")
    return 0


def _cmd_stack_up(ns: argparse.Namespace) -> int:
    from fluxrec.stack import Stack, selected

    stack = Stack(_load(ns))
    started = stack.up(only=ns.only)
    for st in stack.status():
        if not selected(st.name, ns.only):
            continue
        note = "started" if st.name in started else "already running"
        print(f"{st.name:8} {st.address:32} pid {st.pid}  {st.state} ({note})")
    return 0


def _cmd_stack_down(ns: argparse.Namespace) -> int:
    from fluxrec.stack import Stack

    stopped = Stack(_load(ns)).down(purge=ns.purge)
    print(
        "stopped: "
        + (", ".join(stopped) if stopped else "nothing was running")
        + (" (data purged)" if ns.purge else "")
    )
    return 0


def _cmd_stack_topics(ns: argparse.Namespace) -> int:
    from fluxrec.topics import ensure_topics

    cfg = _load(ns)
    names = list(cfg.kafka.topics.all().values())
    created = ensure_topics(cfg.kafka.bootstrap, names, cfg.kafka.partitions)
    for name in names:
        print(f"{name:32} {'created' if name in created else 'exists'}")
    return 0


def _cmd_stack_status(ns: argparse.Namespace) -> int:
    from fluxrec.stack import Stack

    cfg = _load(ns)
    rows = Stack(cfg).status()
    print(f"{'service':8} {'address':32} {'pid':>8}  state")
    for st in rows:
        print(f"{st.name:8} {st.address:32} {st.pid or '-':>8}  {st.state}")
    print(f"{'objects':8} {cfg.object_store.url}")
    return 0 if all(st.healthy for st in rows) else 3


def _cmd_config_check(ns: argparse.Namespace) -> int:
    cfg = _load(ns)
    print(f"{cfg.source}: ok")
    return 0


def _cmd_config_keys(ns: argparse.Namespace) -> int:
    from fluxrec.config import iter_keys

    for key, typ, default in iter_keys():
        print(f"{key:40} {typ:28} {default}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from fluxrec import __version__

    parser = argparse.ArgumentParser(
        prog="fluxrec",
        formatter_class=_Formatter,
        description="Streaming online learning for recommendation models: Kafka -> PyFlink "
        "sample join -> continuous PyTorch training -> LZ4 deltas -> servers.",
    )
    parser.add_argument("--version", action="version", version=f"fluxrec {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _sub(
        subs,
        "setup",
        _cmd_setup,
        "install what the stack needs: Debian packages (redis-server, maven, a JDK), "
        "the Kafka, Flink-connector and s3proxy jars from Maven Central, and the sample "
        "join's Java functions (built from flink-functions/ in a checkout)",
    )
    _arg(
        p,
        "--force",
        env="FLUXREC_SETUP_FORCE",
        action="store_true",
        help="resolve the jars (and build the functions) again even when up to date",
    )
    _arg(
        p,
        "--no-apt",
        env="FLUXREC_NO_APT",
        action="store_true",
        help="never call apt-get; fail with the command to run instead",
    )

    stack = subs.add_parser(
        "stack", help="the one-machine stack: Kafka, Redis, S3 server", formatter_class=_Formatter
    )
    ssubs = stack.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    p = _sub(
        ssubs,
        "up",
        _cmd_stack_up,
        "start Kafka (KRaft), Redis and (if enabled) s3proxy; waits until healthy; "
        "running services are left alone",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=["kafka", "redis", "s3proxy", "flink"],
        help="start only this service (repeatable; flink = its JobManager and TaskManager)",
    )
    p = _sub(
        ssubs,
        "down",
        _cmd_stack_down,
        "stop the processes this stack started (by pid file), newest first",
    )
    _arg(
        p,
        "--purge",
        env="FLUXREC_PURGE",
        action="store_true",
        help="also delete Kafka, Redis and S3 data under stack.state_dir",
    )
    _sub(
        ssubs,
        "topics",
        _cmd_stack_topics,
        "create the topics named in kafka.topics on the configured broker (any Kafka cluster)",
    )
    _sub(
        ssubs,
        "status",
        _cmd_stack_status,
        "print each service, its address and health; exit 3 when one is not healthy",
    )

    cfg = subs.add_parser(
        "config", help="check or describe deployment files", formatter_class=_Formatter
    )
    csubs = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    _sub(csubs, "check", _cmd_config_check, "load and validate a deployment file")
    _sub(
        csubs, "keys", _cmd_config_keys, "list every config key, its type and default", config=False
    )

    for name in _PACKAGE_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(subs, _sub, _arg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    handler: Handler = ns.handler
    try:
        return handler(ns)
    except FluxrecError as e:
        print(f"fluxrec: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fluxrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
