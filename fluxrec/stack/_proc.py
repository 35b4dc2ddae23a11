"""Background processes owned by the stack, tracked by pid files.

A pid file is JSON ``{"pid": 1234, "start": 5678901, "argv0": "java"}`` where ``start``
is the process start time in clock ticks since boot (``/proc/PID/stat`` field 22).
A pid whose start time differs is a different process that reused the number: the
stack never signals it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ManagedProcess", "port_is_free"]


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks, or None if it does not exist or is a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: reap it if it is our child
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return int(fields[19])


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class ManagedProcess:
    """One service process: ``run/NAME.pid`` and ``logs/NAME.log`` under the state dir."""

    name: str
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of our live process, or None (a stale pid file is removed)."""
        try:
            info = json.loads(self.pid_file.read_text())
            pid, start = int(info["pid"]), int(info["start"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _start_ticks(pid) != start:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start ``argv`` detached (own session), stdout+stderr appended to the log file."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start {argv[0]}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        start = None
        for _ in range(100):  # /proc entry appears at once; be patient on a loaded machine
            start = _start_ticks(proc.pid)
            if start is not None or proc.poll() is not None:
                break
            time.sleep(0.01)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "start": start or 0, "argv0": argv[0]}))
        tmp.replace(self.pid_file)
        return proc.pid

    def alive(self) -> bool:
        return self.pid() is not None

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, wait, then SIGKILL. Returns True if a process was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        start = _start_ticks(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _start_ticks(pid) == start:
            time.sleep(0.1)
        if _start_ticks(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _start_ticks(pid) == start:
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 200) -> list[str]:
        try:
            with self.log_file.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        # only the latest run: everything after the last start marker
        text = text.rsplit("\n==== ", 1)[-1]
        return text.splitlines()[-lines:]
