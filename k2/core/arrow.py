"""Record batches ⇄ Arrow, and the Iceberg table schemas — all derived from the current Avro schemas, so the
tables follow the contract: a field added to the Avro schema becomes a column without hand-written mapping."""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from io import BytesIO
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DecimalType,
    IcebergType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    TimestamptzType,
)

from k2.core.avro import CURRENT, HEADER_SIZE, MAGIC, DecodeError, decode, without_logical_types
from k2.core.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    MAX_TEXT_LENGTH,
    QUOTE,
    TRADE,
    VALIDATORS,
    FieldError,
    Record,
    RecordKind,
)


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


# Kafka values straight to Arrow: the writer's hot path. Messages in the current schema version are read with
# a copy of the schema stripped of logical types, so fastavro returns raw longs and two's-complement bytes
# instead of building a datetime and a Decimal per value, and each column is built in one step. Older versions
# go through avro.decode (their upgrade functions) and records_to_arrow. Acceptance is decided by
# records.VALIDATORS: cheap vectorised checks flag the rows that could fail them, and only the flagged rows are
# decoded in full and judged.

_DECIMAL_LIMIT = 10 ** DECIMAL_PRECISION
_ZERO = pa.scalar(Decimal(0), pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE))


UNDECODABLE = "undecodable"
WRONG_KIND = "wrong_kind"
INVALID = "invalid"


@dataclass(frozen=True)
class Rejection:
    index: int  # position of the message in the decoded batch
    category: str  # UNDECODABLE, WRONG_KIND (a record of the other kind), INVALID (refused by the validator)
    reason: str
    field: str = ""


@dataclass(frozen=True)
class DecodedBatch:
    table: pa.Table  # one row per accepted message, arrow_schema(kind)
    rows: pa.Array  # int64: the input position of each row of `table`
    rejected: list[Rejection]


def _unscaled(values: list[bytes | None]) -> list[int | None]:
    return [None if v is None else int.from_bytes(v, "big", signed=True) for v in values]


