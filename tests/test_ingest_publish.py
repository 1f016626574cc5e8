"""PublishTrades / PublishQuotes against the real broker: exact records on the topics, per-item rejections,
idempotent re-sends, pipelined in-order answers, delivery failures reported, auth, feed status, SIGTERM."""

import asyncio
import os
import random
import signal
import string
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from conftest import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from service_processes import ServiceProcess
from test_ingest_support import (
    READ_TOKEN,
    WRITE,
    WRITE_TOKEN,
    headers_of,
    read_topic,
    read_topic_now,
    running_ingest,
)
from test_query_harness import query_settings, running_service, ts

from k2.core import avro
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.framing import Framing
from k2.core.kafka import QUOTES, TRADES, client_config
from k2.core.records import (
    MAX_CONDITION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_TRADE_CONDITIONS,
    MAX_VENDOR_DATA_ENTRIES,
    MAX_VENDOR_DATA_KEY_LENGTH,
    MAX_VENDOR_DATA_VALUE_LENGTH,
)
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.marketdata.v1.marketdata_pb2 import AssetClass, Quote, Side, Trade
from k2.query.v1 import query_pb2
from k2.services.ingest.ids import batch_message_ids
from k2.services.ingest.publish import ENTRY_BYTES
from k2.services.query.config import QuerySettings

START = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)


def trade(i: int, **fields: Any) -> Trade:
    message = Trade(
        trade_id=f"BINANCE-{1000 + i}",
        symbol="BTCUSDT" if i % 2 else "ETHUSDT",
        exchange="BINANCE",
        asset_class=AssetClass.ASSET_CLASS_CRYPTO,
        price=f"97123.{i:02d}",
        quantity="0.00150000",
        currency="USDT",
        side=Side.SIDE_SELL if i % 2 else Side.SIDE_BUY,
        source_sequence=1000 + i,
        vendor_data={"is_buyer_maker": "true" if i % 2 else "false"},
    )
    message.timestamp.FromDatetime(START + timedelta(microseconds=i))
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def expected_trade(i: int) -> dict[str, Any]:
    return {
        "trade_id": f"BINANCE-{1000 + i}",
        "symbol": "BTCUSDT" if i % 2 else "ETHUSDT",
        "exchange": "BINANCE",
        "asset_class": "CRYPTO",
        "timestamp": START + timedelta(microseconds=i),
        "price": Decimal(f"97123.{i:02d}"),
        "quantity": Decimal("0.0015"),
        "currency": "USDT",
        "side": "SELL" if i % 2 else "BUY",
        "trade_conditions": [],
        "source_sequence": 1000 + i,
        "platform_sequence": None,
        "vendor_data": {"is_buyer_maker": "true" if i % 2 else "false"},
    }


async def requests(
    *batches: ingest_pb2.PublishTradesRequest,
) -> AsyncIterator[ingest_pb2.PublishTradesRequest]:
    for batch in batches:
        yield batch


async def publish(
    stub: Any, *batches: ingest_pb2.PublishTradesRequest
) -> list[ingest_pb2.PublishTradesResponse]:
    return [answer async for answer in stub.PublishTrades(requests(*batches), metadata=WRITE)]


def batch(batch_id: str, trades: Iterable[Trade]) -> ingest_pb2.PublishTradesRequest:
    return ingest_pb2.PublishTradesRequest(batch_id=batch_id, trades=list(trades))


async def test_published_trades_are_on_the_topic_exactly(kafka_settings: KafkaSettings) -> None:
    sent = [trade(i) for i in range(40)]
    sent[3].price = "99999999999999999999.999999999999999999"  # the extremes of decimal(38,18)
    sent[4].quantity = "0.000000000000000001"
    sent[5].trade_conditions[:] = ["A", "XT"]
    sent[6].ClearField("source_sequence")
    sent[6].vendor_data.clear()
    before = datetime.now(UTC)
    async with running_ingest(kafka_settings) as ingest:
        [answer] = await publish(ingest.stub, batch("batch-1", sent))
        messages = await read_topic(kafka_settings, ingest.topic(TRADES))
    assert (answer.batch_id, answer.accepted, list(answer.rejections)) == ("batch-1", 40, [])
    assert not answer.duplicate

    expected = {i: expected_trade(i) for i in range(40)}
    expected[3]["price"] = Decimal("99999999999999999999.999999999999999999")
    expected[4]["quantity"] = Decimal("0.000000000000000001")
    expected[5]["trade_conditions"] = ["A", "XT"]
    expected[6] |= {"source_sequence": None, "vendor_data": None}
    message_id = batch_message_ids("trade", "batch-1")
    by_trade_id = {}
    for message in messages:
        kind, record = avro.decode(message.value())
        assert kind == "trade" and message.key() == record["symbol"].encode()
        by_trade_id[record["trade_id"]] = record
    assert len(messages) == len(by_trade_id) == 40
    # the batch was one send span: its messages all carry its trace context when it is sampled, none otherwise
    assert len({headers_of(m).get("traceparent") for m in messages}) == 1
    for i, wanted in expected.items():
        record = by_trade_id[wanted["trade_id"]]
        assert before <= record.pop("ingestion_timestamp") <= datetime.now(UTC)
        assert uuid.UUID(record["message_id"]).version == 5
        assert record.pop("message_id") == message_id(i)
        assert record == wanted  # Decimal and datetime equality: exact values, not text


