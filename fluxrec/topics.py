"""Kafka topic administration shared by the stack, the jobs and the tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

__all__ = ["delete_topics", "ensure_topics", "list_topics", "read_topic"]


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


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    timeout_s: float = 60.0,
    idle_s: float = 2.0,
    read_committed: bool = True,
) -> list[tuple[bytes | None, bytes]]:
    """``(key, value)`` of every record of ``topic`` from the beginning, in partition order.

    Reads until ``expected`` records arrived and then ``idle_s`` passed without more (a
    record beyond ``expected`` is worth seeing), or, with ``expected=None``, until
    ``idle_s`` without a record; gives up after ``timeout_s``.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    out: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=200)
            for recs in got.values():
                out.extend((r.key, r.value) for r in recs)
            if got:
                last = time.monotonic()
            enough = expected is None or len(out) >= expected
            if enough and time.monotonic() - last >= idle_s:
                break
    finally:
        consumer.close()
    return out
