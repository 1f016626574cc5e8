"""Round trips of the shared codec, property-tested at the edges of the contract: extreme decimals, Unicode,
empty and absent optional fields. And the errors: every refusal names the field and the reason."""

import uuid
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    int64,
    market_names,
    names,
    positive_decimals,
    quotes,
    sample_quote,
    sample_trade,
    trades,
)

from k2.core import arrow_records, avro, proto_avro, protos
from k2.core.records import (
    MAX_CONDITION_LENGTH,
    MAX_TRADE_CONDITIONS,
    MAX_VENDOR_DATA_ENTRIES,
    MAX_VENDOR_DATA_KEY_LENGTH,
    MAX_VENDOR_DATA_VALUE_LENGTH,
    FieldError,
    Record,
    parse_decimal,
    validate_quote,
    validate_trade,
)
from k2.ingest.v1.ingest_pb2 import PublishTradesRequest
from k2.marketdata.v1.marketdata_pb2 import Quote, Side, Trade
from k2.services.ingest.ids import batch_message_ids

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
@given(trades(), quotes())
def test_leading_ids_are_the_ids_decode_reads(trade: Record, quote: Record) -> None:
    assert avro.leading_ids(avro.encode("trade", trade)) == (trade["message_id"], trade["trade_id"])
    assert avro.leading_ids(avro.encode("quote", quote)) == (quote["message_id"], quote["quote_id"])
    with pytest.raises(avro.DecodeError, match="ends inside its leading ids"):
        avro.leading_ids(avro.encode("trade", trade)[: avro.HEADER_SIZE + 5])
    with pytest.raises(avro.DecodeError, match="not a current-version"):
        avro.leading_ids(b"\xc3\x01" + b"\0" * 8)


@PROPERTY
@given(trades())
def test_trade_proto_round_trip(record: Record) -> None:
    message = protos.trade_to_proto(record)
    again = protos.trade_from_proto(
        Trade.FromString(message.SerializeToString()), received=record["ingestion_timestamp"]
    )
    assert again == record
    assert protos.trade_to_proto(again) == message


@PROPERTY
@given(quotes())
def test_quote_proto_round_trip(record: Record) -> None:
    message = protos.quote_to_proto(record)
    again = protos.quote_from_proto(
        Quote.FromString(message.SerializeToString()), received=record["ingestion_timestamp"]
    )
    assert again == record
    assert protos.quote_to_proto(again) == message


@settings(max_examples=50, deadline=None)
@given(st.lists(trades(), max_size=20))
def test_trade_arrow_round_trip(records: list[Record]) -> None:
    assert arrow_records.arrow_to_records(arrow_records.records_to_arrow("trade", records)) == records


@settings(max_examples=50, deadline=None)
@given(st.lists(quotes(), max_size=20))
def test_quote_arrow_round_trip(records: list[Record]) -> None:
    assert arrow_records.arrow_to_records(arrow_records.records_to_arrow("quote", records)) == records


def test_decoded_decimals_keep_every_digit() -> None:
    record = sample_trade(
        price=Decimal("99999999999999999999.999999999999999999"), quantity=Decimal("0.000000000000000001")
    )
    _, decoded = avro.decode(avro.encode("trade", record))
    assert (decoded["price"], decoded["quantity"]) == (record["price"], record["quantity"])
    assert protos.decimal_text(decoded["price"]) == "99999999999999999999.999999999999999999"
    assert protos.decimal_text(decoded["quantity"]) == "0.000000000000000001"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("123456789012345678901", "more than 20 integer digits"),
        ("0.0000000000000000001", "more than 18 decimal places"),
        ("NaN", "not a decimal number"),
        ("1e400", "more than 20 integer digits"),
        ("12,5", "not a decimal number"),
        ("", "not a decimal number"),
        (" 1", "not a decimal number"),
        ("1 ", "not a decimal number"),
        ("1_000", "not a decimal number"),
        ("+1", "not a decimal number"),
        ("1.", "not a decimal number"),
        (".5", "not a decimal number"),
        ("1e", "not a decimal number"),
        ("Infinity", "not a decimal number"),
    ],
)
def test_decimals_that_do_not_fit_are_rejected_not_rounded(text: str, reason: str) -> None:
    with pytest.raises(FieldError) as error:
        parse_decimal("price", text)
    assert error.value.field == "price" and reason in error.value.reason