async def test_invalid_items_are_rejected_one_by_one(kafka_settings: KafkaSettings) -> None:
    sent = [trade(i) for i in range(10)]
    sent[1].price = "12,5"
    sent[2].price = "1.0000000000000000001"
    sent[3].ClearField("timestamp")
    sent[4].side = 99
    sent[5].timestamp.nanos = 1
    sent[6].quantity = "-1"
    sent[7].timestamp.seconds = 2**62
    async with running_ingest(kafka_settings) as ingest:
        [answer] = await publish(ingest.stub, batch("mixed", sent))
        records = await ingest.records(TRADES)
    rejections = [(r.index, r.field, r.reason) for r in answer.rejections]
    assert [(index, field) for index, field, _ in rejections] == [
        (1, "price"),
        (2, "price"),
        (3, "timestamp"),
        (4, "side"),
        (5, "timestamp"),
        (6, "quantity"),
        (7, "timestamp"),
    ]
    for (_, _, reason), expected in zip(
        rejections,
        [
            "not a decimal number",
            "more than 18 decimal places",
            "required",
            "unknown enum value",
            "finer than a microsecond",
            "must be positive",
            "outside years 1-9999",
        ],
        strict=True,
    ):
        assert expected in reason
    assert answer.accepted == 3
    assert sorted(r["trade_id"] for r in records) == [f"BINANCE-{1000 + i}" for i in (0, 8, 9)]


async def test_items_outside_the_rules_are_rejected_by_field(kafka_settings: KafkaSettings) -> None:
    """What was accepted: decimals with spaces, '_' or '+', nanos outside 0-999,999,999, symbols no query can ask
    for, unbounded trade conditions and vendor_data, equity and crypto quotes priced at zero or below."""
    changes: list[tuple[str, Any]] = [
        ("price", " 1"),
        ("price", "1_000"),
        ("quantity", "+1"),
        ("price", ".5"),
        ("symbol", "btcusdt"),
        ("symbol", "BTC/USDT"),
        ("symbol", "X" * 33),
        ("exchange", "binance"),
        ("trade_conditions", ["X"] * 9),
        ("trade_conditions", ["X" * 33]),
        ("vendor_data", {str(n): "" for n in range(9)}),
        ("vendor_data", {"k" * 33: ""}),
        ("vendor_data", {"k": "v" * 65}),
    ]
    sent = []
    for i, (name, value) in enumerate(changes):
        sent.append(trade(i))
        if isinstance(value, str):
            setattr(sent[-1], name, value)
        elif isinstance(value, list):
            getattr(sent[-1], name).extend(value)
        else:
            getattr(sent[-1], name).update(value)
    for nanos in (-1000, 1_000_000_000):
        sent.append(trade(len(sent)))
        sent[-1].timestamp.nanos = nanos
    sent.append(trade(len(sent), symbol="A.B_C-9" + "X" * 25))  # at the bounds
    sent[-1].trade_conditions.extend(["X" * 32] * 8)
    sent[-1].vendor_data.update({str(n) + "k" * 31: "v" * 64 for n in range(7)})

    def quote(i: int, asset_class: AssetClass, bid: str, ask: str) -> Quote:
        message = Quote(
            quote_id=f"Q-{i}",
            symbol="BHP",
            exchange="ASX",
            asset_class=asset_class,
            currency="AUD",
            bid_price=bid,
            bid_quantity="100",
            ask_price=ask,
            ask_quantity="100",
        )
        message.timestamp.FromDatetime(START)
        return message

    quotes = [
        quote(0, AssetClass.ASSET_CLASS_EQUITIES, "0", "1"),
        quote(1, AssetClass.ASSET_CLASS_CRYPTO, "1", "-1"),
        quote(2, AssetClass.ASSET_CLASS_FUTURES, "0", "-1"),
    ]

    async def quote_batch() -> AsyncIterator[ingest_pb2.PublishQuotesRequest]:
        yield ingest_pb2.PublishQuotesRequest(batch_id="quotes-at-zero", quotes=quotes)

    async with running_ingest(kafka_settings) as ingest:
        [answer] = await publish(ingest.stub, batch("outside-the-rules", sent))
        [quote_answer] = [a async for a in ingest.stub.PublishQuotes(quote_batch(), metadata=WRITE)]
        records = await ingest.records(TRADES)
    fields = [name for name, _ in changes] + ["timestamp", "timestamp"]
    assert [(r.index, r.field) for r in answer.rejections] == list(enumerate(fields))
    assert all(r.reason for r in answer.rejections)
    assert answer.accepted == 1 and [r["symbol"] for r in records] == [sent[-1].symbol]
    assert [(r.index, r.field, r.reason) for r in quote_answer.rejections] == [
        (0, "bid_price", "must be positive: 0"),
        (1, "ask_price", "must be positive: -1"),
    ]
    assert quote_answer.accepted == 1  # a future's book may be priced at zero or below


