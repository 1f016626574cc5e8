"""What was written just before this process started, read back from Kafka.

The batch ledger (publish.py) is in memory: it dies with the process. A publisher whose batches were written to
Kafka by an ingest process that was then killed, before their answers went out, re-sends them to the next process,
which would write them again: duplicates on the topic, which the writer drops by message_id but every live
subscriber receives. So at start ingest reads back the message ids on the trades and quotes topics written
within the last `publish_recovery_seconds` (at most `publish_recovery_messages` per topic, the newest; published
batches wait for it), and for as long again does not write a published item whose message_id is among them: it
is answered as accepted, since Kafka already holds it. (A re-sent batch carries the same message ids: the
publisher's, or those ingest derives from its batch id.)
"""

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from k2.core import avro
from k2.core.config import KafkaSettings
from k2.core.framing import Framing, SchemaRegistryUnavailable
from k2.core.kafka import consumer_config
from k2.core.records import RecordKind
from k2.core.retry import until_stopped

log = logging.getLogger(__name__)
POLL_MESSAGES = 10_000
CALL_TIMEOUT_SECONDS = 5.0  # each Kafka call's; the reading stops within this of being told to


class RecentlyWritten:
    """The message ids of one kind written before start, until a moment (monotonic clock)."""

    def __init__(self, ids: set[str], until: float):
        self._ids = ids
        self._until = until

    def __len__(self) -> int:
        self._expire()
        return len(self._ids)

    def _expire(self) -> None:
        if self._ids and time.monotonic() >= self._until:
            self._ids = set()

    def written(self, values: Sequence[bytes]) -> list[bool] | None:
        """Per Kafka message value (as ingest writes them: the current Avro version): whether its message_id was
        written before; None when nothing was (or no longer counts)."""
        self._expire()
        ids = self._ids
        if not ids:
            return None
        written = [avro.leading_ids(value)[0] in ids for value in values]
        return written if any(written) else None


class Recovery:
    """Reads back, in the background from start(), the message ids each topic got in the last `seconds`; they
    count for `seconds` after start. Publishing waits for it (wait()). While Kafka is unreachable it retries,
    for at most those `seconds`: what was written before start matters no longer than that."""

    def __init__(
        self,
        kafka: KafkaSettings,
        framing: Framing,
        topics: Mapping[RecordKind, str],
        seconds: float,
        max_messages: int,
    ):
        self._kafka = kafka
        self._framing = framing
        self._topics = topics
        self._seconds = seconds
        self._max_messages = max_messages
        self._until = time.monotonic() + seconds
        self.written = {kind: RecentlyWritten(set(), self._until) for kind in topics}
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._seconds > 0:
            self._until = time.monotonic() + self._seconds
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        started = time.monotonic()
        try:
            for kind, topic in self._topics.items():
                ids = await asyncio.to_thread(
                    read_recent_message_ids,
                    self._kafka,
                    self._framing,
                    topic,
                    self._seconds,
                    self._max_messages,
                    self._until,
                    self._stop,
                )
                self.written[kind] = RecentlyWritten(ids, self._until)
        except Exception as error:  # noqa: BLE001 - publishing goes on without it
            if not self._stop.is_set():
                log.error(
                    "could not read back what was written before start (%s): a batch re-sent after this "
                    "restart may be written twice",
                    error,
                )
            return
        log.info(
            "read back %s message ids written in the last %g s, in %.1f s",
            " and ".join(f"{len(written)} {kind}" for kind, written in self.written.items()),
            self._seconds,
            time.monotonic() - started,
        )

    async def wait(self) -> None:
        if self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def _message_id(framing: Framing, value: bytes | None) -> str | None:
    """The message_id of a message as ingest writes them (current version, either framing); None for anything
    else on the topic."""
    if value is None:
        return None
    try:
        return avro.leading_ids(framing.single_object(value))[0]
    except (avro.DecodeError, SchemaRegistryUnavailable):
        return None


class Stopped(Exception):
    """The recovery was told to stop, or ran out of time."""


def read_recent_message_ids(
    kafka: KafkaSettings,
    framing: Framing,
    topic: str,
    seconds: float,
    max_messages: int,
    deadline: float,
    stop: threading.Event,
) -> set[str]:
    """The message ids on the topic written within the last `seconds`, at most `max_messages` (the newest,
    spread evenly over the partitions). Retried after a Kafka error until `deadline` (monotonic) or `stop`."""
    retrying = until_stopped(
        stop,
        f"reading back {topic}'s recent message ids",
        initial=0.1,
        cap=2,
        retry_on=KafkaException,
        deadline=deadline,
    )
    ids = retrying(_read_recent_message_ids, kafka, framing, topic, seconds, max_messages, deadline, stop)
    if ids is None:
        raise Stopped(f"stopped reading back {topic}")
    return ids


def _read_recent_message_ids(
    kafka: KafkaSettings,
    framing: Framing,
    topic: str,
    seconds: float,
    max_messages: int,
    deadline: float,
    stop: threading.Event,
) -> set[str]:
    consumer = Consumer(consumer_config(kafka, "k2-ingest-recovery", **{"enable.partition.eof": True}))
    try:
        partitions = sorted(
            consumer.list_topics(topic, timeout=CALL_TIMEOUT_SECONDS).topics[topic].partitions
        )
        per_partition = max(1, max_messages // max(1, len(partitions)))
        since_ms = int((time.time() - seconds) * 1000)
        by_time = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in partitions], CALL_TIMEOUT_SECONDS
        )
        starts = []
        for found in by_time:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, found.partition), CALL_TIMEOUT_SECONDS
            )
            first = high if found.offset < 0 else found.offset  # < 0: nothing written since
            first = max(first, high - per_partition, low)
            if first < high:
                starts.append(TopicPartition(topic, found.partition, first))
        ids: set[str] = set()
        consumer.assign(starts)
        reading = {start.partition for start in starts}
        while reading:
            if stop.is_set() or time.monotonic() >= deadline:
                raise Stopped(f"stopped reading back {topic}")
            for message in consumer.consume(POLL_MESSAGES, 1.0):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    reading.discard(message.partition())
                    continue
                message_id = _message_id(framing, message.value())
                if message_id is not None:
                    ids.add(message_id)
        return ids
    finally:
        consumer.close()
