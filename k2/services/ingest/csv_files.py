"""K2's headered CSV of trades or quotes, for exchanges without a dedicated loader (docs/file-formats.md).

The header names the columns (any order), after the v2 fields. Decimals are plain decimal strings,
timestamps ISO-8601 with a UTC offset, enums the Avro symbols, trade_conditions '|'-separated, vendor_data a
JSON object of strings; an empty optional cell is absent. One row per line. A row without message_id gets
uuid5 of its trade_id/quote_id, so reloading a file gives the same ids; source_sequence defaults to nothing
(it is the exchange's own sequence, not the line number).
"""

import csv
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from k2.core.records import (
    QUOTE,
    TRADE,
    FieldError,
    Record,
    RecordKind,
    check_message_id,
    read_decimal,
    validate_quote,
    validate_trade,
)
from k2.services.ingest.ids import record_message_id
from k2.services.ingest.rows import ParsedChunk, RejectedRow

REQUIRED: dict[RecordKind, tuple[str, ...]] = {
    TRADE: (
        "trade_id",
        "symbol",
        "exchange",
        "asset_class",
        "timestamp",
        "price",
        "quantity",
        "currency",
        "side",
    ),
    QUOTE: ("quote_id", "symbol", "exchange", "asset_class", "timestamp", "currency"),
}
OPTIONAL: dict[RecordKind, tuple[str, ...]] = {
    TRADE: ("message_id", "trade_conditions", "source_sequence", "vendor_data"),
    QUOTE: (
        "message_id",
        "bid_price",
        "bid_quantity",
        "ask_price",
        "ask_quantity",
        "source_sequence",
        "vendor_data",
    ),
}
CONDITION_SEPARATOR = "|"
_FRACTION = re.compile(r"[.,](\d+)", re.ASCII)


def read_header(kind: RecordKind, path: Path) -> list[str]:
    """The file's column names, checked: every required column present, none unknown or repeated."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        try:
            header = next(csv.reader([file.readline()]), [])
        except csv.Error as error:  # e.g. a field beyond the csv module's size limit
            raise ValueError(f"{path.name}: the header is not a CSV line: {error}") from None
    columns = [name.strip() for name in header]
    missing = [name for name in REQUIRED[kind] if name not in columns]
    if missing:
        raise ValueError(
            f"{path.name}: missing required column(s) {', '.join(missing)} "
            "(the first line must be the header)"
        )
    allowed = REQUIRED[kind] + OPTIONAL[kind]
    unknown = [name for name in columns if name not in allowed]
    if unknown:
        raise ValueError(
            f"{path.name}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"a {kind} file has {', '.join(allowed)}"
        )
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise ValueError(f"{path.name}: column(s) {', '.join(repeated)} appear more than once")
    return columns


class CsvParser:
    def __init__(self, kind: RecordKind, columns: list[str], received: datetime):
        self.kind = kind
        self.columns = columns
        self.received = received
        self._record = self._trade if kind == TRADE else self._quote

    def parse(self, lines: Iterable[tuple[int, bytes]]) -> ParsedChunk:
        chunk = ParsedChunk()
        width = len(self.columns)
        for number, raw in lines:
            try:
                values = next(csv.reader([raw.decode()]))
                if len(values) != width:
                    raise FieldError("", f"expected {width} columns, found {len(values)}")
                record = self._record(dict(zip(self.columns, values, strict=True)))
            except FieldError as error:
                chunk.rejected.append(RejectedRow(number, raw, error.field, error.reason))
            except UnicodeDecodeError as error:
                chunk.rejected.append(RejectedRow(number, raw, "", f"not UTF-8 text: {error.reason}"))
            except csv.Error as error:
                chunk.rejected.append(RejectedRow(number, raw, "", f"not a CSV row: {error}"))
            else:
                chunk.records.append(record)
                chunk.lines.append((number, raw))
        return chunk

    def _common(self, row: dict[str, str], id_field: str) -> Record:
        message_id = row.get("message_id")
        sequence = row.get("source_sequence")
        return {
            "message_id": check_message_id(message_id)
            if message_id
            else record_message_id(self.kind, row[id_field]),
            id_field: row[id_field],
            "symbol": row["symbol"],
            "exchange": row["exchange"],
            "asset_class": row["asset_class"],
            "timestamp": _timestamp(row["timestamp"]),
            "currency": row["currency"],
            "source_sequence": _integer("source_sequence", sequence) if sequence else None,
            "ingestion_timestamp": self.received,
            "platform_sequence": None,
            "vendor_data": _vendor_data(row.get("vendor_data", "")),
        }

    def _trade(self, row: dict[str, str]) -> Record:
        conditions = row.get("trade_conditions")
        record = self._common(row, "trade_id") | {
            "price": read_decimal("price", row["price"]),
            "quantity": read_decimal("quantity", row["quantity"]),
            "side": row["side"],
            "trade_conditions": conditions.split(CONDITION_SEPARATOR) if conditions else [],
        }
        return validate_trade(record)

    def _quote(self, row: dict[str, str]) -> Record:
        record = self._common(row, "quote_id")
        for field in ("bid_price", "bid_quantity", "ask_price", "ask_quantity"):
            text = row.get(field)
            record[field] = read_decimal(field, text) if text else None
        return validate_quote(record)


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError("timestamp", f"not an ISO-8601 timestamp: {text!r:.40}") from None
    if value.tzinfo is None:
        raise FieldError(
            "timestamp", f"no UTC offset (e.g. 2014-03-10T10:05:44.516+11:00 or ...Z): {text!r:.40}"
        )
    fraction = _FRACTION.search(text)
    if fraction and fraction.group(1)[6:].strip("0"):
        raise FieldError("timestamp", "finer than a microsecond; K2 timestamps are whole microseconds")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise FieldError("timestamp", f"outside years 1-9999 in UTC: {text!r:.40}") from None


def _integer(field: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise FieldError(field, f"not an integer: {text!r:.40}") from None
    if not -(2**63) <= value < 2**63:
        raise FieldError(field, f"outside the 64-bit range: {text}")
    return value


def _vendor_data(text: str) -> dict[str, str] | None:
    if not text:
        return None
    try:
        value: Any = json.loads(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, an over-long integer, too deep nesting
        raise FieldError("vendor_data", f"not JSON: {getattr(error, 'msg', error)}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FieldError("vendor_data", 'must be a JSON object of strings, e.g. {"venue": "X"}')
    try:
        "".join([*value, *value.values()]).encode()
    except (
        UnicodeEncodeError
    ):  # a \ud800-\udfff escape without its pair: not text, and Avro could not carry it
        raise FieldError("vendor_data", "contains an unpaired surrogate escape (\\ud800-\\udfff)") from None
    return value or None
