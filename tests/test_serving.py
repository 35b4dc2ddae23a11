"""The example scoring server: its numpy model scores what the trainer scores, for the same
version; its HTTP endpoints; and ``fluxrec serve`` as a process without torch or pyflink,
following versions announced on the stack's Redis."""

from __future__ import annotations

import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml

from exporter.exporter import Exporter
from exporter.sdk import DeltaConsumer
from exporter.settings import ExporterConfig
from exporter.store import open_store
from fluxrec.config import load_config
from fluxrec.testing import WITHOUT_TORCH_OR_PYFLINK, free_port, unique_name
from serving.errors import BadRequest, ModelMismatch, NotReady
from serving.model import FieldSpec, ModelSpec
from serving.server import ScoringService, ServingTables, make_server
from trainer.core import SparseField, Trainer

REPO = Path(__file__).resolve().parents[1]
FIELDS = [
    SparseField("user_id", 16),
    SparseField("item_id", 8),  # another dim: projected for the interactions
    SparseField("category", 16),  # 0..2 values per sample: mean-pooled, or zeros
    SparseField("position", 4, raw=True),  # raw ids: a table of its own
]
DENSE = ["price", "age"]


def _samples(n: int, rng: random.Random, strategy: str = "window") -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        cats = [f"c{rng.randint(0, 6)}" for _ in range(rng.randint(0, 2))]
        out.append(
            {
                "v": 1,
                "sample_id": f"r{rng.random()}|i|0",
                "event_time_ms": 1_700_000_000_000 + i,
                "strategy": strategy,
                "correction": False,
                "labels": {"click": int(rng.random() < 0.2)},
                "features": {
                    "sparse": {
                        "user_id": [f"u{rng.randint(0, 60)}"],
                        "item_id": [f"i{rng.randint(0, 40)}"],
                        "category": cats,
                        "position": [str(rng.randint(1, 4))],
                    },
                    "dense": {"price": rng.random() * 30, "age": rng.gauss(40, 10)},
                },
            }
        )
    return out


def _spec(arch: str, fnc: bool = False) -> ModelSpec:
    fields = [FieldSpec(f.name, f.dim, f.raw) for f in FIELDS]
    return ModelSpec.build(arch, fields, DENSE, inter_dim=16, fnc=fnc)


def _trained(arch: str, fnc: bool, store_dir: Path) -> tuple[Trainer, Exporter, random.Random]:
    rng = random.Random(7)
    strategy = "fake_negative" if fnc else "window"
    t = Trainer(
        FIELDS, DENSE, arch=arch, mlp=[32, 16], inter_dim=16, delayed_loss="fnc" if fnc else "fnw"
    )
    for _ in range(4):
        t.train_samples(_samples(128, rng, strategy))
    ex = Exporter(open_store(store_dir.as_uri()), ExporterConfig())
    cut = t.take_cut(True)
    assert cut is not None
    ex.publish(cut)
    for _ in range(2):  # then a delta: changed rows only
        t.train_samples(_samples(128, rng, strategy))
    cut = t.take_cut(False)
    assert cut is not None and not cut.full
    ex.publish(cut)
    return t, ex, rng


@pytest.mark.parametrize(
    ("arch", "fnc", "backend"),
    [
        ("deepfm", False, "inplace"),
        ("deepfm", False, "memory"),
        ("deepfm", True, "inplace"),
        ("wide_deep", False, "inplace"),
        ("dlrm", False, "memory"),
        ("dlrm", True, "inplace"),
    ],
)
def test_scores_equal_the_trainers_for_the_same_version(
    tmp_path: Path, arch: str, fnc: bool, backend: str
) -> None:
    t, _, rng = _trained(arch, fnc, tmp_path / "objects")
    tables = ServingTables(backend)  # type: ignore[arg-type]
    consumer = DeltaConsumer(open_store((tmp_path / "objects").as_uri()), tables)
    assert consumer.sync() == 2 and tables.version == 1
    service = ScoringService(_spec(arch, fnc), tables)
    test = _samples(300, rng, "fake_negative" if fnc else "window")
    test[0]["features"]["sparse"]["user_id"] = ["never-seen"]  # no row: zeros, as in training
    test[1]["features"]["sparse"] = {}  # every field empty
    test[2]["features"]["dense"] = {}  # missing dense values are 0
    version, p = service.score([s["features"] for s in test])
    want = t.score(t.featurize(test))
    assert version == 1
    np.testing.assert_allclose(p, want, rtol=0, atol=1e-5)
    assert np.ptp(p) > 1e-3  # the scores depend on the features at all