async def test_records_at_every_bound_reach_a_query_and_a_live_stream(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    """Rows of ~9 kB broke 2,000-row QueryTrades responses (16 MiB) and ended live subscribers as too slow: at
    the bounds, in 4-byte characters, a trade is ~6.5 kB, and 2,000 of them reach a query (in responses cut by
    bytes) and a subscriber on the default settings."""
    wide = "\U0001f600"  # 4 bytes in UTF-8
    symbol = "X" * MAX_NAME_LENGTH
    largest = [
        trade(
            i,
            trade_id=f"{i:05d}" + wide * (MAX_TEXT_LENGTH - 5),
            symbol=symbol,
            exchange=symbol,
            currency=wide * MAX_TEXT_LENGTH,
            price="-99999999999999999999.999999999999999999",
            quantity="99999999999999999999.999999999999999999",
            asset_class=AssetClass.ASSET_CLASS_FUTURES,
            source_sequence=-(2**63),
            platform_sequence=-1,
        )
        for i in range(2000)
    ]
    for message in largest:
        message.trade_conditions.extend([wide * MAX_CONDITION_LENGTH] * MAX_TRADE_CONDITIONS)
        message.vendor_data.clear()
        message.vendor_data.update(
            {
                str(n) + wide * (MAX_VENDOR_DATA_KEY_LENGTH - 1): wide * MAX_VENDOR_DATA_VALUE_LENGTH
                for n in range(MAX_VENDOR_DATA_ENTRIES)
            }
        )
    assert min(m.ByteSize() for m in largest) > 6000
    async with (
        running_ingest(kafka_settings) as ingest,
        running_service(kafka_settings, iceberg_settings, query_settings()) as query,
    ):
        live = query.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=[symbol]))
        assert (await live.read()).resume_token  # live, before anything is published
        answers = await publish(
            ingest.stub, *(batch(f"largest-{n}", largest[n : n + 250]) for n in range(0, 2000, 250))
        )
        assert sum(a.accepted for a in answers) == 2000
        streamed: list[query_pb2.SubscribeTradesResponse] = []
        async with asyncio.timeout(120):
            while sum(len(r.trades) for r in streamed) < 2000:
                streamed.append(await live.read())
        live.cancel()
        request = query_pb2.QueryTradesRequest(
            symbols=[symbol], start=ts(START), end=ts(START + timedelta(hours=1)), limit=2000
        )
        responses = [r async for r in query.stub.QueryTrades(request, timeout=120)]
    assert [t.trade_id for r in responses for t in r.trades] == [m.trade_id for m in largest]
    # 2,000 rows of 6.5 kB are 13 MB: cut into responses of at most K2_QUERY_RESPONSE_BYTES (1 MiB) of rows
    assert len(responses) > 1
    assert max(r.ByteSize() for r in responses) <= QuerySettings().response_bytes
    assert sorted(t.trade_id for r in streamed for t in r.trades) == [m.trade_id for m in largest]


