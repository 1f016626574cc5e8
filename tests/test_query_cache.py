"""The query service's Iceberg cache: bounded by bytes, least recently used dropped first; reads through it follow
the snapshots exactly (a new snapshot's rows are seen, an older snapshot keeps its own) and give the same rows and
encoded messages as reads without it — against a real (SQLite) Iceberg catalog."""

import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from strategies import sample_trade

from k2.core.arrow_records import arrow_schema, records_to_arrow
from k2.core.config import IcebergSettings
from k2.core.iceberg import ensure_table, load_catalog
from k2.core.protos import trade_to_proto
from k2.core.records import TRADE, Record
from k2.marketdata.v1.marketdata_pb2 import Trade
from k2.query.v1 import query_pb2
from k2.services.query.cache import IcebergCache
from k2.services.query.history import History, Snapshot, ordered_rows
from k2.services.query.selection import Selection
from k2.services.query.wire import FRAMED, joined

T0 = datetime(2024, 5, 1, tzinfo=UTC)
COLUMNS = [*arrow_schema(TRADE).names, FRAMED]


def rows_of(nbytes: int) -> pa.Table:
    return pa.table({"x": pa.array([b"x" * nbytes], pa.binary())})


def test_cache_holds_at_most_its_bytes_and_drops_the_least_recently_used() -> None:
    loads: list[str] = []

    def loader(name: str, nbytes: int):  # type: ignore[no-untyped-def]
        return lambda: loads.append(name) or rows_of(nbytes)

    size = rows_of(1000).nbytes
    cache = IcebergCache(2 * size)
    cache.file_rows("a", loader("a", 1000))
    cache.file_rows("b", loader("b", 1000))
    cache.file_rows("a", loader("a", 1000))  # kept, and now the most recently used
    cache.file_rows("c", loader("c", 1000))  # drops b
    cache.file_rows("a", loader("a", 1000))
    cache.file_rows("b", loader("b", 1000))
    cache.file_rows("huge", loader("huge", 10_000))  # larger than the bound: read, never kept
    assert loads == ["a", "b", "c", "b", "huge"]
    assert cache.nbytes <= 2 * size

    nothing = IcebergCache(0)
    nothing.file_rows("a", loader("a", 10))
    nothing.file_rows("a", loader("a", 10))
    assert loads[-2:] == ["a", "a"] and nothing.nbytes == 0


def batch(symbols: list[str], count: int, start: datetime) -> list[Record]:
    return [sample_trade(message_id=str(uuid.uuid4()), symbol=symbols[i % len(symbols)], source_sequence=i,
                         timestamp=start + timedelta(seconds=i)) for i in range(count)]


def read(snapshot: Snapshot, selection: Selection) -> pa.Table:
    return pa.concat_tables(list(ordered_rows(TRADE, snapshot, selection, COLUMNS)))  # every one has rows


def trades_in(rows: pa.Table) -> list[Trade]:
    return list(query_pb2.QueryTradesResponse.FromString(joined(rows[FRAMED].combine_chunks())).trades)


def test_cached_reads_follow_the_snapshots_and_match_uncached_reads(iceberg_settings: IcebergSettings) -> None:
    table = ensure_table(load_catalog(iceberg_settings), iceberg_settings, TRADE)
    first = batch(["BTCUSDT", "ETHUSDT"], 40, T0)
    table.append(records_to_arrow(TRADE, first))
    cached, uncached = History(iceberg_settings, IcebergCache(64 << 20)), History(iceberg_settings, IcebergCache(0))
    everything, eth = Selection(), Selection(symbols=frozenset(["ETHUSDT"]))

    old = cached.current(TRADE, "trades")
    assert read(old, everything).num_rows == 40
    second = batch(["ETHUSDT", "SOLUSDT"], 30, T0 + timedelta(days=1))
    table.append(records_to_arrow(TRADE, second))

    new = cached.current(TRADE, "trades")
    for selection in (everything, eth):
        rows = read(new, selection)
        assert rows.equals(read(uncached.current(TRADE, "trades"), selection))
        wanted = [r for r in first + second if selection.symbols is None or r["symbol"] in selection.symbols]
        assert trades_in(rows) == [trade_to_proto(r) for r in wanted]  # in time order, as produced
    assert read(cached.at(TRADE, "trades", old.snapshot_id), everything).num_rows == 40  # the old snapshot's own
    assert new.cache.nbytes > 0
