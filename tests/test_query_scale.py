"""History reads at scale, against the real broker, a real Iceberg catalog and the query service: pages stream
across files and row groups with no gap and no duplicate, however small the pages, the responses (rows and
bytes) and what one page may read; a paged query goes on exactly while the writer commits and compaction rewrites
the files it reads (pages keep to their snapshot); the Kafka tail one query reads is bounded. Each answer is compared to an independent
computation over the records (order, counts, exact decimal sums, first and last times)."""

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from test_query_harness import T0, Market, Service, query_settings, running_service, ts
from test_query_history import order
from test_table_layout import compact, start_writer

from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import ensure_table, load_catalog
from k2.core.records import TRADE, Record
from k2.query.v1 import query_pb2
from k2.services.query.kafka_tail import bounded_tail

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT", "FFFUSDT"]
WANTED = ["BBBUSDT", "EEEUSDT"]
ROW_GROUP_ROWS = 16
START, END = T0 + timedelta(minutes=3), T0 + timedelta(hours=5)


def records(
    count: int, start: datetime, first_sequence: int, step: timedelta = timedelta(seconds=5)
) -> list[Record]:
    """`count` trades per symbol; several share a timestamp (ties ordered by exchange, sequence, message id)."""
    result = []
    for i in range(count):
        for n, symbol in enumerate(SYMBOLS):
            sequence = first_sequence + i
            result.append(
                {
                    "message_id": str(uuid.uuid4()),
                    "trade_id": f"BINANCE-{symbol}-{sequence}",
                    "symbol": symbol,
                    "exchange": "BINANCE" if n % 3 else "KRAKEN",
                    "asset_class": "CRYPTO",
                    "timestamp": start + step * (i // 2),
                    "price": Decimal(f"{100 + i % 17}.{i * 7919 % 10**18:018d}"),
                    "quantity": Decimal(f"{1 + i % 3}.{(i * 31 + n) % 10**18:018d}"),
                    "currency": "USDT",
                    "side": "BUY" if i % 2 else "SELL",
                    "trade_conditions": [],
                    "source_sequence": sequence,
                    "ingestion_timestamp": start,
                    "platform_sequence": None,
                    "vendor_data": None,
                }
            )
    return result


def writer_order(batch: list[Record]) -> list[Record]:
    """The order the writer writes a file in: by symbol, then time."""
    return sorted(batch, key=lambda r: (r["symbol"], r["timestamp"]))


def small_row_groups(iceberg: IcebergSettings) -> None:
    table = ensure_table(load_catalog(iceberg), iceberg, TRADE)
    with table.transaction() as transaction:
        transaction.set_properties({"write.parquet.row-group-limit": str(ROW_GROUP_ROWS)})


def summary(trades: list[tuple[str, str, datetime, Decimal, Decimal]]) -> tuple[object, ...]:
    """(count, exact sum of prices, of quantities, first time, last time)."""
    return (
        len(trades),
        sum((t[3] for t in trades), Decimal(0)),
        sum((t[4] for t in trades), Decimal(0)),
        min(t[2] for t in trades),
        max(t[2] for t in trades),
    )


def expected(produced: list[Record]) -> list[tuple[str, str, datetime, Decimal, Decimal]]:
    rows = sorted((r for r in produced if r["symbol"] in WANTED and START <= r["timestamp"] < END), key=order)
    return [(r["message_id"], r["symbol"], r["timestamp"], r["price"], r["quantity"]) for r in rows]


async def query(
    service: Service, limit: int, token: str = "", pages: int | None = None
) -> tuple[list[tuple[str, str, datetime, Decimal, Decimal]], int, str]:
    """(trades, pages read, the token to go on with) of WANTED in [START, END), following page tokens."""
    trades, read = [], 0
    while pages is None or read < pages:
        request = query_pb2.QueryTradesRequest(
            symbols=WANTED, start=ts(START), end=ts(END), limit=limit, page_token=token
        )
        token = ""
        async for response in service.stub.QueryTrades(request, timeout=60):
            trades += [
                (
                    t.message_id,
                    t.symbol,
                    t.timestamp.ToDatetime().replace(tzinfo=START.tzinfo),
                    Decimal(t.price),
                    Decimal(t.quantity),
                )
                for t in response.trades
            ]
            token = response.next_page_token or token
        read += 1
        assert read < 200, f"paging does not end: {len(trades)} trades, the last {trades[-1:]}"
        if not token:
            break
    return trades, read, token


async def test_pages_stream_across_files_and_row_groups_with_no_gap_and_no_duplicate(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    small_row_groups(iceberg_settings)
    produced = []
    for n, start in enumerate(
        [T0, T0 + timedelta(minutes=30), T0 + timedelta(minutes=20)]
    ):  # overlapping files
        batch = records(100, start, first_sequence=1000 * n)
        market.produce(TRADE, batch if n == 1 else writer_order(batch))  # one file not in the writer's order
        market.commit(TRADE)
        produced += batch
    tail = records(10, T0 + timedelta(minutes=4), first_sequence=9000)
    market.produce(TRADE, tail)  # not committed: the Kafka tail, merged into the same order
    produced += tail
    table = load_catalog(iceberg_settings).load_table(f"{iceberg_settings.namespace}.trades")
    files = table.inspect.files()
    assert (
        len(files) > 3 and max(files["record_count"].to_pylist()) > 2 * ROW_GROUP_ROWS
    )  # several row groups
    wanted = expected(produced)

    settings = query_settings(response_rows=7, response_bytes=1500, page_max_rows_read=2 * ROW_GROUP_ROWS)
    async with running_service(kafka_settings, iceberg_settings, settings) as service:
        for limit in (9, 100_000):
            got, pages, _ = await query(service, limit)
            assert [t[0] for t in got] == [t[0] for t in wanted], limit  # the same rows in the same order
            assert got == wanted
            assert summary(got) == summary(wanted)
            assert pages >= len(wanted) / limit
        got, pages, _ = await query(service, 100_000)
        assert pages > 1  # pages end early once they have read what one may, and go on from there
        sizes = [
            len(r.SerializeToString())
            async for r in service.stub.QueryTrades(
                query_pb2.QueryTradesRequest(symbols=WANTED, start=ts(START), end=ts(END), limit=500)
            )
        ]
        assert max(sizes) <= 1500 + 1024  # rows within the byte bound, and the last response's token


async def test_a_paged_query_goes_on_exactly_while_the_writer_commits_and_compaction_rewrites(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    small_row_groups(iceberg_settings)
    first = []
    for n in range(3):
        batch = writer_order(records(60, T0 + timedelta(minutes=10 * n), first_sequence=1000 * n))
        market.produce(TRADE, batch)
        market.commit(TRADE)
        first += batch
    async with running_service(kafka_settings, iceberg_settings) as service:
        page, _, token = await query(service, 25, pages=1)
        assert token and page == expected(first)[:25]
        more = writer_order(records(40, T0 + timedelta(minutes=15), first_sequence=5000))
        market.produce(TRADE, more)
        market.commit(TRADE)  # a commit as the writer makes them (rows and offsets), between two pages
        paged, _, token = await query(service, 25, token, pages=2)
        app, stub, channel = await start_writer(
            kafka_settings, iceberg_settings, compaction_interval_seconds=0
        )
        try:
            result = await compact(stub, "market_data.trades")  # ...and compaction's rewrite of those files
            assert result.files_after < result.files_before
            rest, _, _ = await query(service, 25, token)
            assert page + paged + rest == expected(first)  # the first page's snapshot, to its end, exactly
            everything, _, _ = await query(service, 1000)
            assert everything == expected(first + more)
            assert summary(everything) == summary(expected(first + more))
        finally:
            await channel.close()
            await app.stop()


def tail_capped() -> float:
    return (
        REGISTRY.get_sample_value("k2_query_tail_capped_total", {"service": "query", "kind": "trade"}) or 0.0
    )


async def test_the_kafka_tail_one_query_reads_is_bounded(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    """With the writer far behind, a query reads at most tail_max_messages of the tail: it answers as of the
    snapshot plus a prefix of every partition's tail, the same on every page."""
    committed = records(10, T0, first_sequence=0)
    market.produce(TRADE, committed)
    market.commit(TRADE)
    lagging = market.produce(TRADE, records(50, T0 + timedelta(minutes=1), first_sequence=100))
    most = 60
    before = tail_capped()
    async with running_service(
        kafka_settings, iceberg_settings, query_settings(tail_max_messages=most)
    ) as service:
        request = query_pb2.QueryTradesRequest(
            symbols=SYMBOLS, start=ts(T0), end=ts(T0 + timedelta(days=1)), limit=7
        )
        ids: list[str] = []

        while True:
            token = ""
            async for response in service.stub.QueryTrades(request, timeout=60):
                ids += [t.message_id for t in response.trades]
                token = response.next_page_token or token
            if not token:
                break
            request.page_token = token
    assert len(ids) == len(set(ids))
    assert {r["message_id"] for r in committed} <= set(ids)
    from_tail = {p.record["message_id"]: p for p in lagging if p.record["message_id"] in set(ids)}
    assert most - 6 < len(from_tail) <= most  # all of the bound, but what an equal share of it rounds off
    for partition in {p.partition for p in lagging}:  # a prefix of each partition's tail, no gap
        offsets = sorted(p.offset for p in from_tail.values() if p.partition == partition)
        tail_offsets = sorted(p.offset for p in lagging if p.partition == partition)
        assert offsets == tail_offsets[: len(offsets)]
    assert tail_capped() > before


@given(
    st.dictionaries(st.integers(0, 8), st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=8),
    st.integers(0, 10**6),
)
def test_a_bounded_tail_shares_its_bound_fairly(ranges: dict[int, tuple[int, int]], most: int) -> None:
    start = {p: low for p, (low, _) in ranges.items()}
    end = {p: low + size for p, (low, size) in ranges.items()}
    bounded = bounded_tail(start, end, most)
    granted = {p: bounded[p] - start[p] for p in end}
    wanted = {p: end[p] - start[p] for p in end}
    assert all(0 <= granted[p] <= wanted[p] for p in end)
    assert sum(granted.values()) == min(most, sum(wanted.values())) or sum(granted.values()) > most - len(end)
    assert sum(granted.values()) <= most
    cut = [p for p in end if granted[p] < wanted[p]]
    assert all(granted[p] >= granted[q] - 1 for p in cut for q in end)  # no one cut below another's share