async def test_a_resent_batch_is_written_once(kafka_settings: KafkaSettings) -> None:
    first = batch("resend-me", [trade(i) for i in range(25)])
    async with running_ingest(kafka_settings) as ingest:
        [original, same_stream_copy] = await publish(ingest.stub, first, first)
        [other_stream_copy] = await publish(ingest.stub, first)  # as after a reconnect
        assert await ingest.count(TRADES) == 25
    assert (original.accepted, original.duplicate) == (25, False)
    for copy in (same_stream_copy, other_stream_copy):
        assert (copy.batch_id, copy.accepted, copy.duplicate) == ("resend-me", 25, True)


async def test_beyond_the_dedupe_window_a_resent_batch_keeps_its_ids(kafka_settings: KafkaSettings) -> None:
    async with running_ingest(kafka_settings, dedupe_window_bytes=ENTRY_BYTES + 100) as ingest:  # one answer
        await publish(ingest.stub, batch("a", [trade(i) for i in range(5)]), batch("b", [trade(9)]))
        [late_copy] = await publish(ingest.stub, batch("a", [trade(i) for i in range(5)]))
        records = await ingest.records(TRADES)
    assert late_copy.duplicate is False  # forgotten: written again...
    ids_of_a = [r["message_id"] for r in records if r["trade_id"] != "BINANCE-1009"]
    assert len(ids_of_a) == 10 and len(set(ids_of_a)) == 5  # ...with the same message ids: dropped downstream


async def test_the_dedupe_window_is_bounded_by_the_bytes_its_answers_hold(
    kafka_settings: KafkaSettings,
) -> None:
    window = 2 * 1024 * 1024
    refused = [trade(i, quantity="0") for i in range(10_000)]  # an answer of 10,000 rejections: ~0.5 MB
    async with running_ingest(kafka_settings, dedupe_window_bytes=window) as ingest:
        answers = await publish(ingest.stub, *(batch(f"refused-{n}", refused) for n in range(8)))
        held = REGISTRY.get_sample_value(
            "k2_ingest_dedupe_window_bytes", {"service": "ingest", "kind": "trade"}
        )
        [newest_again, oldest_again] = await publish(
            ingest.stub, batch("refused-7", refused), batch("refused-0", refused)
        )
    assert all(len(answer.rejections) == 10_000 for answer in answers)
    assert answers[0].ByteSize() * 3 < window < answers[0].ByteSize() * 8
    assert held is not None and answers[0].ByteSize() * 3 < held <= window
    assert newest_again.duplicate and not oldest_again.duplicate  # the oldest answers made room


async def test_publisher_message_ids_are_kept(kafka_settings: KafkaSettings) -> None:
    own_id = "0b9f4e1c-5d2a-4f53-9b8e-2f6c1d0a7e31"
    async with running_ingest(kafka_settings) as ingest:
        await publish(ingest.stub, batch("", [trade(0, message_id=own_id), trade(1)]))
        records = sorted(await ingest.records(TRADES), key=lambda r: r["trade_id"])
    assert records[0]["message_id"] == own_id
    assert uuid.UUID(records[1]["message_id"]).version == 4  # no batch id: a random id


async def test_answers_come_in_order_while_batches_pipeline(kafka_settings: KafkaSettings) -> None:
    batches = [batch(f"ordered-{n}", [trade(n * 10 + i) for i in range(10)]) for n in range(60)]
    async with running_ingest(kafka_settings, max_batches_in_flight=4) as ingest:
        answers = await publish(ingest.stub, *batches)
        assert await ingest.count(TRADES) == 600
    assert [a.batch_id for a in answers] == [f"ordered-{n}" for n in range(60)]
    assert all(a.accepted == 10 for a in answers)


async def test_too_large_a_batch_ends_the_stream_after_those_before(kafka_settings: KafkaSettings) -> None:
    received = []
    async with running_ingest(kafka_settings, max_batch_items=10) as ingest:
        batches = requests(
            batch("fits", [trade(i) for i in range(10)]), batch("too-big", [trade(i) for i in range(11)])
        )
        call = ingest.stub.PublishTrades(batches, metadata=WRITE)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for answer in call:
                received.append(answer.batch_id)
        assert await ingest.count(TRADES) == 10
    assert received == ["fits"]
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10" in (error.value.details() or "")


