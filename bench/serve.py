"""Benchmark of the example scoring server (``make bench-serve``).

A generated model (DeepFM, 26 sparse fields of dim 16 with ``--vocab`` rows each: 2.6M
rows by default, 13 dense features, MLP 256-128, the trainer's own layer names) is
published to a file:// store by a publisher process; a server process (``serving``: the
SDK's in-place tables, the numpy model, ``make_server``; no torch) follows it; this
process sends ``POST /score`` requests of ``--candidates`` instances each (10 user
fields shared by the request's candidates, 16 item fields Zipf over the vocabulary, 13
dense values) on keep-alive connections and times each answer on the client side:

1. ``p50_ms`` / ``p99_ms``: one connection, no versions arriving;
2. ``p50_ms_while_applying`` / ``p99_ms_while_applying``: one connection while the
   publisher publishes a delta every second (``--delta-rows`` changed rows per field,
   and every dense tensor), which the server applies;
3. ``rps`` / ``candidates_per_s`` / ``p50_ms_8`` / ``p99_ms_8``: eight connections, one
   thread each, while deltas are applied.

Anchors measured in the same run: ``model_only_ms`` is the model alone on the same
requests, already featurized, in this process on the same version (the rows read from
the SDK's tables, one lookup per field, and the numpy forward pass: what a server must
do at least), median over the requests; ``vs_model_only`` = model_only_ms / p50_ms
(1.0: the HTTP server, JSON and featurizing cost nothing). ``http_floor_ms`` is a
``http.server`` handler in the server process that reads the same body and answers a
constant (the transport alone); ``featurize_ms`` is :meth:`Featurizer.request` alone.
The machine is shared: compare ratios. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

F, D, N_DENSE, MLP = 26, 16, 13, [256, 128]
USER_FIELDS = 10  # the first fields are the user's: the same for every candidate
FIELDS = [f"f{j}" for j in range(F)]
DENSE = [f"d{j}" for j in range(N_DENSE)]


def _spec() -> Any:
    from serving.model import FieldSpec, ModelSpec

    return ModelSpec.build("deepfm", [FieldSpec(n, D) for n in FIELDS], DENSE, inter_dim=D)


# ----------------------------------------------------------------------- publisher


def publish(url: str, vocab: int, delta_rows: int, ids_path: Path) -> None:
    """Publish the snapshot, print "ready", wait for a line on stdin, then publish a
    delta every second until killed."""
    import torch

    from exporter.exporter import Exporter
    from exporter.settings import ExporterConfig
    from exporter.store import open_store
    from exporter.types import Cut, TableDelta
    from featurize.hashing import stable_hash_many
    from trainer.model import CTRModel

    rng = np.random.default_rng(0)
    ids = {n: stable_hash_many(n, (f"v{k}" for k in range(vocab))) for n in FIELDS}
    np.savez(ids_path, **ids)
    torch.manual_seed(0)
    model = CTRModel("deepfm", [(F, D)], N_DENSE, MLP, D)
    dense = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    stats = frozenset(n for n, _ in model.named_buffers())
    ex = Exporter(open_store(url), ExporterConfig(snapshot_every=1_000_000, max_norm_jump=100))

    def cut(step: int, full: bool) -> Cut:
        tables = {}
        for n in FIELDS:
            sel = ids[n] if full else rng.choice(ids[n], delta_rows, replace=False)
            vals = (rng.standard_normal((len(sel), D)) * 0.05).astype(np.float32)
            tables[n] = TableDelta(n, D, sel, vals)
        now = int(time.time() * 1000)
        return Cut(step, step * 4096, full, now, {"s": {0: step}}, tables, dense, now, stats)

    ex.publish(cut(1, True))
    print("ready", flush=True)
    sys.stdin.readline()
    step = 2
    while True:
        t0 = time.monotonic()
        ex.publish(cut(step, False))
        step += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


# -------------------------------------------------------------------------- server


def server(url: str, port: int, floor_port: int) -> None:
    """The scoring server (SDK + numpy model, no torch) and the transport anchor."""
    from http.server import BaseHTTPRequestHandler

    from exporter.sdk import DeltaConsumer
    from exporter.store import open_store
    from fluxrec.httpd import NoDelayHTTPServer, respond
    from serving.server import ScoringService, ServingTables, make_server, one_blas_thread, warm_up

    assert "torch" not in sys.modules
    one_blas_thread()  # as fluxrec serve does
    warm_up()
    tables = ServingTables()
    consumer = DeltaConsumer(open_store(url), tables, poll_interval_s=0.05)
    service = ScoringService(_spec(), tables, consumer)
    srv = make_server(service, "127.0.0.1", port)

    class Floor(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            respond(self, 200, b'{"version": 0, "p_click": []}')

        def log_message(self, format: str, *args: object) -> None:
            return

    floor = NoDelayHTTPServer(("127.0.0.1", floor_port), Floor)
    for s in (srv, floor):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    consumer.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    consumer.stop()
    print(json.dumps({"applied": service.stats.applied}), flush=True)


# ---------------------------------------------------------------------------- load


def bodies(n: int, candidates: int, vocab: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        user = {f: [f"v{int(min(rng.zipf(1.1) - 1, vocab - 1))}"] for f in FIELDS[:USER_FIELDS]}
        items = np.minimum(rng.zipf(1.1, (candidates, F - USER_FIELDS)) - 1, vocab - 1)
        dense = np.round(rng.lognormal(0, 1, (candidates, N_DENSE)), 4)
        inst = [
            {
                "sparse": user
                | {f: [f"v{items[c, j]}"] for j, f in enumerate(FIELDS[USER_FIELDS:])},
                "dense": dict(zip(DENSE, dense[c].tolist(), strict=True)),
            }
            for c in range(candidates)
        ]
        out.append(json.dumps({"instances": inst}).encode())
    return out


class Client:
    """One keep-alive HTTP/1.1 connection: ``post(body)`` -> (status, answer bytes)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, body: bytes) -> tuple[int, bytes]:
        head = f"POST /score HTTP/1.1\r\nHost: b\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 16)
        head_b, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head_b.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
        while len(rest) < length:
            rest += self.sock.recv(1 << 16)
        self.buf = rest[length:]
        return status, rest[:length]

    def close(self) -> None:
        self.sock.close()


