"""The market_data tables as the writer commits to them: every commit carries, in its snapshot summary, the
Kafka offsets of all partitions (carried forward from the table's current snapshot, advanced by this batch),
so the table alone says where reading resumes. Commits are optimistic: one that loses a race to another commit
(another writer, compaction) is rebuilt on the reloaded table, re-validating the offsets, and tried again."""

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from k2.core.config import IcebergSettings
from k2.core.iceberg import (
    OFFSETS_PROPERTY,
    Offsets,
    committed_offsets,
    ensure_table,
    k2_summary,
    offsets_property,
)
from k2.core.iceberg_internals import CachedTransaction, partition_values, write_partition_files
from k2.core.records import RecordKind

from . import metrics
from .config import WriterSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# The writer retries conflicting commits itself (pyiceberg's own retry would re-commit a stale offsets map);
# frequent small commits merge their manifests once 16 have accumulated (a scan plan reads every manifest of
# its snapshot); old metadata files are removed as new ones are written.
WRITER_TABLE_PROPERTIES = {
    "commit.retry.num-retries": "0",
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
}
# Newest event time and ingestion time (epoch microseconds) of any row committed so far: carried forward by
# every commit like the offsets, so status and freshness need no scan.
MAX_EVENT_TIME = "k2.max-event-time-us"
MAX_INGESTION_TIME = "k2.max-ingestion-time-us"
CARRIED_PROPERTIES = (OFFSETS_PROPERTY, MAX_EVENT_TIME, MAX_INGESTION_TIME)
# Bookkeeping columns of buffered rows, dropped before writing.
PARTITION_COLUMN = "__k2_partition"
OFFSET_COLUMN = "__k2_offset"
SORT_KEYS = [("symbol", "ascending"), ("timestamp", "ascending")]
MAX_UNKNOWN_OUTCOMES = 100


def write_data_files(metadata: TableMetadata, io: FileIO, rows: pa.Table) -> list[DataFile]:
    """Writes `rows` as one Parquet file per partition of the table's current spec, each sorted by
    (symbol, timestamp). Does what pyiceberg's _dataframe_to_data_files does for a partitioned table, but splits
    the rows by one sort on the partition keys instead of one filter over all of them per partition (16
    partitions per exchange-day: the filters were most of a commit's CPU), and never splits a partition's rows
    into several files (a commit's or a compaction bin's rows are bounded by the writer's settings)."""
    if rows.num_rows == 0:
        return []
    keyed = rows
    keys = []
    for i, values in enumerate(partition_values(metadata, rows)):
        keys.append(f"__k2_key{i}")
        keyed = keyed.append_column(keys[-1], values)
    keyed = keyed.take(pc.sort_indices(keyed, [(k, "ascending") for k in keys] + SORT_KEYS))
    runs = keyed.select(keys).group_by(keys, use_threads=False).aggregate([([], "count_all")]).to_pylist()
    return write_partition_files(
        metadata,
        io,
        keyed.drop_columns(keys),
        [([run[k] for k in keys], run["count_all"]) for run in runs],
        on_failure=lambda paths: delete_files(io, paths, "a write that failed part-way"),
    )


def delete_snapshot_metadata(io: FileIO, snapshot: Snapshot | None) -> None:
    """After a commit that did not land: deletes the manifest list and the manifests it wrote (those added by its
    snapshot, which nothing else references), best effort. Every conflict retried would otherwise leave them."""
    if snapshot is None:
        return
    why = f"snapshot {snapshot.snapshot_id}, which did not land"
    try:
        manifests = [
            m.manifest_path for m in snapshot.manifests(io) if m.added_snapshot_id == snapshot.snapshot_id
        ]
    except OSError as error:
        log.warning("could not read the manifest list of %s: %s", why, error)
        manifests = []
    delete_files(io, [*manifests, snapshot.manifest_list], why)


