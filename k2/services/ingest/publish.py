"""PublishTrades / PublishQuotes: each request of a stream is one batch. Items are validated one by one (a bad
item is rejected with its index, field and reason, never its whole batch), the accepted ones are written to
Kafka, and the batch is answered once Kafka acknowledged every one of them (a delivery failure is a rejection
too, with field "").

A stream is answered in order but pipelined: while batch N awaits its acks, batches N+1... (up to
max_batches_in_flight) are validated and produced, so the Python work overlaps the Kafka round trips.

Idempotency, for a batch re-sent after a lost acknowledgement:
- batch_id: the outcome of each recent batch id (per kind, in memory, within dedupe_window_bytes) is
  kept; a batch re-sent with the same id is answered with that outcome (duplicate=true) and nothing is written
  again. A copy arriving while the first is still in flight waits for the first's outcome. An empty batch_id
  opts out.
- after a restart: the message ids written just before start are read back from Kafka (recovery.py); an item
  with one of them is answered as accepted, not written again (a batch all of whose items were: duplicate=true).
  So a batch re-sent because its answer was lost with a killed ingest process lands once.
- message_id: an item without one gets an id derived from (kind, batch_id, index), not a random one, so a
  batch re-sent beyond the window, after an ingest restart or to another ingest replica is written with the
  SAME message ids, and consumers (the writer) can drop the copy by message_id. (Without a batch_id, from a
  random UUID per batch instead: the index in its last 48 bits.) A publisher that sets
  message_id keeps it (its own idempotency key, which also survives re-batching). Ingest keeps no
  per-message_id set: it would cost memory per message, and be incomplete anyway across replicas and restarts.
A delivery failure is part of the batch's outcome: re-sending the same batch id returns it again, so failed
items are re-sent in a new batch.

Tracing: the stream has no span of its own (it may stay open for hours); each request (batch) is one SERVER
span named after the method, a child of the trace context the client sent in the call's metadata (else a new
trace, sampled by the service's sampler), from receipt to the answer. The batch's Kafka send span is its child.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from cachetools import LRUCache
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind

from k2.core.producer import DeliveryReport
from k2.core.proto_avro import EncodedBatch, MessageIds, encode_quotes, encode_trades
from k2.core.records import MAX_TEXT_LENGTH, QUOTE, TRADE, RecordKind, utc_now
from k2.ingest.v1 import ingest_pb2
from k2.services.ingest import metrics
from k2.services.ingest.config import IngestSettings
from k2.services.ingest.ids import batch_message_ids
from k2.services.ingest.recovery import Recovery
from k2.services.ingest.sink import KafkaSink

SOURCE = "grpc"
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
tracer = trace.get_tracer("k2.ingest")


@dataclass(frozen=True)
class Kind:
    kind: RecordKind
    items_field: str
    encode: Callable[[Any, datetime, MessageIds], EncodedBatch]  # (request, ingestion time, message ids)
    response: Callable[..., Any]
    method: str


TRADES = Kind(TRADE, "trades", encode_trades, ingest_pb2.PublishTradesResponse, "PublishTrades")
QUOTES = Kind(QUOTE, "quotes", encode_quotes, ingest_pb2.PublishQuotesResponse, "PublishQuotes")


class BatchRefused(Exception):
    """A request that is refused as a whole; ends the stream with this status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# What a remembered batch costs besides its answer: its id (at most MAX_TEXT_LENGTH characters of UTF-8), the
# future and the cache's own entry.
ENTRY_BYTES = 4 * MAX_TEXT_LENGTH + 256


def _entry_bytes(outcome: asyncio.Future[Any]) -> int:
    if not outcome.done() or outcome.cancelled() or outcome.exception() is not None:
        return ENTRY_BYTES
    return ENTRY_BYTES + outcome.result().ByteSize()


