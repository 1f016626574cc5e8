"""Table maintenance: compaction of small files and snapshot expiry, on a schedule and on request.

Compaction rewrites the small files of a partition into sorted files of about the target size, one bin of
files at a time, each bin committed as one overwrite snapshot that deletes exactly those files and adds the
rewritten ones: rows appended meanwhile (new files) are untouched, so it runs safely beside the appends. Quiet
partitions are compacted whole, partitions still being written by size class, and files of an older partition
spec are rewritten into the current one (how a table moves to a new layout). Its commits carry the current
snapshot's offsets (and the other K2 properties) forward unchanged; they are made between the appends of this
process, and one that loses a race to another writer's append is rebuilt on the reloaded table (the new files
are reused), so the offsets it records are always the latest.

Expiry removes snapshots older than the maximum age, always keeping the newest `snapshot_min_keep` and every
branch or tag head, then deletes the files only expired snapshots referenced (manifest lists, manifests, data
files replaced by compaction). A reader must finish a scan within the maximum age of its snapshot.
"""

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.manifest import DataFile, ManifestEntryStatus, ManifestFile
from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import DayTransform

from k2.core.iceberg_internals import CachedTransaction, expire_snapshots, read_data_files
from k2.core.records import RecordKind

from . import metrics
from .config import WriterSettings
from .tables import (
    carried_properties,
    commit_landed,
    delete_snapshot_metadata,
    with_retries,
    write_data_files,
)

log = logging.getLogger(__name__)
EPOCH = date(1970, 1, 1)
SMALL_FILE_RATIO = 0.75
# Partitions still being written are compacted by size class: files of one class (sizes within a factor of
# TIER_FACTOR) are merged once there are `compaction_min_files` of them, so a row is rewritten about once per
# class it climbs (log_8(target / commit file size) times, ~4) rather than on every round.
TIER_FACTOR = 8


# Runs a commit without racing this process's appends. An append lands every commit interval (500 ms, less
# under load): a compaction commit racing them, whose every attempt rewrites manifests, could lose every time.
Serializer = Callable[[Callable[[], Any]], Any]


@dataclass(frozen=True)
class CompactionProgress:
    partition: str
    partitions_done: int
    partitions_total: int


@dataclass(frozen=True)
class CompactionResult:
    files_before: int  # files of the partitions compacted
    files_after: int
    snapshot_id: int  # the last compaction commit; 0 when nothing needed rewriting


@dataclass
class _Partition:
    key: tuple[object, ...]
    spec_id: int
    path: str
    day: int | None  # days since the epoch (None: the spec has no day field)
    files: list[DataFile]
    newest_ms: int  # when its newest file was committed (0: by a snapshot since expired)


def size_tier(size: int, small_limit: float) -> int:
    """A small file's size class: 0 just below `small_limit`, each next one TIER_FACTOR times smaller."""
    return int(math.log(small_limit / max(size, 1), TIER_FACTOR))


