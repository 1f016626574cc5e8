"""Registry framing (k2.core.framing): Confluent's wire format, with the schemas in a real schema registry (Apicurio
Registry, scripts/registry.sh). What ingest publishes with a registry is read by Confluent's own Avro deserializer
and schema-registry client; the writer and the query service read topics mixing both framings, and refuse (dead
letter) a registry id that names no K2 schema version."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from conftest import free_port
from strategies import KNOWN_IDS
from test_ingest_publish import START, batch, expected_trade, requests, trade
from test_ingest_support import WRITE, headers_of, read_topic, running_ingest
from test_query_harness import T0, running_service, trades
from test_query_subscriptions import assert_exactly_once_in_order, receive, ts
from test_writer_service import trades_table, wait_caught_up

from k2.core import avro
from k2.core.arrow import UNDECODABLE, batch_decoder
from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.framing import SINGLE_OBJECT, Framing, SchemaRegistryUnavailable, registry_header
from k2.core.kafka import DEAD_LETTER, DLQ_REASON, TOPIC_FOR, TRADES, producer_config, topic_name
from k2.core.records import QUOTE, TRADE, Record
from k2.ingest.v1 import ingest_pb2
from k2.marketdata.v1.marketdata_pb2 import AssetClass, Quote
from k2.query.v1 import query_pb2
from k2.services.query.convert import decode_plain
from k2.services.writer.config import WriterSettings
from k2.services.writer.server import WriterApp
from k2.writer.v1 import writer_pb2_grpc

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
FOREIGN = {"type": "record", "name": "Foreign", "fields": [{"name": "x", "type": "long"}]}
V1_TRADE = {
    "symbol": "BHP",
    "company_id": 7078,
    "exchange": "ASX",
    "exchange_timestamp": T0 + timedelta(hours=1),
    "price": Decimal("37.51"),
    "volume": 40000,
    "qualifiers": 3,
    "venue": "X",
    "buyer_id": None,
    "ingestion_timestamp": T0 + timedelta(hours=1),
    "sequence_number": 1,
}


@pytest.fixture
def registry_kafka(kafka_settings: KafkaSettings, schema_registry: str) -> KafkaSettings:
    """The test's topics, framed for the session's schema registry."""
    return kafka_settings.model_copy(update={"schema_registry_url": schema_registry})


def test_registry_framing_needs_a_registry_to_be_read() -> None:
    value = KNOWN_IDS.framed(TRADE, [avro.encode(TRADE, trades(SYMBOLS, 1)[0])])[0]
    with pytest.raises(avro.DecodeError, match="no schema registry is configured"):
        SINGLE_OBJECT.decode(value)
    with pytest.raises(avro.DecodeError, match="shorter than the 5-byte header"):
        KNOWN_IDS.decode(b"\x00\x00\x07")
    assert decode_plain(TRADE, value) is None
    [rejection] = batch_decoder(TRADE).decode([value]).rejected
    assert (rejection.category, rejection.reason) == (
        UNDECODABLE,
        ("registry-framed (schema id 7) but no schema registry is configured (K2_KAFKA_SCHEMA_REGISTRY_URL)"),
    )


def test_a_registry_that_does_not_answer_refuses_nothing() -> None:
    """Not knowing a registry id is no reason to dead-letter the message: the error propagates, so the writer and
    the fan-out read the message again later."""
    unreachable = Framing(f"http://127.0.0.1:{free_port()}/apis/ccompat/v7", {})
    value = registry_header(12345) + b"\x02"
    with pytest.raises(SchemaRegistryUnavailable, match="schema registry unavailable"):
        batch_decoder(TRADE, unreachable).decode([value])
    with pytest.raises(SchemaRegistryUnavailable):
        decode_plain(TRADE, value, unreachable)


async def test_confluent_avro_deserializer_reads_what_ingest_publishes(
    registry_kafka: KafkaSettings, schema_registry: str
) -> None:
    sent = [trade(i) for i in range(30)]
    sent[3].price = "99999999999999999999.999999999999999999"  # the extremes of decimal(38,18)
    sent[4].quantity = "0.000000000000000001"
    sent[5].price = "97123.05e0"  # judged by the plain path, not the native encoder
    quote = Quote(
        quote_id="Q-1",
        symbol="BHP",
        exchange="ASX",
        asset_class=AssetClass.ASSET_CLASS_EQUITIES,
        currency="AUD",
        bid_price="37.7",
        bid_quantity="300",
        ask_price="37.71",
        ask_quantity="0.5",
    )
    quote.timestamp.FromDatetime(START)

    async def quotes() -> AsyncIterator[ingest_pb2.PublishQuotesRequest]:
        yield ingest_pb2.PublishQuotesRequest(batch_id="quotes", quotes=[quote])

    async with running_ingest(registry_kafka) as ingest:
        # A sampled caller: the send span records each message's ids, read from the encoded values.
        sampled = ("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01")
        [answer] = [
            a
            async for a in ingest.stub.PublishTrades(
                requests(batch("registry-framed", sent)), metadata=(*WRITE, sampled)
            )
        ]
        [quote_answer] = [a async for a in ingest.stub.PublishQuotes(quotes(), metadata=WRITE)]
        messages = {
            kind: await read_topic(registry_kafka, ingest.topic(TOPIC_FOR[kind])) for kind in (TRADE, QUOTE)
        }
    assert (answer.accepted, quote_answer.accepted) == (30, 1)

    client = SchemaRegistryClient({"url": schema_registry})
    deserializer = AvroDeserializer(client)
    read: dict[str, list[dict[str, Any]]] = {}
    for kind, kind_messages in messages.items():
        topic = topic_name(registry_kafka, TOPIC_FOR[kind])
        registered = client.get_latest_version(f"{topic}-value")
        schema, schema_id = registered.schema.schema_str, registered.schema_id
        assert schema is not None and schema_id is not None
        assert avro.schema_fingerprint(json.loads(schema)) == avro.CURRENT[kind].fingerprint
        values = [m.value() or b"" for m in kind_messages]
        assert {value[:5] for value in values} == {registry_header(schema_id)}
        read[kind] = [
            deserializer(value, SerializationContext(topic, MessageField.VALUE)) for value in values
        ]

    by_trade_id = {record["trade_id"]: record for record in read[TRADE]}
    assert len(by_trade_id) == 30
    for i in range(30):
        expected = expected_trade(i)
        expected |= {
            3: {"price": Decimal("99999999999999999999.999999999999999999")},
            4: {"quantity": Decimal("0.000000000000000001")},
        }.get(i, {})
        record = by_trade_id[expected["trade_id"]]
        assert {name: record[name] for name in expected} == expected
        assert record["price"].as_tuple().exponent == -18  # decimal(38,18), exactly
    [read_quote] = read[QUOTE]
    assert (
        read_quote["quote_id"],
        read_quote["bid_price"],
        read_quote["bid_quantity"],
        read_quote["ask_price"],
        read_quote["ask_quantity"],
        read_quote["timestamp"],
    ) == ("Q-1", Decimal("37.7"), Decimal(300), Decimal("37.71"), Decimal("0.5"), START)


class MixedTopic:
    """The trades topic as several producers would fill it: single-object and registry-framed v2 messages, a v1
    message framed with a registry id (an older producer's), and registry-framed messages no K2 schema names."""

    def __init__(self, kafka: KafkaSettings, registry: str):
        self.kafka = kafka
        self.topic = topic_name(kafka, TRADES)
        self.framing = Framing.connect(kafka)
        client = SchemaRegistryClient({"url": registry})
        v1 = avro.VERSIONS[TRADE][0]
        self.v1_id = client.register_schema(
            f"{kafka.topic_prefix}legacy-trades-value", Schema(json.dumps(v1.schema), "AVRO")
        )
        self.foreign_id = client.register_schema(
            f"{kafka.topic_prefix}foreign-value", Schema(json.dumps(FOREIGN), "AVRO")
        )
        self.valid: list[Record] = []

    def produce(self, records: list[Record], v1_sequence: int | None = None, foreign: bool = False) -> None:
        """The records, every other one registry-framed (each symbol's last one too); a v1 trade; two
        messages to refuse."""
        producer = Producer(producer_config(self.kafka))
        for index, record in enumerate(records):
            value = avro.encode(TRADE, record)
            if index % 2 or index >= len(records) - len(SYMBOLS):
                [value] = self.framing.framed(TRADE, [value])
            producer.produce(self.topic, value, record["symbol"].encode())
        self.valid += records
        if v1_sequence is not None:
            single_object = avro.encode_with(
                avro.VERSIONS[TRADE][0], V1_TRADE | {"sequence_number": v1_sequence}
            )
            producer.produce(self.topic, registry_header(self.v1_id) + single_object[10:], b"BHP")
            self.valid.append(avro.decode(single_object)[1])
        if foreign:
            producer.produce(self.topic, registry_header(self.foreign_id) + b"\x02", b"XYZ")
            producer.produce(self.topic, registry_header(2**31 - 1) + b"\x02", b"XYZ")
        assert producer.flush(30) == 0


async def test_query_reads_both_framings_live_replayed_and_queried(
    registry_kafka: KafkaSettings, iceberg_settings: IcebergSettings, schema_registry: str
) -> None:
    topic = MixedTopic(registry_kafka, schema_registry)
    topic.produce(trades(SYMBOLS, 10), v1_sequence=1, foreign=True)  # before the service: replayed from Kafka
    async with running_service(registry_kafka, iceberg_settings) as service:
        assert service.server.fanout.framing.schema_ids == topic.framing.schema_ids
        call = service.stub.SubscribeTrades(
            query_pb2.SubscribeTradesRequest(start=ts(T0 - timedelta(days=1)))
        )
        got = await receive(call, lambda r: len(r.trades) >= len(topic.valid))
        later = trades(SYMBOLS, 10, start=T0 + timedelta(minutes=10), first_sequence=10)
        await asyncio.to_thread(topic.produce, later, v1_sequence=2, foreign=True)  # live
        got = await receive(call, lambda r: len(r.trades) >= len(topic.valid), got)
        call.cancel()
        assert_exactly_once_in_order(got.trades, topic.valid)
        prices = {t.message_id: Decimal(t.price) for t in got.trades}
        assert prices == {r["message_id"]: r["price"] for r in topic.valid}

        responses = [
            r
            async for r in service.stub.QueryTrades(
                query_pb2.QueryTradesRequest(
                    symbols=[*SYMBOLS, "BHP"],
                    start=ts(T0 - timedelta(days=1)),
                    end=ts(T0 + timedelta(days=1)),
                    limit=1000,
                )
            )
        ]
        queried = {t.message_id: Decimal(t.quantity) for r in responses for t in r.trades}
        assert queried == {r["message_id"]: r["quantity"] for r in topic.valid}

        latest = await service.stub.GetLatest(query_pb2.GetLatestRequest(symbols=SYMBOLS))
        assert {entry.symbol: entry.trade.message_id for entry in latest.latest} == {
            symbol: later[-len(SYMBOLS) + n]["message_id"] for n, symbol in enumerate(SYMBOLS)
        }


async def test_writer_reads_both_framings_and_dead_letters_unknown_ids(
    registry_kafka: KafkaSettings, iceberg_settings: IcebergSettings, schema_registry: str
) -> None:
    topic = MixedTopic(registry_kafka, schema_registry)
    topic.produce(trades(SYMBOLS, 10), v1_sequence=1, foreign=True)
    settings = WriterSettings(
        port=0, metrics_port=0, group_id=f"writer-{uuid.uuid4().hex[:8]}", commit_interval_ms=200
    )
    writer = WriterApp(
        settings,
        registry_kafka,
        iceberg_settings,
        AuthSettings.model_validate({"write_tokens": ["registry-test-token"]}),
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{await writer.start()}")
    try:
        status = await wait_caught_up(writer_pb2_grpc.WriterServiceStub(channel), topic.topic)
    finally:
        await channel.close()
        await writer.stop()
    assert status.dead_lettered == 2

    rows = trades_table(iceberg_settings).scan().to_arrow().to_pylist()
    assert {row["message_id"]: (row["price"], row["quantity"], row["timestamp"]) for row in rows} == {
        r["message_id"]: (r["price"], r["quantity"], r["timestamp"]) for r in topic.valid
    }
    letters = await read_topic(registry_kafka, topic_name(registry_kafka, DEAD_LETTER))
    fingerprint = avro.schema_fingerprint(FOREIGN).hex()
    assert sorted(headers_of(m)[DLQ_REASON].decode() for m in letters) == [
        f"schema id {2**31 - 1} is not in the schema registry",
        f"schema id {topic.foreign_id} is not a K2 schema version (fingerprint {fingerprint})",
    ]