class BatchLedger:
    """Outcomes of the most recent batch ids of one kind, held within `max_bytes` (each counted as its answer's
    size plus ENTRY_BYTES), least recently used dropped first: an answer listing 10,000 rejections weighs what it
    holds. A batch still in flight is there too (as a pending future), so a copy sent meanwhile waits for the
    first outcome."""

    def __init__(self, kind: RecordKind, max_bytes: int):
        self._outcomes: LRUCache[str, asyncio.Future[Any]] = LRUCache(max_bytes, getsizeof=_entry_bytes)
        self._held = metrics.DEDUPE_WINDOW_BYTES.labels(metrics.SERVICE, kind)

    def get(self, batch_id: str) -> asyncio.Future[Any] | None:
        return self._outcomes.get(batch_id)

    def put(self, batch_id: str, outcome: asyncio.Future[Any]) -> None:
        self._outcomes[batch_id] = outcome
        self._held.set(self._outcomes.currsize)
        outcome.add_done_callback(lambda done: self._weigh(batch_id, done))

    def _weigh(self, batch_id: str, outcome: asyncio.Future[Any]) -> None:
        """Counts the answer once there is one (setting the entry again re-sizes it, evicting past the bound)."""
        if self._outcomes.get(batch_id) is outcome:
            try:
                self._outcomes[batch_id] = outcome
            except ValueError:  # an answer larger than the whole ledger is not remembered
                del self._outcomes[batch_id]
            self._held.set(self._outcomes.currsize)

    def forget(self, batch_id: str, outcome: asyncio.Future[Any]) -> None:
        if self._outcomes.get(batch_id) is outcome:
            del self._outcomes[batch_id]
            self._held.set(self._outcomes.currsize)


class Publisher:
    def __init__(self, settings: IngestSettings, sink: KafkaSink, symbols: metrics.SymbolLabels):
        self.settings = settings
        self.sink = sink
        self.symbols = symbols
        self.ledgers = {kind: BatchLedger(kind, settings.dedupe_window_bytes) for kind in (TRADE, QUOTE)}
        self.recovery = Recovery(
            sink.settings,
            sink.framing,
            sink.topics,
            settings.publish_recovery_seconds,
            settings.publish_recovery_messages,
        )

    async def stream(
        self, kind: Kind, requests: AsyncIterator[Any], trace_context: Context | None = None
    ) -> AsyncIterator[Any]:
        """Answers a stream of batches in order; raises BatchRefused for a request refused as a whole (after
        answering the batches before it). trace_context: the caller's, parent of each batch's span."""
        depth = self.settings.max_batches_in_flight
        answers: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue(depth)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                async for request in requests:
                    # Shielded: a batch being produced when the call is cancelled is still produced whole and
                    # recorded, so the client's retry of it is answered as a duplicate.
                    await answers.put(await asyncio.shield(self._traced(kind, request, trace_context)))
            except Exception as error:  # noqa: BLE001 - whatever it is, answered after the batches before it
                failed: asyncio.Future[Any] = loop.create_future()
                failed.set_exception(error)
                await answers.put(failed)
            else:
                await answers.put(None)

        metrics.PUBLISH_STREAMS.labels(metrics.SERVICE, kind.kind).inc()
        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield await answer
        finally:
            reader.cancel()
            metrics.PUBLISH_STREAMS.labels(metrics.SERVICE, kind.kind).dec()

    async def _traced(self, kind: Kind, request: Any, trace_context: Context | None) -> asyncio.Future[Any]:
        """_start within the batch's span, which ends with the batch's answer."""
        # Named as the gRPC instrumentation names the spans of the other calls ("/<service>/<method>").
        span = tracer.start_span(f"/{SERVICE_NAME}/{kind.method}", trace_context, SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(
                {
                    "rpc.system": "grpc",
                    "rpc.service": SERVICE_NAME,
                    "rpc.method": kind.method,
                    "k2.batch.id": request.batch_id,
                    "k2.batch.items": len(getattr(request, kind.items_field)),
                }
            )
        # The caller's context too, so its baggage reaches the records' headers with the send span's context.
        token = otel_context.attach(trace.set_span_in_context(span, trace_context))
        try:
            answer = await self._start(kind, request)
        except BaseException as error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
            span.end()
            raise
        finally:
            otel_context.detach(token)
        answer.add_done_callback(lambda done: _end_batch_span(span, done))
        return answer

    async def _start(self, kind: Kind, request: Any) -> asyncio.Future[Any]:
        """Validates and produces one batch; returns the future of its answer (resolved on Kafka's acks)."""
        items = getattr(request, kind.items_field)
        batch_id = request.batch_id
        if len(items) > self.settings.max_batch_items:
            metrics.PUBLISH_BATCHES.labels(metrics.SERVICE, kind.kind, "refused").inc()
            raise BatchRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch {batch_id!r} has {len(items)} {kind.items_field}; at most "
                f"{self.settings.max_batch_items} per request",
            )
        if len(batch_id) > MAX_TEXT_LENGTH:
            metrics.PUBLISH_BATCHES.labels(metrics.SERVICE, kind.kind, "refused").inc()
            raise BatchRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"batch_id longer than {MAX_TEXT_LENGTH} characters"
            )
        ledger = self.ledgers[kind.kind]
        if batch_id:
            earlier = ledger.get(batch_id)
            if earlier is not None:
                metrics.PUBLISH_BATCHES.labels(metrics.SERVICE, kind.kind, "duplicate").inc()
                return _as_duplicate(earlier)

        encoded = kind.encode(
            request, utc_now(), batch_message_ids(kind.kind, batch_id) if batch_id else MessageIds.random()
        )
        self.symbols.count_received_per_symbol(SOURCE, kind.kind, encoded.symbols)
        keys, values, indexes = encoded.keys, encoded.values, encoded.indexes
        rejections = [
            ingest_pb2.Rejection(index=index, field=error.field, reason=error.reason)
            for index, error in encoded.rejected
        ]
        metrics.count_rejected(SOURCE, kind.kind, "invalid", (r.field for r in rejections))
        await self.recovery.wait()
        written = self.recovery.written[kind.kind].written(values)
        written_before = 0
        if written is not None:  # a re-sent batch whose first copy a previous ingest process wrote
            written_before = sum(written)
            metrics.PUBLISH_ITEMS_WRITTEN_BEFORE.labels(metrics.SERVICE, kind.kind).inc(written_before)
            fresh = [position for position, done in enumerate(written) if not done]
            keys, values, indexes = (
                [keys[p] for p in fresh],
                [values[p] for p in fresh],
                [indexes[p] for p in fresh],
            )
        delivery = await self.sink.produce_encoded(kind.kind, keys, values)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if batch_id:
            ledger.put(batch_id, answer)

        def delivered(report: asyncio.Future[DeliveryReport]) -> None:
            try:
                answer.set_result(
                    _answer(kind, batch_id, indexes, rejections, report.result(), written_before)
                )
            except Exception as error:  # noqa: BLE001 - the stream waits on this answer: never leave it pending
                ledger.forget(batch_id, answer)
                answer.set_exception(error)

        delivery.add_done_callback(delivered)
        metrics.PUBLISH_BATCHES.labels(metrics.SERVICE, kind.kind, "published").inc()
        return answer


