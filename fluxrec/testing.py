"""Helpers for tests that run against a real stack (shipped so users' own tests can use them).

>>> path = write_test_config(Path("/tmp/x"))          # doctest: +SKIP
>>> cfg = load_config(path)                            # free ports, its own state dir
>>> Stack(cfg).up(); ...; Stack(cfg).down(purge=True)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "checkpoint_done",
    "free_port",
    "unique_name",
    "wait_until",
    "write_test_config",
]

#: Deadlines of tests that wait for a service, a job or a process: generous, because CI
#: machines are loaded (a JVM may take a minute to start); a wait that succeeds returns
#: as soon as its condition holds, so only a failing test pays the full deadline.
SLOW_START_S = 300.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_name(prefix: str = "t") -> str:
    """A name no other test uses: ``prefix-1a2b3c4d5e``. Valid as topic and bucket name."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(
    what: str,
    cond: Callable[[], bool],
    timeout_s: float = SLOW_START_S,
    *,
    every_s: float = 0.2,
    alive: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``cond`` until it holds; return the seconds it took. Raises ``TimeoutError``
    naming ``what`` after ``timeout_s``, or as soon as ``alive()`` returns a reason (e.g.
    the process being waited for has exited, with its output)."""
    start = time.monotonic()
    while not cond():
        dead = alive() if alive is not None else None
        if dead:
            raise TimeoutError(f"gave up waiting for {what}: {dead}")
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - start


def checkpoint_done(checkpoints: Path, job_id: str) -> bool:
    """Has Flink job ``job_id`` completed a checkpoint under ``checkpoints`` (the folder of
    ``flink.checkpoint_dir``, by default ``stack.state_dir/flink/checkpoints``)?"""
    return any((p / "_metadata").is_file() for p in (checkpoints / job_id).glob("chk-*"))


def write_test_config(directory: Path, s3_server: bool = True, **sections: Any) -> Path:
    """Write ``directory/fluxrec.yaml``: a whole stack on free ports, state under
    ``directory/state``, jars shared with ``fluxrec setup`` ($FLUXREC_JARS or the default).

    ``sections`` are merged over the defaults, e.g. ``kafka={"partitions": 4}``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(4)]
    doc: dict[str, Any] = {
        "stack": {
            "state_dir": str(directory / "state"),
            "start_timeout_s": 120,
            "jars_dir": os.environ.get("FLUXREC_JARS", "~/.cache/fluxrec/jars"),
        },
        "kafka": {
            "bootstrap": f"127.0.0.1:{ports[0]}",
            "controller_port": ports[1],
            "heap_mb": 512,
            "partitions": 2,
        },
        "redis": {"url": f"redis://127.0.0.1:{ports[2]}/0"},
        "object_store": {
            "url": f"file://{directory / 'objects'}",
            "s3": {
                "endpoint_url": f"http://127.0.0.1:{ports[3]}",
                "region": "us-east-1",
                "access_key": "fluxrec-test",
                "secret_key": "fluxrec-test-secret",
            },
            "s3_server": {"enabled": s3_server, "port": ports[3]},
        },
        "flink": {"parallelism": 2, "checkpoint_interval_ms": 2000},
    }
    for name, body in sections.items():
        if isinstance(body, dict) and isinstance(doc.get(name), dict):
            doc[name] = {**doc[name], **body}
        else:
            doc[name] = body
    path = directory / "fluxrec.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


#: The first lines of a script a test runs where torch and pyflink cannot be imported, as
#: on a server that has only the SDK installed (an import of either raises ImportError).
WITHOUT_TORCH_OR_PYFLINK = """
import importlib.abc, sys


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "pyflink"):
            raise ImportError(f"{name} is not installed on this server")
        return None


sys.meta_path.insert(0, NotInstalled())
"""
