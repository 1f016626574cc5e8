"""Combined-stream frames → v2 trade and quote records (the per-message hot path of the feed).

`<s>@trade` becomes a trade: side from `m` (buyer is maker → the taker sold: SELL), trade_id
BINANCE-<SYMBOL>-<t> (Binance numbers trades per symbol), source_sequence t, the trade time T as timestamp,
message_id a uuid5 of the trade id, so of symbol and id (the copies a switch-over or reconnect may produce are
recognisable downstream, and two symbols' trades of one id are not). `<s>@bookTicker` becomes a quote stamped
with the receive time, since Binance sends it without an event time. Prices and quantities are the exact
decimals of the strings; a value that does not fit decimal(38,18) is rejected, never rounded.

Frames that are not valid (bad JSON, a missing field, a non-decimal price) are dead-lettered with the raw
bytes and the reason; unknown event types and unknown fields are counted and skipped.

A plain trade frame is written by native code (k2._native.TradeFrameEncoder), and so is a plain bookTicker frame
(QuoteFrameEncoder; both sides of the book present), into the same bytes as the plain path below (tests check
it); any other frame they hand back, and the plain path reads it.
"""

import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from time import time_ns
from typing import Any

import orjson

from k2._native import QuoteFrameEncoder, TradeFrameEncoder
from k2.core import avro
from k2.core.avro_writer import LongWriter, decimal_writer, plain_decimal_writer, text_written
from k2.core.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    FieldError,
    Record,
    RecordKind,
    check_decimal,
    check_name,
    check_text,
    parse_decimal,
    validate_quote,
)
from k2.core.records import QUOTE as QUOTE_KIND
from k2.core.records import TRADE as TRADE_KIND
from k2.core.timestamps import MICROS_RANGE, from_micros

from .sequencing import SymbolState

EXCHANGE = "BINANCE"
ASSET_CLASS = "CRYPTO"
SOURCE = "binance"
SERVER_SHUTDOWN = "serverShutdown"
SERVER_SHUTDOWN_STREAM = "!serverShutdown"
# message_id = uuid5(this namespace, trade_id or quote_id)
MESSAGE_ID_NAMESPACE = uuid.UUID("3d0f6c1e-8a57-5b0e-9b7e-2f4c1a9d8e61")
TRADE_KEYS = frozenset("eEstpqTmM")
QUOTE_KEYS = frozenset("usbBaA")
# Binance keys → the record fields they become (dead-letter headers name the record field).
FIELD_OF_KEY = {
    "t": "source_sequence",
    "p": "price",
    "q": "quantity",
    "T": "timestamp",
    "m": "side",
    "E": "event_time",
    "s": "symbol",
    "u": "source_sequence",
    "b": "bid_price",
    "B": "bid_quantity",
    "a": "ask_price",
    "A": "ask_quantity",
    "stream": "stream",
    "data": "data",
}
TRADE = 0
QUOTE = 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INVALID = object()

