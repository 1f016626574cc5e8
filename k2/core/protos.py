"""The RPC boundary: k2.marketdata.v1 Trade/Quote messages ⇄ v2 records (see the mapping in marketdata.proto)."""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from k2.core.records import (
    FieldError,
    Record,
    check_message_id,
    new_message_id,
    read_decimal,
    utc_now,
    validate_quote,
    validate_trade,
)
from k2.core.timestamps import EPOCH
from k2.marketdata.v1.marketdata_pb2 import AssetClass, Quote, Side, Trade

NANOS_PER_SECOND = 1_000_000_000
ASSET_CLASS_NAMES = {value: name.removeprefix("ASSET_CLASS_") for name, value in AssetClass.items() if value}
ASSET_CLASS_VALUES = cast(dict[str, AssetClass], {name: value for value, name in ASSET_CLASS_NAMES.items()})
SIDE_NAMES = {value: name.removeprefix("SIDE_") for name, value in Side.items() if value}
SIDE_VALUES = cast(dict[str, Side], {name: value for value, name in SIDE_NAMES.items()})


def datetime_from_timestamp(field: str, ts: Timestamp) -> datetime:
    if not 0 <= ts.nanos < NANOS_PER_SECOND:  # protobuf's Timestamp: the seconds carry the sign
        raise FieldError(field, f"nanos must be 0 to 999,999,999: {ts.nanos}")
    if ts.nanos % 1000:
        raise FieldError(field, "finer than a microsecond; K2 timestamps are whole microseconds")
    try:
        return EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
    except OverflowError:
        raise FieldError(field, f"outside years 1-9999: {ts.seconds} s since 1970") from None


def set_timestamp(ts: Timestamp, value: datetime) -> None:
    delta = value - EPOCH
    ts.seconds = delta.days * 86400 + delta.seconds
    ts.nanos = delta.microseconds * 1000


def decimal_text(value: Decimal) -> str:
    """Canonical decimal string: no exponent, no trailing fractional zeros ("97123.45", "100")."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _enum(field: str, names: dict[int, str], value: int) -> str:
    try:
        return names[value]
    except KeyError:
        raise FieldError(field, "unspecified or unknown enum value" if value else "required") from None


def _vendor_data(message: Trade | Quote) -> dict[str, str] | None:
    # Ordered by key, so that the same trade is written the same way (upb's map order is its hash table's, which
    # differs from one process to the next).
    return dict(sorted(message.vendor_data.items())) or None


def trade_from_proto(
    message: Trade, received: datetime | None = None, message_id: str | None = None
) -> Record:
    """A validated v2 trade from a published message; ingest stamps the ingestion time and, when the message
    has none, the message_id (the given one, else a new random UUID)."""
    if not message.HasField("timestamp"):
        raise FieldError("timestamp", "required")
    record: Record = {
        "message_id": (
            check_message_id(message.message_id) if message.message_id else message_id or new_message_id()
        ),
        "trade_id": message.trade_id,
        "symbol": message.symbol,
        "exchange": message.exchange,
        "asset_class": _enum("asset_class", ASSET_CLASS_NAMES, message.asset_class),
        "timestamp": datetime_from_timestamp("timestamp", message.timestamp),
        "price": read_decimal("price", message.price),
        "quantity": read_decimal("quantity", message.quantity),
        "currency": message.currency,
        "side": _enum("side", SIDE_NAMES, message.side),
        "trade_conditions": list(message.trade_conditions),
        "source_sequence": message.source_sequence if message.HasField("source_sequence") else None,
        "ingestion_timestamp": received or utc_now(),
        "platform_sequence": message.platform_sequence if message.HasField("platform_sequence") else None,
        "vendor_data": _vendor_data(message),
    }
    return validate_trade(record)


def _optional_decimal(message: Quote, field: str) -> Decimal | None:
    return read_decimal(field, getattr(message, field)) if message.HasField(field) else None


def quote_from_proto(
    message: Quote, received: datetime | None = None, message_id: str | None = None
) -> Record:
    if not message.HasField("timestamp"):
        raise FieldError("timestamp", "required")
    record: Record = {
        "message_id": (
            check_message_id(message.message_id) if message.message_id else message_id or new_message_id()
        ),
        "quote_id": message.quote_id,
        "symbol": message.symbol,
        "exchange": message.exchange,
        "asset_class": _enum("asset_class", ASSET_CLASS_NAMES, message.asset_class),
        "timestamp": datetime_from_timestamp("timestamp", message.timestamp),
        "bid_price": _optional_decimal(message, "bid_price"),
        "bid_quantity": _optional_decimal(message, "bid_quantity"),
        "ask_price": _optional_decimal(message, "ask_price"),
        "ask_quantity": _optional_decimal(message, "ask_quantity"),
        "currency": message.currency,
        "source_sequence": message.source_sequence if message.HasField("source_sequence") else None,
        "ingestion_timestamp": received or utc_now(),
        "platform_sequence": message.platform_sequence if message.HasField("platform_sequence") else None,
        "vendor_data": _vendor_data(message),
    }
    return validate_quote(record)


def _set_ingestion_timestamp(message: Trade | Quote, record: Record) -> None:
    # A publisher's record has none yet: ingest stamps it on receipt.
    if record["ingestion_timestamp"] is not None:
        set_timestamp(message.ingestion_timestamp, record["ingestion_timestamp"])


def trade_to_proto(record: Record) -> Trade:
    message = Trade(
        message_id=record["message_id"],
        trade_id=record["trade_id"],
        symbol=record["symbol"],
        exchange=record["exchange"],
        asset_class=ASSET_CLASS_VALUES[record["asset_class"]],
        price=decimal_text(record["price"]),
        quantity=decimal_text(record["quantity"]),
        currency=record["currency"],
        side=SIDE_VALUES[record["side"]],
        trade_conditions=record["trade_conditions"],
        source_sequence=record["source_sequence"],
        platform_sequence=record["platform_sequence"],
        vendor_data=record["vendor_data"],
    )
    set_timestamp(message.timestamp, record["timestamp"])
    _set_ingestion_timestamp(message, record)
    return message


def _optional_text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def quote_to_proto(record: Record) -> Quote:
    message = Quote(
        message_id=record["message_id"],
        quote_id=record["quote_id"],
        symbol=record["symbol"],
        exchange=record["exchange"],
        asset_class=ASSET_CLASS_VALUES[record["asset_class"]],
        bid_price=_optional_text(record["bid_price"]),
        bid_quantity=_optional_text(record["bid_quantity"]),
        ask_price=_optional_text(record["ask_price"]),
        ask_quantity=_optional_text(record["ask_quantity"]),
        currency=record["currency"],
        source_sequence=record["source_sequence"],
        platform_sequence=record["platform_sequence"],
        vendor_data=record["vendor_data"],
    )
    set_timestamp(message.timestamp, record["timestamp"])
    _set_ingestion_timestamp(message, record)
    return message
