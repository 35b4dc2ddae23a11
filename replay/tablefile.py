"""Reading one log file of any table format with pyarrow: CSV, TSV, JSON lines, Parquet.

:func:`read_log` returns a :class:`Log`: the column names and, on demand, each column as
a list of Python values (CSV cells are strings, all of them; JSON lines and Parquet keep
their types: numbers, booleans, lists, timestamps). ``.gz`` / ``.bz2`` files are
decompressed on the way. A file that cannot be read raises :class:`~replay.errors.BadLog`
with one line that names the file and, where known, the line::

    logs/day1.tsv: empty file (no header line)
    logs/day1.csv: a Parquet file, not CSV (rename it .parquet or set replay.table.format)
    logs/day1.jsonl:7: not valid JSON lines (... in row 6)

Ragged CSV rows (a wrong number of cells) are skipped and listed in ``Log.bad_rows``;
``Log.where(i)`` gives the location of row ``i`` (``file:line`` for text formats, where
line 1 is the header, ``file row N`` for Parquet).
"""

from __future__ import annotations

import bisect
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replay.errors import BadLog

__all__ = ["FORMATS", "Log", "file_format", "read_log"]

#: file extension -> format (a ``.gz`` or ``.bz2`` after it is allowed)
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSED = (".gz", ".bz2")
_SNIFF = 1 << 16
_NAMES = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSON lines", "parquet": "Parquet"}


def stem(path: Path) -> str:
    """The file name without its extensions (``day1.csv.gz`` -> ``day1``)."""
    name = path.name
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    return Path(name).stem


def file_format(path: Path, configured: str = "auto") -> str:
    """``csv`` / ``tsv`` / ``jsonl`` / ``parquet``: ``configured``, else by extension."""
    if configured != "auto":
        return configured
    name = path.name.lower()
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise BadLog(
            f"{path}: cannot tell the format from the extension {Path(name).suffix or '(none)'}"
            f" (name it {', '.join(sorted(FORMATS))} or set replay.table.format)"
        )
    return fmt


@dataclass
class Log:
    """One file's rows, column by column (module doc)."""

    file: Path
    format: str
    names: list[str]
    rows: int
    _table: Any = field(repr=False)
    _skipped_lines: list[int] = field(default_factory=list, repr=False)
    bad_rows: list[tuple[str, str]] = field(default_factory=list)
    _columns: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    def column(self, name: str) -> list[Any]:
        """The values of column ``name`` (a KeyError if there is none)."""
        col = self._columns.get(name)
        if col is None:
            if name not in self.names:
                raise KeyError(name)
            col = self._table.column(name).to_pylist()
            self._columns[name] = col
        return col

    def where(self, i: int) -> str:
        """Where row ``i`` (from 0) is: ``file:line`` or ``file row N``."""
        if self.format == "parquet":
            return f"{self.file} row {i + 1}"
        if self.format == "jsonl":
            return f"{self.file}:{i + 1}"
        line = i + 2  # the header is line 1
        # ragged rows were skipped: count those at or before this line
        k = 0
        while True:
            k2 = bisect.bisect_right(self._skipped_lines, line + k)
            if k2 == k:
                return f"{self.file}:{line + k}"
            k = k2


def _head(file: Path) -> bytes:
    """The first bytes of the file, decompressed if its name says so."""
    import pyarrow as pa

    try:
        with pa.input_stream(str(file), compression="detect") as s:
            return bytes(s.read(_SNIFF))
    except OSError as e:
        raise BadLog(f"{file}: cannot read: {e}") from None
    except Exception as e:  # pyarrow's own errors on a corrupt compressed file
        raise BadLog(f"{file}: cannot read ({type(e).__name__}: {e})") from None


