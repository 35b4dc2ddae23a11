"""Build the project's C accelerators, each beside the Python module that uses it.

========================  =============================  ===============================
source                    module                         what it speeds up
========================  =============================  ===============================
featurize/_fast.c         ``featurize._fast``            raw JSON -> ids, offsets, rows
exporter/sdk/_probe.c     ``exporter.sdk._probe``        the SDK's table lookups
========================  =============================  ===============================

``make venv`` / ``make deps`` run ``python -m fluxrec.native``: each extension is
compiled with the C compiler Python was built with (``$CC`` overrides it) when its
shared object is missing or older than its source, and left alone otherwise. Both are
optional: without a compiler this says so, and each user keeps its numpy / Arrow path
(the same results, slower); ``--require`` fails instead. Installs that are not a checkout
(a wheel, ``pip install .``, the Docker image) build the same two extensions through
``setup.py`` (optional there too), and so does the editable install of ``make venv``,
after which this finds them up to date.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "featurize" / "_fast.c", ROOT / "exporter" / "sdk" / "_probe.c")


def target(source: Path) -> Path:
    """Where an extension lands: its source's name + this interpreter's suffix."""
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    return source.with_name(source.stem + suffix)


def build(source: Path, force: bool = False) -> Path | None:
    """Compile ``source`` when stale; the extension's path, or None without a compiler."""
    out = target(source)
    if not force and out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    cc = shlex.split(os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc"))
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        part = Path(tmp) / out.name
        cmd = [*cc, "-O3", "-std=c11", "-shared", "-fPIC", "-Wall", "-Werror",
               f"-I{include}", str(source), "-o", str(part), "-lm"]  # fmt: skip
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except FileNotFoundError:
            return None
        except subprocess.CalledProcessError as e:
            raise SystemExit(f"fluxrec.native: {shlex.join(cmd)} failed:\n{e.stderr}") from None
        part.replace(out)  # atomic: a concurrent build or import never sees half a file
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="compile even when up to date")
    ap.add_argument("--require", action="store_true", help="fail without a C compiler")
    a = ap.parse_args()
    for source in SOURCES:
        if build(source, a.force) is None:
            msg = f"fluxrec.native: no C compiler (set CC): {source.name} not built"
            if a.require:
                raise SystemExit(msg)
            print(msg, file=sys.stderr)


if __name__ == "__main__":
    main()
