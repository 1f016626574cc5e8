"""ASX vendor files (docs/file-formats.md): headerless CSV with CRLF line ends, one file per company named
<company_id>.csv, exchange-local (Australia/Sydney) times, AUD prices.

trades/<id>.csv  Date,Time,Price,Volume,Qualifiers,Venue,BuyerID  03/10/2014,10:05:44.516,37.51,40000,3,X,
quotes/<id>.csv  Date,Time,Bid,Ask,BidVolume,AskVolume            03/10/2014,05:43:45.676,37.7,0.0,300,0

Identity: several trades can share a millisecond, price and volume, so a row's id is its position, never its
values: trade_id/quote_id = ASX-<company_id>-<yyyymmdd>-<n>, n = the row's number among that day's rows of the
file (from 1), and message_id = uuid5 of that id; source_sequence = the row's line number in the file.
Reloading a file gives every row the same ids.
"""

import csv
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from k2.core.records import (
    QUOTE,
    TRADE,
    FieldError,
    Record,
    RecordKind,
    parse_decimal,
    read_decimal,
    validate_quote,
    validate_trade,
)
from k2.services.ingest.ids import record_message_id
from k2.services.ingest.rows import ParsedChunk, RejectedRow

EXCHANGE = "ASX"
CURRENCY = "AUD"
EXCHANGE_ZONE = ZoneInfo("Australia/Sydney")
TRADE_COLUMNS = ("Date", "Time", "Price", "Volume", "Qualifiers", "Venue", "BuyerID")
QUOTE_COLUMNS = ("Date", "Time", "Bid", "Ask", "BidVolume", "AskVolume")
_DATE = re.compile(r"(\d\d)/(\d\d)/(\d{4})", re.ASCII)
_TIME = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?", re.ASCII)


def load_symbols(path: Path) -> dict[str, str]:
    """company_id → symbol from the vendor's company_info.csv (header company_id,symbol,...)."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        try:
            if not reader.fieldnames or not {"company_id", "symbol"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{path.name}: expected a header with company_id and symbol, found {reader.fieldnames}"
                )
            symbols = {}
            for row in reader:
                if not row["company_id"]:
                    continue
                if row["symbol"] is None:
                    raise ValueError(f"{path.name}: line {reader.line_num} has no symbol column")
                symbols[row["company_id"].strip()] = row["symbol"].strip()
        except csv.Error as error:  # e.g. a field beyond the csv module's size limit
            raise ValueError(f"{path.name}: line {reader.line_num} is not CSV: {error}") from None
        return symbols


def company_id_of(path: Path) -> str:
    """The company id an ASX file is named for: trades/7078.csv → "7078"."""
    if not path.stem.isdigit():
        raise ValueError(f"{path.name}: ASX files are named <company_id>.csv, e.g. 7078.csv")
    return path.stem


class _AsxParser:
    kind: RecordKind
    columns: tuple[str, ...]

    def __init__(self, company_id: str, symbol: str, received: datetime):
        self.company_id = company_id
        self.symbol = symbol
        self.received = received
        self._days: dict[str, tuple[date, str]] = {}
        self._rows_per_day: dict[str, int] = {}

    def parse(self, lines: Iterable[tuple[int, bytes]]) -> ParsedChunk:
        chunk = ParsedChunk()
        record_from = self._record
        for number, raw in lines:
            try:
                fields = raw.decode().split(",")
                day, record_id = self._row_id(fields[0])
                if len(fields) != len(self.columns):
                    raise FieldError(
                        "",
                        f"expected {len(self.columns)} columns ({','.join(self.columns)}), "
                        f"found {len(fields)}",
                    )
                record = record_from(number, fields, day, record_id)
            except FieldError as error:
                chunk.rejected.append(RejectedRow(number, raw, error.field, error.reason))
            except UnicodeDecodeError as error:
                chunk.rejected.append(RejectedRow(number, raw, "", f"not UTF-8 text: {error.reason}"))
            else:
                chunk.records.append(record)
                chunk.lines.append((number, raw))
        return chunk

    def _record(self, number: int, fields: list[str], day: date, record_id: str) -> Record:
        raise NotImplementedError

    def _row_id(self, date_text: str) -> tuple[date, str]:
        """The row's trading day and its id ASX-<company>-<yyyymmdd>-<n>; every row with a valid date takes
        the day's next number, a row rejected for another reason too (fixing it later shifts no other id)."""
        day = self._days.get(date_text)
        if day is None:
            day = self._days[date_text] = _parse_date(date_text)
        compact = day[1]
        n = self._rows_per_day[compact] = self._rows_per_day.get(compact, 0) + 1
        return day[0], f"{EXCHANGE}-{self.company_id}-{compact}-{n}"


