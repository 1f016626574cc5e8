"""The consume loop: one thread reads the trade and quote topics as a member of the writer group, decodes each
batch of messages into Arrow, dead-letters what cannot become a row, and commits each table's buffer when it
is full or old enough.

Positions come from the tables: on every assignment the writer seeks each partition to the offset its table
records (or the partition's start when none is recorded); the group's committed offsets are written only so
that lag tools see progress. On revocation, buffered rows of the revoked partitions are discarded: the new
owner re-reads them from the offsets the table records, and nothing waits for a commit inside a rebalance.
Any error (a commit given up, a dead letter not acknowledged, the catalog unreachable) discards every buffer
and re-seeks every assigned partition to its table's offsets, so processing restarts from the source of truth.
"""

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from opentelemetry import trace
from opentelemetry.trace import Link, Span
from pyiceberg.table import Table

from k2.core.arrow import DecodedBatch, Rejection
from k2.core.config import KafkaSettings
from k2.core.framing import Framing
from k2.core.iceberg import committed_offsets
from k2.core.kafka import (
    DEAD_LETTER,
    TOPIC_FOR,
    consumer_config,
    dead_letter_headers,
    producer_config,
    topic_name,
)
from k2.core.records import RecordKind
from k2.core.telemetry import MessageTrace, links_to, messaging_span, sampled_message_traces

from . import metrics
from .config import WriterSettings
from .decoding import Decoders
from .dedupe import SeenIds
from .tables import OFFSET_COLUMN, PARTITION_COLUMN, CommitResult, PartitionProgress, TableAppender

log = logging.getLogger(__name__)
DEAD_LETTER_SOURCE = "writer"
MAX_ERROR_BACKOFF_SECONDS = 30.0
MAX_COMMIT_LINKS = 100  # producer traces a commit covers in its spans (links, and a hop per trace), at most
tracer = trace.get_tracer(__name__)
T = TypeVar("T")


class DeadLetterError(RuntimeError):
    """A dead letter was not acknowledged: the offsets covering it must not be committed."""


class DeadLetters:
    """Sends rejected messages to the dead-letter topic; `confirm` waits until all sent so far are
    acknowledged."""

    def __init__(self, kafka: KafkaSettings):
        self.topic = topic_name(kafka, DEAD_LETTER)
        self._producer = Producer(producer_config(kafka))
        self._failures: list[str] = []
        self.acknowledged = 0

    def _on_delivery(self, error: KafkaError | None, _: Message) -> None:
        if error is None:
            self.acknowledged += 1
        else:
            self._failures.append(error.str())

    def send(
        self, value: bytes | None, rejection: Rejection, topic: str, partition: int, offset: int
    ) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            *dead_letter_headers(
                rejection.reason,
                DEAD_LETTER_SOURCE,
                rejection.field,
                topic=topic,
                partition=partition,
                offset=offset,
            )
        ]
        while True:
            try:
                self._producer.produce(self.topic, value, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:  # the local queue is full: serve deliveries to free it
                self._producer.poll(0.1)
        metrics.DEAD_LETTERED.labels(metrics.SERVICE, topic, rejection.category).inc()

    def poll(self) -> None:
        self._producer.poll(0)

    def confirm(self, timeout: float) -> None:
        remaining = self._producer.flush(timeout)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DeadLetterError(
                f"dead letters not acknowledged: {remaining} pending, failures: {failures[:3]}"
            )

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)


def without_partitions(rows: pa.Table, partitions: set[int]) -> pa.Table:
    return rows.filter(pc.invert(pc.is_in(rows[PARTITION_COLUMN], pa.array(sorted(partitions), pa.int32()))))


