"""The query service's read cache holds metadata only (file lists, Parquet footers, the times a row group's
selected rows span), bounded; reads through it follow the snapshots exactly (a new snapshot's rows are seen, an
older snapshot keeps its own) and give the same rows and encoded messages as reads without it, and a row group
found to hold none of a selection is not read again — against a real (SQLite) Iceberg catalog."""

import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from strategies import sample_trade

from k2.core.arrow_records import arrow_schema, records_to_arrow
from k2.core.config import IcebergSettings
from k2.core.iceberg import ensure_table, load_catalog, partition_fields
from k2.core.protos import trade_to_proto
from k2.core.records import TRADE, Record
from k2.marketdata.v1.marketdata_pb2 import Trade
from k2.query.v1 import query_pb2
from k2.services.query.cache import ReadCache
from k2.services.query.history import History, Scan, Snapshot, ordered_rows
from k2.services.query.selection import Selection
from k2.services.query.wire import FRAMED, joined

T0 = datetime(2024, 5, 1, tzinfo=UTC)
COLUMNS = [*arrow_schema(TRADE).names, FRAMED]


def batch(symbols: list[str], count: int, start: datetime) -> list[Record]:
    return [
        sample_trade(
            message_id=str(uuid.uuid4()),
            symbol=symbols[i % len(symbols)],
            source_sequence=i,
            timestamp=start + timedelta(seconds=i),
        )
        for i in range(count)
    ]


def read(snapshot: Snapshot, selection: Selection) -> pa.Table:
    return pa.concat_tables(list(ordered_rows(TRADE, snapshot, selection, COLUMNS)))  # every one has rows


def trades_in(rows: pa.Table) -> list[Trade]:
    return list(query_pb2.QueryTradesResponse.FromString(joined(rows[FRAMED].combine_chunks())).trades)


def test_cached_reads_follow_the_snapshots_and_match_uncached_reads(
    iceberg_settings: IcebergSettings,
) -> None:
    table = ensure_table(load_catalog(iceberg_settings), iceberg_settings, TRADE)
    first = batch(["BTCUSDT", "ETHUSDT"], 40, T0)
    table.append(records_to_arrow(TRADE, first))
    cached = History(iceberg_settings, ReadCache(64 << 20, small_files_bytes=64 << 20))
    uncached = History(iceberg_settings, ReadCache(0))
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
    assert (
        read(cached.at(TRADE, "trades", old.snapshot_id), everything).num_rows == 40
    )  # the old snapshot's own
    assert (
        0 < new.cache.footers_nbytes <= 64 << 20
        and uncached.current(TRADE, "trades").cache.footers_nbytes == 0
    )
    assert 0 < new.cache.small_files_nbytes <= 64 << 20  # these files are small: their rows were kept
    for selection in (everything, eth):  # and read from there, the same rows
        assert read(new, selection).equals(read(uncached.current(TRADE, "trades"), selection))


def test_a_row_group_found_to_hold_none_of_a_selection_is_not_read_again(
    iceberg_settings: IcebergSettings,
) -> None:
    """Statistics cover every symbol of a row group: CATUSDT sorts between BTCUSDT and ETHUSDT, so the file's
    bounds admit it; once read, the row group is known to hold none, and the next page skips it unread."""
    table = ensure_table(load_catalog(iceberg_settings), iceberg_settings, TRADE, partition_fields(None))
    table.append(records_to_arrow(TRADE, batch(["BTCUSDT", "ETHUSDT"], 40, T0)))
    history = History(iceberg_settings, ReadCache(64 << 20))
    snapshot = history.current(TRADE, "trades")
    absent = Selection(symbols=frozenset(["CATUSDT"]))
    first = Scan(TRADE, snapshot, absent, COLUMNS)
    assert list(first) == [] and first.rows_read == 40
    again = Scan(TRADE, snapshot, absent, COLUMNS)
    assert list(again) == [] and again.rows_read == 0
    eth = Scan(TRADE, snapshot, Selection(symbols=frozenset(["ETHUSDT"])), COLUMNS)
    assert sum(rows.num_rows for rows in eth) == 20