def delete_files(io: FileIO, paths: Iterable[str], why: str) -> None:
    """Best effort: deletes the files (those not there are skipped); a failure is logged, never raised."""
    deleted = 0
    for path in paths:
        try:
            io.delete(path)
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("could not delete %s, a file of %s: %s", path, why, error)
    if deleted:
        log.info("deleted %d file(s) of %s", deleted, why)


class OffsetsRegressed(RuntimeError):
    """The table records an offset below where this writer's buffer starts: committing would leave a gap."""


def carried_properties(table: Table) -> dict[str, str]:
    """The K2 properties of the current snapshot's summary (or, after commits made outside K2, of its nearest
    ancestor that has them), for a commit to carry forward."""
    summary = k2_summary(table)
    return {name: summary[name] for name in CARRIED_PROPERTIES if name in summary}


def summary_micros(table: Table, name: str) -> int | None:
    value = carried_properties(table).get(name)
    return int(value) if value else None


def retrying(settings: WriterSettings, table_name: str, operation: str) -> Retrying:
    """Bounded retries of a commit that lost a race, with jittered exponential backoff."""

    def count_conflict(_: object) -> None:
        metrics.COMMIT_CONFLICTS.labels(metrics.SERVICE, table_name, operation).inc()

    return Retrying(
        retry=retry_if_exception_type(CommitFailedException),
        stop=stop_after_attempt(settings.commit_attempts),
        wait=wait_random_exponential(multiplier=0.02, max=settings.commit_backoff_max_seconds),
        before_sleep=count_conflict,
        reraise=True,
    )


def commit_landed(table: Table, snapshot_id: int) -> bool:
    """After a commit whose outcome is unknown (the catalog connection failed mid-commit): did it land?"""
    table.refresh()
    return table.snapshot_by_id(snapshot_id) is not None


def with_retries(settings: WriterSettings, table: Table, operation: str, attempt: Callable[[Table], T]) -> T:
    """Runs `attempt` on the freshly reloaded table until it commits; CommitFailedException means retry."""
    name = ".".join(table.name())
    try:
        for trial in retrying(settings, name, operation):
            with trial:
                table.refresh()
                return attempt(table)
    except CommitFailedException:
        metrics.COMMIT_FAILURES.labels(metrics.SERVICE, name, operation).inc()
        raise
    raise AssertionError("unreachable")


def open_table(
    catalog: Catalog, iceberg: IcebergSettings, settings: WriterSettings, kind: RecordKind
) -> Table:
    """The kind's table, created if missing, with the writer's table properties set."""
    table = ensure_table(catalog, iceberg, kind)

    def set_properties(table: Table) -> None:
        missing = {k: v for k, v in WRITER_TABLE_PROPERTIES.items() if table.properties.get(k) != v}
        if missing:
            with CachedTransaction(table) as transaction:
                transaction.set_properties(missing)

    with_retries(settings, table, "properties", set_properties)
    return table


@dataclass
class PartitionProgress:
    """One assigned partition's span in the buffer: [start, next). `start` is the offset the table recorded
    when the span began (None: the table had none, reading began at the partition's start); `next` follows the
    last message consumed (None: none yet). A new assignment of the partition starts a new span object."""

    start: int | None
    next: int | None = None

    @property
    def pending(self) -> bool:
        """Messages were consumed beyond what the table records."""
        return self.next is not None and (self.start is None or self.next > self.start)


@dataclass
class CommitResult:
    table: str
    snapshot_id: int  # 0: nothing was committed (every row and offset was already in the table)
    rows: int
    bytes: int
    files: int
    offsets: dict[int, int] = field(default_factory=dict)  # the topic's offsets as the table now records them
    oldest_ingestion_us: int | None = None  # of the rows this commit added


