"""``fluxrec report RUN_DIR``: ``report.md``, ``summary.json`` and PNG plots of a demo run.

Everything is computed from the run's files (:mod:`demo.analysis`), so a report can
be made again at any time, also after the stack is gone. ``summary.json`` holds at least
``freshness_p50_s`` and ``freshness_p99_s`` (label final -> applied in the server),
``prequential_auc``, ``offline_auc`` and ``samples``; the figures are in ``plots/``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from demo.analysis import (
    STRATEGIES,
    Eval,
    Freshness,
    RunData,
    StageStats,
    freshness,
    impressions,
    live_scores,
    load_run,
    offline_one_pass,
    offline_trainer,
    oracle,
    simulate,
    streaming_scores,
    throughput,
)

__all__ = ["GOALS", "write_report"]

#: issue 6: label final -> applied in the server, and the streaming model vs one pass offline
GOALS = {"freshness_p50_s": 1.5, "freshness_p99_s": 2.4, "auc_gap": 0.002}

Say = Callable[[str], None]


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def _plots(  # noqa: PLR0915
    out: Path,
    run: RunData,
    *,
    fr: Freshness,
    quality: list[Eval],
    strategies: list[Eval],
    frozen: list[Eval],
    freeze_at_ms: int | None,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    t0 = int(run.meta.get("times", {}).get("replay_start_ms") or 0)

    # throughput of each stage over time
    tp = throughput(run)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, (t, r) in tp.items():
        (ax2 if name.startswith("versions") else ax1).plot(t, r, label=name)
    ax1.set_ylabel("records / s")
    ax2.set_ylabel("versions / s")
    ax2.set_xlabel("seconds since the run's tracing started")
    for ax in (ax1, ax2):
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    ax1.set_title("Throughput of each stage")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    files["throughput"] = "plots/throughput.png"

    # freshness: CDF from label final to each stage, and per-stage percentiles
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, ms in fr.cumulative.items():
        if ms.size:
            x = np.sort(ms / 1000)
            ax1.plot(x, np.arange(1, x.size + 1) / x.size, label=f"label final -> {name}")
    for goal, style in ((GOALS["freshness_p50_s"], ":"), (GOALS["freshness_p99_s"], "--")):
        ax1.axvline(goal, color="grey", linestyle=style, linewidth=1)
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("fraction of samples")
    ax1.set_title("Freshness (goals: p50 1.5 s, p99 2.4 s)")
    ax1.legend(fontsize=8, loc="lower right")
    ax1.grid(alpha=0.3)
    names = [s.name.split(" (")[0] for s in fr.stages[:-1]]
    xs = np.arange(len(names))
    for i, (q, label) in enumerate((("p50", "p50"), ("p95", "p95"), ("p99", "p99"))):
        ax2.bar(xs + (i - 1) * 0.27, [getattr(s, q) for s in fr.stages[:-1]], 0.27, label=label)
    ax2.set_xticks(xs, [n.replace(" -> ", "\n-> ") for n in names], fontsize=7)
    ax2.set_ylabel("seconds")
    ax2.set_title("Per stage")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "freshness.png", dpi=110)
    plt.close(fig)
    files["freshness"] = "plots/freshness.png"

    window_ms = run.cfg.trainer.metrics_window_ms

    def over_time(evals: list[Eval], title: str, name: str, vline: int | None = None) -> None:
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        for e in evals:
            if not e.n:
                continue
            ws, a, ll, _ = e.windows(window_ms)
            x = (ws + window_ms / 2 - t0) / 1000
            a1.plot(x, a, marker=".", label=f"{e.name} (AUC {_f(e.auc)})")
            a2.plot(x, ll, marker=".", label=f"{e.name} (log loss {_f(e.logloss, 4)})")
        for ax in (a1, a2):
            if vline is not None:
                ax.axvline((vline - t0) / 1000, color="grey", linestyle="--", linewidth=1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        a1.set_ylabel(f"AUC per {window_ms / 1000:g} s window")
        a2.set_ylabel("log loss")
        a2.set_xlabel("event time, seconds since the replay started")
        a1.set_title(title)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        files[name] = f"plots/{name}.png"

    over_time(quality, "Prequential quality over event time", "quality")
    if strategies:
        over_time(strategies, "window vs fake_negative, scored at impression time", "strategies")
    if frozen:
        over_time(frozen, "Online vs frozen after the first part", "frozen", freeze_at_ms)
    return files


def _stage(s: StageStats) -> dict[str, Any]:
    return {
        "n": s.n,
        "p50_s": _num(s.p50),
        "p95_s": _num(s.p95),
        "p99_s": _num(s.p99),
        "mean_s": _num(s.mean),
        "max_s": _num(s.max),
    }


def _table(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def _batch_compute() -> Iterator[None]:
    """No cyclic garbage collection and one torch thread while the report computes.

    What the report computes lives until it ends: the collector's passes over it only
    cost time (40% of the report's when the samples were ~10^6 dicts; they are columns now,
    :class:`demo.analysis.Traced`); and two torch threads on a two-core machine that has
    other work fight for the cores (one offline pass measured 20x slower with two threads
    than with one, BENCHMARKS.md "Demo report"). The trainings run on threads of their own
    (:func:`_write_report`), each with one torch thread.
    """
    import torch

    enabled, threads = gc.isenabled(), torch.get_num_threads()
    gc.disable()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if enabled:
            gc.enable()


def write_report(run_dir: Path, say: Say = print, comparisons: bool = True) -> dict[str, Any]:
    """Compute, write ``report.md``, ``summary.json`` and ``plots/``; return the summary."""
    with _batch_compute():
        return _write_report(run_dir, say, comparisons)


def _write_report(run_dir: Path, say: Say, comparisons: bool) -> dict[str, Any]:  # noqa: PLR0915
    t_start = time.monotonic()
    run = load_run(run_dir)
    cfg = run.cfg
    problems: list[str] = []
    fr = freshness(run)
    stream = streaming_scores(run)
    trainer = offline_trainer(cfg)  # featurizes the impressions, then trains the offline pass
    imps = impressions(run, trainer)
    orc = oracle(run)
    # the trainings: the offline pass and, for the comparisons, a serve-time simulation of
    # each strategy (the run's with a frozen model): independent trainers, one thread each
    # (most of their time is in torch kernels, which release the GIL: with three similar
    # jobs, three threads keep two cores busy to the end, where two threads leave one idle
    # for the last job)
    jobs: dict[str, Callable[[], Any]] = {}
    freeze_at = None
    if comparisons and imps.n:
        t_first, t_last = int(imps.t_imp.min()), int(imps.t_imp.max())
        freeze_at = t_first + (t_last - t_first) // 3
        for strategy in STRATEGIES:
            jobs[strategy] = functools.partial(
                simulate,
                run,
                imps,
                strategy,
                freeze_at_ms=freeze_at if strategy == cfg.join.strategy else None,
                trainer=offline_trainer(cfg, strategy),  # built here: see offline_trainer
            )
    jobs["offline"] = functools.partial(offline_one_pass, run, imps, trainer=trainer)
    with ThreadPoolExecutor(len(jobs), thread_name_prefix="report") as pool:
        done = {name: pool.submit(job) for name, job in jobs.items()}
        results = {name: f.result() for name, f in done.items()}
    offline: Eval = results.pop("offline")
    strategies: list[Eval] = []
    frozen: list[Eval] = []
    for which, (online, frozen_eval) in results.items():
        strategies.append(online)
        if frozen_eval is not None:
            name = f"{which}, updated online"
            frozen = [Eval(name, online.pred, online.label, online.ev), frozen_eval]
    live = live_scores(run, imps)
    quality = [e for e in (stream, offline, orc, live) if e is not None]
    files = _plots(
        run_dir / "plots",
        run,
        fr=fr,
        quality=quality,
        strategies=strategies,
        frozen=frozen,
        freeze_at_ms=freeze_at,
    )

    # ------------------------------------------------------------------ summary
    last = run.progress[-1] if run.progress else {}
    events = sum((run.replay.get("events") or {}).values()) or int(last.get("events", 0))
    e2e = fr.stages[-1]
    processed = {
        "events": events,
        "samples": run.traced.n,
        "trained": int(stream.n),
        "versions_published": len(run.versions),
        "versions_applied": len(run.applied),
    }
    for stage, n in processed.items():
        if not n:
            problems.append(f"no {stage.replace('_', ' ')}: that stage processed nothing")
    gap = stream.auc - offline.auc if stream.n and offline.n else math.nan
    # after a warm-up of two label windows: under the window strategy a fresh stream
    # delivers only positives for one window (negatives wait for their window to close)
    warm = int(stream.ev.min()) + 2 * max(run.windows_ms.values()) if stream.n else 0
    steady = [e.since(warm) for e in quality]
    gap_steady = steady[0].auc - steady[1].auc if steady[0].n and steady[1].n else math.nan
    summary: dict[str, Any] = {
        "run_id": run.meta.get("run_id"),
        "source": cfg.replay.source,
        "strategy": cfg.join.strategy,
        "label": run.label,
        "samples": run.traced.n,
        "events": events,
        "freshness_p50_s": _num(e2e.p50),
        "freshness_p95_s": _num(e2e.p95),
        "freshness_p99_s": _num(e2e.p99),
        "freshness_samples": e2e.n,
        "prequential_auc": _num(stream.auc),
        "prequential_logloss": _num(stream.logloss),
        "offline_auc": _num(offline.auc),
        "offline_logloss": _num(offline.logloss),
        "auc_gap": _num(gap),
        "prequential_auc_steady": _num(steady[0].auc),
        "offline_auc_steady": _num(steady[1].auc),
        "auc_gap_steady": _num(gap_steady),
        "steady_from_ms": warm,
        "oracle_auc": _num(orc.auc) if orc is not None else None,
        "live_auc": _num(live.auc) if live is not None else None,
        "processed": processed,
        "stages": {s.name: _stage(s) for s in [*fr.stages, *fr.by_kind]},
        "freshness_counts": fr.counts,
        "strategies": {
            e.name: {"auc": _num(e.auc), "logloss": _num(e.logloss), "n": e.n} for e in strategies
        },
        "frozen": {
            e.name: {
                "auc_after_freeze": _num(e.since(freeze_at or 0).auc),
                "logloss_after_freeze": _num(e.since(freeze_at or 0).logloss),
            }
            for e in frozen
        },
        "join": run.join,
        "problems": problems,
    }
    goals = {
        "freshness_p50_s": (summary["freshness_p50_s"], GOALS["freshness_p50_s"]),
        "freshness_p99_s": (summary["freshness_p99_s"], GOALS["freshness_p99_s"]),
        "auc_gap": (None if math.isnan(gap) else abs(gap), GOALS["auc_gap"]),
    }
    summary["goals"] = {
        k: {"value": v, "goal": g, "met": v is not None and v <= g} for k, (v, g) in goals.items()
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    # ------------------------------------------------------------------ markdown
    t = run.meta.get("times", {})
    opts = run.meta.get("options", {})
    dur = ((t.get("replay_end_ms") or 0) - (t.get("replay_start_ms") or 0)) / 1000
    md = [f"# fluxrec demo report: run {run.meta.get('run_id', run_dir.name)}", ""]
    md += [
        f"- source: **{cfg.replay.source}**"
        + (f" (`{cfg.replay.path}`)" if cfg.replay.path else "")
        + f", replayed live (event time = wall clock), speed {run.replay.get('speed', 1):g}x, "
        f"{_f(dur, 0)} s of replay",
        f"- join: **{cfg.join.strategy}**, label `{run.label}` window "
        f"{max(run.windows_ms.values()) / 1000:g} s, watermark out-of-orderness "
        f"{cfg.join.watermark_out_of_orderness_ms} ms, source idleness "
        f"{cfg.join.source_idleness_ms} ms, Flink checkpoint every "
        f"{cfg.flink.checkpoint_interval_ms} ms (exactly-once: samples are visible at "
        "checkpoints), parallelism " + str(cfg.flink.parallelism),
        f"- trainer: {cfg.model.arch}, batch <= {cfg.trainer.batch_size} or "
        f"{cfg.trainer.max_batch_wait_s:g} s; exporter every {cfg.exporter.interval_s:g} s "
        f"to `{cfg.object_store.url}`, Redis notices on `{cfg.redis.channel}`",
        f"- command: `{' '.join(run.meta.get('argv', []) or ['fluxrec demo'])}`"
        + (f"; options {json.dumps(opts)}" if opts else ""),
        "",
        "## Pipeline",
        "",
    ]
    dead = run.join.get("dead_letters") or {}
    sent = run.replay.get("events") or {}
    dead_text = ", ".join(f"{k} {v:,}" for k, v in sorted(dead.items())) or "none"
    rows = [
        [
            "events into Kafka",
            f"{events:,}",
            ", ".join(f"{k} {v:,}" for k, v in sorted(sent.items())),
        ],
        [
            "samples joined",
            f"{run.traced.n:,}",
            f"dead letters: {dead_text}; "
            f"unbalanced windows: {run.join.get('unbalanced_windows', 'n/a')}",
        ],
        ["samples trained", f"{stream.n:,}", f"{len(run.batches):,} batches"],
        [
            "versions published",
            f"{len(run.versions):,}",
            f"refused by the safety gate: {last.get('refused', 'n/a')}",
        ],
        [
            "versions applied in the server",
            f"{len(run.applied):,}",
            f"impressions scored live: {last.get('scored', 0):,}",
        ],
    ]
    md.append(_table(rows, ["stage", "count", "notes"]))
    md += ["", "![throughput](plots/throughput.png)", "", "## Freshness", ""]
    md.append(
        "Per traced sample, on the machine's clock, from the moment its label is final "
        "(window strategy: the click, or the end of the label window for a negative; "
        "fake_negative: the impression for the negative, the click for a correction) to "
        "visible in the samples topic, trained, published in a version and applied in the "
        "scoring server."
    )
    md += [""]
    rows = [
        [s.name, f"{s.n:,}", _f(s.p50), _f(s.p95), _f(s.p99), _f(s.mean), _f(s.max)]
        for s in [*fr.stages, *fr.by_kind]
    ]
    md.append(_table(rows, ["stage (seconds)", "samples", "p50", "p95", "p99", "mean", "max"]))
    c = fr.counts
    md += [
        "",
        f"{c['measured']:,} of {c['samples']:,} samples measured; "
        f"{c['end_of_stream']:,} at the end of the stream are left out (label final after the "
        "last impression, or emitted by the end-of-run drain); not trained "
        f"{c['not_trained']}, not published "
        f"{c['not_published']}, not applied {c['not_applied']}.",
        "",
        "Goals (issue 6): label final -> applied p50 <= 1.5 s: "
        + ("**met**" if summary["goals"]["freshness_p50_s"]["met"] else "**missed**")
        + f" ({_f(e2e.p50)} s); p99 <= 2.4 s: "
        + ("**met**" if summary["goals"]["freshness_p99_s"]["met"] else "**missed**")
        + f" ({_f(e2e.p99)} s).",
        "",
        "![freshness](plots/freshness.png)",
        "",
        "## Quality",
        "",
    ]
    qrows = [
        [e.name, f"{e.n:,}", _f(e.auc, 4), _f(e.logloss, 4), _f(w.auc, 4), _f(w.logloss, 4)]
        for e, w in zip(quality, steady, strict=True)
    ]
    warm_s = (warm - int(stream.ev.min())) / 1000 if stream.n else 0
    md.append(
        _table(
            qrows,
            [
                "model",
                "scored",
                "AUC",
                "log loss",
                f"AUC after {warm_s:g} s",
                f"log loss after {warm_s:g} s",
            ],
        )
    )
    met = "**met**" if summary["goals"]["auc_gap"]["met"] else "**missed**"
    md += [
        "",
        "- streaming (prequential): the trainer scores every batch before it trains on it.",
        f"- offline one pass: the same model trained once over the same samples in the order "
        f"the trainer consumed them, in batches of {cfg.trainer.batch_size}, scored the same "
        f"way. Streaming - offline AUC = {_f(gap, 4)} (goal: within {GOALS['auc_gap']}: {met}); "
        f"after the warm-up of two label windows {_f(gap_steady, 4)}. A fresh model under "
        "the window strategy first sees only positives (clicks are emitted when they come, "
        "negatives when their window closes), and the trainer sets its output bias from its "
        "first batch: the streaming trainer's first batches are small and all positive, the "
        "offline one's first batch mixes in negatives.",
    ]
    if orc is not None:
        md.append(
            "- oracle: the synthetic generator's true p_click on the same samples: the best "
            "any model can do; the gap to it is what the model has not learnt yet."
        )
    if live is not None:
        md.append(
            "- live server: what the scoring server answered for each impression when "
            "the replay sent it (the version of that moment), against its final label."
        )
    md += ["", "![quality](plots/quality.png)", ""]
    if strategies:
        md += ["## window vs fake_negative", ""]
        md.append(
            "Both strategies on the run's impressions and labelled actions (what each would "
            "have emitted, derived from the join's samples), each impression "
            "scored at its own time by the model trained on what that strategy had emitted by "
            "then (1 s ticks), against its final label: the window strategy waits for the "
            "label window; fake_negative trains on every impression at once and on each click "
            f"as it comes (delayed loss `{cfg.trainer.delayed_loss}`)."
        )
        rows = [[e.name, f"{e.n:,}", _f(e.auc, 4), _f(e.logloss, 4)] for e in strategies]
        md += ["", _table(rows, ["strategy", "impressions", "AUC", "log loss"]), ""]
        md += ["![strategies](plots/strategies.png)", ""]
    if frozen:
        md += ["## Frozen model", ""]
        md.append(
            "The same serve-time evaluation, with a model that stops training after the first "
            "third of the replay (dashed line), against the one that keeps learning; both "
            "measured after the freeze."
        )
        after = [e.since(freeze_at or 0) for e in frozen]
        rows = [[e.name, _f(e.auc, 4), _f(e.logloss, 4)] for e in after]
        md += ["", _table(rows, ["model", "AUC after the freeze", "log loss after the freeze"]), ""]
        md += ["![frozen](plots/frozen.png)", ""]
    if problems:
        md += ["## Problems", "", *[f"- {p}" for p in problems], ""]
    md += [
        "## Files",
        "",
        "`config.yaml` (this run's deployment file), `run.json`, `events.jsonl.gz`, "
        "`samples.tsv.gz`, `trainer_trace.jsonl`, `versions.jsonl`, `server_applied.jsonl`, "
        "`served.jsonl.gz`, `progress.jsonl`, `join.json`, `logs/`. Regenerate this report "
        f"with `fluxrec report {run_dir}`.",
        "",
    ]
    (run_dir / "report.md").write_text("\n".join(md))
    summary["files"] = ["report.md", "summary.json", *files.values()]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    say(
        f"   freshness label final -> applied: p50 {_f(e2e.p50)} s, p95 {_f(e2e.p95)} s, "
        f"p99 {_f(e2e.p99)} s ({e2e.n:,} samples)"
    )
    say(
        f"   prequential AUC {_f(stream.auc, 4)}, offline one pass {_f(offline.auc, 4)} "
        f"(gap {_f(gap, 4)})"
        + (f", oracle {_f(orc.auc, 4)}" if orc is not None else "")
        + (f", live server {_f(live.auc, 4)}" if live is not None else "")
    )
    say(f"   {run_dir / 'report.md'} ({time.monotonic() - t_start:.0f} s to compute)")
    return summary