def test_fields_are_grouped_as_the_trainer_stores_them() -> None:
    spec = _spec("deepfm")
    t = Trainer(FIELDS, DENSE, arch="deepfm", mlp=[8], inter_dim=16)
    assert [[f.name for f in g.fields] for g in spec.groups] == [g.fields for g in t.groups]
    assert [g.dim for g in spec.groups] == [g.table.p.dim for g in t.groups]


def test_a_version_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    _trained("wide_deep", False, tmp_path / "objects")  # no proj.* tensors: deepfm needs them
    tables = ServingTables()
    DeltaConsumer(open_store((tmp_path / "objects").as_uri()), tables).sync()
    service = ScoringService(_spec("deepfm"), tables)
    with pytest.raises(ModelMismatch, match=r"proj\.1\.weight"):
        service.score([_samples(1, random.Random(1))[0]["features"]])


def test_requests_are_validated_and_wait_for_a_version(tmp_path: Path) -> None:
    tables = ServingTables()
    service = ScoringService(_spec("deepfm"), tables)
    feats = _samples(1, random.Random(2))[0]["features"]
    with pytest.raises(NotReady):
        service.score([feats])
    for bad, why in (
        ({"sparse": {"user_id": "u1"}}, "must be a list"),
        ({"sparse": {"user_id": [3]}}, "not a string"),
        ({"sparse": {"position": ["x"]}}, "decimal int64"),
        ({"dense": {"price": "1"}}, "not a number"),
        ({"dense": {"price": True}}, "not a number"),
    ):
        with pytest.raises(BadRequest, match=why):
            service.score([bad])
    for body, why in (
        ([], "JSON object"),
        ({"features": feats, "instances": [feats]}, "exactly one of"),
        ({"impressions": [{"request_id": "r"}]}, "no 'features' object"),
        ({"instances": {"a": 1}}, "must be a list"),
    ):
        with pytest.raises(BadRequest, match=why):
            service.handle_score(body)


@pytest.fixture
def http_service(tmp_path: Path) -> Iterator[tuple[int, ScoringService, Trainer, Any]]:
    t, ex, rng = _trained("deepfm", False, tmp_path / "objects")
    tables = ServingTables()
    consumer = DeltaConsumer(open_store((tmp_path / "objects").as_uri()), tables)
    service = ScoringService(_spec("deepfm"), tables, consumer)
    srv = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1], service, t, (ex, consumer, rng)
    finally:
        srv.shutdown()
        srv.server_close()


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
        conn.request(method, path, data)
        resp = conn.getresponse()
        raw = resp.read().decode()
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, json.loads(raw) if "json" in ctype else raw, ctype
    finally:
        conn.close()


