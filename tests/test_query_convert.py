"""The query service's conversions and tokens, without Kafka or Iceberg: the fan-out's fast decoder gives exactly
the core mapping's messages (Arrow rows: tests/test_query_wire.py); bars round VWAP half-even; tokens refuse
anything they did not issue."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import quotes, sample_quote, sample_trade, trades

from k2.core import avro
from k2.core.arrow import records_to_arrow
from k2.core.protos import quote_to_proto, trade_to_proto
from k2.core.records import QUOTE, TRADE, FieldError, Record
from k2.query.v1 import query_pb2
from services.query.bars import BarBuilder, divide_half_even
from services.query.convert import BATCH_DECODE_MIN, DECODERS, LiveItem, live_items
from services.query.selection import Selection, micros, rows_after, sort_rows
from services.query.tokens import PageToken, StreamPosition, query_digest

TO_PROTO = {TRADE: trade_to_proto, QUOTE: quote_to_proto}


def core_message(kind: str, record: Record) -> bytes:
    _, decoded = avro.decode(avro.encode(kind, record))  # type: ignore[arg-type]
    return TO_PROTO[kind](decoded).SerializeToString()  # type: ignore[index]


@settings(max_examples=300, deadline=None)
@given(trades())
def test_live_decoder_matches_the_core_path_for_trades(record: Record) -> None:
    decoded = DECODERS[TRADE].decode(avro.encode(TRADE, record))
    assert decoded is not None
    message, symbol, exchange, timestamp = decoded
    assert message.SerializeToString() == core_message(TRADE, record)
    assert (symbol, exchange, timestamp) == (record["symbol"], record["exchange"], micros(record["timestamp"]))


@settings(max_examples=300, deadline=None)
@given(quotes())
def test_live_decoder_matches_the_core_path_for_quotes(record: Record) -> None:
    decoded = DECODERS[QUOTE].decode(avro.encode(QUOTE, record))
    assert decoded is not None
    assert decoded[0].SerializeToString() == core_message(QUOTE, record)


def test_live_decoder_refuses_what_the_validators_refuse_and_reads_older_versions() -> None:
    trade = DECODERS[TRADE]
    assert trade.decode(avro.encode(TRADE, sample_trade(symbol=""))) is None
    assert trade.decode(avro.encode(TRADE, sample_trade(price=Decimal(0)))) is None  # crypto needs a price
    futures = sample_trade(asset_class="FUTURES", price=Decimal("-1.25"))
    assert trade.decode(avro.encode(TRADE, futures))[0].price == "-1.25"  # type: ignore[index]
    assert trade.decode(avro.encode(QUOTE, sample_quote())) is None  # a quote on the trades topic
    assert trade.decode(b"\xc3\x01garbage") is None
    half = sample_quote(ask_price=None)  # an ask quantity without a price
    assert DECODERS[QUOTE].decode(avro.encode(QUOTE, half)) is None
    v1 = avro.VERSIONS[TRADE][0]
    old = avro.encode_with(v1, {
        "symbol": "BHP", "exchange_timestamp": datetime(2014, 3, 10, tzinfo=UTC), "price": Decimal("37.51"),
        "volume": 40000, "qualifiers": 3, "venue": "X", "buyer_id": None, "company_id": 7078, "exchange": "ASX",
        "ingestion_timestamp": datetime(2014, 3, 10, tzinfo=UTC), "sequence_number": 1})
    message, symbol, _, _ = trade.decode(old)  # type: ignore[misc]
    assert (symbol, message.quantity, message.vendor_data["venue"]) == ("BHP", "40000", "X")


@settings(max_examples=10, deadline=None)
@given(st.lists(trades(), min_size=1, max_size=20))
def test_a_batch_decodes_like_single_messages(records: list[Record]) -> None:
    """Large polls are decoded as a whole (Arrow kernels), small ones message by message: the same items."""
    values = [avro.encode(TRADE, record) for record in records]
    values += [avro.encode(TRADE, sample_trade(symbol="")), b"\xc3\x01garbage", avro.encode(QUOTE, sample_quote())]
    messages = [Message(topic="trades", partition=i % 3, offset=i, value=values[i % len(values)])
                for i in range(BATCH_DECODE_MIN + 7)]
    batched, refused = live_items(TRADE, messages)
    single = [live_items(TRADE, [message]) for message in messages]

    def seen(items: list[LiveItem]) -> list[tuple[object, ...]]:  # a map's entries may come in any order
        return [(i.partition, i.offset, i.symbol, i.exchange, i.timestamp,
                 query_pb2.SubscribeTradesResponse.FromString(i.framed)) for i in items]

    assert seen(batched) == seen([item for items, _ in single for item in items])
    assert [m.offset() for m in refused] == [m.offset() for _, gone in single for m in gone]
    assert len(refused) >= 3 * (len(messages) // len(values))  # the three invalid values, every time


def test_vwap_rounds_half_even_and_bars_align_to_utc() -> None:
    assert [divide_half_even(n, 2) for n in (1, 3, 5, -1)] == [0, 2, 2, 0]
    assert divide_half_even(2, 3) == 1 and divide_half_even(1, 3) == 0
    start = datetime(2024, 1, 1, 0, 4, 59, tzinfo=UTC)
    records = [sample_trade(timestamp=start, price=Decimal(1), quantity=Decimal(1)),
               sample_trade(timestamp=start + timedelta(seconds=1), price=Decimal(2), quantity=Decimal(2)),
               sample_trade(timestamp=start + timedelta(seconds=2), price=Decimal("1.5"), quantity=Decimal(1))]
    builder = BarBuilder(300_000_000)
    builder.add(sort_rows(records_to_arrow(TRADE, records)))
    first, second = builder.protos()
    assert (first.start.ToDatetime(UTC), first.vwap, first.trade_count) == (
        datetime(2024, 1, 1, tzinfo=UTC), "1", 1)
    # (2×2 + 1.5×1) / 3 = 1.8333… → 18 places, half-even
    assert (second.open, second.close, second.high, second.low, second.volume, second.vwap) == (
        "2", "1.5", "2", "1.5", "3", "1.833333333333333333")


def test_rows_after_continues_exactly_after_a_key() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    records = [sample_trade(timestamp=at, source_sequence=s, message_id=f"00000000-0000-4000-8000-00000000000{s}")
               for s in (3, 1, 2)] + [sample_trade(timestamp=at + timedelta(seconds=1))]
    table = sort_rows(records_to_arrow(TRADE, records))
    assert table["source_sequence"].to_pylist()[:3] == [1, 2, 3]
    after = (micros(at), "BINANCE", "BTCUSDT", 2, "00000000-0000-4000-8000-000000000002")
    assert rows_after(table, after)["source_sequence"].to_pylist() == [3, 4123456789]


def test_tokens_round_trip_and_refuse_foreign_ones() -> None:
    selection = Selection(frozenset(["BTCUSDT"]), None, 1, 2)
    digest = query_digest(TRADE, selection)
    page = PageToken(digest, 42, {0: 5}, {0: 9}, (1, "BINANCE", "BTCUSDT", None, "id"))
    assert PageToken.decode(page.encode(), digest) == page
    with pytest.raises(FieldError, match="different query"):
        PageToken.decode(page.encode(), query_digest(TRADE, Selection(frozenset(["ETHUSDT"]), None, 1, 2)))
    position = StreamPosition(TRADE, {0: 10, 3: 7}, since=5, snapshot_id=9, after=(1, "X", "Y", 4, "m"), mark=11)
    assert StreamPosition.decode(position.encode(), TRADE) == position
    foreign = [(position.encode(), QUOTE), ("e30", TRADE), ("!!", TRADE), ("eyJ2IjoxLCJrIjoidCJ9", TRADE)]
    for token, kind in foreign:
        with pytest.raises(FieldError) as raised:
            StreamPosition.decode(token, kind)  # type: ignore[arg-type]
        assert raised.value.field == "resume_token"


def test_selection_filters_arrow_rows_like_the_row_filter() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    table = records_to_arrow(TRADE, [sample_trade(symbol=s, exchange=e, timestamp=at + timedelta(seconds=i))
                                     for i, (s, e) in enumerate([("A", "X"), ("B", "X"), ("A", "Y"), ("A", "X")])])
    selection = Selection(frozenset(["A"]), frozenset(["X"]), micros(at), micros(at + timedelta(seconds=3)))
    assert selection.filter(table).num_rows == 1
    assert str(selection.row_filter()).count("symbol") == 1
    assert selection.matches("A", "X", micros(at)) and not selection.matches("A", "X", micros(at) + 3_000_000)
    assert isinstance(table, pa.Table)
