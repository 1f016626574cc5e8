"""The writer service in-process against the real broker: v1 and v2 messages become v2 rows, poison goes to
the dead-letter topic without stalling its partition, status/flush/compaction over gRPC, health, traces."""

import asyncio
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from confluent_kafka import Consumer, Message, Producer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from pyiceberg.expressions import EqualTo
from strategies import sample_quote, sample_trade

from k2.core import avro
from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.iceberg import committed_offsets, load_catalog, table_identifier
from k2.core.kafka import (
    DEAD_LETTER,
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    TRADES,
    consumer_config,
    producer_config,
    topic_name,
)
from k2.core.telemetry import setup_tracing
from k2.services.writer.config import WriterSettings
from k2.services.writer.server import WriterApp
from k2.writer.v1 import writer_pb2 as pb
from k2.writer.v1 import writer_pb2_grpc

TOKEN = "writer-test-token"
WRITE = [("authorization", f"Bearer {TOKEN}")]
Started = tuple[WriterApp, writer_pb2_grpc.WriterServiceStub, grpc.aio.Channel]


@pytest.fixture
async def start_writer(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    started: list[Started] = []

    async def start(kafka: KafkaSettings = kafka_settings, **overrides: object) -> Started:
        defaults = {
            "port": 0,
            "metrics_port": 0,
            "group_id": f"writer-{uuid.uuid4().hex[:8]}",
            "commit_interval_ms": 200,
        }
        settings = WriterSettings.model_validate(defaults | overrides)
        app = WriterApp(
            settings, kafka, iceberg_settings, AuthSettings.model_validate({"write_tokens": [TOKEN]})
        )
        port = await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((app, writer_pb2_grpc.WriterServiceStub(channel), channel))
        return started[-1]

    yield start
    for app, _, channel in started:
        await channel.close()
        await app.stop()


async def wait_caught_up(
    stub: writer_pb2_grpc.WriterServiceStub, topic: str, timeout: float = 60.0
) -> pb.GetStatusResponse:
    """Polls GetStatus until the table records every message of the topic."""
    deadline = time.monotonic() + timeout
    while True:
        status = await stub.GetStatus(pb.GetStatusRequest())
        partitions = [p for p in status.partitions if p.topic == topic]
        if partitions and all(p.lag == 0 for p in partitions) and any(p.high_watermark for p in partitions):
            return status
        assert time.monotonic() < deadline, f"not caught up: {status.partitions}"
        await asyncio.sleep(0.2)


def produce(kafka: KafkaSettings, topic: str, values: list[bytes], partition: int = 0) -> None:
    producer = Producer(producer_config(kafka))
    for value in values:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0


def trades_table(iceberg: IcebergSettings):  # type: ignore[no-untyped-def]
    return load_catalog(iceberg).load_table(table_identifier(iceberg, "trade"))


async def test_v1_and_v2_become_v2_rows_and_poison_is_dead_lettered(
    start_writer: Callable[..., Awaitable[Started]],
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
) -> None:
    topic = topic_name(kafka_settings, TRADES)
    before = [
        sample_trade(message_id=str(uuid.uuid4()), trade_id=f"BINANCE-{i}", price=Decimal("97123.45") + i)
        for i in range(20)
    ]
    after = [
        sample_trade(
            message_id=str(uuid.uuid4()),
            trade_id=f"BINANCE-{100 + i}",
            quantity=Decimal("12345678901234567890.123456789012345678"),
        )
        for i in range(20)
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
    poison = os.urandom(64)
    values = [
        *(avro.encode("trade", r) for r in before),
        avro.encode_with(avro.VERSIONS["trade"][0], v1),
        poison,
        avro.encode("quote", sample_quote()),
        *(avro.encode("trade", r) for r in after),
    ]
    _, stub, _ = await start_writer()
    produce(kafka_settings, topic, values, partition=2)

    status = await wait_caught_up(stub, topic)
    assert status.dead_lettered == 2
    partition = next(p for p in status.partitions if p.topic == topic and p.partition == 2)
    assert partition.committed_offset == partition.high_watermark == len(values)

    rows = {r["trade_id"]: r for r in trades_table(iceberg_settings).scan().to_arrow().to_pylist()}
    assert len(rows) == 41
    for record in before + after:
        row = rows[record["trade_id"]]
        assert (row["message_id"], row["price"], row["quantity"]) == (
            record["message_id"],
            record["price"],
            record["quantity"],
        )
    upgraded = rows["ASX-1"]
    assert (upgraded["symbol"], upgraded["price"], upgraded["quantity"], upgraded["currency"]) == (
        "BHP",
        Decimal("37.51"),
        Decimal(40000),
        "AUD",
    )

    consumer = Consumer(consumer_config(kafka_settings, f"dlq-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic_name(kafka_settings, DEAD_LETTER)])
    letters: list[Message] = []
    deadline = time.monotonic() + 30
    while len(letters) < 2 and time.monotonic() < deadline:
        letters += [m for m in consumer.consume(10, timeout=0.5) if m.error() is None]
    consumer.close()
    assert len(letters) == 2
    headers = [dict(m.headers() or []) for m in letters]
    assert letters[0].value() == poison
    assert [(h[DLQ_SOURCE_TOPIC], h[DLQ_SOURCE_PARTITION], h[DLQ_SOURCE_OFFSET]) for h in headers] == [
        (topic.encode(), b"2", b"21"),
        (topic.encode(), b"2", b"22"),
    ]
    assert b"header" in headers[0][DLQ_REASON]  # type: ignore[operator]
    assert headers[1][DLQ_REASON] == b"a quote message where trades are expected"


async def test_flush_needs_a_write_token_and_reports_commits(
    start_writer: Callable[..., Awaitable[Started]], kafka_settings: KafkaSettings
) -> None:
    _, stub, _ = await start_writer(commit_interval_ms=600_000)
    topic = topic_name(kafka_settings, TRADES)
    produce(
        kafka_settings,
        topic,
        [avro.encode("trade", sample_trade(message_id=str(uuid.uuid4()))) for _ in range(10)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Flush(pb.FlushRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    deadline = time.monotonic() + 30
    committed = 0
    while committed < 10:  # the consumer may not have read all ten yet
        assert time.monotonic() < deadline
        response = await stub.Flush(pb.FlushRequest(), metadata=WRITE)
        commits = {c.table: c for c in response.commits}
        assert set(commits) == {"market_data.trades", "market_data.quotes"}
        committed += commits["market_data.trades"].rows
        await asyncio.sleep(0.2)
    status = await stub.GetStatus(pb.GetStatusRequest())
    table = next(t for t in status.tables if t.table == "market_data.trades")
    assert table.rows == 10 and table.snapshot_id and table.files >= 1
    assert table.newest_event_time.seconds == int(sample_trade()["timestamp"].timestamp())


class TradeStream:
    """Produces unique trades over two event days in a thread until stopped; remembers what Kafka
    acknowledged."""

    def __init__(self, kafka: KafkaSettings, rate: int):
        self.topic = topic_name(kafka, TRADES)
        self.producer = Producer(producer_config(kafka))
        self.rate = rate
        self.acknowledged: dict[str, tuple[Decimal, Decimal]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _on_delivery(self, error: object, message: object, record: dict[str, Any]) -> None:
        if error is None:
            self.acknowledged[record["message_id"]] = (record["price"], record["quantity"])

    def _run(self) -> None:
        sent = 0
        started = time.monotonic()
        while not self._stop.is_set():
            day = datetime(2026, 1, 1 + sent % 2, tzinfo=UTC)
            record = sample_trade(
                message_id=str(uuid.uuid4()),
                trade_id=f"T-{sent}",
                symbol=random.choice(["BTCUSDT", "ETHUSDT"]),
                timestamp=day + timedelta(microseconds=sent),
                price=Decimal(f"{random.randint(1, 10**8)}.{random.randint(0, 10**18 - 1):018d}"),
                quantity=Decimal(f"{random.randint(1, 10**6)}.{random.randint(0, 10**18 - 1):018d}"),
            )
            self.producer.produce(
                self.topic,
                avro.encode("trade", record),
                record["symbol"].encode(),
                on_delivery=partial(self._on_delivery, record=record),
            )
            sent += 1
            self.producer.poll(0)
            delay = started + sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        assert self.producer.flush(30) == 0


def table_rows(iceberg: IcebergSettings) -> list[tuple[str, Decimal, Decimal]]:
    scan = trades_table(iceberg).scan(selected_fields=("message_id", "price", "quantity")).to_arrow()
    return sorted(zip(*(scan[c].to_pylist() for c in ("message_id", "price", "quantity")), strict=True))


async def compact(
    stub: writer_pb2_grpc.WriterServiceStub,
) -> tuple[list[pb.CompactProgress], pb.CompactResult]:
    progress, result = [], None
    async for event in stub.Compact(pb.CompactRequest(table="market_data.trades"), metadata=WRITE):
        if event.HasField("progress"):
            progress.append(event.progress)
        else:
            result = event.result
    assert result is not None
    return progress, result


async def test_compaction_under_concurrent_appends_keeps_every_row_once(
    start_writer: Callable[..., Awaitable[Started]],
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
) -> None:
    _, stub, _ = await start_writer(
        commit_interval_ms=100,
        compaction_interval_seconds=0,
        snapshot_expiry_interval_seconds=1,
        snapshot_max_age_seconds=20,
        snapshot_min_keep=1,
    )
    topic = topic_name(kafka_settings, TRADES)
    stream = TradeStream(kafka_settings, rate=1500)
    stream.start()
    deadline = time.monotonic() + 120
    while (
        True
    ):  # several small commits, each adding a file to every partition (day, symbol bucket) it touches
        snapshot = trades_table(iceberg_settings).current_snapshot() if stream.acknowledged else None
        if snapshot is not None and snapshot.sequence_number >= 4:
            break
        assert time.monotonic() < deadline, "the writer made no commits"
        await asyncio.sleep(0.2)

    progress, result = await compact(stub)  # while appends to the same partitions continue
    assert result.files_after < result.files_before and result.snapshot_id
    assert progress[-1].partitions_done == progress[-1].partitions_total == 4  # 2 days × 2 symbols' buckets
    await asyncio.sleep(1)
    stream.stop()
    await wait_caught_up(stub, topic)

    table = trades_table(iceberg_settings)
    compactions = [s for s in table.snapshots() if s.summary and s.summary.operation.value == "overwrite"]
    assert compactions, "the compaction commits are still in the table's history"
    for (
        snapshot
    ) in compactions:  # offsets carried forward unchanged (where expiry kept the parent to compare)
        parent = snapshot.parent_snapshot_id
        if parent is not None and table.snapshot_by_id(parent) is not None:
            assert committed_offsets(table, snapshot.snapshot_id) == committed_offsets(table, parent)
    rows = table_rows(iceberg_settings)
    assert len(rows) == len({r[0] for r in rows}) == len(stream.acknowledged)
    assert {r[0]: (r[1], r[2]) for r in rows} == stream.acknowledged

    live_before = set(table.inspect.files()["file_path"].to_pylist())
    _, result = await compact(stub)  # quiet now: the same answer before and after
    assert result.files_after < result.files_before
    assert table_rows(iceberg_settings) == rows
    table.refresh()
    replaced = live_before - set(table.inspect.files()["file_path"].to_pylist())
    assert replaced
    deadline = time.monotonic() + 90
    while any(Path(p.removeprefix("file://")).exists() for p in replaced):  # expiry deletes them
        assert time.monotonic() < deadline, "files replaced by compaction were not deleted after expiry"
        await asyncio.sleep(0.5)
    assert table_rows(iceberg_settings) == rows
    assert len(trades_table(iceberg_settings).snapshots()) <= 20


async def test_health_is_not_serving_while_kafka_is_unreachable(
    start_writer: Callable[..., Awaitable[Started]], kafka_settings: KafkaSettings
) -> None:
    unreachable = kafka_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})
    _, _, channel = await start_writer(
        kafka=unreachable, provision_topics=False, monitor_interval_seconds=0.5
    )
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 30
    while True:
        response = await health.Check(health_pb2.HealthCheckRequest(service="k2.writer.v1.WriterService"))
        if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.3)


async def test_sampled_traces_continue_through_the_writer(
    start_writer: Callable[..., Awaitable[Started]], kafka_settings: KafkaSettings
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("writer").add_span_processor(SimpleSpanProcessor(exporter))
    _, stub, _ = await start_writer()
    topic = topic_name(kafka_settings, TRADES)
    trace_id = uuid.uuid4().hex
    producer = Producer(producer_config(kafka_settings))
    for _ in range(20):  # one published batch: one sampled trace context on every message
        producer.produce(
            topic,
            avro.encode("trade", sample_trade(message_id=str(uuid.uuid4()))),
            headers=[("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01".encode())],
        )
    assert producer.flush(30) == 0
    await wait_caught_up(stub, topic)
    spans = [
        s
        for s in exporter.get_finished_spans()
        if s.context is not None and f"{s.context.trace_id:032x}" == trace_id
    ]
    consumed: list[Any] = [s.attributes for s in spans if s.kind == SpanKind.CONSUMER]
    committed: list[Any] = [s.attributes for s in spans if s.name == "market_data.trades commit"]
    assert consumed and committed
    assert {a["messaging.destination.name"] for a in consumed} == {topic}
    assert sum(a["messaging.batch.message_count"] for a in consumed) == 20
    assert sum(a["k2.rows"] for a in committed) == 20


@pytest.mark.parametrize("field", ["start", "end"])
async def test_compacting_days_no_date_holds_is_invalid_argument(
    start_writer: Callable[..., Awaitable[Started]], field: str
) -> None:
    _, stub, _ = await start_writer()
    request = pb.CompactRequest(table="market_data.trades")
    getattr(request, field).seconds = 2**62
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.Compact(request, metadata=WRITE, timeout=30):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # was UNKNOWN (OverflowError)
    assert (refused.value.details() or "").startswith(f"{field}: outside years 1-9999")


def read_dead_letters(kafka: KafkaSettings, count: int, timeout: float = 30.0) -> list[Message]:
    consumer = Consumer(consumer_config(kafka, f"dlq-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic_name(kafka, DEAD_LETTER)])
    letters: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(letters) < count and time.monotonic() < deadline:
        letters += [m for m in consumer.consume(10, timeout=0.5) if m.error() is None]
    consumer.close()
    return letters


async def test_tombstones_and_garbage_are_dead_lettered_and_never_stop_the_writer(
    start_writer: Callable[..., Awaitable[Started]],
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
) -> None:
    """A null value (a tombstone), a truncated message, an unknown fingerprint and random bytes between good
    messages: the good ones land once, the bad ones are dead-lettered with why and where they were, and later
    messages keep landing."""
    topic = topic_name(kafka_settings, TRADES)
    day = datetime(2026, 1, 2, tzinfo=UTC)
    good = [
        sample_trade(message_id=str(uuid.uuid4()), trade_id=f"T-{i}", timestamp=day + timedelta(seconds=i))
        for i in range(30)
    ]
    encoded = [avro.encode("trade", record) for record in good]
    bad: list[bytes | None] = [
        None,
        encoded[0][: len(encoded[0]) // 2],
        avro.MAGIC + b"\x01" * 8 + encoded[0][10:],
        os.urandom(40),
    ]
    _, stub, _ = await start_writer(consume_batch=50)
    producer = Producer(producer_config(kafka_settings))
    for value in [*encoded[:5], bad[0], *encoded[5:10], *bad[1:], *encoded[10:20]]:
        producer.produce(topic, value, partition=1)
    assert producer.flush(30) == 0
    await wait_caught_up(stub, topic)

    produce(kafka_settings, topic, encoded[20:], partition=1)  # after the bad ones, commits go on
    status = await wait_caught_up(stub, topic)
    assert status.dead_lettered == 4
    partition = next(p for p in status.partitions if p.topic == topic and p.partition == 1)
    assert partition.committed_offset == partition.high_watermark == 34
    table = next(t for t in status.tables if t.table == "market_data.trades")
    assert table.newest_event_time.seconds == int(good[-1]["timestamp"].timestamp())

    rows = trades_table(iceberg_settings).scan().to_arrow().to_pylist()
    assert sorted(r["trade_id"] for r in rows) == sorted(r["trade_id"] for r in good)

    letters = read_dead_letters(kafka_settings, 4)
    assert [m.value() for m in letters] == bad
    headers = [dict(m.headers() or []) for m in letters]
    assert [(h[DLQ_SOURCE_TOPIC], h[DLQ_SOURCE_PARTITION], h[DLQ_SOURCE_OFFSET]) for h in headers] == [
        (topic.encode(), b"1", str(offset).encode()) for offset in (5, 11, 12, 13)
    ]
    reasons = [h[DLQ_REASON].decode() for h in headers]  # type: ignore[union-attr]
    assert "tombstone" in reasons[0]
    assert all(reasons), reasons


async def test_commits_made_outside_k2_never_send_the_writer_back_to_the_start(
    start_writer: Callable[..., Awaitable[Started]],
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
) -> None:
    """An operator's deletes are snapshots without K2's offsets: the writer, running or restarted, reads them
    from the newest ancestor that has them; re-reading the topic from its start would bring deleted rows back."""
    topic = topic_name(kafka_settings, TRADES)
    day = datetime(2026, 1, 2, tzinfo=UTC)

    def batch(name: str, count: int, start: int) -> list[bytes]:
        return [
            avro.encode(
                "trade",
                sample_trade(
                    message_id=str(uuid.uuid4()),
                    trade_id=f"{name}-{i}",
                    symbol=("BTCUSDT", "ETHUSDT")[i % 2],
                    timestamp=day + timedelta(seconds=start + i),
                ),
            )
            for i in range(count)
        ]

    def trade_ids() -> list[str]:
        return sorted(
            trades_table(iceberg_settings)
            .scan(selected_fields=("trade_id",))
            .to_arrow()["trade_id"]
            .to_pylist()
        )

    app, stub, _ = await start_writer()
    produce(kafka_settings, topic, batch("A", 20, 0))
    await wait_caught_up(stub, topic)
    trades_table(iceberg_settings).delete(EqualTo("symbol", "ETHUSDT"))  # while the writer runs
    produce(kafka_settings, topic, batch("B", 10, 20))
    await wait_caught_up(stub, topic)
    expected = sorted([f"A-{i}" for i in range(0, 20, 2)] + [f"B-{i}" for i in range(10)])
    assert trade_ids() == expected

    await app.stop()
    trades_table(iceberg_settings).delete(EqualTo("trade_id", "B-0"))  # while no writer runs
    _, stub, _ = await start_writer()
    status = await stub.GetStatus(pb.GetStatusRequest())
    assert [p.committed_offset for p in status.partitions if p.topic == topic and p.partition == 0] == [30]
    table = next(t for t in status.tables if t.table == "market_data.trades")
    assert table.newest_event_time.seconds == int((day + timedelta(seconds=29)).timestamp())
    produce(kafka_settings, topic, batch("C", 4, 30))
    await wait_caught_up(stub, topic)
    assert trade_ids() == sorted([*expected[:10], *expected[11:], "C-0", "C-1", "C-2", "C-3"])


def writer_rewinds() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "k2_writer_rewinds"
        for sample in metric.samples
        if sample.name == "k2_writer_rewinds_total"
    )


async def test_a_commit_failing_part_way_leaves_no_data_file_behind(
    start_writer: Callable[..., Awaitable[Started]],
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
) -> None:
    """A commit whose second partition cannot be written (its folder's path is taken by a file: as a full disk
    or a refused write, the write fails after other files were written) fails and is retried, over and over;
    once the path is free the rows land, and the table's data folder holds only the files the table uses."""
    topic = topic_name(kafka_settings, TRADES)
    _, stub, _ = await start_writer()
    data = Path(trades_table(iceberg_settings).location().removeprefix("file://")) / "data"
    data.mkdir(parents=True, exist_ok=True)
    blocked = data / "timestamp_day=2026-01-03"
    blocked.write_text("not a folder")
    records = [
        sample_trade(
            message_id=str(uuid.uuid4()),
            trade_id=f"T-{i}",
            symbol=f"S{i % 7}USDT",
            timestamp=datetime(2026, 1, 2 + i % 2, 1, tzinfo=UTC) + timedelta(seconds=i),
        )
        for i in range(40)
    ]
    rewinds = writer_rewinds()
    produce(kafka_settings, topic, [avro.encode("trade", r) for r in records])
    deadline = time.monotonic() + 60
    while writer_rewinds() < rewinds + 2:  # failed and retried at least twice
        assert time.monotonic() < deadline, "the blocked commit never failed"
        await asyncio.sleep(0.1)
    assert not trades_table(iceberg_settings).scan().to_arrow().num_rows
    blocked.unlink()
    await wait_caught_up(stub, topic)

    table = trades_table(iceberg_settings)
    assert sorted(r["trade_id"] for r in table.scan().to_arrow().to_pylist()) == sorted(
        r["trade_id"] for r in records
    )
    assert not unreferenced_files(table)


def unreferenced_files(table: Any) -> set[str]:
    """Files in the table's data folder or Avro files (manifest lists, manifests) in its metadata folder that
    no snapshot of the table references."""
    location = Path(table.location().removeprefix("file://"))
    used = {task.file.file_path for task in table.scan().plan_files()}
    for snapshot in table.metadata.snapshots:
        used.add(snapshot.manifest_list)
        used.update(manifest.manifest_path for manifest in snapshot.manifests(table.io))
    present = {path for path in (location / "data").rglob("*") if path.is_file()}
    present.update((location / "metadata").glob("*.avro"))
    return {str(path) for path in present} - {path.removeprefix("file://") for path in used}


async def test_a_commit_the_catalog_fails_leaves_no_file_behind(
    start_writer: Callable[..., Awaitable[Started]],
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
) -> None:
    """The catalog's database is locked by another process while the writer commits: the commit fails after
    its data files, manifests and manifest list were written, and is retried once the lock is gone. The rows
    land once and no file of the failed commit is left."""
    topic = topic_name(kafka_settings, TRADES)
    records = [
        sample_trade(
            message_id=str(uuid.uuid4()),
            trade_id=f"T-{i}",
            symbol=f"S{i % 5}USDT",
            timestamp=datetime(2026, 1, 2, tzinfo=UTC) + timedelta(seconds=i),
        )
        for i in range(20)
    ]
    _, stub, _ = await start_writer()
    produce(kafka_settings, topic, [avro.encode("trade", r) for r in records[:10]])
    await wait_caught_up(stub, topic)
    rewinds = writer_rewinds()
    lock = sqlite3.connect(iceberg_settings.catalog_uri.removeprefix("sqlite:///"), isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # readers go on; the catalog's commit waits, then fails
        produce(kafka_settings, topic, [avro.encode("trade", r) for r in records[10:]])
        deadline = time.monotonic() + 60
        while writer_rewinds() == rewinds:
            assert time.monotonic() < deadline, "the commit never failed"
            await asyncio.sleep(0.1)
    finally:
        lock.close()
    await wait_caught_up(stub, topic)
    table = trades_table(iceberg_settings)
    assert sorted(r["trade_id"] for r in table.scan().to_arrow().to_pylist()) == sorted(
        r["trade_id"] for r in records
    )
    assert not unreferenced_files(table)