class TableBuffer:
    """One table's decoded rows awaiting commit and the span of each assigned partition of its topic."""

    def __init__(self, kind: RecordKind, topic: str, appender: TableAppender, seen: SeenIds):
        self.kind = kind
        self.topic = topic
        self.appender = appender
        self.seen = seen
        self.chunks: list[pa.Table] = []
        self.rows = 0
        self.nbytes = 0
        self.oldest: float | None = None  # monotonic time of the oldest uncommitted message
        self.progress: dict[int, PartitionProgress] = {}
        # sampled producer traces of the buffered messages, each with the process span that consumed it
        self.traces: list[tuple[MessageTrace, Span]] = []

    @property
    def table(self) -> Table:
        return self.appender.table

    def add(self, chunk: pa.Table) -> None:
        chunk, duplicates = self.seen.drop_seen(chunk)
        if duplicates:
            metrics.DUPLICATES_DROPPED.labels(metrics.SERVICE, self.appender.name).inc(duplicates)
        self.chunks.append(chunk)
        self.rows += chunk.num_rows
        self.nbytes += chunk.nbytes

    def buffered(self) -> pa.Table | None:
        if not self.chunks:
            return None
        return self.chunks[0] if len(self.chunks) == 1 else pa.concat_tables(self.chunks)

    def due(self, now: float, settings: WriterSettings) -> bool:
        if self.oldest is None:
            return False
        return (
            self.rows >= settings.commit_rows
            or self.nbytes >= settings.commit_bytes
            or (now - self.oldest) * 1000 >= settings.commit_interval_ms
        )

    def _clear_rows(self) -> None:
        self.chunks, self.rows, self.nbytes = [], 0, 0
        metrics.BUFFERED_ROWS.labels(metrics.SERVICE, self.appender.name).set(0)

    def committed(self, result: CommitResult) -> None:
        for partition, span in self.progress.items():
            if span.next is not None:
                span.start = result.offsets.get(partition, span.start)
        self.seen.committed(self.buffered())
        self._clear_rows()
        self.oldest = None
        self.traces = []

    def discard(self, partitions: set[int]) -> None:
        """Forgets the partitions and their buffered rows (revoked, or lost)."""
        for partition in partitions:
            self.progress.pop(partition, None)
        if self.chunks and partitions:
            rows = self.buffered()
            assert rows is not None
            kept = without_partitions(rows, partitions)
            self._clear_rows()
            self.seen.forget_buffered(kept)
            if kept.num_rows:
                self.chunks.append(kept)
                self.rows, self.nbytes = kept.num_rows, kept.nbytes
        if not self.chunks and not any(span.pending for span in self.progress.values()):
            self.oldest = None

    def reset(self) -> None:
        self.progress.clear()
        self._clear_rows()
        self.seen.forget_buffered(None)
        self.oldest = None
        self.traces = []


@dataclass
class LastCommit:
    time: float  # epoch seconds
    rows: int
    bytes: int


@dataclass
class _Decoding:
    """A batch of one topic's messages being decoded, with the partition spans it was read in."""

    buffer: TableBuffer
    values: list[bytes | None]  # None: a tombstone
    partitions: list[int]
    offsets: list[int]
    spans: dict[int, PartitionProgress]  # by partition: still the buffer's span when applied, or stale
    decoded: Future[DecodedBatch]
    traces: list[MessageTrace]
    trace_spans: list[Span]  # a CONSUMER span per sampled producer trace, ended once the batch is buffered


