"""Between the socket readers and Kafka: a bounded buffer of parsed records and the publisher that empties it.

Readers append parsed records, already encoded as Kafka messages, to the buffer without awaiting anything; when the buffer holds
`capacity` records they stop reading (the WebSocket's own receive queue then fills and the socket is no
longer read: TCP backpressure towards the exchange). The publisher takes batches of up to `batch_size`
records per kind, publishes them through the sink (which returns once Kafka has acknowledged them) and
retries whatever Kafka refused, up to `attempts` times with backoff: a record still refused then goes to the
dead-letter topic with the reason (a record Kafka never takes must not stall the feed), and a dead letter still
refused after as many attempts is counted and logged as lost. Nothing grows without bound.

Tracing: each batch is one CONSUMER span "receive binance <kind>s" (a new trace, sampled by the service's
sampler) from the receipt of its first record until Kafka acknowledged all of it; each attempt's Kafka send span
is its child.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from k2.core.producer import DeliveryReport
from k2.core.records import QUOTE, TRADE, RecordKind

from .resilience import Backoff

log = logging.getLogger(__name__)
DeadLetter = tuple[bytes, str, str, str]  # raw payload, reason, field, source
# A parsed record as its Kafka message: key, value (avro.encode's bytes), and when it was received (µs since 1970).
Message = tuple[bytes, bytes, int]
tracer = trace.get_tracer("k2.ingest.binance")


class RecordSink(Protocol):
    """What the feed publishes through (the ingest service's KafkaSink)."""

    async def publish_encoded(
        self, kind: RecordKind, keys: Sequence[bytes], values: Sequence[bytes]
    ) -> DeliveryReport: ...

    async def dead_letter(self, raw: bytes, reason: str, field: str, source: str) -> None: ...


class PublishBuffer:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.trades: list[Message] = []
        self.quotes: list[Message] = []
        self.dead_letters: list[DeadLetter] = []
        self._space = asyncio.Event()

    def size(self) -> int:
        return len(self.trades) + len(self.quotes) + len(self.dead_letters)

    def full(self) -> bool:
        return len(self.trades) + len(self.quotes) + len(self.dead_letters) >= self.capacity

    async def wait_for_space(self) -> None:
        while self.full():
            self._space.clear()
            await self._space.wait()

    def take(self, limit: int) -> tuple[list[Message], list[Message], list[DeadLetter]]:
        trades, self.trades = self.trades[:limit], self.trades[limit:]
        quotes, self.quotes = self.quotes[:limit], self.quotes[limit:]
        dead_letters, self.dead_letters = self.dead_letters, []
        self._space.set()
        return trades, quotes, dead_letters


class Publisher:
    def __init__(
        self,
        sink: RecordSink,
        buffer: PublishBuffer,
        batch_size: int,
        linger: float,
        backoff: Backoff,
        attempts: int,
    ):
        self.sink = sink
        self.buffer = buffer
        self.batch_size = batch_size
        self.linger = linger
        self.backoff = backoff
        self.attempts = attempts
        self.published: Counter[str] = Counter()  # trade, quote, dead_letter → acknowledged by Kafka
        self.undeliverable: Counter[str] = Counter()  # refused `attempts` times: dead_lettered, lost
        self.retries = 0
        self.in_flight = 0

    async def run(self, draining: asyncio.Event) -> None:
        """Publishes until `draining` is set and everything buffered is acknowledged."""
        buffer = self.buffer
        while True:
            if buffer.size() < self.batch_size:
                if draining.is_set():
                    if not buffer.size():
                        return
                else:
                    await asyncio.sleep(self.linger)
            trades, quotes, dead_letters = buffer.take(self.batch_size)
            self.in_flight = len(trades) + len(quotes) + len(dead_letters)
            if not self.in_flight:
                continue
            deliveries = [
                self._deliver(kind, messages)
                for kind, messages in ((TRADE, trades), (QUOTE, quotes))
                if messages
            ]
            await asyncio.gather(*deliveries, *(self._dead_letter(item) for item in dead_letters))
            self.in_flight = 0

    async def _deliver(self, kind: RecordKind, messages: list[Message]) -> None:
        with tracer.start_as_current_span(
            f"receive binance {kind}s", kind=SpanKind.CONSUMER, start_time=messages[0][2] * 1000
        ) as span:
            if span.is_recording():
                span.set_attributes(
                    {
                        "messaging.operation.type": "receive",
                        "messaging.batch.message_count": len(messages),
                        "k2.feed": "binance",
                    }
                )
            await self._deliver_batch(kind, messages)

    async def _tries(self) -> AsyncIterator[int]:
        """Attempt numbers, `attempts` of them, with the backoff slept before each retry."""
        for attempt in range(self.attempts):
            if attempt:
                self.retries += 1
                await asyncio.sleep(self.backoff.delay(attempt - 1))
            yield attempt

    async def _deliver_batch(self, kind: RecordKind, messages: list[Message]) -> None:
        error = ""
        async for _ in self._tries():
            try:
                report = await self.sink.publish_encoded(
                    kind, [m[0] for m in messages], [m[1] for m in messages]
                )
            except Exception as failure:  # noqa: BLE001 - whatever the sink raised, the records are retried
                error = str(failure)
                log.error("binance: publishing %d %s record(s) failed: %s", len(messages), kind, error)
                continue
            failed = [m for m, e in zip(messages, report.errors, strict=True) if e is not None]
            self.published[kind] += len(messages) - len(failed)
            if not failed:
                return
            error = next(e for e in report.errors if e is not None)
            log.error(
                "binance: Kafka refused %d of %d %s record(s) (%s)", len(failed), len(messages), kind, error
            )
            messages = failed
        log.error(
            "binance: %d %s record(s) refused %d times; dead-lettering them",
            len(messages),
            kind,
            self.attempts,
        )
        reason = f"Kafka refused the {kind} {self.attempts} times: {error}"
        await asyncio.gather(
            *(
                self._dead_letter((value, reason, "", f"binance:{kind}"), undeliverable=True)
                for _, value, _ in messages
            )
        )

    async def _dead_letter(self, item: DeadLetter, undeliverable: bool = False) -> None:
        async for _ in self._tries():
            try:
                await self.sink.dead_letter(*item)
            except Exception as error:  # noqa: BLE001 - whatever the sink raised, the frame is retried
                log.error("binance: dead-lettering a frame failed: %s", error)
                continue
            self.published["dead_letter"] += 1
            if undeliverable:
                self.undeliverable["dead_lettered"] += 1
            return
        self.undeliverable["lost"] += 1
        log.error(
            "binance: a %s record was lost: neither its topic nor the dead-letter topic took it (%s)",
            item[3],
            item[1],
        )

    def unpublished(self) -> int:
        return self.buffer.size() + self.in_flight
