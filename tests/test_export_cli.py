"""``fluxrec deltas ...`` as a user runs it: real processes, a config file, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.exporter import Exporter
from exporter.manifest import table_key
from exporter.settings import ExporterConfig
from exporter.store import open_store
from fluxrec.config import load_config
from fluxrec.testing import write_test_config
from tests.test_export_chain import Trainer


def _fluxrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluxrec.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Trainer]:
    path = write_test_config(tmp_path, s3_server=False)
    cfg = load_config(path)
    store = open_store(cfg.object_store.url)
    t, ex = Trainer(31), Exporter(store, ExporterConfig(snapshot_every=10))
    for _ in range(3):
        t.publish(ex)
    return path, t


def test_ls_inspect_verify(published: tuple[Path, Trainer]) -> None:
    path, _t = published
    ls = _fluxrec("deltas", "ls", "--config", str(path))
    assert ls.returncode == 0, ls.stderr
    assert [line.split()[:2] for line in ls.stdout.splitlines()[1:]] == [
        ["0", "snapshot"],
        ["1", "delta"],
        ["2", "delta"],
    ]
    ins = _fluxrec("deltas", "inspect", "1", "--config", str(path))
    assert ins.returncode == 0 and "version 1: ok" in ins.stdout
    assert _fluxrec("deltas", "verify", "--config", str(path)).returncode == 0
    missing = _fluxrec("deltas", "inspect", "9", "--config", str(path))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"fluxrec: error: version 9: no manifest in {load_config(path).object_store.url}"
    ]


def test_verify_fails_on_a_corrupt_object(published: tuple[Path, Trainer]) -> None:
    path, _t = published
    store = open_store(load_config(path).object_store.url)
    data = bytearray(store.get(table_key(1, "item_id")))
    data[100] ^= 1
    store.put(table_key(1, "item_id"), bytes(data))
    out = _fluxrec("deltas", "verify", "--config", str(path))
    assert out.returncode == 1
    assert "1 BAD ChecksumMismatch" in out.stdout and "1 bad version(s)" in out.stdout


def test_rollback_republishes_an_old_state(published: tuple[Path, Trainer]) -> None:
    path, _t = published
    out = _fluxrec("deltas", "rollback", "0", "--config", str(path))
    assert out.returncode == 0, out.stderr
    store = open_store(load_config(path).object_store.url)
    doc = json.loads(store.get("versions/000000000003/manifest.json"))
    assert (doc["kind"], doc["rollback_of"]) == ("snapshot", 0)
    from exporter.sdk import DeltaConsumer

    a, b = DeltaConsumer(store), DeltaConsumer(store)
    a.sync()
    b.rollback(0)
    assert a.version == 3
    tab_a, tab_b = a.state.tables["item_id"], b.state.tables["item_id"]
    assert tab_a.ids.tolist() == tab_b.ids.tolist()
    assert tab_a.values.tolist() == tab_b.values.tolist()


def test_follow_prints_versions(published: tuple[Path, Trainer]) -> None:
    path, _t = published
    out = _fluxrec("deltas", "follow", "--seconds", "1", "--poll-s", "0.1", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("version 2 lag_ms ")


def test_ls_marks_a_corrupt_manifest_and_fails(published: tuple[Path, Trainer]) -> None:
    path, _t = published
    store = open_store(load_config(path).object_store.url)
    store.put("versions/000000000001/manifest.json", b'{"format": 1, "sequ')
    out = _fluxrec("deltas", "ls", "--config", str(path))
    assert out.returncode == 1
    rows = [line.split()[:3] for line in out.stdout.splitlines()[1:]]
    assert rows == [["0", "snapshot", "0"], ["1", "BAD", "BadManifest:"], ["2", "delta", "0"]]
