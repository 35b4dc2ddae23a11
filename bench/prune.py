"""Deleting a prune's objects on an S3 API: one request per object against multi-object deletes.

    .venv/bin/python bench/prune.py [--objects 1500] [--rounds 3]

Starts a private stack with s3proxy (the one-machine S3 server, on loopback), and in each
round writes ``--objects`` small objects laid out as versions of five objects each (as a
prune of 300 versions finds them), then deletes them twice over, interleaved:

* **anchor**: boto3's ``delete_object`` for each key, what the exporter did before;
* **ours**: ``S3Store.delete_many`` (``DeleteObjects``, 1,000 keys per request, with the
  ``Content-MD5`` that S3-compatible servers require).

Both end with an empty bucket (checked). On loopback a request costs ~2 ms; on a remote
store each one is a round trip of tens of ms, so the saving there grows with the latency.
The last line is one JSON object: seconds per round (medians), ``vs_anchor`` = anchor / ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/ (its trainer.py)

from exporter.store import S3Store, open_store
from fluxrec.config import load_config
from fluxrec.stack import Stack
from fluxrec.testing import unique_name, write_test_config


def _filled(cfg_store: object, n: int) -> tuple[S3Store, list[str]]:
    store = open_store("s3://" + unique_name("prune") + "/p", cfg_store)  # type: ignore[arg-type]
    assert isinstance(store, S3Store)
    store.ensure_container()
    keys = [f"versions/{i // 5:012d}/part{i % 5}.fxd" for i in range(n)]
    for k in keys:
        store.put(k, b"x" * 100)
    return store, keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--objects", type=int, default=1500, help="objects deleted per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    a = ap.parse_args()
    cfg = load_config(write_test_config(Path(tempfile.mkdtemp(prefix="bench-prune-"))))
    stack = Stack(cfg)
    stack.up()
    times: dict[str, list[float]] = {"anchor": [], "ours": []}
    try:
        for r in range(a.rounds):
            for name, runs in times.items():
                store, keys = _filled(cfg.object_store, a.objects)
                t = time.perf_counter()
                if name == "ours":
                    store.delete_many(keys)
                else:
                    client = store._client  # plain boto3, one request per key
                    for k in keys:
                        client.delete_object(Bucket=store.bucket, Key=store.prefix + k)
                runs.append(time.perf_counter() - t)
                if store.list():
                    raise SystemExit(f"{name}: objects left after the delete")
                print(f"round {r + 1} {name}: {runs[-1]:.3f} s", flush=True)
    finally:
        stack.down(purge=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "objects": a.objects,
                "rounds": a.rounds,
                "anchor_s": round(med["anchor"], 4),
                "ours_s": round(med["ours"], 4),
                "vs_anchor": round(med["anchor"] / med["ours"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