TRADE_ID_PREFIX = f"{EXCHANGE}-"
_PLAIN_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,18})?").fullmatch  # fits decimal(38,18) as written
_NAMESPACE_SHA1 = hashlib.sha1(MESSAGE_ID_NAMESPACE.bytes)
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def message_id(name: str) -> str:
    """str(uuid.uuid5(MESSAGE_ID_NAMESPACE, name)), at a fraction of the uuid module's cost."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(name.encode())
    h = digest.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def trade_id_of(symbol: str, trade_id: int) -> str:
    """The v2 trade_id of a Binance trade: its id is unique only within its symbol."""
    return f"{TRADE_ID_PREFIX}{symbol}-{trade_id}"


def exact_decimal(field: str, value: Any) -> Decimal:
    """A Binance decimal string (or a JSON number parsed as Decimal) checked against decimal(38,18)."""
    if type(value) is str and _PLAIN_DECIMAL(value):
        return Decimal(value)
    if isinstance(value, str):
        return parse_decimal(field, value)  # exponents, signs, trailing zeros beyond 18 places: exact checks
    if isinstance(value, Decimal) or type(value) is int:  # a JSON number (parsed exactly, never as float)
        return check_decimal(field, Decimal(value))
    raise FieldError(field, f"not a decimal string: {value!r:.40}")


def _integer(key: str, value: Any) -> int:
    if type(value) is not int:
        raise FieldError(FIELD_OF_KEY[key], f"{key}: not an integer: {value!r:.40}")
    if not INT64_MIN <= value <= INT64_MAX:  # ids and times are Avro longs
        raise FieldError(FIELD_OF_KEY[key], f"{key}: outside the 64-bit range: {value!r:.40}")
    return value


_TRADE_HEADER_AND_ID_SIZE = avro.CURRENT_HEADERS[TRADE_KIND] + b"H"  # message ids: 36 characters
# platform_sequence (null), then vendor_data up to the event time's value.
_TAKER_SOLD, _TAKER_BOUGHT = (
    b"\x00\x02\x04" + text_written("is_buyer_maker") + text_written(maker) + text_written("event_time")
    for maker in ("true", "false")
)
_QUOTE_HEADER_AND_ID_SIZE = avro.CURRENT_HEADERS[QUOTE_KIND] + b"H"
# platform_sequence (null), then vendor_data: the quote's time is the receive time.
_QUOTE_TAIL = b"\x00\x02\x02" + text_written("timestamp_source") + text_written("receive_time") + b"\x00"
_plain_decimal = plain_decimal_writer(DECIMAL_PRECISION, DECIMAL_SCALE)
_write_decimal = decimal_writer(DECIMAL_PRECISION, DECIMAL_SCALE)


def _decimal_written(value: Decimal) -> bytes:
    out = bytearray()
    _write_decimal(out, value)
    return bytes(out)


class _SymbolWritten:
    """What every trade of a symbol shares, as written: its key, symbol + exchange + asset class, and currency +
    side + (empty) trade_conditions for either side; and the quotes' symbol + exchange + asset class."""

    __slots__ = ("buy", "head", "key", "quote_head", "sell")

    def __init__(self, state: SymbolState):
        self.key = state.symbol.encode()
        self.head = (
            text_written(state.symbol)
            + text_written(EXCHANGE)
            + avro.enum_written(TRADE_KIND, "asset_class", ASSET_CLASS)
        )
        self.quote_head = (
            text_written(state.symbol)
            + text_written(EXCHANGE)
            + avro.enum_written(QUOTE_KIND, "asset_class", ASSET_CLASS)
        )
        self.buy, self.sell = (
            text_written(state.currency) + avro.enum_written(TRADE_KIND, "side", side) + b"\x00"
            for side in ("BUY", "SELL")
        )


def _quotes_written_natively(state: SymbolState) -> bool:
    """Whether every plain quote of the symbol is valid as written (validate_quote's checks that the native encoder
    does not make); a symbol that is not has its quotes read, and refused, by the plain path."""
    try:
        check_name("symbol", state.symbol)
        check_text("currency", state.currency)
    except FieldError:
        return False
    return True


_TRADE_TIMES = (MICROS_RANGE[0], MICROS_RANGE[1] + 1)  # in microseconds: what a datetime holds


def _encoded(kind: RecordKind, record: Record, received_us: int) -> tuple[bytes, bytes, int]:
    return record["symbol"].encode(), avro.encode(kind, record), received_us


class MalformedFrame(Exception):
    def __init__(self, category: str, reason: str, field: str = ""):
        super().__init__(reason)
        self.category = category
        self.reason = reason
        self.field = field


