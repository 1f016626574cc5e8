"""The query service's conversions and tokens, without Kafka or Iceberg: the fan-out's native decoding gives exactly
the plain path's bytes (Arrow rows: tests/test_query_wire.py); bars round VWAP half-even; tokens refuse anything
they did not issue."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import BytesIO
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from strategies import KNOWN_IDS, avro_data, in_either_framing, quotes, sample_quote, sample_trade, trades

from k2._native import LiveBatch, read_messages
from k2.core import avro
from k2.core.arrow_records import records_to_arrow
from k2.core.framing import SINGLE_OBJECT, Framing
from k2.core.records import DECIMAL_PRECISION, MAX_TEXT_LENGTH, QUOTE, TRADE, FieldError, Record, RecordKind
from k2.core.timestamps import micros
from k2.query.v1 import query_pb2
from k2.services.query.bars import BarBuilder, divide_half_even
from k2.services.query.convert import decode_batch, decode_message, decode_plain, frame, transcoder
from k2.services.query.selection import Selection, rows_after, sort_rows
from k2.services.query.tokens import PageToken, StreamPosition, TokenKeys, query_digest

KINDS = (TRADE, QUOTE)
RECORDS = {TRADE: trades, QUOTE: quotes}
LIMIT = 10**DECIMAL_PRECISION  # unscaled decimal(38,18) values are below this in magnitude


def exact_framed(kind: RecordKind, value: bytes) -> tuple[bytes, str, str, int] | None:
    """The plain path's result for one value: (framed message, symbol, exchange, timestamp µs), or None."""
    decoded = decode_plain(kind, value)
    return None if decoded is None else (frame(decoded[0]), *decoded[1:])


def messages_of(values: list[bytes], partitions: int = 1) -> list[Message]:
    return [
        Message(topic="live", partition=i % partitions, offset=i, value=value, key=b"K")
        for i, value in enumerate(values)
    ]


def batch_of(
    kind: RecordKind, values: list[bytes], framing: Framing = SINGLE_OBJECT
) -> tuple[LiveBatch, int]:
    [batch], errors = read_messages(messages_of(values), ["live"])
    assert errors == []
    return batch, decode_batch(kind, batch, framing)


# Raw Avro values of the current schema versions, beyond what a valid record holds: any text (empty, longer than
# MAX_TEXT_LENGTH characters), decimals of any sign and size (and byte strings that are no minimal two's
# complement), any long for a timestamp, maps with keys that begin one another. Written with the logical types
# stripped, so that fastavro writes what the strategy drew.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
texts = st.one_of(
    any_text.filter(bool),
    any_text.filter(bool),
    any_text.filter(bool),
    any_text,
    st.text("aé€😀", min_size=MAX_TEXT_LENGTH - 1, max_size=MAX_TEXT_LENGTH + 1),
)
map_keys = st.text("aé", max_size=3)  # few letters: keys that equal, or begin, one another
decimal_units = st.one_of(
    st.integers(1, 10**24),
    st.integers(-LIMIT + 1, LIMIT - 1),
    st.sampled_from([0, -1, LIMIT - 1, -LIMIT + 1, LIMIT, -LIMIT, 2**127 - 1, -(2**127)]),
)
minimal_bytes = decimal_units.map(lambda n: n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True))
decimal_bytes = st.one_of(
    minimal_bytes,
    minimal_bytes,
    minimal_bytes,
    decimal_units.map(lambda n: n.to_bytes(17, "big", signed=True)),  # sign-extended: one byte too many
    st.binary(max_size=18),
)
FIRST_MICROS, LAST_MICROS = micros(datetime.min.replace(tzinfo=UTC)), micros(datetime.max.replace(tzinfo=UTC))
micros_values = st.one_of(
    st.integers(FIRST_MICROS - 2, LAST_MICROS + 2),
    st.integers(FIRST_MICROS - 2, LAST_MICROS + 2),
    st.sampled_from([FIRST_MICROS - 1, FIRST_MICROS, LAST_MICROS, LAST_MICROS + 1, 0, -1]),
    st.integers(-(2**63), 2**63 - 1),
)


def raw_data(schema: Any) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        return st.one_of(*(raw_data(branch) for branch in schema))
    if isinstance(schema, str):
        return {"null": st.none(), "string": texts, "long": st.integers(-(2**63), 2**63 - 1)}[schema]
    logical = schema.get("logicalType")
    if logical == "decimal":
        return decimal_bytes
    if logical == "timestamp-micros":
        return micros_values
    if logical == "uuid":
        return st.one_of(st.uuids().map(str), texts)
    return {
        "enum": lambda: st.sampled_from(schema["symbols"]),
        "array": lambda: st.lists(texts, max_size=3),
        "map": lambda: st.dictionaries(map_keys, texts, max_size=5),
    }[schema["type"]]()


