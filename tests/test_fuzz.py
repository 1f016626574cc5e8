"""Fuzzing every parser that takes outside input, each against its own rejection contract:

- Binance frames (FrameParser.parse): never raises; every frame has exactly one outcome (a trade, a quote, a dead
  letter with the raw bytes and a reason, a control message handed back, a counted unknown event, or a counted
  duplicate).
- ASX and K2 CSV rows (AsxTradeParser/AsxQuoteParser/CsvParser.parse): never raise; every line is either a record
  or a RejectedRow with its line number and raw bytes, in input order. Headers, file names and reference data
  (read_header, company_id_of, load_symbols) raise only ValueError, KeyError or OSError, which the loader turns
  into a refusal.
- Protobuf (trade_from_proto/quote_from_proto): arbitrary bytes either fail to parse (DecodeError) or become a
  message; any message, whatever its field values, becomes a record or a FieldError (a ValueError).
- The live PublishTrades RPC: every request is answered, item by item (accepted + rejections = items), or the
  call ends with a status; never a hang, and the service stays up.

Whatever a parser accepts must also be a record the rest of the platform can carry: it passes validation again,
encodes to Avro, and converts back to protobuf. Each input gets a bounded time (hypothesis deadline)."""

import csv
import io
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_grpcurl import TOKEN, Platform, platform_processes

from k2.core import avro
from k2.core.protos import quote_from_proto, quote_to_proto, trade_from_proto, trade_to_proto
from k2.core.records import MAX_TEXT_LENGTH, QUOTE, TRADE, FieldError, Record, validate_quote, validate_trade
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.marketdata.v1.marketdata_pb2 import Quote, Trade
from k2.services.ingest import asx, csv_files
from k2.services.ingest.binance.parsing import FrameParser
from k2.services.ingest.binance.publishing import PublishBuffer
from k2.services.ingest.binance.sequencing import GapLog, SymbolState
from k2.services.ingest.rows import ParsedChunk

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
# Per input: generous for a loaded 2-core CI machine, far below anything that would look like a hang.
PER_INPUT = timedelta(seconds=2)
FUZZ = settings(
    max_examples=int(os.environ.get("K2_FUZZ_EXAMPLES", "400")),
    deadline=PER_INPUT,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# ---- generic strategies ----------------------------------------------------------------------------------------

unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
edge_integers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, 10**400]),
)
decimal_texts = st.one_of(
    st.from_regex(r"[+-]?\d{0,24}(\.\d{0,22})?([eE][+-]?\d{1,12})?", fullmatch=True),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "0",
            "-0",
            "0.0",
            "1E-18",
            "1E-19",
            "1E+19",
            "1E+20",
            "99999999999999999999.999999999999999999",
            "100000000000000000000",
            "NaN",
            "sNaN",
            "-Infinity",
            "1e999999999999999999",
            "1e-999999999",
            " 1",
            "1_000",
            "١٢٣",
            "",
        ]
    ),
    unicode_text,
)
json_scalars = st.one_of(st.none(), st.booleans(), edge_integers, st.floats(), unicode_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=10,
)


def _deep(depth: int, opening: str, closing: str) -> str:
    return opening * depth + closing * depth


# ---- Binance frames ------------------------------------------------------------------------------------------

SYMBOLS = ("BTCUSDT", "ETHBTC")
STREAMS = [
    "btcusdt@trade",
    "btcusdt@bookTicker",
    "ethbtc@trade",
    "ethbtc@bookTicker",
    "btcusdt@aggTrade",
    "!serverShutdown",
    "",
    "BTCUSDT@trade",
]


