"""oss:// without an OSS emulator: the real ``oss2`` client against a tiny local HTTP server
on 127.0.0.1 that speaks the few OSS calls the store uses and checks each request's
signature (OSS v1: HMAC-SHA1 over verb, MD5, type, date and the canonical resource).

Verified here (see also ``exporter/README.md``): URL parsing (bucket, prefix), path-style
requests to an IP endpoint, virtual-hosted requests (``BUCKET.oss-cn-hangzhou.aliyuncs.com``,
sent through the local server as an HTTP proxy), request signing with the configured
credentials (a wrong secret is refused), put/get/list/delete and multi-object delete wire
format (its Content-MD5 checked), NoSuchKey -> ObjectNotFound, retries with backoff on HTTP
503 and a clear error once they are used up, and a whole delta chain over oss://. Not
verified: a real OSS service (TLS, its exact error bodies, V4 signatures, STS tokens, list
pagination beyond one page).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

import pytest

from exporter.errors import ObjectNotFound, OversizedPayload, StoreError, StoreUnavailable
from exporter.exporter import Exporter
from exporter.sdk import DeltaConsumer
from exporter.settings import ExporterConfig
from exporter.store import OssStore
from tests.test_export_chain import Trainer, _assert_same, follow_pruned_chain

KEY_ID, SECRET = "test-id", "test-secret"
BUCKET = "fluxrec-bucket"


class FakeOss(ThreadingHTTPServer):
    objects: dict[str, bytes]
    fail_next: int
    requests: list[str]
    bad_signatures: int
    hosts: list[str]
    keep_on_delete: set[str]  # keys a multi-object delete leaves out of its result


class Handler(BaseHTTPRequestHandler):
    server: FakeOss

    def log_message(self, *a: Any) -> None:
        pass

    def _resource(self) -> str:
        """``/bucket/key``, from a path-style request (``/bucket/key`` to an IP endpoint)
        or a virtual-hosted one (``bucket.oss-region.aliyuncs.com/key``, via a proxy)."""
        url = urlparse(self.path)
        host = url.netloc or self.headers.get("Host", "")
        if host.startswith(f"{BUCKET}."):
            self.server.hosts.append(host)
            return f"/{BUCKET}{unquote(url.path)}"
        return unquote(url.path)

    def _check_signature(self) -> bool:
        url = urlparse(self.path)
        q = parse_qs(url.query, keep_blank_values=True)
        sub = sorted(k for k in q if k in ("acl", "uploads", "location", "delete"))
        resource = self._resource() + ("?" + "&".join(sub) if sub else "")
        oss_headers = "".join(
            f"{k.lower()}:{v}\n"
            for k, v in sorted(self.headers.items())
            if k.lower().startswith("x-oss-")
        )
        to_sign = "\n".join(
            [
                self.command,
                self.headers.get("Content-MD5", ""),
                self.headers.get("Content-Type", ""),
                self.headers.get("Date", ""),
                oss_headers + resource,
            ]
        )
        sig = base64.b64encode(
            hmac.new(SECRET.encode(), to_sign.encode(), hashlib.sha1).digest()
        ).decode()
        return self.headers.get("Authorization") == f"OSS {KEY_ID}:{sig}"

    def _reply(self, status: int, body: bytes = b"", ctype: str = "application/xml") -> None:
        self.send_response(status)
        self.send_header("x-oss-request-id", "req-1")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"' + hashlib.md5(body).hexdigest().upper() + '"')
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{code}</Message><RequestId>req-1</RequestId><HostId>h</HostId></Error>"
        ).encode()
        self._reply(status, body)

    def _handle(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        if not self._check_signature():
            self.server.bad_signatures += 1
            self._error(403, "SignatureDoesNotMatch")
            return
        if self.server.fail_next > 0:
            self.server.fail_next -= 1
            self._error(503, "ServiceUnavailable")
            return
        url = urlparse(self.path)
        bucket, _, key = self._resource().lstrip("/").partition("/")
        objs = self.server.objects
        if self.command == "PUT":
            objs[key] = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._reply(200)
        elif self.command == "GET" and key:
            if key not in objs:
                self._error(404, "NoSuchKey")
            else:
                self._reply(200, objs[key], "application/octet-stream")
        elif self.command == "GET":
            prefix = parse_qs(url.query).get("prefix", [""])[0]
            items = "".join(
                f"<Contents><Key>{escape(k)}</Key><LastModified>2024-01-01T00:00:00.000Z"
                f'</LastModified><ETag>"X"</ETag><Type>Normal</Type><Size>{len(v)}</Size>'
                "<StorageClass>Standard</StorageClass><Owner><ID>1</ID>"
                "<DisplayName>1</DisplayName></Owner></Contents>"
                for k, v in sorted(objs.items())
                if k.startswith(prefix)
            )
            body = (
                '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                f"<Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix><Marker></Marker>"
                "<MaxKeys>1000</MaxKeys><Delimiter></Delimiter><IsTruncated>false</IsTruncated>"
                f"{items}</ListBucketResult>"
            ).encode()
            self._reply(200, body)
        elif self.command == "DELETE":
            objs.pop(key, None)
            self._reply(204)
        elif self.command == "POST" and "delete" in parse_qs(url.query, keep_blank_values=True):
            self._delete_multiple()
        else:
            self._error(400, "InvalidRequest")

    def _delete_multiple(self) -> None:
        """DeleteMultipleObjects: the keys of the XML body; the result lists those deleted."""
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        if self.headers.get("Content-MD5") != md5:
            self._error(400, "InvalidDigest")
            return
        deleted = []
        for k in (o.findtext("Key", "") for o in ET.fromstring(body).iter("Object")):
            if k not in self.server.keep_on_delete:
                self.server.objects.pop(k, None)  # a missing key counts as deleted, as on OSS
                deleted.append(f"<Deleted><Key>{escape(k)}</Key></Deleted>")
        result = '<?xml version="1.0" encoding="UTF-8"?><DeleteResult>'
        self._reply(200, (result + "".join(deleted) + "</DeleteResult>").encode())

    do_GET = do_PUT = do_DELETE = do_POST = _handle


@pytest.fixture
def oss() -> Iterator[tuple[FakeOss, OssStore]]:
    srv = FakeOss(("127.0.0.1", 0), Handler)
    srv.objects, srv.fail_next, srv.requests, srv.bad_signatures = {}, 0, [], 0
    srv.hosts, srv.keep_on_delete = [], set()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    endpoint = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv, OssStore(f"oss://{BUCKET}/some/prefix", endpoint, KEY_ID, SECRET)
    finally:
        srv.shutdown()
        srv.server_close()


def test_oss_store_requests_are_signed_and_path_style(oss: tuple[FakeOss, OssStore]) -> None:
    srv, store = oss
    assert (store.bucket_name, store.prefix) == ("fluxrec-bucket", "some/prefix/")
    store.put("a/1.bin", b"one")
    store.put("b/2.bin", b"two")
    assert store.get("a/1.bin") == b"one"
    assert store.get("a/1.bin", max_bytes=3) == b"one"
    with pytest.raises(OversizedPayload):  # Content-Length checked before the body is read
        store.get("a/1.bin", max_bytes=2)
    assert srv.objects == {"some/prefix/a/1.bin": b"one", "some/prefix/b/2.bin": b"two"}
    assert store.list("a/") == ["a/1.bin"]
    assert store.list() == ["a/1.bin", "b/2.bin"]
    store.delete("a/1.bin")
    with pytest.raises(ObjectNotFound):
        store.get("a/1.bin")
    assert srv.bad_signatures == 0
    assert srv.requests[0] == "PUT /fluxrec-bucket/some%2Fprefix%2Fa%2F1.bin"  # path style


def test_oss_store_retries_transient_errors(oss: tuple[FakeOss, OssStore]) -> None:
    srv, store = oss
    srv.fail_next = 2
    store.put("k", b"v")  # two 503s, then success
    assert srv.objects["some/prefix/k"] == b"v"
    assert sum(r.startswith("PUT") for r in srv.requests) == 3


def test_oss_store_wrong_secret_is_rejected(oss: tuple[FakeOss, OssStore]) -> None:
    srv, store = oss
    bad = OssStore("oss://fluxrec-bucket/p", store._bucket.endpoint, KEY_ID, "wrong")
    with pytest.raises(Exception, match="SignatureDoesNotMatch"):
        bad.put("k", b"v")
    assert srv.bad_signatures == 1


def test_delta_chain_over_oss(oss: tuple[FakeOss, OssStore]) -> None:
    _srv, store = oss
    t, ex = Trainer(21), Exporter(store, ExporterConfig(snapshot_every=3))
    c = DeltaConsumer(store)
    for _ in range(5):
        t.publish(ex)
        c.sync()
    _assert_same(c, t)


def test_pruning_over_oss_deletes_in_multi_object_requests(
    oss: tuple[FakeOss, OssStore],
) -> None:
    """A prune sends its manifests in one multi-object delete and then their payloads in
    another (not a request per object), and leaves exactly the retained versions."""
    srv, store = oss
    _t, ex, _c = follow_pruned_chain(store, 22)
    assert ex.stats.pruned_versions > 0
    assert not [r for r in srv.requests if r.startswith("DELETE")]
    posts = [r for r in srv.requests if r.startswith("POST") and "delete" in r]
    assert len(posts) == 2  # the prune after the snapshot at 4: manifests, then payloads
    kept = {int(k.split("/")[3]) for k in srv.objects if k.startswith("some/prefix/versions/")}
    assert kept == {4, 5, 6} and ex.sequence == 6


def test_oss_delete_many_in_batches_of_1000_and_failures_named(
    oss: tuple[FakeOss, OssStore],
) -> None:
    srv, store = oss
    keys = [f"k/{i:04d}" for i in range(2001)]
    for k in keys[:3]:
        store.put(k, b"x")
    store.delete_many(keys)  # a missing key is not an error
    assert srv.objects == {}
    assert len([r for r in srv.requests if r.startswith("POST")]) == 3
    store.put("k/a", b"x")
    store.put("k/b", b"x")
    srv.keep_on_delete = {"some/prefix/k/b"}
    with pytest.raises(StoreError, match=r"delete k/b: not in the deleted list"):
        store.delete_many(["k/a", "k/b"])
    assert list(srv.objects) == ["some/prefix/k/b"]


def test_oss_store_virtual_hosted_requests_to_a_region_endpoint(
    oss: tuple[FakeOss, OssStore],
) -> None:
    """With a real endpoint name the client addresses ``BUCKET.ENDPOINT/key`` (no DNS
    needed here: the requests go through the local server as an HTTP proxy)."""
    import oss2

    srv, _ = oss
    proxy = f"http://127.0.0.1:{srv.server_address[1]}"
    store = OssStore(
        f"oss://{BUCKET}/p",
        "http://oss-cn-hangzhou.aliyuncs.com",
        KEY_ID,
        SECRET,
        bucket_factory=functools.partial(oss2.Bucket, proxies={"http": proxy}),
    )
    store.put("v/1.fxd", b"one")
    assert store.get("v/1.fxd") == b"one" and store.list("v/") == ["v/1.fxd"]
    assert srv.objects == {"p/v/1.fxd": b"one"} and srv.bad_signatures == 0
    assert set(srv.hosts) == {f"{BUCKET}.oss-cn-hangzhou.aliyuncs.com"}


def test_oss_store_gives_up_after_retries_with_a_clear_error(
    oss: tuple[FakeOss, OssStore],
) -> None:
    srv, store = oss
    srv.fail_next = 100
    with pytest.raises(StoreUnavailable, match="put k failed 5 times: ServerError") as exc:
        store.put("k", b"v")
    assert sum(r.startswith("PUT") for r in srv.requests) == 5
    assert SECRET not in str(exc.value) and "some/prefix" in str(exc.value)
    srv.fail_next = 0
    with pytest.raises(StoreError, match=r"NoSuchKey|not found"):
        store.get("k")