class FrameParser:
    """Parses frames into the `trades`/`quotes` lists of `out` (PublishBuffer) and dead letters into its
    `dead_letters`. Returns control replies and serverShutdown events to the caller (the connection)."""

    def __init__(self, states: list[SymbolState], stream_types: Sequence[str], microseconds: bool, out: Any):
        self.out = out
        self._scale = 1 if microseconds else 1000
        self._stream_types = stream_types
        self._timestamps, self._sequences, self._received = LongWriter(), LongWriter(), LongWriter()
        self.route(states)
        decoder = json.JSONDecoder(parse_float=Decimal)
        self._scan = decoder.scan_once  # type: ignore[attr-defined]
        self._loads = decoder.decode
        self.unknown_events: Counter[str] = Counter()
        self.unknown_fields: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()

    def route(self, states: list[SymbolState]) -> None:
        """Parses the streams of exactly these symbols from now on (the feed's symbols changed)."""
        stream_types = self._stream_types
        routes: dict[str, tuple[int, SymbolState]] = {}
        written = {state.symbol: _SymbolWritten(state) for state in states}
        for state in states:
            if "trade" in stream_types:
                routes[state.trade_stream] = (TRADE, state)
            if "bookTicker" in stream_types:
                routes[state.quote_stream] = (QUOTE, state)
        trade_states = [state for state in states if "trade" in stream_types]
        encode_plain_trade = TradeFrameEncoder(
            [
                (state.trade_stream, w.key, w.head, w.buy, w.sell)
                for state in trade_states
                for w in [written[state.symbol]]
            ],
            _TRADE_HEADER_AND_ID_SIZE,
            MESSAGE_ID_NAMESPACE.bytes,
            TRADE_ID_PREFIX.encode(),
            _TAKER_SOLD,
            _TAKER_BOUGHT,
            self._scale,
            _TRADE_TIMES,
            (DECIMAL_PRECISION, DECIMAL_SCALE),
        ).encode
        quote_states = [
            state for state in states if "bookTicker" in stream_types and _quotes_written_natively(state)
        ]
        encode_plain_quote = QuoteFrameEncoder(
            [
                (
                    state.quote_stream,
                    w.key,
                    f"{EXCHANGE}-{state.symbol}-".encode(),
                    w.quote_head,
                    state.currency.encode(),
                )
                for state in quote_states
                for w in [written[state.symbol]]
            ],
            _QUOTE_HEADER_AND_ID_SIZE,
            MESSAGE_ID_NAMESPACE.bytes,
            _QUOTE_TAIL,
            (DECIMAL_PRECISION, DECIMAL_SCALE),
        ).encode
        # Swapped together (no await in between): the encoders' positions index _trade_states and _quote_states.
        self._routes, self._written = routes, written
        self._trade_states, self._quote_states = trade_states, quote_states
        self._encode_plain_trade, self._encode_plain_quote = encode_plain_trade, encode_plain_quote

    def parse(self, raw: bytes) -> dict[str, Any] | None:
        received = time_ns() // 1000
        plain_trade = self._encode_plain_trade(raw, received)
        if plain_trade is not None:
            self._plain_trade(plain_trade, received)
            return None
        plain_quote = self._encode_plain_quote(raw, received)
        if plain_quote is not None:
            self._plain_quote(plain_quote, received)
            return None
        try:
            message = orjson.loads(raw)
            stream = message["stream"]
            route = self._routes.get(stream)
            data = message["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            route = None
        # orjson reads a number with a fraction or exponent as a float: such frames, and all but the routed
        # events, are decoded again by the plain path (decimals as Decimal, the same errors as always).
        if route is None or type(data) is not dict or float in map(type, data.values()):
            return self._parse_plain(raw)
        self._routed(raw, stream, data, route)
        return None

    def _parse_plain(self, raw: bytes) -> dict[str, Any] | None:
        try:
            text = raw.decode()
            message, end = self._scan(text, 0)  # the C scanner alone: no whitespace handling, no copies
        except (ValueError, StopIteration, RecursionError):  # UnicodeDecodeError, JSONDecodeError included
            text, end = "", -1
        if end != len(text):  # leading/trailing whitespace, trailing data or an error: decode it the long way
            message = self._decode_slowly(raw)
            if message is _INVALID:
                return None
        try:
            stream = message["stream"]
            data = message["data"]
        except (KeyError, TypeError):
            return self._unwrapped(raw, message)
        try:
            route = self._routes.get(stream)
        except TypeError:  # an unhashable stream (a JSON array or object): rejected as not a string
            route = None
        if route is None:
            return self._unrouted(raw, stream, data)
        self._routed(raw, stream, data, route)
        return None

    def _routed(self, raw: bytes, stream: str, data: Any, route: tuple[int, SymbolState]) -> None:
        kind, state = route
        state.messages += 1
        try:
            if kind == TRADE:
                self._trade(data, state)
            else:
                self._quote(data, state)
        except MalformedFrame as error:
            self._reject(raw, error, stream)
        except FieldError as error:
            self._reject(raw, MalformedFrame("invalid_value", str(error), error.field), stream)
        except KeyError as error:
            key = str(error.args[0])
            self._reject(
                raw,
                MalformedFrame("missing_field", f"missing field {key!r}", FIELD_OF_KEY.get(key, key)),
                stream,
            )
        except TypeError:
            self._reject(raw, MalformedFrame("invalid_value", "data is not a JSON object", "data"), stream)
        except ArithmeticError as error:  # e.g. a timestamp beyond the datetime range
            self._reject(raw, MalformedFrame("invalid_value", f"value out of range: {error}"), stream)

    def _decode_slowly(self, raw: bytes) -> Any:
        try:
            return self._loads(raw.decode())
        except (ValueError, RecursionError) as error:
            self._reject(raw, MalformedFrame("invalid_json", f"invalid JSON: {error}"))
            return _INVALID

    def _plain_trade(self, encoded: tuple[int, int, int, bytes, bytes], received: int) -> None:
        """A trade written natively: sequenced as _trade sequences it."""
        position, trade_id, event_us, key, value = encoded
        state = self._trade_states[position]
        state.messages += 1
        if not state.take_trade_id(trade_id):
            return
        state.last_event_us = event_us
        self.out.trades.append((key, value, received))
        state.trades += 1

    def _plain_quote(self, encoded: tuple[int, int, bytes, bytes], received: int) -> None:
        """A quote written natively: sequenced as _quote sequences it."""
        position, update_id, key, value = encoded
        state = self._quote_states[position]
        state.messages += 1
        if update_id <= state.last_update_id:
            state.duplicate_quotes += 1
            return
        state.last_update_id = update_id
        self.out.quotes.append((key, value, received))
        state.quotes += 1

    def _trade(self, data: dict[str, Any], state: SymbolState) -> None:
        trade_id = _integer("t", data["t"])
        # The whole frame is validated before its id moves the sequence: a rejected frame's id (a corrupt one
        # could be anything) is dead-lettered and, once the next trade comes, reported as a gap to backfill.
        if data["s"] != state.symbol:
            raise FieldError("symbol", f"s: {data['s']!r:.40} on the {state.trade_stream} stream")
        price = data["p"]
        quantity = data["q"]
        # Plain positive decimal strings (Binance's) straight to their Avro bytes; anything else by the plain path.
        price_written = _plain_decimal(price) if type(price) is str else b""
        price_value = None if price_written else exact_decimal("price", price)
        quantity_written = _plain_decimal(quantity) if type(quantity) is str else b""
        quantity_value = None if quantity_written else exact_decimal("quantity", quantity)
        if price_value is not None:
            if price_value <= 0:
                raise FieldError("price", "p: must be positive")
            price_written = _decimal_written(price_value)
        if quantity_value is not None:
            if quantity_value <= 0:
                raise FieldError("quantity", "q: must be positive")
            quantity_written = _decimal_written(quantity_value)
        maker = data["m"]
        if maker is not True and maker is not False:
            raise FieldError("side", f"m: not a boolean: {maker!r:.40}")
        micros = _integer("T", data["T"]) * self._scale
        from_micros(micros)  # a time beyond the datetime range is refused (OverflowError)
        event_time = data["E"]
        if type(event_time) is not int:
            raise FieldError("event_time", f"E: not an integer: {event_time!r:.40}")
        if not state.take_trade_id(trade_id):
            return
        state.last_event_us = micros
        if len(data) != 9 or "M" not in data:  # the 8 other known keys were all read above
            self._count_unknown_fields(data, TRADE_KEYS)
        trade_id_text = trade_id_of(state.symbol, trade_id)
        received = time_ns() // 1000
        written = self._written[state.symbol]
        # The trade's Avro v2 message, field by field (the schema's order).
        self.out.trades.append(
            (
                written.key,
                b"".join(
                    (
                        _TRADE_HEADER_AND_ID_SIZE,
                        message_id(trade_id_text).encode(),
                        text_written(trade_id_text),
                        written.head,
                        self._timestamps.written(micros),
                        price_written,
                        quantity_written,
                        written.sell if maker else written.buy,  # currency, side, no trade_conditions
                        b"\x02",
                        self._sequences.written(trade_id),
                        self._received.written(received),
                        _TAKER_SOLD if maker else _TAKER_BOUGHT,
                        text_written(str(event_time * self._scale)),
                        b"\x00",
                    )
                ),
                received,
            )
        )
        state.trades += 1

    def _quote(self, data: dict[str, Any], state: SymbolState) -> None:
        update_id = _integer("u", data["u"])
        if update_id <= state.last_update_id:  # a copy from the overlapping connection, or superseded
            state.duplicate_quotes += 1
            return
        if data["s"] != state.symbol:
            raise FieldError("symbol", f"s: {data['s']!r:.40} on the {state.quote_stream} stream")
        bid_price: Decimal | None = exact_decimal("bid_price", data["b"])
        bid_quantity: Decimal | None = exact_decimal("bid_quantity", data["B"])
        ask_price: Decimal | None = exact_decimal("ask_price", data["a"])
        ask_quantity: Decimal | None = exact_decimal("ask_quantity", data["A"])
        if not bid_quantity:  # an empty side of the book
            bid_price = bid_quantity = None
        elif bid_quantity < 0:
            raise FieldError("bid_quantity", "B: must not be negative")
        if not ask_quantity:
            ask_price = ask_quantity = None
        elif ask_quantity < 0:
            raise FieldError("ask_quantity", "A: must not be negative")
        if len(data) != 6:
            self._count_unknown_fields(data, QUOTE_KEYS)
        state.last_update_id = update_id
        quote_id = f"BINANCE-{state.symbol}-{update_id}"
        received_us = time_ns() // 1000
        received = from_micros(received_us)
        self.out.quotes.append(
            _encoded(
                QUOTE_KIND,
                validate_quote(
                    {
                        "message_id": message_id(quote_id),
                        "quote_id": quote_id,
                        "symbol": state.symbol,
                        "exchange": EXCHANGE,
                        "asset_class": ASSET_CLASS,
                        "timestamp": received,
                        "bid_price": bid_price,
                        "bid_quantity": bid_quantity,
                        "ask_price": ask_price,
                        "ask_quantity": ask_quantity,
                        "currency": state.currency,
                        "source_sequence": update_id,
                        "ingestion_timestamp": received,
                        "platform_sequence": None,
                        "vendor_data": {"timestamp_source": "receive_time"},
                    }
                ),
                received_us,
            )
        )
        state.quotes += 1

    def _unwrapped(self, raw: bytes, message: Any) -> dict[str, Any] | None:
        """A frame without the combined-stream wrapper: a control reply, a bare event, or garbage."""
        if not isinstance(message, dict):
            self._reject(raw, MalformedFrame("invalid_value", "frame is not a JSON object"))
            return None
        if "id" in message and ("result" in message or "error" in message):
            return message
        event = message.get("e")
        if event == SERVER_SHUTDOWN:
            return message
        if "stream" in message or "data" in message:
            missing = "data" if "stream" in message else "stream"
            self._reject(raw, MalformedFrame("missing_field", f"missing field {missing!r}", missing))
            return None
        self.unknown_events[str(event) if event is not None else "unwrapped"] += 1
        return None

    def _unrouted(self, raw: bytes, stream: Any, data: Any) -> dict[str, Any] | None:
        event = data.get("e") if isinstance(data, dict) else None
        if stream == SERVER_SHUTDOWN_STREAM or event == SERVER_SHUTDOWN:
            return {"e": SERVER_SHUTDOWN, "stream": stream}
        if not isinstance(stream, str):
            self._reject(raw, MalformedFrame("invalid_value", "stream is not a string", "stream"))
            return None
        self.unknown_events[str(event) if event is not None else stream.rpartition("@")[2] or stream] += 1
        return None

    def _count_unknown_fields(self, data: dict[str, Any], known: frozenset[str]) -> None:
        for key in data.keys() - known:
            self.unknown_fields[key] += 1

    def _reject(self, raw: bytes, error: MalformedFrame, stream: Any = None) -> None:
        self.malformed[error.category] += 1
        source = f"{SOURCE}:{stream}" if isinstance(stream, str) else SOURCE
        self.out.dead_letters.append((raw, error.reason, error.field, source))
