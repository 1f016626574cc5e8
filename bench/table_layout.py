"""Table layouts compared on the scale dataset (bench/scale_dataset.py: 2,000 symbols, Zipf activity, BIGUSDT's
1M trades; 5.2M trades): the numbers behind the layout in docs/tables.md.

For each candidate partition spec and Parquet row-group size, in a table of its own, through the writer's own
code (k2.services.writer: TableAppender commits, TableMaintenance compaction):
- the writer at 10,000 trades/s: commits of 5,000 consecutive trades of the day (half a second of that stream),
  files per commit and the commit's time;
- the rest of the day committed as a writer with a backlog does (200,000-row commits), then compacted: files
  before and after, the compaction's time;
- what one symbol's day costs to read, for a small symbol (~5,000 trades) and for BIGUSDT: data files a scan
  plans (Iceberg partition and file statistics pruning), their row groups whose symbol statistics admit the
  symbol (what pyarrow decodes), and a plain pyiceberg scan + filter of those rows (median of 3), once as
  committed and once compacted.
Prints one JSON object: {"candidates": [...]} plus the machine. `--small` runs the 300k-trade dataset."""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table
from pyiceberg.transforms import BucketTransform
from pyiceberg.types import StringType
from scale_dataset import SMALL, ScaleSpec, trades_table

from k2.core.config import IcebergSettings
from k2.core.iceberg import PartitionFields, ensure_table, load_catalog, partition_fields
from k2.services.writer.config import WriterSettings
from k2.services.writer.maintenance import TableMaintenance
from k2.services.writer.tables import OFFSET_COLUMN, PARTITION_COLUMN, PartitionProgress, TableAppender

STREAM_COMMIT_ROWS = 5_000  # 10,000 trades/s committed every 500 ms
STREAM_COMMITS = 20
BACKLOG_COMMIT_ROWS = 200_000  # the writer's commit_rows


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def candidates() -> list[tuple[str, PartitionFields, int]]:
    day_exchange = partition_fields(None)
    return [
        ("day, exchange; row groups 1M (before)", day_exchange, 1_048_576),
        ("day, exchange; row groups 64k", day_exchange, 65_536),
        ("day, exchange, bucket(8, symbol); row groups 64k", partition_fields(8), 65_536),
        ("day, exchange, bucket(16, symbol); row groups 64k", partition_fields(16), 65_536),
        ("day, exchange, bucket(32, symbol); row groups 64k", partition_fields(32), 65_536),
        ("day, exchange, bucket(16, symbol); row groups 16k", partition_fields(16), 16_384),
        ("day, exchange, bucket(16, symbol); row groups 256k", partition_fields(16), 262_144),
    ]


class Committer:
    """The writer's TableAppender fed slices of the day as if consumed from one Kafka partition."""

    def __init__(self, table: Table):
        self.appender = TableAppender(table, "trades", WriterSettings())
        self.progress = {0: PartitionProgress(None)}
        self.offset = 0

    def commit(self, rows: pa.Table) -> tuple[float, int]:
        """(seconds, data files) of committing `rows`."""
        offsets = pa.array(range(self.offset, self.offset + rows.num_rows), pa.int64())
        buffered = rows.append_column(
            PARTITION_COLUMN, pa.array([0] * rows.num_rows, pa.int32())
        ).append_column(OFFSET_COLUMN, offsets)
        self.offset += rows.num_rows
        self.progress[0].next = self.offset
        began = time.perf_counter()
        result = self.appender.commit(buffered, self.progress)
        self.progress[0].start = self.offset
        return time.perf_counter() - began, result.files


def symbol_filter(spec: ScaleSpec, symbol: str) -> Any:
    start = spec.day_start_us
    return And(
        EqualTo(term="symbol", value=symbol),
        And(
            GreaterThanOrEqual(term="timestamp", value=start),
            LessThan(term="timestamp", value=start + int(timedelta(days=1).total_seconds() * 1e6)),
        ),
    )


def read_cost(table: Table, spec: ScaleSpec, symbol: str, expected: int) -> dict[str, float]:
    """Files planned, row groups admitted by their symbol statistics, and a plain scan's median time."""
    row_filter = symbol_filter(spec, symbol)
    tasks = list(table.scan(row_filter=row_filter).plan_files())
    row_groups = rows_decoded = 0
    for task in tasks:
        metadata = pq.ParquetFile(task.file.file_path.removeprefix("file://")).metadata
        column = metadata.schema.names.index("symbol")
        for i in range(metadata.num_row_groups):
            stats = metadata.row_group(i).column(column).statistics
            if stats is None or not stats.has_min_max or stats.min <= symbol <= stats.max:
                row_groups += 1
                rows_decoded += metadata.row_group(i).num_rows
    times = []
    for _ in range(3):
        began = time.perf_counter()
        rows = table.scan(row_filter=row_filter).to_arrow()
        times.append(time.perf_counter() - began)
        assert rows.num_rows == expected, f"{symbol}: {rows.num_rows} rows, expected {expected}"
    return {
        "files": len(tasks),
        "file_bytes": sum(t.file.file_size_in_bytes for t in tasks),
        "row_groups": row_groups,
        "rows_decoded": rows_decoded,
        "scan_s": round(statistics.median(times), 3),
    }