RAW_SCHEMAS = {
    kind: fastavro.parse_schema(avro.without_logical_types(avro.CURRENT[kind].schema)) for kind in KINDS
}


def raw_written(kind: RecordKind, record: Record) -> bytes:
    out = BytesIO()
    fastavro.schemaless_writer(out, RAW_SCHEMAS[kind], record)
    return avro.CURRENT_HEADERS[kind] + out.getvalue()


def raw_value(kind: RecordKind) -> st.SearchStrategy[bytes]:
    fields = avro.CURRENT[kind].schema["fields"]
    return st.fixed_dictionaries({f["name"]: raw_data(f["type"]) for f in fields}).map(
        lambda record: raw_written(kind, record)
    )


@st.composite
def corrupted(draw: st.DrawFn, value: bytes) -> bytes:
    """A value cut short, with bytes after its end, or one byte changed."""
    how = draw(st.sampled_from(["cut", "trailing", "changed"]))
    if how == "cut":
        return value[: draw(st.integers(0, len(value) - 1))]
    if how == "trailing":
        return value + draw(st.binary(min_size=1, max_size=3))
    at = draw(st.integers(0, len(value) - 1))
    return value[:at] + bytes([value[at] ^ draw(st.integers(1, 255))]) + value[at + 1 :]


def live_values(kind: RecordKind) -> st.SearchStrategy[bytes]:
    """Kafka values on a kind's topic: valid records, raw ones, corrupt ones, older versions, the other kind."""
    valid = RECORDS[kind]().map(lambda record: avro.encode(kind, record))
    older = st.sampled_from(avro.VERSIONS[kind][:-1]).flatmap(
        lambda version: avro_data(version.schema).map(lambda record: avro.encode_with(version, record))
    )
    other = RECORDS[QUOTE if kind == TRADE else TRADE]().map(
        lambda record: avro.encode(QUOTE if kind == TRADE else TRADE, record)
    )
    return st.one_of(
        valid, raw_value(kind), valid.flatmap(corrupted), raw_value(kind).flatmap(corrupted), older, other
    )


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_a_decoded_batch_holds_exactly_the_exact_paths_records(kind: RecordKind, data: st.DataObject) -> None:
    """Natively transcoded or handed back to the plain path: per message the bytes, symbol, exchange and
    timestamp the plain path gives (frame(trade_to_proto(...))) to its single-object form, in Kafka order; refused
    what it refuses. In either Kafka framing."""
    values = data.draw(st.lists(live_values(kind), min_size=1, max_size=6))
    framing = data.draw(st.sampled_from([SINGLE_OBJECT, KNOWN_IDS]))
    sent = in_either_framing(data, kind, values) if framing is KNOWN_IDS else values
    batch, refused = batch_of(kind, sent, framing)
    expected = [exact_framed(kind, value) for value in values]
    valid = [found for found in expected if found is not None]
    assert refused == len(values) - len(valid)
    assert batch.select() == (
        b"".join(f[0] for f in valid),
        len(valid),
        max((f[3] for f in valid), default=0),
    )
    for index, found in enumerate(expected):
        single, _ = batch_of(kind, [sent[index]], framing)
        assert single.select() == ((found[0], 1, found[3]) if found else (b"", 0, 0))
        assert single.symbols() == ([found[1]] if found else [])
        if found:
            assert single.select(exchanges=frozenset([found[2]]))[1] == 1
        assert decode_message(kind, sent[index], framing) == (decode_plain(kind, values[index]) or [None])[0]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_valid_records_of_the_current_version_never_need_the_exact_path(
    kind: RecordKind, data: st.DataObject
) -> None:
    records = data.draw(st.lists(RECORDS[kind](), min_size=1, max_size=5))
    values = in_either_framing(data, kind, [avro.encode(kind, r) for r in records])
    [batch], _ = read_messages(messages_of(values), ["live"])
    assert batch.decode(transcoder(kind, KNOWN_IDS)) == []
    assert batch.records == len(records)


def raw_trade(**changes: Any) -> bytes:
    record = sample_trade(price=Decimal(1), quantity=Decimal(2))
    units = {
        name: int(record[name].scaleb(18)).to_bytes(16, "big", signed=True) for name in ("price", "quantity")
    }
    times = {name: micros(record[name]) for name in ("timestamp", "ingestion_timestamp")}
    return raw_written(TRADE, record | units | times | changes)


def units(n: int) -> bytes:
    return n.to_bytes(16, "big", signed=True)


