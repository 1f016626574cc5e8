"""The v2 record model: one dict per trade or quote, keyed by the Avro v2 field names (k2/schemas/*_v2.avsc).

Values are exact: decimal.Decimal for prices and quantities, timezone-aware UTC datetime for timestamps, None for
an absent optional field (an empty vendor_data map is None too, so proto and Avro forms round-trip).
"""

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
MAX_TEXT_LENGTH = 256
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
    try:
        if text.isascii():  # Decimal() would also read other scripts' digits and surrounding whitespace
            return Decimal(text)
    except (InvalidOperation, TypeError, AttributeError):
        pass
    raise FieldError(field, f"not a decimal number: {text!r:.40}")


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
    for field in ("trade_id", "symbol", "exchange", "currency"):
        check_text(field, record[field])
    if record["asset_class"] not in ASSET_CLASSES:
        raise FieldError("asset_class", f"must be one of {', '.join(ASSET_CLASSES)}")
    if record["side"] not in SIDES:
        raise FieldError("side", f"must be one of {', '.join(SIDES)}")
    record["price"] = check_decimal("price", record["price"])
    record["quantity"] = quantity = check_decimal("quantity", record["quantity"])
    if quantity <= 0:
        raise FieldError("quantity", f"must be positive: {quantity}")
    if record["price"] <= 0 and record["asset_class"] in ("EQUITIES", "CRYPTO"):
        raise FieldError("price", f"must be positive: {record['price']}")
    check_timestamp("timestamp", record["timestamp"])
    check_timestamp("ingestion_timestamp", record["ingestion_timestamp"])
    return record


def validate_quote(record: Record) -> Record:
    """Checks a quote; a side with no order has price and quantity None. Crossed and locked books are valid."""
    for field in ("quote_id", "symbol", "exchange", "currency"):
        check_text(field, record[field])
    if record["asset_class"] not in ASSET_CLASSES:
        raise FieldError("asset_class", f"must be one of {', '.join(ASSET_CLASSES)}")
    for side in ("bid", "ask"):
        price, quantity = record[f"{side}_price"], record[f"{side}_quantity"]
        if (price is None) != (quantity is None):
            raise FieldError(f"{side}_price" if price is None else f"{side}_quantity",
                             f"{side} price and quantity must both be set or both absent")
        if price is not None:
            record[f"{side}_price"] = check_decimal(f"{side}_price", price)
            record[f"{side}_quantity"] = check_decimal(f"{side}_quantity", quantity)
            if quantity <= 0:
                raise FieldError(f"{side}_quantity", f"must be positive: {quantity}")
    check_timestamp("timestamp", record["timestamp"])
    check_timestamp("ingestion_timestamp", record["ingestion_timestamp"])
    return record


VALIDATORS = {TRADE: validate_trade, QUOTE: validate_quote}
