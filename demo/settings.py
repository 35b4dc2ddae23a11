"""What one demo run uses: its options, and the deployment file it writes for its processes.

A run never changes the user's deployment file. It writes ``RUN/config.yaml``, which
``extends`` that file (so endpoints and credentials stay where they are; no secret is
copied) and sets, on top:

* per-run names: topics ``<topic>.demo-<id>``, the join's consumer group / transactional
  ids, the Redis channel, an object-store prefix (``RUN/objects`` for ``file://``,
  ``<prefix>/demo-<id>`` otherwise), the trainer's and Flink's checkpoint folders;
* what is replayed: the config's own log (``replay.source`` table or taobao, with its
  ``features:``), or for ``--data`` with a config that replays the synthetic stream, the
  sections ``replay`` and ``features`` of the sample config of that log
  (:data:`SAMPLE_CONFIGS`); the synthetic stream's features when the config has none;
* one join label per action type of the source (``--window``), the first one trained;
* the latency settings of :data:`TUNING` (each a config key; ``--set KEY=VALUE`` overrides
  any key of the file);
* every path-valued key of the user's file as an absolute path (``extends`` resolves
  relative paths against the extending file's folder).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fluxrec.config import Config, iter_keys, load_config
from fluxrec.errors import FluxrecError

__all__ = [
    "SAMPLE_CONFIGS",
    "TUNING",
    "DemoError",
    "DemoOptions",
    "check_options",
    "detect_log",
    "parse_set",
    "run_config",
]


class DemoError(FluxrecError):
    """The demo could not run: a bad option, a process that failed, a stage without output."""


#: Sample configs (``configs/``) of the public logs in ``shared/data``, by a word in the
#: log's folder or file name: ``--data`` with a config that replays no log uses one.
SAMPLE_CONFIGS = (
    ("userbehavior", "taobao.yaml"),
    ("taobao", "taobao.yaml"),
    ("tencent", "tencent.yaml"),
    ("train_small", "tencent.yaml"),
    ("obd", "obd.yaml"),
    ("bts_", "obd.yaml"),
    ("random_", "obd.yaml"),
)

#: Latency settings of the demo (config keys). Why each value:
TUNING: dict[str, Any] = {
    # exactly-once samples become visible when a checkpoint completes: check often
    "flink.checkpoint_interval_ms": 200,
    # one subtask per operator: on one machine the join shares its cores with the replay,
    # Kafka, the trainer and the server, and a second subtask of each operator cost more
    # than it gave (bench-pipeline at 5,000/s on 2 cores: join 0.80 -> 0.66 core, and the
    # rate sustained; BENCHMARKS.md); --set flink.parallelism=N on a larger machine
    "flink.parallelism": 1,
    # live replay sends each partition in event-time order: little disorder to wait for
    "join.watermark_out_of_orderness_ms": 150,
    # a sparse partition (clicks) must not hold the watermark back for long
    "join.source_idleness_ms": 300,
    # bot detection makes every action wait for the watermark (CONTRACTS.md 4.4)
    "join.bot_max_actions": 0,
    "join.late_horizon_ms": 60_000,
    "join.metrics_window_ms": 10_000,
    "join.metrics_flush_ms": 1_000,
    # a produce request every 20 ms (not every 2): at thousands of events/s the replay's
    # client, the broker and the join's sources (which fetch as soon as a batch lands) do a
    # fraction of the requests, for 20 ms next to a checkpoint interval of 200
    "replay.producer.linger_ms": 20,
    # clicks follow impressions within seconds, so a short label window keeps most of them
    "replay.delays.click.median_s": 3.0,
    "replay.synthetic.conversion_rate": 1e-6,  # the model learns clicks
    "trainer.max_batch_wait_s": 0.05,
    "trainer.batch_size": 1024,
    "trainer.threads": 1,  # two cores, shared with Kafka, Flink and the server
    "trainer.metrics_window_ms": 10_000,
    "trainer.checkpoint_every_s": 30.0,
    "trainer.checkpoint_every_samples": 1_000_000,
    "exporter.interval_s": 0.2,
    "exporter.snapshot_every": 300,
}


@dataclass(frozen=True)
class DemoOptions:
    """``fluxrec demo``'s options (``--help`` describes each)."""

    config: Path | None = None
    data: Path | None = None  # a log to replay (its config describes it, or a sample's)
    strategy: Literal["window", "fake_negative"] = "window"
    duration_s: float = 120.0  # event time replayed (synthetic), or the log fitted into it
    rate: float = 300.0  # synthetic impressions per second
    window_s: float = 20.0  # label window
    speed: float = 0.0  # log time per wall time (0: fit the log into duration_s)
    limit: int = 0  # source records (0: all)
    until_interrupted: bool = False
    keep_stack: bool = False
    keep_topics: bool = False
    run_dir: Path | None = None
    report: bool = True
    live_scoring: bool = True  # the replay asks the server to score every impression
    faults: float = 0.0
    progress_every_s: float = 5.0
    drain_timeout_s: float = 120.0
    overrides: dict[str, Any] = field(default_factory=dict)


def detect_log(path: Path) -> Path:
    """The sample config (``configs/NAME.yaml``) of a public log, from its folder or file name."""
    import configs

    names = " ".join(p.name.lower() for p in (path, *path.parents[:1]))
    if path.is_dir():
        names += " " + " ".join(p.name.lower() for p in path.iterdir())
    for key, name in SAMPLE_CONFIGS:
        if key in names:
            return configs.path(name)
    raise DemoError(
        f"cannot tell which log {path} is: describe it in your config (replay.source: table "
        "and replay.table, see README 'Your own log') and pass --config"
    )