@pytest.mark.parametrize(
    "text, value",
    [
        ("97123.45", "97123.45"),
        ("-0.5", "-0.5"),
        ("007.50", "7.5"),
        ("1E-8", "0.00000001"),
        ("1.5e3", "1500"),
        ("2E+2", "200"),
    ],
)
def test_decimals_as_exchanges_and_programs_write_them(text: str, value: str) -> None:
    assert parse_decimal("price", text) == Decimal(value)


def test_trailing_zeros_beyond_the_scale_are_exact_and_accepted() -> None:
    assert parse_decimal("price", "1.50000000000000000000000") == Decimal("1.5")


def valid_trade_message() -> Trade:
    message = Trade(
        trade_id="X-1",
        symbol="BTCUSDT",
        exchange="BINANCE",
        asset_class=2,
        price="97123.45",
        quantity="0.5",
        currency="USDT",
        side=Side.SIDE_BUY,
    )
    message.timestamp.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))
    return message


@pytest.mark.parametrize(
    "change, field, reason",
    [
        (lambda m: m.ClearField("timestamp"), "timestamp", "required"),
        (lambda m: setattr(m.timestamp, "nanos", 1), "timestamp", "finer than a microsecond"),
        (lambda m: setattr(m.timestamp, "nanos", -1000), "timestamp", "nanos must be 0 to 999,999,999"),
        (
            lambda m: setattr(m.timestamp, "nanos", 1_000_000_000),
            "timestamp",
            "nanos must be 0 to 999,999,999",
        ),
        (lambda m: setattr(m, "price", "abc"), "price", "not a decimal number"),
        (lambda m: setattr(m, "quantity", "-1"), "quantity", "must be positive"),
        (lambda m: setattr(m, "side", 0), "side", "required"),
        (lambda m: setattr(m, "side", 99), "side", "unknown enum value"),
        (lambda m: setattr(m, "asset_class", 0), "asset_class", "required"),
        (lambda m: setattr(m, "symbol", ""), "symbol", "required"),
        (lambda m: setattr(m, "symbol", "X" * 33), "symbol", "is not 1-32 characters of A-Z 0-9 . _ -"),
        (lambda m: setattr(m, "symbol", "btcusdt"), "symbol", "is not 1-32 characters"),
        (lambda m: setattr(m, "exchange", "BIN/ANCE"), "exchange", "is not 1-32 characters"),
        (lambda m: setattr(m, "currency", "X" * 300), "currency", "longer than 256"),
        (lambda m: m.trade_conditions.extend(["X"] * 9), "trade_conditions", "9 given, at most 8"),
        (
            lambda m: m.trade_conditions.append("X" * 33),
            "trade_conditions",
            "[0] is longer than 32 characters",
        ),
        (
            lambda m: m.vendor_data.update({str(n): "" for n in range(9)}),
            "vendor_data",
            "9 entries, at most 8",
        ),
        (lambda m: m.vendor_data.update({"K" * 33: ""}), "vendor_data", "is longer than 32 characters"),
        (
            lambda m: m.vendor_data.update({"k": "V" * 65}),
            "vendor_data",
            "the value of 'k' is longer than 64",
        ),
        (lambda m: setattr(m, "message_id", "not-a-uuid"), "message_id", "not a UUID"),
    ],
)
def test_invalid_published_trade_names_field_and_reason(change, field: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    message = valid_trade_message()
    change(message)
    with pytest.raises(FieldError) as error:
        protos.trade_from_proto(message)
    assert error.value.field == field and reason in error.value.reason


def test_one_sided_crossed_and_locked_quotes_are_valid() -> None:
    base = sample_quote()
    one_sided = base | {
        "bid_price": Decimal("37.7"),
        "bid_quantity": Decimal(300),
        "ask_price": None,
        "ask_quantity": None,
    }
    crossed = base | {
        "bid_price": Decimal("37.8"),
        "bid_quantity": Decimal(1),
        "ask_price": Decimal("37.7"),
        "ask_quantity": Decimal(1),
    }
    for record in (one_sided, crossed):
        assert validate_quote(dict(record)) == record
    half = base | {"bid_price": Decimal(1), "bid_quantity": None}
    with pytest.raises(FieldError, match="bid_quantity"):
        validate_quote(half)


@pytest.mark.parametrize(
    "asset_class, accepted", [("EQUITIES", False), ("CRYPTO", False), ("FUTURES", True), ("OPTIONS", True)]
)
@pytest.mark.parametrize("side", ["bid", "ask"])
def test_equity_and_crypto_quote_prices_are_positive(asset_class: str, accepted: bool, side: str) -> None:
    for price in (Decimal(0), Decimal("-0.01")):
        record = sample_quote(asset_class=asset_class, **{f"{side}_price": price})
        if accepted:
            assert validate_quote(dict(record)) == record
        else:
            with pytest.raises(FieldError) as error:
                validate_quote(record)
            assert (error.value.field, error.value.reason) == (f"{side}_price", f"must be positive: {price}")


def test_decode_errors_say_why() -> None:
    encoded = avro.encode("trade", validate_trade(sample_trade()))
    for value, reason in [
        (b"{}", "missing C3 01 header"),
        (b"\xc3\x01" + b"\0" * 8, "unknown writer schema"),
        (encoded[:-3], "corrupt Avro body"),
        (encoded + b"\0", "trailing bytes"),
    ]:
        with pytest.raises(avro.DecodeError, match=reason):
            avro.decode(value)


@pytest.mark.parametrize("text", ["١٢٣", "１２", "12\u00a0"])
def test_only_ascii_decimal_strings_are_read(text: str) -> None:
    with pytest.raises(FieldError, match="not a decimal number"):
        parse_decimal("price", text)


# Decimal strings a publisher may send: plain ones the native encoder reads itself, and every form it leaves to
# the plain path (exponents, signs, zero, too many digits, trailing zeros beyond the scale, non-ASCII, junk).
decimal_texts = st.one_of(
    positive_decimals().map(protos.decimal_text),
    st.sampled_from(
        [
            "1.50",
            "0.10000000",
            "007",
            "1e3",
            "1E-18",
            "-1",
            "+1",
            "0",
            "0.000",
            "1.",
            ".5",
            " 1",
            "1.0000000000000000000",
            "123456789012345678901",
            "0.0000000000000000001",
            "NaN",
            "Infinity",
            "١٢",
            "",
            "12,5",
            "00000000000000000000001",
            "99999999999999999999.999999999999999999",
            "0.000000000000000001",
            "99999999999999999999",
            "1_000",
            "1.5\n",
        ]
    ),
)
message_ids = st.one_of(
    st.just(""),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: u.hex),
    st.just("not-a-uuid"),
)
# Texts at the limits: 256 characters of several bytes each are within them, 257 are not.
published_texts = st.one_of(
    names,
    st.sampled_from(
        [
            "",
            "X" * 256,
            "X" * 257,
            "é" * 256,
            "é" * 257,
            "😀" * 64,
            "😀" * 256,
            "😀" * 257,
            "BTC/ÜSDT",
            "x" * 63,
            "x" * 64,
        ]
    ),
)
seconds = st.one_of(
    st.integers(-62_135_596_800, 253_402_300_799),
    st.sampled_from(
        [
            -62_135_596_801,
            -62_135_596_800,
            -1,
            0,
            253_402_300_799,
            253_402_300_800,
            10**12,
            -(10**12),
            2**63 - 1,
            -(2**63),
        ]
    ),
)
nanos = st.one_of(
    st.integers(0, 999_999).map(lambda micros: micros * 1000),
    st.sampled_from([0, 999_999_000, 1, 999, -1000, 1_000_000_000, 2**31 - 1, -(2**31)]),
)
enum_values = st.one_of(st.integers(0, 5), st.sampled_from([-1, 2**31 - 1, -(2**31)]))
optional_longs = st.one_of(st.none(), st.just(0), int64)
long_text = st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=80
)  # sizes of 64 bytes and more too
# Symbols and exchanges: names a query can ask for, and at their edges any text, a 33rd character, lower case.
name_edges = st.one_of(
    published_texts, st.sampled_from(["X" * 32, "X" * 33, "btcusdt", "BTC/USDT", "BTC USDT"])
)


