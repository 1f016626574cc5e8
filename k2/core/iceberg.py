"""Iceberg plumbing: the catalog from configuration, the market_data tables, and the Kafka offsets that each
commit records in its snapshot summary (the table, not the consumer group, is the source of truth for progress).

Layout, chosen for the queries users run (one symbol over a time range; one day across symbols):
partitioned by day(timestamp) and exchange, files sorted by (symbol, timestamp) so min/max statistics prune
files to the symbols a scan asks for.
"""

import json
from pathlib import Path
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.io import (
    S3_ACCESS_KEY_ID,
    S3_ENDPOINT,
    S3_FORCE_VIRTUAL_ADDRESSING,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform

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
        properties |= {S3_ACCESS_KEY_ID: settings.s3_access_key_id,
                       S3_SECRET_ACCESS_KEY: settings.s3_secret_access_key.get_secret_value()}
    return properties


def table_identifier(settings: IcebergSettings, kind: RecordKind) -> str:
    return f"{settings.namespace}.{TABLE_NAMES[kind]}"


def _layout(kind: RecordKind) -> tuple[PartitionSpec, SortOrder]:
    schema = iceberg_schema(kind)
    timestamp = schema.find_field("timestamp").field_id
    exchange = schema.find_field("exchange").field_id
    symbol = schema.find_field("symbol").field_id
    spec = PartitionSpec(
        PartitionField(source_id=timestamp, field_id=1000, transform=DayTransform(), name="timestamp_day"),
        PartitionField(source_id=exchange, field_id=1001, transform=IdentityTransform(), name="exchange"))
    order = SortOrder(SortField(source_id=symbol, transform=IdentityTransform()),
                      SortField(source_id=timestamp, transform=IdentityTransform()))
    return spec, order


def ensure_table(catalog: Catalog, settings: IcebergSettings, kind: RecordKind) -> Table:
    """Creates the table if missing; an existing table gains columns the current Avro schema added (no rewrite).
    The first access to the warehouse's storage: its failure (wrong credentials, no bucket) names the warehouse."""
    try:
        return _ensure_table(catalog, settings, kind)
    except OSError as error:
        # pyarrow's message names only the object and the S3 operation (often a HEAD, whose 403 has no body).
        raise OSError(f"the warehouse {settings.warehouse} refused or failed a request (check K2_ICEBERG_WAREHOUSE "
                      f"and K2_ICEBERG_S3_*): {error}") from error


def _ensure_table(catalog: Catalog, settings: IcebergSettings, kind: RecordKind) -> Table:
    catalog.create_namespace_if_not_exists(settings.namespace)
    identifier = table_identifier(settings, kind)
    schema = iceberg_schema(kind)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        spec, order = _layout(kind)
        return catalog.create_table_if_not_exists(identifier, schema, partition_spec=spec, sort_order=order,
                                                  properties={"format-version": "2",
                                                              "write.parquet.compression-codec": "zstd"})
    missing = {f.name for f in schema.fields} - {f.name for f in table.schema().fields}
    if missing:
        with table.update_schema() as update:
            update.union_by_name(schema)
        table = catalog.load_table(identifier)
    return table


def committed_offsets(table: Table, snapshot_id: int | None = None) -> Offsets:
    """The Kafka offsets recorded by the given snapshot (default: the current one)."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return {}
    text = snapshot.summary.additional_properties.get(OFFSETS_PROPERTY)
    if not text:
        return {}
    raw: dict[str, dict[str, int]] = json.loads(text)
    return {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in raw.items()}


def offsets_property(offsets: Offsets) -> dict[str, str]:
    """Snapshot summary properties recording `offsets`, for table.append(..., snapshot_properties=...)."""
    payload: dict[str, Any] = {topic: {str(p): o for p, o in sorted(parts.items())}
                               for topic, parts in sorted(offsets.items())}
    return {OFFSETS_PROPERTY: json.dumps(payload, separators=(",", ":"))}
