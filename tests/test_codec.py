"""Round trips of the shared codec, property-tested at the edges of the contract: extreme decimals, Unicode,
empty and absent optional fields. And the errors: every refusal names the field and the reason."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import positive_decimals, quotes, sample_quote, sample_trade, trades

from k2.core import arrow, avro, proto_avro, protos
from k2.core.records import FieldError, Record, parse_decimal, validate_quote, validate_trade
from k2.marketdata.v1.marketdata_pb2 import Quote, Side, Trade

PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(trades())
def test_trade_bytes_round_trip(record: Record) -> None:
    assert avro.decode(avro.encode("trade", record)) == ("trade", record)


@PROPERTY
@given(quotes())
def test_quote_bytes_round_trip(record: Record) -> None:
    assert avro.decode(avro.encode("quote", record)) == ("quote", record)


@PROPERTY
@given(trades())
def test_trade_proto_round_trip(record: Record) -> None:
    message = protos.trade_to_proto(record)
    again = protos.trade_from_proto(Trade.FromString(message.SerializeToString()),
                                    received=record["ingestion_timestamp"])
    assert again == record
    assert protos.trade_to_proto(again) == message


@PROPERTY
@given(quotes())
def test_quote_proto_round_trip(record: Record) -> None:
    message = protos.quote_to_proto(record)
    again = protos.quote_from_proto(Quote.FromString(message.SerializeToString()),
                                    received=record["ingestion_timestamp"])
    assert again == record
    assert protos.quote_to_proto(again) == message


@settings(max_examples=50, deadline=None)
@given(st.lists(trades(), max_size=20))
def test_trade_arrow_round_trip(records: list[Record]) -> None:
    assert arrow.arrow_to_records(arrow.records_to_arrow("trade", records)) == records


@settings(max_examples=50, deadline=None)
@given(st.lists(quotes(), max_size=20))
def test_quote_arrow_round_trip(records: list[Record]) -> None:
    assert arrow.arrow_to_records(arrow.records_to_arrow("quote", records)) == records


def test_decoded_decimals_keep_every_digit() -> None:
    record = sample_trade(price=Decimal("99999999999999999999.999999999999999999"),
                          quantity=Decimal("0.000000000000000001"))
    _, decoded = avro.decode(avro.encode("trade", record))
    assert (decoded["price"], decoded["quantity"]) == (record["price"], record["quantity"])
    assert protos.decimal_text(decoded["price"]) == "99999999999999999999.999999999999999999"
    assert protos.decimal_text(decoded["quantity"]) == "0.000000000000000001"


@pytest.mark.parametrize("text, reason", [
    ("123456789012345678901", "more than 20 integer digits"),
    ("0.0000000000000000001", "more than 18 decimal places"),
    ("NaN", "not a finite number"),
    ("1e400", "more than 20 integer digits"),
    ("12,5", "not a decimal number"),
    ("", "not a decimal number"),
])
def test_decimals_that_do_not_fit_are_rejected_not_rounded(text: str, reason: str) -> None:
    with pytest.raises(FieldError) as error:
        parse_decimal("price", text)
    assert error.value.field == "price" and reason in error.value.reason


def test_trailing_zeros_beyond_the_scale_are_exact_and_accepted() -> None:
    assert parse_decimal("price", "1.50000000000000000000000") == Decimal("1.5")


def valid_trade_message() -> Trade:
    message = Trade(trade_id="X-1", symbol="BTCUSDT", exchange="BINANCE", asset_class=2, price="97123.45",
                    quantity="0.5", currency="USDT", side=Side.SIDE_BUY)
    message.timestamp.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))
    return message


@pytest.mark.parametrize("change, field, reason", [
    (lambda m: m.ClearField("timestamp"), "timestamp", "required"),
    (lambda m: setattr(m.timestamp, "nanos", 1), "timestamp", "finer than a microsecond"),
    (lambda m: setattr(m, "price", "abc"), "price", "not a decimal number"),
    (lambda m: setattr(m, "quantity", "-1"), "quantity", "must be positive"),
    (lambda m: setattr(m, "side", 0), "side", "required"),
    (lambda m: setattr(m, "side", 99), "side", "unknown enum value"),
    (lambda m: setattr(m, "asset_class", 0), "asset_class", "required"),
    (lambda m: setattr(m, "symbol", ""), "symbol", "required"),
    (lambda m: setattr(m, "symbol", "X" * 300), "symbol", "longer than 256"),
    (lambda m: setattr(m, "message_id", "not-a-uuid"), "message_id", "not a UUID"),
])
def test_invalid_published_trade_names_field_and_reason(change, field: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    message = valid_trade_message()
    change(message)
    with pytest.raises(FieldError) as error:
        protos.trade_from_proto(message)
    assert error.value.field == field and reason in error.value.reason


def test_one_sided_crossed_and_locked_quotes_are_valid() -> None:
    base = sample_quote()
    one_sided = base | {"bid_price": Decimal("37.7"), "bid_quantity": Decimal(300), "ask_price": None,
                        "ask_quantity": None}
    crossed = base | {"bid_price": Decimal("37.8"), "bid_quantity": Decimal(1), "ask_price": Decimal("37.7"),
                      "ask_quantity": Decimal(1)}
    for record in (one_sided, crossed):
        assert validate_quote(dict(record)) == record
    half = base | {"bid_price": Decimal(1), "bid_quantity": None}
    with pytest.raises(FieldError, match="bid_quantity"):
        validate_quote(half)


def test_decode_errors_say_why() -> None:
    encoded = avro.encode("trade", validate_trade(sample_trade()))
    for value, reason in [(b"{}", "missing C3 01 header"), (b"\xc3\x01" + b"\0" * 8, "unknown writer schema"),
                          (encoded[:-3], "corrupt Avro body"), (encoded + b"\0", "trailing bytes")]:
        with pytest.raises(avro.DecodeError, match=reason):
            avro.decode(value)


@pytest.mark.parametrize("text", ["١٢٣", "１２", "12\u00a0"])
def test_only_ascii_decimal_strings_are_read(text: str) -> None:
    with pytest.raises(FieldError, match="not a decimal number"):
        parse_decimal("price", text)


# Decimal strings a publisher may send: plain ones the one-pass encoder reads itself, and every form it leaves
# to the exact path (exponents, signs, zero, too many digits, trailing zeros beyond the scale, non-ASCII, junk).
decimal_texts = st.one_of(
    positive_decimals().map(protos.decimal_text),
    st.sampled_from(["1.50", "0.10000000", "007", "1e3", "1E-18", "-1", "+1", "0", "0.000", "1.", ".5", " 1",
                     "1.0000000000000000000", "123456789012345678901", "0.0000000000000000001", "NaN", "Infinity",
                     "١٢", "", "12,5", "00000000000000000000001", "99999999999999999999.999999999999999999"]))
message_ids = st.one_of(st.just(""), st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                        st.uuids().map(lambda u: "{" + str(u) + "}"), st.just("not-a-uuid"))
seconds = st.one_of(st.integers(0, 4_102_444_800), st.sampled_from([-1, -62_135_596_800, 253_402_300_799,
                                                                     253_402_300_800, 10**12]))


@st.composite
def published_trades(draw: st.DrawFn) -> Trade:
    message = protos.trade_to_proto(draw(trades()) | {"ingestion_timestamp": None})
    message.message_id = draw(message_ids)
    message.price, message.quantity = draw(decimal_texts), draw(decimal_texts)
    message.asset_class, message.side = draw(st.integers(0, 5)), draw(st.integers(0, 5))  # type: ignore[assignment]
    for name in ("trade_id", "symbol", "exchange", "currency"):
        if draw(st.integers(0, 9)) == 0:
            setattr(message, name, draw(st.sampled_from(["", "X" * 256, "X" * 257])))
    if draw(st.booleans()):
        message.timestamp.seconds = draw(seconds)
        message.timestamp.nanos = draw(st.sampled_from([0, 1000, 999_999_000, 1, 999]))
    if draw(st.integers(0, 9)) == 0:
        message.ClearField("timestamp")
    if draw(st.integers(0, 4)) == 0:
        message.source_sequence = 0  # present, and zero
    return message


@PROPERTY
@given(st.lists(published_trades(), max_size=8), st.datetimes(timezones=st.just(UTC)))
def test_trades_encoded_in_one_pass_are_what_the_exact_path_writes_or_rejects(
        messages: list[Trade], received: datetime) -> None:
    def message_id(index: int) -> str:
        return f"00000000-0000-5000-8000-{index:012d}"

    messages = messages + messages  # the second time round, from what the batch has already written
    batch = proto_avro.encode_trades(messages, received, message_id)
    keys, values, indexes, rejected = [], [], [], []
    for index, message in enumerate(messages):
        try:
            record = protos.trade_from_proto(message, received, message_id(index))
        except FieldError as error:
            rejected.append((index, error.field, error.reason))
        else:
            keys.append(record["symbol"].encode())
            values.append(avro.encode("trade", record))
            indexes.append(index)
    assert (batch.keys, batch.values, batch.indexes) == (keys, values, indexes)
    assert [(index, error.field, error.reason) for index, error in batch.rejected] == rejected
