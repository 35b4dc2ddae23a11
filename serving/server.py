"""The example scoring server: HTTP in front of the delta consumer SDK and the numpy model.

``fluxrec serve`` follows the versions the exporter publishes (``exporter.sdk.DeltaConsumer``:
bootstrap from the newest snapshot chain, then every new version on its Redis notice or by
polling) and answers score requests with the newest applied parameters. It imports neither
torch nor pyflink.

Endpoints (JSON in and out, except ``/metrics``)::

    POST /score     {"features": {"sparse": {"user_id": ["u-3"]}, "dense": {"price": 12.5}}}
                      -> {"version": 41, "p_click": 0.0312}
                    {"impressions": [IMPRESSION, ...]}   (CONTRACTS.md 1.1 events)
                    {"instances": [FEATURES, ...]}       (their "features" objects)
                      -> {"version": 41, "p_click": [0.0312, ...]}
    GET  /healthz   200 {"status": "ok", "version": 41, ...}; 503 before the first version
    GET  /version   the applied version's manifest fields (sequence, offsets, times, ...)
    GET  /metrics   Prometheus text: version, lag, applied versions, apply delay, freshness,
                    requests and latency

Errors: 400 (a request that does not follow the shape above, naming the field), 404, 413
(body over ``max_body_bytes``), 503 (no version yet), 500 (the version does not fit the
configured model). A feature name the model does not know is ignored (scored without it)
and counted (``unknown_features_total``; JSON null means absent).

A request is scored as one batch: the body is featurized by the trainer's featurizer
(:class:`featurize.core.Featurizer`: Arrow reads the JSON, ids hashed per distinct
value), every field's rows are read with one lookup for all candidates, and the model
runs one forward pass; the rows and dense tensors are read under the lock the consumer
applies versions under, so a score sees one consistent version. Each response is one
write on a socket with ``TCP_NODELAY`` (:mod:`fluxrec.httpd`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from exporter.format import DecodedDense, DecodedTable
from exporter.sdk import Backend, DeltaConsumer, InMemoryTables, InPlaceTables
from featurize.core import Featurizer
from featurize.errors import BadInput
from fluxrec.httpd import NoDelayHTTPServer, respond
from serving.errors import BadRequest, ModelMismatch, NotReady, ServingError
from serving.model import F32, I64, Inputs, ModelSpec, forward, predict

if TYPE_CHECKING:
    from fluxrec.config import Config

__all__ = [
    "Histogram",
    "ScoringService",
    "ServingTables",
    "make_server",
    "one_blas_thread",
    "serve",
    "warm_up",
]

log = logging.getLogger(__name__)

BackendName = Literal["inplace", "memory"]
_MANIFEST_FIELDS = (
    "sequence",
    "kind",
    "base_snapshot",
    "watermark_ms",
    "trainer_step",
    "samples",
    "created_ms",
    "published_ms",
    "kafka_offsets",
)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Histogram:
    """A Prometheus histogram (cumulative ``le`` buckets, ``_sum``, ``_count``); thread-safe."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = list(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, x: float) -> None:
        with self._lock:
            for i, b in enumerate(self.buckets):
                if x <= b:
                    self.counts[i] += 1
            self.sum += x
            self.count += 1

    def lines(self, name: str, help_text: str) -> list[str]:
        with self._lock:
            out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            out += [
                f'{name}_bucket{{le="{b:g}"}} {c}'
                for b, c in zip(self.buckets, self.counts, strict=True)
            ]
            out += [
                f'{name}_bucket{{le="+Inf"}} {self.count}',
                f"{name}_sum {self.sum:.6f}",
                f"{name}_count {self.count}",
            ]
            return out


class _Prefetched:
    """A :class:`~serving.model.ParamView` over rows read ahead (under the apply lock)."""

    def __init__(self, rows: dict[str, F32], dense: Mapping[str, F32]) -> None:
        self.rows, self._dense = rows, dense

    def lookup(self, table: str, ids: I64) -> F32:
        return self.rows[table]

    @property
    def dense(self) -> Mapping[str, F32]:
        return self._dense


