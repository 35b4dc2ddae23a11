"""The Java reader (sdk-java/) on a chain written live by the Python exporter: the same
version, the same rows bit for bit, the same rejection. (Its JUnit tests run every golden
vector: ``python sdk-java/build.py --test``, part of ``make test``.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter.exporter import Exporter
from exporter.manifest import table_key
from exporter.sdk import DeltaConsumer
from exporter.settings import ExporterConfig
from exporter.store import FileStore, open_store
from fluxrec.stack.setup import find_java
from tests.test_export_chain import Trainer

ROOT = Path(__file__).resolve().parents[1]
KEY = b"live-chain-key"


@pytest.fixture(scope="module")
def java_classpath() -> str:
    """Build sdk-java when its sources changed (quick when up to date)."""
    subprocess.run([sys.executable, str(ROOT / "sdk-java" / "build.py")], check=True)
    target = ROOT / "sdk-java" / "target"
    return f"{target / 'classes'}:{(target / 'classpath.txt').read_text().strip()}"


def java_dump(classpath: str, store: Path, key: bytes | None) -> dict[str, Any]:
    env = {**os.environ, "LIVE_KEY": key.decode() if key else ""}
    out = subprocess.run(
        [
            find_java(),
            "--add-opens=java.base/java.nio=ALL-UNNAMED",
            "-cp",
            classpath,
            "dev.fluxrec.sdk.Cli",
            "dump",
            str(store),
            "LIVE_KEY",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.stdout.strip(), out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def python_dump(c: DeltaConsumer) -> dict[str, Any]:
    """What ``Cli dump`` prints, computed from the Python consumer's state."""
    st = c.state
    tables = {}
    for name, t in sorted(st.tables.items()):
        rows = b"".join(
            int(i).to_bytes(8, "little", signed=True) + t.values[k].astype("<f4").tobytes()
            for k, i in enumerate(t.ids)
        )
        tables[name] = {"rows": len(t.ids), "sha256": hashlib.sha256(rows).hexdigest()}
    dense = {
        n: hashlib.sha256(np.ascontiguousarray(a, "<f4").tobytes()).hexdigest()
        for n, a in sorted(st.dense.items())
    }
    return {"version": c.version, "tables": tables, "dense": dense}


@pytest.mark.parametrize(
    ("encoding", "parts"), [("f32", 1), ("f16", 1), ("i8", 1), ("f32", 2), ("i8", 3)]
)
def test_java_reader_agrees_on_a_live_chain(
    tmp_path: Path, java_classpath: str, encoding: str, parts: int
) -> None:
    """``parts`` > 1: versions of that many parts (manifest format 2), as N workers write."""
    store = open_store(f"file://{tmp_path / 'objects'}")
    cfg = ExporterConfig(snapshot_every=3, retain_snapshots=1, encoding=encoding)
    t, ex = Trainer(31), Exporter(store, cfg, hmac_key=KEY)
    for _ in range(8):  # snapshots at 0, 4 (pruned: chain 4..7 kept), deltas with tombstones
        t.publish(ex, parts=parts)
    c = DeltaConsumer(store, hmac_key=KEY)
    assert c.sync() > 0 and c.version == 7
    want = python_dump(c)
    assert java_dump(java_classpath, tmp_path / "objects", KEY) == want
    # the wrong key, or a corrupt object: both readers reject it with the same error
    assert java_dump(java_classpath, tmp_path / "objects", b"other") == {"error": "BadSignature"}
    key = table_key(7, "item_id", None if parts == 1 else parts - 1)  # the last part's
    data = bytearray((tmp_path / "objects" / key).read_bytes())
    data[40] ^= 1
    FileStore(tmp_path / "objects").put(key, bytes(data))
    fresh = DeltaConsumer(store, hmac_key=KEY)
    assert fresh.sync() == 0
    assert java_dump(java_classpath, tmp_path / "objects", KEY) == {
        "error": fresh.stats.last_error.split(":")[0]
    }