@pytest.mark.parametrize(
    "changes",
    [
        {"symbol": "é" * MAX_TEXT_LENGTH},
        {"symbol": "é" * (MAX_TEXT_LENGTH + 1)},
        {"currency": ""},
        {"trade_id": "😀" * (MAX_TEXT_LENGTH + 1)},
        {"message_id": ""},
        {"message_id": "not a uuid"},
        {"timestamp": FIRST_MICROS},
        {"timestamp": FIRST_MICROS - 1},
        {"ingestion_timestamp": LAST_MICROS},
        {"ingestion_timestamp": LAST_MICROS + 1},
        {"timestamp": -1},
        {"timestamp": 0},
        {"price": units(LIMIT - 1)},
        {"price": units(LIMIT)},
        {"quantity": units(-LIMIT + 1)},
        {"price": units(0)},
        {"quantity": units(0)},
        {"price": units(-1)},
        {"asset_class": "OPTIONS", "price": units(-1)},
        {"price": b"\x00" * 17 + b"\x01"},
        {"price": b""},
        {"price": b"\x00\x00\x05"},
        {"vendor_data": {"": "", "a": "1", "ab": "2", "b": "3", "é": "4"}},
        {"vendor_data": {}},
        {"source_sequence": -(2**63), "platform_sequence": 2**63 - 1},
        {"source_sequence": 0, "platform_sequence": 0},
        {"trade_conditions": ["", "x", "é" * 300]},
        {"trade_conditions": ["😀" * 32] * 8},
        {"trade_conditions": ["x"] * 9},
        {"trade_conditions": ["é" * 33]},
        {"symbol": "X" * 32},
        {"symbol": "X" * 33},
        {"symbol": "btcusdt"},
        {"exchange": "BIN/ANCE"},
        {"exchange": "A.B_C-D9"},
        {"vendor_data": {str(n) + "😀" * 31: "😀" * 64 for n in range(8)}},
        {"vendor_data": {str(n): "" for n in range(9)}},
        {"vendor_data": {"K" * 33: ""}},
        {"vendor_data": {"k": "é" * 65}},
    ],
)
def test_limits_are_the_exact_paths(changes: dict[str, Any]) -> None:
    value = raw_trade(**changes)
    found = exact_framed(TRADE, value)
    assert batch_of(TRADE, [value])[0].select() == ((found[0], 1, found[3]) if found else (b"", 0, 0))


