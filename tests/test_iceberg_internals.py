"""k2.core.iceberg_internals against the installed pyiceberg: every function of the module, on a table of K2's
layout (partitioned by day, exchange and bucket(16, symbol)) in a local catalog. A pyiceberg upgrade that changes
the internals K2 relies on fails here, by name, before the writer's commits or compaction do."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.transforms import BucketTransform
from pyiceberg.types import StringType
from strategies import sample_trade

from k2.core.arrow_records import records_to_arrow
from k2.core.config import IcebergSettings
from k2.core.iceberg import SYMBOL_BUCKETS, ensure_table, load_catalog
from k2.core.iceberg_internals import (
    CachedTransaction,
    expire_snapshots,
    partition_values,
    read_data_files,
    write_partition_files,
)
from k2.core.records import TRADE

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def trade_rows(count: int, start: datetime = T0) -> pa.Table:
    """Trades over two days, three symbols and two exchanges."""
    return records_to_arrow(
        TRADE,
        [
            sample_trade(
                message_id=f"00000000-0000-4000-8000-{i:012d}",
                trade_id=f"T-{i}",
                symbol=SYMBOLS[i % 3],
                exchange="BINANCE" if i % 2 else "COINBASE",
                timestamp=start + timedelta(hours=7 * i),
                price=Decimal(100 + i),
                source_sequence=i,
            )
            for i in range(count)
        ],
    )


def trades_table(iceberg_settings: IcebergSettings) -> Table:
    return ensure_table(load_catalog(iceberg_settings), iceberg_settings, TRADE)


def no_write_fails(paths: object) -> None:
    raise AssertionError("a data file could not be written")


def by_partition(table: Table, rows: pa.Table) -> tuple[pa.Table, list[tuple[list[object], int]]]:
    """`rows` ordered by partition, and their runs as write_partition_files takes them."""
    values = partition_values(table.metadata, rows)
    keyed = rows
    for i, column in enumerate(values):
        keyed = keyed.append_column(f"key{i}", column)
    keys = [f"key{i}" for i in range(len(values))]
    keyed = keyed.sort_by([(k, "ascending") for k in keys])
    runs = keyed.select(keys).group_by(keys, use_threads=False).aggregate([([], "count_all")]).to_pylist()
    return keyed.drop_columns(keys), [([run[k] for k in keys], run["count_all"]) for run in runs]


def commit(table: Table, files: list[DataFile]) -> None:
    transaction = CachedTransaction(table)
    with transaction.update_snapshot().fast_append() as added:
        for data_file in files:
            added.append_data_file(data_file)
    transaction.commit_transaction()


def append(table: Table, rows: pa.Table) -> None:
    ordered, runs = by_partition(table, rows)
    commit(table, write_partition_files(table.metadata, table.io, ordered, runs, on_failure=no_write_fails))


def message_ids(rows: pa.Table) -> list[str]:
    return sorted(rows["message_id"].to_pylist())


def test_partition_values_are_the_specs_transforms_of_each_row(iceberg_settings: IcebergSettings) -> None:
    table = trades_table(iceberg_settings)
    rows = trade_rows(8)
    day, exchange, bucket = partition_values(table.metadata, rows)
    epoch = date(1970, 1, 1)
    assert day.to_pylist() == [(t.date() - epoch).days for t in rows["timestamp"].to_pylist()]
    assert exchange.to_pylist() == rows["exchange"].to_pylist()
    symbol_bucket = BucketTransform(SYMBOL_BUCKETS).transform(StringType())
    assert bucket.to_pylist() == [symbol_bucket(symbol) for symbol in rows["symbol"].to_pylist()]


def test_written_partition_files_hold_their_runs_and_read_back(iceberg_settings: IcebergSettings) -> None:
    table = trades_table(iceberg_settings)
    rows = trade_rows(12)
    ordered, runs = by_partition(table, rows)
    assert len(runs) > 2, "the rows span several partitions"
    files = write_partition_files(table.metadata, table.io, ordered, runs, on_failure=no_write_fails)
    assert [([f.partition[i] for i in range(len(f.partition))], f.record_count) for f in files] == [
        (values, count) for values, count in runs
    ]
    commit(table, files)
    committed = [
        task.file for task in table.scan().plan_files()
    ]  # as compaction has them: from the manifests
    assert sorted(f.file_path for f in committed) == sorted(f.file_path for f in files)
    read = read_data_files(table, committed)
    assert read.num_rows == rows.num_rows
    assert message_ids(read) == message_ids(rows)
    assert pc.sum(read["price"]).as_py() == pc.sum(rows["price"]).as_py()


def test_a_cached_transaction_sees_each_staged_update_and_commits(iceberg_settings: IcebergSettings) -> None:
    table = trades_table(iceberg_settings)
    transaction = CachedTransaction(table)
    first = transaction.table_metadata
    assert transaction.table_metadata is first, "computed once per staged state"
    transaction.set_properties({"k2.test": "1"})
    assert transaction.table_metadata.properties["k2.test"] == "1"
    transaction.set_properties({"k2.test": "2"})
    assert transaction.table_metadata.properties["k2.test"] == "2"
    transaction.commit_transaction()
    assert table.refresh().properties["k2.test"] == "2"

    append(table, trade_rows(6))
    assert message_ids(table.scan().to_arrow()) == message_ids(trade_rows(6))


def test_expire_snapshots_removes_exactly_the_given_ones(iceberg_settings: IcebergSettings) -> None:
    table = trades_table(iceberg_settings)
    for day in range(3):
        append(table, trade_rows(4, start=T0 + timedelta(days=10 * day)))
    oldest, middle, newest = (
        s.snapshot_id for s in sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)
    )
    expire_snapshots(table, [oldest])
    assert [s.snapshot_id for s in table.refresh().metadata.snapshots] == [middle, newest]
    assert table.scan().to_arrow().num_rows == 12, "the current snapshot still holds every row"
