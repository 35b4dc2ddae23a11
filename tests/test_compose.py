"""docker-compose.yml has the stack's topology, checked without a Docker engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluxrec.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return doc


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_services_of_the_topology(compose: dict[str, Any]) -> None:
    assert {
        *("kafka", "jobmanager", "taskmanager", "redis", "minio"),
        *("join", "trainer", "server", "replay", "prometheus", "grafana"),
    } <= set(compose["services"])


def test_the_pipeline_runs_as_services(compose: dict[str, Any]) -> None:
    s = compose["services"]
    cfg = load_config(REPO / "configs" / "compose.yaml")
    for name in ("join", "trainer", "server"):
        assert s[name]["profiles"] == ["pipeline"]
    # the join is submitted to the compose Flink cluster, with the connector where it looks
    assert (
        s["join"]["command"][:2] == ["join", "submit"] and "jobmanager:8081" in s["join"]["command"]
    )
    assert s["join"]["image"] == s["jobmanager"]["image"]
    flink_docker = (REPO / "docker" / "flink" / "Dockerfile").read_text()
    assert f"{cfg.stack.jars_dir}/flink/" in flink_docker
    # the trainer runs its exporter (trainer.export) and serves /metrics on a published port
    assert s["trainer"]["command"] == ["train"] and cfg.trainer.export
    assert cfg.trainer.metrics_host == "0.0.0.0"
    assert f"{cfg.trainer.metrics_port}:{cfg.trainer.metrics_port}" in s["trainer"]["ports"]
    cmd = s["server"]["command"]
    assert cmd[0] == "serve" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert f"{port}:{port}" in s["server"]["ports"]
    for name in ("trainer", "server"):
        assert s[name]["environment"]["FLUXREC_CONFIG"].endswith("configs/compose.yaml")
    # every daemon is scraped: the trainer's and the server's ports, Flink's reporter
    prom = yaml.safe_load((REPO / "docker" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert {f"trainer:{cfg.trainer.metrics_port}", f"server:{port}"} <= targets
    for flink in ("jobmanager", "taskmanager"):
        props = s[flink]["environment"]["FLINK_PROPERTIES"]
        assert "PrometheusReporterFactory" in props and f"{flink}:9249" in targets


def test_grafana_dashboard_queries_metrics_the_daemons_export() -> None:
    dash = json.loads((REPO / "grafana" / "dashboards" / "fluxrec.json").read_text())
    provisioning = REPO / "grafana" / "provisioning"
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    assert all(p["datasource"]["uid"] == uid for p in dash["panels"] if p["type"] != "row")
    code = {
        "server": (REPO / "serving" / "server.py").read_text(),
        "trainer": (REPO / "trainer" / "daemon.py").read_text()
        + (REPO / "trainer" / "metrics.py").read_text(),
    }
    names = {m for e in exprs for m in re.findall(r"fluxrec_(?:server|trainer)_[a-z_]+", e)}
    assert any(n.startswith("fluxrec_server_") for n in names)
    assert any(n.startswith("fluxrec_trainer_") for n in names)
    for name in names:
        daemon, _, metric = name.removeprefix("fluxrec_").partition("_")
        metric = re.sub(r"_(bucket|sum|count)$", "", metric)
        if metric.startswith("window_"):  # fluxrec_trainer_window_{auc,logloss,...}
            metric = metric.removeprefix("window_")
        assert f'"{metric}' in code[daemon] or f"_{metric}" in code[daemon], name


def test_kafka_is_a_single_kraft_node_reachable_from_host_and_network(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    env = _env(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert "9092:9092" in kafka["ports"]
    assert "INTERNAL://kafka:19092" in env["KAFKA_ADVERTISED_LISTENERS"]
    # the transactional sink's timeout must fit under the broker maximum, as on one machine
    assert int(env["KAFKA_TRANSACTION_MAX_TIMEOUT_MS"]) == 900000
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for svc in compose["services"].values():
        for v in svc.get("volumes", []):
            name = v.split(":", 1)[0]
            if not name.startswith((".", "/")):
                used.add(name)
    assert used and used <= declared


def test_images_are_buildable_from_the_repo(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build:
            dockerfile = REPO / build["context"] / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            for src in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M):
                for part in src.split():
                    assert (REPO / part).exists(), f"{dockerfile}: COPY source {part} missing"
    assert compose["services"]["taskmanager"]["image"] == compose["services"]["jobmanager"]["image"]


def test_images_copy_every_package_and_build_the_accelerators() -> None:
    """An image that installs the project copies every package pyproject lists (one left
    out installs without an error and fails at import); the daemons' wheel is built where
    a C compiler is (setup.py: the featurizer's and the SDK's C paths)."""
    import tomllib

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {p.rstrip("*") for p in find["find"]["include"]}
    for image in ("fluxrec", "flink"):
        text = (REPO / "docker" / image / "Dockerfile").read_text()
        copied = {
            Path(src).name
            for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M)
            for src in sources.split()
        }
        assert packages <= copied, f"docker/{image}/Dockerfile: {sorted(packages - copied)}"
    daemons = (REPO / "docker" / "fluxrec" / "Dockerfile").read_text()
    assert "setup.py" in daemons and "gcc" in daemons and "pip wheel" in daemons


def test_flink_image_uses_the_stack_pom_and_version() -> None:
    text = (REPO / "docker" / "flink" / "Dockerfile").read_text()
    assert "fluxrec/stack/maven/flink.xml" in text
    pinned = re.search(r'"apache-flink==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pinned is not None
    assert f"FROM flink:{pinned.group(1)}-" in text


def test_compose_config_matches_the_services(compose: dict[str, Any]) -> None:
    cfg = load_config(REPO / "configs" / "compose.yaml")
    services = compose["services"]
    host, port = cfg.kafka.bootstrap.split(":")
    assert host == "kafka" and f"INTERNAL://:{port}" in _env(services["kafka"])["KAFKA_LISTENERS"]
    assert cfg.redis.url.startswith("redis://redis:6379")
    assert cfg.object_store.url.startswith("s3://fluxrec/")
    assert cfg.object_store.s3.endpoint_url == "http://minio:9000"
    assert "mb --ignore-existing local/fluxrec" in " ".join(services["minio-init"]["command"])
    assert cfg.flink.jobmanager == "jobmanager:8081"
    assert "8081:8081" in services["jobmanager"]["ports"]
    # everything that is not an endpoint is inherited from local.yaml
    local = load_config(REPO / "configs" / "local.yaml")
    assert cfg.kafka.topics == local.kafka.topics
    assert cfg.model == local.model
    assert cfg.features == local.features
    # the compose task managers run the jobs' JVM flags of the config
    tm = yaml.safe_load(_env(services["taskmanager"])["FLINK_PROPERTIES"])
    assert tm["env.java.opts.taskmanager"] == cfg.flink.jvm_args
