"""Published protobuf messages → their Kafka message values (Avro v2, single-object encoded) and keys, a batch at
a time: the per-item hot path of PublishTrades/PublishQuotes.

A batch of trades goes to the compiled encoder (k2._native.TradeEncoder) in one call, as its serialized request. It
writes each trade it can judge at a glance (plain decimals that fit, canonical message ids, whole-microsecond
timestamps of years 1 to 9999, texts, names and repeated fields within their limits, known enum values) and hands
back any other, which trade_from_proto and avro.encode then accept or reject with its field and reason: the plain
path. Both write the same bytes (tests check it), so which path a trade took never shows. Quotes all take the
plain path."""

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from k2._native import TradeEncoder
from k2.core import avro
from k2.core.protos import ASSET_CLASS_NAMES, SIDE_NAMES, quote_from_proto, trade_from_proto
from k2.core.records import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    MAX_TEXT_LENGTH,
    NATIVE_LIMITS,
    QUOTE,
    TRADE,
    FieldError,
    Record,
    RecordKind,
)
from k2.core.timestamps import micros
from k2.ingest.v1.ingest_pb2 import PublishQuotesRequest, PublishTradesRequest

NODE_MASK = (1 << 48) - 1


@dataclass(frozen=True)
class MessageIds:
    """The message_id of item i of a batch when it has none: a base UUID with i added to its node field (the last
    48 bits; version and variant unchanged)."""

    prefix: str  # the base's first 24 characters
    node: int

    @classmethod
    def based_on(cls, base: uuid.UUID) -> "MessageIds":
        return cls(str(base)[:24], base.node)

    @classmethod
    def random(cls) -> "MessageIds":
        """For a batch without an id: a random (version 4) base per batch. Two batches' ids can only meet if their
        bases share all 74 random bits outside the node, so they stay as unique as random UUIDs."""
        return cls.based_on(uuid.uuid4())

    def __call__(self, index: int) -> str:
        return f"{self.prefix}{(self.node + index) & NODE_MASK:012x}"


@dataclass
class EncodedBatch:
    """The accepted items as Kafka messages (keys[i], values[i]) and their positions in the batch; the rejected
    ones by position with the reason; how many items (all of them) each symbol has."""

    keys: Sequence[bytes]
    values: Sequence[bytes]
    indexes: Sequence[int]
    rejected: list[tuple[int, FieldError]] = field(default_factory=list)
    symbols: Mapping[str, int] = field(default_factory=dict)


def _enum_tags(field: str, proto_names: dict[int, str]) -> dict[int, bytes]:
    """proto enum value → the Avro enum symbol as written."""
    return {value: avro.enum_written(TRADE, field, symbol) for value, symbol in proto_names.items()}


def _seconds(value: datetime) -> int:
    return micros(value) // 1_000_000


_TRADES = TradeEncoder(
    avro.CURRENT_HEADERS[TRADE],
    avro.CURRENT_FIELDS[TRADE],
    _enum_tags("asset_class", ASSET_CLASS_NAMES),
    _enum_tags("side", SIDE_NAMES),
    MAX_TEXT_LENGTH,
    NATIVE_LIMITS,
    (DECIMAL_PRECISION, DECIMAL_SCALE),
    (_seconds(datetime.min), _seconds(datetime.max) + 1),
)


def encode_trades(request: PublishTradesRequest, received: datetime, message_ids: MessageIds) -> EncodedBatch:
    """Validates and encodes a request's trades, each exactly as trade_from_proto + avro.encode would; `received`
    is their ingestion timestamp."""
    keys, values, unjudged, symbols = _TRADES.encode(
        request.SerializeToString(), micros(received), message_ids.prefix, message_ids.node
    )
    return _encode_plain(
        TRADE, trade_from_proto, request.trades, unjudged, received, message_ids, keys, values, symbols
    )


def encode_quotes(request: PublishQuotesRequest, received: datetime, message_ids: MessageIds) -> EncodedBatch:
    """Validates and encodes a request's quotes (quote_from_proto + avro.encode)."""
    quotes = request.quotes
    return _encode_plain(
        QUOTE,
        quote_from_proto,
        quotes,
        range(len(quotes)),
        received,
        message_ids,
        [None] * len(quotes),
        [None] * len(quotes),
        Counter(quote.symbol for quote in quotes),
    )


def _encode_plain(
    kind: RecordKind,
    convert: Callable[..., Record],
    messages: Sequence[Any],
    unjudged: Iterable[int],
    received: datetime,
    message_ids: MessageIds,
    keys: list[bytes | None],
    values: list[bytes | None],
    symbols: Mapping[str, int],
) -> EncodedBatch:
    """The batch once the plain path has filled in (keys[i], values[i]) of each unjudged item i, or rejected it."""
    rejected = []
    for index in unjudged:
        try:
            record = convert(messages[index], received, message_ids(index))
        except FieldError as error:
            rejected.append((index, error))
            continue
        keys[index], values[index] = record["symbol"].encode(), avro.encode(kind, record)
    if not rejected:
        return EncodedBatch(keys, values, range(len(values)), rejected, symbols)  # type: ignore[arg-type]
    indexes = [index for index, value in enumerate(values) if value is not None]
    return EncodedBatch(
        [keys[index] for index in indexes],  # type: ignore[misc]
        [values[index] for index in indexes],  # type: ignore[misc]
        indexes,
        rejected,
        symbols,
    )
