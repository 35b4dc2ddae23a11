"""Kafka topic administration shared by the stack, the jobs and the tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

__all__ = ["delete_topics", "ensure_topics", "list_topics"]


def _admin(bootstrap: str):  # type: ignore[no-untyped-def]
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)


def list_topics(bootstrap: str) -> set[str]:
    admin = _admin(bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    configs: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet and wait until they are listed.

    Returns the names that were created.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = list(dict.fromkeys(names))
    admin = _admin(bootstrap)
    try:
        missing = [n for n in wanted if n not in set(admin.list_topics())]
        if missing:
            new = [NewTopic(n, partitions, 1, topic_configs=dict(configs or {})) for n in missing]
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
        deadline = time.monotonic() + timeout_s
        while missing and time.monotonic() < deadline:
            if set(missing) <= set(admin.list_topics()):
                break
            time.sleep(0.1)
        return missing
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete topics that exist; absent ones are ignored."""
    admin = _admin(bootstrap)
    try:
        present = [n for n in names if n in set(admin.list_topics())]
        if present:
            admin.delete_topics(present)
    finally:
        admin.close()
