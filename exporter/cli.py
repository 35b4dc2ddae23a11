"""``fluxrec deltas ls | inspect VERSION | verify | rollback VERSION`` (imports cheaply)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def _store_and_cfg(ns: argparse.Namespace) -> tuple[Any, Any]:
    from exporter.store import open_store
    from fluxrec.config import load_config

    cfg = load_config(ns.config)
    return open_store(cfg.object_store.url, cfg.object_store), cfg


def _key(cfg: Any) -> bytes | None:
    from exporter.exporter import hmac_key_from_env

    return hmac_key_from_env(cfg.exporter)


def _cmd_ls(ns: argparse.Namespace) -> int:
    from exporter.errors import ExporterError
    from exporter.exporter import list_versions
    from exporter.manifest import manifest_key, manifest_objects, parse_manifest

    store, _cfg = _store_and_cfg(ns)
    print(f"{'sequence':>8} {'kind':8} {'base':>6} {'step':>8} {'watermark_ms':>14} {'bytes':>12}")
    bad = 0
    for seq in list_versions(store):
        try:
            doc = parse_manifest(store.get(manifest_key(seq)), expected_seq=seq)
        except ExporterError as e:
            bad += 1
            print(f"{seq:>8} BAD {type(e).__name__}: {e} (run `fluxrec deltas verify`)")
            continue
        size = sum(o["bytes"] for o in manifest_objects(doc))
        print(
            f"{seq:>8} {doc['kind']:8} {doc['base_snapshot']:>6} {doc['trainer_step']:>8} "
            f"{doc['watermark_ms']:>14} {size:>12}"
        )
    return 1 if bad else 0


def _cmd_inspect(ns: argparse.Namespace) -> int:
    from exporter.sdk import DeltaConsumer

    store, cfg = _store_and_cfg(ns)
    doc, tables, dense = DeltaConsumer(store, hmac_key=_key(cfg)).load_version(ns.version)
    print(json.dumps({k: v for k, v in doc.items() if k != "signature"}, indent=1))
    for t in tables:
        print(
            f"table {t.name}: {len(t.ids)} rows x {t.dim} ({t.encoding}), "
            f"{len(t.tombstones)} tombstones"
        )
    for name, arr in (dense.tensors if dense else {}).items():
        print(f"dense {name}: shape {list(arr.shape)}")
    print(f"version {ns.version}: ok (sizes, sha256 and Arrow bodies verified)")
    return 0


def _cmd_verify(ns: argparse.Namespace) -> int:
    from exporter.errors import ExporterError
    from exporter.exporter import list_versions
    from exporter.sdk import DeltaConsumer

    store, cfg = _store_and_cfg(ns)
    c = DeltaConsumer(store, hmac_key=_key(cfg))
    bad = 0
    for seq in list_versions(store):
        try:
            c.load_version(seq)
            print(f"{seq:>8} ok")
        except ExporterError as e:
            bad += 1
            print(f"{seq:>8} BAD {type(e).__name__}: {e}")
    print(f"{bad} bad version(s)")
    return 1 if bad else 0


def _cmd_rollback(ns: argparse.Namespace) -> int:
    """Re-publish the state of VERSION as a new snapshot (sequence moves forward)."""
    import numpy as np

    from exporter.exporter import Exporter
    from exporter.sdk import DeltaConsumer
    from exporter.types import Cut, TableDelta

    store, cfg = _store_and_cfg(ns)
    c = DeltaConsumer(store, hmac_key=_key(cfg))
    c.rollback(ns.version)
    st = c.state
    doc, _t, _d = c.load_version(ns.version)
    cut = Cut(
        step=doc["trainer_step"],
        samples=doc["samples"],
        full=True,
        watermark_ms=doc["watermark_ms"],
        offsets={t: {int(p): o for p, o in ps.items()} for t, ps in doc["kafka_offsets"].items()},
        tables={
            n: TableDelta(n, t.dim, t.ids, t.values, np.empty(0, np.int64))
            for n, t in st.tables.items()
        },
        dense=dict(st.dense),
        created_ms=doc["created_ms"],
    )
    ex = Exporter(
        store, cfg.exporter, cfg.redis.url if ns.notify else None, cfg.redis.channel, _key(cfg)
    )
    new = ex.publish(cut, rollback_of=ns.version)
    print(f"published version {new['sequence']} = the state of version {ns.version}")
    return 0


def _cmd_follow(ns: argparse.Namespace) -> int:
    """A server-side follower using only the SDK: prints version and lag on each change."""
    import time

    from exporter.sdk import DeltaConsumer

    store, cfg = _store_and_cfg(ns)
    c = DeltaConsumer(
        store,
        redis_url=cfg.redis.url,
        channel=cfg.redis.channel,
        hmac_key=_key(cfg),
        poll_interval_s=ns.poll_s,
    )
    c.start()
    last = None
    deadline = time.monotonic() + ns.seconds if ns.seconds > 0 else float("inf")
    try:
        while time.monotonic() < deadline:
            if c.version != last:
                last = c.version
                rows = (
                    {n: len(t.ids) for n, t in c.state.tables.items()} if last is not None else {}
                )
                print(f"version {last} lag_ms {c.lag_ms()} rows {rows}", flush=True)
            time.sleep(0.05)
    finally:
        c.stop()
    print(f"stats {c.stats}")
    return 0 if c.stats.rejected == 0 else 1


def register(subs: Any, sub: Any, arg: Any) -> None:
    deltas = subs.add_parser(
        "deltas", help="list, inspect, verify, roll back and follow parameter versions"
    )
    dsubs = deltas.add_subparsers(dest="deltas_command", metavar="ACTION", required=True)
    sub(dsubs, "ls", _cmd_ls, "list the versions in object_store.url")
    p = sub(dsubs, "inspect", _cmd_inspect, "verify one version and print its manifest")
    p.add_argument("version", type=int, help="sequence number")
    sub(dsubs, "verify", _cmd_verify, "verify every version (sizes, sha256, signature, body)")
    p = sub(
        dsubs,
        "rollback",
        _cmd_rollback,
        "publish the state of VERSION as a new snapshot that consumers then follow",
    )
    p.add_argument("version", type=int, help="sequence number to restore")
    arg(
        p,
        "--notify",
        env="FLUXREC_DELTAS_NOTIFY",
        action="store_true",
        help="announce the new version on redis.channel",
    )
    p = sub(dsubs, "follow", _cmd_follow, "follow new versions like a server would (SDK only)")
    arg(
        p,
        "--seconds",
        env="FLUXREC_FOLLOW_SECONDS",
        type=float,
        default=0.0,
        help="stop after this long (0: until interrupted)",
    )
    arg(
        p,
        "--poll-s",
        env="FLUXREC_FOLLOW_POLL_S",
        type=float,
        default=1.0,
        help="poll LATEST.json this often when no notification arrives",
    )
