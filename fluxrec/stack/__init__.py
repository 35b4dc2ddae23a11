"""The one-machine stack: Kafka (KRaft), Redis and, optionally, an S3-compatible server and
a Flink session cluster, started as background processes without Docker.

>>> stack = Stack(load_config("configs/local.yaml"))   # doctest: +SKIP
>>> stack.up()          # idempotent: running services are left alone
>>> stack.status()      # [ServiceStatus(name='kafka', address='127.0.0.1:9092', ...), ...]
>>> stack.down()        # stops only the processes recorded in the stack's pid files

The object store at ``file://`` is a directory and needs no process.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from fluxrec.config import Config
from fluxrec.errors import PortInUse, ServiceStartError
from fluxrec.stack._proc import port_is_free
from fluxrec.stack.flink import FlinkJobManager, FlinkTaskManager
from fluxrec.stack.services import (
    LOOPBACK,
    KafkaService,
    RedisService,
    S3ProxyService,
    Service,
)

__all__ = ["ServiceStatus", "Stack", "selected"]


@dataclass(frozen=True)
class ServiceStatus:
    """One line of ``fluxrec stack status``."""

    name: str
    address: str
    pid: int | None
    healthy: bool

    @property
    def state(self) -> str:
        if self.pid is None:
            return "stopped"
        return "healthy" if self.healthy else "unhealthy"


class Stack:
    """The services a config asks for, in start order."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.services: list[Service] = [KafkaService(cfg), RedisService(cfg)]
        if cfg.object_store.s3_server.enabled:
            self.services.append(S3ProxyService(cfg))
        if cfg.flink.cluster.enabled:
            self.services += [FlinkJobManager(cfg), FlinkTaskManager(cfg)]

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def up(self, only: list[str] | None = None) -> list[str]:
        """Start what is not running and wait until each is healthy.

        Returns the names of the services that were started (empty when all ran already).
        """
        chosen = [s for s in self.services if selected(s.name, only)]
        todo = [s for s in chosen if not s.proc.alive()]
        # check every port before starting anything: fail fast, leave nothing half-up
        for svc in todo:
            for port, key in svc.ports():
                if not port_is_free(LOOPBACK, port):
                    raise PortInUse(
                        f"port {port} ({key} in {self.cfg.source}) is in use by another "
                        f"process: stop that process or change {key}"
                    )
        started: list[str] = []
        for svc in todo:
            self._start(svc)
            started.append(svc.name)
        for svc in chosen:
            svc.after_ready()
        return started

    def _start(self, svc: Service) -> None:
        svc.prepare()
        svc.proc.start(svc.command(), env=svc.env(), cwd=self.cfg.stack.state_dir)
        deadline = time.monotonic() + self.cfg.stack.start_timeout_s
        while time.monotonic() < deadline:
            if not svc.proc.alive():
                why = svc.diagnose(svc.proc.log_tail())
                raise ServiceStartError(
                    f"{svc.name} exited during start-up: {why} (log: {svc.proc.log_file})"
                )
            if svc.healthy():
                return
            time.sleep(0.2)
        svc.proc.stop()
        raise ServiceStartError(
            f"{svc.name} did not become ready in {self.cfg.stack.start_timeout_s:.0f}s "
            f"(stack.start_timeout_s); see {svc.proc.log_file}"
        )

    def down(self, purge: bool = False) -> list[str]:
        """Stop the stack's processes in reverse order; ``purge`` also deletes their data."""
        stopped = [s.name for s in reversed(self.services) if s.proc.stop()]
        # a service disabled since it was started still has a pid file: stop it too
        extras = (S3ProxyService(self.cfg), FlinkTaskManager(self.cfg), FlinkJobManager(self.cfg))
        for extra in extras:
            if extra.name not in {s.name for s in self.services} and extra.proc.stop():
                stopped.append(extra.name)
        if purge:
            for sub in ("kafka", "redis", "s3", "flink"):
                shutil.rmtree(self.cfg.stack.state_dir / sub, ignore_errors=True)
        return stopped

    def status(self) -> list[ServiceStatus]:
        out = []
        for s in self.services:
            pid = s.proc.pid()
            out.append(ServiceStatus(s.name, s.address(), pid, pid is not None and s.healthy()))
        return out


def selected(name: str, only: list[str] | None) -> bool:
    """Is service ``name`` among ``only`` (None: all)? ``flink`` selects ``flink-jm`` and
    ``flink-tm``."""
    if only is None:
        return True
    return any(name == o or name.startswith(o + "-") for o in only)
