"""Sending events: to Kafka with kafka-python, or as JSON lines to a text stream.

Each event goes to the topic of its stream with key = ``request_id`` (so the records of
one request share a partition and keep their order), value = the JSON payload, both
UTF-8; the Kafka timestamp is the send time (an old event time would fall outside the
topic's retention at once). The producer uses ``acks=all``, ``linger_ms`` and
``batch_size`` from ``replay.producer``, and ``compression`` none, lz4 or gzip.

JSON lines (``fluxrec replay --dry-run``), one per event::

    {"stream":"action","key":"r-7","event_time_ms":1700000011873,"fault":null,
     "value":"{\\"v\\":1,\\"request_id\\":\\"r-7\\",...}"}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from replay.errors import ProduceError
from replay.settings import ProducerConfig
from replay.types import Event, Stream, dumps

__all__ = ["Pacer", "ensure_topics", "new_producer", "produce", "write_lines"]


class Pacer:
    """Holds the sender back to ``rate`` events/s (0: no limit) and, when ``live``, until
    the wall clock reaches each event's time.

    An event less than 1 ms ahead goes at once. ``tick_s``: when the sender has to wait, it
    sleeps at least this long, then sends every event that came due meanwhile in one burst
    (events leave up to ``tick_s`` late; fewer wake-ups, and fuller producer batches, cost
    less CPU per event at thousands of events/s). 0: sleep exactly until each event.
    """

    def __init__(
        self,
        rate: float,
        live: bool,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        tick_s: float = 0.0,
    ) -> None:
        self.rate, self.live, self.tick_s = rate, live, tick_s
        self._monotonic, self._wall, self._sleep = monotonic, wall, sleep
        self._start = monotonic()
        self._sent = 0

    def wait(self, event_time_ms: int) -> None:
        """Return when the next event may go."""
        ahead = 0.0
        if self.rate:
            ahead = self._start + self._sent / self.rate - self._monotonic()
        if self.live:
            ahead = max(ahead, event_time_ms / 1000.0 - self._wall())
        if ahead > 0.001:
            self._sleep(max(ahead, self.tick_s))
        self._sent += 1


def write_lines(
    events: Iterable[Event], out: TextIO, *, pacer: Pacer, on_sent: Callable[[Event], None]
) -> None:
    """Write each event as one JSON line (module doc)."""
    for ev in events:
        pacer.wait(ev.event_time_ms)
        line = {
            "stream": str(ev.stream),
            "key": ev.key,
            "event_time_ms": ev.event_time_ms,
            "fault": None if ev.fault is None else str(ev.fault),
            "value": ev.payload,
        }
        out.write(dumps(line) + "\n")
        on_sent(ev)
    out.flush()


def _unreachable(bootstrap: str, e: BaseException) -> ProduceError:
    return ProduceError(
        f"no Kafka broker answers at {bootstrap} ({type(e).__name__}): start one with "
        "`fluxrec stack up` or set kafka.bootstrap"
    )


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int) -> None:
    """Create the topics that do not exist yet (:func:`fluxrec.topics.ensure_topics`)."""
    from kafka.errors import KafkaError

    from fluxrec.topics import ensure_topics as ensure

    try:
        ensure(bootstrap, list(topics), partitions)
    except KafkaError as e:
        raise _unreachable(bootstrap, e) from None


def new_producer(bootstrap: str, producer: ProducerConfig) -> Any:
    """A kafka-python ``KafkaProducer`` with ``producer``'s settings, ``acks=all`` and
    idempotence (retries keep the per-key, event-time order)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=producer.linger_ms,
        batch_size=producer.batch_size,
        compression_type=None if producer.compression == "none" else producer.compression,
    )


def produce(
    events: Iterable[Event],
    bootstrap: str,
    topics: Mapping[Stream, str],
    producer: ProducerConfig,
    *,
    pacer: Pacer,
    on_sent: Callable[[Event], None],
) -> None:
    """Produce ``events`` to ``topics[event.stream]`` and wait until Kafka acknowledged all.

    Raises :class:`ProduceError` when the broker cannot be reached or refuses a record.
    """
    from kafka.errors import KafkaError

    try:
        kp = new_producer(bootstrap, producer)
    except KafkaError as e:
        raise _unreachable(bootstrap, e) from None
    failed: list[BaseException] = []

    def errback(exc: BaseException, *_: Any) -> None:
        failed.append(exc)

    try:
        for ev in events:
            pacer.wait(ev.event_time_ms)
            if failed:
                break
            kp.send(topics[ev.stream], value=ev.payload.encode(), key=ev.key.encode()).add_errback(
                errback
            )
            on_sent(ev)
        kp.flush()
    except KafkaError as e:
        raise ProduceError(f"producing to Kafka at {bootstrap} failed: {e!r}") from e
    finally:
        kp.close()  # waits for what is in flight, also after Ctrl-C
    if failed:
        raise ProduceError(
            f"Kafka at {bootstrap} refused a record: {failed[0]!r} "
            f"({len(failed)} failed; do the topics {sorted(set(topics.values()))} exist?)"
        )