def _log_sections(base: Config, opts: DemoOptions) -> tuple[dict[str, Any], Config]:
    """The ``replay`` and ``features`` sections of the replayed log (module doc), as YAML
    to put over the base, and the config they come from."""
    if opts.data is None or base.replay.source != "synthetic":
        return {}, base
    sample = detect_log(opts.data)
    doc = yaml.safe_load(sample.read_text())
    sections = {k: doc[k] for k in ("replay", "features") if k in doc}
    sections.get("replay", {}).pop("path", None)  # relative to configs/: --data says where
    return sections, load_config(sample)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["trainer.batch_size=512", ...]`` -> ``{"trainer.batch_size": 512}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key.strip()):
            raise DemoError(f"--set {item!r}: use KEY=VALUE with a dotted config key")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _put(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise DemoError(f"config key {dotted}: {p} is not a section")
    node[last] = value


def _merge(doc: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            _merge(doc[k], v)
        else:
            doc[k] = v


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _store_url(url: str, run_dir: Path, run_id: str) -> str:
    if url.startswith("file://"):
        return (run_dir / "objects").resolve().as_uri()
    return f"{url.rstrip('/')}/demo-{run_id}"


def run_config(
    base: Config,
    base_path: Path,
    opts: DemoOptions,
    *,
    run_id: str,
    run_dir: Path,
    ports: dict[str, int],
) -> dict[str, Any]:
    """The document of ``RUN/config.yaml`` (module doc). ``ports``: trainer, server."""
    from replay.sources import SYNTHETIC_FEATURES, action_types

    sections, described = _log_sections(base, opts)
    rcfg = described.replay
    source = rcfg.source
    doc: dict[str, Any] = {"extends": str(base_path.resolve())}
    for key, typ, _ in iter_keys():  # relative paths of the base would resolve against RUN/
        if "Path" in typ:
            value = _get(base, key)
            _put(doc, key, None if value is None else str(value))
    topics = base.kafka.topics.all()
    _put(doc, "kafka.topics", {k: f"{v}.demo-{run_id}" for k, v in topics.items()})
    _put(doc, "redis.channel", f"{base.redis.channel}.demo-{run_id}")
    _put(doc, "object_store.url", _store_url(base.object_store.url, run_dir, run_id))
    _put(doc, "flink.checkpoint_dir", (run_dir / "flink").resolve().as_uri())
    _put(doc, "join.group_id", f"fluxrec-demo-{run_id}")
    _merge(doc, sections)
    actions = [rcfg.click_action] if source == "synthetic" else action_types(rcfg)
    window_ms = int(opts.window_s * 1000)
    _put(doc, "join.labels", [{"name": a, "action": a, "window_ms": window_ms} for a in actions])
    _put(doc, "join.strategy", opts.strategy)
    _put(doc, "trainer.label", actions[0])
    _put(doc, "trainer.checkpoint_dir", str((run_dir / "trainer").resolve()))
    _put(doc, "trainer.metrics_port", ports["trainer"])
    _put(doc, "trainer.metrics_host", "127.0.0.1")
    _put(doc, "trainer.export", True)
    if not (described.features.sparse or described.features.dense):
        if source != "synthetic":
            raise DemoError(
                f"{described.source}: features: lists no feature: name the log's columns "
                "the model reads (README, 'Your own log')"
            )
        sparse, dense = SYNTHETIC_FEATURES
        _put(doc, "features", {"sparse": [{"name": n} for n in sparse],
                               "dense": [{"name": n} for n in dense]})  # fmt: skip
    _put(doc, "replay.source", source)
    if opts.data is not None:
        _put(doc, "replay.path", str(opts.data.resolve()))
    elif source == "synthetic":
        _put(doc, "replay.path", None)
    _put(doc, "replay.limit", opts.limit)
    _put(doc, "replay.time_shift", "live")
    if source == "synthetic":
        slate = base.replay.synthetic.slate_size
        # one label window (and a margin) past the duration: every impression of the
        # duration gets its window closed while impressions still flow
        seconds = opts.duration_s + opts.window_s + 2
        impressions = 10**12 if opts.until_interrupted else int(seconds * opts.rate)
        _put(doc, "replay.synthetic.impressions", max(impressions, slate))
        _put(doc, "replay.synthetic.requests_per_s", opts.rate / slate)
    if opts.faults:
        for kind in ("malformed", "duplicate", "orphan"):
            _put(doc, f"replay.faults.{kind}", opts.faults)
    for key, value in {**TUNING, **opts.overrides}.items():
        _put(doc, key, value)
    return doc


def check_options(opts: DemoOptions) -> None:
    """Raise :class:`DemoError` on options no run can use."""
    for name in ("duration_s", "rate", "window_s"):
        v = getattr(opts, name)
        if not (math.isfinite(v) and v > 0):
            raise DemoError(f"--{name.replace('_s', '').replace('_', '-')} {v}: use a number > 0")
    if opts.speed < 0 or opts.limit < 0 or not 0 <= opts.faults <= 1:
        raise DemoError("--speed and --limit must be >= 0 and --faults a fraction in [0, 1]")
    if opts.data is not None and not opts.data.exists():
        raise DemoError(f"--data {opts.data}: no such file or folder (e.g. ../shared/data/obd)")