def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cs",)), max_size=max_size)


conditions = st.lists(texts(MAX_CONDITION_LENGTH), max_size=MAX_TRADE_CONDITIONS)
conditions_at_edges = st.lists(long_text, max_size=MAX_TRADE_CONDITIONS + 2)
vendor_data = st.dictionaries(
    texts(MAX_VENDOR_DATA_KEY_LENGTH), texts(MAX_VENDOR_DATA_VALUE_LENGTH), max_size=MAX_VENDOR_DATA_ENTRIES
)
vendor_data_at_edges = st.dictionaries(long_text, long_text, max_size=MAX_VENDOR_DATA_ENTRIES + 4)
# Fields this Trade does not know, on the wire: a varint (99), bytes (100), a fixed32 (101), a group (102), and
# a known field with a wire type it does not have (symbol as a varint).
unknown_fields = st.lists(
    st.sampled_from(
        [
            b"\x98\x06\x96\x01",
            b"\xa2\x06\x03abc",
            b"\xad\x06\x01\x02\x03\x04",
            b"\xb3\x06\x08\x01\xb4\x06",
            b"\x18\x07",
        ]
    ),
    max_size=3,
)


@st.composite
def published_trades(draw: st.DrawFn) -> Trade:
    """Mostly trades the native encoder writes itself; each field is at its edges one time in eight."""

    def field(valid: st.SearchStrategy[Any], edges: st.SearchStrategy[Any]) -> Any:
        return draw(edges) if draw(st.integers(0, 7)) == 0 else draw(valid)

    valid_texts = st.one_of(names, st.sampled_from(["X" * 256, "é" * 256, "😀" * 64, "BTC/ÜSDT"]))
    valid_decimals = positive_decimals().map(protos.decimal_text)
    message = Trade(
        message_id=field(st.one_of(st.just(""), st.uuids().map(str)), message_ids),
        trade_id=field(valid_texts, published_texts),
        symbol=field(market_names, name_edges),
        exchange=field(market_names, name_edges),
        asset_class=field(st.integers(1, 4), enum_values),
        price=field(valid_decimals, decimal_texts),
        quantity=field(valid_decimals, decimal_texts),
        currency=field(valid_texts, published_texts),
        side=field(st.integers(1, 4), enum_values),
        trade_conditions=field(conditions, conditions_at_edges),
        vendor_data=field(vendor_data, vendor_data_at_edges),
    )
    for name in ("source_sequence", "platform_sequence"):
        if (value := draw(optional_longs)) is not None:
            setattr(message, name, value)  # present, zero too
    timestamp = field(st.just("set"), st.sampled_from(["absent", "present as zero", "set at its edges"]))
    if timestamp == "present as zero":
        message.timestamp.SetInParent()
    elif timestamp == "set":
        message.timestamp.seconds = draw(st.integers(-62_135_596_800, 253_402_300_799))
        message.timestamp.nanos = draw(st.integers(0, 999_999)) * 1000
    elif timestamp == "set at its edges":
        message.timestamp.seconds, message.timestamp.nanos = draw(seconds), draw(nanos)
    if draw(st.booleans()):
        message.ingestion_timestamp.seconds = draw(int64)  # set by ingest: ignored
    extra = draw(unknown_fields)
    if extra or draw(
        st.booleans()
    ):  # as parsed from a request: maps in the parser's order, unknown fields kept
        message = Trade.FromString(message.SerializeToString() + b"".join(extra))
    return message


