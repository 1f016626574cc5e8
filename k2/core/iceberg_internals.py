"""The pyiceberg (0.12) API that K2 uses beyond pyiceberg's public one: a Transaction's private state, the write
path below `Table.append` (WriteTask, write_file, PartitionKey), the Arrow reader of chosen data files (ArrowScan)
and snapshot expiry through a transaction of K2's. It is all here, so that a pyiceberg upgrade that changes any of
it breaks this module only, and tests/test_iceberg_internals.py, which calls everything here against the installed
pyiceberg, fails first."""

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import ArrowScan, pyarrow_to_schema, write_file
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
from pyiceberg.table import FileScanTask, Table, Transaction, WriteTask
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import TableUpdate, update_table_metadata
from pyiceberg.table.update.snapshot import ExpireSnapshots


class CachedTransaction(Transaction):
    """pyiceberg's Transaction, with `table_metadata` computed once per staged state. pyiceberg 0.12 rebuilds
    it (a deep copy of the whole metadata, every snapshot included) on each of the ~15 reads a commit makes,
    so a commit's cost grew with the table's history (apache/iceberg-python#3302, not in a release yet). The
    cached value is keyed on the identity of its two immutable inputs: a staged update or a refresh
    invalidates it."""

    _cached: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        cached = self._cached
        if cached is None or cached[0] is not self._table.metadata or cached[1] is not self._updates:
            metadata = update_table_metadata(self._table.metadata, self._updates)
            cached = self._cached = (self._table.metadata, self._updates, metadata)
        return cached[2]


def partition_values(metadata: TableMetadata, rows: pa.Table) -> list[pa.Array]:
    """For each field of the table's current partition spec, its value for every row of `rows` (the field's
    transform of its source column)."""
    schema = metadata.schema()
    return [
        field.transform.pyarrow_transform(schema.find_field(field.source_id).field_type)(
            rows[schema.find_column_name(field.source_id)]
        )
        for field in metadata.spec().fields
    ]


def write_partition_files(
    metadata: TableMetadata,
    io: FileIO,
    rows: pa.Table,
    runs: Iterable[tuple[Sequence[Any], int]],
    on_failure: Callable[[Iterable[str]], None],
) -> list[DataFile]:
    """Writes `rows` as one Parquet data file per run of consecutive rows: `runs` are, in order, (the run's value
    of each field of the current partition spec, its number of rows). The files are not committed. When a file
    cannot be written (a full disk, a refused write), every other write is waited for and `on_failure` gets the
    paths of all of them, whole, partial or never begun, before the error is raised."""
    spec, schema = metadata.spec(), metadata.schema()
    task_schema = pyarrow_to_schema(
        rows.schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
    )
    write_uuid = uuid.uuid4()
    tasks = []
    offset = 0
    for task_id, (values, count) in enumerate(runs):
        key = PartitionKey(
            [PartitionFieldValue(f, v) for f, v in zip(spec.fields, values, strict=True)], spec, schema
        )
        tasks.append(
            WriteTask(
                write_uuid=write_uuid,
                task_id=task_id,
                schema=task_schema,
                record_batches=rows.slice(offset, count).combine_chunks().to_batches(),
                partition_key=key if spec.fields else None,
            )
        )
        offset += count
    # One write_file per task: each goes to pyiceberg's pool at once (they run in parallel), so that when one
    # fails none of the others is still writing when their files are deleted.
    writes = [write_file(io, metadata, iter([task])) for task in tasks]
    files: list[DataFile] = []
    failure: BaseException | None = None
    for written in writes:
        try:
            files.extend(written)
        except Exception as error:  # noqa: BLE001 - the first failure is raised once all writes have ended
            failure = failure or error
    if failure is not None:
        provider = load_location_provider(metadata.location, metadata.properties)
        on_failure(
            provider.new_data_location(task.generate_data_file_filename("parquet"), task.partition_key)
            for task in tasks
        )
        raise failure
    return files


def read_data_files(table: Table, files: Iterable[DataFile]) -> pa.Table:
    """The rows of the given data files of `table`, in its current schema."""
    return ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table(
        [FileScanTask(f) for f in files]
    )


def expire_snapshots(table: Table, snapshot_ids: list[int]) -> None:
    """Commits the removal of the given snapshots from the table's metadata (their files stay) through a
    CachedTransaction, as `table.maintenance.expire_snapshots()` would through an uncached one."""
    ExpireSnapshots(CachedTransaction(table, autocommit=True)).by_ids(snapshot_ids).commit()