class FrameRun:
    """A parser with the production symbol states, and the outcome count of each parsed frame."""

    def __init__(self) -> None:
        gap_log = GapLog(recent=10)
        self.states = [SymbolState(symbol, symbol[3:], gap_log) for symbol in SYMBOLS]
        self.out = PublishBuffer(capacity=10**9)
        self.parser = FrameParser(self.states, ["trade", "bookTicker"], microseconds=False, out=self.out)

    def _counts(self) -> tuple[int, ...]:
        return (
            len(self.out.trades),
            len(self.out.quotes),
            len(self.out.dead_letters),
            sum(self.parser.unknown_events.values()),
            sum(s.duplicate_trades for s in self.states),
            sum(s.duplicate_quotes for s in self.states),
        )

    def parse(self, raw: bytes) -> None:
        before = self._counts()
        reply = self.parser.parse(raw)
        changes = [after - earlier for after, earlier in zip(self._counts(), before, strict=True)]
        outcomes = sum(changes) + (reply is not None)
        assert outcomes == 1 and all(change in (0, 1) for change in changes), (raw, changes, reply)
        if changes[2]:
            letter_raw, reason, field, source = self.out.dead_letters[-1]
            assert letter_raw == raw and reason and isinstance(field, str) and source.startswith("binance")
        if reply is not None:
            assert isinstance(reply, dict)
        for kind, messages, changed in (
            (TRADE, self.out.trades, changes[0]),
            (QUOTE, self.out.quotes, changes[1]),
        ):
            if changed:
                key, value, _ = messages[-1]
                decoded_kind, record = avro.decode(value)
                assert decoded_kind == kind and key == record["symbol"].encode()
                assert_carriable(kind, record)


def assert_carriable(kind: str, record: Record) -> None:
    """A record the platform can carry: still valid, Avro-encodable, and convertible to protobuf."""
    if kind == TRADE:
        validate_trade(dict(record))
        trade_to_proto(record)
    else:
        validate_quote(dict(record))
        quote_to_proto(record)
    assert avro.decode(avro.encode(kind, record))[0] == kind  # type: ignore[arg-type]


def _trade_data() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "e": st.just("trade"),
            "E": edge_integers,
            "s": st.sampled_from([*SYMBOLS, "", "btcusdt"]),
            "t": st.one_of(st.integers(0, 50), edge_integers),
            "p": decimal_texts,
            "q": decimal_texts,
            "T": st.one_of(st.integers(0, 4102444800000), edge_integers),
            "m": st.booleans(),
            "M": st.booleans(),
        }
    )


def _quote_data() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "u": st.one_of(st.integers(0, 50), edge_integers),
            "s": st.sampled_from([*SYMBOLS, ""]),
            "b": decimal_texts,
            "B": decimal_texts,
            "a": decimal_texts,
            "A": decimal_texts,
        }
    )


