"""An asyncio front for confluent-kafka's Producer: a batch is awaited as one unit, acknowledged only when Kafka
has durably accepted (acks=all) or refused every message in it. The producer's buffer is bounded: when it is full,
`produce_batch` waits (backpressure to the caller) instead of dropping or growing.

Delivery callbacks are served on the event loop (poll(0) every POLL_SECONDS while messages are in flight):
from a thread of its own, every callback would wait for the GIL the event loop holds.

A batch without headers is handed over in one call (Producer.produce_batch, which cannot carry headers) and has
one delivery callback for all its messages: per-message callbacks and their Python calls are most of the cost of
producing. That callback learns a failed message by its value, so a batch's values are mapped back to their
positions only when one of them failed. Messages with headers (sampled trace context, dead letters) are produced
one by one."""

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from k2.core.config import KafkaSettings
from k2.core.kafka import producer_config

Headers = Sequence[tuple[str, bytes]]
QUEUE_FULL_WAIT_SECONDS = 0.005
POLL_SECONDS = 0.001  # while messages are in flight: at most this much added to a batch's acknowledgement
IDLE_POLL_SECONDS = 1.0


@dataclass
class DeliveryReport:
    """Per message of a batch: None when delivered, else the Kafka error text."""

    errors: list[str | None]

    @property
    def failed(self) -> int:
        return len(self.errors) - self.errors.count(None)


class _BatchDelivery:
    """The outcome of one batch's messages, counted on the event loop; resolved once every message handed over
    (`expected`) has been delivered or has failed."""

    __slots__ = ("delivered", "errors", "expected", "failed_values", "future", "values")

    def __init__(self, values: Sequence[bytes], future: asyncio.Future[DeliveryReport]):
        self.values = values
        self.errors: list[str | None] = [None] * len(values)
        self.failed_values: list[tuple[bytes, str]] = []
        self.delivered = 0
        self.expected = -1  # until every message is handed over
        self.future = future

    def on_delivery(self, error: KafkaError | None, message: Any) -> None:
        """A message of the batch produced in one call: known by its value."""
        if error is not None:
            self.failed_values.append((message.value(), error.str()))
        self.delivered += 1
        if self.delivered == self.expected:
            self.resolve()

    def on_delivery_at(self, index: int, error: KafkaError | None, message: Any) -> None:
        """A message produced on its own: known by its position."""
        if error is not None:
            self.errors[index] = error.str()
        self.delivered += 1
        if self.delivered == self.expected:
            self.resolve()

    def handed_over(self, accepted: int) -> None:
        """Every message was handed over (or refused, its error already set); `accepted` are awaited."""
        self.expected = accepted
        if self.delivered == accepted:
            self.resolve()

    def resolve(self) -> None:
        if self.future.done():  # cancelled by its awaiter
            return
        if self.failed_values:
            self._place_failures()
        self.future.set_result(DeliveryReport(self.errors))

    def _place_failures(self) -> None:
        # Equal values are the same bytes of the same record: which of their positions carries an error does
        # not change what the publisher must re-send.
        positions: defaultdict[bytes, list[int]] = defaultdict(list)
        for index, value in enumerate(self.values):
            if self.errors[index] is None:
                positions[value].append(index)
        for value, error in self.failed_values:
            self.errors[positions[value].pop()] = error


class AsyncProducer:
    def __init__(self, settings: KafkaSettings, **overrides: str | float):
        self._producer = Producer(producer_config(settings, **overrides))
        self._produce_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None  # started with the first batch, on its event loop
        self._handed_over = asyncio.Event()

    async def _poll(self) -> None:
        """Serves delivery callbacks (and librdkafka's other events) until cancelled."""
        poll, in_flight = self._producer.poll, self._producer.__len__
        while True:
            poll(0)
            if in_flight():
                await asyncio.sleep(POLL_SECONDS)
            else:
                self._handed_over.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._handed_over.wait(), IDLE_POLL_SECONDS)

    async def send_batch(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes],
        headers: Sequence[Headers] | None = None,
    ) -> DeliveryReport:
        return await (await self.produce_batch(topic, keys, values, headers))

    async def produce_batch(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes],
        headers: Sequence[Headers] | None = None,
    ) -> asyncio.Future[DeliveryReport]:
        """Hands every message (keys[i], values[i], headers[i] when given) to the producer, waiting while its
        buffer is full, and returns the future of the batch's delivery report, so a caller can produce the next
        batch while this one awaits its acks. Batches are produced one after another, never interleaved, so
        their order per partition is kept. A message the producer refuses outright (e.g. above
        message.max.bytes) is that message's error."""
        if self._poller is None or self._poller.get_loop() is not asyncio.get_running_loop():
            self._poller = asyncio.create_task(self._poll(), name="kafka-producer-poll")
            self._handed_over = asyncio.Event()
        future: asyncio.Future[DeliveryReport] = asyncio.get_running_loop().create_future()
        batch = _BatchDelivery(values, future)
        async with self._produce_lock:
            if headers is None:
                refused = await self._produce_together(topic, keys, values, batch)
            else:
                refused = await self._produce_each(topic, keys, values, headers, batch)
        batch.handed_over(len(values) - refused)
        self._handed_over.set()
        return future

    async def _produce_together(
        self, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes], batch: _BatchDelivery
    ) -> int:
        messages: list[dict[str, Any]] = [
            {"key": key, "value": value} for key, value in zip(keys, values, strict=True)
        ]
        refused = 0
        start = 0
        while start < len(messages):
            pending = messages[start:] if start else messages
            accepted = self._producer.produce_batch(topic, pending, on_delivery=batch.on_delivery)
            if accepted == len(pending):
                break
            # The producer takes messages in order until its buffer is full, then refuses all the rest with
            # QUEUE_FULL: those are produced again once deliveries have freed space. Any other refusal is final.
            full_from = len(pending)
            for offset, message in enumerate(pending):
                error = message.get("_error")
                if error is None:
                    continue
                if error.code() == KafkaError._QUEUE_FULL:
                    full_from = offset
                    break
                batch.errors[start + offset] = error.str()
                refused += 1
            start += full_from
            if start < len(messages):
                for message in messages[start:]:
                    del message["_error"]  # the next call marks only what it refuses
                await asyncio.sleep(QUEUE_FULL_WAIT_SECONDS)
        return refused

    async def _produce_each(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes],
        headers: Sequence[Headers],
        batch: _BatchDelivery,
    ) -> int:
        produce = self._producer.produce
        refused = 0
        for index, (key, value, message_headers) in enumerate(zip(keys, values, headers, strict=True)):
            while True:
                try:
                    produce(
                        topic,
                        value,
                        key,
                        headers=list(message_headers),
                        on_delivery=partial(batch.on_delivery_at, index),
                    )
                    break
                except BufferError:
                    await asyncio.sleep(
                        QUEUE_FULL_WAIT_SECONDS
                    )  # buffer full: wait for deliveries to free space
                except KafkaException as error:  # refused before sending, e.g. above message.max.bytes
                    batch.errors[index] = error.args[0].str()
                    refused += 1
                    break
        return refused

    def in_flight(self) -> int:
        return len(self._producer)

    async def close(self, timeout: float = 30.0) -> int:
        """Waits for every buffered message to be delivered or to fail (their callbacks served meanwhile), then
        stops polling; returns how many are still queued."""
        deadline = time.monotonic() + timeout
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(POLL_SECONDS)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._producer.poll(0)
        return len(self._producer)
