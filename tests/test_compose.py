"""docker-compose.yml has the stack's topology, checked without a Docker engine."""

from __future__ import annotations

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
    assert {"kafka", "jobmanager", "taskmanager", "redis", "minio", "trainer", "exporter"} <= set(
        compose["services"]
    )


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
