"""Done-when of the exporter: a server process using only the SDK follows a trainer's
deltas on the stack.

Kafka samples topic -> trainer daemon (PyTorch) -> ``Exporter.publish`` every 5 batches -> s3://
on the stack's S3 server -> notification on the stack's Redis -> a separate Python
process that cannot import torch or pyflink (an import hook refuses them, as on a server
where they are not installed) follows the versions with ``exporter.sdk.DeltaConsumer``.
At the end its tables and dense tensors equal the trainer's, bit for bit.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from exporter.exporter import Exporter
from exporter.settings import ExporterConfig
from exporter.store import open_store
from fluxrec.config import Config
from fluxrec.testing import WITHOUT_TORCH_OR_PYFLINK, unique_name

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.s3, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

# a scoring server's parameter follower: exporter.sdk only
SERVER = (
    WITHOUT_TORCH_OR_PYFLINK
    + r"""
import json, time

import numpy as np
from exporter.sdk import DeltaConsumer, open_store
from fluxrec.config import load_config

config, url, channel, out = sys.argv[1:5]
cfg = load_config(config)
c = DeltaConsumer(open_store(url, cfg.object_store), redis_url=cfg.redis.url,
                  channel=channel, poll_interval_s=30.0)
c.start()
print(json.dumps({"ready": True, "version": c.version}), flush=True)
seen = None
for line in sys.stdin:  # "wait N": report versions until N is applied, then dump
    target = int(line.split()[1])
    while True:
        if c.version != seen:
            seen = c.version
            print(json.dumps({"version": seen, "lag_ms": c.lag_ms()}), flush=True)
        if seen is not None and seen >= target:
            break
        time.sleep(0.02)
    state = c.state
    arrays = {f"table/{n}/ids": t.ids for n, t in state.tables.items()}
    arrays |= {f"table/{n}/values": t.values for n, t in state.tables.items()}
    arrays |= {f"dense/{n}": v for n, v in state.dense.items()}
    np.savez(out, **arrays)
    heavy = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "pyflink"))
    s = c.stats
    print(json.dumps({"dumped": seen, "heavy_modules": heavy, "rejected": s.rejected,
                      "notifications": s.notifications, "applied": s.applied}), flush=True)
c.stop()
"""
)


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_server_process_follows_a_trainer_on_the_stack(
    tmp_path: Path,
    stack_config: Config,
    stack_config_path: Path,
    new_topic: Callable[..., str],
) -> None:
    from kafka import KafkaProducer

    from trainer.core import Trainer
    from trainer.daemon import run
    from trainer.synthetic import synthetic_samples

    topic, channel = new_topic(partitions=2), unique_name("versions")
    prod = KafkaProducer(bootstrap_servers=stack_config.kafka.bootstrap)
    for s in synthetic_samples(3000, seed=4):
        prod.send(topic, key=s["sample_id"].encode(), value=json.dumps(s).encode())
    prod.flush()
    prod.close()

    url = f"s3://{unique_name('deltas')}/server"
    store = open_store(url, stack_config.object_store)
    store.ensure_container()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    server = subprocess.Popen(
        [sys.executable, str(script), str(stack_config_path), url, channel, str(tmp_path / "s")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines = _lines(server)
    ready = json.loads(lines.get(timeout=120))
    assert ready == {"ready": True, "version": None}  # subscribed before the first version
    try:
        t = Trainer([("user_id", 8), ("item_id", 8), ("category", 8)], ["price"], mlp=[16])
        ex = Exporter(
            store,
            ExporterConfig(snapshot_every=6, retain_snapshots=2),
            stack_config.redis.url,
            channel,
        )
        batches = 0

        def publish_every_fifth_batch() -> None:  # deterministic, unlike a timer thread
            nonlocal batches
            batches += 1
            cut = t.take_cut(ex.wants_full) if batches % 5 == 0 else None
            if cut is not None:
                ex.publish(cut)

        st = run(
            t,
            stack_config.kafka.bootstrap,
            topic,
            stop=threading.Event(),
            batch_size=100,
            max_wait_s=0.2,
            until_caught_up=True,
            on_batch=publish_every_fifth_batch,
        )
        last = t.take_cut(ex.wants_full)
        if last is not None:
            ex.publish(last)
        truth = t.take_cut(full=True)  # every live row of the trainer, and the dense part
        assert truth is not None and st.samples == 3000

        assert server.stdin is not None
        server.stdin.write(f"wait {ex.sequence}\n")
        server.stdin.flush()
        reports = []
        while True:
            msg = json.loads(lines.get(timeout=120))
            reports.append(msg)
            if "dumped" in msg:
                break
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)
    done = reports[-1]
    versions = [r["version"] for r in reports[:-1] if r["version"] is not None]
    assert done["dumped"] == ex.sequence and versions == sorted(versions)
    assert ex.stats.published >= 6 and ex.stats.snapshots >= 1
    assert done["applied"] == ex.stats.published  # it followed every version, one by one
    assert done["heavy_modules"] == [] and done["rejected"] == 0
    assert done["notifications"] >= 1  # followed through Redis, not by its 30 s polls
    assert server.returncode == 0

    got = np.load(tmp_path / "s.npz", allow_pickle=False)
    for name, delta in truth.tables.items():
        order = np.argsort(delta.ids)
        np.testing.assert_array_equal(got[f"table/{name}/ids"], delta.ids[order])
        np.testing.assert_array_equal(got[f"table/{name}/values"], delta.values[order])
    assert {k for k in got.files if k.startswith("dense/")} == {f"dense/{n}" for n in truth.dense}
    for name, arr in truth.dense.items():
        np.testing.assert_array_equal(got[f"dense/{name}"], arr)