@st.composite
def mutated(draw: st.DrawFn, data: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A plausible event with some keys dropped, replaced by any JSON value, or added."""
    event = draw(data)
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=3)):
        if draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = draw(json_values)
    event.update(draw(st.dictionaries(st.text(max_size=2), json_values, max_size=2)))
    return event


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    shape = draw(st.integers(0, 5))
    if shape == 0:
        return draw(st.binary(max_size=200))
    if shape == 1:
        return json.dumps(draw(json_values)).encode()
    data = draw(st.one_of(mutated(_trade_data()), mutated(_quote_data()), json_values))
    wrapper: dict[str, Any] = {"stream": draw(st.one_of(st.sampled_from(STREAMS), json_values)), "data": data}
    if shape == 3:
        wrapper.pop(draw(st.sampled_from(["stream", "data"])))
    text = json.dumps(wrapper, allow_nan=True)
    if shape == 4:  # whitespace, trailing garbage, truncation
        text = draw(
            st.sampled_from([" " + text, text + "\n", text + "x", text[: len(text) // 2], text + text])
        )
    return text.encode()


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=8))
def test_every_binance_frame_has_exactly_one_outcome(raws: list[bytes]) -> None:
    run = FrameRun()
    for raw in raws:
        run.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        _deep(100_000, "[", "]").encode(),
        ('{"stream":"btcusdt@trade","data":' + _deep(50_000, "[", "]") + "}").encode(),
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true,'
        b'"M":true,"p":' + b"9" * 100_000 + b"}}",
        (
            b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":1e999999999,"q":"1","T":1,'
            b'"m":true,"M":true}}'
        ),
        (
            b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1",'
            b'"T":99999999999999999,"m":true,"M":true}}'
        ),
        (
            b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":true,'
            b'"M":true,"s":"\\ud800"}}'
        ),
        b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":NaN,"B":Infinity,"a":"1","A":"-1"}}',
        b"\xff\xfe\x00",
        b"",
        b"null",
        b'"x"',
        b"[]",
        b'{"id":1,"result":null}',
        b'{"e":"serverShutdown"}',
    ],
)
def test_pathological_binance_frames_are_answered_quickly(raw: bytes) -> None:
    started = time.perf_counter()
    FrameRun().parse(raw)
    assert time.perf_counter() - started < PER_INPUT.total_seconds()


# ---- ASX and K2 CSV rows -------------------------------------------------------------------------------------


def assert_every_line_answered(chunk: ParsedChunk, lines: list[tuple[int, bytes]], kind: str) -> None:
    assert chunk.rows == len(lines)
    answered = sorted(
        [(number, raw) for number, raw in chunk.lines] + [(row.line, row.raw) for row in chunk.rejected]
    )
    assert answered == sorted(lines)
    assert len(chunk.lines) == len(chunk.records)
    for row in chunk.rejected:
        assert isinstance(row.field, str) and row.reason
    for record in chunk.records:
        assert_carriable(kind, record)


field_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=",\r\n"), max_size=12)
asx_dates = st.one_of(
    st.dates().map(lambda d: f"{d.month:02d}/{d.day:02d}/{d.year:04d}"),
    st.from_regex(r"\d\d/\d\d/\d{4}", fullmatch=True),
    field_text,
)
asx_times = st.one_of(
    st.times().map(lambda t: t.isoformat(timespec="milliseconds")),
    st.from_regex(r"\d\d:\d\d:\d\d(\.\d{1,9})?", fullmatch=True),
    field_text,
)
asx_numbers = st.one_of(
    decimal_texts.filter(lambda t: not set(t) & set(",\r\n")), st.just("0"), st.just("0.0")
)


@st.composite
def asx_lines(draw: st.DrawFn, columns: int) -> list[tuple[int, bytes]]:
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 4)) == 0:
            rows.append(draw(st.binary(max_size=80).filter(lambda b: b"\n" not in b)))
            continue
        fields = [draw(asx_dates), draw(asx_times)] + [
            draw(st.one_of(asx_numbers, field_text)) for _ in range(columns - 2)
        ]
        fields = fields[: draw(st.integers(0, columns + 1))] if draw(st.integers(0, 5)) == 0 else fields
        rows.append(",".join(fields).encode())
    first = draw(st.integers(1, 1000))
    return [(first + n, raw) for n, raw in enumerate(rows)]


@FUZZ
@given(asx_lines(len(asx.TRADE_COLUMNS)))
def test_every_asx_trade_row_is_a_record_or_a_rejection(lines: list[tuple[int, bytes]]) -> None:
    chunk = asx.AsxTradeParser("7078", "BHP", RECEIVED).parse(lines)
    assert_every_line_answered(chunk, lines, TRADE)


@FUZZ
@given(asx_lines(len(asx.QUOTE_COLUMNS)))
def test_every_asx_quote_row_is_a_record_or_a_rejection(lines: list[tuple[int, bytes]]) -> None:
    chunk = asx.AsxQuoteParser("7078", "BHP", RECEIVED).parse(lines)
    assert_every_line_answered(chunk, lines, QUOTE)


CSV_VALUES: dict[str, st.SearchStrategy[str]] = {
    "message_id": st.one_of(st.uuids().map(str), field_text),
    "timestamp": st.one_of(
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        st.datetimes().map(lambda d: d.isoformat()),
        st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,12})?(Z|[+-]\d\d:\d\d)?", fullmatch=True),
        field_text,
    ),
    "asset_class": st.sampled_from(["EQUITIES", "CRYPTO", "FUTURES", "OPTIONS", "equities", ""]),
    "side": st.sampled_from(["BUY", "SELL", "SELL_SHORT", "UNKNOWN", "buy", ""]),
    "source_sequence": st.one_of(edge_integers.map(str), field_text),
    "vendor_data": st.one_of(
        st.dictionaries(unicode_text, unicode_text, max_size=3).map(json.dumps),
        json_values.map(json.dumps),
        st.sampled_from(
            [
                '{"a": "\\ud800"}',
                '{"\\udfff": "x"}',
                _deep(10_000, "[", "]"),
                "{" * 10_000,
                '{"a": ' + "9" * 5000 + "}",
                "NaN",
                "",
            ]
        ),
    ),
    "trade_conditions": st.lists(field_text.filter(lambda t: "|" not in t), max_size=3).map("|".join),
}
for _decimal_column in ("price", "quantity", "bid_price", "bid_quantity", "ask_price", "ask_quantity"):
    CSV_VALUES[_decimal_column] = decimal_texts


@st.composite
def csv_rows(draw: st.DrawFn, kind: str) -> tuple[list[str], list[tuple[int, bytes]]]:
    required = list(csv_files.REQUIRED[kind])  # type: ignore[index]
    optional = draw(st.lists(st.sampled_from(csv_files.OPTIONAL[kind]), unique=True))  # type: ignore[index]
    columns = draw(st.permutations(required + optional))
    lines = []
    for number in range(draw(st.integers(1, 6))):
        shape = draw(st.integers(0, 5))
        if shape == 0:
            raw = draw(st.binary(max_size=80).filter(lambda b: b"\n" not in b))
        else:
            values = [draw(CSV_VALUES.get(column, unicode_text)) for column in columns]
            if shape == 1:
                values = values[: draw(st.integers(0, len(values) + 1))] + draw(
                    st.lists(unicode_text, max_size=1)
                )
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow(values)
            raw = out.getvalue().encode()
            if shape == 2:  # damage: stray quotes and carriage returns inside the line
                position = draw(st.integers(0, len(raw)))
                raw = (
                    raw[:position]
                    + draw(st.sampled_from([b'"', b"\r", b'"x"', b"\x00", b","]))
                    + raw[position:]
                )
        lines.append((number + 2, raw.replace(b"\n", b"")))
    return columns, lines


@FUZZ
@given(csv_rows(TRADE))
def test_every_csv_trade_row_is_a_record_or_a_rejection(
    case: tuple[list[str], list[tuple[int, bytes]]],
) -> None:
    columns, lines = case
    chunk = csv_files.CsvParser(TRADE, columns, RECEIVED).parse(lines)
    assert_every_line_answered(chunk, lines, TRADE)


@FUZZ
@given(csv_rows(QUOTE))
def test_every_csv_quote_row_is_a_record_or_a_rejection(
    case: tuple[list[str], list[tuple[int, bytes]]],
) -> None:
    columns, lines = case
    chunk = csv_files.CsvParser(QUOTE, columns, RECEIVED).parse(lines)
    assert_every_line_answered(chunk, lines, QUOTE)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="k2-fuzz-") as folder:
        yield Path(folder)


header_lines = st.one_of(
    st.binary(max_size=120),
    st.lists(
        st.one_of(st.sampled_from(csv_files.REQUIRED[TRADE] + csv_files.OPTIONAL[TRADE]), unicode_text),
        max_size=14,
    ).map(lambda names: ",".join(names).encode()),
)


@FUZZ
@given(st.sampled_from([TRADE, QUOTE]), header_lines, st.binary(max_size=60))
def test_csv_headers_are_columns_or_a_value_error(
    scratch: Path, kind: str, header: bytes, rest: bytes
) -> None:
    path = scratch / "header.csv"
    path.write_bytes(header + b"\n" + rest)
    try:
        columns = csv_files.read_header(kind, path)  # type: ignore[arg-type]
    except ValueError as error:  # the loader's refusal (UnicodeDecodeError is one too)
        assert str(error)
    else:
        assert set(csv_files.REQUIRED[kind]) <= set(columns)  # type: ignore[index]


reference_rows = st.lists(
    st.lists(st.one_of(field_text, st.sampled_from(["company_id", "symbol", "7078", "BHP"])), max_size=4).map(
        ",".join
    ),
    max_size=5,
).map("\n".join)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=120),
        reference_rows.map(str.encode),
        reference_rows.map(lambda rows: ("company_id,symbol,name\n" + rows).encode()),
    )
)
def test_asx_reference_data_is_a_mapping_or_a_refused_error(scratch: Path, content: bytes) -> None:
    path = scratch / "company_info.csv"
    path.write_bytes(content)
    try:
        symbols = asx.load_symbols(path)
    except (OSError, ValueError, KeyError) as error:  # what the loader turns into FAILED_PRECONDITION
        assert str(error) or isinstance(error, KeyError)
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in symbols.items())


HUGE_FIELD = b"x" * 200_000  # beyond the csv module's field size limit


@pytest.mark.parametrize(
    "content", [b"trade_id," + HUGE_FIELD + b"\n", b'"' + HUGE_FIELD, b"\xff\xfe\n", b""]
)
def test_pathological_csv_headers_are_a_value_error(scratch: Path, content: bytes) -> None:
    path = scratch / "pathological.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        csv_files.read_header(TRADE, path)


@pytest.mark.parametrize(
    "content",
    [b"company_id,symbol\n1," + HUGE_FIELD + b"\n", b"company_id,symbol\n7078\n", b"symbol\nBHP\n", b"\xff"],
)
def test_pathological_reference_data_is_a_value_error(scratch: Path, content: bytes) -> None:
    path = scratch / "company_info.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        asx.load_symbols(path)


@FUZZ
@given(st.one_of(st.text(max_size=20), st.from_regex(r"\d{1,6}", fullmatch=True)))
def test_asx_file_names_are_company_ids_or_a_value_error(stem: str) -> None:
    try:
        company_id = asx.company_id_of(Path(f"{stem}.csv"))
    except ValueError as error:
        assert str(error)
    else:
        assert company_id.isdigit()


# ---- protobuf requests ---------------------------------------------------------------------------------------

timestamps = st.builds(
    Timestamp,
    seconds=st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-62135596800, 253402300799)),
    nanos=st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 999_999).map(lambda u: u * 1000)),
)
proto_text = st.one_of(
    unicode_text, st.text(max_size=300).filter(lambda t: all(not 0xD800 <= ord(c) < 0xE000 for c in t))
)
int64 = st.integers(-(2**63), 2**63 - 1)
enum_values = st.one_of(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))


@st.composite
def trade_messages(draw: st.DrawFn) -> Trade:
    trade = Trade(
        message_id=draw(st.one_of(st.uuids().map(str), proto_text)),
        trade_id=draw(proto_text),
        symbol=draw(proto_text),
        exchange=draw(proto_text),
        asset_class=draw(enum_values),
        price=draw(decimal_texts),
        quantity=draw(decimal_texts),
        currency=draw(proto_text),
        side=draw(enum_values),
        trade_conditions=draw(st.lists(proto_text, max_size=3)),
        vendor_data=draw(st.dictionaries(proto_text, proto_text, max_size=3)),
    )
    for field in ("source_sequence", "platform_sequence"):
        if draw(st.booleans()):
            setattr(trade, field, draw(int64))
    for field in ("timestamp", "ingestion_timestamp"):
        if draw(st.integers(0, 3)):
            getattr(trade, field).CopyFrom(draw(timestamps))
    return trade


@st.composite
def quote_messages(draw: st.DrawFn) -> Quote:
    quote = Quote(
        message_id=draw(st.one_of(st.uuids().map(str), proto_text)),
        quote_id=draw(proto_text),
        symbol=draw(proto_text),
        exchange=draw(proto_text),
        asset_class=draw(enum_values),
        currency=draw(proto_text),
        vendor_data=draw(st.dictionaries(proto_text, proto_text, max_size=3)),
    )
    for field in ("bid_price", "bid_quantity", "ask_price", "ask_quantity"):
        if draw(st.booleans()):
            setattr(quote, field, draw(decimal_texts))
    for field in ("source_sequence", "platform_sequence"):
        if draw(st.booleans()):
            setattr(quote, field, draw(int64))
    if draw(st.integers(0, 3)):
        quote.timestamp.CopyFrom(draw(timestamps))
    return quote


def assert_record_or_field_error(kind: str, message: Trade | Quote) -> None:
    convert = trade_from_proto if kind == TRADE else quote_from_proto
    try:
        record = convert(message, RECEIVED)  # type: ignore[arg-type]
    except FieldError as error:  # answered as a Rejection(index, field, reason)
        assert isinstance(error, ValueError) and error.reason
    else:
        assert_carriable(kind, record)


@FUZZ
@given(trade_messages())
def test_any_trade_message_is_a_record_or_a_field_error(message: Trade) -> None:
    assert_record_or_field_error(TRADE, message)


@FUZZ
@given(quote_messages())
def test_any_quote_message_is_a_record_or_a_field_error(message: Quote) -> None:
    assert_record_or_field_error(QUOTE, message)


@FUZZ
@given(
    st.sampled_from([TRADE, QUOTE]),
    st.one_of(
        st.binary(max_size=300),
        trade_messages().map(lambda m: m.SerializeToString()),
        st.tuples(
            trade_messages().map(lambda m: m.SerializeToString()), st.integers(0, 300), st.binary(max_size=8)
        ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),
    ),
)
def test_arbitrary_bytes_are_a_decode_error_or_a_record_or_a_field_error(kind: str, data: bytes) -> None:
    message_type = Trade if kind == TRADE else Quote
    try:
        message = message_type.FromString(data)
    except DecodeError:  # what gRPC answers as a failed call, before any handler runs
        return
    assert_record_or_field_error(kind, message)


# ---- the live PublishTrades RPC ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_ingest(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with platform_processes(kafka_bootstrap, tmp_path_factory.mktemp("fuzz"), ("ingest",)) as running:
        yield running


LIVE = settings(
    max_examples=int(os.environ.get("K2_FUZZ_LIVE_EXAMPLES", "40")),
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
WRITE = (("authorization", f"Bearer {TOKEN}"),)


@LIVE
@given(
    st.lists(
        st.tuples(st.one_of(st.just(""), proto_text), st.lists(trade_messages(), max_size=6)),
        min_size=1,
        max_size=4,
    )
)
def test_every_published_batch_is_answered_item_by_item(
    live_ingest: Platform, batches: list[tuple[str, list[Trade]]]
) -> None:
    run = (
        uuid.uuid4().hex
    )  # batch ids of this example only (a batch id seen before is answered as a duplicate)
    requests = [
        ingest_pb2.PublishTradesRequest(batch_id=f"{run}{batch_id}" if batch_id else "", trades=trades)
        for batch_id, trades in batches
    ]
    with grpc.insecure_channel(live_ingest.address("ingest")) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        try:
            answers = list(stub.PublishTrades(iter(requests), metadata=WRITE, timeout=15))
        except grpc.RpcError as error:  # a request refused as a whole: a clear status, never a hang
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert any(len(r.batch_id) > MAX_TEXT_LENGTH for r in requests)
            return
    assert len(answers) == len(requests)
    first_answers: dict[str, ingest_pb2.PublishTradesResponse] = {}
    for request, answer in zip(requests, answers, strict=True):
        assert answer.batch_id == request.batch_id
        if answer.duplicate:  # the first copy's outcome, again
            first = first_answers[request.batch_id]
            assert (answer.accepted, list(answer.rejections)) == (first.accepted, list(first.rejections))
            continue
        indexes = [rejection.index for rejection in answer.rejections]
        assert indexes == sorted(set(indexes)) and all(0 <= i < len(request.trades) for i in indexes)
        assert answer.accepted + len(indexes) == len(request.trades)
        assert all(rejection.reason for rejection in answer.rejections)
        if request.batch_id:
            first_answers[request.batch_id] = answer


@LIVE
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_arbitrary_request_bytes_get_an_answer_or_a_status(live_ingest: Platform, raws: list[bytes]) -> None:
    with grpc.insecure_channel(live_ingest.address("ingest")) as channel:
        call = channel.stream_stream(
            "/k2.ingest.v1.IngestService/PublishTrades",
            request_serializer=lambda raw: raw,
            response_deserializer=ingest_pb2.PublishTradesResponse.FromString,
        )
        try:
            answers = list(call(iter(raws), metadata=WRITE, timeout=15))
        except grpc.RpcError as error:
            # bytes that are no PublishTradesRequest end the call (after the batches before them are answered),
            # as INVALID_ARGUMENT with the parser's reason
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert "not a valid protobuf message" in (error.details() or ""), error
        else:
            assert len(answers) == len(raws)
    live_ingest.assert_serving("ingest")
