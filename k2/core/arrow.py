"""Record batches ⇄ Arrow, and the Iceberg table schemas — all derived from the current Avro schemas, so the
tables follow the contract: a field added to the Avro schema becomes a column without hand-written mapping."""

from typing import Any

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DecimalType, IcebergType, ListType, LongType, MapType, NestedField, StringType, TimestamptzType,
)

from k2.core.avro import CURRENT
from k2.core.records import Record, RecordKind


def _avro_field_type(avro_type: Any) -> tuple[Any, bool]:
    """(non-null Avro type, nullable)"""
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1 or len(avro_type) != 2:
            raise TypeError(f"only [null, T] unions are supported: {avro_type}")
        return branches[0], True
    return avro_type, False


def _arrow_type(avro_type: Any) -> pa.DataType:
    if isinstance(avro_type, str):
        return {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "boolean": pa.bool_()}[avro_type]
    logical = avro_type.get("logicalType")
    if logical == "decimal":
        return pa.decimal128(avro_type["precision"], avro_type["scale"])
    if logical == "timestamp-micros":
        return pa.timestamp("us", tz="UTC")
    if logical == "uuid" or avro_type["type"] == "enum":
        return pa.string()
    if avro_type["type"] == "array":
        return pa.list_(pa.field("element", _arrow_type(avro_type["items"]), nullable=False))
    if avro_type["type"] == "map":
        return pa.map_(pa.string(), pa.field("value", _arrow_type(avro_type["values"]), nullable=False))
    raise TypeError(f"no Arrow type for {avro_type}")


def arrow_schema(kind: RecordKind) -> pa.Schema:
    fields = []
    for field in CURRENT[kind].schema["fields"]:
        avro_type, nullable = _avro_field_type(field["type"])
        fields.append(pa.field(field["name"], _arrow_type(avro_type), nullable=nullable))
    return pa.schema(fields)


class _FieldIds:
    def __init__(self) -> None:
        self.next_id = 0

    def __call__(self) -> int:
        self.next_id += 1
        return self.next_id


def _iceberg_type(avro_type: Any, ids: _FieldIds) -> IcebergType:
    if isinstance(avro_type, str):
        return {"string": StringType(), "long": LongType()}[avro_type]
    logical = avro_type.get("logicalType")
    if logical == "decimal":
        return DecimalType(avro_type["precision"], avro_type["scale"])
    if logical == "timestamp-micros":
        return TimestamptzType()
    if logical == "uuid" or avro_type["type"] == "enum":
        return StringType()
    if avro_type["type"] == "array":
        return ListType(element_id=ids(), element_type=_iceberg_type(avro_type["items"], ids), element_required=True)
    if avro_type["type"] == "map":
        return MapType(key_id=ids(), key_type=StringType(), value_id=ids(),
                       value_type=_iceberg_type(avro_type["values"], ids), value_required=True)
    raise TypeError(f"no Iceberg type for {avro_type}")


def iceberg_schema(kind: RecordKind) -> Schema:
    """Top-level columns take ids 1..N in Avro field order; nested ids follow (new tables only: an existing
    table keeps its own ids and gains new columns through schema evolution)."""
    fields = CURRENT[kind].schema["fields"]
    ids = _FieldIds()
    ids.next_id = len(fields)
    columns = []
    for number, field in enumerate(fields, start=1):
        avro_type, nullable = _avro_field_type(field["type"])
        columns.append(NestedField(field_id=number, name=field["name"], field_type=_iceberg_type(avro_type, ids),
                                   required=not nullable, doc=field.get("doc")))
    return Schema(*columns)


def records_to_arrow(kind: RecordKind, records: list[Record]) -> pa.Table:
    schema = arrow_schema(kind)
    columns = []
    for field in schema:
        values = [r[field.name] for r in records]
        if pa.types.is_map(field.type):
            values = [None if v is None else list(v.items()) for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def arrow_to_records(table: pa.Table) -> list[Record]:
    records = table.to_pylist()
    for field in table.schema:
        if pa.types.is_map(field.type):
            for record in records:
                value = record[field.name]
                record[field.name] = dict(value) if value else None
    return records