class TableAppender:
    """Commits one table's buffered rows together with the offsets of the topic they came from."""

    def __init__(self, table: Table, topic: str, settings: WriterSettings):
        self.table = table
        self.topic = topic
        self.settings = settings
        self.name = ".".join(table.name())
        # Commits whose outcome the catalog could not tell (it failed mid-commit and again when asked): their
        # staged snapshot and data files, kept until the catalog can say whether they landed.
        self._outcome_unknown: deque[tuple[Snapshot, list[str]]] = deque(maxlen=MAX_UNKNOWN_OUTCOMES)

    def _resolve_unknown_outcomes(self) -> None:
        """Deletes the files of earlier commits that turn out not to have landed (no data file the table uses)."""
        if not self._outcome_unknown:
            return
        self.table.refresh()
        live: set[str] | None = None
        while self._outcome_unknown:
            staged, paths = self._outcome_unknown[0]
            if self.table.snapshot_by_id(staged.snapshot_id) is None:
                if live is None:  # a landed snapshot since expired may have left its files to others
                    live = {task.file.file_path for task in self.table.scan().plan_files()}
                delete_files(
                    self.table.io,
                    [path for path in paths if path not in live],
                    f"{self.name} commit {staged.snapshot_id}, which did not land",
                )
                delete_snapshot_metadata(self.table.io, staged)
            self._outcome_unknown.popleft()

    def _plan(self, table: Table, progress: dict[int, PartitionProgress]) -> tuple[Offsets, dict[int, int]]:
        """(the offsets map to record, per partition the table's offset below which buffered rows are already
        committed). Raises OffsetsRegressed if the table is behind where a buffered span starts."""
        offsets = committed_offsets(table)
        recorded = offsets.get(self.topic, {})
        advanced = dict(recorded)
        cutoffs: dict[int, int] = {}
        for partition, span in progress.items():
            if span.next is None:
                continue
            in_table = recorded.get(partition)
            if span.start is not None and (in_table is None or in_table < span.start):
                raise OffsetsRegressed(
                    f"{self.topic}[{partition}]: the table records {in_table}, below the "
                    f"buffered span's start {span.start}"
                )
            if in_table is not None and in_table > (span.start if span.start is not None else -1):
                cutoffs[partition] = in_table
            advanced[partition] = max(span.next, in_table if in_table is not None else -1)
        if advanced != recorded:
            offsets = {**offsets, self.topic: advanced}
        return offsets, cutoffs

    @staticmethod
    def _drop_committed(rows: pa.Table, cutoffs: dict[int, int]) -> pa.Table:
        keep = None
        for partition, cutoff in cutoffs.items():
            covered = pc.and_(
                pc.equal(rows[PARTITION_COLUMN], partition), pc.less(rows[OFFSET_COLUMN], cutoff)
            )
            keep = pc.invert(covered) if keep is None else pc.and_(keep, pc.invert(covered))
        return rows if keep is None else rows.filter(keep)

    def _summary(self, table: Table, offsets: Offsets, rows: pa.Table) -> dict[str, str]:
        properties = carried_properties(table) | offsets_property(offsets)
        if rows.num_rows:
            for name, column in ((MAX_EVENT_TIME, "timestamp"), (MAX_INGESTION_TIME, "ingestion_timestamp")):
                newest = pc.max(rows[column]).cast(pa.int64()).as_py()
                previous = properties.get(name)
                properties[name] = str(max(newest, int(previous)) if previous else newest)
        return properties

    def commit(self, buffered: pa.Table | None, progress: dict[int, PartitionProgress]) -> CommitResult:
        """Appends the buffered rows (with PARTITION_COLUMN/OFFSET_COLUMN), minus rows whose offsets the table
        already holds, and records the progress's offsets. Returns what landed."""
        started = time.perf_counter()
        self._resolve_unknown_outcomes()
        prepared = _PreparedFiles(self.table, buffered)

        def attempt(table: Table) -> CommitResult:
            offsets, cutoffs = self._plan(table, progress)
            prepared.prepare(table, cutoffs)
            if offsets == committed_offsets(table) and not prepared.files:
                return CommitResult(self.name, 0, 0, 0, 0, offsets.get(self.topic, {}))
            summary = self._summary(table, offsets, prepared.rows)
            transaction = CachedTransaction(table)
            with transaction.update_snapshot(snapshot_properties=summary).merge_append() as append:
                for data_file in prepared.files:
                    append.append_data_file(data_file)
            snapshot_id = append.snapshot_id
            staged = transaction.table_metadata.snapshot_by_id(snapshot_id)
            assert staged is not None, "the transaction has just staged it"
            try:
                transaction.commit_transaction()
            except CommitFailedException:
                delete_snapshot_metadata(table.io, staged)
                raise
            except Exception:
                prepared.outcome_unknown = staged
                if not commit_landed(table, snapshot_id):
                    prepared.outcome_unknown = None
                    delete_snapshot_metadata(table.io, staged)
                    raise
                prepared.outcome_unknown = None
            oldest = None
            if prepared.files:
                oldest = pc.min(prepared.rows["ingestion_timestamp"]).cast(pa.int64()).as_py()
            return CommitResult(
                self.name,
                snapshot_id,
                prepared.rows.num_rows,
                sum(f.file_size_in_bytes for f in prepared.files),
                len(prepared.files),
                offsets.get(self.topic, {}),
                oldest,
            )

        try:
            result = with_retries(self.settings, self.table, "append", attempt)
        except BaseException:
            if prepared.outcome_unknown is None:
                prepared.discard()
            else:  # files a landed commit may reference are deleted only once the catalog says it did not land
                if len(self._outcome_unknown) == MAX_UNKNOWN_OUTCOMES:
                    log.warning(
                        "%s: more than %d commits of unknown outcome; the files of the oldest stay",
                        self.name,
                        MAX_UNKNOWN_OUTCOMES,
                    )
                self._outcome_unknown.append(
                    (prepared.outcome_unknown, [f.file_path for f in prepared.files])
                )
            raise
        if prepared.dropped:
            metrics.ROWS_ALREADY_COMMITTED.labels(metrics.SERVICE, self.name).inc(prepared.dropped)
        labels = (metrics.SERVICE, self.name)
        metrics.COMMIT_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        if result.snapshot_id:
            metrics.COMMITS.labels(*labels, "append").inc()
            metrics.ROWS_COMMITTED.labels(*labels).inc(result.rows)
            metrics.BYTES_COMMITTED.labels(*labels).inc(result.bytes)
            metrics.FILES_PER_COMMIT.labels(*labels).observe(result.files)
            for data_file in prepared.files:
                metrics.DATA_FILE_BYTES.labels(*labels).observe(data_file.file_size_in_bytes)
        return result


