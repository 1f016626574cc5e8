"""Hypothesis strategies: v2 records at the edges of the contract, and data for any Avro schema version."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from k2.core.avro import CURRENT_HEADERS
from k2.core.framing import Framing
from k2.core.records import (
    ASSET_CLASSES,
    DECIMAL_SCALE,
    MAX_INTEGER_DIGITS,
    MAX_NAME_LENGTH,
    NAME_CHARACTERS,
    QUOTE,
    SIDES,
    TRADE,
    Record,
    RecordKind,
)

# Any Unicode text Avro can carry (UTF-8: no lone surrogates), including empty strings where the contract allows.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
# Symbols and exchanges: what a query can ask for (the validators refuse any other).
market_names = st.text(NAME_CHARACTERS, min_size=1, max_size=MAX_NAME_LENGTH)
timestamps = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
int64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def positive_decimals(draw: st.DrawFn) -> Decimal:
    """Every positive value decimal(38,18) holds: 1e-18 up to 20 integer digits, any scale up to 18."""
    scale = draw(st.integers(0, DECIMAL_SCALE))
    unscaled = draw(st.integers(1, 10 ** (MAX_INTEGER_DIGITS + scale) - 1))
    return Decimal(f"{unscaled}E-{scale}")


vendor_data = st.one_of(st.none(), st.dictionaries(text, text, min_size=1, max_size=4))
optional_int64 = st.one_of(st.none(), int64)


@st.composite
def trades(draw: st.DrawFn) -> Record:
    return {
        "message_id": str(draw(st.uuids())),
        "trade_id": draw(names),
        "symbol": draw(market_names),
        "exchange": draw(market_names),
        "asset_class": draw(st.sampled_from(ASSET_CLASSES)),
        "timestamp": draw(timestamps),
        "price": draw(positive_decimals()),
        "quantity": draw(positive_decimals()),
        "currency": draw(names),
        "side": draw(st.sampled_from(SIDES)),
        "trade_conditions": draw(st.lists(text, max_size=3)),
        "source_sequence": draw(optional_int64),
        "ingestion_timestamp": draw(timestamps),
        "platform_sequence": draw(optional_int64),
        "vendor_data": draw(vendor_data),
    }


@st.composite
def quotes(draw: st.DrawFn) -> Record:
    bid = draw(st.one_of(st.none(), st.tuples(positive_decimals(), positive_decimals())))
    ask = draw(st.one_of(st.none(), st.tuples(positive_decimals(), positive_decimals())))
    return {
        "message_id": str(draw(st.uuids())),
        "quote_id": draw(names),
        "symbol": draw(market_names),
        "exchange": draw(market_names),
        "asset_class": draw(st.sampled_from(ASSET_CLASSES)),
        "timestamp": draw(timestamps),
        "bid_price": bid and bid[0],
        "bid_quantity": bid and bid[1],
        "ask_price": ask and ask[0],
        "ask_quantity": ask and ask[1],
        "currency": draw(names),
        "source_sequence": draw(optional_int64),
        "ingestion_timestamp": draw(timestamps),
        "platform_sequence": draw(optional_int64),
        "vendor_data": draw(vendor_data),
    }


RECORDS = {"trade": trades, "quote": quotes}


def avro_data(schema: Any) -> st.SearchStrategy[Any]:
    """Data for any Avro type used by K2's schemas (all versions), at the edges of each type's range."""
    if isinstance(schema, list):
        return st.one_of(*(avro_data(branch) for branch in schema))
    if isinstance(schema, str):
        return {
            "null": st.none(),
            "string": text,
            "long": int64,
            "int": st.integers(-(2**31), 2**31 - 1),
            "boolean": st.booleans(),
        }[schema]
    logical = schema.get("logicalType")
    if logical == "decimal":
        scale, precision = schema.get("scale", 0), schema["precision"]
        return st.integers(-(10**precision) + 1, 10**precision - 1).map(lambda n: Decimal(f"{n}E-{scale}"))
    if logical in ("timestamp-micros", "timestamp-millis"):
        return timestamps.map(
            lambda t: (
                t.replace(microsecond=t.microsecond // 1000 * 1000) if logical == "timestamp-millis" else t
            )
        )
    if logical == "uuid":
        return st.uuids().map(str)
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: avro_data(f["type"]) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(avro_data(schema["items"]), max_size=3)
    if kind == "map":
        return st.dictionaries(text, avro_data(schema["values"]), max_size=3)
    return avro_data(kind)


def sample_trade(**changes: Any) -> Record:
    record: Record = {
        "message_id": "0b9f4e1c-5d2a-4f53-9b8e-2f6c1d0a7e31",
        "trade_id": "BINANCE-4123456789",
        "symbol": "BTCUSDT",
        "exchange": "BINANCE",
        "asset_class": "CRYPTO",
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 123456, UTC),
        "price": Decimal("97123.45"),
        "quantity": Decimal("0.00150000"),
        "currency": "USDT",
        "side": "SELL",
        "trade_conditions": [],
        "source_sequence": 4123456789,
        "ingestion_timestamp": datetime(2026, 1, 2, 3, 4, 5, 125000, UTC),
        "platform_sequence": None,
        "vendor_data": {"is_buyer_maker": "true"},
    }
    return record | changes


def sample_quote(**changes: Any) -> Record:
    record: Record = {
        "message_id": "5c3e8a2d-1b7f-4e9a-8c6d-3f2e1a0b9c8d",
        "quote_id": "ASX-7078-1",
        "symbol": "BHP",
        "exchange": "ASX",
        "asset_class": "EQUITIES",
        "timestamp": datetime(2014, 3, 9, 23, 5, 44, 516000, UTC),
        "bid_price": Decimal("37.5"),
        "bid_quantity": Decimal(300),
        "ask_price": Decimal("37.51"),
        "ask_quantity": Decimal(1000),
        "currency": "AUD",
        "source_sequence": 1,
        "ingestion_timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "platform_sequence": None,
        "vendor_data": None,
    }
    return record | changes


# A registry framing whose current schemas' ids are known, so no registry is asked (nor configured).
KNOWN_IDS = Framing("", {TRADE: 7, QUOTE: 8})


def in_either_framing(data: st.DataObject, kind: RecordKind, values: list[bytes]) -> list[bytes]:
    """The values, each current-version message of `kind` single-object or registry-framed (KNOWN_IDS) as drawn."""
    header = CURRENT_HEADERS[kind]
    return [
        KNOWN_IDS.framed(kind, [value])[0] if value.startswith(header) and data.draw(st.booleans()) else value
        for value in values
    ]
