"""The trainer core: models, losses, prequential metrics, cuts on a synthetic stream."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from featurize.hashing import stable_hash
from trainer.core import BadSample, SparseField, Trainer, featurize
from trainer.losses import loss_fn, predict
from trainer.metrics import PrequentialMetrics, auc, prometheus_text
from trainer.model import CTRModel
from trainer.synthetic import synthetic_samples

FIELDS = [("user_id", 8), ("item_id", 8), ("category", 8)]


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, 200).astype(np.float64)  # many ties
    y = (rng.random(200) < 0.3).astype(np.float64)
    pos, neg = p[y > 0.5], p[y < 0.5]
    ref = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert auc(p, y) == pytest.approx(ref)


@pytest.mark.parametrize("arch", ["deepfm", "wide_deep", "dlrm"])
def test_models_output_one_logit_per_sample(arch: str) -> None:
    m = CTRModel(arch, [(26, 16)], 13, [256, 128])
    out = m([torch.randn(5, 26, 16)], torch.randn(5, 13))
    assert out.shape == (5,)
    if arch != "dlrm":  # the reference MLP 429-256-128-1 (+1 column: the wide term)
        assert (m.first.in_features, m.first_dense.in_features) == (416, 13)
        assert m.first.out_features == 256 and m.deep[0].in_features == 256
        assert m.deep[-1].out_features == 1 and len(m.deep) == 3  # 256-128-1
    # fields of different dims: projected to the interaction dim where needed
    mixed = CTRModel(arch, [(2, 8), (3, 4)], 1, [16], inter_dim=8)
    out = mixed([torch.randn(5, 2, 8), torch.randn(5, 3, 4)], torch.randn(5, 1))
    assert out.shape == (5,) and torch.isfinite(out).all()
    assert set(mixed.proj) == (set() if arch == "wide_deep" else {"1"})


def test_fm_interaction_matches_pairwise_dots_and_autograd() -> None:
    m = CTRModel("deepfm", [(3, 2)], 0, [4])
    v = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    from trainer.model import _FMInteraction

    out = _FMInteraction.apply(v)
    pairs = sum((v[:, i] * v[:, j]).sum(1) for i in range(3) for j in range(i + 1, 3))
    assert torch.allclose(out, pairs)
    assert torch.autograd.gradcheck(_FMInteraction.apply, (v,))
    assert m([torch.randn(2, 3, 2)], torch.zeros(2, 0)).shape == (2,)


def test_fnw_weights_and_fnc_calibration() -> None:
    logit = torch.tensor([0.0, 0.0])
    label = torch.tensor([1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, label, reduction="none")
    # p = 0.5: positive weight 1.5, negative weight 0.5 * 1.5 = 0.75
    assert loss_fn("fnw", logit, label).item() == pytest.approx(
        ((1.5 * bce[0]) + 0.75 * bce[1]).item() / 2
    )
    b = torch.sigmoid(torch.tensor([-2.0]))
    assert predict("fnc", torch.tensor([-2.0])).item() == pytest.approx((b / (1 - b)).item())


def _sample(sid: str, click: int, **kw: Any) -> dict[str, Any]:
    rec = {
        "v": 1,
        "sample_id": sid,
        "event_time_ms": 1_700_000_000_000,
        "features": {"sparse": {"user_id": ["u-1"], "item_id": ["i-1"]}, "dense": {}},
        "labels": {"click": click, "conversion": 0},
        "strategy": "window",
        "correction": False,
    }
    return rec | kw


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"v": 2}, "r-1.*version 1"),
        ({"labels": {"conversion": 0}}, "r-1.*click"),
        ({"labels": {"click": 2}}, "r-1.*need 0 or 1"),
        ({"strategy": "later"}, "r-1.*strategy"),
        ({"event_time_ms": "1"}, "r-1.*bad_type.*event_time_ms"),
        ({"features": {"sparse": {"user_id": "u-1"}}}, "r-1.*sparse.user_id: string where.*array"),
        ({"features": {"sparse": {"user_id": [7]}}}, "r-1.*sparse.user_id.*number where.*string"),
        ({"sample_id": None}, "sample #1.*sample_id"),
        ({"features": {"dense": {"price": float("nan")}}}, "r-1.*price.*not a finite"),
        ({"features": {"dense": {"price": "12"}}}, "r-1.*price: string where.*number"),
    ],
)
def test_bad_sample_names_the_id_and_the_rule(change: dict[str, Any], match: str) -> None:
    with pytest.raises(BadSample, match=match):
        featurize([_sample("r-0", 0), _sample("r-1", 0) | change], ["user_id"], ["price"])


def test_raw_ids_and_per_field_dims() -> None:
    fields = [
        SparseField("user_id", 8),
        SparseField("item_id", 4),
        SparseField("slot", 4, raw=True),
        SparseField("category", 8),
    ]
    samples = synthetic_samples(400, seed=4)
    for k, s in enumerate(samples):
        s["features"]["sparse"]["slot"] = [str(k % 3 + 1)]
    for arch in ("deepfm", "wide_deep", "dlrm"):
        t = Trainer(fields, ["price"], arch=arch, mlp=[16], inter_dim=8)
        # hashed fields of one dim share a table; a raw field has its own
        assert {n: tab.fields for n, tab in t.tables.items()} == {
            "shared_d8": ["user_id", "category"],
            "item_id": ["item_id"],
            "slot": ["slot"],
        }
        for k in range(0, 400, 100):
            t.train_samples(samples[k : k + 100])
        cut = t.take_cut()
        assert cut is not None and cut.full
        assert {n: d.dim for n, d in cut.tables.items()} == {
            "user_id": 8,
            "item_id": 4,
            "slot": 4,
            "category": 8,
        }
        assert sorted(cut.tables["slot"].ids.tolist()) == [1, 2, 3]
        items = {s["features"]["sparse"]["item_id"][0] for s in samples}
        assert set(cut.tables["item_id"].ids.tolist()) == {stable_hash("item_id", i) for i in items}
    for value in (str(-(2**63)), str(2**63), "x", "+5", " 5"):
        bad = _sample("r-9", 0)
        bad["features"]["sparse"]["slot"] = [value]
        with pytest.raises(BadSample, match=r"r-9.*slot: not a decimal int64 id"):
            featurize([bad], [SparseField("slot", 4, raw=True)], [])


def test_fake_negative_corrections_follow_fnw() -> None:
    """Ktena et al.: the impression is a (fake) negative, its click a second, positive
    record weighted 1 + p; a correction of another label is not a click sample."""
    fields = [("user_id", 4), ("item_id", 4)]
    imp = _sample("r-1|i-1|0", 0, strategy="fake_negative")
    click = _sample("r-1|i-1|0|click", 1, strategy="fake_negative", correction=True)
    conv = _sample("r-1|i-1|0|conversion", 0, strategy="fake_negative", correction=True)
    conv["labels"] = {"click": 0, "conversion": 1}
    t = Trainer(fields, [], mlp=[8], delayed_loss="fnw", metrics=PrequentialMetrics(1000))
    batch = t.featurize([imp, conv, click])
    assert len(batch) == 2 and batch.skipped == 1
    assert batch.label.tolist() == [0.0, 1.0] and batch.fake.all()
    (tab,) = t.tables.values()
    tab.lookup(np.unique(np.concatenate([batch.sparse[f][0] for f, _ in fields])))  # admit
    t.model.init_bias(1.5 / 3)  # what the first step does with this batch: (1 + .5) / (2 + 1)
    p = float(t.score(batch)[0])  # no dense features: scoring = the training forward
    loss = t.train_batch(batch)
    bce0, bce1 = -np.log(1 - p), -np.log(p)
    assert loss == pytest.approx(((1 - p) * (1 + p) * bce0 + (1 + p) * bce1) / 2, rel=1e-4)
    assert (t.samples, t.skipped) == (2, 1)
    (w,) = t.metrics.advance(0, flush=True)  # metrics compare b = p / (1 + p) with labels
    assert w.pred_ctr == pytest.approx(p / (1 + p), rel=1e-4) and w.obs_ctr == 0.5
    # FNC: plain log loss on the biased stream, serving b / (1 - b)
    t2 = Trainer(fields, [], mlp=[8], delayed_loss="fnc")
    (tab,) = t2.tables.values()
    tab.lookup(np.unique(np.concatenate([batch.sparse[f][0] for f, _ in fields])))
    t2.model.init_bias(1.5 / 3)
    b = float(t2.score(batch)[0])
    b_raw = b / (1 + b)
    assert t2.train_batch(batch) == pytest.approx(
        (-np.log(1 - b_raw) - np.log(b_raw)) / 2, rel=1e-4
    )


def test_first_batch_sets_normalisation_and_output_prior() -> None:
    t = Trainer([("user_id", 4)], ["price"], mlp=[8])
    samples = synthetic_samples(200, seed=6)
    ctr = (sum(s["labels"]["click"] for s in samples) + 0.5) / (len(samples) + 1)
    assert t.take_cut(full=True) is None  # nothing trained: nothing to serve
    t.train_samples(samples)
    # the first step started from the batch's click rate (then moved by one update)
    assert t.model.wide.bias.item() == pytest.approx(np.log(ctr / (1 - ctr)), abs=0.05)
    prices = np.array([s["features"]["dense"]["price"] for s in samples])
    assert t.model.norm.mean.item() == pytest.approx(prices.mean(), rel=1e-4)
    assert t.model.norm.var.item() == pytest.approx(prices.var(), rel=1e-3)


def test_binned_window_auc_matches_the_exact_auc() -> None:
    rng = np.random.default_rng(2)
    p = rng.beta(1, 8, 5000)
    y = (rng.random(5000) < p).astype(np.float64)
    m = PrequentialMetrics(window_ms=10)
    m.add(p, y, np.zeros(5000, dtype=np.int64))
    (w,) = m.advance(10)
    assert w.n == 5000 and w.auc == pytest.approx(auc(p, y), abs=2e-3)
    assert w.calibration == pytest.approx(p.mean() / y.mean())


@pytest.mark.parametrize("arch", ["deepfm", "dlrm"])
def test_prequential_auc_rises_on_known_click_model(arch: str, tmp_path: Path) -> None:
    samples = synthetic_samples(6000, seed=1)
    log = tmp_path / "m.jsonl"
    t = Trainer(
        FIELDS,
        ["price"],
        arch=arch,
        mlp=[32],
        dense_lr=0.05,
        metrics=PrequentialMetrics(window_ms=1_500_000, jsonl=log),
    )
    for k in range(0, 4000, 100):
        t.train_samples(samples[k : k + 100])
    held = featurize(samples[4000:], [f for f, _ in FIELDS], ["price"])
    p = t.score(held)
    oracle = np.array([s["p_click"] for s in samples[4000:]])
    y = held.label.double().numpy()
    got = auc(p, y)
    assert got > 0.68, (got, auc(oracle, y))
    t.metrics.advance(0, flush=True)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) >= 2 and sum(x["n"] for x in lines) == 4000
    assert lines[-1]["auc"] > lines[0]["auc"]  # prequential AUC rises as it learns
    gauges = {"lag": 3, "table_rows": {"item_id": 5}}
    text = prometheus_text(t.metrics, gauges)
    assert "fluxrec_trainer_window_auc" in text and "fluxrec_trainer_lag 3" in text
    assert 'fluxrec_trainer_table_rows{name="item_id"} 5' in text
    cut = t.take_cut()
    assert cut is not None and cut.full and cut.step == 40 and cut.samples == 4000
    assert set(cut.tables) == {"user_id", "item_id", "category"}
    assert cut.watermark_ms == samples[3999]["event_time_ms"]
    assert t.take_cut() is None  # nothing changed since
    t.train_samples(samples[4000:4010])
    cut2 = t.take_cut()
    assert cut2 is not None and not cut2.full
    assert 0 < cut2.tables["item_id"].ids.size <= 10
    assert cut2.tables["user_id"].ids.size <= 10
    full = t.take_cut(full=True)  # a snapshot on request, even with nothing changed
    assert full is not None and full.full
    assert full.tables["item_id"].ids.size == cut.tables["item_id"].ids.size + len(
        set(cut2.tables["item_id"].ids.tolist()) - set(cut.tables["item_id"].ids.tolist())
    )


def _full_state(t: Trainer) -> dict[str, Any]:
    cut = t.take_cut(full=True)
    assert cut is not None
    out: dict[str, Any] = dict(cut.dense)
    for name, d in cut.tables.items():
        order = np.argsort(d.ids)
        out[name] = (d.ids[order], d.values[order])
    return out


def test_checkpoint_round_trip_resumes_identically(tmp_path: Path) -> None:
    from trainer.checkpoint import CheckpointError, load_latest, save

    samples = synthetic_samples(1200, seed=3)
    names = [f for f, _ in FIELDS]
    a = Trainer(FIELDS, ["price"], arch="deepfm", mlp=[16], seed=1)
    for k in range(0, 600, 100):
        a.train_batch(featurize(samples[k : k + 100], names, ["price"]), offsets={"s": {0: k}})
    for _ in range(4):
        save(a, tmp_path, keep=2)
    assert len(list(tmp_path.glob("ckpt-*"))) == 1  # same step: replaced, not duplicated
    a.train_samples(samples[600:700])
    save(a, tmp_path, keep=2)
    a.train_samples(samples[700:800])
    last = save(a, tmp_path, keep=2)
    assert len(list(tmp_path.glob("ckpt-*"))) == 2
    assert not list(tmp_path.glob(".tmp-*"))
    b = Trainer(FIELDS, ["price"], arch="deepfm", mlp=[16], seed=9)
    assert load_latest(b, tmp_path) == last
    assert (b.step, b.samples, b.offsets, b.id_xor) == (a.step, a.samples, a.offsets, a.id_xor)
    cut = b.take_cut()  # a restored trainer starts with a snapshot cut
    assert cut is not None and cut.full
    held = featurize(samples[800:900], names, ["price"])
    assert np.allclose(a.score(held), b.score(held), atol=1e-6)
    nxt = featurize(samples[900:1000], names, ["price"])
    assert a.train_batch(nxt) == pytest.approx(b.train_batch(nxt), rel=1e-5)
    sa, sb = _full_state(a), _full_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], tuple):
            assert np.array_equal(sa[k][0], sb[k][0]) and np.allclose(sa[k][1], sb[k][1])
        else:
            assert np.allclose(sa[k], sb[k], atol=1e-6), k
    other = Trainer([("user_id", 8), ("item_id", 4)], ["price"], mlp=[16])
    with pytest.raises(CheckpointError, match="checkpoint_dir"):
        load_latest(other, tmp_path)


def test_metrics_endpoint_serves_prometheus_text() -> None:
    import urllib.request

    from fluxrec.testing import free_port
    from trainer.http import serve_metrics

    m = PrequentialMetrics(window_ms=1000)
    m.add(np.array([0.2, 0.8]), np.array([0.0, 1.0]), np.array([0, 10], dtype=np.int64))
    m.advance(5000)
    port = free_port()
    srv = serve_metrics("127.0.0.1", port, lambda: prometheus_text(m, {"lag": 7}))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
    finally:
        srv.shutdown()
        srv.server_close()
    assert "fluxrec_trainer_window_auc 1.0" in body and "fluxrec_trainer_lag 7" in body


def test_a_batch_with_a_non_finite_loss_changes_nothing() -> None:
    t = Trainer(FIELDS, ["price"], mlp=[8])
    samples = synthetic_samples(50, seed=8)
    t.train_samples(samples)
    before = {k: v.clone() for k, v in t.dense_state().items()}
    batch = featurize(samples, [f for f, _ in FIELDS], ["price"])
    poisoned = dataclasses.replace(batch, dense=torch.full_like(batch.dense, float("inf")))
    t.take_cut()
    t.train_batch(poisoned)
    assert t.nonfinite == 1 and t.samples == 50 and t.metrics.samples == 50
    after = t.dense_state()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # norm statistics too
    assert t.take_cut() is None  # no step: nothing changed, not even a row


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    import socket

    import yaml

    from fluxrec.config import load_config
    from trainer.daemon import serve
    from trainer.errors import TrainerError

    doc: dict[str, Any] = {
        "stack": {"state_dir": "state"},
        "kafka": {"bootstrap": "127.0.0.1:9"},
        "redis": {"url": "redis://127.0.0.1:9/0"},
        "object_store": {"url": "file://objects"},
        "features": {"sparse": [{"name": "user_id"}, {"name": "slot", "ids": "raw", "dim": 4}]},
    }
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        doc["trainer"] = {"metrics_port": busy.getsockname()[1]}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(TrainerError, match=r"trainer\.metrics_port"):
            serve(load_config(path), export=False, say=lambda _: None)
    assert (tmp_path / "state" / "trainer").is_dir()  # the default checkpoint directory
    doc["trainer"] = {"label": "purchase"}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(TrainerError, match=r"trainer\.label 'purchase'.*click"):
        Trainer.from_config(load_config(path))
    del doc["trainer"]
    path.write_text(yaml.safe_dump(doc))
    t = Trainer.from_config(load_config(path))
    assert {n: tab.fields for n, tab in t.tables.items()} == {
        "user_id": ["user_id"],
        "slot": ["slot"],
    }
    assert t.tables["slot"].p.dim == 4 and t.tables["user_id"].p.dim == 16


def test_a_sample_weighs_one_over_the_nominal_batch_in_any_micro_batch() -> None:
    """With ``nominal_batch`` the loss is the sum over the batch / nominal_batch: the
    gradient of a micro-batch of 4 is 4/64 of its mean-loss gradient, so a click that
    arrives alone does not weigh as much as a full batch."""
    batch = synthetic_samples(4, seed=9)
    grads = []
    for nominal in (None, 64):
        t = Trainer([("user_id", 4), ("item_id", 4)], ["price"], mlp=[8], nominal_batch=nominal)
        mean_loss = t.train_batch(t.featurize(batch))
        grads.append(t.model.first.weight.grad.clone())  # type: ignore[union-attr]
        assert mean_loss > 0
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0] * 4 / 64)
