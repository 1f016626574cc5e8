"""Arrow rows → k2.marketdata.v1 messages as protobuf wire bytes, column by column, with no per-row Python.

Each message field becomes a binary column of its encoded bytes (tag, varint length or value, payload), null
where proto3 leaves the field out (a default value, an absent `optional`), and a row's message is the
concatenation of its fields: pyarrow.compute kernels over whole columns. The mapping is the one of
k2.core.protos.trade_to_proto / quote_to_proto, read from the message descriptor (field numbers, types,
presence) and matched to the Arrow columns by name (the contract mirrors them); tests/test_query_wire.py proves
that the bytes parse into exactly the messages those functions build."""

import functools
from collections.abc import Iterator
from decimal import Decimal
from typing import cast

import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from k2.core.records import QUOTE, TRADE, RecordKind
from k2.marketdata.v1.marketdata_pb2 import Quote, Trade

MESSAGE_TYPES: dict[RecordKind, type[Trade] | type[Quote]] = {TRADE: Trade, QUOTE: Quote}
NULL = pa.scalar(None, pa.binary())
VARINT, LENGTH_DELIMITED = 0, 2
FIELD_ONE = 1  # `repeated Trade trades = 1` / `repeated Quote quotes = 1` in every response that carries them
# A column of row tables that is not data: each row's message, framed as field 1 of a response (see `framed`).
FRAMED = "framed"
FRAMED_FIELD = pa.field(FRAMED, pa.binary(), nullable=False)