def _decimal_column(unscaled: list[int | None], arrow_type: pa.DataType) -> pa.Array:
    """Unscaled integers (None for null) → decimal128, without Decimal objects."""
    zero = b"\0" * 16
    data = b"".join([zero if v is None else v.to_bytes(16, "little", signed=True) for v in unscaled])
    validity = None
    if None in unscaled:
        validity = pa.array([v is not None for v in unscaled], pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(arrow_type, len(unscaled), [validity, pa.py_buffer(data)])


def _out_of_range(unscaled: list[int | None]) -> list[int]:
    present = [v for v in unscaled if v is not None]
    if not present or (max(present) < _DECIMAL_LIMIT and min(present) > -_DECIMAL_LIMIT):
        return []
    return [i for i, v in enumerate(unscaled) if v is not None and not -_DECIMAL_LIMIT < v < _DECIMAL_LIMIT]


class _RawColumns:
    """Builds the Arrow table of raw (logical-type-free) records of one kind: Arrow converts the dicts in one
    call (decimals as their bytes, timestamps as longs), then decimals and timestamps get their types."""

    def __init__(self, kind: RecordKind):
        self.schema = arrow_schema(kind)
        self.raw_schema = pa.schema([
            field.with_type(pa.binary()) if pa.types.is_decimal(field.type)
            else field.with_type(pa.int64()) if pa.types.is_timestamp(field.type) else field
            for field in self.schema])

    def table(self, records: list[dict[str, Any]]) -> tuple[pa.Table | None, list[int]]:
        """(the table, []) or (None, positions of records with a decimal beyond decimal(38,18))."""
        raw = pa.Table.from_pylist(records, schema=self.raw_schema)
        columns = []
        for field, column in zip(self.schema, raw.columns, strict=True):
            if pa.types.is_decimal(field.type):
                unscaled = _unscaled([r[field.name] for r in records])
                if out_of_range := _out_of_range(unscaled):
                    return None, out_of_range
                columns.append(_decimal_column(unscaled, field.type))
            elif pa.types.is_timestamp(field.type):
                columns.append(column.cast(field.type))
            else:
                columns.append(column)
        return pa.Table.from_arrays(columns, schema=self.schema), []


_TEXT_FIELDS: dict[RecordKind, tuple[str, ...]] = {TRADE: ("trade_id", "symbol", "exchange", "currency"),
                                                   QUOTE: ("quote_id", "symbol", "exchange", "currency")}


def _suspect_rows(kind: RecordKind, table: pa.Table) -> pa.Array:
    """Rows that may fail VALIDATORS[kind]: a superset, judged afterwards by the validator itself."""
    suspect = pa.array([False] * table.num_rows, pa.bool_())
    for name in _TEXT_FIELDS[kind]:
        length = pc.utf8_length(table[name])
        suspect = pc.or_(suspect, pc.or_(pc.equal(length, 0), pc.greater(length, MAX_TEXT_LENGTH)))
    if kind == TRADE:
        suspect = pc.or_(suspect, pc.less_equal(table["quantity"], _ZERO))
        suspect = pc.or_(suspect, pc.less_equal(table["price"], _ZERO))
    else:
        for side in ("bid", "ask"):
            price, quantity = table[f"{side}_price"], table[f"{side}_quantity"]
            suspect = pc.or_(suspect, pc.not_equal(pc.is_null(price), pc.is_null(quantity)))
            suspect = pc.or_(suspect, pc.fill_null(pc.less_equal(quantity, _ZERO), False))
    return suspect.combine_chunks() if isinstance(suspect, pa.ChunkedArray) else suspect


class BatchDecoder:
    """Decodes Kafka message values that should all be records of `kind` (one topic's) into one Arrow table.
    Undecodable values, records of another kind and records the validators refuse are rejected, with why."""

    def __init__(self, kind: RecordKind):
        self.kind = kind
        current = CURRENT[kind]
        self._header = MAGIC + current.fingerprint
        self._raw_schema = fastavro.parse_schema(without_logical_types(current.schema))
        self._columns = _RawColumns(kind)
        self._validate = VALIDATORS[kind]

    def _judge(self, index: int, value: bytes) -> Record | Rejection:
        """The fully decoded, validated record, or why it is rejected."""
        try:
            kind, record = decode(value)
        except DecodeError as error:
            return Rejection(index, UNDECODABLE, str(error))
        if kind != self.kind:
            return Rejection(index, WRONG_KIND, f"a {kind} message where {self.kind}s are expected")
        try:
            return self._validate(record)
        except FieldError as error:
            return Rejection(index, INVALID, error.reason, error.field)

    def decode(self, values: Sequence[bytes]) -> DecodedBatch:
        header, raw_schema, reader = self._header, self._raw_schema, fastavro.schemaless_reader
        raw: list[Any] = []
        raw_rows: list[int] = []
        other_rows: list[int] = []
        # One stream over every value: a record read past its own value's end is caught by the position check.
        body = BytesIO(b"".join(values))
        seek, tell = body.seek, body.tell
        end = 0
        for index, value in enumerate(values):
            start, end = end, end + len(value)
            if value.startswith(header):
                seek(start + HEADER_SIZE)
                try:
                    record = reader(body, raw_schema, None)
                except Exception:  # corrupt body: the full decode below says why
                    other_rows.append(index)
                    continue
                if tell() == end:
                    raw.append(record)
                    raw_rows.append(index)
                    continue
            other_rows.append(index)

        table, out_of_range = self._columns.table(raw)
        while out_of_range:  # rare: judged in full below, with the reason
            skip = set(out_of_range)
            other_rows += [raw_rows[i] for i in out_of_range]
            raw = [r for i, r in enumerate(raw) if i not in skip]
            raw_rows = [row for i, row in enumerate(raw_rows) if i not in skip]
            table, out_of_range = self._columns.table(raw)
        assert table is not None
        rows = pa.array(raw_rows, pa.int64())

        rejected: list[Rejection] = []
        suspect = _suspect_rows(self.kind, table)
        if pc.any(suspect).as_py():
            keep = []
            for position, is_suspect in enumerate(suspect.to_pylist()):
                index = raw_rows[position]
                verdict = self._judge(index, values[index]) if is_suspect else None
                if isinstance(verdict, Rejection):
                    rejected.append(verdict)
                keep.append(not isinstance(verdict, Rejection))
            mask = pa.array(keep, pa.bool_())
            table, rows = table.filter(mask), rows.filter(mask)

        records, record_rows = [], []
        for index in sorted(other_rows):
            verdict = self._judge(index, values[index])
            if isinstance(verdict, Rejection):
                rejected.append(verdict)
            else:
                records.append(verdict)
                record_rows.append(index)
        if records:
            table = pa.concat_tables([table, records_to_arrow(self.kind, records)])
            rows = pa.concat_arrays([rows, pa.array(record_rows, pa.int64())])
        rejected.sort(key=lambda r: r.index)
        return DecodedBatch(table, rows, rejected)