def test_records_the_transcoder_hands_back_are_judged_by_the_exact_path() -> None:
    futures = avro.encode(TRADE, sample_trade(asset_class="FUTURES", price=Decimal("-1.25"), symbol="ES"))
    one_sided = avro.encode(QUOTE, sample_quote(ask_price=None, ask_quantity=None))
    repeated_key = avro.encode(TRADE, sample_trade(vendor_data={"a": "1", "b": "2"})).replace(
        b"\x02b", b"\x02a"
    )
    v1 = avro.encode_with(
        avro.VERSIONS[TRADE][0],
        {
            "symbol": "BHP",
            "exchange_timestamp": datetime(2014, 3, 10, tzinfo=UTC),
            "price": Decimal("37.51"),
            "volume": 40000,
            "qualifiers": 3,
            "venue": "X",
            "buyer_id": None,
            "company_id": 7078,
            "exchange": "ASX",
            "ingestion_timestamp": datetime(2014, 3, 10, tzinfo=UTC),
            "sequence_number": 1,
        },
    )
    values = [
        avro.encode(TRADE, sample_trade()),
        futures,
        avro.encode(TRADE, sample_trade(symbol="")),
        b"\xc3\x01garbage",
        avro.encode(QUOTE, sample_quote()),
        repeated_key,
        v1,
    ]
    [batch], _ = read_messages(messages_of(values), ["live"])
    assert [index for index, _ in batch.decode(transcoder(TRADE))] == [1, 2, 3, 4, 5, 6]
    batch, refused = batch_of(TRADE, values)
    assert refused == 3  # an empty symbol, garbage, a quote
    assert batch.select()[0] == b"".join(
        exact_framed(TRADE, v)[0] for v in (values[0], futures, repeated_key, v1)
    )
    response = query_pb2.SubscribeTradesResponse.FromString(batch.select()[0])
    assert [t.price for t in response.trades] == ["97123.45", "-1.25", "97123.45", "37.51"]
    assert dict(response.trades[2].vendor_data) == {"a": "2"}  # Avro's last value of a repeated key
    assert response.trades[3].vendor_data["venue"] == "X"
    [quotes], _ = read_messages(messages_of([one_sided]), ["live"])
    assert [index for index, _ in quotes.decode(transcoder(QUOTE))] == []
    half = avro.encode(QUOTE, sample_quote(ask_price=None))  # an ask quantity without a price
    assert batch_of(QUOTE, [one_sided, half])[1] == 1
    zero_equity = avro.encode(QUOTE, sample_quote(bid_price=Decimal(0)))
    zero_future = avro.encode(QUOTE, sample_quote(bid_price=Decimal(0), asset_class="FUTURES"))
    [quotes], _ = read_messages(messages_of([zero_equity, zero_future]), ["live"])
    assert [index for index, _ in quotes.decode(transcoder(QUOTE))] == [0, 1]
    assert batch_of(QUOTE, [zero_equity, zero_future])[1] == 1  # only the future's book may have a price of 0


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), st.sampled_from(["X", "Y"]), st.integers(0, 4)),
        min_size=1,
        max_size=12,
    ),
    symbols=st.one_of(st.none(), st.frozensets(st.sampled_from(["A", "B", "C", "D"]))),
    exchanges=st.one_of(st.none(), st.frozensets(st.sampled_from(["X", "Y"]))),
    start=st.one_of(st.none(), st.integers(0, 4)),
    end=st.one_of(st.none(), st.integers(0, 5)),
    skip_below=st.dictionaries(st.integers(0, 2), st.integers(0, 12), max_size=2),
    older=st.integers(0, 12),
)
def test_select_takes_the_records_a_selection_matches(
    rows: list[tuple[str, str, int]],
    symbols: frozenset[str] | None,
    exchanges: frozenset[str] | None,
    start: int | None,
    end: int | None,
    skip_below: dict[int, int],
    older: int,
) -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    values = [
        avro.encode(
            TRADE, sample_trade(symbol=symbol, exchange=exchange, timestamp=at + timedelta(microseconds=t))
        )
        for symbol, exchange, t in rows
    ]
    if older < len(values):  # one record of an older version: the plain path's, added in its place
        symbol, exchange, t = rows[older]
        values[older] = avro.encode_with(
            avro.VERSIONS[TRADE][0],
            {
                "symbol": symbol,
                "exchange_timestamp": at + timedelta(microseconds=t),
                "price": Decimal(1),
                "volume": 1,
                "qualifiers": 0,
                "venue": "",
                "buyer_id": None,
                "company_id": 1,
                "exchange": exchange,
                "ingestion_timestamp": at,
                "sequence_number": None,
            },
        )
    [batch], _ = read_messages(messages_of(values, partitions=3), ["live"])
    decode_batch(TRADE, batch)
    base = micros(at)
    selection = Selection(
        symbols, exchanges, None if start is None else base + start, None if end is None else base + end
    )
    chosen = [
        (framed, timestamp)
        for offset, value in enumerate(values)
        for framed, symbol, exchange, timestamp in [exact_framed(TRADE, value)]  # type: ignore[misc]
        if selection.matches(symbol, exchange, timestamp) and offset >= skip_below.get(offset % 3, 0)
    ]
    assert batch.select(
        selection.symbols, selection.exchanges, selection.start, selection.end, skip_below
    ) == (b"".join(f for f, _ in chosen), len(chosen), max((t for _, t in chosen), default=0))
    assert sorted(batch.symbols()) == sorted({symbol for symbol, _, _ in rows})


def test_read_messages_splits_a_poll_by_topic() -> None:
    error = Message(topic="trades", partition=0, error=KafkaError(KafkaError._PARTITION_EOF))
    trade, quote = avro.encode(TRADE, sample_trade()), avro.encode(QUOTE, sample_quote())
    traced = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    messages = [
        Message(topic="trades", partition=1, offset=7, key=b"BTCUSDT", value=trade),
        error,
        Message(topic="quotes", partition=0, offset=3, key=b"BHP", value=quote, headers=traced),
        Message(topic="trades", partition=1, offset=8, key=b"ETHUSDT", value=trade),
        Message(topic="trades", partition=0, offset=2, key=b"BTCUSDT", value=b"newest"),
    ]
    latest: list[dict[bytes, bytes]] = [{}, {}]
    (trades_batch, quotes_batch), errors = read_messages(messages, ["trades", "quotes"], latest)
    assert errors == [error]
    assert (len(trades_batch), len(quotes_batch)) == (3, 1)
    assert trades_batch.positions == {1: 9, 0: 3} and quotes_batch.positions == {0: 4}
    assert [trades_batch.position(i) for i in range(3)] == [(1, 7), (1, 8), (0, 2)]
    assert latest == [{b"BTCUSDT": b"newest", b"ETHUSDT": trade}, {b"BHP": quote}]
    assert trades_batch.headers is None and quotes_batch.headers == [traced]
    [only], _ = read_messages(messages[:1] + messages[3:], ["trades"], keys=frozenset([b"ETHUSDT"]))
    assert len(only) == 1 and only.position(0) == (1, 8) and only.positions == {1: 9, 0: 3}


