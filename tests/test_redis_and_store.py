"""The real Redis of the stack, and the object stores on file:// and the real s3proxy."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from exporter.errors import BadKey, ObjectNotFound, StoreError
from exporter.store import FileStore, ObjectStore, OssStore, open_store
from fluxrec.config import Config
from fluxrec.testing import unique_name, wait_until


@pytest.mark.redis
def test_redis_set_get(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    key = unique_name("k")
    r.set(key, b"\x00\x01binary", ex=60)
    assert r.get(key) == b"\x00\x01binary"
    r.delete(key)
    assert r.get(key) is None
    r.close()


@pytest.mark.redis
def test_redis_pubsub_delivers_in_order(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    channel = unique_name("ch")
    sub = r.pubsub()
    sub.subscribe(channel)
    assert sub.get_message(timeout=60)["type"] == "subscribe"  # type: ignore[index]
    for i in range(20):
        r.publish(channel, f"v{i}")
    got = []
    deadline = time.monotonic() + 120
    while len(got) < 20 and time.monotonic() < deadline:
        msg = sub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            got.append(msg["data"].decode())
    assert got == [f"v{i}" for i in range(20)]
    sub.close()
    r.close()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "file":
        yield open_store(f"file://{tmp_path / 'objects'}")
        return
    request.applymarker(pytest.mark.s3)
    cfg: Config = request.getfixturevalue("stack_config")
    s = open_store(f"s3://{unique_name('bucket')}/prefix", cfg.object_store)
    s.ensure_container()
    yield s
    for key in s.list():
        s.delete(key)


def test_file_store_lists_below_the_prefix_folder_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing one version's folder walks that folder, not the whole store (pruning lists
    every old version in turn: walking the store each time made it quadratic)."""
    store = FileStore(tmp_path)
    for seq in range(3):
        for name in ("manifest.json", "dense.fxd"):
            store.put(f"versions/{seq:03d}/{name}", b"x")
    store.put("LATEST.json", b"{}")
    walked: list[str] = []
    real_walk = os.walk

    def walk(top: Any, *args: Any, **kw: Any) -> Any:
        walked.append(os.path.relpath(top, tmp_path))
        return real_walk(top, *args, **kw)

    monkeypatch.setattr(os, "walk", walk)
    assert store.list("versions/001/") == ["versions/001/dense.fxd", "versions/001/manifest.json"]
    assert store.list("versions/00") == [
        f"versions/{s:03d}/{n}" for s in range(3) for n in ("dense.fxd", "manifest.json")
    ]
    assert store.list("LATEST") == ["LATEST.json"]
    assert store.list("versions/9/") == [] and store.list("../") == []
    assert walked == ["versions/001", "versions", "."]


def test_store_put_get_list_delete(store: ObjectStore) -> None:
    store.put("a/1.bin", b"one")
    store.put("a/2.bin", b"two" * 1000)
    store.put("b/3.bin", b"")
    assert store.get("a/1.bin") == b"one"
    assert store.get("a/2.bin") == b"two" * 1000
    assert store.get("b/3.bin") == b""
    assert store.list("a/") == ["a/1.bin", "a/2.bin"]
    assert store.list() == ["a/1.bin", "a/2.bin", "b/3.bin"]
    store.put("a/1.bin", b"replaced")
    assert store.get("a/1.bin") == b"replaced"
    store.delete("a/1.bin")
    store.delete("a/1.bin")  # deleting a missing key is fine
    assert store.list("a/") == ["a/2.bin"]
    assert not store.exists("a/1.bin")
    with pytest.raises(ObjectNotFound):
        store.get("a/1.bin")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a\\b", "./a"])
def test_store_rejects_keys_that_escape(tmp_path: Path, key: str) -> None:
    store = open_store(f"file://{tmp_path}")
    with pytest.raises(BadKey):
        store.put(key, b"x")


def test_write_then_publish_is_atomic_for_readers(store: ObjectStore) -> None:
    """Writer: payload first, then the LATEST pointer. A reader that follows the pointer
    must always find a complete payload whose checksum matches the pointer."""
    versions = 15
    errors: list[str] = []
    seen: set[int] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                pointer = store.get("LATEST").decode()
            except ObjectNotFound:
                continue
            version, digest = pointer.split(" ")
            payload = store.get(f"v/{int(version):04d}/payload.bin")
            if hashlib.sha256(payload).hexdigest() != digest:
                errors.append(f"version {version}: payload does not match its pointer")
            seen.add(int(version))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in range(versions):
            payload = bytes([v % 256]) * (200_000 + v * 1000)
            store.put(f"v/{v:04d}/payload.bin", payload)
            store.put("LATEST", f"{v} {hashlib.sha256(payload).hexdigest()}".encode())
        # the reader follows the pointer to the last version (however slow the machine)
        wait_until("the reader to see the last version", lambda: versions - 1 in seen, 120)
    finally:
        done.set()
        t.join()
    assert errors == []
    assert max(seen) == versions - 1


def test_file_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    for i in range(5):
        store.put("x/y.bin", bytes(i))
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.bin"]


def test_unknown_scheme_and_missing_credentials_are_clear() -> None:
    with pytest.raises(StoreError, match="use file://, s3:// or oss://"):
        open_store("ftp://host/x")
    with pytest.raises(StoreError, match=r"needs object_store\.oss\.endpoint"):
        open_store("oss://bucket/prefix")
    with pytest.raises(StoreError, match="access_key_id"):
        OssStore("oss://bucket/p", "https://oss-cn-hangzhou.aliyuncs.com", "", "")
