"""Shared by the ingest tests (no tests here): the service started in-process on port 0 against the session's
real broker, a client stub, and reading a topic back exactly."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from conftest import ASX_DATA

from k2.core import avro
from k2.core.config import AuthSettings, KafkaSettings
from k2.core.kafka import DEAD_LETTER, TRADES, Topic, consumer_config, topic_name
from k2.core.records import Record
from k2.ingest.v1 import ingest_pb2_grpc
from k2.services.ingest.config import IngestSettings
from k2.services.ingest.server import IngestApp

WRITE_TOKEN = "ingest-test-write-token"
READ_TOKEN = "ingest-test-read-token"
WRITE = (("authorization", f"Bearer {WRITE_TOKEN}"),)
RETRIABLE = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


@dataclass
class Ingest:
    app: IngestApp
    stub: ingest_pb2_grpc.IngestServiceStub
    kafka: KafkaSettings

    def topic(self, topic: Topic) -> str:
        return topic_name(self.kafka, topic)

    async def records(self, topic: Topic = TRADES) -> list[Record]:
        return [avro.decode(m.value())[1] for m in await read_topic(self.kafka, self.topic(topic))]

    async def dead_letters(self) -> list[Message]:
        return await read_topic(self.kafka, self.topic(DEAD_LETTER))

    async def count(self, topic: Topic) -> int:
        return await asyncio.to_thread(topic_count, self.kafka, self.topic(topic))


@asynccontextmanager
async def running_ingest(kafka: KafkaSettings, **settings: Any) -> AsyncIterator[Ingest]:
    defaults = {
        "port": 0,
        "metrics_port": 0,
        "load_root": ASX_DATA,
        "grace_seconds": 2.0,
        "provision_topics": False,
    }
    ingest_settings = IngestSettings(**defaults | settings)
    auth = AuthSettings(write_tokens=[WRITE_TOKEN], read_tokens=[READ_TOKEN])  # type: ignore[list-item]
    app = IngestApp(ingest_settings, kafka, auth)
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Ingest(app, ingest_pb2_grpc.IngestServiceStub(channel), kafka)
    finally:
        await channel.close()
        await app.stop()


def watermarks(consumer: Consumer, topic: str, timeout: float = 15.0) -> dict[int, tuple[int, int]]:
    """(low, high) offsets per partition; right after a topic is created its leaders may still be moving."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions
            }
        except KafkaException as error:
            retriable = error.args[0].retriable() or error.args[0].code() in RETRIABLE
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def topic_count(settings: KafkaSettings, topic: str) -> int:
    """Messages on the topic now (sum of the partitions' high - low watermarks)."""
    consumer = Consumer(consumer_config(settings, f"count-{uuid.uuid4().hex}"))
    try:
        return sum(high - low for low, high in watermarks(consumer, topic).values())
    finally:
        consumer.close()


def read_topic_now(settings: KafkaSettings, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every message on the topic up to its current end, partition by partition in offset order."""
    consumer = Consumer(consumer_config(settings, f"read-{uuid.uuid4().hex}"))
    try:
        ends = watermarks(consumer, topic)
        wanted = {p: high for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in wanted])
        messages: dict[int, list[Message]] = {p: [] for p in wanted}
        remaining = sum(high - ends[p][0] for p, high in wanted.items())
        deadline = time.monotonic() + timeout
        while remaining > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {remaining} messages not read within {timeout} s")
            for message in consumer.consume(min(remaining, 10_000), timeout=1.0):
                if message.error() is not None:
                    raise RuntimeError(message.error())
                if message.offset() < wanted[message.partition()]:
                    messages[message.partition()].append(message)
                    remaining -= 1
        return [m for p in sorted(messages) for m in messages[p]]
    finally:
        consumer.close()


async def read_topic(settings: KafkaSettings, topic: str) -> list[Message]:
    return await asyncio.to_thread(read_topic_now, settings, topic)


def headers_of(message: Message) -> dict[str, bytes]:
    return dict(message.headers() or [])
