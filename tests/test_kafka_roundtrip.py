"""v1 and v2 messages on one topic of the real broker: a consumer reads both as v2 records, exactly."""

import time
from datetime import UTC, datetime
from decimal import Decimal

from confluent_kafka import Consumer, Producer
from strategies import sample_quote, sample_trade

from k2.core import avro
from k2.core.config import KafkaSettings
from k2.core.kafka import (
    QUOTES,
    TOPICS,
    TRADES,
    client_config,
    consumer_config,
    producer_config,
    provision_topics,
    topic_name,
)
from k2.core.records import Record


def consume_all(
    settings: KafkaSettings, topic: str, count: int, timeout: float = 30.0
) -> list[tuple[str, Record]]:
    consumer = Consumer(consumer_config(settings, "roundtrip-test"))
    consumer.subscribe([topic])
    decoded: list[tuple[str, Record]] = []
    deadline = datetime.now(UTC).timestamp() + timeout
    try:
        while len(decoded) < count and datetime.now(UTC).timestamp() < deadline:
            for message in consumer.consume(count - len(decoded), timeout=1.0):
                assert message.error() is None, message.error()
                decoded.append(avro.decode(message.value()))
    finally:
        consumer.close()
    return decoded


def test_v1_and_v2_trades_share_a_topic_and_read_as_v2(kafka_settings: KafkaSettings) -> None:
    topic = topic_name(kafka_settings, TRADES)
    v2 = [
        sample_trade(
            message_id=f"00000000-0000-4000-8000-{i:012d}",
            trade_id=f"BINANCE-{i}",
            price=Decimal("97123.45") + i,
            quantity=Decimal("12345678901234567890.123456789012345678"),
        )
        for i in range(50)
    ]
    v1 = {
        "symbol": "BHP",
        "company_id": 7078,
        "exchange": "ASX",
        "exchange_timestamp": datetime(2014, 3, 9, 23, 5, 44, 516000, UTC),
        "price": Decimal("37.51"),
        "volume": 40000,
        "qualifiers": 3,
        "venue": "X",
        "buyer_id": None,
        "ingestion_timestamp": datetime(2014, 3, 9, 23, 5, 45, tzinfo=UTC),
        "sequence_number": 1,
    }
    producer = Producer(producer_config(kafka_settings))
    for record in v2:
        producer.produce(topic, avro.encode("trade", record), record["symbol"].encode())
    producer.produce(topic, avro.encode_with(avro.VERSIONS["trade"][0], v1), b"BHP")
    assert producer.flush(30) == 0

    received = consume_all(kafka_settings, topic, 51)
    assert len(received) == 51
    by_id = {record["trade_id"]: record for kind, record in received if kind == "trade"}
    for record in v2:
        assert by_id[record["trade_id"]] == record  # every decimal and timestamp exactly as sent
    upgraded = by_id["ASX-1"]
    assert (upgraded["symbol"], upgraded["quantity"], upgraded["price"]) == (
        "BHP",
        Decimal(40000),
        Decimal("37.51"),
    )
    assert upgraded["timestamp"] == v1["exchange_timestamp"]


def test_quotes_round_trip_with_one_sided_books(kafka_settings: KafkaSettings) -> None:
    topic = topic_name(kafka_settings, QUOTES)
    sent = [
        sample_quote(
            message_id=f"00000000-0000-4000-8000-{i:012d}",
            quote_id=f"ASX-{i}",
            ask_price=None if i % 2 else Decimal("37.51"),
            ask_quantity=None if i % 2 else Decimal(5),
        )
        for i in range(20)
    ]
    producer = Producer(producer_config(kafka_settings))
    for record in sent:
        producer.produce(topic, avro.encode("quote", record), b"BHP")
    assert producer.flush(30) == 0
    received = [record for _, record in consume_all(kafka_settings, topic, 20)]
    assert received == sent  # one key, one partition: order kept


def test_topics_are_provisioned_as_declared(kafka_settings: KafkaSettings) -> None:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(client_config(kafka_settings)).list_topics(timeout=10)
    for topic in TOPICS:
        assert len(metadata.topics[topic_name(kafka_settings, topic)].partitions) == topic.partitions


def test_provisioning_sets_replication_and_min_insync_replicas(kafka_settings: KafkaSettings) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource

    settings = kafka_settings.model_copy(
        update={
            "topic_prefix": kafka_settings.topic_prefix + "durable.",
            "replication_factor": 1,
            "min_insync_replicas": 1,
        }
    )
    assert len(provision_topics(settings)) == len(TOPICS)
    admin = AdminClient(client_config(settings))
    names = [topic_name(settings, topic) for topic in TOPICS]
    metadata = admin.list_topics(timeout=10)
    deadline = time.monotonic() + 30
    while not set(names) <= set(
        metadata.topics
    ):  # created topics reach every broker's metadata shortly after
        assert time.monotonic() < deadline, "created topics never listed"
        time.sleep(0.2)
        metadata = admin.list_topics(timeout=10)
    assert {len(p.replicas) for name in names for p in metadata.topics[name].partitions.values()} == {1}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    for future in admin.describe_configs(resources).values():
        entry = future.result(timeout=10)["min.insync.replicas"]
        assert (entry.value, entry.source) == ("1", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
