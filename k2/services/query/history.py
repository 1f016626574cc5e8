"""Iceberg history: the current snapshot and the Kafka offsets it recorded, and ordered scans of one snapshot.

A scan pushes the selection down as far as the files allow (docs/operations.md, "How a history query reads"):

- files: the snapshot's file list (planned once per snapshot) is pruned by each file's partition (the exchange,
  the symbol's bucket) and its column bounds (time, symbol);
- row groups: each remaining file's Parquet footer (kept by the ReadCache) gives every row group's time and
  symbol statistics; a row group that cannot hold the selection is never read. A row group is read in two steps,
  its symbol/exchange/time columns first: one holding no selected row costs only those. The time range its
  selected rows actually span is remembered, so the next page skips it without reading it;
- pages within a row group: pyarrow has no page-index reads, so a row group is decoded whole.

Rows come out in the row order from one merge over the row groups: a row group is read once the merge reaches
its first time (by its statistics), and rows are handed out up to the next unread row group's first time. What
is held is the row groups overlapping the merge's position, not the partition; a resumed scan (`after`) starts
at the row groups that reach past that row. Rows from the Kafka tail are merged into the same order."""

import functools
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table
from pyiceberg.transforms import BucketTransform, IdentityTransform
from pyiceberg.types import PrimitiveType, StringType

from k2.core.arrow_records import arrow_schema
from k2.core.config import IcebergSettings
from k2.core.iceberg import committed_offsets, load_catalog, table_identifier
from k2.core.records import RecordKind
from k2.services.query import wire
from k2.services.query.cache import MISSING, ReadCache
from k2.services.query.selection import TIMESTAMP_TYPE, Key, Selection, rows_after, sort_rows

Offsets = dict[int, int]
MIN_TIME, MAX_TIME = -(2**63), 2**63 - 1  # µs: unbounded
KEY_COLUMNS = ["symbol", "exchange", "timestamp"]  # what decides whether a row is selected
FIELD_ID = b"PARQUET:field_id"
# Few distinct values per row group: decoded as dictionaries (cheaper), made plain after the selection
DICTIONARY_COLUMNS = ["symbol", "exchange", "asset_class", "currency", "side"]
BATCH_ROWS = 8_192  # a row group is decoded in batches of this many rows when its end is not needed
READ_AHEAD = 2  # row groups a scan reads ahead of the merge
SMALL_FILE_ROWS = 65_536  # a file of at most this many rows (one row group) is a small one
ROW_BYTES = 256  # what a row being read ahead is counted as until it is read
_READERS = ThreadPoolExecutor(8, thread_name_prefix="k2-row-groups")  # shared by every scan: bounded


class SnapshotGone(Exception):
    """A snapshot named by a token no longer exists (expired by table maintenance)."""


@dataclass(frozen=True)
class Snapshot:
    table: Table | None  # None: the table does not exist yet (nothing written)
    snapshot_id: int | None
    offsets: Offsets  # next Kafka offset per partition, recorded by the snapshot's commit
    cache: ReadCache  # its file list, its files' footers


class History:
    def __init__(self, settings: IcebergSettings, cache: ReadCache):
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
        return Snapshot(
            table,
            snapshot.snapshot_id,
            committed_offsets(table, snapshot.snapshot_id).get(topic, {}),
            self._cache,
        )

    def at(self, kind: RecordKind, topic: str, snapshot_id: int | None) -> Snapshot:
        """The snapshot a token named (None: the table was empty then)."""
        if snapshot_id is None:
            return Snapshot(None, None, {}, self._cache)
        table = self._load(kind)
        if table is None or table.snapshot_by_id(snapshot_id) is None:
            raise SnapshotGone(f"snapshot {snapshot_id} of the {kind} table no longer exists")
        return Snapshot(table, snapshot_id, committed_offsets(table, snapshot_id).get(topic, {}), self._cache)


@functools.lru_cache(maxsize=65_536)
def _bucket(buckets: int, symbol: str) -> int:
    return cast(int, BucketTransform(buckets).transform(StringType())(symbol))


@dataclass(frozen=True)
class _File:
    task: FileScanTask
    first: int  # µs: the file's smallest and largest timestamp (unbounded without statistics)
    last: int
    symbols: tuple[str, str] | None  # the smallest and largest symbol (None: no statistics)
    exchange: str | None  # its partition's exchange (None: not partitioned by exchange)
    bucket: tuple[int, int] | None  # (buckets, its partition's bucket of the symbol), if partitioned so

    def may_hold(self, selection: Selection) -> bool:
        if (selection.start is not None and self.last < selection.start) or (
            selection.end is not None and self.first >= selection.end
        ):
            return False
        if (
            self.exchange is not None
            and selection.exchanges is not None
            and self.exchange not in selection.exchanges
        ):
            return False
        if selection.symbols is None:
            return True
        if self.bucket is not None and all(
            _bucket(self.bucket[0], s) != self.bucket[1] for s in selection.symbols
        ):
            return False
        return self.symbols is None or any(self.symbols[0] <= s <= self.symbols[1] for s in selection.symbols)


