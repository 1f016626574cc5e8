"""Iceberg history: the current snapshot and the Kafka offsets it recorded, and ordered scans of one snapshot.

A scan plans the snapshot's files once with the selection's row filter (partition and min/max pruning), then
reads them one UTC day at a time — the table is partitioned by day — so a long range is returned in order
without holding it all in memory, and an empty stretch of days costs nothing. Rows from the Kafka tail are merged
into the same windows, so the caller sees one ordered sequence."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table

from k2.core.arrow import arrow_schema
from k2.core.config import IcebergSettings
from k2.core.iceberg import committed_offsets, load_catalog, table_identifier
from k2.core.records import RecordKind
from services.query.selection import Key, Selection, rows_after, sort_rows

DAY = 86_400_000_000  # µs
Offsets = dict[int, int]


class SnapshotGone(Exception):
    """A snapshot named by a token no longer exists (expired by table maintenance)."""


@dataclass(frozen=True)
class Snapshot:
    table: Table | None  # None: the table does not exist yet (nothing written)
    snapshot_id: int | None
    offsets: Offsets  # next Kafka offset per partition, recorded by the snapshot's commit


class History:
    def __init__(self, settings: IcebergSettings):
        self._settings = settings
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()

    def _load(self, kind: RecordKind) -> Table | None:
        with self._lock:
            if self._catalog is None:
                self._catalog = load_catalog(self._settings)
            catalog = self._catalog
        try:
            return catalog.load_table(table_identifier(self._settings, kind))
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def current(self, kind: RecordKind, topic: str) -> Snapshot:
        table = self._load(kind)
        snapshot = table.current_snapshot() if table is not None else None
        if table is None or snapshot is None:
            return Snapshot(table, None, {})
        return Snapshot(table, snapshot.snapshot_id, committed_offsets(table, snapshot.snapshot_id).get(topic, {}))

    def at(self, kind: RecordKind, topic: str, snapshot_id: int | None) -> Snapshot:
        """The snapshot a token named (None: the table was empty then)."""
        if snapshot_id is None:
            return Snapshot(None, None, {})
        table = self._load(kind)
        if table is None or table.snapshot_by_id(snapshot_id) is None:
            raise SnapshotGone(f"snapshot {snapshot_id} of the {kind} table no longer exists")
        return Snapshot(table, snapshot_id, committed_offsets(table, snapshot_id).get(topic, {}))


MIN_TIME, MAX_TIME = -(2**63), 2**63 - 1  # µs: unbounded


@dataclass(frozen=True)
class _File:
    task: FileScanTask
    first: int  # µs: the file's smallest and largest timestamp (unbounded without statistics)
    last: int


class _Plan:
    """The snapshot's files that may hold selected rows, with their time bounds."""

    def __init__(self, snapshot: Snapshot, selection: Selection, columns: list[str]):
        self.files: list[_File] = []
        self._scan = None
        if snapshot.table is None or snapshot.snapshot_id is None:
            return
        self._scan = scan = snapshot.table.scan(row_filter=selection.row_filter(),
                                                snapshot_id=snapshot.snapshot_id)
        self._projection = scan.projection().select(*columns)
        self._columns = columns
        field = snapshot.table.schema().find_field("timestamp")
        for task in scan.plan_files():
            lower = (task.file.lower_bounds or {}).get(field.field_id)
            upper = (task.file.upper_bounds or {}).get(field.field_id)
            self.files.append(_File(task, from_bytes(field.field_type, lower) if lower else MIN_TIME,
                                    from_bytes(field.field_type, upper) if upper else MAX_TIME))

    def read(self, files: list[_File], selection: Selection) -> pa.Table:
        assert self._scan is not None
        scan = ArrowScan(self._scan.table_metadata, self._scan.io, self._projection, selection.row_filter())
        return scan.to_table([f.task for f in files]).select(self._columns)


def _bounded(value: int) -> int | None:
    return None if value in (MIN_TIME, MAX_TIME) else value


def ordered_rows(kind: RecordKind, snapshot: Snapshot, selection: Selection, columns: list[str],
                 tail: pa.Table | None = None, after: Key | None = None) -> Iterator[pa.Table]:
    """The selected rows of the snapshot plus `tail` (rows already selected), sorted, after `after`, as a
    sequence of non-empty tables, one per UTC day with data."""
    target = pa.schema([arrow_schema(kind).field(name) for name in columns])
    plan = _Plan(snapshot, selection, columns)
    files = plan.files
    tail_rows = tail.select(columns).cast(target) if tail is not None and tail.num_rows else None
    cursor = max(MIN_TIME if selection.start is None else selection.start, MIN_TIME if after is None else after[0])
    end = MAX_TIME if selection.end is None else selection.end
    while cursor < end:
        files = [f for f in files if f.last >= cursor]
        if tail_rows is not None:
            tail_rows = Selection(start=_bounded(cursor)).filter(tail_rows)
            tail_rows = tail_rows if tail_rows.num_rows else None
        firsts = [f.first for f in files]
        if tail_rows is not None:
            firsts.append(pc.min(tail_rows["timestamp"]).value)
        if not firsts:
            return
        window_start = max(cursor, min(firsts))
        if window_start >= end:
            return
        if any(f.first == MIN_TIME or f.last == MAX_TIME for f in files):
            window_end = end  # files without statistics: one window for the rest
        else:
            window_end = min(end, window_start - window_start % DAY + DAY)
        window = replace(selection, start=_bounded(window_start), end=_bounded(window_end))
        parts = [target.empty_table()]
        in_window = [f for f in files if f.first < window_end]
        if in_window:
            parts.append(plan.read(in_window, window).cast(target))
        if tail_rows is not None:
            parts.append(window.filter(tail_rows))
        cursor = window_end
        rows = sort_rows(pa.concat_tables(parts))
        if after is not None:
            rows = rows_after(rows, after)
        if rows.num_rows:
            yield rows


def latest_row(kind: RecordKind, snapshot: Snapshot, symbol: str) -> pa.Table | None:
    """The symbol's last row (in the row order) in the snapshot: files are read newest first, stopping as soon
    as no remaining file can hold a newer row."""
    selection = Selection(symbols=frozenset([symbol]))
    plan = _Plan(snapshot, selection, arrow_schema(kind).names)
    best: pa.Table | None = None
    for file in sorted(plan.files, key=lambda f: f.last, reverse=True):
        if best is not None and file.last < best["timestamp"][0].value:
            break
        rows = plan.read([file], selection).cast(arrow_schema(kind))
        if rows.num_rows:
            rows = sort_rows(rows if best is None else pa.concat_tables([best, rows]))
            best = rows.slice(rows.num_rows - 1)
    return best
