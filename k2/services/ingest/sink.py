"""The one way ingest writes to Kafka: v2 records → Avro messages keyed by symbol on the trades/quotes topic,
rejected input → the dead-letter topic. Every batch is one PRODUCER span; when that span is sampled (or the
caller sent baggage), each of its messages carries the span's trace context in its headers, so the writer's spans
join the publisher's trace. A sampled span names its messages in events (message_id and trade_id or quote_id), so
a trade's trace can be found by either id (`k2 trace`). Unsampled batches carry no headers (consumers skip unsampled contexts anyway), which
lets the producer hand the whole batch over in one call."""

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import baggage, trace
from opentelemetry.trace import Span, SpanKind

from k2.core import avro
from k2.core.config import KafkaSettings
from k2.core.framing import Framing
from k2.core.kafka import DEAD_LETTER, TOPIC_FOR, dead_letter_headers, topic_name
from k2.core.producer import AsyncProducer, DeliveryReport, Headers
from k2.core.records import QUOTE, TRADE, Record, RecordKind
from k2.core.telemetry import add_message_events, trace_headers
from k2.services.ingest import metrics

tracer = trace.get_tracer("k2.ingest")
RECORD_ID_ATTRIBUTES: dict[RecordKind, str] = {TRADE: "k2.trade_id", QUOTE: "k2.quote_id"}


class DeliveryError(RuntimeError):
    """Kafka refused a message that must not be lost (a dead letter)."""


@dataclass(frozen=True)
class DeadLetter:
    raw: bytes
    reason: str
    field: str
    source: str
    # Where the input came from, e.g. (("k2.dlq.file", b"/data/7078.csv"), ("k2.dlq.line", b"17")).
    context: tuple[tuple[str, bytes], ...] = ()


class KafkaSink:
    def __init__(self, settings: KafkaSettings, producer: AsyncProducer | None = None):
        self.settings = settings
        self.producer = producer or AsyncProducer(settings)
        self.framing = Framing.connect(settings)
        self.topics = {kind: topic_name(settings, topic) for kind, topic in TOPIC_FOR.items()}
        self.dead_letter_topic = topic_name(settings, DEAD_LETTER)

    async def publish_encoded(
        self, kind: RecordKind, keys: Sequence[bytes], values: Sequence[bytes]
    ) -> DeliveryReport:
        """Writes records already encoded (avro.encode) and keyed by symbol, and waits for Kafka's acks: one
        error (or None) per record, in order. While the producer's buffer is full this waits (backpressure)."""
        return await (await self.produce_encoded(kind, keys, values))

    async def produce(self, kind: RecordKind, records: Sequence[Record]) -> asyncio.Future[DeliveryReport]:
        """Hands the records to the producer and returns the awaitable of their delivery report, so the caller
        can prepare its next batch meanwhile. Batches are written in the order of the calls."""
        encode = avro.encode
        return await self.produce_encoded(
            kind,
            [record["symbol"].encode() for record in records],
            [encode(kind, record) for record in records],
        )

    async def produce_encoded(
        self, kind: RecordKind, keys: Sequence[bytes], values: Sequence[bytes]
    ) -> asyncio.Future[DeliveryReport]:
        """`produce` for records already encoded (avro.encode) and keyed by their symbol."""
        topic = self.topics[kind]
        span = _send_span(topic, len(values))
        with _ended_on_error(span):
            if span.is_recording():
                add_message_events(
                    span, (avro.leading_ids(value) for value in values), RECORD_ID_ATTRIBUTES[kind]
                )
            headers = _propagated_headers(span)
            return await self._produce(
                span,
                topic,
                keys,
                self.framing.framed(kind, values),
                None if headers is None else [headers] * len(values),
            )

    async def dead_letter(self, raw: bytes, reason: str, field: str, source: str) -> None:
        """Writes one rejected input to the dead-letter topic; returns once Kafka has it, or DeliveryError."""
        report = await (await self.produce_dead_letters([DeadLetter(raw, reason, field, source)]))
        if report.failed:
            raise DeliveryError(f"dead letter not written to {self.dead_letter_topic}: {report.errors[0]}")

    async def produce_dead_letters(self, letters: Sequence[DeadLetter]) -> asyncio.Future[DeliveryReport]:
        topic = self.dead_letter_topic
        span = _send_span(topic, len(letters))
        with _ended_on_error(span):
            trace_context = trace_headers(trace.set_span_in_context(span))
            headers = [
                dead_letter_headers(letter.reason, letter.source, letter.field)
                + list(letter.context)
                + trace_context
                for letter in letters
            ]
            return await self._produce(
                span, topic, [None] * len(letters), [letter.raw for letter in letters], headers
            )

    async def _produce(
        self,
        span: Span,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes],
        headers: Sequence[Headers] | None,
    ) -> asyncio.Future[DeliveryReport]:
        started = time.perf_counter()
        count = len(values)
        delivery = await self.producer.produce_batch(topic, keys, values, headers)
        metrics.PRODUCE_BATCHES_IN_FLIGHT.inc()

        def delivered(future: asyncio.Future[DeliveryReport]) -> None:
            metrics.PRODUCE_BATCHES_IN_FLIGHT.dec()
            seconds = time.perf_counter() - started
            metrics.KAFKA_DELIVERY_SECONDS.labels(metrics.SERVICE, topic).observe(seconds)
            if not future.cancelled():
                failed = future.result().failed
                if failed:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{failed} messages not delivered"))
                    metrics.KAFKA_MESSAGES.labels(metrics.SERVICE, topic, "failed").inc(failed)
                metrics.KAFKA_MESSAGES.labels(metrics.SERVICE, topic, "delivered").inc(count - failed)
            span.end()

        delivery.add_done_callback(delivered)
        return delivery

    def buffered(self) -> int:
        """Messages handed to the producer and not yet acknowledged by Kafka."""
        return self.producer.in_flight()

    async def close(self, timeout: float = 30.0) -> int:
        """Flushes everything produced so far; returns how many messages Kafka did not take in the timeout."""
        return await self.producer.close(timeout)


@contextmanager
def _ended_on_error(span: Span) -> Iterator[None]:
    """The span of a send that failed before its messages were handed over (it ends on delivery otherwise)."""
    try:
        yield
    except BaseException as error:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
        span.end()
        raise


def _propagated_headers(span: Span) -> Headers | None:
    """The send span's trace context and the caller's baggage as headers, or None when there is nothing a
    consumer would use: an unsampled span and no baggage."""
    context = trace.set_span_in_context(span)
    if not span.get_span_context().trace_flags.sampled and not baggage.get_all(context):
        return None
    return trace_headers(context)


def _send_span(topic: str, count: int) -> Span:
    # OpenTelemetry messaging semantic conventions for a batch send to Kafka.
    return tracer.start_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": count,
        },
    )
