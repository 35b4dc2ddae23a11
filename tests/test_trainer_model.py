"""The trainer core: models, losses, prequential metrics, cuts on a synthetic stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.core import BadSample, Trainer, featurize
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
    m = CTRModel(arch, 26, 16, 13, [256, 128])
    out = m(torch.randn(5, 26, 16), torch.randn(5, 13))
    assert out.shape == (5,)
    if arch != "dlrm":
        assert m.mlp[0].in_features == 429


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


def test_bad_sample_names_the_id() -> None:
    with pytest.raises(BadSample, match="r-1"):
        featurize([{"sample_id": "r-1", "features": {}}], ["user_id"], [])


@pytest.mark.parametrize("arch", ["deepfm", "dlrm"])
def test_prequential_auc_rises_on_known_click_model(arch: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
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
    lines = log.read_text().splitlines()
    assert len(lines) >= 2 and '"auc"' in lines[0]
    text = prometheus_text(t.metrics, {"lag": 3})
    assert "fluxrec_trainer_window_auc" in text and "fluxrec_trainer_lag 3" in text
    cut = t.take_cut()
    assert cut.full and cut.step == 40 and cut.samples == 4000
    assert set(cut.tables) == {"user_id", "item_id", "category"}
    assert cut.watermark_ms == samples[3999]["event_time_ms"]
    t.train_samples(samples[4000:4010])
    cut2 = t.take_cut()
    assert not cut2.full and 0 < cut2.tables["item_id"].ids.size <= 10


def test_checkpoint_round_trip_resumes_identically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from trainer.checkpoint import load_latest, save

    samples = synthetic_samples(1200, seed=3)
    a = Trainer(FIELDS, ["price"], arch="deepfm", mlp=[16], seed=1)
    for k in range(0, 600, 100):
        a.train_batch(
            featurize(samples[k : k + 100], [f for f, _ in FIELDS], ["price"]),
            offsets={"s": {0: k + 100}},
        )
    for _ in range(4):
        save(a, tmp_path, keep=2)
    assert len(list(tmp_path.glob("ckpt-*"))) == 1  # same step: replaced, not duplicated
    a.train_samples(samples[600:700])
    save(a, tmp_path, keep=2)
    a.train_samples(samples[700:800])
    last = save(a, tmp_path, keep=2)
    assert len(list(tmp_path.glob("ckpt-*"))) == 2
    b = Trainer(FIELDS, ["price"], arch="deepfm", mlp=[16], seed=9)
    assert load_latest(b, tmp_path) == last
    assert (b.step, b.samples, b.offsets, b.id_xor) == (a.step, a.samples, a.offsets, a.id_xor)
    held = featurize(samples[800:900], [f for f, _ in FIELDS], ["price"])
    assert np.allclose(a.score(held), b.score(held), atol=1e-6)
    nxt = featurize(samples[900:1000], [f for f, _ in FIELDS], ["price"])
    assert a.train_batch(nxt) == pytest.approx(b.train_batch(nxt), rel=1e-5)
    assert b.take_cut().full  # a restored trainer starts with a snapshot cut


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
