"""Typed configuration: strict keys, types, env expansion, secrets, path resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fluxrec.config import Config, FlinkConfig, Secret, iter_keys, load_config, parse_config
from fluxrec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    p = tmp_path / "deploy.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _base() -> dict[str, Any]:
    return {
        "stack": {"state_dir": "state"},
        "kafka": {"bootstrap": "127.0.0.1:9092"},
        "redis": {"url": "redis://127.0.0.1:6379/0"},
        "object_store": {"url": "file://objects"},
    }


def test_shipped_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "local.yaml")
    assert cfg.kafka.port == 9092
    assert cfg.flink.parallelism == 2
    assert cfg.flink.jvm_args == FlinkConfig().jvm_args  # the file shows the default
    assert cfg.stack.state_dir == (REPO / ".fluxrec" / "state").resolve()
    assert cfg.object_store.url == f"file://{(REPO / '.fluxrec' / 'objects').resolve()}"


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, _base()))
    assert cfg.stack.state_dir == tmp_path / "state"
    assert cfg.object_store.url == f"file://{tmp_path / 'objects'}"


def test_unknown_key_names_key_file_and_closest_match(tmp_path: Path) -> None:
    doc = _base()
    doc["kafka"]["bootstarp"] = "x:1"
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.key == "kafka.bootstarp"
    assert str(path) in str(e.value)
    assert "did you mean 'bootstrap'" in str(e.value)


def test_unknown_top_level_section(tmp_path: Path) -> None:
    doc = _base() | {"kafak": {}}
    with pytest.raises(ConfigError, match=r"kafak: unknown key \(did you mean 'kafka'"):
        load_config(_write(tmp_path, doc))


def test_missing_required_key(tmp_path: Path) -> None:
    doc = _base()
    del doc["kafka"]["bootstrap"]
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, doc))
    assert e.value.key == "kafka.bootstrap"
    assert "missing required key" in str(e.value)


@pytest.mark.parametrize(
    ("section", "key", "value", "expect"),
    [
        ("flink", "parallelism", "two", "expected int"),
        ("flink", "parallelism", True, "expected int, got a boolean"),
        ("kafka", "partitions", 2.5, "expected int"),
        ("object_store", "s3_server", {"enabled": "yes"}, "expected true or false"),
        ("model", "arch", "transformer", "use one of deepfm, wide_deep, dlrm"),
        ("model", "mlp", 256, "expected a list"),
    ],
)
def test_bad_type_names_the_key(
    tmp_path: Path, section: str, key: str, value: Any, expect: str
) -> None:
    doc = _base()
    doc.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, doc))
    assert e.value.key.startswith(f"{section}.{key}")
    assert expect in str(e.value)


def test_env_expansion_with_defaults_and_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLX_PAR", "4")
    monkeypatch.setenv("FLX_SECRET", "s3cr3t-value")
    doc = _base()
    doc["flink"] = {"parallelism": "${FLX_PAR}", "jobmanager": "${FLX_UNSET:-jm:8081}"}
    doc["object_store"]["s3"] = {"secret_key": "${FLX_SECRET}", "access_key": "a$$b"}
    cfg = load_config(_write(tmp_path, doc))
    assert cfg.flink.parallelism == 4
    assert cfg.flink.jobmanager == "jm:8081"
    assert cfg.object_store.s3.secret_key == Secret("s3cr3t-value")
    assert cfg.object_store.s3.access_key is not None
    assert cfg.object_store.s3.access_key.get() == "a$b"
    # secrets never show in str/repr of the config
    assert "s3cr3t-value" not in repr(cfg)
    assert "s3cr3t-value" not in str(cfg.object_store)


def test_unset_env_var_is_an_error_naming_it(tmp_path: Path) -> None:
    doc = _base()
    doc["redis"]["url"] = "${FLX_DEFINITELY_UNSET_VAR}"
    with pytest.raises(ConfigError, match="FLX_DEFINITELY_UNSET_VAR is not set") as e:
        load_config(_write(tmp_path, doc))
    assert e.value.key == "redis.url"


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_unsupported_object_store_scheme(tmp_path: Path) -> None:
    doc = _base()
    doc["object_store"]["url"] = "ftp://x"
    with pytest.raises(ConfigError, match=r"object_store\.url"):
        load_config(_write(tmp_path, doc))


def test_every_key_is_listed() -> None:
    keys = {k for k, _, _ in iter_keys()}
    assert {
        "kafka.bootstrap",
        "kafka.topics.samples",
        "object_store.s3.secret_key",
        "stack.state_dir",
        "flink.parallelism",
    } <= keys
    assert isinstance(parse_config(_base()), Config)


def test_extends_merges_mappings_and_replaces_scalars(tmp_path: Path) -> None:
    _write(tmp_path, _base() | {"flink": {"parallelism": 3, "checkpoint_interval_ms": 700}})
    child = tmp_path / "child.yaml"
    child.write_text("extends: deploy.yaml\nflink: {parallelism: 5}\n")
    cfg = load_config(child)
    assert cfg.flink.parallelism == 5
    assert cfg.flink.checkpoint_interval_ms == 700
    assert cfg.kafka.bootstrap == "127.0.0.1:9092"


def test_state_changelog_settings_follow_the_config(tmp_path: Path) -> None:
    from pipelines.flink_env import changelog_options

    _write(tmp_path, _base() | {"flink": {"materialize_interval_ms": 45000}})
    cfg = load_config(tmp_path / "deploy.yaml")
    opts = changelog_options(cfg, "file:///ck/")
    assert opts["state.changelog.enabled"] == "true"
    assert opts["state.changelog.dstl.dfs.base-path"] == "file:///ck/changelog"
    assert opts["state.changelog.periodic-materialize.interval"] == "45000 ms"
    _write(tmp_path, _base() | {"flink": {"state_changelog": False}})
    assert changelog_options(load_config(tmp_path / "deploy.yaml"), "file:///ck") == {}
    _write(tmp_path, _base() | {"flink": {"materialize_interval_ms": 0}})
    with pytest.raises(ConfigError, match="materialize_interval_ms"):
        changelog_options(load_config(tmp_path / "deploy.yaml"), "file:///ck")


def test_kafka_jvm_args_reach_the_broker_command(tmp_path: Path) -> None:
    from fluxrec.stack.services import KafkaService

    (tmp_path / "jars" / "kafka").mkdir(parents=True)
    (tmp_path / "jars" / "kafka" / ".stamp").touch()  # resolved (the command only names them)
    stack = {"state_dir": "state", "jars_dir": "jars"}

    def command(**kafka: str) -> list[str]:
        _write(tmp_path, _base() | {"stack": stack, "kafka": {"bootstrap": "h:1", **kafka}})
        return KafkaService(load_config(tmp_path / "deploy.yaml")).command()

    cmd = command()
    assert "-XX:TieredStopAtLevel=1" in cmd  # the default: C1 only
    assert cmd.index("-XX:TieredStopAtLevel=1") < cmd.index("kafka.Kafka")
    assert not any(a.startswith("-XX:Tiered") for a in command(jvm_args=""))
    cmd = command(jvm_args="-XX:+UseSerialGC '-Dfluxrec.note=a b'")
    assert "-XX:+UseSerialGC" in cmd and "-Dfluxrec.note=a b" in cmd


def test_flink_jvm_args_reach_the_task_managers_and_the_local_jvm(tmp_path: Path) -> None:
    """flink.jvm_args: the session cluster's task managers (their config.yaml) and, unless
    $JVM_ARGS is set, PyFlink's JVM (create_table_env sets it before the JVM starts; the
    live check of the running JVM is in test_flink_smoke)."""
    from fluxrec.stack.flink import FlinkTaskManager

    stack = {"state_dir": str(tmp_path / "state"), "jars_dir": "jars"}

    def task_manager_opts(**flink: str) -> object:
        _write(tmp_path, _base() | {"stack": stack, "flink": flink})
        tm = FlinkTaskManager(load_config(tmp_path / "deploy.yaml"))
        tm.prepare()
        conf = yaml.safe_load((tm.conf_dir / "config.yaml").read_text())
        return conf["env.java.opts.taskmanager"]

    assert load_config(_write(tmp_path, _base())).flink.jvm_args == "-XX:+UseG1GC"
    assert task_manager_opts() == "-XX:+UseG1GC"
    assert task_manager_opts(jvm_args="-XX:+UseSerialGC -Xss2m") == "-XX:+UseSerialGC -Xss2m"


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
