"""Kafka wire format: Avro single-object encoding (0xC3 0x01, the writer schema's 8-byte CRC-64-AVRO fingerprint,
then the Avro binary body). Every message names its writer schema, so one topic carries v1 and v2 messages and
consumers need no registry service: the registry is k2/schemas/, every published version of every record. (With
a schema registry configured, k2.core.framing gives them Confluent's wire format on Kafka instead.)

A published schema file is never edited beyond its docs, aliases and added defaults (which the fingerprint ignores); a
new version is a new file (trade_v3.avsc) and becomes the reader. Every version from v2 on is read by Avro schema
resolution alone, so any Avro reader given schemas/ reads it as the current version (tests/test_schema_compatibility.py
checks it with Apache Avro for Java); v1 cannot be, and K2 converts it (UPGRADES).
"""

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from k2.core.avro_writer import UnsupportedSchema, compile_writer
from k2.core.records import QUOTE, TRADE, Record, RecordKind
from k2.core.schemas import PUBLISHED

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10
# message_id of upgraded v1 messages (which had none): uuid5 of the message bytes, stable on every read.
V1_MESSAGE_ID_NAMESPACE = uuid.UUID("6f1c2b7e-64c5-4c35-9c55-8d0f8a1f3e21")


class DecodeError(ValueError):
    """Bytes that are not a readable K2 message; says why."""


@dataclass(frozen=True)
class SchemaVersion:
    kind: RecordKind
    version: int
    path: Path
    schema: dict[str, Any]
    parsed: Any
    parsed_for_reading: Any
    fingerprint: bytes


def without_logical_types(node: Any, types: Collection[str] | None = None) -> Any:
    """The schema without the given logical types (all when None): fastavro then reads the underlying values
    (a uuid as its string; a decimal's bytes and a timestamp's long, which hot paths convert column-wise)."""
    if isinstance(node, dict):
        return {
            k: without_logical_types(v, types)
            for k, v in node.items()
            if not (k == "logicalType" and (types is None or v in types))
        }
    if isinstance(node, list):
        return [without_logical_types(v, types) for v in node]
    return node


def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _load_versions() -> dict[RecordKind, list[SchemaVersion]]:
    return {
        kind: [
            SchemaVersion(
                kind,
                file.version,
                file.path,
                file.schema,
                fastavro.parse_schema(file.schema),
                fastavro.parse_schema(without_logical_types(file.schema, ["uuid"])),
                schema_fingerprint(file.schema),
            )
            for file in files
        ]
        for kind, files in PUBLISHED.items()
    }


VERSIONS = _load_versions()
CURRENT: dict[RecordKind, SchemaVersion] = {kind: vs[-1] for kind, vs in VERSIONS.items()}
CURRENT_HEADERS: dict[RecordKind, bytes] = {kind: MAGIC + v.fingerprint for kind, v in CURRENT.items()}
CURRENT_FIELDS: dict[RecordKind, list[str]] = {
    kind: [f["name"] for f in v.schema["fields"]] for kind, v in CURRENT.items()
}
# The ids a current-version message starts with, which leading_ids reads without decoding the rest.
LEADING_IDS: dict[RecordKind, tuple[str, str]] = {
    TRADE: ("message_id", "trade_id"),
    QUOTE: ("message_id", "quote_id"),
}
if any(tuple(CURRENT_FIELDS[kind][:2]) != fields for kind, fields in LEADING_IDS.items()):
    raise RuntimeError(f"the current schemas no longer start with {LEADING_IDS}: update leading_ids")


def _upgrade_trade_v1(old: Record, raw: bytes) -> Record:
    vendor = {"company_id": str(old["company_id"]), "qualifiers": str(old["qualifiers"])}
    if old["venue"]:
        vendor["venue"] = old["venue"]
    if old["buyer_id"]:
        vendor["buyer_id"] = old["buyer_id"]
    message_id = str(uuid.uuid5(V1_MESSAGE_ID_NAMESPACE, raw.hex()))
    sequence = old["sequence_number"]
    return {
        "message_id": message_id,
        "trade_id": f"{old['exchange']}-{sequence if sequence is not None else message_id}",
        "symbol": old["symbol"],
        "exchange": old["exchange"],
        "asset_class": "EQUITIES",
        "timestamp": old["exchange_timestamp"],
        "price": old["price"],
        "quantity": Decimal(old["volume"]),
        "currency": "AUD",
        "side": "UNKNOWN",
        "trade_conditions": [str(old["qualifiers"])],
        "source_sequence": sequence,
        "ingestion_timestamp": old["ingestion_timestamp"],
        "platform_sequence": None,
        "vendor_data": vendor,
    }


def _upgrade_quote_v1(old: Record, raw: bytes) -> Record:
    def side(price: Decimal, volume: int) -> tuple[Decimal | None, Decimal | None]:
        return (price, Decimal(volume)) if price and volume else (None, None)

    bid_price, bid_quantity = side(old["bid_price"], old["bid_volume"])
    ask_price, ask_quantity = side(old["ask_price"], old["ask_volume"])
    message_id = str(uuid.uuid5(V1_MESSAGE_ID_NAMESPACE, raw.hex()))
    sequence = old["sequence_number"]
    return {
        "message_id": message_id,
        "quote_id": f"{old['exchange']}-{sequence if sequence is not None else message_id}",
        "symbol": old["symbol"],
        "exchange": old["exchange"],
        "asset_class": "EQUITIES",
        "timestamp": old["exchange_timestamp"],
        "bid_price": bid_price,
        "bid_quantity": bid_quantity,
        "ask_price": ask_price,
        "ask_quantity": ask_quantity,
        "currency": "AUD",
        "source_sequence": sequence,
        "ingestion_timestamp": old["ingestion_timestamp"],
        "platform_sequence": None,
        "vendor_data": {"company_id": str(old["company_id"])},
    }


