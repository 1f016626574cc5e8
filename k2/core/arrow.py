"""Kafka values ⇄ Arrow for the writer and the Iceberg table schemas, both derived from the current Avro schemas,
so the tables follow the contract: a field added to the Avro schema becomes a column without hand-written mapping."""

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from io import BytesIO
from typing import Any, cast

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

from k2.core.arrow_records import arrow_schema, avro_field_type, records_to_arrow
from k2.core.avro import CURRENT, DecodeError
from k2.core.framing import SINGLE_OBJECT, Framing, SchemaRegistryUnavailable
from k2.core.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    MAX_CONDITION_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_TRADE_CONDITIONS,
    MAX_VENDOR_DATA_ENTRIES,
    MAX_VENDOR_DATA_KEY_LENGTH,
    MAX_VENDOR_DATA_VALUE_LENGTH,
    NAME_PATTERN,
    QUOTE,
    TRADE,
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
        avro_type, nullable = avro_field_type(field["type"])
        columns.append(NestedField(field_id=number, name=field["name"], field_type=_iceberg_type(avro_type, ids),
                                   required=not nullable, doc=field.get("doc")))
    return Schema(*columns)


# Kafka values straight to Arrow: the writer's hot path. A message in the current schema version whose strings,
# bytes and array/map blocks are shorter than 64 (one-byte lengths: nearly all) is split into its fields' raw
# bytes by one regular-expression match (the record's layout, generated from the schema), and each column is
# built from those bytes by vectorised Arrow kernels: no per-field Python call, no Decimal or datetime object.
# Every other message (older versions, long strings, corrupt bodies) goes through avro.decode (its upgrade
# function) and records_to_arrow. Acceptance is decided by records.VALIDATORS: cheap vectorised checks flag the
# rows that could fail them, and only the flagged rows are decoded in full and judged.

UNDECODABLE = "undecodable"
WRONG_KIND = "wrong_kind"
INVALID = "invalid"

_ZERO = pa.scalar(Decimal(0), pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE))


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


_SHORT = 64  # strings, bytes and blocks the pattern matches: those whose length is one varint byte
_BLOCK_ITEMS = 15  # items per array/map block the pattern matches
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\x7f]"
_VARINT_BYTES = 8  # longer varints (|value| ≥ 2^55) take the plain path
_DECIMAL_BYTES = 16  # two's complement of a decimal(38,18); a 16-byte value may exceed 38 digits: plain path


def _byte(value: int) -> bytes:
    return re.escape(bytes([value]))


_SHORT_BYTES = b"(?:" + b"|".join(_byte(2 * n) + rb"[\s\S]{%d}" % n for n in range(_SHORT)) + b")"


def _is_block(avro_type: Any) -> bool:
    """An array or a map, possibly nullable: decoded per distinct value rather than by kernels."""
    avro_type, _ = avro_field_type(avro_type)
    return isinstance(avro_type, dict) and avro_type["type"] in ("array", "map")


def _pattern(avro_type: Any) -> bytes:
    """The regular expression matching one value of `avro_type` (short lengths only)."""
    if isinstance(avro_type, list):
        null_index = avro_type.index("null")
        null, value = _byte(2 * null_index), _byte(2 * (1 - null_index)) + _pattern(avro_type[1 - null_index])
        return b"(?:" + null + b"|" + value + b")"
    kind = avro_type if isinstance(avro_type, str) else avro_type["type"]
    if kind in ("long", "int"):
        return _VARINT
    if kind == "boolean":
        return rb"[\x00\x01]"
    if kind in ("string", "bytes"):
        return _SHORT_BYTES
    if kind == "enum":
        symbols = avro_type["symbols"]
        if len(symbols) > _SHORT:
            raise TypeError(f"enum with more than {_SHORT} symbols: {avro_type['name']}")
        return b"[" + b"".join(_byte(2 * i) for i in range(len(symbols))) + b"]"
    if kind in ("array", "map"):
        item = _pattern(avro_type["items"]) if kind == "array" else _SHORT_BYTES + _pattern(avro_type["values"])
        block = b"|".join(_byte(2 * n) + b"(?:" + item + b"){%d}" % n for n in range(1, _BLOCK_ITEMS + 1))
        return b"(?:" + block + rb")*\x00"
    raise TypeError(f"no pattern for {avro_type}")