def test_vwap_rounds_half_even_and_bars_align_to_utc() -> None:
    assert [divide_half_even(n, 2) for n in (1, 3, 5, -1)] == [0, 2, 2, 0]
    assert divide_half_even(2, 3) == 1 and divide_half_even(1, 3) == 0
    start = datetime(2024, 1, 1, 0, 4, 59, tzinfo=UTC)
    records = [
        sample_trade(timestamp=start, price=Decimal(1), quantity=Decimal(1)),
        sample_trade(timestamp=start + timedelta(seconds=1), price=Decimal(2), quantity=Decimal(2)),
        sample_trade(timestamp=start + timedelta(seconds=2), price=Decimal("1.5"), quantity=Decimal(1)),
    ]
    builder = BarBuilder(300_000_000)
    builder.add(sort_rows(records_to_arrow(TRADE, records)))
    first, second = builder.protos()
    assert (first.start.ToDatetime(UTC), first.vwap, first.trade_count) == (
        datetime(2024, 1, 1, tzinfo=UTC),
        "1",
        1,
    )
    # (2×2 + 1.5×1) / 3 = 1.8333… → 18 places, half-even
    assert (second.open, second.close, second.high, second.low, second.volume, second.vwap) == (
        "2",
        "1.5",
        "2",
        "1.5",
        "3",
        "1.833333333333333333",
    )


def test_rows_after_continues_exactly_after_a_key() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    records = [
        sample_trade(timestamp=at, source_sequence=s, message_id=f"00000000-0000-4000-8000-00000000000{s}")
        for s in (3, 1, 2)
    ] + [sample_trade(timestamp=at + timedelta(seconds=1))]
    table = sort_rows(records_to_arrow(TRADE, records))
    assert table["source_sequence"].to_pylist()[:3] == [1, 2, 3]
    after = (micros(at), "BINANCE", "BTCUSDT", 2, "00000000-0000-4000-8000-000000000002")
    assert rows_after(table, after)["source_sequence"].to_pylist() == [3, 4123456789]


def test_tokens_round_trip_and_refuse_foreign_ones() -> None:
    selection = Selection(frozenset(["BTCUSDT"]), None, 1, 2)
    digest = query_digest(TRADE, selection)
    keys = TokenKeys([SecretStr("a test key of sixteen bytes or more")])
    page = PageToken(digest, 42, {0: 5}, {0: 9}, (1, "BINANCE", "BTCUSDT", None, "id"))
    assert PageToken.decode(page.encode(keys), digest, keys) == page
    with pytest.raises(FieldError, match="different query"):
        PageToken.decode(
            page.encode(keys), query_digest(TRADE, Selection(frozenset(["ETHUSDT"]), None, 1, 2)), keys
        )
    position = StreamPosition(
        TRADE, {0: 10, 3: 7}, since=5, snapshot_id=9, after=(1, "X", "Y", 4, "m"), mark=11
    )
    assert StreamPosition.decode(position.encode(keys), TRADE, keys) == position
    unsigned = position.encode(keys).partition(".")[0]
    foreign = [
        (position.encode(keys), QUOTE),
        ("e30", TRADE),
        ("!!", TRADE),
        ("eyJ2IjoxLCJrIjoidCJ9", TRADE),
        (unsigned, TRADE),
        (position.encode(TokenKeys([])), TRADE),
    ]  # the last: another key
    for token, kind in foreign:
        with pytest.raises(FieldError) as raised:
            StreamPosition.decode(token, kind, keys)  # type: ignore[arg-type]
        assert raised.value.field == "resume_token"


def test_selection_filters_arrow_rows_like_the_row_filter() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    table = records_to_arrow(
        TRADE,
        [
            sample_trade(symbol=s, exchange=e, timestamp=at + timedelta(seconds=i))
            for i, (s, e) in enumerate([("A", "X"), ("B", "X"), ("A", "Y"), ("A", "X")])
        ],
    )
    selection = Selection(frozenset(["A"]), frozenset(["X"]), micros(at), micros(at + timedelta(seconds=3)))
    assert selection.filter(table).num_rows == 1
    assert str(selection.row_filter()).count("symbol") == 1
    assert selection.matches("A", "X", micros(at)) and not selection.matches("A", "X", micros(at) + 3_000_000)
    assert isinstance(table, pa.Table)
