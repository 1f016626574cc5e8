"""Kafka values ⇄ Arrow for the writer and the Iceberg table schemas, both derived from the current Avro schemas,
so the tables follow the contract: a field added to the Avro schema becomes a column without hand-written mapping."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

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

from k2._native import ArrowDecoder
from k2.core.arrow_records import arrow_schema, avro_field_type, records_to_arrow
from k2.core.avro import CURRENT, DecodeError
from k2.core.framing import SINGLE_OBJECT, Framing, SchemaRegistryUnavailable
from k2.core.records import (
    MAX_TEXT_LENGTH,
    NATIVE_BOTH_OR_NEITHER,
    NATIVE_CHECKED_TEXTS,
    NATIVE_LIMITS,
    NATIVE_POSITIVE,
    VALIDATORS,
    FieldError,
    Record,
    RecordKind,
)


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
        return ListType(
            element_id=ids(), element_type=_iceberg_type(avro_type["items"], ids), element_required=True
        )
    if avro_type["type"] == "map":
        return MapType(
            key_id=ids(),
            key_type=StringType(),
            value_id=ids(),
            value_type=_iceberg_type(avro_type["values"], ids),
            value_required=True,
        )
    raise TypeError(f"no Iceberg type for {avro_type}")


def iceberg_schema(kind: RecordKind) -> Schema:
    """Top-level columns take ids 1..N in Avro field order; nested ids follow (new tables only: an existing
    table keeps its own ids and gains new columns through schema evolution)."""
    fields = CURRENT[kind].schema["fields"]
    ids = _FieldIds()
    ids.next_id = len(fields)
    columns = []
    for number, field in enumerate(fields, start=1):
        avro_type, nullable = avro_field_type(field["type"])
        columns.append(
            NestedField(
                field_id=number,
                name=field["name"],
                field_type=_iceberg_type(avro_type, ids),
                required=not nullable,
                doc=field.get("doc"),
            )
        )
    return Schema(*columns)


# Kafka values → Arrow: the writer's decode path (and the query service's Kafka tail, which must keep what the
# writer keeps). One interface, BatchDecoder, with two implementations chosen by batch_decoder: the compiled one
# (k2._native.ArrowDecoder, native/src/arrow_decode.rs) reads each current-version message that is plainly valid
# straight into Arrow buffers and hands every other message (older versions, anything its checks cannot clear) to
# the plain one: framing.decode (any schema version, upgraded), records.VALIDATORS, records_to_arrow, which
# accepts or rejects it with why. Both give the same table (tests/test_writer_decode.py).

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


class BatchDecoder(ABC):
    """Decodes Kafka message values that should all be records of `kind` (one topic's), in either framing, into
    one Arrow table. Undecodable values, records of another kind and records the validators refuse are rejected,
    with why."""

    kind: RecordKind

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Never fails because of a message: one that cannot become a row (a null value, garbage, a record
        the batch path trips on) is rejected with why, and the others are decoded."""
        try:
            return self._decode_batch(values)
        except SchemaRegistryUnavailable:
            raise
        except Exception:  # noqa: BLE001 - a message the batch path trips on: each message alone, to find it
            return self._decode_one_by_one(values)

    @abstractmethod
    def _decode_batch(self, values: Sequence[bytes | None]) -> DecodedBatch: ...

    def _decode_one_by_one(self, values: Sequence[bytes | None]) -> DecodedBatch:
        tables, rows, rejected = [], [], []
        for index, value in enumerate(values):
            try:
                alone = self._decode_batch([value])
            except SchemaRegistryUnavailable:
                raise
            except Exception as error:  # noqa: BLE001 - rejected with why, the others go on
                rejected.append(
                    Rejection(index, UNDECODABLE, f"cannot be decoded: {type(error).__name__}: {error}")
                )
                continue
            rejected += [replace(r, index=index) for r in alone.rejected]
            if alone.table.num_rows:
                tables.append(alone.table)
                rows.append(index)
        table = pa.concat_tables(tables) if tables else arrow_schema(self.kind).empty_table()
        return DecodedBatch(table, pa.array(rows, pa.int64()), rejected)


class PlainBatchDecoder(BatchDecoder):
    """The plain path: each value decoded to a record, validated, and the records made a table."""

    def __init__(self, kind: RecordKind, framing: Framing = SINGLE_OBJECT):
        self.kind = kind
        self._framing = framing
        self._validate = VALIDATORS[kind]

    def _judge(self, index: int, value: bytes | None) -> Record | Rejection:
        """The fully decoded, validated record, or why it is rejected."""
        if value is None:
            return Rejection(index, UNDECODABLE, "a null value (a tombstone), not a record")
        try:
            kind, record = self._framing.decode(value)
        except DecodeError as error:
            return Rejection(index, UNDECODABLE, str(error))
        except SchemaRegistryUnavailable:
            raise  # a fault of the setup, not of the message: the batch is read again once the registry answers
        except Exception as error:  # noqa: BLE001 - whatever one message does to the decoder, it alone is rejected
            return Rejection(index, UNDECODABLE, f"cannot be decoded: {type(error).__name__}: {error}")
        if kind != self.kind:
            return Rejection(index, WRONG_KIND, f"a {kind} message where {self.kind}s are expected")
        try:
            return self._validate(record)
        except FieldError as error:
            return Rejection(index, INVALID, error.reason, error.field)

    def decode_some(self, values: Sequence[bytes | None], indexes: Iterable[int]) -> DecodedBatch:
        """The values at `indexes` (in that order)."""
        records, rows, rejected = [], [], []
        for index in indexes:
            verdict = self._judge(index, values[index])
            if isinstance(verdict, Rejection):
                rejected.append(verdict)
            else:
                records.append(verdict)
                rows.append(index)
        return DecodedBatch(records_to_arrow(self.kind, records), pa.array(rows, pa.int64()), rejected)

    def _decode_batch(self, values: Sequence[bytes | None]) -> DecodedBatch:
        return self.decode_some(values, range(len(values)))


class UnsupportedSchema(TypeError):
    """A field of the current schema that the compiled decoder has no column for."""


_ColumnBuilder = Callable[[list[bytes | None], int], pa.Array]


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def _texts(offsets: bytes | None, data: bytes | None) -> pa.Array:
    assert offsets is not None
    return pa.Array.from_buffers(pa.string(), len(offsets) // 4 - 1, [None, _buffer(offsets), _buffer(data)])


def _column(
    kind: RecordKind, field: dict[str, Any], arrow_type: pa.DataType
) -> tuple[tuple[str, Any], _ColumnBuilder]:
    """(how the compiled decoder reads the field: its type as native/src/fanout.rs names it and its argument, how
    the column is built from the buffers it returns)"""
    avro_type, nullable = avro_field_type(field["type"])
    avro_type = {"type": avro_type} if isinstance(avro_type, str) else avro_type
    base, logical = avro_type["type"], avro_type.get("logicalType")
    if base == "string" and not nullable:
        return ("text", None), lambda buffers, _: _texts(*buffers)
    if base == "enum" and not nullable:
        symbols = pa.array(avro_type["symbols"], pa.string())
        return (
            ("enum", list(range(1, len(symbols) + 1))),
            lambda buffers, length: pc.take(
                symbols, pa.Array.from_buffers(pa.uint32(), length, [None, _buffer(buffers[0])])
            ),
        )

    def fixed(buffers: list[bytes | None], length: int) -> pa.Array:  # validity (or None) and values
        return pa.Array.from_buffers(arrow_type, length, [_buffer(buffer) for buffer in buffers])

    if (base, logical) == ("long", "timestamp-micros") and not nullable:
        return ("timestamp-micros", None), fixed
    if (base, logical) == ("long", None) and nullable:
        return ("optional-long", None), fixed
    if (base, logical) == ("bytes", "decimal") and (arrow_type.precision, arrow_type.scale) == (
        avro_type["precision"],
        avro_type.get("scale", 0),
    ):
        return (
            "optional-decimal" if nullable else "decimal",
            (avro_type["precision"], avro_type.get("scale", 0)),
        ), fixed
    if base == "array" and avro_type["items"] == "string" and not nullable:

        def text_list(buffers: list[bytes | None], length: int) -> pa.Array:
            offsets, *items = buffers
            return pa.Array.from_buffers(
                arrow_type, length, [None, _buffer(offsets)], children=[_texts(*items)]
            )

        return ("text-list", None), text_list
    if base == "map" and avro_type["values"] == "string" and nullable:
        entry_fields = [arrow_type.key_field, arrow_type.item_field]

        def text_map(buffers: list[bytes | None], length: int) -> pa.Array:
            validity, offsets, key_offsets, keys, value_offsets, values = buffers
            entries = pa.StructArray.from_arrays(
                [_texts(key_offsets, keys), _texts(value_offsets, values)], fields=entry_fields
            )
            return pa.Array.from_buffers(
                arrow_type, length, [_buffer(validity), _buffer(offsets)], children=[entries]
            )

        return ("optional-text-map", None), text_map
    raise UnsupportedSchema(
        f"{kind} field {field['name']}: the compiled decoder has no column for {field['type']}"
    )


class CompiledBatchDecoder(BatchDecoder):
    """Current-version messages that are plainly valid by the compiled decoder, the others by the plain path."""

    def __init__(self, kind: RecordKind, framing: Framing = SINGLE_OBJECT):
        self.kind = kind
        self._plain = PlainBatchDecoder(kind, framing)
        self._schema = arrow_schema(kind)
        fields = CURRENT[kind].schema["fields"]
        names = [field["name"] for field in fields]
        columns = [
            _column(kind, field, arrow_field.type)
            for field, arrow_field in zip(fields, self._schema, strict=True)
        ]
        self._builders = [build for _, build in columns]
        position = {name: index for index, name in enumerate(names)}
        self.compiled = ArrowDecoder(
            list(framing.current_headers(kind)),
            [
                (native_type, name in NATIVE_CHECKED_TEXTS[kind], name in NATIVE_POSITIVE[kind], argument)
                for name, ((native_type, argument), _) in zip(names, columns, strict=True)
            ],
            [(position[a], position[b]) for a, b in NATIVE_BOTH_OR_NEITHER[kind]],
            MAX_TEXT_LENGTH,
            NATIVE_LIMITS,
            (position["symbol"], position["exchange"], position["timestamp"]),
        )

    def _decode_batch(self, values: Sequence[bytes | None]) -> DecodedBatch:
        rows, count, buffers, handed_back = self.compiled.decode(values)
        table = pa.Table.from_arrays(
            [build(column, count) for build, column in zip(self._builders, buffers, strict=True)],
            schema=self._schema,
        )
        accepted = pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(rows)])
        if not handed_back:
            return DecodedBatch(table, accepted, [])
        plain = self._plain.decode_some(values, handed_back)
        return DecodedBatch(
            pa.concat_tables([table, plain.table]), pa.concat_arrays([accepted, plain.rows]), plain.rejected
        )


def batch_decoder(kind: RecordKind, framing: Framing = SINGLE_OBJECT) -> BatchDecoder:
    """The compiled decoder, or the plain one where the current schema has a field the compiled one cannot read."""
    try:
        return CompiledBatchDecoder(kind, framing)
    except UnsupportedSchema:
        return PlainBatchDecoder(kind, framing)
