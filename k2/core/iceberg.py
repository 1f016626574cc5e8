"""Iceberg plumbing: the catalog from configuration, the market_data tables, and the Kafka offsets that each
commit records in its snapshot summary (the table, not the consumer group, is the source of truth for progress).

Layout, chosen by measurement at exchange scale (docs/tables.md, bench/table_layout.py): partitioned by
day(timestamp), exchange and bucket(symbol), files sorted by (symbol, timestamp) in row groups small enough
that their min/max statistics prune a scan to the symbols it asks for. A table of an older layout is moved to
this one by partition-spec evolution: its files stay where they are, readable, until compaction rewrites them.
"""

import json
from pathlib import Path
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.io import (
    S3_ACCESS_KEY_ID,
    S3_ENDPOINT,
    S3_FORCE_VIRTUAL_ADDRESSING,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import BucketTransform, DayTransform, IdentityTransform, Transform

from k2.core.arrow import iceberg_schema
from k2.core.config import IcebergSettings
from k2.core.records import QUOTE, TRADE, RecordKind

TABLE_NAMES: dict[RecordKind, str] = {TRADE: "trades", QUOTE: "quotes"}
OFFSETS_PROPERTY = "k2.kafka-offsets"
# {topic: {partition: next offset to read}} of every partition ever committed, carried forward by every commit.
Offsets = dict[str, dict[int, int]]


def load_catalog(settings: IcebergSettings) -> Catalog:
    properties: dict[str, str] = {"uri": settings.catalog_uri, "warehouse": settings.warehouse}
    if settings.catalog_uri.startswith("sqlite:///"):
        Path(settings.catalog_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if settings.warehouse.startswith("file://"):
        Path(settings.warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if settings.warehouse.startswith("s3://"):
        properties |= _s3_properties(settings)
    return SqlCatalog(settings.catalog_name, **properties)


def _s3_properties(settings: IcebergSettings) -> dict[str, str]:
    """Properties of pyiceberg's pyarrow FileIO for an s3:// warehouse. Without an endpoint it is AWS S3 itself;
    without an access key, the AWS default credential chain (AWS_* variables, profile, instance role)."""
    # A given region also keeps pyiceberg from asking AWS for the bucket's region, which other stores do not answer.
    properties = {S3_REGION: settings.s3_region}
    if settings.s3_endpoint:
        # S3-compatible stores address the bucket in the path (http://host:port/bucket/key), not the host name.
        properties |= {S3_ENDPOINT: settings.s3_endpoint, S3_FORCE_VIRTUAL_ADDRESSING: "false"}
    if settings.s3_access_key_id:
        properties |= {
            S3_ACCESS_KEY_ID: settings.s3_access_key_id,
            S3_SECRET_ACCESS_KEY: settings.s3_secret_access_key.get_secret_value(),
        }
    return properties


def table_identifier(settings: IcebergSettings, kind: RecordKind) -> str:
    return f"{settings.namespace}.{TABLE_NAMES[kind]}"


# Symbol buckets per exchange-day and rows per Parquet row group (see docs/tables.md for the measurements).
SYMBOL_BUCKETS = 16
ROW_GROUP_ROWS = 65_536
# Names the layout (benchmark caches of written tables are keyed by it).
LAYOUT_VERSION = f"day,exchange,bucket{SYMBOL_BUCKETS};rowgroup{ROW_GROUP_ROWS}"
LAYOUT_PROPERTIES = {"write.parquet.row-group-limit": str(ROW_GROUP_ROWS)}
# (source column, transform, partition field name)
PartitionFields = list[tuple[str, Transform[Any, Any], str]]


def partition_fields(buckets: int | None = SYMBOL_BUCKETS) -> PartitionFields:
    """The layout's partition fields: day and exchange, then the symbol's bucket (None: no bucket field)."""
    fields: PartitionFields = [
        ("timestamp", DayTransform(), "timestamp_day"),
        ("exchange", IdentityTransform(), "exchange"),
    ]
    if buckets:
        fields.append(("symbol", BucketTransform(buckets), "symbol_bucket"))
    return fields


def layout(kind: RecordKind, fields: PartitionFields | None = None) -> tuple[PartitionSpec, SortOrder]:
    schema = iceberg_schema(kind)
    spec = PartitionSpec(
        *(
            PartitionField(
                source_id=schema.find_field(column).field_id,
                field_id=1000 + i,
                transform=transform,
                name=name,
            )
            for i, (column, transform, name) in enumerate(partition_fields() if fields is None else fields)
        )
    )
    symbol = schema.find_field("symbol").field_id
    timestamp = schema.find_field("timestamp").field_id
    order = SortOrder(
        SortField(source_id=symbol, transform=IdentityTransform()),
        SortField(source_id=timestamp, transform=IdentityTransform()),
    )
    return spec, order


def ensure_table(
    catalog: Catalog, settings: IcebergSettings, kind: RecordKind, fields: PartitionFields | None = None
) -> Table:
    """Creates the table if missing, with the layout's partition spec (`fields`, default `partition_fields()`);
    an existing table gains columns the current Avro schema added and moves to the layout's partition spec, both
    by metadata evolution (no rewrite: files keep the spec they were written with until compaction rewrites them).
    The first access to the warehouse's storage: its failure (wrong credentials, no bucket) names the warehouse."""
    try:
        return _ensure_table(catalog, settings, kind, partition_fields() if fields is None else fields)
    except OSError as error:
        # pyarrow's message names only the object and the S3 operation (often a HEAD, whose 403 has no body).
        raise OSError(
            f"the warehouse {settings.warehouse} refused or failed a request (check K2_ICEBERG_WAREHOUSE "
            f"and K2_ICEBERG_S3_*): {error}"
        ) from error


def _ensure_table(
    catalog: Catalog, settings: IcebergSettings, kind: RecordKind, fields: PartitionFields
) -> Table:
    catalog.create_namespace_if_not_exists(settings.namespace)
    identifier = table_identifier(settings, kind)
    schema = iceberg_schema(kind)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        spec, order = layout(kind, fields)
        return catalog.create_table_if_not_exists(
            identifier,
            schema,
            partition_spec=spec,
            sort_order=order,
            properties={
                "format-version": "2",
                "write.parquet.compression-codec": "zstd",
                **LAYOUT_PROPERTIES,
            },
        )
    for attempt in range(EVOLVE_ATTEMPTS):  # two processes may evolve at once: the loser finds it done
        try:
            _evolve(table, schema, fields)
            break
        except CommitFailedException:
            if attempt == EVOLVE_ATTEMPTS - 1:
                raise
            table = catalog.load_table(identifier)
    return catalog.load_table(identifier)


EVOLVE_ATTEMPTS = 5


def spec_matches(spec: PartitionSpec, table_schema: Schema, fields: PartitionFields) -> bool:
    return [(table_schema.find_column_name(f.source_id), f.transform, f.name) for f in spec.fields] == fields


def _evolve(table: Table, schema: Schema, fields: PartitionFields) -> None:
    """Adds missing columns, moves the table to the layout's partition spec and sets the layout's properties, in
    one commit (nothing when all are current)."""
    missing = {f.name for f in schema.fields} - {f.name for f in table.schema().fields}
    properties = {k: v for k, v in LAYOUT_PROPERTIES.items() if table.properties.get(k) != v}
    respec = not spec_matches(table.spec(), table.schema(), fields)
    if not (missing or properties or respec):
        return
    with table.transaction() as transaction:
        if missing:
            with transaction.update_schema() as update:
                update.union_by_name(schema)
        if respec:
            wanted = {(column, transform) for column, transform, _ in fields}
            with transaction.update_spec() as update:
                for field in table.spec().fields:
                    if (table.schema().find_column_name(field.source_id), field.transform) not in wanted:
                        update.remove_field(field.name)
                current = {
                    (table.schema().find_column_name(f.source_id), f.transform) for f in table.spec().fields
                }
                for column, transform, name in fields:
                    if (column, transform) not in current:
                        update.add_field(column, transform, name)
        if properties:
            transaction.set_properties(properties)


def k2_summary(table: Table, snapshot_id: int | None = None) -> dict[str, str]:
    """The summary properties of the newest snapshot that records K2's offsets: the given one (default: the current
    one) or, when commits made outside K2 (an operator's delete, another engine's compaction) recorded none, its
    nearest ancestor that does. Empty when no ancestor does (none committed by K2, or expired)."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    for ancestor in ancestors_of(snapshot, table.metadata):
        if ancestor.summary is not None and OFFSETS_PROPERTY in ancestor.summary.additional_properties:
            return ancestor.summary.additional_properties
    return {}


def committed_offsets(table: Table, snapshot_id: int | None = None) -> Offsets:
    """The Kafka offsets recorded by the given snapshot (default: the current one), or by its nearest ancestor
    that records them (see k2_summary)."""
    text = k2_summary(table, snapshot_id).get(OFFSETS_PROPERTY)
    if not text:
        return {}
    raw: dict[str, dict[str, int]] = json.loads(text)
    return {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in raw.items()}


def offsets_property(offsets: Offsets) -> dict[str, str]:
    """Snapshot summary properties recording `offsets`, for table.append(..., snapshot_properties=...)."""
    payload: dict[str, Any] = {
        topic: {str(p): o for p, o in sorted(parts.items())} for topic, parts in sorted(offsets.items())
    }
    return {OFFSETS_PROPERTY: json.dumps(payload, separators=(",", ":"))}