class TableMaintenance:
    """Compaction and expiry of one table; at most one of them runs at a time per table in this process."""

    def __init__(self, table: Table, settings: WriterSettings, serialized: Serializer | None = None):
        """`serialized` runs a commit so that it does not race this process's appends (the consume loop's
        thread); without it, commits race them and retry."""
        self.table = table
        self.settings = settings
        self._serialized: Serializer = serialized or (lambda commit: commit())
        self.name = ".".join(table.name())
        self.lock = threading.Lock()
        # Manifest lists and manifests never change: what each references is read once.
        self._snapshot_manifests: dict[int, list[ManifestFile]] = {}
        self._manifest_files: dict[str, tuple[set[str], set[str]]] = {}  # path → (live data files, all)

    # -- compaction

    def _partitions(self) -> list[_Partition]:
        """The current snapshot's live data files by partition, files of older partition specs included (each
        partition of such a spec is its own entry)."""
        snapshot = self.table.current_snapshot()
        if snapshot is None:
            return []
        specs = self.table.specs()
        schema = self.table.schema()
        partitions: dict[tuple[int, tuple[object, ...]], _Partition] = {}
        for manifest in snapshot.manifests(self.table.io):
            spec = specs[manifest.partition_spec_id]
            day_index = next(
                (i for i, field in enumerate(spec.fields) if isinstance(field.transform, DayTransform)), None
            )
            for entry in manifest.fetch_manifest_entry(self.table.io, discard_deleted=True):
                data_file = entry.data_file
                key = tuple(data_file.partition[i] for i in range(len(spec.fields)))
                partition = partitions.get((spec.spec_id, key))
                if partition is None:
                    day = key[day_index] if day_index is not None else None
                    partition = partitions[(spec.spec_id, key)] = _Partition(
                        key,
                        spec.spec_id,
                        spec.partition_to_path(data_file.partition, schema),
                        day if isinstance(day, int) else None,
                        [],
                        0,
                    )
                partition.files.append(data_file)
                added_by = self.table.snapshot_by_id(entry.snapshot_id) if entry.snapshot_id else None
                partition.newest_ms = max(partition.newest_ms, added_by.timestamp_ms if added_by else 0)
        return sorted(partitions.values(), key=lambda p: (p.spec_id, p.path))

    @staticmethod
    def _pack(files: list[DataFile], target: int, singles: bool = False) -> list[list[DataFile]]:
        """Files packed smallest first into bins of about `target` bytes; bins of one file are left out unless
        `singles` (a file of an older spec moves even alone)."""
        bins: list[list[DataFile]] = []
        current: list[DataFile] = []
        size = 0
        for data_file in sorted(files, key=lambda f: f.file_size_in_bytes):
            if current and size + data_file.file_size_in_bytes > target:
                bins.append(current)
                current, size = [], 0
            current.append(data_file)
            size += data_file.file_size_in_bytes
        bins.append(current)
        return [b for b in bins if len(b) > 1 or (singles and b)]

    def _bins(self, partition: _Partition, target: int, active: bool, min_files: int) -> list[list[DataFile]]:
        """What to rewrite in the partition: every file of an older spec (into the current layout); else its
        small files, all of them once it is quiet, by size class while it is being written."""
        if partition.spec_id != self.table.spec().spec_id:
            return self._pack(partition.files, target, singles=True)
        small_limit = SMALL_FILE_RATIO * target
        small = [f for f in partition.files if f.file_size_in_bytes < small_limit]
        if not active:
            return self._pack(small, target) if len(small) >= max(2, min_files) else []
        tiers: dict[int, list[DataFile]] = {}
        for data_file in small:
            tiers.setdefault(size_tier(data_file.file_size_in_bytes, small_limit), []).append(data_file)
        return [
            b
            for files in tiers.values()
            if len(files) >= max(2, min_files)
            for b in self._pack(files, target)
        ]

    def _rewrite(self, files: list[DataFile]) -> list[DataFile]:
        table = self.table
        return write_data_files(table.metadata, table.io, read_data_files(table, files))

    def _replace(self, old: list[DataFile], new: list[DataFile]) -> int:
        """Commits the swap of `old` for `new`; its snapshot id, or 0 if `old` is no longer in the table."""
        outcome_unknown = False

        def attempt(table: Table) -> int:
            nonlocal outcome_unknown
            transaction = CachedTransaction(table)
            update = transaction.update_snapshot(snapshot_properties=carried_properties(table))
            with update.overwrite() as swap:
                for data_file in old:
                    swap.delete_data_file(data_file)
                for data_file in new:
                    swap.append_data_file(data_file)
            staged = transaction.table_metadata.snapshot_by_id(swap.snapshot_id)
            try:
                transaction.commit_transaction()
            except CommitFailedException:
                delete_snapshot_metadata(table.io, staged)
                raise
            except Exception:
                outcome_unknown = True
                if not commit_landed(table, swap.snapshot_id):
                    outcome_unknown = False
                    delete_snapshot_metadata(table.io, staged)
                    raise
                outcome_unknown = False
            return swap.snapshot_id

        try:
            return self._serialized(lambda: with_retries(self.settings, self.table, "compaction", attempt))
        except ValidationException as error:  # another compaction replaced some of these files first
            log.info("%s: compaction skipped a bin: %s", self.name, error)
            self._delete(f.file_path for f in new)
            return 0
        except BaseException:
            if not outcome_unknown:
                self._delete(f.file_path for f in new)
            raise

    def compact(
        self,
        start: date | None = None,
        end: date | None = None,
        target_file_bytes: int = 0,
        quiet_seconds: float = 0.0,
        min_files: int = 2,
        on_progress: Callable[[CompactionProgress], None] | None = None,
    ) -> CompactionResult:
        """Rewrites the partitions whose day is in [start, end): files of an older partition spec always (into
        the current spec's partitions); small files of a partition that received no file for `quiet_seconds`
        (0: any partition) when it has at least `min_files` of them; and, in a partition that did receive files
        within `quiet_seconds`, the small files of each size class that has at least `min_files`."""
        target = target_file_bytes or self.settings.compaction_target_file_bytes
        with self.lock:
            self.table.refresh()
            quiet_before_ms = (time.time() - quiet_seconds) * 1000
            first = (start - EPOCH).days if start else None
            last = (end - EPOCH).days if end else None
            selected: list[tuple[_Partition, list[list[DataFile]]]] = []
            for partition in self._partitions():
                if first is not None and not (partition.day is not None and partition.day >= first):
                    continue
                if last is not None and not (partition.day is not None and partition.day < last):
                    continue
                active = bool(quiet_seconds) and partition.newest_ms > quiet_before_ms
                bins = self._bins(partition, target, active, min_files)
                if bins:
                    selected.append((partition, bins))
            files_before = sum(len(p.files) for p, _ in selected)
            files_after = files_before
            snapshot_id = 0
            for done, (partition, bins) in enumerate(selected, start=1):
                for old in bins:
                    new = self._rewrite(old)
                    committed = self._replace(old, new)
                    if committed:
                        snapshot_id = committed
                        files_after += len(new) - len(old)
                        labels = (metrics.SERVICE, self.name)
                        metrics.COMMITS.labels(*labels, "compaction").inc()
                        metrics.COMPACTED_FILES.labels(*labels, "removed").inc(len(old))
                        metrics.COMPACTED_FILES.labels(*labels, "added").inc(len(new))
                        for data_file in new:
                            metrics.DATA_FILE_BYTES.labels(*labels).observe(data_file.file_size_in_bytes)
                if on_progress is not None:
                    on_progress(CompactionProgress(partition.path, done, len(selected)))
            if selected:
                log.info(
                    "%s: compacted %d partitions, %d files → %d",
                    self.name,
                    len(selected),
                    files_before,
                    files_after,
                )
            return CompactionResult(files_before, files_after, snapshot_id)

    # -- snapshot expiry

    def _manifests_of(self, snapshot: Snapshot) -> list[ManifestFile]:
        manifests = self._snapshot_manifests.get(snapshot.snapshot_id)
        if manifests is None:
            manifests = self._snapshot_manifests[snapshot.snapshot_id] = snapshot.manifests(self.table.io)
        return manifests

    def _files_of(self, manifest: ManifestFile) -> tuple[set[str], set[str]]:
        """(data files the manifest holds as live, every data file it names)"""
        files = self._manifest_files.get(manifest.manifest_path)
        if files is None:
            live, every = set(), set()
            for entry in manifest.fetch_manifest_entry(self.table.io, discard_deleted=False):
                every.add(entry.data_file.file_path)
                if entry.status != ManifestEntryStatus.DELETED:
                    live.add(entry.data_file.file_path)
            files = self._manifest_files[manifest.manifest_path] = (live, every)
        return files

    def _expirable(self, now_ms: float) -> list[Snapshot]:
        metadata = self.table.metadata
        protected = {
            ref.snapshot_id
            for ref in metadata.refs.values()
            if ref.snapshot_ref_type in (SnapshotRefType.BRANCH, SnapshotRefType.TAG)
        }
        newest_first = sorted(metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True)
        protected |= {s.snapshot_id for s in newest_first[: self.settings.snapshot_min_keep]}
        oldest_kept_ms = now_ms - self.settings.snapshot_max_age_seconds * 1000
        return [s for s in newest_first if s.snapshot_id not in protected and s.timestamp_ms < oldest_kept_ms]

    def expire(self) -> int:
        """Expires old snapshots and deletes the files only they referenced; returns how many were expired."""
        with self.lock:
            expired: list[Snapshot] = []

            def attempt(table: Table) -> None:
                expired[:] = self._expirable(time.time() * 1000)
                if expired:
                    expire_snapshots(table, [s.snapshot_id for s in expired])

            self._serialized(lambda: with_retries(self.settings, self.table, "expiry", attempt))
            if not expired:
                return 0
            retained = self.table.metadata.snapshots
            retained_manifests = {m.manifest_path for s in retained for m in self._manifests_of(s)}
            retained_files: set[str] = set()
            for snapshot in retained:
                for manifest in self._manifests_of(snapshot):
                    retained_files |= self._files_of(manifest)[0]
            garbage: list[str] = []
            for snapshot in expired:
                garbage.append(snapshot.manifest_list)
                for manifest in self._manifests_of(snapshot):
                    if manifest.manifest_path not in retained_manifests:
                        garbage.extend(self._files_of(manifest)[1] - retained_files)
                        garbage.append(manifest.manifest_path)
            garbage = list(dict.fromkeys(garbage))
            self._delete(garbage)
            for snapshot in expired:
                for manifest in self._snapshot_manifests.pop(snapshot.snapshot_id, []):
                    if manifest.manifest_path not in retained_manifests:
                        self._manifest_files.pop(manifest.manifest_path, None)
            labels = (metrics.SERVICE, self.name)
            metrics.SNAPSHOTS_EXPIRED.labels(*labels).inc(len(expired))
            metrics.FILES_DELETED.labels(*labels).inc(len(garbage))
            log.info("%s: expired %d snapshots, deleted %d files", self.name, len(expired), len(garbage))
            return len(expired)

    def _delete(self, paths: Iterable[str]) -> None:
        for path in paths:
            try:
                self.table.io.delete(path)
            except FileNotFoundError:
                pass  # another writer's expiry deleted it first
            except OSError as error:
                log.warning("%s: could not delete %s: %s", self.name, path, error)