def _plan_files(table: Table, snapshot_id: int) -> list[_File]:
    """Every data file of the snapshot, with its time and symbol bounds and its partition."""
    schema = table.schema()
    timestamp, symbol = schema.find_field("timestamp"), schema.find_field("symbol")
    timestamp_type, symbol_type = timestamp.field_type, symbol.field_type
    assert isinstance(timestamp_type, PrimitiveType) and isinstance(
        symbol_type, PrimitiveType
    )  # for from_bytes
    specs = table.specs()
    files = []
    for task in table.scan(snapshot_id=snapshot_id).plan_files():
        lower, upper = task.file.lower_bounds or {}, task.file.upper_bounds or {}
        first, last = lower.get(timestamp.field_id), upper.get(timestamp.field_id)
        low_symbol, high_symbol = lower.get(symbol.field_id), upper.get(symbol.field_id)
        exchange, bucket = None, None
        spec = specs.get(task.file.spec_id)
        for position, field in enumerate(spec.fields if spec is not None else []):
            value = task.file.partition[position]
            if value is None:
                continue
            source = schema.find_column_name(field.source_id)
            if source == "exchange" and isinstance(field.transform, IdentityTransform):
                exchange = value
            elif source == "symbol" and isinstance(field.transform, BucketTransform):
                bucket = (field.transform.num_buckets, value)
        # from_bytes is typed as returning a TypeVar bound by no argument, which mypy reads as str
        files.append(
            _File(
                task,
                cast(int, from_bytes(timestamp_type, first)) if first else MIN_TIME,
                cast(int, from_bytes(timestamp_type, last)) if last else MAX_TIME,
                (from_bytes(symbol_type, low_symbol), from_bytes(symbol_type, high_symbol))
                if low_symbol is not None and high_symbol is not None
                else None,
                exchange,
                bucket,
            )
        )
    return files


@dataclass(frozen=True)
class _RowGroupStats:
    rows: int
    first: int
    last: int
    symbols: tuple[str, str] | None


@dataclass(frozen=True)
class _Footer:
    metadata: pq.FileMetaData
    groups: list[_RowGroupStats]
    direct: bool  # its columns are the table's, by field id: row groups are read straight from the file
    nbytes: int


def _read_footer(table: Table, kind: RecordKind, path: str) -> _Footer:
    with table.io.new_input(path).open(seekable=True) as stream:
        metadata = pq.ParquetFile(stream).metadata
    file_schema = metadata.schema.to_arrow_schema()
    table_schema = table.schema()
    direct = True
    table_ids = {field.name: field.field_id for field in table_schema.fields}
    for name in _full_schema(kind).names:
        index = file_schema.get_field_index(name)
        field_ids = (file_schema.field(index).metadata or {}).get(FIELD_ID) if index >= 0 else None
        if field_ids is None or int(field_ids) != table_ids.get(name):
            direct = False  # a column added, renamed or retyped since: pyiceberg's read maps it
    groups = []
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        stats = {group.column(c).path_in_schema: group.column(c).statistics for c in range(group.num_columns)}
        times, symbols = stats.get("timestamp"), stats.get("symbol")
        first, last = (
            (times.min_raw, times.max_raw)
            if times is not None and times.has_min_max
            else (MIN_TIME, MAX_TIME)
        )
        groups.append(
            _RowGroupStats(
                group.num_rows,
                first,
                last,
                (symbols.min, symbols.max) if symbols is not None and symbols.has_min_max else None,
            )
        )
    return _Footer(metadata, groups, direct, 4 * metadata.serialized_size + 256 * len(groups))


@dataclass(frozen=True)
class _Group:
    file: _File
    footer: _Footer | None
    index: int  # the row group in the file; -1: the whole file, read through pyiceberg
    first: int
    last: int
    rows: int


@functools.cache
def _full_schema(kind: RecordKind) -> pa.Schema:
    return arrow_schema(kind)


def _row_schema(kind: RecordKind, columns: list[str]) -> pa.Schema:
    schema = _full_schema(kind)
    return pa.schema([wire.FRAMED_FIELD if name == wire.FRAMED else schema.field(name) for name in columns])


