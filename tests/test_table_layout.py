"""The table layout and its migration, against a real broker, a real Iceberg catalog, the writer and the query
service: a table of the old layout (day, exchange) holding data moves to the current one (+ bucket(symbol)) by
partition-spec evolution when the new writer starts; its data stays readable, exactly, before the change, after
it and after compaction rewrote the old files into the new layout, through the table and through every query
RPC, while a reader queries all along and the writer keeps committing. And the compaction of a partition that
is always being written."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from test_query_harness import T0, Market, Service, quote, running_service, ts
from test_query_history import expected_bars, order

from k2.core.arrow_records import records_to_arrow
from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.iceberg import ensure_table, load_catalog, offsets_property, partition_fields, spec_matches
from k2.core.records import QUOTE, TRADE, Record, RecordKind
from k2.query.v1 import query_pb2
from k2.services.writer.config import WriterSettings
from k2.services.writer.server import WriterApp
from k2.writer.v1 import writer_pb2 as pb
from k2.writer.v1 import writer_pb2_grpc

TOKEN = "layout-test-token"
WRITE = [("authorization", f"Bearer {TOKEN}")]
SYMBOLS = [f"S{i:02d}USDT" for i in range(12)]  # spread over several of the 16 buckets
WATCHED = SYMBOLS[:3]
DAY2 = T0 + timedelta(days=1)
END = DAY2 + timedelta(days=1)  # the end of the range queried
# Per symbol: (rows, sum of prices, sum of quantities, first time, last time)
Summary = dict[str, tuple[int, Decimal, Decimal, datetime, datetime]]


def trade_records(symbols: list[str], count: int, start: datetime, first_sequence: int) -> list[Record]:
    """`count` trades per symbol, a few seconds apart, prices and quantities with 18 fractional digits."""
    records = []
    for i in range(count):
        for n, symbol in enumerate(symbols):
            sequence = first_sequence + i
            records.append(
                {
                    "message_id": str(uuid.uuid4()),
                    "trade_id": f"BINANCE-{symbol}-{sequence}",
                    "symbol": symbol,
                    "exchange": "BINANCE",
                    "asset_class": "CRYPTO",
                    "timestamp": start + timedelta(seconds=7 * i, microseconds=n),
                    "price": Decimal(f"{100 + (i * 7 + n) % 13}.{(i * 977 + n) % 10**18:018d}"),
                    "quantity": Decimal(f"{1 + i % 5}.{(i * 31 + n * 7) % 10**18:018d}"),
                    "currency": "USDT",
                    "side": "BUY" if i % 2 else "SELL",
                    "trade_conditions": [],
                    "source_sequence": sequence,
                    "ingestion_timestamp": start,
                    "platform_sequence": None,
                    "vendor_data": None,
                }
            )
    return records


def summary(records: list[Record]) -> Summary:
    """The independent computation: plain Python over the records, exact Decimal sums."""
    result: Summary = {}
    for r in records:
        count, prices, quantities, first, last = result.get(
            r["symbol"], (0, Decimal(0), Decimal(0), r["timestamp"], r["timestamp"])
        )
        result[r["symbol"]] = (
            count + 1,
            prices + r["price"],
            quantities + r["quantity"],
            min(first, r["timestamp"]),
            max(last, r["timestamp"]),
        )
    return result


def table_summary(iceberg: IcebergSettings, kind: RecordKind = TRADE) -> Summary:
    table = load_catalog(iceberg).load_table(f"{iceberg.namespace}.{'trades' if kind == TRADE else 'quotes'}")
    price, quantity = ("price", "quantity") if kind == TRADE else ("bid_price", "bid_quantity")
    rows = table.scan(selected_fields=("message_id", "symbol", "timestamp", price, quantity)).to_arrow()
    ids = rows["message_id"].to_pylist()
    assert len(ids) == len(set(ids)), "a row is in the table twice"
    return summary(
        [
            {"symbol": s, "timestamp": t, "price": p, "quantity": q}
            for s, t, p, q in zip(
                *(rows[c].to_pylist() for c in ("symbol", "timestamp", price, quantity)), strict=True
            )
        ]
    )


def quote_summary(records: list[Record]) -> Summary:
    return summary(
        [
            {
                "symbol": r["symbol"],
                "timestamp": r["timestamp"],
                "price": r["bid_price"],
                "quantity": r["bid_quantity"],
            }
            for r in records
        ]
    )


def commit_as_old_writer(market: Market, kind: RecordKind, records: list[Record]) -> None:
    """Produces the records and commits them to the (old-layout) table with the offsets they end at, as the
    writer of that layout did: rows and the next offset of every partition in one snapshot."""
    produced = market.produce(kind, records)
    table = load_catalog(market.iceberg).load_table(
        f"{market.iceberg.namespace}.{'trades' if kind == TRADE else 'quotes'}"
    )
    offsets = dict(market.committed[kind])
    for p in produced:
        offsets[p.partition] = max(offsets.get(p.partition, 0), p.offset + 1)
    table.append(
        records_to_arrow(kind, records), snapshot_properties=offsets_property({market.topic(kind): offsets})
    )
    market.committed[kind] = offsets


async def start_writer(
    kafka: KafkaSettings, iceberg: IcebergSettings, **overrides: object
) -> tuple[WriterApp, writer_pb2_grpc.WriterServiceStub, grpc.aio.Channel]:
    settings = WriterSettings.model_validate(
        {
            "port": 0,
            "metrics_port": 0,
            "commit_interval_ms": 200,
            "group_id": f"writer-{uuid.uuid4().hex[:8]}",
        }
        | overrides
    )
    app = WriterApp(settings, kafka, iceberg, AuthSettings.model_validate({"write_tokens": [TOKEN]}))
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return app, writer_pb2_grpc.WriterServiceStub(channel), channel


async def wait_committed(
    iceberg: IcebergSettings, kind: RecordKind, rows: int, timeout: float = 90.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        table = load_catalog(iceberg).load_table(
            f"{iceberg.namespace}.{'trades' if kind == TRADE else 'quotes'}"
        )
        snapshot = table.current_snapshot()
        committed = int(snapshot.summary.additional_properties.get("total-records", 0)) if snapshot else 0
        if committed >= rows:
            assert committed == rows
            return
        assert time.monotonic() < deadline, f"{committed} of {rows} rows committed"
        await asyncio.sleep(0.2)


async def compact(stub: writer_pb2_grpc.WriterServiceStub, table: str) -> pb.CompactResult:
    async for event in stub.Compact(pb.CompactRequest(table=table), metadata=WRITE):
        if event.HasField("result"):
            return event.result
    raise AssertionError("no result")


def live_spec_ids(iceberg: IcebergSettings, name: str) -> set[int]:
    table = load_catalog(iceberg).load_table(f"{iceberg.namespace}.{name}")
    return set(table.inspect.files()["spec_id"].to_pylist())


async def query_trades(service: Service, symbol: str, limit: int = 0) -> list[query_pb2.QueryTradesResponse]:
    """Every page of one symbol's trades in [T0, END)."""
    pages: list[query_pb2.QueryTradesResponse] = []
    token = ""
    while True:
        pages += [
            page
            async for page in service.stub.QueryTrades(
                query_pb2.QueryTradesRequest(
                    symbols=[symbol], start=ts(T0), end=ts(END), limit=limit, page_token=token
                )
            )
        ]
        token = pages[-1].next_page_token
        if not token:
            return pages