def assert_encoded_as_the_exact_path_encodes_them(
    messages: list[Trade], received: datetime, message_ids: proto_avro.MessageIds
) -> None:
    request = PublishTradesRequest(trades=messages)
    batch = proto_avro.encode_trades(request, received, message_ids)
    keys, values, indexes, rejected = [], [], [], []
    for index, message in enumerate(request.trades):
        try:
            record = protos.trade_from_proto(message, received, message_ids(index))
        except FieldError as error:
            rejected.append((index, error.field, error.reason))
        else:
            keys.append(record["symbol"].encode())
            values.append(avro.encode("trade", record))
            indexes.append(index)
    assert (list(batch.keys), list(batch.values), list(batch.indexes)) == (keys, values, indexes)
    assert [(index, error.field, error.reason) for index, error in batch.rejected] == rejected
    assert batch.symbols == Counter(message.symbol for message in request.trades)


@PROPERTY
@given(
    st.lists(published_trades(), max_size=8),
    st.datetimes(timezones=st.just(UTC)),
    st.one_of(st.none(), st.text(max_size=8)),
)
def test_trades_encoded_natively_are_what_the_exact_path_writes_or_rejects(
    messages: list[Trade], received: datetime, batch_id: str | None
) -> None:
    message_ids = proto_avro.MessageIds.random() if batch_id is None else batch_message_ids("trade", batch_id)
    # The second time round, the trades' values are the ones the batch has already written.
    assert_encoded_as_the_exact_path_encodes_them(messages + messages, received, message_ids)