def test_http_endpoints(http_service: tuple[int, ScoringService, Trainer, Any]) -> None:
    port, _, t, (_, consumer, rng) = http_service
    feats = _samples(3, rng)
    assert _call(port, "POST", "/score", {"features": feats[0]["features"]})[0] == 503
    assert _call(port, "GET", "/healthz")[0] == 503
    consumer.sync()
    code, health, _ = _call(port, "GET", "/healthz")
    assert code == 200 and health["version"] == 1
    code, one, _ = _call(port, "POST", "/score", {"features": feats[0]["features"]})
    assert code == 200 and one["version"] == 1
    want = t.score(t.featurize(feats))
    assert abs(one["p_click"] - want[0]) < 1e-5
    code, many, _ = _call(port, "POST", "/score", {"impressions": feats})
    assert code == 200
    np.testing.assert_allclose(many["p_click"], want, atol=1e-5)
    code, inst, _ = _call(port, "POST", "/score", {"instances": [s["features"] for s in feats]})
    assert inst["p_click"] == many["p_click"]
    code, err, _ = _call(port, "POST", "/score", b"{not json")
    assert code == 400 and "not JSON" in err["error"]
    assert _call(port, "GET", "/nope")[0] == 404
    code, version, _ = _call(port, "GET", "/version")
    assert code == 200 and version["sequence"] == 1 and version["kind"] == "delta"
    code, text, ctype = _call(port, "GET", "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    lines = set(text.splitlines())
    assert "fluxrec_server_version 1" in lines
    assert "fluxrec_server_applied_versions_total 2" in lines
    assert "fluxrec_server_scored_total 7" in lines
    assert 'fluxrec_server_requests_total{path="/score",code="503"} 1' in lines
    assert any(x.startswith("fluxrec_server_lag_seconds ") for x in lines)
    assert any(
        x.startswith('fluxrec_server_apply_delay_seconds_bucket{le="+Inf"} 2') for x in lines
    )


def test_bad_and_oversize_bodies_and_unknown_features_over_http(
    http_service: tuple[int, ScoringService, Trainer, Any],
) -> None:
    port, service, t, (_, consumer, rng) = http_service
    consumer.sync()
    feats = _samples(2, rng)
    code, err, _ = _call(port, "POST", "/score", {"instances": [{"dense": {"age": "old"}}]})
    assert code == 400 and "instances[0].dense.age" in err["error"]
    f = feats[0]["features"]
    f["sparse"]["colour"] = ["red"]  # unknown to the model: scored without it, counted
    code, one, _ = _call(port, "POST", "/score", {"features": f})
    assert code == 200 and abs(one["p_click"] - t.score(t.featurize(feats))[0]) < 1e-5
    assert service.stats.unknown == {"sparse.colour": 1}
    assert "fluxrec_server_unknown_features_total 1" in _call(port, "GET", "/metrics")[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:  # only the headers: the server answers 413 without reading 17 MiB
        conn.putrequest("POST", "/score")
        conn.putheader("Content-Length", str(17 << 20))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and "bytes >" in json.loads(resp.read())["error"]
    finally:
        conn.close()


class _Writes:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, b: bytes) -> int:
        self.writes.append(b)
        return len(b)


def test_responses_are_one_write_on_sockets_without_nagle(tmp_path: Path) -> None:
    """http.server wrote headers and body apart: with Nagle on, the body waited for the
    client's delayed ACK (~40 ms a response). Both daemons' servers set TCP_NODELAY on
    every accepted socket and write each response at once."""
    from http.server import BaseHTTPRequestHandler

    from fluxrec.httpd import NoDelayHTTPServer, respond
    from trainer.http import serve_metrics

    service = ScoringService(_spec("deepfm"), ServingTables())
    servers = [make_server(service, "127.0.0.1", 0), serve_metrics("127.0.0.1", 0, str)]
    try:
        for srv in servers:
            assert isinstance(srv, NoDelayHTTPServer)
        srv = make_server(service, "127.0.0.1", 0)  # not serving: the test accepts
        client = socket.create_connection(srv.server_address[:2], timeout=10)
        conn, _ = srv.get_request()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
        client.close()
        srv.server_close()
    finally:
        servers[1].shutdown()
        for s in servers:
            s.server_close()
    h = BaseHTTPRequestHandler.__new__(BaseHTTPRequestHandler)
    h.wfile, h.request_version, h.close_connection = _Writes(), "HTTP/1.1", False  # type: ignore[assignment]
    h.protocol_version, h.requestline, h.command, h.path = "HTTP/1.1", "GET / HTTP/1.1", "GET", "/"
    h.client_address = ("127.0.0.1", 1)
    respond(h, 200, b'{"ok": 1}')
    (written,) = h.wfile.writes  # type: ignore[attr-defined]
    head, body = written.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 9" in head
    assert body == b'{"ok": 1}'


def test_the_server_imports_neither_torch_nor_pyflink() -> None:
    code = (
        "import sys, serving.server, serving.model\n"
        "assert 'trainer' not in sys.modules\n"  # the featurizer is featurize's, not trainer's
        "import serving.cli, fluxrec.cli\n"
        "fluxrec.cli.build_parser()\n"
        "bad = [m for m in ('torch', 'pyflink') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    # featurize sits below the trainer and the server: it imports the ground floor only
    code = (
        "import sys, featurize.core, featurize.reference\n"
        "above = ('torch', 'pyflink', 'trainer', 'serving', 'exporter', 'sample_join',\n"
        "         'pipelines', 'replay', 'demo')\n"
        "bad = [m for m in sys.modules if m.partition('.')[0] in above]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


NO_TORCH = (
    WITHOUT_TORCH_OR_PYFLINK
    + r"""
from fluxrec.cli import main

sys.exit(main(sys.argv[1:]))
"""
)


def _wait(cond: Any, timeout_s: float = 180.0, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                print(proc.communicate(timeout=30)[0])
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.mark.redis
def test_serve_process_follows_versions_announced_on_redis(
    tmp_path: Path, stack_config_path: Path
) -> None:
    channel = unique_name("versions")
    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "extends": str(stack_config_path),
                "object_store": {"url": (tmp_path / "objects").as_uri()},
                "redis": {"channel": channel},
                "model": {"arch": "deepfm", "embedding_dim": 16, "mlp": [32, 16]},
                "features": {
                    "sparse": [{"name": f.name, "dim": f.dim, "ids": "raw" if f.raw else "hash"}
                               for f in FIELDS],
                    "dense": [{"name": n} for n in DENSE],
                },
            }
        )
    )  # fmt: skip
    cfg = load_config(cfg_path)
    t = Trainer.from_config(cfg)
    rng = random.Random(3)
    t.train_samples(_samples(256, rng))
    ex = Exporter(
        open_store(cfg.object_store.url),
        cfg.exporter,
        redis_url=cfg.redis.url,
        channel=channel,
    )
    cut = t.take_cut(True)
    assert cut is not None
    ex.publish(cut)
    port = free_port()
    log = tmp_path / "applied.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", NO_TORCH, "serve", "--config", str(cfg_path), "--port",
         str(port), "--poll-interval-s", "30", "--apply-log", str(log)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait(lambda: _health(port) == 0)
        r = redis.Redis.from_url(cfg.redis.url)  # a notice before it subscribed would be lost
        _wait(lambda: dict(r.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1)
        r.close()
        probe = _samples(20, random.Random(9))
        _, before, _ = _call(port, "POST", "/score", {"impressions": probe})
        assert before["version"] == 0
        t.train_samples(_samples(256, rng))
        cut = t.take_cut(False)
        assert cut is not None
        ex.publish(cut)  # announced on Redis; the server polls only every 30 s
        _wait(lambda: _health(port) == 1, timeout_s=120, proc=proc)
        _, after, _ = _call(port, "POST", "/score", {"impressions": probe})
        assert after["version"] == 1
        assert after["p_click"] != before["p_click"]
        np.testing.assert_allclose(after["p_click"], t.score(t.featurize(probe)), atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "torch" not in out or "not installed" not in out, out
    applied = [json.loads(line) for line in log.read_text().splitlines()]
    assert [a["sequence"] for a in applied] == [0, 1]
    assert all(a["applied_ms"] >= a["published_ms"] for a in applied)


def _health(port: int) -> int | None:
    try:
        code, body, _ = _call(port, "GET", "/healthz")
    except OSError:
        return None
    return int(body["version"]) if code == 200 else None
