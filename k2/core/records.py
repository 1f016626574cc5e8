"""The v2 record model: one dict per trade or quote, keyed by the Avro v2 field names (k2/schemas/*_v2.avsc).

Values are exact: decimal.Decimal for prices and quantities, timezone-aware UTC datetime for timestamps, None for
an absent optional field (an empty vendor_data map is None too, so proto and Avro forms round-trip).
"""

import re
import uuid
from datetime import UTC, datetime
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Literal

TRADE: Literal["trade"] = "trade"
QUOTE: Literal["quote"] = "quote"
RecordKind = Literal["trade", "quote"]
Record = dict[str, Any]

# decimal(38,18): 20 integer digits (a low-priced token's quantity can pass 10^10) and 18 fractional digits (the
# finest any venue quotes: Binance uses 8, token amounts on chain 18). Values beyond this are rejected, never rounded.
DECIMAL_PRECISION = 38
DECIMAL_SCALE = 18
MAX_INTEGER_DIGITS = DECIMAL_PRECISION - DECIMAL_SCALE

ASSET_CLASSES = ("EQUITIES", "CRYPTO", "FUTURES", "OPTIONS")
SIDES = ("BUY", "SELL", "SELL_SHORT", "UNKNOWN")
# Asset classes whose prices are above zero (a future's or an option's price can be zero or negative).
POSITIVE_PRICES = ("EQUITIES", "CRYPTO")
MAX_TEXT_LENGTH = 256
# Symbols and exchanges: the names QueryTrades, GetBars and subscriptions select by, so a record is only accepted
# with names a query can ask for.
NAME_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
MAX_NAME_LENGTH = 32
NAME_PATTERN = re.compile(f"[{re.escape(NAME_CHARACTERS)}]{{1,{MAX_NAME_LENGTH}}}")
NAME_RULE = f"1-{MAX_NAME_LENGTH} characters of A-Z 0-9 . _ -"
# Repeated and map fields are bounded, so that every record is small (a few kB at most, in any script): 2,000 rows
# fit one QueryTrades response and a live response of a full batch stays far below a subscriber's buffer.
MAX_TRADE_CONDITIONS = 8
MAX_CONDITION_LENGTH = 32
MAX_VENDOR_DATA_ENTRIES = 8
MAX_VENDOR_DATA_KEY_LENGTH = 32
MAX_VENDOR_DATA_VALUE_LENGTH = 64
# The same bounds as the native paths take them (native/src/limits.rs): they hand back what is outside.
NATIVE_LIMITS = (
    NAME_CHARACTERS,
    MAX_NAME_LENGTH,
    MAX_TRADE_CONDITIONS,
    MAX_CONDITION_LENGTH,
    MAX_VENDOR_DATA_ENTRIES,
    MAX_VENDOR_DATA_KEY_LENGTH,
    MAX_VENDOR_DATA_VALUE_LENGTH,
)
# What the compiled readers of Avro records (the live fan-out's, the writer's) clear on their own besides those
# bounds; a record outside them is handed to the plain path, which judges it. Texts of 1 to MAX_TEXT_LENGTH
# characters; decimals above zero (a zero or negative price is valid for futures and options only, which the
# validator decides); fields that are both null or both set.
NATIVE_CHECKED_TEXTS = {
    TRADE: ("trade_id", "symbol", "exchange", "currency"),
    QUOTE: ("quote_id", "symbol", "exchange", "currency"),
}
NATIVE_POSITIVE = {
    TRADE: ("price", "quantity"),
    QUOTE: ("bid_price", "bid_quantity", "ask_price", "ask_quantity"),
}
NATIVE_BOTH_OR_NEITHER: dict[RecordKind, tuple[tuple[str, str], ...]] = {
    TRADE: (),
    QUOTE: (("bid_price", "bid_quantity"), ("ask_price", "ask_quantity")),
}
# Decimal strings as exchanges and programs write them: an optional '-', digits, optionally '.' and digits, and an
# optional exponent (Java's BigDecimal.toString and Python's str(Decimal) write 1E-8). No '+', spaces, '_', 'NaN'.
DECIMAL_PATTERN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
DECIMAL_RULE = "digits with an optional '-', '.' and exponent, e.g. 97123.45 or 1E-8"
# Decimal operations round to the context's precision (28 digits by default): ours holds any decimal(38,18) exactly.
EXACT = Context(prec=DECIMAL_PRECISION + 2)


