"""Object stores behind one URL scheme.

=====================  =================================================  ==============
URL                    backend                                            extra needed
=====================  =================================================  ==============
``file:///abs/dir``    a local directory; put = temp file + fsync + rename  none
``s3://bucket/prefix`` S3 or an S3-compatible server (``endpoint_url``)    ``fluxrec[s3]``
``oss://bucket/pfx``   Alibaba Cloud OSS through ``oss2``                   none (base)
=====================  =================================================  ==============

Keys are relative, ``/``-separated (``versions/00000042/manifest.json``). Every backend
guarantees that :meth:`ObjectStore.put` is atomic for readers: a ``get`` returns either
the previous object or the complete new one, never a part. That is what the
"write payloads, then publish a pointer" pattern relies on.

``get(key, max_bytes)`` never reads more than ``max_bytes`` (+1 to detect the excess):
each backend checks the size the store declares before reading (``stat``,
``Content-Length``) and stops reading past the limit, raising ``OversizedPayload``. The
file store opens every path component with ``O_NOFOLLOW``: a symlink, FIFO, device or
socket in the store is refused (``UnsafeObject``) without being read or blocking.

Transient failures (connection errors, HTTP 5xx, throttling) are retried with
exponential backoff; credentials come from the config (which may read the environment)
and never appear in messages or logs.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import os
import random
import stat
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from exporter.errors import (
    BadKey,
    ObjectNotFound,
    OversizedPayload,
    StoreError,
    StoreUnavailable,
    UnsafeObject,
)

if TYPE_CHECKING:
    from fluxrec.config import ObjectStoreConfig

__all__ = ["FileStore", "ObjectStore", "OssStore", "S3Store", "open_store"]

_T = TypeVar("_T")
_TMP_PREFIX = ".tmp-"
_READ_CHUNK = 1 << 30


def _too_big(url: str, key: str, size: int, max_bytes: int) -> OversizedPayload:
    return OversizedPayload(f"{url}/{key}: {size} bytes or more > the limit of {max_bytes}")


def _read_capped(read: Callable[[int], bytes], max_bytes: int | None) -> list[bytes]:
    """Chunks from ``read(n)`` until EOF or until more than ``max_bytes`` were read."""
    parts: list[bytes] = []
    left = (1 << 62) if max_bytes is None else max_bytes + 1
    while left > 0:
        chunk = read(min(left, _READ_CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return parts


def _read_or_fail(read: Callable[[int], bytes], max_bytes: int | None, what: str) -> list[bytes]:
    """:func:`_read_capped`, with a connection that breaks mid-body as ``StoreUnavailable``."""
    try:
        return _read_capped(read, max_bytes)
    except Exception as e:
        raise StoreUnavailable(f"{what}: reading the body failed: {type(e).__name__}") from None


def _joined(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_key(key: str) -> str:
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise BadKey(f"invalid object key {key!r}: use a relative path like 'a/b.bin'")
    return key


def _retry(
    fn: Callable[[], _T],
    transient: Callable[[Exception], bool],
    what: str,
    attempts: int = 5,
    base_s: float = 0.1,
) -> _T:
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not transient(e):
                raise
            if i == attempts - 1:
                raise StoreUnavailable(f"{what} failed {attempts} times: {type(e).__name__}") from e
            time.sleep(base_s * (2**i) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


class ObjectStore(ABC):
    """A flat namespace of immutable-by-convention objects under one URL."""

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key``, replacing it atomically."""

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[Callable[[Any], object]]:
        """Write one object piece by piece::

            with store.writer("versions/000000000042/dense.fxd") as write:
                write(b"..."); write(memoryview(...))

        The object appears, atomically, only if the block ends without an exception.
        ``file://`` streams the pieces to disk; the other stores send them in one ``put``.
        """
        parts: list[Any] = []
        yield parts.append
        self.put(key, b"".join(parts))

    @abstractmethod
    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """Read a whole object; raises :class:`ObjectNotFound`, and ``OversizedPayload``
        (having read at most ``max_bytes`` + 1 bytes) when it is larger than ``max_bytes``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys that start with ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every key of ``keys`` (missing ones are not an error), in as few requests
        as the store allows: one per key here and on ``file://``, one per 1,000 keys on S3
        and OSS (their multi-object delete). Raises :class:`StoreError` naming a key that
        was not deleted."""
        for key in keys:
            self.delete(key)

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
        except ObjectNotFound:
            return False
        return True

    def ensure_container(self) -> None:
        """Create the directory or bucket if needed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class FileStore(ObjectStore):
    """``file://`` — a directory. ``put`` writes a temp file beside the target, fsyncs it,
    and renames it over the target (atomic on POSIX)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def ensure_container(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> None:
        with self.writer(key) as write:
            write(data)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[Callable[[Any], object]]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                yield _EarlyWriteback(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _open(self, key: str) -> int:
        """A read fd for ``key``: each component opened with ``O_NOFOLLOW`` below the root
        (which may itself be a link: it is configured), the file ``O_NONBLOCK``. A symlink
        component raises ``UnsafeObject`` (Linux reports ENOTDIR or ELOOP for it)."""
        parts = _check_key(key).split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                flags |= os.O_NONBLOCK if last else os.O_DIRECTORY
                try:
                    sub = os.open(part, flags, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                        raise UnsafeObject(
                            f"{self.url}/{key}: {part!r} is a symbolic link; refused"
                        ) from None
                    raise
                os.close(fd)
                fd = sub
            out, fd = fd, -1
            return out
        finally:
            if fd >= 0:
                os.close(fd)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        where = f"{self.url}/{key}"
        try:
            fd = self._open(key)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{where} does not exist") from None
        except OSError as e:
            raise StoreError(f"{where}: {errno.errorcode.get(e.errno or 0, e)}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ObjectNotFound(f"{where} is a directory, not an object")
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeObject(f"{where} is not a regular file (FIFO, device, socket)")
            if max_bytes is not None and st.st_size > max_bytes:
                raise _too_big(self.url, key, st.st_size, max_bytes)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb", buffering=0) as f:
            try:
                parts = _read_capped(f.read, max_bytes)
            except OSError as e:
                raise StoreError(f"{where}: read failed: {type(e).__name__} {e.errno}") from None
        if max_bytes is not None and sum(map(len, parts)) > max_bytes:
            raise _too_big(self.url, key, max_bytes + 1, max_bytes)
        return _joined(parts)

    def list(self, prefix: str = "") -> list[str]:
        # walked from the deepest directory the prefix names: pruning lists one version's
        # folder at a time, and a walk of the whole store each time grew with its square
        head = prefix.rpartition("/")[0]
        try:
            top = self._path(head) if head else self.root
        except BadKey:
            return []  # no valid key starts with it
        if not top.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # remove emptied directories up to the root
        parent = path.parent
        while parent != self.root and parent.is_dir():
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class _EarlyWriteback:
    """``write`` for a file that starts the kernel's writeback every 16 MiB, so the
    ``fsync`` at the end waits for the last few MiB only, not for the whole object
    (``posix_fadvise(DONTNEED)``: write back, then drop those pages from the cache)."""

    STEP = 16 << 20

    def __init__(self, f: Any) -> None:
        self.f = f
        self.written = 0
        self.synced = 0

    def __call__(self, b: Any) -> None:
        self.f.write(b)
        self.written += len(b)
        if self.written - self.synced >= self.STEP and hasattr(os, "posix_fadvise"):
            self.f.flush()
            os.posix_fadvise(
                self.f.fileno(), self.synced, self.written - self.synced, os.POSIX_FADV_DONTNEED
            )
            self.synced = self.written


def _content_md5(request: Any, **_: Any) -> None:
    """A multi-object delete with ``Content-MD5`` in place of the CRC32 checksum that boto3
    sends since 1.36: S3 accepts either, S3-compatible servers (s3proxy, older MinIO, Ceph)
    require the MD5 and refuse the request without it."""
    for name in list(request.headers):
        if name.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum-")):
            del request.headers[name]
    body = request.body if isinstance(request.body, bytes) else request.body.encode()
    digest = hashlib.md5(body, usedforsecurity=False).digest()
    request.headers["Content-MD5"] = base64.b64encode(digest).decode()


#: keys per multi-object delete request (the limit of S3's DeleteObjects and OSS's
#: DeleteMultipleObjects)
DELETE_BATCH = 1000


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(keys), DELETE_BATCH):
        yield keys[i : i + DELETE_BATCH]


def _split_bucket(url: str, scheme: str) -> tuple[str, str]:
    rest = url[len(scheme) + 3 :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"{url}: no bucket; use {scheme}://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


class S3Store(ObjectStore):
    """``s3://bucket/prefix`` through boto3; path-style addressing for custom endpoints."""

    def __init__(
        self,
        url: str,
        endpoint_url: str | None,
        region: str,
        access_key: str | None,
        secret_key: str | None,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError as e:
            raise StoreError("s3:// needs boto3: pip install 'fluxrec[s3]'") from e
        self.url = url
        self.bucket, self.prefix = _split_bucket(url, "s3")
        cfg = BotoConfig(
            retries={"max_attempts": 6, "mode": "standard"},
            # S3-compatible servers reject the aws-chunked checksums newer clients send
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint_url else {},
            connect_timeout=5,
            read_timeout=30,
        )
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=cfg,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
        )
        self._client.meta.events.register("before-sign.s3.DeleteObjects", _content_md5)

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(f"{self.url}: {what}: not found") from None
            raise StoreError(f"{self.url}: {what}: {code or e}") from None
        except BotoCoreError as e:  # retries exhausted inside botocore
            raise StoreUnavailable(f"{self.url}: {what}: {type(e).__name__}") from None

    def ensure_container(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call("create bucket", lambda: self._client.create_bucket(Bucket=self.bucket))

    def put(self, key: str, data: bytes) -> None:
        k = self.prefix + _check_key(key)
        self._call(
            f"put {key}", lambda: self._client.put_object(Bucket=self.bucket, Key=k, Body=data)
        )

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        k = self.prefix + _check_key(key)
        resp = self._call(f"get {key}", lambda: self._client.get_object(Bucket=self.bucket, Key=k))
        body = resp["Body"]
        try:
            size = int(resp.get("ContentLength") or 0)
            if max_bytes is not None and size > max_bytes:
                raise _too_big(self.url, key, size, max_bytes)
            parts = _read_or_fail(body.read, max_bytes, f"{self.url}: get {key}")
        finally:
            body.close()
        if max_bytes is not None and sum(map(len, parts)) > max_bytes:
            raise _too_big(self.url, key, max_bytes + 1, max_bytes)
        return _joined([bytes(p) for p in parts])

    def list(self, prefix: str = "") -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []

        def run() -> None:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                # some S3-compatible servers list directory placeholders ("a/"): not objects
                keys.extend(
                    o["Key"][len(self.prefix) :]
                    for o in page.get("Contents", [])
                    if not o["Key"].endswith("/")
                )

        self._call(f"list {prefix!r}", run)
        return sorted(keys)

    def delete(self, key: str) -> None:
        k = self.prefix + _check_key(key)
        self._call(f"delete {key}", lambda: self._client.delete_object(Bucket=self.bucket, Key=k))

    def delete_many(self, keys: Sequence[str]) -> None:
        for chunk in _chunks(keys):
            objects = [{"Key": self.prefix + _check_key(k)} for k in chunk]
            what = f"delete {len(chunk)} keys from {chunk[0]}"
            resp = self._call(
                what,
                functools.partial(
                    self._client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": objects, "Quiet": True},
                ),
            )
            for err in resp.get("Errors", []):  # quiet mode: only the failures are listed
                key = str(err.get("Key", ""))[len(self.prefix) :]
                raise StoreError(f"{self.url}: delete {key}: {err.get('Code', '?')}")


class OssStore(ObjectStore):
    """``oss://bucket/prefix`` through ``oss2`` (Alibaba Cloud OSS)."""

    def __init__(
        self,
        url: str,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        bucket_factory: Callable[..., Any] | None = None,
    ) -> None:
        import oss2

        if not endpoint:
            raise StoreError(
                "oss:// needs object_store.oss.endpoint "
                "(e.g. https://oss-cn-hangzhou.aliyuncs.com) or FLUXREC_OSS_ENDPOINT"
            )
        if not (access_key_id and access_key_secret):
            raise StoreError(
                "oss:// needs object_store.oss.access_key_id and access_key_secret "
                "(or OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET)"
            )
        self.url = url
        self.bucket_name, self.prefix = _split_bucket(url, "oss")
        factory = bucket_factory or oss2.Bucket
        self._bucket: Any = factory(
            oss2.Auth(access_key_id, access_key_secret),
            endpoint,
            self.bucket_name,
            connect_timeout=10,
        )

    @staticmethod
    def _transient(e: Exception) -> bool:
        import oss2

        if isinstance(e, oss2.exceptions.RequestError):  # connection-level failure
            return True
        return isinstance(e, oss2.exceptions.ServerError) and (e.status >= 500 or e.status == 429)

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        import oss2

        try:
            return _retry(fn, self._transient, f"{self.url}: {what}")
        except oss2.exceptions.NoSuchKey:
            raise ObjectNotFound(f"{self.url}: {what}: not found") from None
        except oss2.exceptions.OssError as e:
            raise StoreError(
                f"{self.url}: {what}: {getattr(e, 'code', '')} (HTTP {getattr(e, 'status', '?')})"
            ) from None

    def put(self, key: str, data: bytes) -> None:
        k = self.prefix + _check_key(key)
        self._call(f"put {key}", lambda: self._bucket.put_object(k, data))

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        k = self.prefix + _check_key(key)

        def run() -> list[bytes]:
            result = self._bucket.get_object(k)
            try:
                size = int(getattr(result, "content_length", None) or 0)
                if max_bytes is not None and size > max_bytes:
                    raise _too_big(self.url, key, size, max_bytes)
                return _read_or_fail(
                    lambda n: bytes(result.read(n)), max_bytes, f"{self.url}: get {key}"
                )
            finally:
                result.resp.response.close()

        parts = self._call(f"get {key}", run)
        if max_bytes is not None and sum(map(len, parts)) > max_bytes:
            raise _too_big(self.url, key, max_bytes + 1, max_bytes)
        return _joined(parts)

    def list(self, prefix: str = "") -> list[str]:
        import oss2

        def run() -> list[str]:
            return [
                o.key[len(self.prefix) :]
                for o in oss2.ObjectIterator(self._bucket, prefix=self.prefix + prefix)
            ]

        return sorted(self._call(f"list {prefix!r}", run))

    def delete(self, key: str) -> None:
        k = self.prefix + _check_key(key)
        self._call(f"delete {key}", lambda: self._bucket.delete_object(k))

    def delete_many(self, keys: Sequence[str]) -> None:
        for chunk in _chunks(keys):
            full = [self.prefix + _check_key(k) for k in chunk]
            what = f"delete {len(chunk)} keys from {chunk[0]}"
            result = self._call(what, functools.partial(self._bucket.batch_delete_objects, full))
            # OSS lists every key it deleted (a missing key counts as deleted)
            left = set(full).difference(result.deleted_keys)
            if left:
                key = min(left)[len(self.prefix) :]
                raise StoreError(f"{self.url}: delete {key}: not in the deleted list")


def open_store(url: str, cfg: ObjectStoreConfig | None = None) -> ObjectStore:
    """The store for ``url``; client settings and credentials come from ``cfg``."""
    if url.startswith("file://"):
        root = Path(url[len("file://") :])
        if not root.is_absolute():
            raise StoreError(
                f"{url}: file:// URLs must be absolute here (the config resolves "
                "relative ones against its own directory)"
            )
        store: ObjectStore = FileStore(root)
        store.ensure_container()
        return store
    if url.startswith("s3://"):
        s3 = cfg.s3 if cfg else None
        return S3Store(
            url,
            s3.endpoint_url if s3 else None,
            s3.region if s3 else "us-east-1",
            s3.access_key.get() if s3 and s3.access_key else None,
            s3.secret_key.get() if s3 and s3.secret_key else None,
        )
    if url.startswith("oss://"):
        oss = cfg.oss if cfg else None
        return OssStore(
            url,
            oss.endpoint if oss else "",
            oss.access_key_id.get() if oss and oss.access_key_id else "",
            oss.access_key_secret.get() if oss and oss.access_key_secret else "",
        )
    raise StoreError(f"unsupported object store URL {url!r}: use file://, s3:// or oss://")
