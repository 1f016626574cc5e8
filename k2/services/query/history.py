"""Iceberg history: the current snapshot and the Kafka offsets it recorded, and ordered scans of one snapshot.

A scan takes the snapshot's files (planned once per snapshot, then kept by the IcebergCache) that may hold the
selection by their time and symbol bounds, and reads them one UTC day at a time — the table is partitioned by day — so a long range is returned in order
without holding it all in memory, and an empty stretch of days costs nothing. Rows from the Kafka tail are merged
into the same windows, so the caller sees one ordered sequence."""

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import cast

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table
from pyiceberg.types import PrimitiveType

from k2.core.arrow_records import arrow_schema
from k2.core.config import IcebergSettings
from k2.core.iceberg import committed_offsets, load_catalog, table_identifier
from k2.core.records import RecordKind
from k2.services.query import wire
from k2.services.query.cache import IcebergCache
from k2.services.query.selection import Key, Selection, rows_after, sort_rows

DAY = 86_400_000_000  # µs
Offsets = dict[int, int]


class SnapshotGone(Exception):
    """A snapshot named by a token no longer exists (expired by table maintenance)."""


@dataclass(frozen=True)
class Snapshot:
    table: Table | None  # None: the table does not exist yet (nothing written)
    snapshot_id: int | None
    offsets: Offsets  # next Kafka offset per partition, recorded by the snapshot's commit
    cache: IcebergCache  # where its plan and the rows of its files are kept


class History:
    def __init__(self, settings: IcebergSettings, cache: IcebergCache):
        self._settings = settings
        self._cache = cache
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
            return Snapshot(table, None, {}, self._cache)
        return Snapshot(table, snapshot.snapshot_id, committed_offsets(table, snapshot.snapshot_id).get(topic, {}),
                        self._cache)

    def at(self, kind: RecordKind, topic: str, snapshot_id: int | None) -> Snapshot:
        """The snapshot a token named (None: the table was empty then)."""
        if snapshot_id is None:
            return Snapshot(None, None, {}, self._cache)
        table = self._load(kind)
        if table is None or table.snapshot_by_id(snapshot_id) is None:
            raise SnapshotGone(f"snapshot {snapshot_id} of the {kind} table no longer exists")
        return Snapshot(table, snapshot_id, committed_offsets(table, snapshot_id).get(topic, {}), self._cache)


MIN_TIME, MAX_TIME = -(2**63), 2**63 - 1  # µs: unbounded


@dataclass(frozen=True)
class _File:
    task: FileScanTask
    first: int  # µs: the file's smallest and largest timestamp (unbounded without statistics)
    last: int
    symbols: tuple[str, str] | None  # the smallest and largest symbol (None: no statistics)

    def may_hold(self, selection: Selection) -> bool:
        return self.symbols is None or selection.symbols is None or any(
            self.symbols[0] <= symbol <= self.symbols[1] for symbol in selection.symbols)


def _plan_files(table: Table, snapshot_id: int) -> list[_File]:
    """Every data file of the snapshot, with its time and symbol bounds."""
    schema = table.schema()
    timestamp, symbol = schema.find_field("timestamp"), schema.find_field("symbol")
    timestamp_type, symbol_type = timestamp.field_type, symbol.field_type
    assert isinstance(timestamp_type, PrimitiveType) and isinstance(symbol_type, PrimitiveType)  # for from_bytes
    files = []
    for task in table.scan(snapshot_id=snapshot_id).plan_files():
        lower, upper = task.file.lower_bounds or {}, task.file.upper_bounds or {}
        first, last = lower.get(timestamp.field_id), upper.get(timestamp.field_id)
        low_symbol, high_symbol = lower.get(symbol.field_id), upper.get(symbol.field_id)
        # from_bytes is typed as returning a TypeVar bound by no argument, which mypy reads as str
        files.append(_File(
            task, cast(int, from_bytes(timestamp_type, first)) if first else MIN_TIME,
            cast(int, from_bytes(timestamp_type, last)) if last else MAX_TIME,
            (from_bytes(symbol_type, low_symbol), from_bytes(symbol_type, high_symbol))
            if low_symbol is not None and high_symbol is not None else None))
    return files