def load(port: int, reqs: list[bytes], conns: int, seconds: float) -> tuple[list[float], float]:
    """Latencies (s) of every request, and requests/s, with ``conns`` connections for
    ``seconds`` (each connection cycles through ``reqs``)."""
    lat: list[list[float]] = [[] for _ in range(conns)]
    end = time.monotonic() + seconds

    def worker(k: int) -> None:
        c = Client(port)
        i = k
        try:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                status, _ = c.post(reqs[i % len(reqs)])
                lat[k].append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                i += conns
        finally:
            c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    every = [x for xs in lat for x in xs]
    return every, len(every) / took


def _ms(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1000, 3)


def _wait_ready(port: int, timeout_s: float = 300.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not apply the snapshot in time")


def model_only(url: str, reqs: list[bytes]) -> tuple[float, float]:
    """(model_only_ms, featurize_ms): medians over ``reqs`` on the same snapshot."""
    from exporter.sdk import DeltaConsumer
    from exporter.store import open_store
    from featurize.core import Featurizer
    from serving.model import forward, predict
    from serving.server import ServingTables, one_blas_thread

    one_blas_thread()  # as the server
    spec = _spec()
    tables = ServingTables()
    DeltaConsumer(open_store(url), tables).sync()
    fz = Featurizer(spec.features)
    xs = [fz.request(b)[0] for b in reqs]
    model, feat = [], []
    for b, x in zip(reqs, xs, strict=True):
        t0 = time.perf_counter()
        _, view = tables.read(spec, x)
        predict(spec, forward(spec, view, x))
        t1 = time.perf_counter()
        fz.request(b)
        t2 = time.perf_counter()
        model.append(t1 - t0)
        feat.append(t2 - t1)
    return float(np.median(model)) * 1000, float(np.median(feat)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=100_000, help="rows per field")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--delta-rows", type=int, default=2000, help="changed rows per field")
    ap.add_argument("--seconds", type=float, default=20.0, help="per measured phase")
    ap.add_argument("--server", nargs=3, metavar=("URL", "PORT", "FLOOR_PORT"))
    ap.add_argument("--publish", nargs=2, metavar=("URL", "IDS"))
    a = ap.parse_args()
    if a.server:
        server(a.server[0], int(a.server[1]), int(a.server[2]))
        return
    if a.publish:
        publish(a.publish[0], a.vocab, a.delta_rows, Path(a.publish[1]))
        return
    from fluxrec.testing import free_port

    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory(prefix="fluxrec-bench-serve-") as tmp:
        url = (Path(tmp) / "objects").as_uri()
        pub = subprocess.Popen(
            [*me, "--publish", url, str(Path(tmp) / "ids.npz"), "--vocab", str(a.vocab),
             "--delta-rows", str(a.delta_rows)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        port, floor_port = free_port(), free_port()
        srv = None
        try:
            assert pub.stdout is not None and pub.stdin is not None
            if pub.stdout.readline().strip() != "ready":
                raise RuntimeError("the publisher failed")
            srv = subprocess.Popen(
                [*me, "--server", url, str(port), str(floor_port)],
                stdout=subprocess.PIPE,
                text=True,
            )
            reqs = bodies(200, a.candidates, a.vocab)
            _wait_ready(port)
            model_ms, feat_ms = model_only(url, reqs[:100])
            load(port, reqs, 1, 2.0)  # warm-up
            quiet, _ = load(port, reqs, 1, a.seconds)
            floor, _ = load(floor_port, reqs, 1, a.seconds / 4)
            pub.stdin.write("go\n")
            pub.stdin.flush()
            time.sleep(2.0)  # the first deltas arrive
            applying, _ = load(port, reqs, 1, a.seconds)
            eight, rps = load(port, reqs, 8, a.seconds)
        finally:
            pub.kill()
            pub.wait()
            out = ""
            if srv is not None:
                srv.send_signal(signal.SIGTERM)
                out, _ = srv.communicate(timeout=60)
        applied = json.loads(out.strip().splitlines()[-1])["applied"] if out else 0
    p50 = _ms(quiet, 50)
    res = {
        "p50_ms": p50,
        "p99_ms": _ms(quiet, 99),
        "p50_ms_while_applying": _ms(applying, 50),
        "p99_ms_while_applying": _ms(applying, 99),
        "rps": round(rps, 1),
        "candidates_per_s": round(rps * a.candidates),
        "p50_ms_8": _ms(eight, 50),
        "p99_ms_8": _ms(eight, 99),
        "model_only_ms": round(model_ms, 3),
        "vs_model_only": round(model_ms / p50, 3),
        "featurize_ms": round(feat_ms, 3),
        "http_floor_ms": _ms(floor, 50),
        "versions_applied": applied,
        "candidates": a.candidates,
        "rows": a.vocab * F,
        "delta_rows_per_s": a.delta_rows * F,
        "cores": os.cpu_count(),
    }
    print(
        f"1 connection: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms; while applying "
        f"p99 {res['p99_ms_while_applying']} ms; 8 connections: {res['rps']} requests/s "
        f"({res['candidates_per_s']} candidates/s); model alone {res['model_only_ms']} ms, "
        f"featurize {res['featurize_ms']} ms, http.server floor {res['http_floor_ms']} ms"
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
