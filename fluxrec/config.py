"""Typed deployment configuration: one YAML file describes the whole deployment.

Layout (``configs/local.yaml`` is the reference; ``fluxrec config keys`` lists every key)::

    stack:        state_dir, jars_dir, start_timeout_s
    kafka:        bootstrap, controller_port, heap_mb, jvm_args, partitions,
                  topics.{impressions,...}
    flink:        parallelism, checkpoint_interval_ms, jobmanager, checkpoint_dir,
                  state_changelog, materialize_interval_ms,
                  cluster.{enabled,rest_port,rpc_port,slots,*_memory_mb}
    redis:        url, channel
    object_store: url, s3.{endpoint_url,region,access_key,secret_key},
                  oss.{endpoint,access_key_id,access_key_secret}, s3_server.{enabled,port}
    model:        arch, embedding_dim, mlp
    features:     sparse[{name, dim, ids}], dense[{name}]
    replay:       see replay/settings.py
    join:         see sample_join/settings.py
    trainer:      see trainer/settings.py
    exporter:     see exporter/settings.py

Rules:

* unknown keys are rejected, naming the key, the file and the closest known key;
* keys without a default are required;
* ``${VAR}`` and ``${VAR:-default}`` expand from the environment in any string
  (``$$`` is a literal ``$``); an expanded string converts to the field's type;
* relative paths resolve against the directory of the YAML file;
* ``extends: other.yaml`` (top level) deep-merges this file over another one, so a
  deployment file can change only endpoints (mappings merge, lists and scalars replace);
* secrets are :class:`Secret` values whose ``repr``/``str`` never show the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from exporter.settings import ExporterConfig
from fluxrec.errors import ConfigError
from replay.settings import ReplayConfig
from sample_join.settings import JoinConfig
from trainer.settings import TrainerConfig

__all__ = [
    "Config",
    "FeaturesConfig",
    "FlinkConfig",
    "KafkaConfig",
    "ModelConfig",
    "ObjectStoreConfig",
    "RedisConfig",
    "Secret",
    "StackConfig",
    "default_config_path",
    "iter_keys",
    "load_config",
    "parse_config",
]


class Secret:
    """A credential from config or environment. ``str()`` and ``repr()`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret value, for handing to a client library (never to a logger)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


class ArchName(enum.StrEnum):
    """Model architectures the trainer builds."""

    DEEPFM = "deepfm"
    WIDE_DEEP = "wide_deep"
    DLRM = "dlrm"


@dataclass(frozen=True)
class StackConfig:
    """Where the one-machine stack keeps its state and jars."""

    state_dir: Path
    jars_dir: Path = Path("~/.cache/fluxrec/jars")
    start_timeout_s: float = 120.0


@dataclass(frozen=True)
class TopicsConfig:
    """Kafka topic names; every topic fluxrec uses is named here."""

    impressions: str = "fluxrec.impressions"
    actions: str = "fluxrec.actions"
    samples: str = "fluxrec.samples"
    dead_letters: str = "fluxrec.dead-letters"
    metrics: str = "fluxrec.metrics"

    def all(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class KafkaConfig:
    """The Kafka broker (KRaft, single combined node on one machine)."""

    bootstrap: str
    controller_port: int = 9093
    heap_mb: int = 512
    #: extra flags of the broker's JVM (`fluxrec stack up`). C1 only by default: a fresh
    #: broker's C2 compiles for its first minutes, more CPU than its faster code saves in
    #: a demo or a test run (BENCHMARKS.md); "" for C2 on a broker that runs for hours
    jvm_args: str = "-XX:TieredStopAtLevel=1"
    partitions: int = 2
    topics: TopicsConfig = field(default_factory=TopicsConfig)

    @property
    def host(self) -> str:
        return self.bootstrap.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])


@dataclass(frozen=True)
class FlinkClusterConfig:
    """A local Flink session cluster that ``stack up`` may start (for ``join submit``)."""

    enabled: bool = False
    rest_port: int = 8081
    rpc_port: int = 6123
    slots: int = 2
    jobmanager_memory_mb: int = 1024
    taskmanager_memory_mb: int = 1536


@dataclass(frozen=True)
class FlinkConfig:
    """Flink job settings; ``jobmanager`` (REST ``HOST:PORT``) is where ``join submit``
    sends the job; ``join run`` always uses a local MiniCluster."""

    parallelism: int = 2
    checkpoint_interval_ms: int = 5000
    jobmanager: str | None = None
    checkpoint_dir: str | None = None  # URL; null: stack.state_dir/flink/checkpoints locally
    # checkpoints write the keyed state's changes since the last one (Flink's changelog state
    # backend), and a full copy of it every materialize_interval_ms; false: all of it each time
    state_changelog: bool = True
    materialize_interval_ms: int = 30000
    #: flags of the JVM that runs the jobs: PyFlink's JVM (its local MiniCluster: `join
    #: run`, the demo, the benchmarks), unless $JVM_ARGS is set, and the task managers of
    #: the session cluster `stack up` may start. G1, named so that a small container does
    #: not fall back to the serial collector; -XX:+UseParallelGC costs ~27% less CPU per
    #: event but pauses the job for seconds as its state grows (BENCHMARKS.md)
    jvm_args: str = "-XX:+UseG1GC"
    cluster: FlinkClusterConfig = field(default_factory=FlinkClusterConfig)