class FieldError(ValueError):
    """A value that cannot be part of a record: names the field and the reason."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_decimal(field: str, text: str) -> Decimal:
    """An exact decimal from its string form, checked against decimal(38,18)."""
    return check_decimal(field, read_decimal(field, text))


def read_decimal(field: str, text: str) -> Decimal:
    """The decimal a string spells, not yet checked against decimal(38,18): for records that validate_trade or
    validate_quote check next (which is where the range is checked, once)."""
    # Decimal() alone would also read " 1", "+1", "1_000", "NaN" and other scripts' digits.
    if isinstance(text, str) and DECIMAL_PATTERN.fullmatch(text):
        try:
            return Decimal(text)
        except InvalidOperation:  # an exponent beyond what Decimal holds
            pass
    raise FieldError(field, f"not a decimal number: {text!r:.40} ({DECIMAL_RULE})")


def check_decimal(field: str, value: Decimal) -> Decimal:
    if not value.is_finite():
        raise FieldError(field, f"not a finite number: {value}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -DECIMAL_SCALE:
        # Trailing zeros beyond the scale are harmless; anything else is not. normalize() also rounds (more digits
        # than EXACT holds, or a value so small it underflows to 0): a changed value is refused, never rounded.
        normalized = value.normalize(EXACT)
        exponent = normalized.as_tuple().exponent
        assert isinstance(exponent, int)
        if exponent < -DECIMAL_SCALE or normalized != value:
            raise FieldError(field, f"more than {DECIMAL_SCALE} decimal places: {value}")
        value = normalized
    if value and value.adjusted() >= MAX_INTEGER_DIGITS:
        raise FieldError(field, f"more than {MAX_INTEGER_DIGITS} integer digits: {value}")
    return value


def check_text(field: str, value: str, *, required: bool = True) -> str:
    if required and not value:
        raise FieldError(field, "required")
    if len(value) > MAX_TEXT_LENGTH:
        raise FieldError(field, f"longer than {MAX_TEXT_LENGTH} characters")
    return value


def check_name(field: str, value: str) -> str:
    """A symbol or an exchange: the same rule at ingest and in every query."""
    if not NAME_PATTERN.fullmatch(value):
        raise FieldError(field, f"{value!r:.40} is not {NAME_RULE}" if value else "required")
    return value


def check_trade_conditions(values: list[str]) -> None:
    if len(values) > MAX_TRADE_CONDITIONS:
        raise FieldError("trade_conditions", f"{len(values)} given, at most {MAX_TRADE_CONDITIONS}")
    for index, value in enumerate(values):
        if len(value) > MAX_CONDITION_LENGTH:
            raise FieldError(
                "trade_conditions", f"[{index}] is longer than {MAX_CONDITION_LENGTH} characters"
            )


def check_vendor_data(values: dict[str, str] | None) -> None:
    if not values:
        return
    if len(values) > MAX_VENDOR_DATA_ENTRIES:
        raise FieldError("vendor_data", f"{len(values)} entries, at most {MAX_VENDOR_DATA_ENTRIES}")
    for key, value in values.items():
        if len(key) > MAX_VENDOR_DATA_KEY_LENGTH:
            raise FieldError(
                "vendor_data", f"key {key[:40]!r} is longer than {MAX_VENDOR_DATA_KEY_LENGTH} characters"
            )
        if len(value) > MAX_VENDOR_DATA_VALUE_LENGTH:
            raise FieldError(
                "vendor_data",
                f"the value of {key[:40]!r} is longer than {MAX_VENDOR_DATA_VALUE_LENGTH} characters",
            )


def check_timestamp(field: str, value: datetime) -> datetime:
    if value.tzinfo is None:
        raise FieldError(field, "timezone-naive datetime; K2 timestamps are UTC")
    return value


def new_message_id() -> str:
    return str(uuid.uuid4())


def check_message_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise FieldError("message_id", f"not a UUID: {value!r:.60}") from None


def utc_now() -> datetime:
    return datetime.now(UTC)


def validate_trade(record: Record) -> Record:
    """Checks a trade built by a parser or from a request; returns it (decimals normalised) or raises FieldError."""
    for field in ("trade_id", "currency"):
        check_text(field, record[field])
    check_name("symbol", record["symbol"])
    check_name("exchange", record["exchange"])
    if record["asset_class"] not in ASSET_CLASSES:
        raise FieldError("asset_class", f"must be one of {', '.join(ASSET_CLASSES)}")
    if record["side"] not in SIDES:
        raise FieldError("side", f"must be one of {', '.join(SIDES)}")
    record["price"] = check_decimal("price", record["price"])
    record["quantity"] = quantity = check_decimal("quantity", record["quantity"])
    if quantity <= 0:
        raise FieldError("quantity", f"must be positive: {quantity}")
    if record["price"] <= 0 and record["asset_class"] in POSITIVE_PRICES:
        raise FieldError("price", f"must be positive: {record['price']}")
    check_trade_conditions(record["trade_conditions"])
    check_vendor_data(record["vendor_data"])
    check_timestamp("timestamp", record["timestamp"])
    check_timestamp("ingestion_timestamp", record["ingestion_timestamp"])
    return record


def validate_quote(record: Record) -> Record:
    """Checks a quote; a side with no order has price and quantity None. Crossed and locked books are valid."""
    for field in ("quote_id", "currency"):
        check_text(field, record[field])
    check_name("symbol", record["symbol"])
    check_name("exchange", record["exchange"])
    if record["asset_class"] not in ASSET_CLASSES:
        raise FieldError("asset_class", f"must be one of {', '.join(ASSET_CLASSES)}")
    for side in ("bid", "ask"):
        price, quantity = record[f"{side}_price"], record[f"{side}_quantity"]
        if (price is None) != (quantity is None):
            raise FieldError(
                f"{side}_price" if price is None else f"{side}_quantity",
                f"{side} price and quantity must both be set or both absent",
            )
        if price is not None:
            record[f"{side}_price"] = check_decimal(f"{side}_price", price)
            record[f"{side}_quantity"] = check_decimal(f"{side}_quantity", quantity)
            if quantity <= 0:
                raise FieldError(f"{side}_quantity", f"must be positive: {quantity}")
            if price <= 0 and record["asset_class"] in POSITIVE_PRICES:
                raise FieldError(f"{side}_price", f"must be positive: {price}")
    check_vendor_data(record["vendor_data"])
    check_timestamp("timestamp", record["timestamp"])
    check_timestamp("ingestion_timestamp", record["ingestion_timestamp"])
    return record


VALIDATORS = {TRADE: validate_trade, QUOTE: validate_quote}