async def test_a_message_kafka_refuses_is_a_rejection(kafka_settings: KafkaSettings) -> None:
    # Every field at its bound with text that does not compress: above the topic's max.message.bytes set here.
    largest = trade(1)
    largest.trade_conditions.extend(random_text(MAX_CONDITION_LENGTH) for _ in range(MAX_TRADE_CONDITIONS))
    largest.vendor_data.update(
        {
            random_text(MAX_VENDOR_DATA_KEY_LENGTH): random_text(MAX_VENDOR_DATA_VALUE_LENGTH)
            for _ in range(MAX_VENDOR_DATA_ENTRIES - 1)
        }
    )
    async with running_ingest(kafka_settings) as ingest:
        admin = AdminClient(client_config(kafka_settings))
        limit = ConfigEntry("max.message.bytes", "600", incremental_operation=AlterConfigOpType.SET)
        for future in admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, ingest.topic(TRADES), incremental_configs=[limit])]
        ).values():
            future.result(30)
        answers = [
            answer
            for sent in (trade(0), largest, trade(2))  # one at a time: one Kafka batch each
            for answer in await publish(ingest.stub, batch(f"one-too-big-{sent.trade_id}", [sent]))
        ]
        assert await ingest.count(TRADES) == 2
    assert [answer.accepted for answer in answers] == [1, 0, 1]
    [rejection] = answers[1].rejections
    assert (rejection.index, rejection.field) == (0, "")
    assert "not written to Kafka" in rejection.reason and "too large" in rejection.reason.lower()


def random_text(length: int) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=length))


async def test_quotes_one_sided_and_crossed_are_published_exactly(kafka_settings: KafkaSettings) -> None:
    def quote(i: int, bid: tuple[str, str] | None, ask: tuple[str, str] | None) -> Quote:
        message = Quote(
            quote_id=f"Q-{i}",
            symbol="BHP",
            exchange="ASX",
            asset_class=AssetClass.ASSET_CLASS_EQUITIES,
            currency="AUD",
        )
        if bid:
            message.bid_price, message.bid_quantity = bid
        if ask:
            message.ask_price, message.ask_quantity = ask
        message.timestamp.FromDatetime(START)
        return message

    sent = [
        quote(0, ("37.7", "300"), None),
        quote(1, ("37.8", "1"), ("37.7", "2")),
        quote(2, None, ("1", "1")),
        quote(3, ("1", "0"), None),
    ]

    async def quote_batches() -> AsyncIterator[ingest_pb2.PublishQuotesRequest]:
        yield ingest_pb2.PublishQuotesRequest(batch_id="quotes", quotes=sent)

    async with running_ingest(kafka_settings) as ingest:
        [answer] = [a async for a in ingest.stub.PublishQuotes(quote_batches(), metadata=WRITE)]
        records = {r["quote_id"]: r for r in await ingest.records(QUOTES)}
    assert answer.accepted == 3 and [(r.index, r.field) for r in answer.rejections] == [(3, "bid_quantity")]
    sides = {
        qid: (r["bid_price"], r["bid_quantity"], r["ask_price"], r["ask_quantity"])
        for qid, r in records.items()
    }
    assert sides == {
        "Q-0": (Decimal("37.7"), Decimal(300), None, None),
        "Q-1": (Decimal("37.8"), Decimal(1), Decimal("37.7"), Decimal(2)),
        "Q-2": (None, None, Decimal(1), Decimal(1)),
    }


@pytest.mark.parametrize(
    "metadata, code",
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong-token"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {READ_TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_publishing_needs_a_write_token(
    kafka_settings: KafkaSettings, metadata: Any, code: grpc.StatusCode
) -> None:
    async with running_ingest(kafka_settings) as ingest:
        # The refusal comes before any batch is read: a client that raced a write in would see that write fail
        # (INTERNAL, "SendMessageOperation") instead of the server's status, so this call writes after it.
        publish = ingest.stub.PublishTrades(metadata=metadata)
        assert await publish.code() == code
        with pytest.raises(grpc.aio.AioRpcError) as load_error:
            load = ingest_pb2.LoadFilesRequest(
                paths=["trades/3153.csv"], format=ingest_pb2.FILE_FORMAT_ASX_TRADES
            )
            [r async for r in ingest.stub.LoadFiles(load, metadata=metadata)]
        assert await ingest.count(TRADES) == 0
    assert load_error.value.code() == code


class StaticFeed:
    name = "static"

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None: ...

    def status(self) -> ingest_pb2.FeedStatus:
        return ingest_pb2.FeedStatus(
            name=self.name, state=ingest_pb2.CONNECTION_STATE_CONNECTED, symbols=["BTCUSDT"]
        )


