"""The table source (``replay.table``): a log the repo has no module for, in every format,
described in a config only; and every kind of bad input in a user's log. No services.

The log is a made-up short-video exposure log: ``user_id``, ``video_id``, ``time_ms`` and
0/1 feedback columns (``is_click``, ``long_view``, ``is_follow``), generated here.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fluxrec.cli import main
from fluxrec.config import load_config
from replay.errors import BadLog, BadReplayConfig
from replay.run import open_configured_source
from replay.settings import ReplayConfig, TableConfig, TableLabel, check
from replay.sources import open_source
from replay.table import TableSource
from replay.types import Action, Impression, to_event
from sample_join.settings import JoinConfig, LabelSpec
from tests.test_replay_sources import assert_conforms

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000
COLUMNS = ["user_id", "video_id", "time_ms", "is_click", "long_view", "is_follow", "duration"]
#: the table section that describes the log (what a user writes in a config)
TABLE = {
    "user": "user_id",
    "item": "video_id",
    "time": "time_ms",
    "time_unit": "ms",
    "labels": [
        {"column": "is_click", "action": "click"},
        {"column": "long_view", "action": "long_view"},
        {"column": "is_follow", "action": "follow"},
    ],
}
FEATURES = {"sparse": [{"name": "user_id"}, {"name": "item_id"}], "dense": [{"name": "duration"}]}
JOIN_LABELS = [
    {"name": a, "action": a, "window_ms": 60_000} for a in ("click", "long_view", "follow")
]


def rows(n: int = 40) -> list[list[Any]]:
    """``n`` exposures, a click on every third, a long view on every fourth, a follow on 7."""
    return [
        [f"u{i % 5}", f"v{i % 9}", T0 + 1000 * i, int(i % 3 == 0), int(i % 4 == 0),
         int(i == 7), 10.5 + i]
        for i in range(n)
    ]  # fmt: skip


def write(path: Path, data: list[list[Any]], fmt: str | None = None) -> Path:
    """``data`` as a log file of the format its name says (or ``fmt``)."""
    fmt = fmt or Path(path.name.removesuffix(".gz")).suffix.lstrip(".")
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        text = "".join(sep.join(map(str, r)) + "\n" for r in [COLUMNS, *data])
        opener: Any = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "wt") as f:
            f.write(text)
    elif fmt == "jsonl":
        path.write_text(
            "".join(json.dumps(dict(zip(COLUMNS, r, strict=True))) + "\n" for r in data)
        )
    else:
        cols = list(zip(*data, strict=True))
        pq.write_table(pa.table({c: list(v) for c, v in zip(COLUMNS, cols, strict=True)}), path)
    return path


def log_config(path: Path, log: Path, base: Path = REPO / "configs" / "local.yaml") -> Path:
    """A config that ``extends`` ``base`` and describes ``log`` (as README shows)."""
    doc = {
        "extends": str(base),
        "replay": {"source": "table", "path": str(log), "table": TABLE},
        "features": FEATURES,
        "join": {"labels": JOIN_LABELS},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def source(path: Path, **table: Any) -> TableSource:
    t = TableConfig(**{**_typed(TABLE), **table})
    rc = ReplayConfig(source="table", path=path, table=t, time_shift="none")
    check(rc)
    src = open_source(rc, ["user_id", "item_id"], ["duration"])
    assert isinstance(src, TableSource)
    return src


def _typed(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "labels": [TableLabel(**lb) for lb in d["labels"]]}


# --------------------------------------------------------------------------- a new log


@pytest.mark.parametrize("name", ["log.csv", "log.tsv", "log.tsv.gz", "log.jsonl", "log.parquet"])
def test_every_format_gives_the_same_records(tmp_path: Path, name: str) -> None:
    recs = list(source(write(tmp_path / name, rows())).records())
    (tmp_path / "csv").mkdir()
    assert recs == list(source(write(tmp_path / "csv" / "log.csv", rows())).records())
    imps = [r for r in recs if isinstance(r, Impression)]
    assert len(imps) == 40 and imps[0] == Impression(
        "log-0", "v0", "u0", T0, {"user_id": ("u0",), "item_id": ("v0",)}, {"duration": 10.5}
    )
    # several action types per impression: 14 clicks, 10 long views, one follow
    assert Counter(r.action for r in recs if isinstance(r, Action)) == {
        "click": 14,
        "long_view": 10,
        "follow": 1,
    }
    by_id = {r.request_id: r for r in imps}
    for a in (r for r in recs if isinstance(r, Action)):
        assert a.event_time_ms > by_id[a.request_id].event_time_ms  # a drawn delay
    keys = [(r.event_time_ms, isinstance(r, Action)) for r in recs]
    assert keys == sorted(keys)
    join = JoinConfig(labels=[LabelSpec(a, a, 60_000) for a in ("click", "long_view", "follow")])
    assert_conforms([to_event(r) for r in recs], join)


def test_templates_side_tables_time_columns_and_lists(tmp_path: Path) -> None:
    (tmp_path / "day1.jsonl").write_text(
        json.dumps({"uid": 7, "vid": "a", "ts": "2024-05-01T10:00:00Z", "tags": ["x", "y"],
                    "fav_at": "2024-05-01T10:00:05+00:00", "region": "eu"}) + "\n"
        + json.dumps({"uid": 8, "vid": "b", "ts": "2024-05-01T10:00:01Z", "tags": [],
                      "fav_at": None, "region": "eu"}) + "\n"
    )  # fmt: skip
    (tmp_path / "videos.csv").write_text("vid,author\na,alice\n")
    rc = ReplayConfig(
        source="table",
        path=tmp_path,
        time_shift="none",
        table=TableConfig(
            files=["*.jsonl"],
            request_id="{file}:{uid}:{row}",
            user="{region}-{uid}",
            item="vid",
            time="ts",
            time_unit="iso",
            labels=[TableLabel("conversion", time_column="fav_at")],
            columns={"tag": "tags", "vid_author": "author"},
            lookups=[],
            file_columns={"day1": {"region": "eu"}},
        ),
    )
    rc = replace(rc, table=replace(rc.table, lookups=[_lookup("videos.csv", "vid")]))
    recs = list(open_source(rc, ["user_id", "tag", "vid_author"]).records())
    t = 1_714_557_600_000
    assert recs == [
        Impression("day1:7:0", "a", "eu-7", t,
                   {"user_id": ("eu-7",), "tag": ("x", "y"), "vid_author": ("alice",)}),
        Impression("day1:8:1", "b", "eu-8", t + 1000, {"user_id": ("eu-8",)}),
        Action("day1:7:0", "a", "eu-7", "conversion", t + 5000),
    ]  # fmt: skip


def _lookup(path: str, key: str) -> Any:
    from replay.settings import TableLookup

    return TableLookup(path, key)


def test_a_config_file_describes_the_log_and_the_model_reads_its_features(
    tmp_path: Path,
) -> None:
    """The whole description in YAML, as README shows: `fluxrec replay` sends the log."""
    log = write(tmp_path / "exposures.tsv", rows(12))
    cfg = load_config(log_config(tmp_path / "mylog.yaml", log))
    recs = list(open_configured_source(cfg).records())
    assert sum(isinstance(r, Impression) for r in recs) == 12
    assert {r.action for r in recs if isinstance(r, Action)} == {"click", "long_view", "follow"}
    # an action type the join does not know is a config error naming the key
    bad = replace(cfg, join=replace(cfg.join, labels=cfg.join.labels[:2]))
    with pytest.raises(BadReplayConfig, match=r"replay\.table\.labels: action type 'follow'"):
        open_configured_source(bad)


# --------------------------------------------------------------------------- bad input


def test_a_missing_column_names_the_file_the_column_and_the_key(tmp_path: Path) -> None:
    f = write(tmp_path / "log.csv", rows(3))
    with pytest.raises(BadLog) as e:
        list(source(f, time="timestamp").records())
    assert str(e.value).startswith(
        f"{f}:1: no column 'timestamp' (replay.table.time); the header has 'user_id'"
    )
    with pytest.raises(BadLog, match=r"no column 'watch' \(replay\.table\.labels\[1\]\.column\)"):
        list(
            source(f, labels=[TableLabel("click", "is_click"), TableLabel("x", "watch")]).records()
        )
    src = TableSource(
        ReplayConfig(source="table", path=f, table=TableConfig(**_typed(TABLE))), f, ["genre"]
    )
    with pytest.raises(BadLog, match=r"no column 'genre' \(features\.sparse genre\)"):
        list(src.records())


def test_single_bad_rows_are_skipped_and_counted_by_reason(tmp_path: Path) -> None:
    data = rows(6)
    data[1][2] = "yesterday"  # time
    data[2][6] = "long"  # dense
    data[3][3] = "2"  # a 0/1 label
    data[4][0] = ""  # user
    f = write(tmp_path / "log.csv", data)
    with f.open("a") as fh:
        fh.write("u9,v9\n")  # a row with too few cells (line 8)
    src = source(f)
    imps = [r for r in src.records() if isinstance(r, Impression)]
    assert [r.request_id for r in imps] == ["log-0", "log-5"]
    assert src.stats() == {
        "bad_time": 1,
        "bad_dense": 1,
        "bad_label": 1,
        "missing_id": 1,
        "bad_row": 1,
    }
    notes = src.notes()
    assert notes["bad_time"] == f"{f}:3: column 'time_ms': 'yesterday' is not a number of ms"
    assert notes["bad_dense"] == f"{f}:4: column 'duration': 'long' is not a number"
    assert notes["bad_label"] == f"{f}:5: column 'is_click': '2' is not 0 or 1"
    assert notes["missing_id"] == f"{f}:6: empty {{user_id}}"
    assert notes["bad_row"] == f"{f}:8: 2 cells, the header has 7"


def test_a_log_without_a_usable_row_stops_with_the_first_problem(tmp_path: Path) -> None:
    data = rows(3)
    for r in data:
        r[2] = "soon"
    f = write(tmp_path / "log.csv", data)
    with pytest.raises(BadLog, match=rf"{f}: no usable row; the first: {f}:2: column 'time_ms'"):
        list(source(f).records())


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", r"empty\.csv: empty file \(no header line\)"),
        ("header.tsv", "\t".join(COLUMNS).encode() + b"\n", r"header\.tsv: no rows, only a header"),
        ("fake.csv", None, r"fake\.csv: a Parquet file, not CSV"),
        ("fake.parquet", b"a,b\n1,2\n", r"fake\.parquet: not a Parquet file"),
        ("fake.jsonl", b"a,b\n1,2\n", r"fake\.jsonl:1: not JSON lines"),
        ("tabs.csv", b"user_id\tvideo_id\n1\t2\n", r"tabs\.csv:1: tab-separated, not CSV"),
        ("commas.tsv", b"user_id,video_id\n1,2\n", r"commas\.tsv:1: comma-separated, not TSV"),
        ("packed.csv", gzip.compress(b"a,b\n1,2\n"), r"packed\.csv: gzip-compressed, but not"),
        ("broken.jsonl", b'{"a": 1}\n{"a": \n', r"broken\.jsonl:2: not valid JSON lines"),
        ("log.xlsx", b"PK\x03\x04....", r"log\.xlsx: cannot tell the format"),
    ],
)
def test_a_file_that_is_not_what_it_says_is_one_clear_error(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    f = tmp_path / name
    if content is None:
        write(f, rows(2), fmt="parquet")
    else:
        f.write_bytes(content)
    with pytest.raises(BadLog, match=message):
        list(source(f).records())


def test_the_cli_says_one_line_and_counts_skips_in_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = rows(4)
    data[2][2] = "??"
    log = write(tmp_path / "log.tsv", data)
    cfg = log_config(tmp_path / "c.yaml", log)
    assert main(["replay", "--config", str(cfg), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "log rows skipped   bad_time 1" in err
    assert f"first bad_time: {log}:4: column 'time_ms': '??' is not a number of ms" in err
    # a broken file: exit 1 and one line naming it, no traceback
    (tmp_path / "log.tsv").write_bytes(b"")
    r = subprocess.run(
        [sys.executable, "-m", "fluxrec.cli", "replay", "--config", str(cfg), "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"fluxrec: error: {log}: empty file (no header line)"]


def test_check_names_the_table_key_of_an_unusable_value() -> None:
    cases = [
        (TableConfig(time=""), "replay.table.time"),
        (TableConfig(time="t", time_unit="days"), "replay.table.time_unit"),
        (TableConfig(time="t"), "replay.table.labels"),
        (TableConfig(time="t", labels=[TableLabel("click")]), "replay.table.labels[0]"),
    ]
    for t, key in cases:
        with pytest.raises(BadReplayConfig, match="^f.yaml: " + key.replace("[", r"\[")):
            check(ReplayConfig(source="table", path=Path("x"), table=t), "f.yaml")