def _answer(
    kind: Kind,
    batch_id: str,
    indexes: Sequence[int],
    rejections: list[Any],
    report: DeliveryReport,
    written_before: int,
) -> Any:
    """The batch's answer once Kafka has answered for each item written (`indexes`); `written_before` more
    were accepted without writing them, Kafka had them already."""
    failed = (
        [
            ingest_pb2.Rejection(index=indexes[position], field="", reason=f"not written to Kafka: {error}")
            for position, error in enumerate(report.errors)
            if error is not None
        ]
        if report.failed
        else []
    )
    metrics.MESSAGES_ACCEPTED.labels(metrics.SERVICE, SOURCE, kind.kind).inc(len(indexes) - len(failed))
    if failed:
        metrics.count_rejected(SOURCE, kind.kind, "not_delivered", ("" for _ in failed))
        rejections = sorted(rejections + failed, key=lambda rejection: rejection.index)
    return kind.response(
        batch_id=batch_id,
        accepted=len(indexes) - len(failed) + written_before,
        rejections=rejections,
        duplicate=bool(written_before) and not indexes,
    )


def _end_batch_span(span: Span, answer: asyncio.Future[Any]) -> None:
    if span.is_recording():
        if answer.cancelled() or answer.exception() is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "the batch was not answered"))
        else:
            result = answer.result()
            span.set_attributes(
                {
                    "k2.batch.accepted": result.accepted,
                    "k2.batch.rejected": len(result.rejections),
                    "k2.batch.duplicate": result.duplicate,
                }
            )
    span.end()


def _as_duplicate(earlier: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """The first copy's answer, once it has one, marked duplicate."""
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def copy(outcome: asyncio.Future[Any]) -> None:
        if outcome.cancelled() or outcome.exception() is not None:  # the copy fails as the first did
            answer.set_exception(outcome.exception() or asyncio.CancelledError())
            return
        duplicate = type(outcome.result())()
        duplicate.CopyFrom(outcome.result())
        duplicate.duplicate = True
        answer.set_result(duplicate)

    earlier.add_done_callback(copy)
    return answer
