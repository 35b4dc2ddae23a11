"""Workers of one training job in real processes (torch.distributed, gloo), without Kafka.

* model quality: 2 workers against 1 on the same ordered samples;
* the replicated dense model stays equal on every worker;
* a checkpoint of 2 workers restores into 1 (rows re-bucketed), with every row, the
  dense model and the exactly-once checksum;
* a worker that cannot form the process group ends with one line naming the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from exporter.sdk import DeltaConsumer
from exporter.store import FileStore
from featurize.hashing import stable_hash
from fluxrec.testing import free_port
from trainer.core import SparseField, Trainer, featurize
from trainer.distributed import Comm
from trainer.errors import TrainerError
from trainer.metrics import PrequentialMetrics, auc
from trainer.sharded import N_BUCKETS, bucket_of, owner_of, partitions_of
from trainer.synthetic import synthetic_samples

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [SparseField("user_id", 8), SparseField("item_id", 8), SparseField("category", 8)]
N, B = 16_000, 100  # samples; batch per worker (one worker trains batches of 2 * B)


class _Keep(PrequentialMetrics):
    """Prequential metrics that keep every (prediction, label)."""

    def __init__(self) -> None:
        super().__init__()
        self.pred: list[np.ndarray] = []
        self.label: list[np.ndarray] = []

    def add(self, pred: Any, label: Any, event_ms: Any) -> None:
        self.pred.append(pred.copy())
        self.label.append(label.copy())
        super().add(pred, label, event_ms)


def _trainer(comm: Comm, batch: int, seed: int = 0) -> Trainer:
    return Trainer(
        FIELDS,
        ["price"],
        mlp=[32],
        dense_lr=0.05,
        nominal_batch=batch,
        metrics=_Keep(),
        seed=seed,
        comm=comm,
    )


def _stream(t: Trainer, rank: int, world: int) -> None:
    """Global batch j is samples[2Bj : 2B(j+1)]; sample k is in partition k % 2, which
    worker (k % 2) % world reads (as from a topic of 2 partitions)."""
    names = [f.name for f in FIELDS]
    samples = synthetic_samples(N, seed=11)
    for k in range(0, N, 2 * B):
        step = samples[k : k + 2 * B]
        mine = [s for i, s in enumerate(step) if (k + i) % 2 % world == rank]
        t.train_batch(featurize(mine, names, ["price"]), offsets={"s": {rank: k + 2 * B}})


def _worker(out: str) -> None:
    """One worker of the 2-worker job (run in a subprocess by the test)."""
    from exporter.exporter import Exporter
    from exporter.sdk import DeltaConsumer
    from exporter.settings import ExporterConfig
    from exporter.store import FileStore
    from exporter.types import PartsCut
    from trainer.checkpoint import save
    from trainer.distributed import connect
    from trainer.publish import Publisher
    from trainer.settings import TrainerConfig

    torch.set_num_threads(1)
    comm = connect(TrainerConfig(init_timeout_s=120))
    t = _trainer(comm, B)
    _stream(t, comm.rank, comm.world)
    flat = torch.cat([v.reshape(-1) for v in t.dense_state().values()])
    digests = comm.gather_json(hashlib.sha256(flat.numpy().tobytes()).hexdigest())
    # one version of two parts (each worker writes the rows it owns), read back by the SDK
    store = FileStore(Path(out) / "objects")
    exporter = Exporter(store) if comm.rank == 0 else None
    cut = Publisher(t, store, ExporterConfig(), exporter).cut(full=True)
    save(t, Path(out) / "ck")
    comm.close()
    if exporter is None or digests is None:
        return
    assert isinstance(cut, PartsCut)
    doc = exporter.publish_parts(cut)
    consumer = DeltaConsumer(store)
    assert consumer.sync() == 1
    keep = t.metrics
    assert isinstance(keep, _Keep)
    arrays = {"pred": np.concatenate(keep.pred), "label": np.concatenate(keep.label)}
    for name, d in consumer.state.tables.items():
        arrays[f"ids/{name}"], arrays[f"values/{name}"] = d.ids, d.values  # sorted by id
    for name, v in consumer.state.dense.items():
        arrays[f"dense/{name}"] = v
    (Path(out) / "manifest.json").write_text(json.dumps(doc))
    np.savez(Path(out) / "result.npz", **arrays)
    (Path(out) / "result.json").write_text(json.dumps({"digests": digests, "step": t.step}))


def _publish_faults_worker(out: str) -> None:
    """One worker of the 2-worker job of the publish-faults test: a part that cannot be
    written, then a NaN row in one part, then a good version."""
    from exporter.errors import StoreUnavailable
    from exporter.exporter import Exporter
    from exporter.settings import ExporterConfig
    from exporter.store import FileStore
    from exporter.types import PartsCut
    from trainer.distributed import connect
    from trainer.publish import Publisher
    from trainer.settings import TrainerConfig

    class Down(FileStore):
        def writer(self, key: str) -> Any:
            raise StoreUnavailable(f"put {key}: the store is down")

    torch.set_num_threads(1)
    comm = connect(TrainerConfig(init_timeout_s=120))
    t = _trainer(comm, B)
    names = [f.name for f in FIELDS]
    samples = synthetic_samples(20 * B, seed=3)
    for k in range(0, len(samples), 2 * B):
        mine = samples[k + comm.rank : k + 2 * B : 2]
        t.train_batch(featurize(mine, names, ["price"]))
    seen: dict[str, Any] = {}
    # 0. worker 1's predictions are NaN for one step: no worker updates anything
    first = next(t.model.parameters())
    dense0 = [p.detach().clone() for p in t.model.parameters()]
    rows0 = {n: tab.weight[: tab.n_rows].clone() for n, tab in t.tables.items()}
    kept = first.detach().clone()
    if comm.rank == 1:
        with torch.no_grad():
            first.fill_(float("nan"))
    step0 = t.step
    t.train_batch(featurize(samples[comm.rank : 2 * B : 2], names, ["price"]))
    with torch.no_grad():
        first.copy_(kept)
    seen["nonfinite"] = {
        "count": t.nonfinite,
        "step_unchanged": t.step == step0,
        "dense_unchanged": all(
            torch.equal(a, b) for a, b in zip(dense0, t.model.parameters(), strict=True)
        ),
        "rows_unchanged": all(
            torch.equal(w, t.tables[n].weight[: w.shape[0]]) for n, w in rows0.items()
        ),
    }
    seen["nonfinite_all"] = comm.gather_json(seen["nonfinite"])
    root = Path(out) / "objects"
    store, cfg = FileStore(root), ExporterConfig()
    exporter = Exporter(store) if comm.rank == 0 else None
    # 1. worker 1's store is down: no version at all (worker 0 wrote its part for nothing)
    down = Down(root) if comm.rank == 1 else store
    seen["part_down"] = Publisher(t, down, cfg, exporter).cut(full=False)
    seen["keys_1"] = store.list("versions/")
    # 2. a NaN row in worker 1's part: the gate refuses the whole version, nothing written
    table = next(iter(t.tables.values()))
    saved = table.weight[0].clone()
    if comm.rank == 1:
        table.weight[0] = float("nan")
    wants = exporter.wants_full if exporter is not None else False
    seen["nan"] = Publisher(t, store, cfg, exporter).cut(full=wants)
    seen["keys_2"] = store.list("versions/")
    table.weight[0] = saved
    # 3. a good version next: full (what the failures lost is in it), of two parts
    wants = exporter.wants_full if exporter is not None else False
    good = Publisher(t, store, cfg, exporter).cut(full=wants)
    # 4. only worker 1's offsets moved (a poll of bad values: an empty step): every worker
    # cuts (the decision is collective), then nothing is left to cut anywhere
    empty = featurize([], names, ["price"])
    t.train_batch(empty, offsets={"s": {1: 999}} if comm.rank == 1 else None)
    moved = t.take_cut()
    again = t.take_cut()
    seen["moved"] = comm.gather_json(
        [moved is not None, moved.offsets if moved is not None else None, again is None]
    )
    comm.close()
    if exporter is None:
        return
    gloo_left = _gloo_threads()  # the trainer (its optimizer) holds no reference to the group
    assert isinstance(good, PartsCut)
    doc = exporter.publish_parts(good)
    result = {
        "nonfinite": seen["nonfinite_all"],
        "moved": seen["moved"],
        "part_down": seen["part_down"] is None,
        "keys_after_part_down": seen["keys_1"],
        "nan": seen["nan"] is None,
        "keys_after_nan": seen["keys_2"],
        "refusals": exporter.stats.refusals,
        "gloo_threads_after_close": gloo_left,
        "failed": exporter.stats.failed,
        "published": {"sequence": doc["sequence"], "kind": doc["kind"], "parts": len(doc["parts"])},
    }
    (Path(out) / "result.json").write_text(json.dumps(result))


def _gloo_threads() -> list[str]:
    """Names of this process's threads that belong to gloo (Linux: /proc)."""
    names = (
        Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")
    )
    return sorted(n for n in names if "gloo" in n)