async def test_feed_status_lists_the_registered_feeds(kafka_settings: KafkaSettings) -> None:
    async with running_ingest(kafka_settings) as ingest:
        reader = (("authorization", f"Bearer {READ_TOKEN}"),)
        empty = await ingest.stub.GetFeedStatus(ingest_pb2.GetFeedStatusRequest(), metadata=reader)
        ingest.app.add_feed(StaticFeed())
        listed = await ingest.stub.GetFeedStatus(ingest_pb2.GetFeedStatusRequest(), metadata=reader)
    assert list(empty.feeds) == []
    assert [(f.name, f.state, list(f.symbols)) for f in listed.feeds] == [
        ("static", ingest_pb2.CONNECTION_STATE_CONNECTED, ["BTCUSDT"])
    ]


async def test_sigterm_flushes_and_exits_zero(kafka_settings: KafkaSettings) -> None:
    port = free_port()
    env = os.environ | {
        "K2_INGEST_PORT": str(port),
        "K2_INGEST_METRICS_PORT": "0",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "K2_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "K2_AUTH_WRITE_TOKENS": f'["{WRITE_TOKEN}"]',
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "k2.services.ingest", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await asyncio.wait_for(_until_serving(health), timeout=30)
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            [answer] = await publish(stub, batch("before-sigterm", [trade(i) for i in range(100)]))
        assert answer.accepted == 100
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, stderr.decode()[-2000:]
        assert len(await read_topic(kafka_settings, kafka_settings.topic_prefix + TRADES.name)) == 100
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _until_serving(health: health_pb2_grpc.HealthStub) -> None:
    while True:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service="k2.ingest.v1.IngestService"))
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("framing", ["single-object", "registry"])
def test_batches_resent_after_a_kill_9_are_not_written_again(
    kafka_settings: KafkaSettings, tmp_path: Path, framing: str, request: pytest.FixtureRequest
) -> None:
    """The batch ledger dies with the process: the next one reads back what was written before it started."""
    if framing == "registry":
        kafka_settings = kafka_settings.model_copy(
            update={"schema_registry_url": request.getfixturevalue("schema_registry")}
        )
    ingest = ServiceProcess(
        "ingest",
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
            "K2_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
            "K2_KAFKA_SCHEMA_REGISTRY_URL": kafka_settings.schema_registry_url,
            "K2_AUTH_WRITE_TOKENS": f'["{WRITE_TOKEN}"]',
            "K2_INGEST_PROVISION_TOPICS": "false",
        },
        tmp_path / "ingest.log",
    )
    own_ids = [trade(i, message_id=str(uuid.uuid4())) for i in range(40)]
    derived_ids = [trade(100 + i) for i in range(30)]  # ids derived from the batch id
    first = [batch("own-ids", own_ids), batch("derived-ids", derived_ids)]
    # A batch that is half re-sent, half new: only the new half is to be written.
    mixed = batch("mixed", own_ids[:20] + [trade(200 + i, message_id=str(uuid.uuid4())) for i in range(10)])

    def publish_now(*batches: ingest_pb2.PublishTradesRequest) -> list[ingest_pb2.PublishTradesResponse]:
        with grpc.insecure_channel(ingest.address) as channel:
            return list(
                ingest_pb2_grpc.IngestServiceStub(channel).PublishTrades(iter(batches), metadata=WRITE)
            )

    try:
        ingest.start()
        ingest.wait_serving()
        assert [answer.accepted for answer in publish_now(*first)] == [40, 30]
        ingest.kill()  # as if before the answers went out
        ingest.start()
        ingest.wait_serving()
        again = publish_now(*first, mixed)
        written_before = ingest.metric("k2_ingest_publish_items_written_before_total", kind="trade")
    finally:
        ingest.stop()
    assert [(a.batch_id, a.accepted, a.duplicate, list(a.rejections)) for a in again] == [
        ("own-ids", 40, True, []),
        ("derived-ids", 30, True, []),
        ("mixed", 30, False, []),
    ]
    assert written_before == 90
    messages = read_topic_now(kafka_settings, kafka_settings.topic_prefix + TRADES.name)
    assert {m.value()[:1] for m in messages} == {b"\x00" if framing == "registry" else b"\xc3"}
    records = [Framing.connect(kafka_settings).decode(m.value())[1] for m in messages]
    ids = [record["message_id"] for record in records]
    assert len(ids) == len(set(ids)) == 80
    assert sorted(r["trade_id"] for r in records) == sorted(
        t.trade_id for t in [*own_ids, *derived_ids, *mixed.trades[20:]]
    )
