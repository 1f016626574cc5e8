"""Table metadata over a day of commits, compressed in time: does it stay bounded?

The writer at 10,000 trades/s commits every 500 ms (2 commits/s: 172,800 a day), each commit adding one file
per partition it touches (day × exchange × 16 symbol buckets). This drives the writer's own code
(k2.services.writer: TableAppender commits with offsets, TableMaintenance expiry and compaction) as fast as the
machine allows, with simulated time: commit k is the half second k of the day (its trades' event times), and
the schedules are counted in commits instead of seconds, keeping the default settings' proportions —
expiry every 60 s (120 commits) keeping the newest 600 snapshots (the 5-minute maximum age at 2 commits/s),
compaction every 60 s with today's partitions always being written (size classes, never "quiet").
Each commit has `--rows` trades over the scale dataset's 2,000 Zipf-weighted symbols (default 500, a tenth of
the real 5,000, so that the run is about metadata, not data volume; every bucket is still touched).

`--scale 0.1` shrinks the retention and the schedules tenfold (60 snapshots kept, maintenance every 12 commits)
to see many retention cycles in a run far shorter than a day.

Prints one JSON object: at checkpoints, the metadata file's size, snapshots kept, manifests and live data files
of the current snapshot, metadata/data files in the warehouse, and commit latency (median, p99) over the commits
since the previous checkpoint; stops after `--commits` (default a day, 172,800) or `--seconds` of wall time
(default 600: at ~0.1-0.2 s a commit a whole day takes hours, and the default proportions reach their steady
state, 600 snapshots kept and compaction every 120 commits, within the first thousand commits)."""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.table import Table
from scale_dataset import ScaleSpec, zipf_symbols

from k2.core.arrow_records import arrow_schema
from k2.core.config import IcebergSettings
from k2.core.iceberg import load_catalog
from k2.services.writer.config import WriterSettings
from k2.services.writer.maintenance import TableMaintenance
from k2.services.writer.tables import (
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    PartitionProgress,
    TableAppender,
    open_table,
)

COMMIT_SECONDS = 0.5
MAINTENANCE_EVERY = 120  # commits: expiry and compaction every 60 s
KEEP_SNAPSHOTS = 600  # 300 s at 2 commits/s


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Trades:
    """Commit-sized batches of trades over the Zipf-weighted symbols, event times in the commit's half second."""

    def __init__(self, spec: ScaleSpec, rows: int):
        self.symbols, self.weights = zipf_symbols(spec)
        self.rows = rows
        self.rng = random.Random(spec.seed)
        self.start_us = spec.day_start_us
        self.schema = arrow_schema("trade")
        self.offset = 0

    def batch(self, commit: int) -> pa.Table:
        n, rng = self.rows, self.rng
        symbols = rng.choices(self.symbols, cum_weights=self.weights, k=n)
        base = self.start_us + int(commit * COMMIT_SECONDS * 1e6)
        times = pa.array(
            sorted(base + rng.randrange(int(COMMIT_SECONDS * 1e6)) for _ in range(n)), pa.int64()
        ).cast(pa.timestamp("us", "UTC"))
        columns: dict[str, Any] = {
            "message_id": [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)],
            "trade_id": [f"SCALEX-{self.offset + i}" for i in range(n)],
            "symbol": symbols,
            "exchange": ["SCALEX"] * n,
            "asset_class": ["CRYPTO"] * n,
            "timestamp": times,
            "price": pa.array([f"{rng.randrange(1, 10**12) / 10**8:.8f}" for _ in range(n)]),
            "quantity": pa.array([f"{rng.randrange(1, 10**9) / 10**8:.8f}" for _ in range(n)]),
            "currency": ["USDT"] * n,
            "side": ["BUY"] * n,
            "trade_conditions": [[]] * n,
            "source_sequence": range(self.offset, self.offset + n),
            "ingestion_timestamp": times,
            "platform_sequence": pa.nulls(n, pa.int64()),
            "vendor_data": pa.nulls(n, self.schema.field("vendor_data").type),
        }
        table = pa.table(
            [
                pa.array(columns[f.name]).cast(f.type)
                if not isinstance(columns[f.name], pa.Array)
                else columns[f.name].cast(f.type)
                for f in self.schema
            ],
            schema=self.schema,
        )
        offsets = pa.array(range(self.offset, self.offset + n), pa.int64())
        self.offset += n
        return table.append_column(PARTITION_COLUMN, pa.array([0] * n, pa.int32())).append_column(
            OFFSET_COLUMN, offsets
        )