_UINT64 = pa.uint64()


def _u64(value: int) -> pa.Scalar:
    return pa.scalar(value, _UINT64)


# Seven-bit groups packed pairwise, then in fours, then in eights: a little-endian varint's value.
_VARINT_PACKING = [(_u64(0x007F007F007F007F), _u64(0x7F007F007F007F00), 1),
                   (_u64(0x00003FFF00003FFF), _u64(0x3FFF00003FFF0000), 2),
                   (_u64(0x000000000FFFFFFF), _u64(0x0FFFFFFF00000000), 4)]
_ZERO_PADS = pa.array([b"\0" * n for n in range(_DECIMAL_BYTES + 1)], pa.binary())
_ONE_PADS = pa.array([b"\xff" * n for n in range(_DECIMAL_BYTES + 1)], pa.binary())


# binary_replace_slice, because binary_slice fails on some inputs (pyarrow 26: "Negative buffer resize").
def _first_byte(values: pa.Array) -> pa.Array:
    return pc.binary_replace_slice(values, 1, 2**31 - 1, b"")


def _after_first_byte(values: pa.Array) -> pa.Array:
    return pc.binary_replace_slice(values, 0, 1, b"")


def _cells(values: pa.Array, width: int, negative: pa.Array | None = None) -> pa.Buffer:
    """The values (at most `width` bytes each, little-endian) extended to `width` bytes, with 0xff bytes where
    `negative`: one buffer of fixed-width cells."""
    missing = pc.subtract(width, pc.binary_length(values))
    fill = pc.take(_ZERO_PADS, missing)
    if negative is not None:
        fill = pc.if_else(negative, pc.take(_ONE_PADS, missing), fill)
    return pc.binary_join_element_wise(values, fill, b"").cast(pa.binary(width)).buffers()[1]


