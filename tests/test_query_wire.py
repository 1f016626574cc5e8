"""Arrow rows → protobuf wire bytes (k2.services.query.wire), without Kafka or Iceberg: for any rows the contract
can hold — extreme, zero and negative decimals, any Unicode, empty strings, absent optionals, empty and filled maps
and lists, timestamps before 1970 — the bytes parse into exactly the messages the core mapping builds
(k2.core.protos.trade_to_proto / quote_to_proto), for whole tables and for slices of them."""

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import int64, positive_decimals, quotes, sample_quote, sample_trade, text, trades

from k2.core.arrow_records import records_to_arrow
from k2.core.protos import decimal_text, quote_to_proto, trade_to_proto
from k2.core.records import QUOTE, TRADE, Record, RecordKind
from k2.query.v1 import query_pb2
from k2.services.query.wire import MESSAGE_TYPES, decimal_texts, framed, joined, messages, varints

TO_PROTO = {TRADE: trade_to_proto, QUOTE: quote_to_proto}
RESPONSES = {
    TRADE: (query_pb2.QueryTradesResponse, "trades"),
    QUOTE: (query_pb2.QueryQuotesResponse, "quotes"),
}
SMALLEST = Decimal("1E-18")
LARGEST = Decimal("99999999999999999999.999999999999999999")

# any decimal(38,18) value, either sign, with zero and the extremes drawn often
decimals = st.one_of(
    st.sampled_from([Decimal(0), SMALLEST, -SMALLEST, LARGEST, LARGEST.copy_negate(), Decimal("1E-7")]),
    positive_decimals(),
    positive_decimals().map(Decimal.copy_negate),
)
early = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1970, 1, 2), timezones=st.just(UTC))
maps = st.one_of(st.none(), st.just({}), st.dictionaries(text, text, max_size=3))


@st.composite
def edge_trades(draw: st.DrawFn) -> Record:
    """A trade at the edges of what a row can hold (the writer's validation aside)."""
    record = draw(trades())
    return record | {
        "trade_id": draw(text),
        "currency": draw(text),
        "price": draw(decimals),
        "quantity": draw(decimals),
        "timestamp": draw(st.one_of(early, st.just(record["timestamp"]))),
        "trade_conditions": draw(st.lists(text, max_size=3)),
        "vendor_data": draw(maps),
        "source_sequence": draw(st.one_of(st.none(), st.just(0), int64)),
    }


@st.composite
def edge_quotes(draw: st.DrawFn) -> Record:
    record = draw(quotes())
    optional = st.one_of(st.none(), decimals)
    return record | {
        "bid_price": draw(optional),
        "ask_quantity": draw(optional),
        "vendor_data": draw(maps),
        "ingestion_timestamp": draw(early),
        "platform_sequence": draw(st.one_of(st.just(0), int64)),
    }


def assert_encodes_like_the_core(kind: RecordKind, records: list[Record]) -> None:
    table = records_to_arrow(kind, records)
    expected = [TO_PROTO[kind](record) for record in records]
    assert [MESSAGE_TYPES[kind].FromString(b) for b in messages(kind, table).to_pylist()] == expected
    response_type, field = RESPONSES[kind]
    assert list(getattr(response_type.FromString(joined(framed(kind, table))), field)) == expected
    for start in range(1, len(records)):  # slices: the arrays' offsets
        part = framed(kind, table.slice(start))
        assert list(getattr(response_type.FromString(joined(part)), field)) == expected[start:]
        assert (
            list(getattr(response_type.FromString(joined(part, 0, 1)), field)) == expected[start : start + 1]
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(edge_trades(), min_size=1, max_size=5))
def test_trades_encode_like_the_core_mapping(records: list[Record]) -> None:
    assert_encodes_like_the_core(TRADE, records)


@settings(max_examples=100, deadline=None)
@given(st.lists(edge_quotes(), min_size=1, max_size=5))
def test_quotes_encode_like_the_core_mapping(records: list[Record]) -> None:
    assert_encodes_like_the_core(QUOTE, records)


def test_defaults_and_absent_fields_are_left_out_as_protobuf_does() -> None:
    records = [
        sample_trade(),
        sample_trade(vendor_data=None, source_sequence=None, trade_conditions=["a", ""]),
        sample_trade(
            timestamp=datetime(1970, 1, 1, tzinfo=UTC),
            source_sequence=0,
            platform_sequence=-5,
            vendor_data={},
            price=Decimal(0),
        ),
    ]
    table = records_to_arrow(TRADE, records)
    # without a map (whose entry order protobuf leaves open) the bytes are the library's own
    assert messages(TRADE, table).to_pylist()[1:] == [
        trade_to_proto(r).SerializeToString() for r in records[1:]
    ]
    quote = [sample_quote(bid_price=None, bid_quantity=None, currency="")]
    assert messages(QUOTE, records_to_arrow(QUOTE, quote)).to_pylist() == [
        quote_to_proto(quote[0]).SerializeToString()
    ]
    assert messages(TRADE, table.slice(0, 0)).to_pylist() == []


@given(st.lists(st.one_of(st.none(), int64), max_size=20))
def test_varints_are_protobufs(values: list[int | None]) -> None:
    trade = MESSAGE_TYPES[TRADE]  # optional int64 source_sequence = 12: its tag, then the varint, even for 0
    expected = [None if v is None else trade(source_sequence=v).SerializeToString()[1:] for v in values]
    assert varints(pa.array(values, pa.int64())).to_pylist() == expected


@given(st.lists(decimals, max_size=20))
def test_decimal_texts_are_canonical(values: list[Decimal]) -> None:
    column = pa.array(values, pa.decimal128(38, 18))
    assert decimal_texts(column).to_pylist() == [decimal_text(v) for v in column.to_pylist()]


def test_an_unknown_enum_symbol_is_refused_not_left_out() -> None:
    table = records_to_arrow(TRADE, [sample_trade(side="SIDEWAYS")])
    with pytest.raises(ValueError, match="side"):
        messages(TRADE, table)