def measure(
    name: str, fields: PartitionFields, row_group_rows: int, day: pa.Table, spec: ScaleSpec, folder: Path
) -> dict[str, Any]:
    log(f"{name} ...")
    iceberg = IcebergSettings(catalog_uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/wh")
    table = ensure_table(load_catalog(iceberg), iceberg, "trade", fields)
    with table.transaction() as transaction:
        transaction.set_properties(
            {"write.parquet.row-group-limit": str(row_group_rows), "commit.manifest-merge.enabled": "true"}
        )
    table.refresh()
    committer = Committer(table)
    middle = day.num_rows // 2
    stream = [
        committer.commit(day.slice(middle + i * STREAM_COMMIT_ROWS, STREAM_COMMIT_ROWS))
        for i in range(STREAM_COMMITS)
    ]
    rest = pa.concat_tables([day.slice(0, middle), day.slice(middle + STREAM_COMMITS * STREAM_COMMIT_ROWS)])
    for start in range(0, rest.num_rows, BACKLOG_COMMIT_ROWS):
        committer.commit(rest.slice(start, BACKLOG_COMMIT_ROWS))
    counts = spec.counts()
    small = spec.small_symbol()
    table.refresh()
    as_committed = {
        "small": read_cost(table, spec, small, counts[small]),
        "big": read_cost(table, spec, spec.big_symbol, counts[spec.big_symbol]),
    }
    maintenance = TableMaintenance(table, WriterSettings())
    began = time.perf_counter()
    compaction = maintenance.compact()
    compact_s = time.perf_counter() - began
    table.refresh()
    compacted = {
        "small": read_cost(table, spec, small, counts[small]),
        "big": read_cost(table, spec, spec.big_symbol, counts[spec.big_symbol]),
    }
    files = table.inspect.files()
    return {
        "layout": name,
        "stream_files_per_commit": round(statistics.mean(f for _, f in stream), 1),
        "stream_commit_s": {
            "p50": round(statistics.median(s for s, _ in stream), 3),
            "max": round(max(s for s, _ in stream), 3),
        },
        "as_committed": {"data_files": compaction.files_before, **as_committed},
        "compaction": {
            "files_before": compaction.files_before,
            "files_after": compaction.files_after,
            "seconds": round(compact_s, 1),
            "rows_per_s": round(day.num_rows / compact_s),
        },
        "compacted": {
            "data_files": len(files),
            "data_bytes": sum(files["file_size_in_bytes"].to_pylist()),
            **compacted,
        },
    }


def files_per_commit_only(day: pa.Table) -> dict[str, float]:
    """Partitions a 5,000-trade commit touches under finer specs (not written: counted from the rows)."""
    middle = day.num_rows // 2
    slices = [day.slice(middle + i * STREAM_COMMIT_ROWS, STREAM_COMMIT_ROWS) for i in range(STREAM_COMMITS)]
    result = {"identity(symbol)": statistics.mean(len(set(s["symbol"].to_pylist())) for s in slices)}
    for buckets in (64, 128):
        bucket = BucketTransform(buckets).pyarrow_transform(StringType())
        result[f"bucket({buckets}, symbol)"] = statistics.mean(
            len(set(bucket(s["symbol"]).to_pylist())) for s in slices
        )
    return {k: round(v, 1) for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the 300k-trade dataset")
    parser.add_argument("--only", type=int, nargs="*", help="candidate indexes to run")
    args = parser.parse_args()
    spec = SMALL if args.small else ScaleSpec()
    began = time.perf_counter()
    day = trades_table(spec)
    log(f"{day.num_rows:,} trades generated in {time.perf_counter() - began:.1f} s")
    results = []
    for index, (name, fields, row_group_rows) in enumerate(candidates()):
        if args.only is not None and index not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="k2-bench-layout-") as folder:
            results.append(measure(name, fields, row_group_rows, day, spec, Path(folder)))
    print(
        json.dumps(
            {
                "trades": day.num_rows,
                "symbols": spec.symbols,
                "small_symbol": spec.small_symbol(),
                "small_symbol_trades": spec.counts()[spec.small_symbol()],
                "big_symbol_trades": spec.counts()[spec.big_symbol],
                "candidates": results,
                "partitions_touched_per_5000_trade_commit": files_per_commit_only(day),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
