"""Reading bounded ranges of a topic: the tail of trades not yet in Iceberg (from the offsets a snapshot
recorded up to the high watermarks taken at request time), and the replay that brings a subscriber from its
position up to the live fan-out. Each range gets a short-lived consumer that assigns partitions at explicit
offsets (no consumer group), reads to the end offsets and closes."""

import logging
import threading
import uuid
from collections.abc import Callable

import pyarrow as pa
from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from k2.core.arrow import batch_decoder
from k2.core.arrow_records import arrow_schema
from k2.core.config import KafkaSettings
from k2.core.framing import Framing
from k2.core.kafka import ClientConfig, client_config, consumer_config
from k2.core.records import RecordKind
from k2.services.query.selection import Selection

Offsets = dict[int, int]
KAFKA_LOG = logging.getLogger("k2.services.query.kafka")  # librdkafka's own log lines


class OffsetsExpired(Exception):
    """A position older than what Kafka still retains."""


class KafkaAdmin:
    """Partitions and watermarks of a topic (thread-safe; calls block, run them off the event loop)."""

    def __init__(self, settings: KafkaSettings, timeout: float):
        self._admin = AdminClient(client_config(settings), logger=KAFKA_LOG)
        self._timeout = timeout

    def partitions(self, topic: str) -> list[int]:
        metadata = self._admin.list_topics(topic, timeout=self._timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(metadata.error if metadata else KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        return sorted(metadata.partitions)

    def _offsets(self, topic: str, partitions: list[int], spec: OffsetSpec) -> Offsets:
        futures = self._admin.list_offsets(
            {TopicPartition(topic, p): spec for p in partitions},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self._timeout,
        )
        return {tp.partition: future.result().offset for tp, future in futures.items()}

    def watermarks(self, topic: str) -> tuple[Offsets, Offsets]:
        """(first retained offset, last stable offset) per partition: what a read_committed consumer can read."""
        partitions = self.partitions(topic)
        first = self._offsets(topic, partitions, OffsetSpec.earliest())
        return first, self._offsets(topic, partitions, OffsetSpec.latest())


class RangeReader:
    """Messages of `topic` with start[p] <= offset < end[p], partition by partition in offset order."""

    def __init__(self, settings: KafkaSettings, topic: str, start: Offsets, end: Offsets, fetch_wait_ms: int):
        self.topic = topic
        self.end = end
        self._remaining = {p for p, offset in end.items() if start.get(p, 0) < offset}
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        if self._remaining:
            overrides: ClientConfig = {
                "enable.partition.eof": True,
                "fetch.wait.max.ms": fetch_wait_ms,
                # a start below the retained range is an error here, never a silent jump
                "auto.offset.reset": "error",
                # what a replay waiting on a slow client holds in prefetched messages, at most
                "queued.max.messages.kbytes": 4 * 1024,
                "fetch.max.bytes": 4 * 1024 * 1024,
            }
            self._consumer = Consumer(
                consumer_config(settings, f"k2-query-range-{uuid.uuid4().hex}", **overrides), logger=KAFKA_LOG
            )
            self._consumer.assign(
                [TopicPartition(topic, p, start.get(p, 0)) for p in sorted(self._remaining)]
            )

    @property
    def done(self) -> bool:
        return not self._remaining

    def _finish(self, partition: int) -> None:
        if partition in self._remaining:
            self._remaining.discard(partition)
            assert self._consumer is not None
            self._consumer.pause([TopicPartition(self.topic, partition)])

    def read(self, max_messages: int, timeout: float) -> list[Message]:
        """The next messages of the range (possibly none); `done` once every partition reached its end."""
        with self._lock:
            if self._consumer is None or not self._remaining:
                return []
            messages = self._consumer.consume(max_messages, timeout)
            taken = []
            for message in messages:
                error = message.error()
                partition = message.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        if partition is not None:
                            self._finish(
                                partition
                            )  # at the partition's current end, which is at or past `end`
                        continue
                    if error.code() == KafkaError._AUTO_OFFSET_RESET:
                        raise OffsetsExpired(f"{self.topic}[{partition}]: {error.str()}")
                    raise KafkaException(error)
                if partition not in self._remaining:
                    continue
                offset = message.offset()
                assert offset is not None  # only error events lack an offset
                if offset >= self.end[partition]:
                    self._finish(partition)
                    continue
                taken.append(message)
                if offset + 1 >= self.end[partition]:
                    self._finish(partition)
            if not messages and self._remaining:
                # transaction markers occupy offsets no message is delivered for: trust the position
                positions = self._consumer.position([TopicPartition(self.topic, p) for p in self._remaining])
                for tp in positions:
                    if tp.offset >= self.end[tp.partition]:
                        self._finish(tp.partition)
            return taken

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            self._remaining.clear()


def bounded_tail(start: Offsets, end: Offsets, most: int) -> Offsets:
    """`end` cut so that [start, end) holds at most `most` messages over all partitions, shared fairly: each
    partition gets its own range or an equal share of what the smaller ones leave, whichever is less."""
    wanted = {p: max(0, offset - start.get(p, 0)) for p, offset in end.items()}
    granted: dict[int, int] = {}
    left, open_partitions = most, sorted(wanted, key=lambda p: wanted[p])
    while open_partitions:
        share = left // len(open_partitions)
        partition = open_partitions[0]
        if wanted[partition] <= share:
            granted[partition] = wanted[partition]
            left -= wanted[partition]
            open_partitions.pop(0)
            continue
        for partition in open_partitions:
            granted[partition] = share
        break
    return {p: start.get(p, 0) + granted[p] if wanted[p] else offset for p, offset in end.items()}


def symbol_keys(selection: Selection) -> frozenset[bytes] | None:
    """Message keys of the selected symbols: the topics are keyed by symbol (k2.core.kafka), so a message with
    another key can be skipped without decoding it. None: every symbol."""
    return None if selection.symbols is None else frozenset(s.encode() for s in selection.symbols)


def read_tail_table(
    settings: KafkaSettings,
    framing: Framing,
    kind: RecordKind,
    topic: str,
    start: Offsets,
    end: Offsets,
    selection: Selection,
    columns: list[str],
    fetch_wait_ms: int,
    check: Callable[[], None],
) -> pa.Table:
    """The selected rows of the range as one Arrow table (unsorted). Messages are decoded and judged exactly as
    the writer does (k2.core.arrow.batch_decoder), so a record the writer refused is absent here as it is from Iceberg."""
    schema = arrow_schema(kind)
    tables = [schema.empty_table().select(columns)]
    reader = RangeReader(settings, topic, start, end, fetch_wait_ms)
    decoder = batch_decoder(kind, framing)
    keys = symbol_keys(selection)
    try:
        while not reader.done:
            check()  # raises when the request has run out of time
            messages = reader.read(10_000, 0.5)
            if keys is not None:
                messages = [m for m in messages if m.key() is None or m.key() in keys]
            if messages:
                decoded = decoder.decode([m.value() or b"" for m in messages]).table
                tables.append(selection.filter(decoded).select(columns))
    finally:
        reader.close()
    return pa.concat_tables(tables)
