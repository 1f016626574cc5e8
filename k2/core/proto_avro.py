"""Published protobuf messages → their Kafka message values (Avro v2, single-object encoded) and keys, a batch at
a time: the per-item hot path of PublishTrades/PublishQuotes.

Trades are written in one pass, field by field, with no record dict, Decimal or datetime: a decimal string is
read straight into its unscaled decimal(38,18) integer. That pass only takes what it can judge at a glance
(plain decimals that fit, canonical message ids, timestamps from 1970 to 9999, texts within their limits, known
enum values); any other trade goes through trade_from_proto and avro.encode, which accept it or reject it with
its field and reason. Both write the same bytes (tests check it), so which path a trade took never shows."""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from k2.core import avro
from k2.core.avro_writer import (
    SHORT_SIZES,
    LongWriter,
    plain_decimal_writer,
    text_written,
    write_long,
    write_string,
)
from k2.core.protos import ASSET_CLASS_NAMES, EPOCH, SIDE_NAMES, quote_from_proto, trade_from_proto
from k2.core.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    MAX_TEXT_LENGTH,
    QUOTE,
    TRADE,
    FieldError,
    Record,
    RecordKind,
    new_message_id,
)
from k2.marketdata.v1.marketdata_pb2 import Quote, Trade

MessageIds = Callable[[int], str] | None  # the message_id of item i when it has none (None: a random UUID)

_plain_decimal = plain_decimal_writer(DECIMAL_PRECISION, DECIMAL_SCALE)
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
_SECONDS_BEFORE_YEAR_10000 = 253_402_300_800


@dataclass
class EncodedBatch:
    """The accepted items as Kafka messages (keys[i], values[i]) and their positions in the batch; the rejected
    ones by position with the reason."""

    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    rejected: list[tuple[int, FieldError]] = field(default_factory=list)


def _enum_tags(field: str, proto_names: dict[int, str]) -> dict[int, bytes]:
    """proto enum value → the Avro enum symbol as written."""
    return {value: avro.enum_written(TRADE, field, symbol) for value, symbol in proto_names.items()}


_ASSET_CLASS_TAGS = _enum_tags("asset_class", ASSET_CLASS_NAMES)
_SIDE_TAGS = _enum_tags("side", SIDE_NAMES)
_TRADE_HEADER_AND_ID_SIZE = avro.CURRENT_HEADERS[TRADE] + b"H"  # message ids: 36 characters


def _checked_text(text: str) -> bytes:
    """A required text as written, or empty when check_text would refuse it."""
    return text_written(text) if 0 < len(text) <= MAX_TEXT_LENGTH else b""


def _vendor_data(entries: tuple[tuple[str, str], ...]) -> bytes:
    out = bytearray(b"\x02")
    write_long(out, len(entries))
    for name, value in entries:
        write_string(out, name)
        write_string(out, value)
    out.append(0)
    return bytes(out)


def _trade_conditions(conditions: Sequence[str]) -> bytes:
    out = bytearray()
    write_long(out, len(conditions))
    for condition in conditions:
        write_string(out, condition)
    out.append(0)
    return bytes(out)


def _encode_exactly(kind: RecordKind, convert: Callable[..., Record], message: Any, index: int,
                    received: datetime, message_ids: MessageIds, batch: EncodedBatch) -> None:
    try:
        record = convert(message, received, message_ids and message_ids(index))
    except FieldError as error:
        batch.rejected.append((index, error))
        return
    batch.keys.append(record["symbol"].encode())
    batch.values.append(avro.encode(kind, record))
    batch.indexes.append(index)


