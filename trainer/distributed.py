"""The workers of one training job: the process group, its collectives, the local launcher.

A job is ``world`` worker processes in one ``torch.distributed`` process group. Every worker
runs the same loop and calls the same collectives in the same order; :class:`Comm` wraps
the few the trainer uses. With one worker (``world == 1``) there is no process group and
each collective returns its input: one worker is the same code with the exchange cut short.

    comm = connect(cfg.trainer)     # RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, or one worker
    comm.all_gather(torch.tensor([n, pos], dtype=torch.float64))   # (world, 2), row r from rank r
    done = comm.all_gather_start(t); ...; rows = done()              # the same, overlapped
    comm.exchange_counts(counts)    # counts[r] is sent to rank r; row s of the result came from s
    comm.all_to_all(flat, send_splits, recv_splits)                 # all_to_all_single
    done = comm.all_reduce_start_(grads); ...; done()                 # sum, overlapped
    comm.gatherv(tensor)            # rank 0: [tensor of rank 0, of rank 1, ...]; others: None
    comm.gather_json(obj)           # the same for small JSON documents (never pickle)

Backends: ``gloo`` on CPU; ``nccl`` when every worker has a CUDA device and
``trainer.device`` is ``cuda``, or ``auto`` (each worker writes whether it has one into the
rendezvous store; the job uses CUDA only when all do). With nccl the collectives run on
``cuda:LOCAL_RANK`` tensors and the embedding tables stay in host memory.

Failures end the job, they are never waited out: a worker that cannot form the group
within ``trainer.init_timeout_s`` raises :class:`~trainer.errors.TrainerError` naming the
address and the fix; a collective that fails (a peer died: gloo sees the closed
connection at once; or was silent for ``trainer.collective_timeout_s``) raises
:class:`PeerLost`, and the worker stops without a checkpoint or an export: the last
complete checkpoint is where every worker resumes.

:func:`launch` is ``fluxrec train --workers N``: it starts N local processes of ``python
-m trainer`` with the same environment ``torchrun`` gives its workers, forwards SIGTERM
and SIGINT to them, and stops the others when one fails.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from trainer.errors import TrainerError

if TYPE_CHECKING:
    from trainer.settings import TrainerConfig

__all__ = ["Comm", "PeerLost", "connect", "launch", "split"]


class PeerLost(TrainerError):
    """A collective failed: another worker died, or was silent past the timeout."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class Comm:
    """Collectives of one worker of a job (layouts in the module docstring).

    ``bytes_sent`` counts the bytes this worker sent to other workers (what crosses a
    process boundary; a worker's part for itself is not counted).
    """

    def __init__(
        self, rank: int = 0, world: int = 1, device: str = "cpu", backend: str = ""
    ) -> None:
        self.rank, self.world, self.backend = rank, world, backend
        self.device = torch.device(device)
        self.bytes_sent = 0

    @classmethod
    def local(cls, device: str = "cpu") -> Comm:
        """One worker, no process group."""
        return cls(0, 1, device)

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world={self.world}, backend={self.backend or 'none'})"

    @property
    def name(self) -> str:
        """``worker R/N`` for messages."""
        return f"worker {self.rank}/{self.world}"

    def _run(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except RuntimeError as e:  # gloo/nccl errors and DistBackendError subclass it
            raise PeerLost(
                f"{self.name}: {what} failed ({_first_line(e)}): another worker stopped or "
                "is unreachable; the job stops without a checkpoint: restart every worker, "
                "they resume from the last complete checkpoint"
            ) from e

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every worker's 1-D ``t`` (same shape everywhere), stacked: ``(world, n)``."""
        return self.all_gather_start(t)()

    def all_gather_start(self, t: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Start :meth:`all_gather`; the returned function waits for it (the collectives
        issued in between run alongside, in the same order everywhere)."""
        if self.world == 1:
            return lambda: t.unsqueeze(0)
        src = self._dev(t.contiguous())
        out = torch.empty(self.world * src.numel(), dtype=src.dtype, device=self.device)
        work: list[Any] = []
        self._run(
            "all_gather",
            lambda: work.append(torch.distributed.all_gather_into_tensor(out, src, async_op=True)),
        )
        self.bytes_sent += src.nbytes * (self.world - 1)

        def finish() -> torch.Tensor:
            self._run("all_gather", work[0].wait)
            return out.view(self.world, -1).to(t.device)

        return finish

    def all_reduce_start_(self, t: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Start summing ``t`` over workers in place; the returned function waits for it
        (the collectives issued in between run alongside, in the same order everywhere)."""
        if self.world == 1:
            return lambda: t
        src = self._dev(t)
        work: list[Any] = []
        self._run(
            "all_reduce", lambda: work.append(torch.distributed.all_reduce(src, async_op=True))
        )
        self.bytes_sent += 2 * src.nbytes * (self.world - 1) // self.world  # ring

        def finish() -> torch.Tensor:
            self._run("all_reduce", work[0].wait)
            if src is not t:
                t.copy_(src)
            return t

        return finish

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` is True on every worker."""
        return not self.any_of(not flag)[0]

    def any_of(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag, whether it is True on any worker (one ``all_gather``)."""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        rows = self.all_gather(torch.tensor([float(f) for f in flags], dtype=torch.float64))
        return tuple(bool(x > 0) for x in rows.max(0).values.tolist())

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every worker (|value| < 2**53)."""
        if self.world == 1:
            return value
        return int(self.all_gather(torch.tensor([float(value)], dtype=torch.float64))[0, 0])

    def all_to_all(
        self, flat: torch.Tensor, send: Sequence[int], recv: Sequence[int]
    ) -> torch.Tensor:
        """``all_to_all_single``: ``flat[sum(send[:r]) : sum(send[:r + 1])]`` goes to rank
        ``r``; the result holds what rank ``s`` sent, ``recv[s]`` elements, in rank order.
        On one worker it returns ``flat`` itself."""
        if self.world == 1:
            return flat
        src = self._dev(flat.contiguous())
        out = torch.empty(int(sum(recv)), dtype=src.dtype, device=self.device)
        self._run(
            "all_to_all",
            lambda: torch.distributed.all_to_all_single(out, src, list(recv), list(send)),
        )
        self.bytes_sent += (int(sum(send)) - int(send[self.rank])) * src.element_size()
        return out

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """``counts`` is ``(world, k)`` int64, row ``r`` meant for rank ``r``; returns
        ``(world, k)`` whose row ``s`` is what rank ``s`` meant for this one."""
        if self.world == 1:
            return counts
        k = counts.shape[1]
        flat = self.all_to_all(counts.reshape(-1), [k] * self.world, [k] * self.world)
        return flat.view(self.world, k).cpu()

    def gatherv(self, t: torch.Tensor, dst: int = 0) -> list[torch.Tensor] | None:
        """Every worker's 1-D ``t`` (any length) on rank ``dst``, in rank order; None elsewhere."""
        if self.world == 1:
            return [t]
        n = self.all_gather(torch.tensor([t.numel()], dtype=torch.int64))[:, 0].tolist()
        send = [t.numel() if r == dst else 0 for r in range(self.world)]
        recv = n if self.rank == dst else [0] * self.world
        out = self.all_to_all(t.reshape(-1), send, recv).to(t.device)
        return split(out, n) if self.rank == dst else None

    def gather_json(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every worker's JSON-able ``obj`` on rank ``dst``, in rank order; None elsewhere."""
        raw = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
        got = self.gatherv(raw, dst)
        return None if got is None else [json.loads(bytes(g.cpu().numpy())) for g in got]

    def close(self) -> None:
        """Leave the process group (also after a :class:`PeerLost`, so the exit is clean)."""
        if self.world > 1 and torch.distributed.is_initialized():
            with contextlib.suppress(RuntimeError):
                torch.distributed.destroy_process_group()


def split(t: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``t`` (1-D) cut into consecutive pieces of ``sizes`` (views)."""
    out, at = [], 0
    for n in sizes:
        out.append(t[at : at + n])
        at += n
    return out


def _want_cuda(device: str, rank: int) -> bool:
    """Whether this worker runs on CUDA for ``trainer.device``, before the job agrees."""
    has = torch.cuda.is_available()
    if device == "cuda" and not has:
        raise TrainerError(
            f"trainer.device is cuda, but worker {rank} has no CUDA device "
            "(torch.cuda.is_available() is False): use trainer.device auto or cpu"
        )
    return device != "cpu" and has


def connect(tc: TrainerConfig, env: Mapping[str, str] | None = None) -> Comm:
    """This worker's :class:`Comm`: from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` (set by :func:`launch` and by ``torchrun``), or one
    worker without a process group when ``WORLD_SIZE`` is unset or 1."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    if world == 1:
        return Comm.local(f"cuda:{local_rank}" if _want_cuda(tc.device, 0) else "cpu")
    where = f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
    init = datetime.timedelta(seconds=tc.init_timeout_s)
    try:
        cuda = _want_cuda(tc.device, rank)
        if rank != 0:  # reach rank 0's store first: a clean error instead of c10d's log
            _reach(env.get("MASTER_ADDR", ""), int(env.get("MASTER_PORT", "0")), tc.init_timeout_s)
        from torch.distributed.rendezvous import rendezvous

        store, _, _ = next(rendezvous("env://", rank, world, timeout=init))
        store.set(f"fluxrec/cuda/{rank}", "1" if cuda else "0")
        keys = [f"fluxrec/cuda/{r}" for r in range(world)]
        store.wait(keys, init)
        cuda = all(store.get(k) == b"1" for k in keys)
        if tc.device == "cuda" and not cuda:
            raise TrainerError(
                "trainer.device is cuda, but not every worker has a CUDA device: "
                "use trainer.device auto (cpu unless all have one) or cpu"
            )
        device = f"cuda:{local_rank}" if cuda else "cpu"
        if cuda:
            torch.cuda.set_device(local_rank)
        # torch.optim's first optimizer imports torch._dynamo, and that import, done while a
        # group exists, keeps references to it that destroy_process_group cannot drop: gloo's
        # threads then outlive close() and die with the interpreter, which now and then
        # aborts the exit ("terminate called without an active exception"). Imported first,
        # it holds none, and close() ends the group's threads.
        importlib.import_module("torch._dynamo")
        torch.distributed.init_process_group(
            "nccl" if cuda else "gloo",
            store=store,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=tc.collective_timeout_s),
        )
        comm = Comm(rank, world, device, "nccl" if cuda else "gloo")
        comm.all_gather(torch.zeros(1))  # the group works end to end
        return comm
    except TrainerError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise TrainerError(
            f"worker {rank}/{world}: no process group at {where} within "
            f"{tc.init_timeout_s:g} s ({_first_line(e)}): start all {world} workers with the "
            "same MASTER_ADDR and MASTER_PORT (fluxrec train --workers N does so on one "
            "machine), check that rank 0's host accepts connections on that port, or raise "
            "trainer.init_timeout_s"
        ) from e


def _reach(host: str, port: int, timeout_s: float) -> None:
    """Wait until ``host:port`` accepts a TCP connection; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, timeout_s / 10)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{host}:{port} refused or did not answer: {e}") from e
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LAUNCHER_PID = "FLUXREC_LAUNCHER_PID"


def follow_launcher() -> None:
    """In a worker started by :func:`launch`: get SIGTERM (a final checkpoint, then exit)
    when the launcher dies, also by ``kill -9``, instead of training on as an orphan.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and under ``torchrun``, nothing.
    """
    pid = os.environ.get(_LAUNCHER_PID)
    if not pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(pid):  # the launcher died before prctl: the signal never comes
        os.kill(os.getpid(), signal.SIGTERM)


def launch(
    workers: int, args: Sequence[str], say: Callable[[str], None] = print, grace_s: float = 30.0
) -> int:
    """Run ``python -m trainer ARGS`` as ``workers`` processes of one job on this machine.

    Each gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
    ``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``, as from ``torchrun --standalone``.
    SIGTERM and SIGINT are forwarded to every worker (each stops at the same step with a
    final checkpoint). When one worker fails, the others see it in their next collective
    and stop; any still running ``grace_s`` later are terminated. Returns 0 when every
    worker exited 0, else 1.
    """
    port = _free_port()
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(workers),
        "LOCAL_WORLD_SIZE": str(workers),
        _LAUNCHER_PID: str(os.getpid()),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "trainer", *args],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
        )
        for r in range(workers)
    ]
    say(
        f"fluxrec train: {workers} workers on 127.0.0.1:{port}, pids "
        + " ".join(str(p.pid) for p in procs)
    )

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    failed_at = 0.0
    told: set[int] = set()
    try:
        while True:
            alive = any(p.poll() is None for p in procs)
            for r, p in enumerate(procs):
                if p.returncode not in (None, 0) and r not in told:
                    told.add(r)
                    failed_at = failed_at or time.monotonic()
                    how = p.returncode
                    cause = f"killed by signal {-how}" if how < 0 else f"exit status {how}"
                    say(f"fluxrec train: worker {r} (pid {p.pid}) ended: {cause}")
            if not alive:
                break
            if failed_at and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    say(
        f"fluxrec train: the job stopped (exit statuses {codes}); run the same command "
        "again: every worker resumes from the last complete checkpoint"
    )
    return 1
