# The types of K2's compiled module (native/src, Rust via PyO3), checked against it by `python -m mypy.stubtest
# k2._native` in `make lint`. Tuples, lists and dicts are what PyO3 extracts: a tuple argument must be a tuple,
# a dict argument a dict.
from collections.abc import Container, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar, final, type_check_only

__all__ = [
    "ArrowDecoder",
    "LiveBatch",
    "LiveTranscoder",
    "QuoteFrameEncoder",
    "TradeEncoder",
    "TradeFrameEncoder",
    "read_messages",
]

# A field's bounds beyond its texts' lengths, as k2.core.records.NATIVE_LIMITS: (name characters, longest name,
# most trade conditions, longest condition, most vendor_data entries, longest key, longest value).
_RecordLimits: TypeAlias = tuple[str, int, int, int, int, int, int]
_Headers: TypeAlias = list[tuple[str, bytes | None]]

@type_check_only
class _Message(Protocol):
    """What read_messages calls on each message: confluent_kafka.Message's accessors."""

    def error(self) -> object: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> object: ...

_M = TypeVar("_M", bound=_Message)

@final
class TradeEncoder:
    """Writes published trades as Avro v2 Kafka messages (k2.core.proto_avro)."""

    def __new__(
        cls,
        header: bytes,
        fields: Sequence[str],
        asset_classes: dict[int, bytes],
        sides: dict[int, bytes],
        max_text_length: int,
        limits: _RecordLimits,
        decimals: tuple[int, int],
        seconds: tuple[int, int],
    ) -> TradeEncoder: ...
    def encode(
        self, request: bytes, ingestion_timestamp: int, id_prefix: str, id_node: int
    ) -> tuple[list[bytes | None], list[bytes | None], list[int], dict[str, int]]:
        """(keys, values, unjudged, trades per symbol) of a serialized PublishTradesRequest; keys[i] and
        values[i] are None for each trade i of unjudged, left to the plain path."""

@final
class TradeFrameEncoder:
    """Writes plain Binance trade frames as Avro v2 trade messages (k2.services.ingest.binance.parsing)."""

    def __new__(
        cls,
        routes: Sequence[tuple[str, bytes, bytes, bytes, bytes]],
        header: bytes,
        namespace: bytes,
        trade_id_prefix: bytes,
        taker_sold: bytes,
        taker_bought: bytes,
        time_scale: int,
        micros: tuple[int, int],
        decimals: tuple[int, int],
    ) -> TradeFrameEncoder: ...
    def encode(self, raw: bytes, received: int) -> tuple[int, int, int, bytes, bytes] | None:
        """(route position, trade id, trade time in µs, key, Avro message) of a plain trade frame; None for any
        other frame."""

@final
class QuoteFrameEncoder:
    """Writes plain Binance bookTicker frames as Avro v2 quote messages (k2.services.ingest.binance.parsing)."""

    def __new__(
        cls,
        routes: Sequence[tuple[str, bytes, bytes, bytes, bytes]],
        header: bytes,
        namespace: bytes,
        tail: bytes,
        decimals: tuple[int, int],
    ) -> QuoteFrameEncoder: ...
    def encode(self, raw: bytes, received: int) -> tuple[int, int, bytes, bytes] | None:
        """(route position, book update id, key, Avro message) of a plain bookTicker frame with both sides of the
        book; None for any other frame."""

@final
class LiveTranscoder:
    """Transcodes one record kind's Avro messages to framed protobuf (built by k2.services.query.convert)."""

    def __new__(
        cls,
        headers: Sequence[bytes],
        fields: Sequence[tuple[str, int, bool, bool, bool, Any]],
        pairs: Sequence[tuple[int, int]],
        max_text: int,
        limits: _RecordLimits,
        routing: tuple[int, int, int],
    ) -> LiveTranscoder: ...
    def message(self, value: bytes) -> bytes | None:
        """The serialized message of one value, or None where the plain path must judge it."""

@final
class ArrowDecoder:
    """Decodes one record kind's current-version Avro messages to Arrow buffers (built by k2.core.arrow)."""

    def __new__(
        cls,
        headers: Sequence[bytes],
        fields: Sequence[tuple[str, bool, bool, Any]],
        pairs: Sequence[tuple[int, int]],
        max_text: int,
        limits: _RecordLimits,
        names: tuple[int, int, int],
    ) -> ArrowDecoder: ...
    def decode(
        self, values: Sequence[bytes | None]
    ) -> tuple[bytes, int, list[list[bytes | None]], list[int]]:
        """(the accepted messages' indexes as an int64 buffer, how many, each column's buffers, the indexes of the
        messages handed back to the plain path)."""

@final
class LiveBatch:
    """The messages of one topic from one poll (made by read_messages), and once decoded their framed records."""

    def __len__(self) -> int: ...
    @property
    def positions(self) -> dict[int, int]:
        """{partition: the offset after its last message in the batch}"""
    @property
    def headers(self) -> list[_Headers | None] | None:
        """Each message's Kafka headers (None where it has none), or None when no message has any."""
    def position(self, index: int) -> tuple[int, int]:
        """(partition, offset) of a message"""
    @property
    def decoded(self) -> bool: ...
    @property
    def records(self) -> int:
        """How many valid records the batch holds."""
    def decode(self, transcoder: LiveTranscoder) -> list[tuple[int, bytes]]:
        """Transcodes every message; returns [(index, value)] of those handed back to the plain path."""
    def accept(self, index: int, framed: bytes, symbol: str, exchange: str, timestamp: int) -> None:
        """Adds a record the plain path made of a handed-back message."""
    def split(self, max_bytes: int) -> list[LiveBatch]:
        """The batch as consecutive parts whose records take at most `max_bytes` each."""
    def symbols(self) -> list[str]:
        """The distinct symbols of the valid records."""
    def select(
        self,
        symbols: Container[str] | None = None,
        exchanges: Container[str] | None = None,
        start: int | None = None,
        end: int | None = None,
        skip_below: dict[int, int] | None = None,
    ) -> tuple[bytes, int, int]:
        """(the framed records that match, joined; how many; their newest timestamp) in message order."""

def read_messages(
    messages: list[_M],
    topics: Sequence[str],
    latest: Sequence[dict[bytes, bytes]] | None = None,
    keys: Container[bytes] | None = None,
) -> tuple[list[LiveBatch], list[_M]]:
    """Splits a poll's messages by topic into batches, in their order, and returns the messages with an error
    apart; `latest` (a dict per topic) gets each message's value under its key, and where `keys` is given a
    message with another key only advances its batch's position."""