def encode_trades(messages: Sequence[Trade], received: datetime, message_ids: MessageIds) -> EncodedBatch:
    """Validates and encodes published trades, each exactly as trade_from_proto + avro.encode would; `received`
    is their ingestion timestamp."""
    batch = EncodedBatch()
    keys, values, indexes = batch.keys, batch.values, batch.indexes
    # Per batch, what few distinct values many trades share, as written (empty: not for this path).
    heads: dict[tuple[str, str, int], tuple[bytes, bytes] | tuple[()]] = {}  # (symbol, exchange, asset class)
    tails: dict[tuple[str, int], bytes] = {}  # (currency, side)
    decimals: dict[str, bytes] = {}
    vendor_data_written: dict[tuple[tuple[str, str], ...], bytes] = {}
    timestamp_written, sequence_written = LongWriter().written, LongWriter().written
    platform_sequence_written = LongWriter().written
    ingestion_timestamp = LongWriter().written(_micros(received))
    lengths = SHORT_SIZES
    for index, message in enumerate(messages):
        symbol, exchange, asset_class = message.symbol, message.exchange, message.asset_class
        head = heads.get((symbol, exchange, asset_class))
        if head is None:
            head = heads[symbol, exchange, asset_class] = _head(symbol, exchange, asset_class)
        currency, side = message.currency, message.side
        tail = tails.get((currency, side))
        if tail is None:
            tail = tails[currency, side] = _tail(currency, side)
        price, quantity = message.price, message.quantity
        price_written = decimals.get(price)
        if price_written is None:
            price_written = decimals[price] = _plain_decimal(price)
        quantity_written = decimals.get(quantity)
        if quantity_written is None:
            quantity_written = decimals[quantity] = _plain_decimal(quantity)
        trade_id = message.trade_id.encode()
        message_id = message.message_id
        timestamp = message.timestamp
        seconds, nanos = timestamp.seconds, timestamp.nanos
        if (not head or not tail or not price_written or not quantity_written
                or not 0 < len(trade_id) < 64 or (message_id and _CANONICAL_UUID(message_id) is None)
                or not (0 <= seconds < _SECONDS_BEFORE_YEAR_10000 and 0 <= nanos < 1_000_000_000)
                or nanos % 1000 or not (seconds or nanos or message.HasField("timestamp"))):
            # Not plain (a trade_id of 64 bytes or more included, for brevity): the exact path judges it.
            _encode_exactly(TRADE, trade_from_proto, message, index, received, message_ids, batch)
            continue
        conditions = message.trade_conditions
        vendor_data = message.vendor_data
        if vendor_data:
            entries = tuple([(name, vendor_data[name]) for name in vendor_data])  # the map's order, as dict() has
            vendor_written = vendor_data_written.get(entries)
            if vendor_written is None:
                vendor_written = vendor_data_written[entries] = _vendor_data(entries)
        else:
            vendor_written = b"\x00"
        sequence, platform_sequence = message.source_sequence, message.platform_sequence
        # An optional long: 0x02 and the value when present (zero included), else 0x00 (null).
        sequence_bytes = (b"\x02" + sequence_written(sequence)
                          if sequence or message.HasField("source_sequence") else b"\x00")
        platform_sequence_bytes = (b"\x02" + platform_sequence_written(platform_sequence)
                                   if platform_sequence or message.HasField("platform_sequence") else b"\x00")
        values.append(b"".join((
            _TRADE_HEADER_AND_ID_SIZE,
            (message_id or (message_ids(index) if message_ids else new_message_id())).encode(),
            lengths[len(trade_id)], trade_id, head[1],
            timestamp_written(seconds * 1_000_000 + nanos // 1000),
            price_written, quantity_written, tail,
            _trade_conditions(conditions) if conditions else b"\x00",
            sequence_bytes, ingestion_timestamp, platform_sequence_bytes, vendor_written)))
        keys.append(head[0])
        indexes.append(index)
    return batch


def _head(symbol: str, exchange: str, asset_class: int) -> tuple[bytes, bytes] | tuple[()]:
    """(the key, symbol + exchange + asset_class as written), empty when the exact path must judge them."""
    tag = _ASSET_CLASS_TAGS.get(asset_class)
    written_symbol, written_exchange = _checked_text(symbol), _checked_text(exchange)
    if tag is None or not written_symbol or not written_exchange:
        return ()
    return symbol.encode(), written_symbol + written_exchange + tag


def _tail(currency: str, side: int) -> bytes:
    """currency + side as written (they follow the quantity), empty when the exact path must judge them."""
    tag = _SIDE_TAGS.get(side)
    written = _checked_text(currency)
    return written + tag if tag is not None and written else b""


def _micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def encode_quotes(messages: Sequence[Quote], received: datetime, message_ids: MessageIds) -> EncodedBatch:
    """Validates and encodes published quotes (quote_from_proto + avro.encode)."""
    batch = EncodedBatch()
    for index, message in enumerate(messages):
        _encode_exactly(QUOTE, quote_from_proto, message, index, received, message_ids, batch)
    return batch