class _Plan:
    """The snapshot's files that may hold selected rows, with their time bounds. Files are read whole (every
    column) into the cache; the selection is then applied to the Arrow rows. `columns` may include wire.FRAMED:
    each row's encoded message, made once per cached file."""

    def __init__(self, kind: RecordKind, snapshot: Snapshot, selection: Selection, columns: list[str]):
        self.files: list[_File] = []
        self._kind = kind
        self._columns = columns
        self._snapshot = snapshot
        table, snapshot_id = snapshot.table, snapshot.snapshot_id
        if table is None or snapshot_id is None:
            return
        self._projection = table.scan(snapshot_id=snapshot_id).projection()
        files = snapshot.cache.plan((table.metadata.table_uuid, snapshot_id), lambda: _plan_files(table, snapshot_id))
        self.files = [f for f in files if f.may_hold(selection)]

    def read(self, files: list[_File], selection: Selection) -> pa.Table:
        table, cache = self._snapshot.table, self._snapshot.cache
        assert table is not None
        schema = _full_schema(self._kind)
        parts = [_row_schema(self._kind, self._columns).empty_table()]
        for file in files:
            task = file.task
            key = (task.file.file_path, tuple(sorted(d.file_path for d in task.delete_files)),
                   self._projection.schema_id)

            def load(task: FileScanTask = task) -> pa.Table:
                scan = ArrowScan(table.metadata, table.io, self._projection, AlwaysTrue())
                return scan.to_table([task]).select(schema.names).cast(schema)

            rows = cache.file_rows(key, load)
            whole = rows.table
            if wire.FRAMED in self._columns:
                whole = whole.append_column(wire.FRAMED_FIELD, cache.framed(key, rows, self._kind))
            parts.append(whole.select(self._columns).filter(selection.mask(whole)))
        return pa.concat_tables(parts)


@functools.cache
def _full_schema(kind: RecordKind) -> pa.Schema:
    return arrow_schema(kind)


def _row_schema(kind: RecordKind, columns: list[str]) -> pa.Schema:
    schema = _full_schema(kind)
    return pa.schema([wire.FRAMED_FIELD if name == wire.FRAMED else schema.field(name) for name in columns])


def _bounded(value: int) -> int | None:
    return None if value in (MIN_TIME, MAX_TIME) else value


def ordered_rows(kind: RecordKind, snapshot: Snapshot, selection: Selection, columns: list[str],
                 tail: pa.Table | None = None, after: Key | None = None) -> Iterator[pa.Table]:
    """The selected rows of the snapshot plus `tail` (rows already selected, every column), sorted, after
    `after`, as a sequence of non-empty tables, one per UTC day with data."""
    schema = _full_schema(kind)
    target = _row_schema(kind, columns)
    plan = _Plan(kind, snapshot, selection, columns)
    files = plan.files
    tail_rows = None
    if tail is not None and tail.num_rows:
        if wire.FRAMED in columns:
            tail = tail.select(schema.names).append_column(wire.FRAMED_FIELD, wire.framed(kind, tail))
        tail_rows = tail.select(columns).cast(target)
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
    plan = _Plan(kind, snapshot, selection, arrow_schema(kind).names)
    best: pa.Table | None = None
    for file in sorted(plan.files, key=lambda f: f.last, reverse=True):
        if best is not None and file.last < best["timestamp"][0].value:
            break
        rows = plan.read([file], selection)
        if rows.num_rows:
            rows = sort_rows(rows if best is None else pa.concat_tables([best, rows]))
            best = rows.slice(rows.num_rows - 1)
    return best
