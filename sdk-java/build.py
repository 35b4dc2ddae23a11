"""Build the Java reader of the delta format (``sdk-java/``), idempotently.

``python sdk-java/build.py``          compile and package it when its sources changed
``python sdk-java/build.py --test``   also run its JUnit tests (every golden vector)

Up to date means ``target/.stamp`` holds the sha256 of ``pom.xml`` and ``src/**``; then
nothing runs (unless ``--test``). Writes ``target/classes`` and ``target/classpath.txt``
(the runtime jars, from the local Maven repository) for ``tests/test_sdk_java.py`` and any
JVM server. Extra Maven flags (``-s settings.xml``, ``-o``) come from
``$FLUXREC_MAVEN_FLAGS``. Needs ``mvn`` and a JDK 17+ (``javac``): installed with apt-get
when missing and running as root, else the error names the command.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / "target"
STAMP = TARGET / ".stamp"
CLASSPATH = TARGET / "classpath.txt"


def sources_digest() -> str:
    h = hashlib.sha256()
    for p in [HERE / "pom.xml", *sorted((HERE / "src").rglob("*"))]:
        if p.is_file():
            h.update(p.relative_to(HERE).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _ensure_tools() -> str:
    missing = [
        pkg
        for tool, pkg in (("mvn", "maven"), ("javac", "openjdk-17-jdk-headless"))
        if not shutil.which(tool)
    ]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            check=True,
        )
    for tool in ("mvn", "javac"):
        if not shutil.which(tool):
            sys.exit(
                f"sdk-java: {tool} not found: run `sudo apt-get install -y maven "
                "openjdk-17-jdk-headless` (or `make deps` as root)"
            )
    return str(shutil.which("mvn"))


def _mvn(*goals: str) -> None:
    argv = [
        _ensure_tools(),
        "-B",
        "-q",
        *shlex.split(os.environ.get("FLUXREC_MAVEN_FLAGS", "")),
        "-f",
        str(HERE / "pom.xml"),
        *goals,
    ]
    r = subprocess.run(argv, check=False)
    if r.returncode != 0:
        sys.exit(f"sdk-java: `{' '.join(argv)}` failed (exit {r.returncode}); see its output above")


def _test_summary() -> str:
    runs = fails = 0
    for report in sorted((TARGET / "surefire-reports").glob("TEST-*.xml")):
        head = re.search(r"<testsuite [^>]*>", report.read_text())  # our own reports
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', head.group(0) if head else ""))
        runs += int(attrs.get("tests", 0))
        fails += int(attrs.get("failures", 0)) + int(attrs.get("errors", 0))
    return f"sdk-java JUnit: {runs} tests run, {fails} failed"


def main(argv: list[str]) -> int:
    test = "--test" in argv
    digest = sources_digest()
    fresh = STAMP.is_file() and STAMP.read_text().strip() == digest and CLASSPATH.is_file()
    if fresh and not test:
        return 0
    goals = [
        "package",
        "dependency:build-classpath",
        f"-Dmdep.outputFile={CLASSPATH}",
        "-DincludeScope=runtime",
    ]
    _mvn(*goals, *([] if test else ["-DskipTests"]))
    STAMP.write_text(digest + "\n")
    print(_test_summary() if test else f"sdk-java: built into {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