class ServingTables:
    """The SDK backend the server reads: :class:`~exporter.sdk.InPlaceTables` (rows updated
    in place, ~1.1x memory) or :class:`~exporter.sdk.InMemoryTables` (copy-on-write), behind
    one lock that an apply and a request's reads both hold, so every score sees one version.

    ``on_apply(manifest, applied_ms)`` is called after each applied version.
    """

    def __init__(
        self,
        backend: BackendName = "inplace",
        on_apply: Callable[[dict[str, Any], int], None] | None = None,
    ) -> None:
        self.backend = backend
        self._inner: InPlaceTables | InMemoryTables = (
            InPlaceTables() if backend == "inplace" else InMemoryTables()
        )
        self._lock = threading.Lock()
        self.on_apply = on_apply
        self.manifest: dict[str, Any] | None = None
        self.applied_ms: int | None = None
        self._staged: list[dict[str, Any]] | None = None  # a staging backend's versions

    def apply(
        self, manifest: dict[str, Any], tables: list[DecodedTable], dense: DecodedDense | None
    ) -> None:
        with self._lock:
            self._inner.apply(manifest, tables, dense)
            self.manifest = {k: manifest.get(k) for k in _MANIFEST_FIELDS}
            self.applied_ms = _now_ms()
            info, at = self.manifest, self.applied_ms
        if self._staged is not None:
            self._staged.append(info)
        if self.on_apply is not None:
            self.on_apply(info, at)

    def staging(self) -> ServingTables:
        """An empty backend of the same kind (a rebuild goes there, see ``swap``)."""
        staged = ServingTables(self.backend)
        staged._staged = []
        return staged

    def swap(self, staged: Backend) -> None:
        """Take over a rebuilt backend's tables at once (requests see old or new)."""
        if not isinstance(staged, ServingTables):
            raise TypeError(f"cannot swap in {type(staged).__name__}")
        with self._lock:
            self._inner, self.manifest = staged._inner, staged.manifest
            self.applied_ms = at = _now_ms()
        if self.on_apply is not None:
            for info in staged._staged or []:  # each version the rebuild applied
                self.on_apply(info, at)

    @property
    def version(self) -> int | None:
        m = self.manifest
        return None if m is None else int(m["sequence"])

    def _rows(self, table: str, ids: I64, dim: int) -> F32:
        try:
            if isinstance(self._inner, InPlaceTables):
                rows: F32 = self._inner.lookup(table, ids)
            else:
                state = self._inner.state
                rows = np.zeros((0, dim), np.float32) if state is None else state.lookup(table, ids)
        except KeyError:  # a field without any row in this version: zeros
            return np.zeros((ids.size, dim), dtype=np.float32)
        return rows

    def _dense(self) -> Mapping[str, F32]:
        if isinstance(self._inner, InPlaceTables):
            return self._inner.dense
        state = self._inner.state
        return {} if state is None else state.dense

    def read(self, spec: ModelSpec, x: Inputs) -> tuple[dict[str, Any], _Prefetched]:
        """The applied manifest and every row ``x`` needs, read as one version."""
        with self._lock:
            if self.manifest is None:
                raise NotReady("no parameter version applied yet: is the trainer exporting?")
            # one lookup per table for every candidate
            rows = {f.name: self._rows(f.name, x.sparse[f.name][0], f.dim) for f in spec.fields}
            return self.manifest, _Prefetched(rows, self._dense())

    def nbytes(self) -> int:
        if isinstance(self._inner, InPlaceTables):
            return self._inner.nbytes()
        state = self._inner.state
        return 0 if state is None else sum(t.nbytes for t in state.tables.values())