async def check_every_rpc(service: Service, trades: list[Record], quotes: list[Record]) -> None:
    """QueryTrades (paged), QueryQuotes, GetBars, GetLatest and a subscription's replay give exactly the records."""
    for symbol in WATCHED:
        wanted = sorted((r for r in trades if r["symbol"] == symbol and r["timestamp"] < END), key=order)
        pages = await query_trades(service, symbol, limit=17)
        got = [t for page in pages for t in page.trades]
        assert [t.message_id for t in got] == [r["message_id"] for r in wanted]
        assert [(Decimal(t.price), Decimal(t.quantity)) for t in got] == [
            (r["price"], r["quantity"]) for r in wanted
        ]
        bars = await service.stub.GetBars(
            query_pb2.GetBarsRequest(
                symbol=symbol, interval=query_pb2.BAR_INTERVAL_1M, start=ts(T0), end=ts(END)
            )
        )
        expected = expected_bars(wanted, timedelta(minutes=1))
        assert [
            (
                Decimal(b.open),
                Decimal(b.high),
                Decimal(b.low),
                Decimal(b.close),
                Decimal(b.volume),
                Decimal(b.vwap),
                b.trade_count,
            )
            for b in bars.bars
        ] == [
            (w["open"], w["high"], w["low"], w["close"], w["volume"], w["vwap"], w["count"]) for w in expected
        ]
    symbol = WATCHED[0]
    wanted_quotes = sorted((r for r in quotes if r["symbol"] == symbol), key=order)
    quoted = [
        q
        async for response in service.stub.QueryQuotes(
            query_pb2.QueryQuotesRequest(symbols=[symbol], start=ts(T0), end=ts(END))
        )
        for q in response.quotes
    ]
    assert [q.message_id for q in quoted] == [r["message_id"] for r in wanted_quotes]
    latest = await service.stub.GetLatest(query_pb2.GetLatestRequest(symbols=WATCHED))
    for entry in latest.latest:
        last = max((r for r in trades if r["symbol"] == entry.symbol), key=order)
        assert entry.trade.message_id == last["message_id"]
    wanted = sorted((r for r in trades if r["symbol"] == symbol), key=order)
    call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=[symbol], start=ts(T0)))
    replayed: list[str] = []
    async with asyncio.timeout(60):
        while len(replayed) < len(wanted):
            response = await call.read()
            assert response is not grpc.aio.EOF
            replayed += [t.message_id for t in response.trades]
    call.cancel()
    assert replayed == [r["message_id"] for r in wanted]