def _sniff(file: Path, fmt: str, head: bytes) -> None:
    """Raise :class:`BadLog` when ``head`` is not the start of a ``fmt`` file."""
    name = _NAMES[fmt]
    fix = "rename it or set replay.table.format"
    if not head.strip():
        raise BadLog(f"{file}: empty file (no {'rows' if fmt == 'jsonl' else 'header line'})")
    if head.startswith(b"PAR1"):
        if fmt != "parquet":
            raise BadLog(f"{file}: a Parquet file, not {name} ({fix})")
        return
    if fmt == "parquet":
        raise BadLog(f"{file}: not a Parquet file (it does not start with PAR1; {fix})")
    if head.startswith(b"\x1f\x8b"):
        raise BadLog(f"{file}: gzip-compressed, but not named .gz ({fix})")
    if head.startswith(b"PK\x03\x04"):
        raise BadLog(f"{file}: a zip archive, not {name} (unpack it)")
    if b"\0" in head:
        raise BadLog(f"{file}: binary data, not {name} text ({fix})")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not a character cut by the sniff's end
            raise BadLog(f"{file}: not UTF-8 text at byte {e.start} ({fix})") from None
        text = head[: e.start].decode("utf-8")
    first = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    if fmt == "jsonl" and not first.lstrip().startswith("{"):
        raise BadLog(f"{file}:1: not JSON lines: the line does not start with '{{' ({fix})")
    if fmt == "csv" and "," not in first and "\t" in first:
        raise BadLog(f"{file}:1: tab-separated, not CSV (name it .tsv or set format: tsv)")
    if fmt == "tsv" and "\t" not in first and "," in first:
        raise BadLog(f"{file}:1: comma-separated, not TSV (name it .csv or set format: csv)")


def _header(file: Path, fmt: str, head: bytes) -> list[str]:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    line = text.splitlines()[0] if text else ""
    names = next(csv.reader([line], delimiter="\t" if fmt == "tsv" else ","), [])
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise BadLog(f"{file}:1: the header names column {n!r} twice")
        seen.add(n)
    return names


def read_log(file: Path, configured: str = "auto") -> Log:
    """Read ``file`` (module doc)."""
    fmt = file_format(file, configured)
    head = _head(file)
    _sniff(file, fmt, head)
    if fmt in ("csv", "tsv"):
        return _read_csv(file, fmt, head)
    if fmt == "jsonl":
        return _read_json(file)
    return _read_parquet(file)


def _read_csv(file: Path, fmt: str, head: bytes) -> Log:
    import pyarrow as pa
    import pyarrow.csv as pc

    names = _header(file, fmt, head)
    skipped: list[int] = []
    bad: list[tuple[str, str]] = []

    def ragged(row: Any) -> str:
        line = int(row.number) if row.number is not None else -1
        skipped.append(line)
        bad.append((f"{file}:{line}", f"{row.actual_columns} cells, the header has {len(names)}"))
        return "skip"

    try:
        table = pc.read_csv(
            str(file),
            read_options=pc.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pc.ParseOptions(
                delimiter="\t" if fmt == "tsv" else ",", invalid_row_handler=ragged
            ),
            convert_options=pc.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise BadLog(f"{file}: not readable as {_NAMES[fmt]}: {_first_line(e)}") from None
    skipped.sort()
    return Log(file, fmt, list(table.column_names), table.num_rows, table, skipped, bad)


def _read_json(file: Path) -> Log:
    import re

    import pyarrow as pa
    import pyarrow.json as pj

    try:
        table = pj.read_json(str(file))
    except (pa.ArrowInvalid, OSError) as e:
        msg = _first_line(e)
        m = re.search(r"in row (\d+)", msg)
        where = f"{file}:{int(m.group(1)) + 1}" if m else str(file)
        raise BadLog(f"{where}: not valid JSON lines: {msg}") from None
    return Log(file, "jsonl", list(table.column_names), table.num_rows, table)


def _read_parquet(file: Path) -> Log:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(file))
    except (pa.ArrowInvalid, OSError) as e:
        raise BadLog(f"{file}: not a readable Parquet file: {_first_line(e)}") from None
    return Log(file, "parquet", list(table.column_names), table.num_rows, table)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