@dataclass(frozen=True)
class RedisConfig:
    """Redis: version notifications and the shared serving table."""

    url: str
    channel: str = "fluxrec.versions"

    @property
    def port(self) -> int:
        from urllib.parse import urlparse

        return urlparse(self.url).port or 6379


@dataclass(frozen=True)
class S3Config:
    """Client settings for ``s3://`` URLs."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key: Secret | None = None
    secret_key: Secret | None = None


@dataclass(frozen=True)
class OssConfig:
    """Client settings for ``oss://`` URLs (Alibaba Cloud OSS through ``oss2``)."""

    endpoint: str = ""
    access_key_id: Secret | None = None
    access_key_secret: Secret | None = None


@dataclass(frozen=True)
class S3ServerConfig:
    """The local S3-compatible server (s3proxy) that ``stack up`` may start."""

    enabled: bool = False
    port: int = 9000


@dataclass(frozen=True)
class ObjectStoreConfig:
    """Where parameter versions are written: ``file://``, ``s3://`` or ``oss://``."""

    url: str
    s3: S3Config = field(default_factory=S3Config)
    oss: OssConfig = field(default_factory=OssConfig)
    s3_server: S3ServerConfig = field(default_factory=S3ServerConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The CTR model the trainer builds."""

    arch: ArchName = ArchName.DEEPFM
    embedding_dim: int = 16
    mlp: list[int] = field(default_factory=lambda: [256, 128])


@dataclass(frozen=True)
class SparseFeature:
    """A categorical field; ``dim`` overrides ``model.embedding_dim``; ``ids: raw`` uses
    the values (decimal int64 strings) as feature ids instead of hashing them."""

    name: str
    dim: int | None = None
    ids: Literal["hash", "raw"] = "hash"


@dataclass(frozen=True)
class DenseFeature:
    """A numeric field."""

    name: str


@dataclass(frozen=True)
class FeaturesConfig:
    """The impression's logged features that the model reads."""

    sparse: list[SparseFeature] = field(default_factory=list)
    dense: list[DenseFeature] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    """The whole deployment. ``source`` is the file it was read from."""

    stack: StackConfig
    kafka: KafkaConfig
    redis: RedisConfig
    object_store: ObjectStoreConfig
    flink: FlinkConfig = field(default_factory=FlinkConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    join: JoinConfig = field(default_factory=JoinConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    source: Path = field(default=Path("<memory>"), compare=False)


# --------------------------------------------------------------------------- loading

_T = TypeVar("_T")
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def default_config_path() -> Path:
    """``$FLUXREC_CONFIG``, else ``configs/local.yaml`` under the working directory,
    else the copy shipped in the ``configs`` package."""
    env = os.environ.get("FLUXREC_CONFIG")
    if env:
        return Path(env)
    local = Path("configs/local.yaml")
    if local.is_file():
        return local
    import configs

    return configs.path("local.yaml")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, expand and type-check a deployment file."""
    p = Path(path) if path is not None else default_config_path()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(
            "<file>", str(p), f"cannot read: {e.strerror}", "pass --config PATH"
        ) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<yaml>"
        raise ConfigError(where, str(p), f"not valid YAML: {e}", "fix the syntax") from e
    if isinstance(data, dict) and "extends" in data:
        data = _extend(data, p, seen=[p.resolve()])
    return parse_config(data, file=p)


def _extend(data: dict[str, Any], path: Path, seen: list[Path]) -> dict[str, Any]:
    """Merge ``data`` over the file named by its ``extends`` key (resolved against ``path``)."""
    rest = dict(data)
    base_name = rest.pop("extends")
    if not isinstance(base_name, str):
        raise ConfigError("extends", str(path), "expected a file name", "e.g. extends: local.yaml")
    base_path = (path.parent / base_name).resolve()
    if base_path in seen:
        raise ConfigError("extends", str(path), f"{base_path} extends itself in a cycle")
    try:
        base = yaml.safe_load(base_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError("extends", str(path), f"cannot load {base_path}: {e}") from e
    if not isinstance(base, dict):
        raise ConfigError("extends", str(path), f"{base_path} is not a mapping")
    if "extends" in base:
        base = _extend(base, base_path, [*seen, base_path])
    return _merge(base, rest)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_config(data: Any, file: Path = Path("<memory>")) -> Config:
    """Build a :class:`Config` from already-parsed YAML (a dict)."""
    cfg = _build(Config, data, "", _Ctx(file))
    return dataclasses.replace(cfg, source=file)


@dataclass
class _Ctx:
    file: Path

    @property
    def base(self) -> Path:
        return self.file.parent if self.file.name != "<memory>" else Path.cwd()

    def err(self, key: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(key or "<top level>", str(self.file), problem, fix)


def _expand(value: str, key: str, ctx: _Ctx) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ctx.err(
            key,
            f"environment variable {name} is not set",
            f"export {name}=... or write ${{{name}:-default}}",
        )

    return _ENV.sub(sub, value)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type[_T], data: Any, key: str, ctx: _Ctx) -> _T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ctx.err(key, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    skip = "source" if cls is Config else None  # Config.source is the file, not a key
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != skip}  # type: ignore[arg-type]
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
            raise ctx.err(_join(key, str(k)), "unknown key", hint)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        sub = _join(key, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub, ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.err(
                sub, "missing required key", f"add '{name}:' under '{key or 'top level'}'"
            )
    return cls(**kwargs)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _convert(tp: Any, value: Any, key: str, ctx: _Ctx) -> Any:  # noqa: PLR0911, PLR0912
    origin = typing.get_origin(tp)
    expanded = False
    if isinstance(value, str) and "$" in value:
        value, expanded = _expand(value, key, ctx), True
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (expanded and value == ""):
            if type(None) in typing.get_args(tp):
                return None
            raise ctx.err(key, "must not be null")
        return _convert(args[0], value, key, ctx)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, ctx)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ctx.err(key, f"expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.err(key, f"expected a mapping, got {type(value).__name__}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{key}.{k}", ctx) for k, v in value.items()}
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ctx.err(key, f"got {value!r}", f"use one of {', '.join(map(str, choices))}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            names = ", ".join(str(m.value) for m in tp)
            raise ctx.err(key, f"got {value!r}", f"use one of {names}") from None
    return _scalar(tp, value, key, ctx, expanded)


def _scalar(tp: Any, value: Any, key: str, ctx: _Ctx, expanded: bool) -> Any:  # noqa: PLR0911, PLR0912
    if tp is Secret:
        if not isinstance(value, str):
            raise ctx.err(key, f"expected a string, got {type(value).__name__}")
        return Secret(value)
    if tp is Path:
        if not isinstance(value, str):
            raise ctx.err(key, f"expected a path string, got {type(value).__name__}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (ctx.base / p).resolve()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if expanded and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ctx.err(key, f"expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ctx.err(key, f"expected {tp.__name__}, got a boolean")
        if isinstance(value, int) or (tp is float and isinstance(value, float)):
            return tp(value)
        if expanded and isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise ctx.err(key, f"expected {tp.__name__}, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ctx.err(key, f"expected a string, got {type(value).__name__} {value!r}")
        if key == "object_store.url":
            return _resolve_file_url(value, ctx)
        return value
    raise ctx.err(key, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _resolve_file_url(url: str, ctx: _Ctx) -> str:
    if url.startswith("file://"):
        p = Path(url[len("file://") :]).expanduser()
        return "file://" + str(p if p.is_absolute() else (ctx.base / p).resolve())
    if not url.startswith(("s3://", "oss://")):
        raise ctx.err(
            "object_store.url", f"unsupported scheme in {url!r}", "use file://, s3:// or oss://"
        )
    return url


def iter_keys(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """Yield ``(dotted key, type, default)`` for every key: the reference ``config keys`` prints."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if cls is Config and f.name == "source":
            continue
        tp, key = hints[f.name], _join(prefix, f.name)
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(inner[0]) and typing.get_origin(tp) is not list:
            yield from iter_keys(inner[0], key)  # type: ignore[arg-type]
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        yield key, _type_name(tp), default