def test_trades_at_every_limit_are_encoded_natively_as_the_exact_path_encodes_them() -> None:
    def changed(**fields: Any) -> Trade:
        message = valid_trade_message()
        for name, value in fields.items():
            if name in ("seconds", "nanos"):
                setattr(message.timestamp, name, value)
            else:
                setattr(message, name, value)
        return message

    trades = [
        changed(seconds=seconds, nanos=nanos)
        for seconds in (-62_135_596_801, -62_135_596_800, -1, 0, 253_402_300_799, 253_402_300_800)
        for nanos in (0, 1000, 999_999_000, 999_999_999, 1_000_000_000, -1000)
    ]
    trades += [
        changed(**{name: text})
        for name in ("trade_id", "symbol", "exchange", "currency")
        for text in (
            "",
            "X",
            "X" * 32,
            "X" * 33,
            "x",
            "X/Y",
            "X Y",
            "X" * 256,
            "X" * 257,
            "é" * 256,
            "é" * 257,
            "😀" * 256,
            "😀" * 257,
        )
    ]
    for count, length in (
        (MAX_TRADE_CONDITIONS, MAX_CONDITION_LENGTH),
        (MAX_TRADE_CONDITIONS + 1, 1),
        (1, MAX_CONDITION_LENGTH + 1),
    ):
        for character in ("X", "é", "😀"):
            trades.append(changed())
            trades[-1].trade_conditions.extend([character * length] * count)
    for count, key, value in (
        (MAX_VENDOR_DATA_ENTRIES, MAX_VENDOR_DATA_KEY_LENGTH, MAX_VENDOR_DATA_VALUE_LENGTH),
        (MAX_VENDOR_DATA_ENTRIES + 1, 1, 1),
        (1, MAX_VENDOR_DATA_KEY_LENGTH + 1, 1),
        (1, 1, MAX_VENDOR_DATA_VALUE_LENGTH + 1),
    ):
        for character in ("X", "é", "😀"):
            trades.append(changed())
            trades[-1].vendor_data.update(
                {(str(n) + character * key)[:key]: character * value for n in range(count)}
            )
    trades += [
        changed(**{name: text})
        for name in ("price", "quantity")
        for text in (
            "99999999999999999999.999999999999999999",
            "0.000000000000000001",
            "99999999999999999999",
            "100000000000000000000",
            "0.0000000000000000001",
            "0",
            "0.0",
            "00000000000000000001",
            "1.000000000000000000",
            "1.0000000000000000000",
            "18446744073709551616",
        )
    ]
    trades += [
        changed(**{name: value}) for name in ("asset_class", "side") for value in (-1, 0, 1, 4, 5, 2**31 - 1)
    ]
    trades += [
        changed(message_id=text)
        for text in (
            "",
            "0b9f4e1c-5d2a-4f53-9b8e-2f6c1d0a7e31",
            "0B9F4E1C-5D2A-4F53-9B8E-2F6C1D0A7E31",
            "0b9f4e1c5d2a4f539b8e2f6c1d0a7e31",
            "0b9f4e1c-5d2a-4f53-9b8e-2f6c1d0a7e3",
            "0b9f4e1c-5d2a-4f53-9b8e_2f6c1d0a7e31",
        )
    ]
    trades += [
        changed(**{name: value})
        for name in ("source_sequence", "platform_sequence")
        for value in (0, -1, 2**63 - 1, -(2**63))
    ]
    for received in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)):
        assert_encoded_as_the_exact_path_encodes_them(trades, received, proto_avro.MessageIds.random())


def test_plain_trades_are_encoded_natively() -> None:
    trades = [valid_trade_message() for _ in range(3)]
    trades[1].vendor_data.update({"b": "2", "a": "1"})
    trades[2].price = "1e3"  # for the plain path
    ids = proto_avro.MessageIds.random()
    keys, values, unjudged, symbols = proto_avro._TRADES.encode(
        PublishTradesRequest(trades=trades).SerializeToString(), 0, ids.prefix, ids.node
    )
    assert unjudged == [2] and keys[2] is None and values[2] is None and symbols == {"BTCUSDT": 3}
    record = protos.trade_from_proto(trades[1], datetime(1970, 1, 1, tzinfo=UTC), ids(1))
    assert values[1] == avro.encode("trade", record) and list(record["vendor_data"]) == ["a", "b"]


def test_messages_ids_of_a_batch_are_its_base_with_the_index_in_the_node() -> None:
    ids = proto_avro.MessageIds.based_on(uuid.UUID("0d8f1f3a-3b8e-4b5f-9a1e-ffffffffffff"))
    assert [ids(0), ids(1)] == [
        "0d8f1f3a-3b8e-4b5f-9a1e-ffffffffffff",
        "0d8f1f3a-3b8e-4b5f-9a1e-000000000000",
    ]
    random_ids = [proto_avro.MessageIds.random() for _ in range(2)]
    assert random_ids[0](0) != random_ids[1](0) and uuid.UUID(random_ids[0](7)).version == 4