def varint(value: int) -> bytes:
    """One non-negative integer as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def _join(*parts: pa.Array | bytes) -> pa.Array:
    """Row-wise concatenation; null parts are left out. (null_handling="skip" would drop rows where every part
    is null: Arrow 26 returns a shorter array.)"""
    return pc.binary_join_element_wise(*parts, b"", null_handling="replace", null_replacement="")


def _where(keep: pa.BooleanArray, values: pa.Array) -> pa.Array:
    """`values` (a binary array) with null where `keep` is not true."""
    if values.offset:  # a slice: Arrow's if_else takes any array, but is much slower
        return pc.if_else(keep, values, NULL)
    valid = pc.and_(pc.fill_null(keep, False), pc.is_valid(values))
    return pa.Array.from_buffers(values.type, len(values), [valid.buffers()[1], *values.buffers()[1:]])


def _without(default: pa.BooleanArray, values: pa.Array) -> pa.Array:
    """`values` with null where `default` is true (proto3 leaves a default value out)."""
    return _where(pc.invert(default), values)


_SMALL = 1 << 14  # values below take at most two varint bytes: read from a table
_SMALL_VARINTS = pa.array([varint(n) for n in range(_SMALL)], pa.binary())
# the low 14 bits of a larger value: two bytes, each with its continuation bit
_LOW_GROUPS = pa.array([bytes([n & 0x7F | 0x80, n >> 7 | 0x80]) for n in range(_SMALL)], pa.binary())
_U64_SMALL = pa.scalar(_SMALL, pa.uint64())
_U64_LOW_BITS = pa.scalar(_SMALL - 1, pa.uint64())
_U64_14 = pa.scalar(14, pa.uint64())


def _unsigned_varints(bits: pa.Array) -> pa.Array:
    """uint64 values (no nulls) as varints, 14 bits at a time through the tables."""
    lowest, highest = pc.min_max(bits).values()
    low_bits = pc.bit_wise_and(bits, _U64_LOW_BITS)
    small = pc.take(_SMALL_VARINTS, low_bits)
    if highest.as_py() < _SMALL:
        return small
    large = pc.binary_join_element_wise(
        pc.take(_LOW_GROUPS, low_bits), _unsigned_varints(pc.shift_right(bits, _U64_14)), b""
    )
    return large if lowest.as_py() >= _SMALL else pc.if_else(pc.less(bits, _U64_SMALL), small, large)


def varints(values: pa.Array) -> pa.Array:
    """int64 values as protobuf varints (a negative value in ten bytes, its two's complement, as protobuf
    writes an int64); null stays null."""
    if len(values) == 0:
        return pa.array([], pa.binary())
    encoded = _unsigned_varints(pc.fill_null(values.cast(pa.int64()), 0).view(pa.uint64()))
    return encoded if values.null_count == 0 else _where(pc.is_valid(values), encoded)


@functools.cache
def _tagged_lengths(tag: bytes) -> pa.Array:
    """The tag then each length below _SMALL as a varint: a table."""
    return pa.array([tag + varint(n) for n in range(_SMALL)], pa.binary())


def _delimited_parts(tag: bytes, payload: pa.Array, omit_empty: bool = False) -> list[pa.Array]:
    """[tag and length, payload]: null where the payload is null (or empty, with `omit_empty`)."""
    lengths = pc.binary_length(payload)
    if omit_empty:
        lengths = pc.if_else(pc.equal(lengths, 0), pa.scalar(None, lengths.type), lengths)
    if (pc.max(lengths).as_py() or 0) < _SMALL:
        return [pc.take(_tagged_lengths(tag), lengths), payload]
    return [pc.binary_join_element_wise(tag, varints(lengths), b""), payload]


def _delimited(tag: bytes, payload: pa.Array) -> pa.Array:
    """tag, length, payload; null where the payload is null."""
    return pc.binary_join_element_wise(*_delimited_parts(tag, payload), b"")


def decimal_texts(column: pa.Array) -> pa.Array:
    """k2.core.protos.decimal_text of each value of a decimal column ("97123.45", "100", "-0.5")."""
    precision, scale = column.type.precision, column.type.scale
    digits = precision - scale  # integer digits
    wide = pa.decimal256(precision + 2, scale)
    # Arrow writes a decimal with few significant digits in exponent form: 10^digits + |value| never has few,
    # and its text is "1", the integer part zero-padded to `digits`, then "." and `scale` fractional digits.
    text = pc.add(pc.abs(column.cast(wide)), pa.scalar(Decimal(10**digits), wide)).cast(pa.string())
    integer = pc.ascii_ltrim(pc.utf8_slice_codeunits(text, 1, digits), "0")  # all but the units digit
    rest = pc.utf8_slice_codeunits(text, digits)  # the units digit onwards
    if scale:
        rest = pc.ascii_rtrim(pc.ascii_rtrim(rest, "0"), ".")
    sign = pc.take(
        pa.array(["", "-"]), pc.cast(pc.less(column, pa.scalar(Decimal(0), column.type)), pa.int8())
    )
    return pc.binary_join_element_wise(sign, integer, rest, "")


def _enum(field: FieldDescriptor, column: pa.Array) -> list[pa.Array]:
    """An Avro enum symbol S (a string column) as the proto value <PREFIX>_S."""
    enum = field.enum_type
    assert enum is not None
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    numbers = {v.name.removeprefix(prefix): v.number for v in enum.values if v.number}
    index = pc.index_in(column, value_set=pa.array(list(numbers), pa.string()))
    if index.null_count > column.null_count:
        raise ValueError(f"{field.name}: a value that is no {enum.name} symbol")
    encoded = pa.array([_tag(field.number, VARINT) + varint(n) for n in numbers.values()], pa.binary())
    return [pc.take(encoded, index)]


def _integers(field: FieldDescriptor, column: pa.Array) -> list[pa.Array]:
    encoded = pc.binary_join_element_wise(_tag(field.number, VARINT), varints(column), b"")
    return [encoded if field.has_presence else _without(pc.equal(column, 0), encoded)]


def _timestamp(field: FieldDescriptor, column: pa.Array) -> list[pa.Array]:
    """A google.protobuf.Timestamp (seconds = 1, nanos = 2), present wherever the column has a value."""
    micros = column.cast(pa.int64())
    fraction = pc.modulo(
        micros, 1_000_000
    )  # floored: a time before 1970 has negative seconds, positive nanos
    seconds = pc.divide(pc.subtract(micros, fraction), 1_000_000)
    nanos = pc.multiply(fraction, 1000)
    body = _join(
        _without(pc.equal(seconds, 0), pc.binary_join_element_wise(_tag(1, VARINT), varints(seconds), b"")),
        _without(pc.equal(nanos, 0), pc.binary_join_element_wise(_tag(2, VARINT), varints(nanos), b"")),
    )
    return _delimited_parts(_tag(field.number, LENGTH_DELIMITED), _when_valid(column, body))


def _when_valid(column: pa.Array, encoded: pa.Array) -> pa.Array:
    return encoded if column.null_count == 0 else _where(pc.is_valid(column), encoded)


def _text(field: FieldDescriptor, column: pa.Array) -> list[pa.Array]:
    """A string field from a string or decimal column."""
    payload = (decimal_texts(column) if pa.types.is_decimal(column.type) else column).cast(pa.binary())
    return _delimited_parts(_tag(field.number, LENGTH_DELIMITED), payload, omit_empty=not field.has_presence)


def _elements(column: pa.ListArray | pa.MapArray) -> pa.Array:
    """The child values the (possibly sliced) list column's rows span."""
    offsets = column.offsets
    start = offsets[0].as_py()
    return column.values.slice(start, offsets[-1].as_py() - start)