def _first_time(rows: pa.Table) -> int:
    return cast(int, rows["timestamp"][0].value)


def _before(rows: pa.Table, limit: int) -> int:
    """How many of the sorted rows are before `limit` (µs)."""
    return cast(int, pc.sum(pc.less(rows["timestamp"], pa.scalar(limit, TIMESTAMP_TYPE))).as_py() or 0)


def _in_order(rows: pa.Table) -> pa.Table:
    """Rows of one row group (sorted by symbol, then time) in the row order; already in it when they are
    strictly increasing in time, as one symbol's trades mostly are."""
    if rows.num_rows < 2:
        return rows
    times = rows["timestamp"].combine_chunks()
    increasing = pc.all(pc.greater(times.slice(1), times.slice(0, len(times) - 1))).as_py()
    return rows if increasing else sort_rows(rows)


class Scan:
    """The selected rows of a snapshot (and of a Kafka tail) in the row order, after `after`, chunk by chunk.
    `rows_read` counts the rows decoded so far: what the scan has cost."""

    def __init__(
        self,
        kind: RecordKind,
        snapshot: Snapshot,
        selection: Selection,
        columns: list[str],
        tail: pa.Table | None = None,
        after: Key | None = None,
    ):
        self.rows_read = 0
        self.snapshot = snapshot
        self._kind = kind
        self._selection = selection
        self._columns = columns
        # what rows are read as: with the framed column (each row's message), every column and that one, framed
        # as each row group is read (on the reading threads; a small file's once, kept with its rows)
        self._framed = wire.FRAMED in columns
        self._stored_columns = _full_schema(kind).names if self._framed else list(columns)
        self._data_columns = [*self._stored_columns, wire.FRAMED] if self._framed else self._stored_columns
        self._data_schema = _row_schema(kind, self._data_columns)
        self._target = _row_schema(kind, columns)
        self._after = after
        self._names = Selection(selection.symbols, selection.exchanges)  # for the remembered bounds
        self._start = max(
            MIN_TIME if selection.start is None else selection.start, MIN_TIME if after is None else after[0]
        )
        self._open: list[pa.Table] = []
        self._reading: dict[int, Future[pa.Table]] = {}  # by id() of the pending group: read ahead
        if tail is not None and tail.num_rows:
            self._hold(
                sort_rows(self._with_framed(tail.select(self._stored_columns))).cast(self._data_schema)
            )
        self.groups = self._plan()
        self._pending = deque(sorted(self.groups, key=lambda g: g.first))

    def _plan(self) -> list[_Group]:
        table, snapshot_id, cache = self.snapshot.table, self.snapshot.snapshot_id, self.snapshot.cache
        if table is None or snapshot_id is None:
            return []
        selection, start = self._selection, self._start
        end = MAX_TIME if selection.end is None else selection.end
        files = cache.plan((table.metadata.table_uuid, snapshot_id), lambda: _plan_files(table, snapshot_id))
        groups = []
        for file in files:
            if not file.may_hold(selection) or file.last < start:
                continue
            path = file.task.file.file_path
            footer: _Footer = cache.footer(path, functools.partial(_read_footer, table, self._kind, path))
            if file.task.delete_files or not footer.direct:
                groups.append(_Group(file, None, -1, file.first, file.last, file.task.file.record_count))
                continue
            for index, stats in enumerate(footer.groups):
                if (
                    stats.last < start
                    or stats.first >= end
                    or (
                        selection.symbols is not None
                        and stats.symbols is not None
                        and not any(stats.symbols[0] <= s <= stats.symbols[1] for s in selection.symbols)
                    )
                ):
                    continue
                first, last = stats.first, stats.last
                known = cache.bounds((path, index, self._names))
                if known is None:
                    continue  # read before: none of its rows is selected
                if known is not MISSING:
                    first, last = cast(tuple[int, int], known)
                    if last < start or first >= end:
                        continue
                groups.append(_Group(file, footer, index, first, last, stats.rows))
        return groups

    def _hold(self, rows: pa.Table) -> None:
        """Keeps sorted rows for the merge, without those up to `after`."""
        if self._after is not None and rows.num_rows and _first_time(rows) <= self._after[0]:
            rows = rows_after(rows, self._after)
        if rows.num_rows:
            self._open.append(rows)

    def _take(self, group: _Group) -> pa.Table:
        """The group's rows, read ahead or now; the next READ_AHEAD pending groups start reading meanwhile (in
        parallel: pyarrow decodes without the GIL), as a plain scan reads several row groups at once."""
        reading = self._reading.pop(id(group), None) or _READERS.submit(self.read, group)
        for ahead in itertools.islice(self._pending, READ_AHEAD):
            if id(ahead) not in self._reading:
                self._reading[id(ahead)] = _READERS.submit(self.read, ahead)
        self.rows_read += group.rows
        return reading.result()

    def read(self, group: _Group) -> pa.Table:
        """The group's selected rows (the data columns), in the row order."""
        try:
            return self._read(group)
        except FileNotFoundError as error:  # a page went on with a scan whose snapshot expired meanwhile
            raise SnapshotGone(f"snapshot {self.snapshot.snapshot_id} no longer exists (expired)") from error

    def _read(self, group: _Group) -> pa.Table:
        table = self.snapshot.table
        assert table is not None
        selection = self._selection
        if group.footer is None:
            projection = table.scan(snapshot_id=self.snapshot.snapshot_id).projection()
            scan = ArrowScan(table.metadata, table.io, projection, selection.row_filter())
            rows = scan.to_table([group.file.task]).select(_full_schema(self._kind).names)
            selected = selection.filter(rows.cast(_full_schema(self._kind))).select(self._stored_columns)
            return sort_rows(self._with_framed(selected)).cast(self._data_schema)
        path = group.file.task.file.file_path
        cache = self.snapshot.cache
        if group.file.task.file.record_count <= SMALL_FILE_ROWS and cache.small_files_bytes > 0:
            # a small file (a commit not compacted yet): its row group is kept decoded, as opening and reading
            # it again would cost more than the rows it holds
            whole = cache.row_group((path, group.index), functools.partial(self._read_whole, group, path))
            return self._selected(group, path, whole.select(KEY_COLUMNS), lambda _stop: whole)
        with table.io.new_input(path).open(seekable=True) as stream:
            parquet = self._parquet(stream, group)
            keys = parquet.read_row_group(group.index, columns=KEY_COLUMNS)

            def read_until(stop: int) -> pa.Table:
                if stop >= keys.num_rows:
                    return parquet.read_row_group(group.index, columns=self._stored_columns)
                # the rows are sorted by symbol: the group's rows after the last selected are not needed
                batches = []
                for batch in parquet.iter_batches(
                    BATCH_ROWS, row_groups=[group.index], columns=self._stored_columns
                ):
                    batches.append(batch)
                    stop -= batch.num_rows
                    if stop <= 0:
                        break
                return pa.Table.from_batches(batches)

            return self._selected(group, path, keys, read_until)

    def _parquet(self, stream: Any, group: _Group) -> pq.ParquetFile:
        assert group.footer is not None
        return pq.ParquetFile(
            stream,
            metadata=group.footer.metadata,
            read_dictionary=[c for c in DICTIONARY_COLUMNS if c in self._stored_columns],
        )

    def _read_whole(self, group: _Group, path: str) -> pa.Table:
        """The whole row group: every column, and each row's framed message (what any request may need)."""
        table = self.snapshot.table
        assert table is not None
        kind = self._kind
        with table.io.new_input(path).open(seekable=True) as stream:
            rows = pq.ParquetFile(
                stream,
                metadata=group.footer.metadata if group.footer else None,
                read_dictionary=[c for c in DICTIONARY_COLUMNS if c in _full_schema(kind).names],
            ).read_row_group(group.index, columns=_full_schema(kind).names)
        return rows.append_column(wire.FRAMED_FIELD, wire.framed(kind, rows.cast(_full_schema(kind))))

    def _with_framed(self, rows: pa.Table) -> pa.Table:
        """`rows` (the stored columns) with each row's framed message, when the scan returns them."""
        if not self._framed or wire.FRAMED in rows.column_names:
            return rows
        return rows.append_column(
            wire.FRAMED_FIELD, wire.framed(self._kind, rows.cast(_full_schema(self._kind)))
        )

    def _selected(
        self, group: _Group, path: str, keys: pa.Table, read_until: Callable[[int], pa.Table]
    ) -> pa.Table:
        """The selected rows of a row group whose key columns are `keys`, in the row order; `read_until(n)`
        gives (at least) its first n rows' data columns."""
        selection = self._selection
        named = self._names.mask(keys)
        times = pc.filter(keys["timestamp"], named).cast(pa.int64())
        self.snapshot.cache.remember_bounds(
            (path, group.index, self._names),
            (pc.min(times).as_py(), pc.max(times).as_py()) if len(times) else None,
        )
        if not len(times):
            return self._data_schema.empty_table()
        if (selection.start is not None and pc.min(times).as_py() < selection.start) or (
            selection.end is not None and pc.max(times).as_py() >= selection.end
        ):
            named = pc.and_(named, Selection(start=selection.start, end=selection.end).mask(keys))
        selected = pc.indices_nonzero(named)
        if not len(selected):
            return self._data_schema.empty_table()
        rows = read_until(selected[-1].as_py() + 1)
        rows = rows.select([c for c in self._data_columns if c in rows.column_names])
        first = selected[0].as_py()
        if selected[-1].as_py() - first + 1 == len(selected):  # one run, as one symbol's rows are
            rows = rows.slice(first, len(selected))
        else:
            rows = rows.take(selected)
        return _in_order(self._with_framed(rows).cast(self._data_schema))

    def position(self) -> int | None:
        """A time no row still to come is before (None: the scan is done)."""
        firsts = [_first_time(rows) for rows in self._open]
        if self._pending:
            firsts.append(self._pending[0].first)
        return min(firsts) if firsts else None

    @property
    def nbytes(self) -> int:
        """The rows it holds (read, not yet handed out, and read ahead)."""
        ahead = sum(
            future.result().nbytes if future.done() and not future.exception() else ROW_BYTES * group.rows
            for group in self._pending
            if (future := self._reading.get(id(group))) is not None
        )
        return sum(rows.nbytes for rows in self._open) + ahead

    def resume(self) -> None:
        """Marks where a page starts: with a read limit, a page always ends past it."""
        self._start = self.position() or self._start

    def _fill(self, read_limit: int | None) -> bool:
        """Reads until the next rows are known (True), or until `read_limit` rows were decoded and the position
        moved on (False)."""
        frontier = self.position() if self._open else None
        while self._pending and (frontier is None or self._pending[0].first <= frontier):
            if (
                read_limit is not None
                and self.rows_read >= read_limit
                and (self.position() or MAX_TIME) > self._start
            ):
                return False
            self._hold(self._take(self._pending.popleft()))
            frontier = self.position() if self._open else None
        return True

    def more(self, read_limit: int | None = None) -> bool:
        """Whether any row is still to come (True too when `read_limit` stopped the reading before it knew)."""
        return not self._fill(read_limit) or bool(self._open)

    def next(self, read_limit: int | None = None, max_rows: int | None = None) -> pa.Table | None:
        """The next rows in the row order (at least one, at most `max_rows`), or None at the end. With
        `read_limit`, an empty table once that many rows were decoded without a row to give and the position
        moved on: the caller may stop there and resume after position()."""
        if not self._fill(read_limit):
            return self._target.empty_table()
        if not self._open:
            return None
        limit = self._pending[0].first if self._pending else None
        parts, kept = [], []
        for rows in self._open:
            count = rows.num_rows if limit is None else _before(rows, limit)
            if count:
                parts.append(rows.slice(0, count))
            if count < rows.num_rows:
                kept.append(rows.slice(count))
        chunk = parts[0] if len(parts) == 1 else sort_rows(pa.concat_tables(parts))
        if max_rows is not None and chunk.num_rows > max_rows:
            kept.append(chunk.slice(max_rows))
            chunk = chunk.slice(0, max_rows)
        self._open = kept
        return chunk.select(self._columns).cast(self._target)

    def __iter__(self) -> Iterator[pa.Table]:
        while (chunk := self.next()) is not None:
            yield chunk


def ordered_rows(
    kind: RecordKind,
    snapshot: Snapshot,
    selection: Selection,
    columns: list[str],
    tail: pa.Table | None = None,
    after: Key | None = None,
) -> Iterator[pa.Table]:
    """The selected rows of the snapshot plus `tail` (rows already selected, every column), in the row order,
    after `after`, as a sequence of non-empty tables. Nothing is read (not even planned) before the first next():
    callers run that on a worker thread."""
    yield from Scan(kind, snapshot, selection, columns, tail, after)


def latest_row(kind: RecordKind, snapshot: Snapshot, symbol: str) -> pa.Table | None:
    """The symbol's last row (in the row order) in the snapshot: row groups are read newest first, stopping as
    soon as no remaining one can hold a newer row."""
    scan = Scan(kind, snapshot, Selection(symbols=frozenset([symbol])), arrow_schema(kind).names)
    best: pa.Table | None = None
    for group in sorted(scan.groups, key=lambda g: g.last, reverse=True):
        if best is not None and group.last < _first_time(best):
            break
        rows = scan.read(group)
        if rows.num_rows:
            rows = sort_rows(rows if best is None else pa.concat_tables([best, rows]))
            best = rows.slice(rows.num_rows - 1)
    return best
