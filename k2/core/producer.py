"""An asyncio front for confluent-kafka's Producer: a batch is awaited as one unit, acknowledged only when Kafka
has durably accepted (acks=all) or refused every message in it. The producer's buffer is bounded: when it is full,
`send_batch` waits (backpressure to the caller) instead of dropping or growing."""

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Producer

from k2.core.config import KafkaSettings
from k2.core.kafka import producer_config

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None


@dataclass
class DeliveryReport:
    """Per message of a batch: None when delivered, else the Kafka error text. Offsets for delivered ones."""

    errors: list[str | None]
    partitions: list[int]
    offsets: list[int]

    @property
    def failed(self) -> int:
        return sum(error is not None for error in self.errors)


class _BatchDelivery:
    __slots__ = ("future", "lock", "loop", "pending", "report")

    def __init__(self, size: int, future: asyncio.Future[DeliveryReport], loop: asyncio.AbstractEventLoop):
        self.report = DeliveryReport([None] * size, [-1] * size, [-1] * size)
        self.pending = size
        self.future = future
        self.loop = loop
        self.lock = threading.Lock()

    def settled(self) -> None:
        """One more message has its outcome; the last one resolves the batch. Called from the poll thread
        (deliveries) and the event loop (messages refused before sending)."""
        with self.lock:
            self.pending -= 1
            done = self.pending == 0
        if done:
            self.loop.call_soon_threadsafe(_resolve, self.future, self.report)


class AsyncProducer:
    def __init__(self, settings: KafkaSettings, **overrides: str | float):
        self._producer = Producer(producer_config(settings, **overrides))
        self._produce_lock = asyncio.Lock()
        self._stopping = threading.Event()
        # librdkafka calls delivery callbacks from poll(); one thread polls so the event loop never blocks.
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.05)

    @staticmethod
    def _on_delivery(batch: _BatchDelivery, index: int, error: KafkaError | None, message: object) -> None:
        report = batch.report
        if error is not None:
            report.errors[index] = error.str()
        else:
            report.partitions[index] = message.partition()  # type: ignore[attr-defined]
            report.offsets[index] = message.offset()  # type: ignore[attr-defined]
        batch.settled()

    async def send_batch(self, messages: Sequence[OutgoingMessage]) -> DeliveryReport:
        return await (await self.produce_batch(messages))

    async def produce_batch(self, messages: Sequence[OutgoingMessage]) -> asyncio.Future[DeliveryReport]:
        """Hands every message to the producer (waiting while its buffer is full) and returns the future of
        the batch's delivery report, so a caller can produce the next batch while this one awaits its acks.
        Batches are produced one after another, never interleaved, so their order per partition is kept.
        A message the producer refuses outright (e.g. above message.max.bytes) is that message's error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DeliveryReport] = loop.create_future()
        if not messages:
            future.set_result(DeliveryReport([], [], []))
            return future
        batch = _BatchDelivery(len(messages), future, loop)
        produce = self._producer.produce
        async with self._produce_lock:
            for index, message in enumerate(messages):
                callback = partial(self._on_delivery, batch, index)
                while True:
                    try:
                        produce(message.topic, message.value, message.key, headers=message.headers,
                                on_delivery=callback)
                        break
                    except BufferError:
                        await asyncio.sleep(0.005)  # buffer full: wait for deliveries to free space
                    except KafkaException as error:  # refused before sending, e.g. above message.max.bytes
                        batch.report.errors[index] = error.args[0].str()
                        batch.settled()
                        break
        return future

    def in_flight(self) -> int:
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        """Waits for every buffered message to be delivered or to fail; returns how many are still queued."""
        remaining: int = self._producer.flush(timeout)
        return remaining

    def close(self, timeout: float = 30.0) -> int:
        remaining = self.flush(timeout)
        self._stopping.set()
        self._poller.join(timeout=1.0)
        return remaining


def _resolve(future: asyncio.Future[DeliveryReport], report: DeliveryReport) -> None:
    if not future.done():
        future.set_result(report)
