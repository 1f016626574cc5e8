"""bookTicker frames written natively (k2._native.QuoteFrameEncoder) are byte for byte what the Python parser
makes of them: the same Kafka messages, dead letters, counters and symbol states, for random frames and at every
limit. The Python parser is the judge: each frame is also given to it with the "stream" key escaped, which it
reads as the same key and the native encoder never takes."""

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import positive_decimals
from test_ingest_binance import FRAME_SYMBOLS, INT64, ListSink, parser_outcome

from k2.core import avro
from k2.core.protos import decimal_text
from k2.services.ingest.binance import BinanceFeed, BinanceSettings
from k2.services.ingest.binance.parsing import MESSAGE_ID_NAMESPACE


def quote_frame_pair(
    stream: str,
    event: dict[str, Any],
    separators: tuple[str, str] = (",", ":"),
    ensure_ascii: bool = True,
    ending: str = "",
) -> tuple[bytes, bytes]:
    """The frame of a bookTicker event, and the same frame with its "stream" key escaped."""
    data = json.dumps(event, separators=separators, ensure_ascii=ensure_ascii)
    frame = (
        json.dumps({"stream": stream}, separators=separators, ensure_ascii=ensure_ascii)[:-1]
        + f'{separators[0]}"data"{separators[1]}{data}'
        + "}"
        + ending
    )
    escaped = frame.replace('"stream"', '"str\\u0065am"', 1)
    if ending == " x":  # not JSON: the reason names a position, so the plain frame is padded to the same size
        frame = frame.replace('"stream"', '"stream"     ', 1)
    return frame.encode(), escaped.encode()


@st.composite
def book_ticker_frames(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A bookTicker frame (and its escaped copy), mostly one native code writes, each value at its edges one time in
    sixteen; update ids repeat (copies and superseded quotes)."""

    def value(valid: st.SearchStrategy[Any], edges: st.SearchStrategy[Any]) -> Any:
        return draw(edges) if draw(st.integers(0, 15)) == 0 else draw(valid)

    symbol = draw(st.sampled_from([symbol for symbol, _ in FRAME_SYMBOLS]))
    numbers = st.one_of(
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.none(),
        st.booleans(),
        st.text(max_size=3),
    )
    plain_decimals = positive_decimals().map(decimal_text)
    edge_decimals = st.one_of(
        numbers,
        st.sampled_from(
            [
                "0",
                "0.000",
                "0.00000000",
                "1e3",
                "-1",
                "1.",
                ".5",
                " 1",
                "1.0000000000000000000",
                "123456789012345678901",
                "0.0000000000000000001",
                "99999999999999999999.999999999999999999",
                "0.000000000000000001",
                "١",
            ]
        ),
    )
    event: dict[str, Any] = {
        "u": value(st.integers(0, 40), st.one_of(numbers, st.sampled_from([-1, INT64 - 1, -INT64, INT64]))),
        "s": value(st.just(symbol), st.sampled_from(["", "btcusdt", "ETHBTC", "BTCUSDT", "ÉTHBTC"])),
        "b": value(plain_decimals, edge_decimals),
        "B": value(plain_decimals, edge_decimals),
        "a": value(plain_decimals, edge_decimals),
        "A": value(plain_decimals, edge_decimals),
    }
    for key in (
        draw(st.lists(st.sampled_from(sorted(event)), max_size=2)) if draw(st.integers(0, 15)) == 0 else ()
    ):
        event.pop(key, None)
    if draw(st.integers(0, 31)) == 0:
        event["X"] = draw(numbers)
    stream = symbol.lower() + draw(st.sampled_from(["@bookTicker"] * 14 + ["@trade", "@depth"]))
    return quote_frame_pair(
        stream,
        event,
        draw(st.sampled_from([(",", ":"), (", ", ": ")])),
        draw(st.booleans()),
        draw(st.sampled_from(["", "", "", "", "", "", "\n", " x"])),
    )


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(book_ticker_frames(), max_size=12))
def test_book_ticker_frames_written_natively_are_what_the_python_parser_makes_of_them(
    microseconds: bool, frames: list[tuple[bytes, bytes]]
) -> None:
    assert parser_outcome([plain for plain, _ in frames], microseconds) == parser_outcome(
        [escaped for _, escaped in frames], microseconds
    )


def test_book_ticker_frames_at_every_limit_are_written_natively_as_the_python_parser_writes_them() -> None:
    quote = {"u": 0, "s": "BTCUSDT", "b": "97123.45", "B": "0.5", "a": "97123.46", "A": "1.25"}
    changes: list[dict[str, Any]] = [
        {name: text}
        for name in "bBaA"
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
            "1e3",
        )
    ]
    changes += [{"u": value} for value in (INT64 - 1, -INT64, 0, -1)]
    changes += [{"b": "0", "B": "0"}, {"a": "0.0", "A": "0.00"}, {"b": "5", "a": "4"}]  # empty sides, crossed
    frames = [
        quote_frame_pair("btcusdt@bookTicker", quote | {"u": number} | change)
        for number, change in enumerate(changes, 1)
    ]
    assert parser_outcome([plain for plain, _ in frames], True) == parser_outcome(
        [escaped for _, escaped in frames], True
    )


@pytest.mark.parametrize(
    "frame",
    [
        b'{"stream":"btcusdt@bookTicker","data":{"u":7,"s":"BTCUSDT","b":"1.5","B":"2","a":"1.6","A":"3"}}',
        b'{"data":{"A":"3","a":"1.6","B":"2","b":"1.5","s":"BTCUSDT","u":7},"stream":"btcusdt@bookTicker"}',
    ],
)
def test_plain_book_ticker_frames_are_written_natively(frame: bytes) -> None:
    feed = BinanceFeed(BinanceSettings(symbols=["BTCUSDT"]), ListSink())
    encode = feed.parser._encode_plain_quote
    position, update_id, key, value = encode(frame, 1_764_000_000_000_000)
    assert (position, update_id, key) == (0, 7, b"BTCUSDT")
    record = avro.decode(value)[1]
    assert record["message_id"] == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "BINANCE-BTCUSDT-7"))
    assert (record["bid_price"], record["ask_quantity"], record["source_sequence"]) == (
        Decimal("1.5"),
        Decimal(3),
        7,
    )
    assert encode(frame.replace(b'"stream"', b'"str\\u0065am"'), 0) is None
    assert encode(frame.replace(b'"B":"2"', b'"B":"0"'), 0) is None  # an empty side: the Python parser's