async def read_all_along(
    service: Service, must_hold: list[Record], may_hold: Callable[[], set[str]], stop: asyncio.Event
) -> int:
    """Queries WATCHED[0]'s trades until stopped: every answer holds each of `must_hold` exactly once and
    nothing but rows produced by then. Returns how many queries were checked."""
    symbol = WATCHED[0]
    required = {r["message_id"] for r in must_hold if r["symbol"] == symbol}
    checked = 0
    while not stop.is_set():
        ids = [t.message_id for page in await query_trades(service, symbol) for t in page.trades]
        assert len(ids) == len(set(ids)), "a trade was returned twice"
        assert required <= set(ids), f"{len(required - set(ids))} committed trades missing"
        assert set(ids) <= may_hold()
        checked += 1
        await asyncio.sleep(0.05)
    return checked


@pytest.fixture
async def old_layout(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> AsyncIterator[Market]:
    catalog = load_catalog(iceberg_settings)
    for kind in (TRADE, QUOTE):
        table = ensure_table(catalog, iceberg_settings, kind, partition_fields(None))
        assert [f.name for f in table.spec().fields] == ["timestamp_day", "exchange"]
    market = Market(kafka_settings, iceberg_settings)
    yield market
    market.close()


async def test_old_layout_migrates_by_spec_evolution_and_compaction(
    old_layout: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    market = old_layout
    old_trades = []
    for n in range(3):  # three commits: several old-layout files per partition
        batch = trade_records(SYMBOLS, 15, T0 + timedelta(hours=n), first_sequence=100 * n)
        commit_as_old_writer(market, TRADE, batch)
        old_trades += batch
    old_quotes = [
        quote(symbol, T0 + timedelta(seconds=i), i, bid=f"100.{i}{n}")
        for i in range(10)
        for n, symbol in enumerate(SYMBOLS)
    ]
    commit_as_old_writer(market, QUOTE, old_quotes)
    assert table_summary(iceberg_settings) == summary(old_trades)
    assert table_summary(iceberg_settings, QUOTE) == quote_summary(old_quotes)

    async with running_service(kafka_settings, iceberg_settings) as service:
        await check_every_rpc(service, old_trades, old_quotes)
        produced: set[str] = {r["message_id"] for r in old_trades}
        stop = asyncio.Event()
        reader = asyncio.create_task(read_all_along(service, old_trades, lambda: produced, stop))

        app, stub, channel = await start_writer(
            kafka_settings, iceberg_settings, compaction_interval_seconds=0
        )
        try:
            for name in ("trades", "quotes"):  # the new writer moved both tables to the current spec
                table = load_catalog(iceberg_settings).load_table(f"{iceberg_settings.namespace}.{name}")
                assert spec_matches(table.spec(), table.schema(), partition_fields())
                assert live_spec_ids(iceberg_settings, name) == {0}
            assert table_summary(iceberg_settings) == summary(old_trades)  # the change alone rewrote nothing

            new_trades = trade_records(
                SYMBOLS, 10, T0 + timedelta(hours=5), first_sequence=1000
            ) + trade_records(SYMBOLS, 10, DAY2, first_sequence=2000)
            produced |= {r["message_id"] for r in new_trades}
            market.produce(TRADE, new_trades)
            await wait_committed(iceberg_settings, TRADE, len(old_trades) + len(new_trades))
            all_trades = old_trades + new_trades
            assert live_spec_ids(iceberg_settings, "trades") == {0, 1}  # both layouts live side by side
            assert table_summary(iceberg_settings) == summary(all_trades)
            await check_every_rpc(service, all_trades, old_quotes)

            # Compaction while the writer keeps committing (a third day, so the watched rows stay the same).
            more = trade_records(SYMBOLS, 40, DAY2 + timedelta(days=1), first_sequence=5000)
            produced |= {r["message_id"] for r in more}
            producing = asyncio.create_task(asyncio.to_thread(market.produce, TRADE, more))
            trades_result = await compact(stub, "market_data.trades")
            quotes_result = await compact(stub, "market_data.quotes")
            await producing
            assert trades_result.snapshot_id and quotes_result.snapshot_id
            await wait_committed(iceberg_settings, TRADE, len(all_trades) + len(more))
            await compact(stub, "market_data.trades")  # the third day's files, now that none are arriving
            assert live_spec_ids(iceberg_settings, "trades") == {1}  # every old file rewritten
            assert live_spec_ids(iceberg_settings, "quotes") == {1}
            everything = all_trades + more
            assert table_summary(iceberg_settings) == summary(everything)
            assert table_summary(iceberg_settings, QUOTE) == quote_summary(old_quotes)
            await check_every_rpc(service, everything, old_quotes)
        finally:
            stop.set()
            checked = await reader
            await channel.close()
            await app.stop()
    assert checked > 0


async def test_a_partition_always_being_written_is_compacted_by_size_class(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    """Today's partitions never go quiet: the scheduled compaction merges their commits' small files anyway,
    keeping every row exactly once."""
    market = Market(kafka_settings, iceberg_settings)
    app, _, channel = await start_writer(
        kafka_settings,
        iceberg_settings,
        commit_interval_ms=100,
        compaction_interval_seconds=1,
        compaction_quiet_seconds=3600,
        compaction_min_files=4,
        snapshot_expiry_interval_seconds=0,
    )
    produced: list[Record] = []
    files_seen: list[int] = []
    try:
        for n in range(16):  # small batches, each committed on its own: a file per bucket touched
            batch = trade_records(SYMBOLS[:4], 3, T0 + timedelta(minutes=n), first_sequence=10 * n)
            market.produce(TRADE, batch)
            produced += batch
            await wait_committed(iceberg_settings, TRADE, len(produced))
            files_seen.append(
                len(
                    load_catalog(iceberg_settings)
                    .load_table(f"{iceberg_settings.namespace}.trades")
                    .inspect.files()
                )
            )
        table = load_catalog(iceberg_settings).load_table(f"{iceberg_settings.namespace}.trades")
        deadline = time.monotonic() + 60
        while not any(s.summary and s.summary.operation.value == "overwrite" for s in table.snapshots()):
            assert time.monotonic() < deadline, "the hot partition was never compacted"
            await asyncio.sleep(0.5)
            table.refresh()
    finally:
        await channel.close()
        await app.stop()
        market.close()
    buckets = len({str(p) for p in table.inspect.files()["partition"].to_pylist()})
    assert len(table.inspect.files()) < 16 * buckets  # without compaction: a file per bucket per commit
    assert table_summary(iceberg_settings) == summary(produced)
