"""Install what the one-machine stack needs, idempotently: ``fluxrec setup``.

* Debian packages: ``redis-server`` (and ``maven`` / a JDK when missing), via apt-get as root.
* Jars from Maven Central, one pom per group, copied to ``JARS_DIR/NAME/``::

      JARS_DIR/kafka/*.jar      Apache Kafka broker (KRaft) and its dependencies
      JARS_DIR/flink/*.jar      flink-sql-connector-kafka (a shaded jar)
      JARS_DIR/s3proxy/*.jar    s3proxy, the local S3-compatible server
      JARS_DIR/NAME/.stamp      sha256 of the pom the folder was resolved from

  A folder whose stamp matches its pom is not resolved again. Extra Maven flags
  (``-s settings.xml`` for a mirror, ``-o`` offline) come from ``$FLUXREC_MAVEN_FLAGS``.
* The sample join's Java functions, a Maven module of the repository, built in place::

      flink-functions/target/fluxrec-flink-functions.jar
      flink-functions/target/.stamp    sha256 of the pom and sources the jar was built from

  rebuilt (with its unit tests) only when the stamp differs; ``$FLUXREC_FUNCTIONS_JAR``
  points at a jar built elsewhere (for example in a container image) instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from fluxrec.errors import ResolveError, ToolMissing

__all__ = [
    "FUNCTIONS_DIR",
    "POMS",
    "build_functions",
    "connector_jar",
    "ensure_debian_packages",
    "find_java",
    "functions_jar",
    "jar_dir",
    "pom_path",
    "resolve_all",
    "resolve_jars",
]

POMS = ("kafka", "flink", "s3proxy")
#: The Maven module of the sample join's Java functions (in a checkout of the repository).
FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "flink-functions"
_FUNCTIONS_JAR = "fluxrec-flink-functions.jar"
MIN_JAVA = 17
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def pom_path(name: str) -> Path:
    return Path(str(resources.files("fluxrec.stack") / "maven" / f"{name}.xml"))


def jar_dir(jars_dir: Path, name: str) -> Path:
    """The resolved folder of pom ``name``; raises ToolMissing when it was never resolved."""
    d = jars_dir / name
    if not (d / ".stamp").is_file():
        raise ToolMissing(f"the {name} jars are not in {d}: run `fluxrec setup` (or `make deps`)")
    return d


def connector_jar(jars_dir: Path) -> Path:
    """The Flink Kafka SQL connector jar."""
    found = sorted(jar_dir(jars_dir, "flink").glob("flink-sql-connector-kafka-*.jar"))
    if not found:
        raise ToolMissing(
            f"no flink-sql-connector-kafka jar in {jars_dir / 'flink'}: run `fluxrec setup --force`"
        )
    return found[-1]


def find_java() -> str:
    """Path of a ``java`` of version 17 or newer: $JAVA_HOME/bin/java, else PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ToolMissing(
            "java not found (need Java 17+): run `make deps` or "
            "`apt-get install openjdk-17-jre-headless`, or set JAVA_HOME"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0" style
        major = int(m.group(2))
    if major < MIN_JAVA:
        raise ToolMissing(
            f"{java} is Java {major or '?'}; Kafka 4 needs Java {MIN_JAVA}+: "
            "install openjdk-17-jre-headless or point JAVA_HOME at a newer JDK"
        )
    return java


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ToolMissing(
            f"{' '.join(packages)} not installed and cannot install it here: "
            f"run `sudo apt-get install -y {' '.join(packages)}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        r = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise ToolMissing(f"`{' '.join(argv)}` failed: {last}")


def ensure_debian_packages() -> list[str]:
    """Install redis-server, maven and a JDK (the join's functions are compiled) where
    missing. Returns what was installed."""
    want = {"redis-server": "redis-server", "mvn": "maven"}
    missing = [pkg for tool, pkg in want.items() if not shutil.which(tool)]
    try:
        find_java()
        jdk = shutil.which("javac") or os.environ.get("JAVA_HOME")
    except ToolMissing:
        jdk = os.environ.get("JAVA_HOME")
    if not jdk:
        missing.append("openjdk-17-jdk-headless")
    if missing:
        _apt_install(missing)
    return missing


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_jars(pom: Path, out: Path, force: bool = False) -> bool:
    """Copy the runtime dependencies of ``pom`` into ``out``. Returns False if up to date."""
    stamp = out / ".stamp"
    digest = _sha256(pom)
    if not force and stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    mvn = shutil.which("mvn")
    if not mvn:
        raise ToolMissing("mvn not found: run `make deps` or `apt-get install maven`")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        argv = [
            mvn,
            "-B",
            "-q",
            *shlex.split(os.environ.get("FLUXREC_MAVEN_FLAGS", "")),
            "-f",
            str(pom),
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            errors = [ln for ln in (r.stdout + r.stderr).splitlines() if "[ERROR]" in ln]
            first = re.sub(r"\x1b\[[0-9;]*m", "", errors[0] if errors else "no output")
            first = first.replace("[ERROR]", "").strip()[:300]
            raise ResolveError(
                f"Maven could not resolve {pom.name}: {first}; check access to Maven Central "
                "(a mirror goes in ~/.m2/settings.xml or FLUXREC_MAVEN_FLAGS='-s FILE')"
            )
        (tmp / ".stamp").write_text(digest + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def resolve_all(jars_dir: Path, force: bool = False) -> dict[str, bool]:
    """Resolve every pom in :data:`POMS`; maps name -> whether it was (re)resolved."""
    return {name: resolve_jars(pom_path(name), jars_dir / name, force) for name in POMS}


def _sources_digest(module: Path) -> str:
    """sha256 over the pom and every file under src/ (names and contents)."""
    h = hashlib.sha256()
    for f in [module / "pom.xml", *sorted((module / "src").rglob("*"))]:
        if f.is_file():
            h.update(str(f.relative_to(module)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def functions_jar() -> Path:
    """The jar of the sample join's functions: ``$FLUXREC_FUNCTIONS_JAR``, else the one
    built from ``flink-functions/``; raises ToolMissing when it is absent or older than
    its sources."""
    env = os.environ.get("FLUXREC_FUNCTIONS_JAR")
    if env:
        if not Path(env).is_file():
            raise ToolMissing(f"FLUXREC_FUNCTIONS_JAR={env} is not a file: build it or unset it")
        return Path(env)
    jar = FUNCTIONS_DIR / "target" / _FUNCTIONS_JAR
    stamp = FUNCTIONS_DIR / "target" / ".stamp"
    if not FUNCTIONS_DIR.is_dir():
        raise ToolMissing(
            f"no {FUNCTIONS_DIR}: run from a checkout of fluxrec, or set FLUXREC_FUNCTIONS_JAR"
        )
    if not jar.is_file() or not stamp.is_file():
        raise ToolMissing(f"{jar} is not built: run `make deps` (or `fluxrec setup`)")
    if stamp.read_text().strip() != _sources_digest(FUNCTIONS_DIR):
        raise ToolMissing(f"{jar} is older than its sources: run `make deps` (or `fluxrec setup`)")
    return jar


def build_functions(force: bool = False) -> bool:
    """``mvn package`` the functions' module (unit tests included) unless its stamp matches
    its sources. Returns False if it was up to date."""
    stamp = FUNCTIONS_DIR / "target" / ".stamp"
    digest = _sources_digest(FUNCTIONS_DIR)
    if not force and stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    mvn = shutil.which("mvn")
    if not mvn:
        raise ToolMissing("mvn not found: run `make deps` or `apt-get install maven`")
    stamp.unlink(missing_ok=True)
    argv = [
        mvn,
        "-B",
        "-q",
        *shlex.split(os.environ.get("FLUXREC_MAVEN_FLAGS", "")),
        "-f",
        str(FUNCTIONS_DIR / "pom.xml"),
        "package",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        lines = (r.stdout + r.stderr).splitlines()
        errors = [ln for ln in lines if "[ERROR]" in ln or "FAIL" in ln] or lines[-3:] or ["?"]
        first = re.sub(r"\x1b\[[0-9;]*m", "", errors[0]).replace("[ERROR]", "").strip()[:300]
        raise ResolveError(
            f"building {FUNCTIONS_DIR.name} failed: {first}; run `mvn -f "
            f"{FUNCTIONS_DIR / 'pom.xml'} package` to see everything (a Maven mirror goes in "
            "~/.m2/settings.xml or FLUXREC_MAVEN_FLAGS='-s FILE')"
        )
    stamp.write_text(digest + "\n")
    return True