class _PreparedFiles:
    """The data files of one batch, written once and reused by every commit attempt unless a retry finds more
    of the batch's offsets already committed (then the rows are filtered again and the files rewritten)."""

    def __init__(self, table: Table, buffered: pa.Table | None):
        self.table = table
        self.buffered = buffered
        self.cutoffs: dict[int, int] | None = None
        self.rows = _EMPTY
        self.files: list[DataFile] = []
        self.dropped = 0
        self.outcome_unknown: Snapshot | None = (
            None  # the staged snapshot of a commit the catalog could not confirm
        )

    def prepare(self, table: Table, cutoffs: dict[int, int]) -> None:
        if self.buffered is None or self.buffered.num_rows == 0 or cutoffs == self.cutoffs:
            return
        self.discard()
        rows = TableAppender._drop_committed(self.buffered, cutoffs)
        self.dropped = self.buffered.num_rows - rows.num_rows
        self.rows = rows.drop_columns([PARTITION_COLUMN, OFFSET_COLUMN])
        self.cutoffs = cutoffs
        self.files = write_data_files(table.metadata, table.io, self.rows)

    def discard(self) -> None:
        """Deletes the files of a commit that did not land (best effort, logged)."""
        delete_files(
            self.table.io,
            [f.file_path for f in self.files],
            f"{'.'.join(self.table.name())} commit that failed",
        )
        self.files = []


_EMPTY = pa.table({})