# v1 is converted, not resolved: no reader schema can carry it into v2 exactly. v1 and v2 both name fields `price`
# (quotes: `bid_price`, `ask_price`) and `ingestion_timestamp`, with decimal scale 6 vs 18 and milliseconds vs
# microseconds; Avro pairs fields by name and reads a value in the reader's logical type, so Java's Avro would read
# 37.51 as 0.00000000003751 (docs/tables.md). The rest has no resolution rule: ids derived from the message, a long
# volume into a decimal, fields into vendor_data, a zero quote side into null. Every later version must be read by
# Avro resolution alone.
UPGRADES: dict[tuple[RecordKind, int], Callable[[Record, bytes], Record]] = {
    (TRADE, 1): _upgrade_trade_v1,
    (QUOTE, 1): _upgrade_quote_v1,
}


@dataclass(frozen=True)
class _Reader:
    kind: RecordKind
    writer: Any
    reader: Any  # None when the writer is the current schema (no resolution needed)
    upgrade: Callable[[Record, bytes], Record] | None


def _readers() -> dict[bytes, _Reader]:
    readers: dict[bytes, _Reader] = {}
    for kind, versions in VERSIONS.items():
        current = CURRENT[kind]
        for version in versions:
            upgrade = UPGRADES.get((kind, version.version))
            if version is current:
                reader = _Reader(kind, version.parsed_for_reading, None, None)
            elif upgrade is not None:
                reader = _Reader(kind, version.parsed_for_reading, None, upgrade)
            else:
                reader = _Reader(kind, version.parsed_for_reading, current.parsed_for_reading, None)
            readers[version.fingerprint] = reader
    return readers


_READERS = _readers()


def _encoder(version: SchemaVersion) -> Callable[[Record], bytes]:
    header = MAGIC + version.fingerprint
    try:
        write = compile_writer(version.schema)
    except UnsupportedSchema:
        return lambda record: encode_with(version, record)

    def encode_compiled(record: Record) -> bytes:
        out = bytearray(header)
        write(out, record)
        return bytes(out)

    return encode_compiled


def enum_written(kind: RecordKind, field: str, symbol: str) -> bytes:
    """A symbol of an enum field of the current schema as Avro writes it (its index; one byte for K2's enums)."""
    [enum] = [f["type"] for f in CURRENT[kind].schema["fields"] if f["name"] == field]
    return bytes([enum["symbols"].index(symbol) << 1])


def encode(kind: RecordKind, record: Record) -> bytes:
    """A v2 record as a self-describing Kafka message value."""
    return _ENCODERS[kind](record)


def encode_with(version: SchemaVersion, record: Record) -> bytes:
    """A record in an older schema version (tests, migrations)."""
    out = BytesIO()
    out.write(MAGIC + version.fingerprint)
    fastavro.schemaless_writer(out, version.parsed, record)
    return out.getvalue()


_ENCODERS = {kind: _encoder(version) for kind, version in CURRENT.items()}


def decode(value: bytes) -> tuple[RecordKind, Record]:
    """Any published version's message as a current-version record."""
    if value[:2] != MAGIC or len(value) < HEADER_SIZE:
        raise DecodeError("not Avro single-object encoded (missing C3 01 header)")
    reader = _READERS.get(value[2:HEADER_SIZE])
    if reader is None:
        raise DecodeError(f"unknown writer schema fingerprint {value[2:HEADER_SIZE].hex()}")
    body = BytesIO(value)
    body.seek(HEADER_SIZE)
    try:
        record = cast(Record, fastavro.schemaless_reader(body, reader.writer, reader.reader))
    except Exception as error:  # noqa: BLE001 - fastavro raises several types for truncated or corrupt bodies
        raise DecodeError(f"corrupt Avro body: {type(error).__name__}: {error}") from None
    if body.tell() != len(value):
        raise DecodeError(f"{len(value) - body.tell()} trailing bytes after the Avro body")
    if reader.upgrade is not None:
        record = reader.upgrade(record, value)
    return reader.kind, record


def leading_ids(value: bytes) -> tuple[str, str]:
    """(message_id, trade_id or quote_id) of a current-version message, without decoding the rest: the first two
    fields, each an Avro string (zig-zag varint length, then UTF-8)."""
    if value[:HEADER_SIZE] not in _CURRENT_HEADER_SET:
        raise DecodeError("not a current-version K2 message")
    position = HEADER_SIZE
    ids = []
    for _ in LEADING_IDS[TRADE]:
        encoded, shift = 0, 0
        while True:
            if position >= len(value):
                raise DecodeError("message ends inside its leading ids")
            byte = value[position]
            position += 1
            encoded |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        length = (encoded >> 1) ^ -(encoded & 1)
        if length < 0 or position + length > len(value):
            raise DecodeError("message ends inside its leading ids")
        ids.append(value[position : position + length].decode())
        position += length
    return ids[0], ids[1]


_CURRENT_HEADER_SET = frozenset(CURRENT_HEADERS.values())
