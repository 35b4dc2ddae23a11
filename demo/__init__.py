"""``fluxrec demo`` and ``fluxrec report``: the whole pipeline on one machine, measured.

* :mod:`demo.runner`: ``run_demo`` (stack, per-run topics, the join, trainer and
  scoring-server processes, the replay, tracing, an orderly drain and stop);
* :mod:`demo.replay` and :mod:`demo.join`: the replay and join processes;
* :mod:`demo.trace`: what the demo records while it runs (samples as they become
  visible, progress);
* :mod:`demo.analysis` and :mod:`demo.report`: freshness per stage,
  quality, the offline comparisons, ``report.md``, ``summary.json`` and the plots;
* :mod:`demo.smoke`: the stack smoke check (``fluxrec smoke``).

Only the smoke check is imported here (it is light); the rest is imported on use.
"""

from demo.smoke import SmokeReport, consume_all, run_smoke, smoke_events

__all__ = ["SmokeReport", "consume_all", "run_smoke", "smoke_events"]
