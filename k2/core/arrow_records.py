"""Records as Arrow: each kind's Arrow schema, derived from its current Avro schema (a field added to the contract
becomes a column without hand-written mapping), and lists of v2 records ⇄ Arrow tables. Light on purpose: the
SDK builds and reads its Arrow tables with this module alone."""

from typing import Any

import pyarrow as pa

from k2.core.records import Record, RecordKind
from k2.core.schemas import CURRENT_SCHEMA


def avro_field_type(avro_type: Any) -> tuple[Any, bool]:
    """(non-null Avro type, nullable)"""
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1 or len(avro_type) != 2:
            raise TypeError(f"only [null, T] unions are supported: {avro_type}")
        return branches[0], True
    return avro_type, False


def _arrow_type(avro_type: Any) -> pa.DataType:
    if isinstance(avro_type, str):
        return {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "boolean": pa.bool_()}[
            avro_type
        ]
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
    for field in CURRENT_SCHEMA[kind]["fields"]:
        avro_type, nullable = avro_field_type(field["type"])
        fields.append(pa.field(field["name"], _arrow_type(avro_type), nullable=nullable))
    return pa.schema(fields)


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