class WriterLoop:
    """The consume loop's thread, and the commands (flush, stop) other threads hand it."""

    def __init__(self, settings: WriterSettings, kafka: KafkaSettings, tables: dict[RecordKind, Table]):
        self.settings = settings
        framing = Framing.connect(kafka)
        self.buffers = {}
        for kind, table in tables.items():
            topic = topic_name(kafka, TOPIC_FOR[kind])
            seen = SeenIds(settings.dedupe_window_seconds, settings.dedupe_max_ids)
            self.buffers[topic] = TableBuffer(kind, topic, TableAppender(table, topic, settings), seen)
        overrides: dict[str, str | int | float] = {
            "partition.assignment.strategy": settings.assignment_strategy,
            "session.timeout.ms": settings.session_timeout_ms,
            "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 4),
        }
        self.consumer = Consumer(consumer_config(kafka, settings.group_id, **overrides))
        self._cooperative = settings.assignment_strategy == "cooperative-sticky"
        self.dead_letters = DeadLetters(kafka)
        self.decoders = Decoders(settings.decode_processes, framing)
        self._decoding: deque[_Decoding] = deque()
        self._max_decoding = max(2, 2 * settings.decode_processes)
        self.last_commit: LastCommit | None = None
        self._commands: queue.Queue[tuple[Callable[[], object], Future[object]]] = queue.Queue()
        self._stopping = threading.Event()
        self._rewind_needed = False
        self._restart_decoders = False
        self._thread = threading.Thread(target=self._run, name="writer-consume", daemon=True)

    # -- other threads

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: Callable[[], object]) -> Future[object]:
        """Runs `command` on the loop's thread between two consume calls."""
        future: Future[object] = Future()
        self._commands.put((command, future))
        return future

    def serialized(self, command: Callable[[], T], timeout: float = 300.0) -> T:
        """Runs `command` on the loop's thread, between two of its commits, and returns its result; here when the
        loop is not running (a table commit made this way never races the loop's own commits)."""
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return command()
        return cast(T, self.submit(command).result(timeout))

    def flush(self) -> Future[object]:
        """Commits everything consumed so far."""

        def flush() -> list[CommitResult]:
            self._apply_decoded(wait=True)
            return self.commit_all()

        return self.submit(flush)

    def stop(self, timeout: float = 60.0) -> None:
        """Commits what is buffered, leaves the group and ends the thread."""
        self._stopping.set()
        self._thread.join(timeout)

    # -- the loop's thread

    def _run(self) -> None:
        self.consumer.subscribe(
            list(self.buffers), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        backoff = 0.0
        while not self._stopping.is_set():
            try:
                if self._rewind_needed:
                    self._rewind()
                self._serve_commands()
                messages = self.consumer.consume(self.settings.consume_batch, timeout=0.1)
                if self._rewind_needed:
                    continue  # read from positions the tables did not set: dropped, the rewind re-reads them
                if messages:
                    self._take(messages)
                self._apply_decoded(wait=len(self._decoding) > self._max_decoding)
                self.dead_letters.poll()
                self._commit_due()
                backoff = 0.0
            except Exception as error:
                log.exception("writer loop failed; re-reading from the tables' offsets")
                metrics.REWINDS.labels(metrics.SERVICE, type(error).__name__).inc()
                self._restart_decoders |= isinstance(error, BrokenProcessPool)
                self._rewind_needed = True
                backoff = min(max(0.5, backoff * 2), MAX_ERROR_BACKOFF_SECONDS)
                self._stopping.wait(backoff)
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            if not self._rewind_needed:
                self._apply_decoded(wait=True)
                self.commit_all()
        except Exception:  # whatever failed, stopping goes on: the tables' offsets are the truth
            log.exception("final commit failed; the next writer re-reads from the tables' offsets")
        self._serve_commands()
        self.consumer.close()
        self.dead_letters.close(10.0)
        self.decoders.close()

    def _serve_commands(self) -> None:
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(command())
            except Exception as error:  # noqa: BLE001 - handed to the caller, who re-raises it
                future.set_exception(error)

    def _table_offsets(self) -> dict[str, dict[int, int]]:
        """The offsets each table records, its committed message_ids re-read alongside."""
        offsets = {}
        for topic, buffer in self.buffers.items():
            buffer.table.refresh()
            offsets[topic] = committed_offsets(buffer.table).get(topic, {})
            buffer.seen.rebuild(buffer.table)
        return offsets

    def _position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Starts a new span for each partition at the offset its table records."""
        offsets = self._table_offsets()
        positioned = []
        for tp in partitions:
            recorded = offsets[tp.topic].get(tp.partition)
            self.buffers[tp.topic].progress[tp.partition] = PartitionProgress(recorded)
            positioned.append(
                TopicPartition(tp.topic, tp.partition, recorded if recorded is not None else OFFSET_BEGINNING)
            )
        return positioned

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            positioned = self._position(partitions)
        except Exception:
            log.exception("could not read the tables' offsets for %d assigned partitions", len(partitions))
            self._rewind_needed = True
            positioned = partitions
        else:
            log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in positioned))
        if self._cooperative:
            consumer.incremental_assign(positioned)
        else:
            consumer.assign(positioned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        for topic, buffer in self.buffers.items():
            buffer.discard({tp.partition for tp in partitions if tp.topic == topic})

    def _rewind(self) -> None:
        """Drops every buffer and seeks every assigned partition to the offset its table records."""
        for decoding in self._decoding:
            for span in decoding.trace_spans:
                span.end()
        self._decoding.clear()
        if self._restart_decoders:
            self.decoders.restart()
            self._restart_decoders = False
        assignment = self.consumer.assignment()
        for buffer in self.buffers.values():
            buffer.reset()
        if assignment:
            positioned = self._position(assignment)
            if self._cooperative:
                self.consumer.incremental_unassign(assignment)
                self.consumer.incremental_assign(positioned)
            else:
                self.consumer.assign(positioned)
        self._rewind_needed = False

    def _take(self, messages: list[Message]) -> None:
        """Hands each topic's messages to the decoders."""
        # topic: values, partitions, offsets, headers
        grouped: dict[Any, tuple[list[Any], list[Any], list[Any], list[Any]]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer: %s", error.str())
                continue
            topic = message.topic()
            lists = grouped.get(topic)
            if lists is None:
                lists = grouped[topic] = ([], [], [], [])
            lists[0].append(message.value())
            lists[1].append(message.partition())
            lists[2].append(message.offset())
            lists[3].append(message.headers())
        for topic, (values, partitions, offsets, headers) in grouped.items():
            buffer = self.buffers[topic]
            spans = {partition: buffer.progress.get(partition) for partition in set(partitions)}
            if None in spans.values():
                raise RuntimeError(
                    f"{topic}: messages of unassigned partitions "
                    f"{sorted(p for p, span in spans.items() if span is None)}"
                )
            metrics.MESSAGES_CONSUMED.labels(metrics.SERVICE, topic).inc(len(values))
            decoded = self.decoders.submit(buffer.kind, values)
            traces = sampled_message_traces(headers)
            trace_spans = [
                messaging_span(
                    tracer,
                    f"process {topic}",
                    found,
                    operation="process",
                    topic=topic,
                    partition=partitions[found.first],
                    offset=offsets[found.first],
                    group=self.settings.group_id,
                )
                for found in traces
            ]
            self._decoding.append(
                _Decoding(
                    buffer,
                    values,
                    partitions,
                    offsets,
                    spans,  # type: ignore[arg-type]
                    decoded,
                    traces,
                    trace_spans,
                )
            )

    def _apply_decoded(self, wait: bool) -> None:
        """Buffers the decoded batches in the order they were read (all of them when `wait`)."""
        while self._decoding and (wait or self._decoding[0].decoded.done()):
            self._apply(self._decoding.popleft())

    def _apply(self, decoding: _Decoding) -> None:
        try:
            batch = decoding.decoded.result()
        finally:
            for span in decoding.trace_spans:
                span.end()
        buffer = decoding.buffer
        partitions, offsets = decoding.partitions, decoding.offsets
        # Partitions revoked or re-positioned since these messages were read are no longer this span's.
        stale = {p for p, span in decoding.spans.items() if buffer.progress.get(p) is not span}
        for rejection in batch.rejected:
            index = rejection.index
            if partitions[index] not in stale:
                self.dead_letters.send(
                    decoding.values[index], rejection, buffer.topic, partitions[index], offsets[index]
                )
        if batch.table.num_rows:
            rows = batch.rows
            chunk = batch.table.append_column(
                PARTITION_COLUMN, pa.array(partitions, pa.int32()).take(rows)
            ).append_column(OFFSET_COLUMN, pa.array(offsets, pa.int64()).take(rows))
            if stale:
                chunk = without_partitions(chunk, stale)
            buffer.add(chunk)
            metrics.BUFFERED_ROWS.labels(metrics.SERVICE, buffer.appender.name).set(buffer.rows)
        for partition, offset in dict(zip(partitions, offsets, strict=True)).items():
            if partition not in stale:
                decoding.spans[partition].next = offset + 1
        if buffer.oldest is None and len(stale) < len(decoding.spans):
            buffer.oldest = time.monotonic()
        if len(buffer.traces) < MAX_COMMIT_LINKS:
            buffer.traces += list(zip(decoding.traces, decoding.trace_spans, strict=True))[
                : MAX_COMMIT_LINKS - len(buffer.traces)
            ]

    def _commit_due(self) -> None:
        now = time.monotonic()
        for buffer in self.buffers.values():
            if buffer.due(now, self.settings):
                self._commit(buffer)

    def commit_all(self) -> list[CommitResult]:
        return [self._commit(buffer) for buffer in self.buffers.values()]

    def _commit(self, buffer: TableBuffer) -> CommitResult:
        if buffer.oldest is None:
            return CommitResult(buffer.appender.name, 0, 0, 0, 0)
        self.dead_letters.confirm(timeout=30.0)  # dead letters are acknowledged before their offsets commit
        if buffer.traces:
            result = self._traced_commit(buffer)
        else:
            result = buffer.appender.commit(buffer.buffered(), buffer.progress)
        buffer.committed(result)
        if result.snapshot_id:
            self.last_commit = LastCommit(time.time(), result.rows, result.bytes)
            if result.oldest_ingestion_us is not None:
                metrics.VISIBILITY_DELAY.labels(metrics.SERVICE, result.table).observe(
                    max(0.0, time.time() - result.oldest_ingestion_us / 1e6)
                )
        owned = [
            TopicPartition(buffer.topic, partition, offset)
            for partition, offset in result.offsets.items()
            if partition in buffer.progress
        ]
        if owned:  # for lag tools only; positions always come from the table
            try:
                self.consumer.commit(offsets=owned, asynchronous=True)
            except KafkaException as error:
                log.debug("group offset commit: %s", error)
        return result

    def _traced_commit(self, buffer: TableBuffer) -> CommitResult:
        """A commit covering sampled traffic. Its span is a child of the first covered message's process span and
        links to every covered producer trace. Each other covered trace gets a span of its own for the same
        commit (same name, times and attributes, a child of that trace's process span, linking to the commit's
        span), so every trade's trace reads publish → send → process → commit, not only the first's: a link is
        shown only from the span that holds it."""
        name = f"{buffer.appender.name} commit"
        attributes: dict[str, str | int] = {
            "db.system": "iceberg",
            "db.collection.name": buffer.appender.name,
        }
        first, first_process = buffer.traces[0]
        started = time.time_ns()
        with tracer.start_as_current_span(
            name,
            context=trace.set_span_in_context(first_process, first.context),
            start_time=started,
            links=links_to(found for found, _ in buffer.traces),
            attributes=attributes,
        ) as span:
            result = buffer.appender.commit(buffer.buffered(), buffer.progress)
            attributes |= {"k2.rows": result.rows, "k2.snapshot_id": result.snapshot_id}
            span.set_attributes(attributes)
        ended = time.time_ns()
        commit_link = [Link(span.get_span_context())]
        hops = {first.span_context.trace_id}
        for found, process in buffer.traces[1:]:
            trace_id = found.span_context.trace_id
            if trace_id not in hops:  # one hop per trace, however many of its contexts the commit covers
                hops.add(trace_id)
                tracer.start_span(
                    name,
                    context=trace.set_span_in_context(process, found.context),
                    start_time=started,
                    links=commit_link,
                    attributes=attributes,
                ).end(ended)
        return result
