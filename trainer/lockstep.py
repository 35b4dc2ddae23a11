"""What the workers of a job agree on between two steps, and the exporter's mailbox.

Every worker of a job must call the same collectives in the same order, yet each polls
its own partitions and has its own clock. So once per iteration of the daemon's loop
(``trainer/daemon.py``) the workers exchange a few flags in one ``all_gather``
(:func:`agree`), and all of them act on the result::

    flag          set by a worker when                  the job, on every worker
    ready         its batch is full or old enough       any: one step (a worker whose batch
                  (or only its offsets moved)                is not ready trains what it has,
                                                             maybe nothing)
    stop          SIGTERM / Ctrl-C / max_samples        any: leave the loop
    caught_up     nothing pending and lag 0             all: leave the loop (--until-caught-up)
    checkpoint    its checkpoint period is over         any: write a checkpoint now
    cut, cut_full rank 0's exporter asks for a cut      any: take a cut (full if any asks)
    fatal         it cannot go on (partitions changed)  any: leave the loop, then fail

With one worker the exchange is a no-op and the flags are its own.

The exporter runs on a thread of rank 0, but a cut is collective: it must be taken by
every worker between the same two steps. :class:`CutMailbox` carries the exporter's
request to the loop, which takes the cut on every worker and hands it back.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import torch

from exporter.types import Cut, PartsCut
from trainer.distributed import Comm

__all__ = ["Agreement", "CutMailbox", "agree"]


@dataclass(frozen=True)
class Agreement:
    """The job's decision for this iteration (module docstring)."""

    ready: bool = False
    stop: bool = False
    caught_up: bool = False
    checkpoint: bool = False
    cut: bool = False
    cut_full: bool = False
    fatal: bool = False


_ALL = frozenset({"caught_up"})  # the others: any worker


def agree(comm: Comm, **flags: bool) -> Agreement:
    """One ``all_gather`` of this worker's ``flags`` (the fields of :class:`Agreement`)."""
    names = [f.name for f in dataclasses.fields(Agreement)]
    unknown = set(flags) - set(names)
    if unknown:
        raise TypeError(f"agree: unknown flags {sorted(unknown)}")
    row = torch.tensor([float(flags.get(n, False)) for n in names], dtype=torch.float64)
    rows = comm.all_gather(row)
    return Agreement(
        **{
            n: bool(rows[:, i].min() > 0) if n in _ALL else bool(rows[:, i].max() > 0)
            for i, n in enumerate(names)
        }
    )


class CutMailbox:
    """The exporter thread asks for a cut (:meth:`take_cut`, blocking); the loop sees the
    request (:meth:`asked`), takes the cut on every worker and hands it over
    (:meth:`serve`). After :meth:`close` every request is answered None."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asked: bool | None = None  # the pending request's ``full``
        self._cut: Cut | PartsCut | None = None
        self._served = 0
        self._closed = False

    def take_cut(self, full: bool) -> Cut | PartsCut | None:
        """The exporter's ``take_cut``: the cut taken at the loop's next iteration."""
        with self._cond:
            if self._closed:
                return None
            self._asked = bool(self._asked) or full
            ticket = self._served
            while self._served == ticket and not self._closed:
                self._cond.wait(0.5)
            cut, self._cut = self._cut, None
            return cut

    def asked(self) -> tuple[bool, bool]:
        """(a cut is wanted, it must be full)."""
        with self._cond:
            return self._asked is not None, bool(self._asked)

    def serve(self, cut: Cut | PartsCut | None) -> None:
        with self._cond:
            self._cut, self._asked = cut, None
            self._served += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