class AsxTradeParser(_AsxParser):
    kind = TRADE
    columns = TRADE_COLUMNS

    def _record(self, number: int, fields: list[str], day: date, trade_id: str) -> Record:
        _, time_text, price, volume, qualifiers, venue, buyer_id = fields
        vendor_data = {"company_id": self.company_id}
        if venue:
            vendor_data["venue"] = venue
        if buyer_id:
            vendor_data["buyer_id"] = buyer_id
        return validate_trade(
            {
                "message_id": record_message_id(TRADE, trade_id),
                "trade_id": trade_id,
                "symbol": self.symbol,
                "exchange": EXCHANGE,
                "asset_class": "EQUITIES",
                "timestamp": _utc(day, time_text),
                "price": read_decimal("price", price),
                "quantity": read_decimal("quantity", volume),
                "currency": CURRENCY,
                "side": "UNKNOWN",
                "trade_conditions": [qualifiers] if qualifiers else [],
                "source_sequence": number,
                "ingestion_timestamp": self.received,
                "platform_sequence": None,
                "vendor_data": vendor_data,
            }
        )


class AsxQuoteParser(_AsxParser):
    kind = QUOTE
    columns = QUOTE_COLUMNS

    def _record(self, number: int, fields: list[str], day: date, quote_id: str) -> Record:
        _, time_text, bid, ask, bid_volume, ask_volume = fields
        bid_price, bid_quantity = _book_side("bid", bid, bid_volume)
        ask_price, ask_quantity = _book_side("ask", ask, ask_volume)
        return validate_quote(
            {
                "message_id": record_message_id(QUOTE, quote_id),
                "quote_id": quote_id,
                "symbol": self.symbol,
                "exchange": EXCHANGE,
                "asset_class": "EQUITIES",
                "timestamp": _utc(day, time_text),
                "bid_price": bid_price,
                "bid_quantity": bid_quantity,
                "ask_price": ask_price,
                "ask_quantity": ask_quantity,
                "currency": CURRENCY,
                "source_sequence": number,
                "ingestion_timestamp": self.received,
                "platform_sequence": None,
                "vendor_data": {"company_id": self.company_id},
            }
        )


def _parse_date(text: str) -> tuple[date, str]:
    match = _DATE.fullmatch(text)
    try:
        if match is None:
            raise ValueError
        month, day, year = (int(part) for part in match.groups())
        parsed = date(year, month, day)
    except ValueError:
        raise FieldError("timestamp", f"date {text!r:.24} is not MM/DD/YYYY") from None
    return parsed, f"{year:04d}{month:02d}{day:02d}"


def _utc(day: date, time_text: str) -> datetime:
    """Exchange-local date and HH:MM:SS[.ffffff] → UTC, by the tz database's rules (AEDT = UTC+11 in March
    2014); in the hour repeated when daylight saving ends, the first (daylight) reading is taken."""
    match = _TIME.fullmatch(time_text)
    try:
        if match is None:
            raise ValueError
        hour, minute, second, fraction = match.groups()
        local = datetime(
            day.year,
            day.month,
            day.day,
            int(hour),
            int(minute),
            int(second),
            int(fraction.ljust(6, "0")) if fraction else 0,
            tzinfo=EXCHANGE_ZONE,
        )
        return local.astimezone(UTC)
    except ValueError:
        raise FieldError("timestamp", f"time {time_text!r:.24} is not HH:MM:SS.mmm") from None
    except OverflowError:
        raise FieldError("timestamp", f"{day} {time_text:.24} is outside years 1-9999 in UTC") from None


def _book_side(side: str, price_text: str, volume_text: str) -> tuple[Decimal | None, Decimal | None]:
    """A side's (price, quantity); 0 and 0 mean no order on that side (a one-sided book)."""
    price = parse_decimal(f"{side}_price", price_text)
    quantity = parse_decimal(f"{side}_quantity", volume_text)
    if not price and not quantity:
        return None, None
    if price <= 0:
        raise FieldError(
            f"{side}_price", f"must be positive when the {side} volume is {volume_text}: {price_text}"
        )
    if quantity <= 0:
        raise FieldError(
            f"{side}_quantity", f"must be positive when the {side} is {price_text}: {volume_text}"
        )
    return price, quantity
