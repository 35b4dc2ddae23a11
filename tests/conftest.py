"""Shared fixtures: one real stack per test session (Kafka KRaft, Redis, s3proxy).

* ``FLUXREC_TEST_CONFIG=path/to.yaml`` points the tests at an already-running stack
  (it is neither started nor stopped by the tests).
* Otherwise the first test that needs a service starts a private stack on free ports
  under a temporary directory; the session's end stops it and deletes its data.
* Every test gets its own topic / bucket / key names (``new_topic``, ``unique_name``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fluxrec.config import Config, load_config
from fluxrec.testing import unique_name, write_test_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def stack_config_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The YAML file of the session's running stack."""
    env = os.environ.get("FLUXREC_TEST_CONFIG")
    if env:
        yield Path(env)
        return
    from fluxrec.stack import Stack

    path = write_test_config(tmp_path_factory.mktemp("stack"))
    stack = Stack(load_config(path))
    try:
        stack.up()
        yield path
    finally:
        stack.down(purge=True)


@pytest.fixture(scope="session")
def stack_config(stack_config_path: Path) -> Config:
    return load_config(stack_config_path)


@pytest.fixture(scope="session")
def bootstrap(stack_config: Config) -> str:
    return stack_config.kafka.bootstrap


@pytest.fixture
def new_topic(bootstrap: str) -> Iterator[Callable[..., str]]:
    """``new_topic(partitions=2)`` creates a uniquely named topic, deleted after the test."""
    from fluxrec.topics import delete_topics, ensure_topics

    made: list[str] = []

    def make(partitions: int = 2, prefix: str = "t") -> str:
        name = unique_name(prefix)
        ensure_topics(bootstrap, [name], partitions)
        made.append(name)
        return name

    yield make
    if made:
        delete_topics(bootstrap, made)


@pytest.fixture
def redis_url(stack_config: Config) -> str:
    return stack_config.redis.url


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public logs not found at {SHARED_DATA} (see shared/data/README.md)")
    return SHARED_DATA