def snapshot_state(table: Table, folder: Path) -> dict[str, Any]:
    table.refresh()
    snapshot = table.current_snapshot()
    assert snapshot is not None
    metadata_path = Path(table.metadata_location.removeprefix("file://"))
    manifests = snapshot.manifests(table.io)
    warehouse_files = [p for p in folder.rglob("*") if p.is_file()]
    return {
        "metadata_file_bytes": metadata_path.stat().st_size,
        "snapshots": len(table.metadata.snapshots),
        "manifests_in_snapshot": len(manifests),
        "manifest_bytes_in_snapshot": sum(m.manifest_length for m in manifests),
        "live_data_files": sum((m.added_files_count or 0) + (m.existing_files_count or 0) for m in manifests),
        "metadata_folder_files": sum(1 for p in warehouse_files if p.parent.name == "metadata"),
        "data_folder_files": sum(1 for p in warehouse_files if p.suffix == ".parquet"),
        "rows": int(snapshot.summary.additional_properties.get("total-records", 0))
        if snapshot.summary
        else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=172_800)
    parser.add_argument(
        "--seconds",
        type=float,
        default=600.0,
        help="wall-time budget (default 10 minutes, so that make bench ends; 'inf' for the whole day)",
    )
    parser.add_argument("--rows", type=int, default=500, help="trades per commit")
    parser.add_argument("--checkpoint", type=int, default=1_000, help="commits between checkpoints")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="retention and schedules × this (0.1: keep 60 snapshots, maintain every 12 commits), to "
        "see many retention cycles where a day of commits cannot run",
    )
    args = parser.parse_args()
    keep = max(1, round(KEEP_SNAPSHOTS * args.scale))
    every = max(1, round(MAINTENANCE_EVERY * args.scale))
    settings = WriterSettings(snapshot_max_age_seconds=0, snapshot_min_keep=keep)
    trades = Trades(ScaleSpec(), args.rows)
    checkpoints = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="k2-bench-metadata-") as folder:
        iceberg = IcebergSettings(
            catalog_uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/wh"
        )
        table = open_table(load_catalog(iceberg), iceberg, settings, "trade")
        appender = TableAppender(table, "trades", settings)
        maintenance = TableMaintenance(load_catalog(iceberg).load_table(".".join(table.name())), settings)
        progress = {0: PartitionProgress(None)}
        latencies: list[float] = []
        files_per_commit: list[int] = []
        maintenance_seconds = 0.0
        commit = 0
        while commit < args.commits and time.monotonic() - started < args.seconds:
            rows = trades.batch(commit)
            progress[0].next = trades.offset
            began = time.perf_counter()
            result = appender.commit(rows, progress)
            latencies.append(time.perf_counter() - began)
            files_per_commit.append(result.files)
            progress[0].start = trades.offset
            commit += 1
            began = time.perf_counter()
            if commit % every == 0:
                maintenance.expire()
                maintenance.compact(
                    quiet_seconds=1e9, min_files=settings.compaction_min_files
                )  # always active
            maintenance_seconds += time.perf_counter() - began
            if commit % args.checkpoint == 0 or commit == args.commits:
                state = snapshot_state(table, Path(folder))
                ordered = sorted(latencies)
                checkpoints.append(
                    {
                        "commits": commit,
                        "simulated_hours": round(commit * COMMIT_SECONDS / 3600, 2),
                        **state,
                        "commit_s_p50": round(statistics.median(ordered), 3),
                        "commit_s_p99": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
                        "files_per_commit": round(statistics.mean(files_per_commit), 1),
                        "maintenance_s": round(maintenance_seconds, 1),
                        "wall_s": round(time.monotonic() - started),
                    }
                )
                log(json.dumps(checkpoints[-1]))
                latencies, files_per_commit, maintenance_seconds = [], [], 0.0
    print(
        json.dumps(
            {
                "commits": commit,
                "simulated_hours": round(commit * COMMIT_SECONDS / 3600, 2),
                "rows_per_commit": args.rows,
                "snapshots_kept": keep,
                "maintenance_every_commits": every,
                "checkpoints": checkpoints,
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
