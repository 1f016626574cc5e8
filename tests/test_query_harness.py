"""Helpers shared by the query service tests (no tests here): market data, a Kafka producer that remembers where
every record landed, an Iceberg committer that plays the writer's part (records + the next offsets per partition
in the snapshot summary, exactly the writer's contract), and the query service started in-process on port 0."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
from confluent_kafka import Producer
from google.protobuf.timestamp_pb2 import Timestamp

from k2.core.arrow_records import records_to_arrow
from k2.core.avro import encode
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import ensure_table, load_catalog, offsets_property
from k2.core.kafka import TOPIC_FOR, producer_config, topic_name
from k2.core.protos import set_timestamp
from k2.core.records import QUOTE, TRADE, Record, RecordKind
from k2.query.v1 import query_pb2_grpc
from k2.services.query.config import QuerySettings
from k2.services.query.server import QueryServer

T0 = datetime(2024, 3, 11, 0, 0, tzinfo=UTC)


def trade(
    symbol: str,
    timestamp: datetime,
    sequence: int,
    price: str = "100.5",
    quantity: str = "2",
    exchange: str = "BINANCE",
) -> Record:
    return {
        "message_id": str(uuid.uuid4()),
        "trade_id": f"{exchange}-{symbol}-{sequence}",
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": "CRYPTO",
        "timestamp": timestamp,
        "price": Decimal(price),
        "quantity": Decimal(quantity),
        "currency": "USDT",
        "side": "BUY" if sequence % 2 else "SELL",
        "trade_conditions": [],
        "source_sequence": sequence,
        "ingestion_timestamp": timestamp,
        "platform_sequence": None,
        "vendor_data": {"is_buyer_maker": "true"} if sequence % 3 else None,
    }


def quote(
    symbol: str,
    timestamp: datetime,
    sequence: int,
    bid: str = "100.1",
    ask: str = "100.2",
    exchange: str = "BINANCE",
) -> Record:
    return {
        "message_id": str(uuid.uuid4()),
        "quote_id": f"{exchange}-{symbol}-{sequence}",
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": "CRYPTO",
        "timestamp": timestamp,
        "bid_price": Decimal(bid),
        "bid_quantity": Decimal("1.5"),
        "ask_price": Decimal(ask),
        "ask_quantity": Decimal("0.25"),
        "currency": "USDT",
        "source_sequence": sequence,
        "ingestion_timestamp": timestamp,
        "platform_sequence": None,
        "vendor_data": None,
    }


def trades(
    symbols: Iterable[str],
    count: int,
    start: datetime = T0,
    step: timedelta = timedelta(seconds=1),
    first_sequence: int = 0,
) -> list[Record]:
    """`count` trades per symbol, interleaved, timestamps increasing per symbol, prices varying."""
    symbols = list(symbols)
    return [
        trade(
            symbol,
            start + step * i,
            first_sequence + i,
            price=f"{100 + (i * 7 + n) % 13}.{i % 100:02d}",
            quantity=f"{1 + (i % 5)}.{(i * 3) % 1000:03d}",
        )
        for i in range(count)
        for n, symbol in enumerate(symbols)
    ]


@dataclass
class Produced:
    record: Record
    partition: int
    offset: int


@dataclass
class Market:
    """Produces records to the test's topics and plays the writer: commits them to Iceberg with offsets."""

    kafka: KafkaSettings
    iceberg: IcebergSettings
    produced: dict[RecordKind, list[Produced]] = field(default_factory=lambda: {TRADE: [], QUOTE: []})
    committed: dict[RecordKind, dict[int, int]] = field(default_factory=lambda: {TRADE: {}, QUOTE: {}})

    def __post_init__(self) -> None:
        self._producer = Producer(producer_config(self.kafka, **{"linger.ms": 1}))
        self._catalog = load_catalog(self.iceberg)

    def topic(self, kind: RecordKind) -> str:
        return topic_name(self.kafka, TOPIC_FOR[kind])

    def produce(self, kind: RecordKind, records: list[Record]) -> list[Produced]:
        landed: list[Produced | None] = [None] * len(records)

        def delivered(index: int, error: object, message: object) -> None:
            assert error is None, error
            landed[index] = Produced(
                records[index],
                message.partition(),  # type: ignore[attr-defined]
                message.offset(),
            )  # type: ignore[attr-defined]

        for index, record in enumerate(records):
            while True:
                try:
                    self._producer.produce(
                        self.topic(kind),
                        encode(kind, record),
                        record["symbol"].encode(),
                        on_delivery=lambda e, m, i=index: delivered(i, e, m),
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
            self._producer.poll(0)
        assert self._producer.flush(60) == 0
        result = [p for p in landed if p is not None]
        assert len(result) == len(records)
        self.produced[kind] += result
        return result

    def commit(self, kind: RecordKind, upto: dict[int, int] | None = None) -> int | None:
        """Appends the produced records with offsets in [committed, upto) (default: everything produced) as one
        snapshot recording `upto` merged into the previous offsets, as the writer does. Returns the snapshot id."""
        if upto is None:
            upto = {}
            for p in self.produced[kind]:
                upto[p.partition] = max(upto.get(p.partition, 0), p.offset + 1)
        done = self.committed[kind]
        batch = [
            p.record
            for p in self.produced[kind]
            if done.get(p.partition, 0) <= p.offset < upto.get(p.partition, done.get(p.partition, 0))
        ]
        offsets = done | {
            partition: max(done.get(partition, 0), offset) for partition, offset in upto.items()
        }
        table = ensure_table(self._catalog, self.iceberg, kind)
        table.append(
            records_to_arrow(kind, batch), snapshot_properties=offsets_property({self.topic(kind): offsets})
        )
        self.committed[kind] = offsets
        snapshot = table.current_snapshot()
        return snapshot.snapshot_id if snapshot else None

    def close(self) -> None:
        self._producer.flush(10)


# Tokens of the services tests start are signed with this key, so tests can craft tokens the service verifies.
TOKEN_KEY = "k2 tests' token key"


def query_settings(**overrides: object) -> QuerySettings:
    fields: dict[str, object] = {"token_keys": [TOKEN_KEY]} | overrides
    return QuerySettings(port=0, metrics_port=0, grace_seconds=2.0, heartbeat_seconds=1.0, **fields)


class Service:
    def __init__(self, server: QueryServer, channel: grpc.aio.Channel):
        self.server = server
        self.channel = channel
        self.stub = query_pb2_grpc.QueryServiceStub(channel)


async def start_service(kafka: KafkaSettings, iceberg: IcebergSettings, settings: QuerySettings) -> Service:
    server = QueryServer(settings, kafka, iceberg)
    port = await server.start()
    await server.wait_ready()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    return Service(server, channel)


async def stop_service(service: Service) -> None:
    await service.channel.close()
    await service.server.stop()


@asynccontextmanager
async def running_service(
    kafka: KafkaSettings, iceberg: IcebergSettings, settings: QuerySettings | None = None
) -> AsyncIterator[Service]:
    started = await start_service(kafka, iceberg, settings or query_settings())
    try:
        yield started
    finally:
        await stop_service(started)


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(interval)


def ts(value) -> Timestamp:  # type: ignore[no-untyped-def]
    result = Timestamp()
    set_timestamp(result, value)
    return result