class MaintenanceScheduler:
    """Runs expiry and compaction of quiet partitions on their intervals, in a thread of its own."""

    def __init__(self, tables: dict[RecordKind, TableMaintenance], settings: WriterSettings):
        self.tables = tables
        self.settings = settings
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer-maintenance", daemon=True)

    def start(self) -> None:
        if self.settings.snapshot_expiry_interval_seconds or self.settings.compaction_interval_seconds:
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        settings = self.settings
        next_expiry = time.monotonic() + settings.snapshot_expiry_interval_seconds
        next_compaction = time.monotonic() + settings.compaction_interval_seconds
        while not self._stopping.wait(1.0):
            now = time.monotonic()
            for maintenance in self.tables.values():
                try:
                    if settings.snapshot_expiry_interval_seconds and now >= next_expiry:
                        maintenance.expire()
                    if settings.compaction_interval_seconds and now >= next_compaction:
                        maintenance.compact(
                            quiet_seconds=settings.compaction_quiet_seconds,
                            min_files=settings.compaction_min_files,
                        )
                except Exception:
                    log.exception("%s: maintenance failed; retried at the next interval", maintenance.name)
            if now >= next_expiry:
                next_expiry = now + settings.snapshot_expiry_interval_seconds
            if now >= next_compaction:
                next_compaction = now + settings.compaction_interval_seconds