def _run_workers(world: int, script: str, args: list[str]) -> None:
    """Run ``script`` as the ``world`` workers of one job; each must exit 0. A worker that
    crashes (a signal, a C++ abort) prints every thread's Python stack (faulthandler), and
    every worker's whole output is in the failure."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONFAULTHANDLER": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    codes = [p.returncode for p in procs]
    report = "".join(
        f"\n--- worker {r} (exit {p.returncode}):\n{outs[r]}" for r, p in enumerate(procs)
    )
    assert codes == [0] * world, report


def _one_worker_auc(seed: int) -> float:
    t = _trainer(Comm.local(), 2 * B, seed=seed)
    _stream(t, 0, 1)
    keep = t.metrics
    assert isinstance(keep, _Keep)
    return auc(np.concatenate(keep.pred), np.concatenate(keep.label))


@pytest.mark.slow
def test_two_workers_learn_as_one_and_their_checkpoint_restores_into_one(tmp_path: Path) -> None:
    """Two workers (gloo) on the same ordered stream as one worker with twice the batch:
    a step of 2 workers is the step of 1 worker on the union of their batches (the dense
    gradients averaged, the row gradients summed by their owners and halved, the batch
    statistics merged), so the two runs differ only in the initial values of the rows
    (each owner draws its own) and the order of float sums. Over this stream the
    prequential AUC of one worker (0.820) moves by less than 0.001 between seeds of the
    initial values (measured on seeds 0-3: 0.8196-0.8202), and two workers gave 0.8201;
    so 0.002, the issue's goal, holds with margin and still catches a real fault: with
    the row gradients of one owner lost, the AUC is 0.785."""
    script = "import sys; from tests.test_trainer_workers import _worker; _worker(sys.argv[1])"
    _run_workers(2, script, [str(tmp_path)])
    res = np.load(tmp_path / "result.npz")
    meta = json.loads((tmp_path / "result.json").read_text())
    assert meta["step"] == N // (2 * B)
    assert len(set(meta["digests"])) == 1  # the dense replicas are bitwise equal
    two = auc(res["pred"], res["label"])
    assert res["pred"].size == N  # rank 0 scored every worker's samples
    one = _one_worker_auc(seed=0)
    assert abs(two - one) < 0.002, (two, one)

    # the checkpoint of two workers restores into one: every row moves to the new owner
    from trainer.checkpoint import load_latest

    t = _trainer(Comm.local(), 2 * B, seed=5)
    assert load_latest(t, tmp_path / "ck") is not None
    want = 0
    for s in synthetic_samples(N, seed=11):
        want ^= stable_hash("sample_id", s["sample_id"])
    assert (t.step, t.samples, t.id_xor) == (N // (2 * B), N, want)
    assert t.offsets == {"s": {0: N, 1: N}}  # both workers' partitions
    # ... and equals the version the two workers published in two parts (format 2)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["format"] == 2 and doc["kind"] == "snapshot"
    assert [p["index"] for p in doc["parts"]] == [0, 1]
    assert all(o["key"].startswith(f"versions/000000000000/part-{p['index']}/")
               for p in doc["parts"] for o in p["objects"])  # fmt: skip
    assert doc["kafka_offsets"] == {"s": {"0": N, "1": N}}
    owned = [sum(o["rows"] for o in p["objects"] if o["kind"] == "table") for p in doc["parts"]]
    assert min(owned) > 0.4 * sum(owned)  # each worker wrote the rows it owns
    cut = t.take_cut()
    assert cut is not None and cut.full
    for name, d in cut.tables.items():
        order = np.argsort(d.ids)
        assert np.array_equal(d.ids[order], res[f"ids/{name}"]), name
        assert np.array_equal(d.values[order], res[f"values/{name}"]), name
    for name, v in cut.dense.items():
        assert np.array_equal(v, res[f"dense/{name}"]), name


@pytest.mark.slow
def test_a_version_with_a_failed_or_refused_part_is_never_published(tmp_path: Path) -> None:
    """Two workers, each writing its own part (after a step in which one worker's
    predictions were NaN, which no worker may train): when one worker's store is down, or its
    part holds a NaN row, no manifest is written (the other part's objects, if written,
    stay invisible) and the next version is a full snapshot of both parts."""
    script = (
        "import sys; from tests.test_trainer_workers import _publish_faults_worker; "
        "_publish_faults_worker(sys.argv[1])"
    )
    _run_workers(2, script, [str(tmp_path)])
    res = json.loads((tmp_path / "result.json").read_text())
    # a step where one worker's predictions were NaN: no worker updated rows or dense
    # parameters (the finite flags travel in the dense all_reduce), both counted it
    want = {"count": 1, "step_unchanged": True, "dense_unchanged": True, "rows_unchanged": True}
    assert res["nonfinite"] == [want, want]
    assert res["part_down"] and res["failed"] == 1
    assert not any(k.endswith("manifest.json") for k in res["keys_after_part_down"])
    assert any("/part-0/" in k for k in res["keys_after_part_down"])  # written, unreferenced
    assert res["nan"] and res["keys_after_nan"] == res["keys_after_part_down"]  # nothing new
    assert len(res["refusals"]) == 1 and "NaN/Inf values in 1 of" in res["refusals"][0]
    assert res["published"] == {"sequence": 0, "kind": "snapshot", "parts": 2}
    # close() ended the group's threads: none is left to die with the interpreter (which
    # now and then aborted a worker's exit)
    assert res["gloo_threads_after_close"] == []
    assert res["moved"] == [[True, {}, True], [True, {"s": {"1": 999}}, True]]
    c = DeltaConsumer(FileStore(tmp_path / "objects"))
    assert c.sync() == 1 and c.version == 0
    assert all(np.isfinite(t.values).all() for t in c.state.tables.values())


def test_a_worker_without_its_group_ends_with_one_line(tmp_path: Path) -> None:
    port = free_port()  # nobody listens: worker 1 never reaches rank 0's store
    doc = {
        "stack": {"state_dir": str(tmp_path / "state")},
        "kafka": {"bootstrap": "127.0.0.1:9"},
        "redis": {"url": "redis://127.0.0.1:9/0"},
        "object_store": {"url": f"file://{tmp_path / 'objects'}"},
        "trainer": {"init_timeout_s": 3},
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "RANK": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(cfg), "--no-export"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"worker 1/2: no process group at 127.0.0.1:{port} within 3 s" in lines[0]
    assert "MASTER_PORT" in lines[0] and "trainer.init_timeout_s" in lines[0]


@pytest.mark.parametrize("arch", ["deepfm", "wide_deep", "dlrm"])
def test_a_worker_without_data_trains_an_empty_batch(arch: str) -> None:
    """A worker whose partitions are quiet still takes part in every step, with B = 0."""
    t = Trainer([("user_id", 4), ("item_id", 8)], ["price"], arch=arch, mlp=[8], inter_dim=4)
    empty = featurize([], ["user_id", "item_id"], ["price"])
    embs = [torch.zeros(0, 1, 4, requires_grad=True), torch.zeros(0, 1, 8, requires_grad=True)]
    logit = t.model(embs, empty.dense)
    assert logit.shape == (0,)
    logit.sum().backward()
    assert embs[0].grad is not None and embs[0].grad.shape == (0, 1, 4)
    assert t.train_batch(empty) == 0.0 and t.step == 0  # alone: no step at all


def test_owners_are_whole_buckets_and_partitions_go_p_mod_n() -> None:
    """Ownership is a fixed function of the id (pinned: a checkpoint and a job of another
    size must agree on it), even over ids in sequence (raw ids), and at any N an id goes
    with its bucket; partition p goes to worker p % N, never to fewer partitions."""
    golden = np.array([0, 1, -1, 2**62, -(2**63) + 2], dtype=np.int64)
    assert bucket_of(golden).tolist() == [3618, 2320, 3661, 10, 3588]
    ids = np.arange(-50_000, 50_000, dtype=np.int64) * 7919
    counts = np.bincount(bucket_of(ids), minlength=N_BUCKETS)
    assert counts.size == N_BUCKETS and counts.max() < 2 * counts.mean()
    for world in (1, 2, 3, 5):
        assert np.array_equal(owner_of(ids, world), bucket_of(ids) % world)
    assert [partitions_of("t", range(6), r, 4) for r in range(4)] == [[0, 4], [1, 5], [2], [3]]
    with pytest.raises(TrainerError, match=r"'t'.* 2 partitions, fewer than the 3 workers"):
        partitions_of("t", [0, 1], 0, 3)


def test_a_checkpoint_of_one_process_before_workers_still_loads(tmp_path: Path) -> None:
    """Format 2 (one directory: meta.json with the counters, tensors.npz) reads as a
    checkpoint of one part."""
    from trainer.checkpoint import load_latest, save

    names = [f.name for f in FIELDS]
    samples = synthetic_samples(600, seed=4)
    a = _trainer(Comm.local(), 100)
    for k in range(0, 600, 100):
        a.train_batch(featurize(samples[k : k + 100], names, ["price"]), offsets={"s": {0: k}})
    new = save(a, tmp_path / "new")
    job = json.loads((new / "meta.json").read_text())
    part = json.loads((new / "part-0000" / "meta.json").read_text())
    old = tmp_path / "old" / f"ckpt-{a.step:012d}"  # the layout format 2 wrote
    old.mkdir(parents=True)
    (new / "part-0000" / "tensors.npz").rename(old / "tensors.npz")
    keep = ("step", "samples", "skipped", "watermark_ms", "offsets", "id_xor", "tables", "dims")
    meta = {k: job[k] for k in keep} | {"np_rng": part["np_rng"], "norm_seen": job["norm_seen"]}
    (old / "meta.json").write_text(json.dumps(meta | {"format": 2}))
    b = _trainer(Comm.local(), 100, seed=3)
    assert load_latest(b, tmp_path / "old") == old
    assert (b.step, b.samples, b.offsets, b.id_xor) == (a.step, a.samples, a.offsets, a.id_xor)
    held = featurize(synthetic_samples(100, seed=9), names, ["price"])
    assert np.allclose(a.score(held), b.score(held), atol=1e-6)


_ORPHAN = """
import os, signal, sys, time
from trainer.distributed import follow_launcher
def term(*_):
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write("term")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])  # the test sees the whole file or none
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
follow_launcher()
open(sys.argv[1] + ".ready", "w").close()
time.sleep(300)
"""

_LAUNCHER = """
import os, subprocess, sys, time
env = {**os.environ, "FLUXREC_LAUNCHER_PID": str(os.getpid())}
w = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env)
print(w.pid, flush=True)
time.sleep(300)
"""


def test_a_worker_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    """kill -9 of `fluxrec train --workers N` must not leave its workers training as orphans:
    each gets SIGTERM (its final checkpoint) from the kernel."""
    import signal
    import time

    mark = tmp_path / "worker"
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, _ORPHAN, str(mark)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert launcher.stdout is not None
    worker = int(launcher.stdout.readline())
    deadline = time.monotonic() + 120
    while not Path(f"{mark}.ready").exists():  # torch imported, prctl done
        assert time.monotonic() < deadline, "the worker never got ready"
        time.sleep(0.05)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert time.monotonic() < deadline, "the worker outlived its launcher"
        time.sleep(0.05)
    assert mark.read_text() == "term"
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker, signal.SIGKILL)
