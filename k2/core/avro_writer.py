"""Avro binary writers compiled once per schema into a chain of small functions: the same bytes as fastavro's
schemaless writer (tests check it) at well under half its cost per record, which is most of ingest's per-trade
work. Covers the types K2's schemas use; compile_writer raises UnsupportedSchema for anything else (the caller
then falls back to fastavro)."""

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from k2.core.timestamps import micros

Write = Callable[[bytearray, Any], None]


class UnsupportedSchema(ValueError):
    """A schema construct this module does not compile."""


def write_long(out: bytearray, value: int) -> None:
    value = (value << 1) ^ (value >> 63)  # zig-zag, then base-128 varint
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def write_null(out: bytearray, value: None) -> None:
    pass


def write_boolean(out: bytearray, value: bool) -> None:
    out.append(1 if value else 0)


def write_bytes(out: bytearray, value: bytes) -> None:
    size = len(value)
    if size < 64:
        out.append(size << 1)
    else:
        write_long(out, size)
    out += value


def write_string(out: bytearray, value: str) -> None:
    write_bytes(out, value.encode())


def write_uuid(out: bytearray, value: Any) -> None:
    write_bytes(out, (value if isinstance(value, str) else str(value)).encode())


def write_timestamp_micros(out: bytearray, value: datetime | int) -> None:
    if isinstance(value, datetime):
        value = micros(value)
    write_long(out, value)


def decimal_writer(precision: int, scale: int) -> Write:
    factor = 10**scale
    limit = 10**precision

    def write_decimal(out: bytearray, value: Decimal) -> None:
        numerator, denominator = value.as_integer_ratio()  # exact, and cheaper than Decimal arithmetic
        unscaled, remainder = divmod(numerator * factor, denominator)
        if remainder:
            raise ValueError("Scale provided in schema does not match the decimal")
        if not -limit < unscaled < limit:
            raise ValueError("The decimal precision is bigger than allowed by schema")
        write_bytes(out, unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True))

    return write_decimal


SHORT_SIZES = [bytes([size << 1]) for size in range(64)]  # the size of bytes or a string below 64, as written


def text_written(text: str) -> bytes:
    """A string as Avro writes it."""
    data = text.encode()
    return SHORT_SIZES[len(data)] + data if len(data) < 64 else _written_bytes(data)


def plain_decimal_writer(precision: int, scale: int) -> Callable[[str], bytes]:
    """A function giving the Avro bytes of decimal(precision, scale) for a positive decimal string without sign
    or exponent and with at most precision - scale integer and scale fractional digits, read straight into its
    unscaled integer (no Decimal); it gives b"" for any other string (zero included), which the caller must
    read by the plain path."""
    plain = re.compile(rf"([0-9]{{1,{precision - scale}}})(?:\.([0-9]{{1,{scale}}}))?").fullmatch
    factors = [10 ** (scale - digits) for digits in range(scale + 1)]

    def written(text: str) -> bytes:
        match = plain(text)
        if match is None:
            return b""
        whole, fraction = match.groups()
        unscaled = int(whole + fraction) * factors[len(fraction)] if fraction else int(whole) * factors[0]
        if not unscaled:
            return b""
        data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big")  # positive: the sign bit is clear
        return SHORT_SIZES[len(data)] + data if len(data) < 64 else _written_bytes(data)

    return written


def _written_bytes(data: bytes) -> bytes:
    out = bytearray()
    write_bytes(out, data)
    return bytes(out)


class LongWriter:
    """Avro longs as written, for a series of values that mostly share their high bits (timestamps, sequence
    numbers): the low 14 bits come from a table, the rest is remembered from the previous value."""

    _LOW = b"".join(bytes((low & 127 | 128, low >> 7 | 128)) for low in range(1 << 14))
    __slots__ = ("_high", "_high_written")

    def __init__(self) -> None:
        self._high = -1
        self._high_written = b""

    def written(self, value: int) -> bytes:
        zigzag = (value << 1) ^ (value >> 63)
        high = zigzag >> 14
        if not high:
            out = bytearray()
            write_long(out, value)
            return bytes(out)
        if high != self._high:
            out = bytearray()
            while high > 0x7F:
                out.append((high & 0x7F) | 0x80)
                high >>= 7
            out.append(high)
            self._high, self._high_written = zigzag >> 14, bytes(out)
        low = (zigzag & 16383) << 1
        return self._LOW[low : low + 2] + self._high_written


def _enum_writer(symbols: list[str]) -> Write:
    tags = {}
    for index, symbol in enumerate(symbols):
        tag = bytearray()
        write_long(tag, index)
        tags[symbol] = bytes(tag)

    def write_enum(out: bytearray, value: str) -> None:
        try:
            out += tags[value]
        except KeyError:
            raise ValueError(f"{value!r} is not one of the enum's symbols {symbols}") from None

    return write_enum


def _array_writer(items: Write) -> Write:
    def write_array(out: bytearray, value: list[Any]) -> None:
        if value:
            write_long(out, len(value))
            for item in value:
                items(out, item)
        out.append(0)

    return write_array


def _map_writer(values: Write) -> Write:
    def write_map(out: bytearray, value: dict[str, Any]) -> None:
        if value:
            write_long(out, len(value))
            for key, item in value.items():
                write_string(out, key)
                values(out, item)
        out.append(0)

    return write_map


def _nullable_writer(null_index: int, inner: Write) -> Write:
    null_tag, value_tag = null_index << 1, (1 - null_index) << 1

    def write_nullable(out: bytearray, value: Any) -> None:
        if value is None:
            out.append(null_tag)
        else:
            out.append(value_tag)
            inner(out, value)

    return write_nullable


PRIMITIVES: dict[str, Write] = {
    "null": write_null,
    "boolean": write_boolean,
    "int": write_long,
    "long": write_long,
    "bytes": write_bytes,
    "string": write_string,
}


def _type_writer(schema: Any) -> Write:
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return PRIMITIVES[schema]
        raise UnsupportedSchema(f"type {schema!r}")
    if isinstance(schema, list):
        if len(schema) == 2 and "null" in schema:
            null_index = schema.index("null")
            return _nullable_writer(null_index, _type_writer(schema[1 - null_index]))
        raise UnsupportedSchema(f"union {schema}")
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "decimal" and kind == "bytes":
        return decimal_writer(schema["precision"], schema.get("scale", 0))
    if logical == "timestamp-micros" and kind == "long":
        return write_timestamp_micros
    if logical == "uuid" and kind == "string":
        return write_uuid
    if logical is not None:
        raise UnsupportedSchema(f"logical type {logical!r} of {kind!r}")
    if kind == "enum":
        return _enum_writer(schema["symbols"])
    if kind == "array":
        return _array_writer(_type_writer(schema["items"]))
    if kind == "map":
        return _map_writer(_type_writer(schema["values"]))
    if isinstance(kind, str) and kind in PRIMITIVES:
        return PRIMITIVES[kind]
    raise UnsupportedSchema(f"type {kind!r}")


def compile_writer(schema: dict[str, Any]) -> Callable[[bytearray, dict[str, Any]], None]:
    """A function appending a record's Avro binary form to a bytearray, for a flat record schema."""
    if schema.get("type") != "record":
        raise UnsupportedSchema("only record schemas are compiled")
    fields = [(field["name"], _type_writer(field["type"])) for field in schema["fields"]]

    def write_record(out: bytearray, record: dict[str, Any]) -> None:
        for name, write in fields:
            write(out, record[name])

    return write_record
