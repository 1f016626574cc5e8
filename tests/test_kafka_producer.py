"""AsyncProducer against the real broker: a batch handed over in one call lands on exactly the partitions that
producing each message would choose (per-symbol order depends on it), and every message's outcome, delivered or
refused by the broker, reaches the caller at that message's position."""

import os
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from k2.core.config import KafkaSettings
from k2.core.kafka import client_config, consumer_config, producer_config
from k2.core.producer import AsyncProducer

# Symbols are never empty (an empty key is partitioned at random, by produce() as well).
KEYS = [f"SYMBOL{i}".encode() for i in range(40)] + [b"BTCUSDT", b"ETHUSDT", b"BHP"]


def create_topic(settings: KafkaSettings, partitions: int, **config: str) -> str:
    name = f"{settings.topic_prefix}producer-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(dict(client_config(settings)))
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config)]).values():
        future.result(30)
    return name


def consumed_partitions(settings: KafkaSettings, topic: str, count: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, partition) of the first `count` messages on the topic."""
    consumer = Consumer(consumer_config(settings, f"producer-test-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    found: list[tuple[bytes, bytes, int]] = []
    try:
        for _ in range(60):
            for message in consumer.consume(count - len(found), timeout=1.0):
                assert message.error() is None, message.error()
                found.append((message.key() or b"", message.value() or b"", message.partition() or 0))
            if len(found) >= count:
                break
    finally:
        consumer.close()
    return found


async def test_a_batch_lands_on_the_partitions_produce_chooses(kafka_settings: KafkaSettings) -> None:
    together, one_by_one = create_topic(kafka_settings, 6), create_topic(kafka_settings, 6)
    keys = KEYS * 3
    values = [b"%d" % index for index in range(len(keys))]
    producer = AsyncProducer(kafka_settings)
    try:
        report = await producer.send_batch(together, keys, values)
    finally:
        await producer.close()
    assert report.errors == [None] * len(values)
    reference = Producer(producer_config(kafka_settings))
    for key, value in zip(keys, values, strict=True):
        reference.produce(one_by_one, value, key)
    assert reference.flush(30) == 0

    batched = {
        value: partition for _, value, partition in consumed_partitions(kafka_settings, together, len(values))
    }
    produced = {
        value: partition
        for _, value, partition in consumed_partitions(kafka_settings, one_by_one, len(values))
    }
    assert len(batched) == len(values) and batched == produced
    assert (
        len(set(batched.values())) == 6
    )  # the keys spread over every partition: the comparison means something


async def test_each_failure_in_a_batch_reaches_the_caller_at_its_position(
    kafka_settings: KafkaSettings,
) -> None:
    # The broker refuses record batches above the topic's max.message.bytes; the producer's limit is higher, so
    # the big messages fail at delivery, not when handed over. Their keys share no partition with the others.
    topic = create_topic(kafka_settings, 2, **{"max.message.bytes": "4096"})
    probe = AsyncProducer(kafka_settings)
    try:
        await probe.send_batch(topic, KEYS, [b"probe"] * len(KEYS))
    finally:
        await probe.close()
    partition = {
        key: partition for key, _, partition in consumed_partitions(kafka_settings, topic, len(KEYS))
    }
    small_key = next(key for key in KEYS if partition[key] == 0)
    big_key = next(key for key in KEYS if partition[key] == 1)
    big = os.urandom(20_000)  # incompressible
    keys = [small_key, big_key, small_key, small_key, big_key]
    values = [b"a", big, b"b", b"c", big + b"2"]
    producer = AsyncProducer(kafka_settings, **{"message.timeout.ms": 10_000})
    try:
        report = await producer.send_batch(topic, keys, values)
        second = await producer.send_batch(topic, [small_key], [b"d"])  # the producer goes on
    finally:
        await producer.close()
    assert [error is None for error in report.errors] == [True, False, True, True, False]
    assert all("too large" in (error or "").lower() for error in (report.errors[1], report.errors[4]))
    assert second.errors == [None]