@dataclass
class _Stats:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)  # "sparse.NAME" -> occurrences
    scored: int = 0
    applied: int = 0
    latency: Histogram = field(
        default_factory=lambda: Histogram([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1])
    )
    apply_delay: Histogram = field(
        default_factory=lambda: Histogram([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
    )
    freshness: Histogram = field(
        default_factory=lambda: Histogram([0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 5, 10, 30])
    )
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScoringService:
    """The server's state: model spec, tables, the consumer that fills them, counters.

    ``apply_log`` (optional) receives one JSON line per applied version: the manifest's
    sequence, kind, offsets and times, and ``applied_ms`` (the demo's freshness trace).
    """

    def __init__(
        self,
        spec: ModelSpec,
        tables: ServingTables,
        consumer: DeltaConsumer | None = None,
        apply_log: IO[str] | None = None,
        max_instances: int = 10_000,
    ) -> None:
        self.spec, self.tables, self.consumer = spec, tables, consumer
        self.apply_log = apply_log
        self.max_instances = max_instances
        self.stats = _Stats()
        self.started_ms = _now_ms()
        # shared by the request threads: its hash cache is a dict of ints (a race at
        # worst hashes a value twice)
        self.featurizer = Featurizer(spec.features)
        tables.on_apply = self._applied

    def _applied(self, manifest: dict[str, Any], applied_ms: int) -> None:
        st = self.stats
        with st.lock:
            st.applied += 1
        if manifest.get("published_ms") is not None:
            st.apply_delay.observe(max(0.0, (applied_ms - manifest["published_ms"]) / 1000))
        if manifest.get("created_ms") is not None:
            st.freshness.observe(max(0.0, (applied_ms - manifest["created_ms"]) / 1000))
        if self.apply_log is not None:
            self.apply_log.write(json.dumps({**manifest, "applied_ms": applied_ms}) + "\n")
            self.apply_log.flush()

    # ------------------------------------------------------------------ scoring

    def _score(self, x: Inputs) -> tuple[int, npt.NDArray[np.float64]]:
        manifest, view = self.tables.read(self.spec, x)
        if x.n == 0:
            return int(manifest["sequence"]), np.zeros(0)
        p = predict(self.spec, forward(self.spec, view, x))
        with self.stats.lock:
            self.stats.scored += x.n
        return int(manifest["sequence"]), p

    def _featurize(self, body: bytes) -> tuple[Inputs, bool]:
        """The featurized body and whether it was one ``features`` object; unknown
        feature names are counted."""
        try:
            x, single, unknown = self.featurizer.request(body, self.max_instances)
        except BadInput as e:
            raise BadRequest(str(e)) from None
        if unknown:
            with self.stats.lock:
                self.stats.unknown.update(unknown)
        return x, single

    def score_body(self, body: bytes) -> dict[str, Any]:
        """The JSON answer to one raw ``POST /score`` body (module doc)."""
        x, single = self._featurize(body)
        version, p = self._score(x)
        if single:
            return {"version": version, "p_click": float(p[0])}
        return {"version": version, "p_click": np.round(p, 9).tolist()}

    def handle_score(self, body: Any) -> dict[str, Any]:
        """:meth:`score_body` of a decoded body (for callers in Python)."""
        return self.score_body(json.dumps(body).encode())

    def score(self, instances: Sequence[Any]) -> tuple[int, npt.NDArray[np.float64]]:
        """``(version, p_click)`` of ``instances`` (features objects)."""
        x, _ = self._featurize(json.dumps({"instances": list(instances)}).encode())
        return self._score(x)

    # ------------------------------------------------------------------ reporting

    def health(self) -> tuple[int, dict[str, Any]]:
        m = self.tables.manifest
        if m is None:
            return 503, {"status": "starting", "reason": "no parameter version applied yet"}
        now = _now_ms()
        return 200, {
            "status": "ok",
            "version": m["sequence"],
            "lag_s": round((now - m["watermark_ms"]) / 1000, 3),
            "version_age_s": round((now - (m["published_ms"] or now)) / 1000, 3),
        }

    def metrics_text(self) -> str:
        """The Prometheus text exposition of the server (module doc)."""
        st, m = self.stats, self.tables.manifest
        now = _now_ms()
        g: list[tuple[str, str, str, float]] = [  # name, type, help, value
            ("version", "gauge", "sequence of the applied parameter version (-1: none)",
             -1 if m is None else m["sequence"]),
            ("applied_versions_total", "counter", "versions applied by this process", st.applied),
            ("scored_total", "counter", "instances scored", st.scored),
            ("unknown_features_total", "counter",
             "feature values of names the model does not know (scored without them)",
             sum(st.unknown.values())),
            ("table_bytes", "gauge", "bytes held by the serving tables", self.tables.nbytes()),
            ("uptime_seconds", "gauge", "seconds since the server started",
             (now - self.started_ms) / 1000),
        ]  # fmt: skip
        if m is not None:
            g += [
                ("lag_seconds", "gauge", "now - event-time watermark of the applied version",
                 (now - m["watermark_ms"]) / 1000),
                ("version_age_seconds", "gauge", "now - publication time of the applied version",
                 (now - (m["published_ms"] or now)) / 1000),
                ("applied_trainer_step", "gauge", "trainer step of the applied version",
                 m["trainer_step"] or 0),
                ("applied_samples", "gauge", "samples the applied version was trained on",
                 m["samples"] or 0),
            ]  # fmt: skip
        c = self.consumer
        if c is not None:
            cs = c.stats
            g += [
                ("rejected_versions_total", "counter", "versions refused (last good one served)",
                 cs.rejected),
                ("gaps_recovered_total", "counter", "rebuilds from a snapshot after a gap",
                 cs.gaps_recovered),
                ("notifications_total", "counter", "Redis notices received", cs.notifications),
                ("polls_total", "counter", "polls of LATEST.json", cs.polls),
                ("redis_down_total", "counter", "times Redis could not be reached", cs.redis_down),
            ]  # fmt: skip
        lines = [
            "# HELP fluxrec_server_info the example scoring server",
            "# TYPE fluxrec_server_info gauge",
            f'fluxrec_server_info{{arch="{self.spec.arch}",backend="{self.tables.backend}"}} 1',
        ]
        for name, typ, text, value in g:
            v = float(value)
            lines += [
                f"# HELP fluxrec_server_{name} {text}",
                f"# TYPE fluxrec_server_{name} {typ}",
                f"fluxrec_server_{name} {'NaN' if math.isnan(v) else f'{v:g}'}",
            ]
        lines += ["# HELP fluxrec_server_requests_total HTTP requests by path and status",
                  "# TYPE fluxrec_server_requests_total counter"]  # fmt: skip
        with st.lock:
            reqs = sorted(st.requests.items())
        lines += [
            f'fluxrec_server_requests_total{{path="{p}",code="{c}"}} {n}' for (p, c), n in reqs
        ]
        lines += st.latency.lines(
            "fluxrec_server_request_duration_seconds", "time to answer a score request"
        )
        lines += st.apply_delay.lines(
            "fluxrec_server_apply_delay_seconds",
            "from a version's publication (manifest published_ms) to applied in this server",
        )
        lines += st.freshness.lines(
            "fluxrec_server_freshness_seconds",
            "from a version's cut in the trainer (manifest created_ms) to applied in this server",
        )
        return "\n".join(lines) + "\n"


_INDEX = {
    "service": "fluxrec example scoring server",
    "endpoints": {
        "POST /score": [
            {"features": {"sparse": {"FIELD": ["VALUE"]}, "dense": {"NAME": 1.0}}},
            {"impressions": ["IMPRESSION EVENT (sample_join/CONTRACTS.md 1.1)"]},
            {"instances": ["FEATURES OBJECT"]},
        ],
        "GET /healthz": "200 when a version is applied, else 503",
        "GET /version": "the applied version's manifest fields",
        "GET /metrics": "Prometheus text",
    },
}


def make_server(
    service: ScoringService, host: str, port: int, max_body_bytes: int = 16 << 20
) -> NoDelayHTTPServer:
    """A threaded HTTP server for ``service`` (not started: call ``serve_forever``)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client may send many requests

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            respond(self, code, body, ctype)
            path = self.path.split("?")[0]
            known = path if path in ("/score", "/healthz", "/version", "/metrics", "/") else "other"
            with service.stats.lock:
                service.stats.requests[(known, code)] += 1

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode())

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._send(200, service.metrics_text().encode(), "text/plain; version=0.0.4")
            elif path == "/healthz":
                self._json(*service.health())
            elif path == "/version":
                m = service.tables.manifest
                self._json(200 if m else 503, m or {"error": "no version applied yet"})
            elif path == "/":
                self._json(200, _INDEX)
            else:
                self._json(404, {"error": f"no such endpoint: GET {path}"})

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            length = int(self.headers.get("Content-Length") or 0)
            if length > max_body_bytes:
                self.close_connection = True
                self._json(413, {"error": f"body of {length} bytes > {max_body_bytes}"})
                return
            raw = self.rfile.read(length)
            if path != "/score":
                self._json(404, {"error": f"no such endpoint: POST {path}"})
                return
            t0 = time.perf_counter()
            try:
                answer = service.score_body(raw)
            except BadRequest as e:
                self._json(400, {"error": str(e)})
                return
            except NotReady as e:
                self._json(503, {"error": str(e)})
                return
            except ModelMismatch as e:
                log.error("serve: %s", e)
                self._json(500, {"error": str(e)})
                return
            self._json(200, answer)
            service.stats.latency.observe(time.perf_counter() - t0)

        def log_message(self, format: str, *args: object) -> None:
            return

    return NoDelayHTTPServer((host, port), Handler)


def open_apply_log(path: Path | None) -> IO[str] | None:
    """The apply log file (appended, line-buffered), or None."""
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", buffering=1)


def one_blas_thread() -> None:
    """Run numpy's BLAS on one thread per call (``threadpoolctl``).

    A request's matrices are small (100 candidates x a few hundred columns): split over
    BLAS threads they wait on each other, and on a loaded 2-core machine a 0.1 ms
    product took 4 ms (``make bench-serve``). Parallelism comes from the request
    threads instead.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def warm_up() -> None:
    """Encode and decode one tiny table and dense object.

    The first decode in a process pays for lazy imports (pyarrow imports pandas when it is
    installed: seconds without a bytecode cache); paid here, before the server says it is
    up, it does not delay the first real version.
    """
    from exporter.format import decode_object, encode_dense, encode_table

    data, sha, _ = encode_table("warm", 2, np.array([1], np.int64), np.zeros((1, 2), np.float32))
    decode_object(data, sha)
    data, sha, _ = encode_dense({"w": np.zeros(2, np.float32)})
    decode_object(data, sha)


def serve(
    cfg: Config,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: BackendName = "inplace",
    poll_interval_s: float = 1.0,
    apply_log: Path | None = None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = print,
) -> ScoringService:
    """``fluxrec serve``: follow ``cfg.object_store.url`` and answer on ``host:port`` until
    ``stop`` is set; returns the service (its counters) after shutting down."""
    from exporter.exporter import hmac_key_from_env
    from exporter.sdk import open_store

    spec = ModelSpec.from_config(cfg)
    stop = stop or threading.Event()
    one_blas_thread()
    warm_up()
    log_file = open_apply_log(apply_log)
    tables = ServingTables(backend)
    consumer = DeltaConsumer(
        open_store(cfg.object_store.url, cfg.object_store),
        tables,
        redis_url=cfg.redis.url,
        channel=cfg.redis.channel,
        hmac_key=hmac_key_from_env(cfg.exporter),
        poll_interval_s=poll_interval_s,
    )
    service = ScoringService(spec, tables, consumer, apply_log=log_file)
    try:
        srv = make_server(service, host, port)
    except OSError as e:
        if log_file is not None:
            log_file.close()
        raise ServingError(
            f"cannot listen on {host}:{port}: {e.strerror}; pick another --port "
            "(0: any free port) or stop the process that holds it"
        ) from e
    thread = threading.Thread(target=srv.serve_forever, name="serve-http", daemon=True)
    thread.start()
    bound = srv.server_address[1]
    fields = ", ".join(f.name for f in spec.fields)
    say(
        f"fluxrec serve: listening on http://{host}:{bound} (model {spec.arch}; fields "
        f"{fields}); following {cfg.object_store.url}, notices on {cfg.redis.channel}"
    )
    try:
        consumer.start()  # bootstrap from the newest snapshot chain, then follow
        if tables.version is not None:
            say(f"fluxrec serve: serving version {tables.version}")
        stop.wait()
    finally:
        consumer.stop()
        srv.shutdown()
        srv.server_close()
        if log_file is not None:
            log_file.close()
    say(
        f"fluxrec serve: stopped at version {tables.version}; {service.stats.applied} "
        f"versions applied, {service.stats.scored} instances scored"
    )
    return service