def _concatenated(column: pa.ListArray | pa.MapArray, encoded_elements: pa.Array) -> pa.Array:
    """Per row, its encoded elements concatenated (nothing for an empty or null row)."""
    offsets = column.offsets
    lists = pa.ListArray.from_arrays(pc.subtract(offsets, offsets[0]), encoded_elements)
    return _when_valid(column, pc.binary_join(lists, b""))


def _repeated_text(field: FieldDescriptor, column: pa.ListArray) -> list[pa.Array]:
    return [
        _concatenated(
            column, _delimited(_tag(field.number, LENGTH_DELIMITED), _elements(column).cast(pa.binary()))
        )
    ]


def _map(field: FieldDescriptor, column: pa.MapArray) -> list[pa.Array]:
    """Each entry a submessage of the map field: key = 1, value = 2."""
    entries = _elements(column)
    key = _delimited(_tag(1, LENGTH_DELIMITED), pc.struct_field(entries, [0]).cast(pa.binary()))
    value = _delimited(_tag(2, LENGTH_DELIMITED), pc.struct_field(entries, [1]).cast(pa.binary()))
    return [_concatenated(column, _delimited(_tag(field.number, LENGTH_DELIMITED), _join(key, value)))]


def _field(field: FieldDescriptor, column: pa.Array) -> list[pa.Array]:
    """The field's encoding as parts to concatenate (all null where the field is left out)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return _map(field, column)
    if field.is_repeated:
        return _repeated_text(field, column)
    if field.message_type is not None:
        return _timestamp(field, column)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum(field, column)
    if field.type == FieldDescriptor.TYPE_STRING:
        return _text(field, column)
    return _integers(field, column)


def messages(kind: RecordKind, table: pa.Table) -> pa.Array:
    """The serialized Trade or Quote of each row (a binary array)."""
    descriptor = cast(Descriptor, MESSAGE_TYPES[kind].DESCRIPTOR)  # typed as upb's or the pure one
    columns = table.select([field.name for field in descriptor.fields]).combine_chunks()
    if columns.num_rows == 0:
        return pa.array([], pa.binary())
    batch = columns.to_batches()[0]
    fields = [descriptor.fields_by_number[number] for number in sorted(descriptor.fields_by_number)]
    return _join(*(part for field in fields for part in _field(field, batch.column(field.name))))  # one pass


def framed(kind: RecordKind, table: pa.Table) -> pa.Array:
    """Each row's message behind the tag and length of field 1 (`repeated Trade trades = 1`): the concatenation
    of a slice of these is the records part of a response."""
    return _delimited(_tag(FIELD_ONE, LENGTH_DELIMITED), messages(kind, table))


def response_slices(
    framed: pa.Array | pa.ChunkedArray, most_rows: int, most_bytes: int
) -> Iterator[tuple[int, int]]:
    """(start, length) of consecutive framed rows, for responses of at most `most_rows` rows and `most_bytes`
    bytes (a larger row alone)."""
    sizes = pc.binary_length(framed)
    if (pc.sum(sizes).as_py() or 0) <= most_bytes:  # nearly always
        yield from (
            (start, min(most_rows, len(framed) - start)) for start in range(0, len(framed), most_rows)
        )
        return
    start, taken, size = 0, 0, 0
    for row_size in sizes.to_pylist():
        if taken == most_rows or (taken and size + row_size > most_bytes):
            yield start, taken
            start, taken, size = start + taken, 0, 0
        taken += 1
        size += row_size
    if taken:
        yield start, taken


def ipc_stream(rows: pa.Table) -> bytes:
    """The rows as one Arrow IPC stream: their schema, then their record batches."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


def joined(array: pa.Array, start: int = 0, stop: int | None = None) -> bytes:
    """The concatenated bytes of array[start:stop] (a binary array), in one copy."""
    stop = len(array) if stop is None else stop
    if start >= stop:
        return b""
    _, offsets_buffer, data = array.buffers()
    offsets = pa.Array.from_buffers(pa.int32(), len(array) + 1, [None, offsets_buffer], offset=array.offset)
    return data[offsets[start].as_py() : offsets[stop].as_py()].to_pybytes()