def _longs(raw: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(int64 values of zig-zag varints, rows whose varint is too long for the kernels)."""
    long = pc.greater(pc.binary_length(raw), _VARINT_BYTES)
    raw = pc.if_else(long, b"\0", raw)
    value = pa.Array.from_buffers(_UINT64, len(raw), [None, _cells(raw, _VARINT_BYTES)])
    value = pc.bit_wise_and(value, _u64(0x7F7F7F7F7F7F7F7F))
    for low, high, shift in _VARINT_PACKING:
        value = pc.bit_wise_or(pc.bit_wise_and(value, low), pc.shift_right(pc.bit_wise_and(value, high), shift))
    sign = pc.subtract(_u64(0), pc.bit_wise_and(value, _u64(1)))  # all ones for odd (negative) values
    value = pc.bit_wise_xor(pc.shift_right(value, 1), sign)
    return pa.Array.from_buffers(pa.int64(), len(raw), [None, value.buffers()[1]]), long


def _decimals(raw: pa.Array, arrow_type: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """(decimal128 values of length-prefixed big-endian two's complement, rows too long for the kernels)."""
    unscaled = _after_first_byte(raw)
    long = pc.greater_equal(pc.binary_length(unscaled), _DECIMAL_BYTES)
    unscaled = pc.if_else(long, b"", unscaled)
    negative = pc.greater_equal(_first_byte(unscaled), pa.scalar(b"\x80", pa.binary()))
    cells = _cells(pc.binary_reverse(unscaled), _DECIMAL_BYTES, negative)
    return pa.Array.from_buffers(arrow_type, len(raw), [None, cells]), long


def _strings(raw: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """(UTF-8 strings of length-prefixed bytes, rows that are not valid UTF-8 when there are any)."""
    text = _after_first_byte(raw)
    try:
        return text.cast(pa.string()), None
    except pa.ArrowInvalid:  # rare: those rows take the plain path, which says why
        invalid = pa.array([not _is_utf8(value) for value in text.to_pylist()], pa.bool_())
        return pc.if_else(invalid, b"", text).cast(pa.string()), invalid


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _column(avro_type: Any, arrow_type: pa.DataType, raw: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """(a scalar field's column built from the raw bytes of its values, rows the kernels cannot build or None)."""
    if isinstance(avro_type, list):
        null_index = avro_type.index("null")
        null = pc.equal(_first_byte(raw), pa.scalar(bytes([2 * null_index]), pa.binary()))
        value = pc.if_else(null, b"\0", _after_first_byte(raw))  # \0: a value of every scalar type
        column, slow = _column(avro_type[1 - null_index], arrow_type, value)
        return pc.if_else(null, pa.scalar(None, arrow_type), column), slow
    kind = avro_type if isinstance(avro_type, str) else avro_type["type"]
    logical = None if isinstance(avro_type, str) else avro_type.get("logicalType")
    if logical == "decimal":
        return _decimals(raw, arrow_type)
    if kind == "long":
        values, slow = _longs(raw)
        return values.cast(arrow_type), slow  # int64, or a timestamp's microseconds
    if kind == "int":
        values, slow = _longs(raw)
        slow = pc.or_(slow, pc.not_equal(values, pc.cast(values, pa.int32(), safe=False)))
        return pc.cast(values, pa.int32(), safe=False), slow  # out-of-range rows are taken out (slow)
    if kind == "boolean":
        return pc.equal(raw, pa.scalar(b"\x01", pa.binary())), None
    if kind == "string":
        return _strings(raw)
    if kind == "enum":
        codes = pa.Array.from_buffers(pa.uint8(), len(raw), [None, raw.cast(pa.binary(1)).buffers()[1]])
        return pc.take(pa.array(avro_type["symbols"], pa.string()), pc.shift_right(codes, 1)), None
    raise TypeError(f"no column for {avro_type}")


_UNREADABLE = object()


class _BlockColumn:
    """An array or map field (possibly nullable): few distinct values per batch (usually empty or absent), each
    read once."""

    def __init__(self, avro_type: Any, arrow_type: pa.DataType):
        self._schema = fastavro.parse_schema(avro_type)
        self._arrow_type = arrow_type
        self._map = pa.types.is_map(arrow_type)

    def _read(self, raw: bytes) -> Any:
        value: Any
        try:
            value = fastavro.schemaless_reader(BytesIO(raw), self._schema, None)
        except ValueError:  # invalid UTF-8 (the pattern matched the layout): the plain path says why
            return _UNREADABLE
        return list(value.items()) if self._map and value is not None else value

    def column(self, raw: Sequence[bytes]) -> tuple[pa.Array, pa.Array | None]:
        distinct = {value: self._read(value) for value in set(raw)}
        slow = None
        if any(value is _UNREADABLE for value in distinct.values()):
            slow = pa.array([distinct[value] is _UNREADABLE for value in raw], pa.bool_())
            distinct = {key: None if value is _UNREADABLE else value for key, value in distinct.items()}
        return pa.array([distinct[value] for value in raw], self._arrow_type), slow


class _FastPath:
    """The pattern splitting a current-version message into its fields' raw bytes, and the columns built from
    them."""

    def __init__(self, kind: RecordKind, framing: Framing):
        fields = CURRENT[kind].schema["fields"]
        headers = b"|".join(re.escape(header) for header in framing.current_headers(kind))
        self.pattern = re.compile(b"(?:" + headers + b")" + b"".join(b"(" + _pattern(field["type"]) + b")" for field in fields))
        self.schema = arrow_schema(kind)
        self._fields = [(field["type"], arrow_field.type,
                         _BlockColumn(field["type"], arrow_field.type) if _is_block(field["type"]) else None)
                        for field, arrow_field in zip(fields, self.schema, strict=True)]

    def table(self, rows: list[tuple[bytes, ...]]) -> tuple[pa.Table, pa.Array | None]:
        """(the table of the matched rows, the rows to take out for the plain path, or None)."""
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(self._fields)
        arrays, slow = [], None
        for (avro_type, arrow_type, block), raw in zip(self._fields, columns, strict=True):
            if block is not None:
                array, field_slow = block.column(raw)
            else:
                array, field_slow = _column(avro_type, arrow_type, pa.array(raw, pa.binary()))
            arrays.append(array)
            if field_slow is not None:
                slow = field_slow if slow is None else pc.or_(slow, field_slow)
        return pa.Table.from_arrays(arrays, schema=self.schema), slow


_TEXT_FIELDS: dict[RecordKind, tuple[str, ...]] = {TRADE: ("trade_id", "currency"),
                                                   QUOTE: ("quote_id", "currency")}
_NAME = f"^{NAME_PATTERN.pattern}$"


def _rows_with(lists: pa.Array, items: pa.Array) -> pa.Array | None:
    """Per row of a list array, whether one of its items is marked in `items` (one flag per flattened item);
    None when none is."""
    if not pc.any(items).as_py():
        return None
    rows = set(pc.list_parent_indices(lists).filter(items).to_pylist())
    return pa.array([row in rows for row in range(len(lists))], pa.bool_())


def _repeated_suspects(kind: RecordKind, table: pa.Table) -> list[pa.Array | None]:
    """Rows whose trade conditions or vendor_data may be beyond their bounds."""
    vendor_data = table["vendor_data"].combine_chunks()
    entry = vendor_data.type  # a map is read as the list of its entries
    entries = vendor_data.cast(pa.list_(pa.field("entries", pa.struct([entry.key_field, entry.item_field]),
                                                 nullable=False)))
    flat = pc.list_flatten(entries)
    suspects = [pc.fill_null(pc.greater(pc.list_value_length(entries), MAX_VENDOR_DATA_ENTRIES), False),
                _rows_with(entries, pc.greater(pc.utf8_length(pc.struct_field(flat, "key")),
                                               MAX_VENDOR_DATA_KEY_LENGTH)),
                _rows_with(entries, pc.greater(pc.utf8_length(pc.struct_field(flat, "value")),
                                               MAX_VENDOR_DATA_VALUE_LENGTH))]
    if kind == TRADE:
        conditions = table["trade_conditions"].combine_chunks()
        suspects += [pc.greater(pc.list_value_length(conditions), MAX_TRADE_CONDITIONS),
                     _rows_with(conditions, pc.greater(pc.utf8_length(pc.list_flatten(conditions)),
                                                       MAX_CONDITION_LENGTH))]
    return suspects


def _suspect_rows(kind: RecordKind, table: pa.Table) -> pa.Array:
    """Rows that may fail VALIDATORS[kind]: a superset, judged afterwards by the validator itself."""
    suspect = pa.array([False] * table.num_rows, pa.bool_())
    for name in _TEXT_FIELDS[kind]:
        length = pc.utf8_length(table[name])
        suspect = pc.or_(suspect, pc.or_(pc.equal(length, 0), pc.greater(length, MAX_TEXT_LENGTH)))
    for name in ("symbol", "exchange"):
        suspect = pc.or_(suspect, pc.invert(pc.match_substring_regex(table[name], _NAME)))
    if kind == TRADE:
        suspect = pc.or_(suspect, pc.less_equal(table["quantity"], _ZERO))
        suspect = pc.or_(suspect, pc.less_equal(table["price"], _ZERO))
    else:
        for side in ("bid", "ask"):
            price, quantity = table[f"{side}_price"], table[f"{side}_quantity"]
            suspect = pc.or_(suspect, pc.not_equal(pc.is_null(price), pc.is_null(quantity)))
            suspect = pc.or_(suspect, pc.fill_null(pc.less_equal(quantity, _ZERO), False))
            suspect = pc.or_(suspect, pc.fill_null(pc.less_equal(price, _ZERO), False))
    for repeated in _repeated_suspects(kind, table):
        if repeated is not None:
            suspect = pc.or_(suspect, repeated)
    return suspect.combine_chunks() if isinstance(suspect, pa.ChunkedArray) else suspect


class BatchDecoder:
    """Decodes Kafka message values that should all be records of `kind` (one topic's), in either framing, into
    one Arrow table. Undecodable values, records of another kind and records the validators refuse are rejected,
    with why."""

    def __init__(self, kind: RecordKind, framing: Framing = SINGLE_OBJECT):
        self.kind = kind
        self._framing = framing
        self._fast = _FastPath(kind, framing)
        self._validate = VALIDATORS[kind]

    def _judge(self, index: int, value: bytes) -> Record | Rejection:
        """The fully decoded, validated record, or why it is rejected."""
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

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Never fails because of a message: one that cannot become a row (a null value, garbage, a record
        the batch path trips on) is rejected with why, and the others are decoded."""
        tombstones = [index for index, value in enumerate(values) if not isinstance(value, bytes)]
        if tombstones:
            present = [index for index, value in enumerate(values) if isinstance(value, bytes)]
            decoded = self.decode([cast(bytes, values[index]) for index in present])
            rejected = [Rejection(index, UNDECODABLE, "a null value (a tombstone), not a record")
                        for index in tombstones]
            rejected += [replace(r, index=present[r.index]) for r in decoded.rejected]
            rows = pc.take(pa.array(present, pa.int64()), decoded.rows)
            return DecodedBatch(decoded.table, rows, sorted(rejected, key=lambda r: r.index))
        try:
            return self._decode_batch(cast(Sequence[bytes], values))
        except SchemaRegistryUnavailable:
            raise
        except Exception:  # noqa: BLE001 - a message the batch path trips on: each message alone, to find it
            return self._decode_one_by_one(cast(Sequence[bytes], values))

    def _decode_one_by_one(self, values: Sequence[bytes]) -> DecodedBatch:
        tables, rows, rejected = [], [], []
        for index, value in enumerate(values):
            try:
                alone = self._decode_batch([value])
            except SchemaRegistryUnavailable:
                raise
            except Exception as error:  # noqa: BLE001 - rejected with why, the others go on
                rejected.append(Rejection(index, UNDECODABLE, f"cannot be decoded: {type(error).__name__}: {error}"))
                continue
            rejected += [replace(r, index=index) for r in alone.rejected]
            if alone.table.num_rows:
                tables.append(alone.table)
                rows.append(index)
        table = pa.concat_tables(tables) if tables else self._fast.schema.empty_table()
        return DecodedBatch(table, pa.array(rows, pa.int64()), rejected)

    def _decode_batch(self, values: Sequence[bytes]) -> DecodedBatch:
        match = self._fast.pattern.fullmatch
        matched: list[tuple[bytes, ...]] = []
        matched_rows: list[int] = []
        other_rows: list[int] = []
        for index, value in enumerate(values):
            found = match(value)
            if found is None:
                other_rows.append(index)
            else:
                matched.append(found.groups())
                matched_rows.append(index)
        table, slow = self._fast.table(matched)
        rows = pa.array(matched_rows, pa.int64())
        if slow is not None and pc.any(slow).as_py():  # rare: judged in full below
            other_rows += rows.filter(slow).to_pylist()
            fast = pc.invert(slow)
            table, rows = table.filter(fast), rows.filter(fast)

        rejected: list[Rejection] = []
        suspect = _suspect_rows(self.kind, table)
        if pc.any(suspect).as_py():
            keep = []
            for index, is_suspect in zip(rows.to_pylist(), suspect.to_pylist(), strict=True):
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
