"""Typed values of the SDK: market data in (Trade, Quote) and out, and the services' status, with exact Decimal
prices and aware UTC datetimes. Market data converts through k2.core.protos, so the SDK and the services share
one mapping between v2 records and the wire."""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from k2.clients.errors import K2Error
from k2.core.protos import (
    datetime_from_timestamp,
    quote_from_proto,
    quote_to_proto,
    set_timestamp,
    trade_from_proto,
    trade_to_proto,
)
from k2.core.records import Record, parse_decimal, read_decimal
from k2.ingest.v1 import ingest_pb2
from k2.marketdata.v1 import marketdata_pb2
from k2.query.v1 import query_pb2
from k2.writer.v1 import writer_pb2

AssetClass = Literal["EQUITIES", "CRYPTO", "FUTURES", "OPTIONS"]
Side = Literal["BUY", "SELL", "SELL_SHORT", "UNKNOWN"]


def _decimal(name: str, value: object) -> Decimal:
    if isinstance(value, float):
        raise TypeError(f"{name}: a float is not exact; pass a Decimal or a decimal string")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, str)):
        return read_decimal(
            name, str(value)
        )  # the range is the service's to check (a rejection, not a raise)
    raise TypeError(f"{name}: expected a Decimal, got {type(value).__name__}")


def _optional_decimal(name: str, value: object) -> Decimal | None:
    return None if value is None else _decimal(name, value)


def _utc(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name}: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name}: timezone-naive datetime; pass an aware datetime (K2 times are UTC)")
    return value.astimezone(UTC)


def _optional_utc(name: str, value: object) -> datetime | None:
    return None if value is None else _utc(name, value)


def status_time(timestamp: Timestamp) -> datetime:
    """A status or bar time (not market data, so finer than a microsecond is truncated, not refused)."""
    return timestamp.ToDatetime(tzinfo=UTC)


def optional_time(message: Any, name: str) -> datetime | None:
    """A message's status Timestamp field, None when unset."""
    return status_time(getattr(message, name)) if message.HasField(name) else None


def _received(message: marketdata_pb2.Trade | marketdata_pb2.Quote) -> datetime | None:
    if not message.HasField("ingestion_timestamp"):
        return None
    return datetime_from_timestamp("ingestion_timestamp", message.ingestion_timestamp)


@dataclass(frozen=True, kw_only=True)
class Trade:
    """One trade, field for field the v2 record. message_id and ingestion_timestamp are set by K2 when absent.

    >>> from datetime import datetime, UTC
    >>> from decimal import Decimal
    >>> trade = Trade(trade_id="ASX-1", symbol="BHP", exchange="ASX", asset_class="EQUITIES",
    ...               timestamp=datetime(2014, 3, 9, 23, 5, 44, 516000, tzinfo=UTC),
    ...               price=Decimal("37.51"), quantity=Decimal("40000"), currency="AUD")
    >>> trade.price * trade.quantity
    Decimal('1500400.00')
    """

    trade_id: str
    symbol: str
    exchange: str
    asset_class: AssetClass
    timestamp: datetime
    price: Decimal
    quantity: Decimal
    currency: str
    side: Side = "UNKNOWN"
    trade_conditions: tuple[str, ...] = ()
    source_sequence: int | None = None
    vendor_data: Mapping[str, str] | None = None
    message_id: str | None = None
    ingestion_timestamp: datetime | None = None
    platform_sequence: int | None = None

    def __post_init__(self) -> None:
        # Normalised in place (frozen): strings and ints become Decimals, aware datetimes become UTC.
        object.__setattr__(self, "price", _decimal("price", self.price))
        object.__setattr__(self, "quantity", _decimal("quantity", self.quantity))
        object.__setattr__(self, "timestamp", _utc("timestamp", self.timestamp))
        object.__setattr__(
            self, "ingestion_timestamp", _optional_utc("ingestion_timestamp", self.ingestion_timestamp)
        )
        object.__setattr__(self, "trade_conditions", tuple(self.trade_conditions))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Trade":
        """From a v2 record dict (as k2.core and pyarrow produce them); unknown keys are an error."""
        return cls(**record)

    def to_record(self) -> Record:
        record = asdict(self)
        record["trade_conditions"] = list(self.trade_conditions)
        record["vendor_data"] = dict(self.vendor_data) if self.vendor_data else None
        return record

    def to_proto(self) -> marketdata_pb2.Trade:
        return trade_to_proto(self.to_record())

    @classmethod
    def from_proto(cls, message: marketdata_pb2.Trade) -> "Trade":
        return cls.from_record(trade_record(message))


@dataclass(frozen=True, kw_only=True)
class Quote:
    """Top of book, field for field the v2 record; a side with no order has price and quantity None.

    >>> from datetime import datetime, UTC
    >>> quote = Quote(quote_id="ASX-BHP-1", symbol="BHP", exchange="ASX", asset_class="EQUITIES",
    ...               timestamp=datetime(2014, 3, 9, 23, tzinfo=UTC), bid_price="37.70", bid_quantity=300,
    ...               currency="AUD")
    >>> quote.bid_price, quote.ask_price
    (Decimal('37.70'), None)
    """

    quote_id: str
    symbol: str
    exchange: str
    asset_class: AssetClass
    timestamp: datetime
    currency: str
    bid_price: Decimal | None = None
    bid_quantity: Decimal | None = None
    ask_price: Decimal | None = None
    ask_quantity: Decimal | None = None
    source_sequence: int | None = None
    vendor_data: Mapping[str, str] | None = None
    message_id: str | None = None
    ingestion_timestamp: datetime | None = None
    platform_sequence: int | None = None

    def __post_init__(self) -> None:
        for name in ("bid_price", "bid_quantity", "ask_price", "ask_quantity"):
            object.__setattr__(self, name, _optional_decimal(name, getattr(self, name)))
        object.__setattr__(self, "timestamp", _utc("timestamp", self.timestamp))
        object.__setattr__(
            self, "ingestion_timestamp", _optional_utc("ingestion_timestamp", self.ingestion_timestamp)
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Quote":
        return cls(**record)

    def to_record(self) -> Record:
        record = asdict(self)
        record["vendor_data"] = dict(self.vendor_data) if self.vendor_data else None
        return record

    def to_proto(self) -> marketdata_pb2.Quote:
        return quote_to_proto(self.to_record())

    @classmethod
    def from_proto(cls, message: marketdata_pb2.Quote) -> "Quote":
        return cls.from_record(quote_record(message))


def trade_record(message: marketdata_pb2.Trade) -> Record:
    """The v2 record of a trade the platform served (keeps its message_id and ingestion time)."""
    return trade_from_proto(message, received=_received(message))


def quote_record(message: marketdata_pb2.Quote) -> Record:
    return quote_from_proto(message, received=_received(message))


RecordT = TypeVar("RecordT", Trade, Quote)


@dataclass(frozen=True)
class SubscriptionBatch(Generic[RecordT]):
    """One response of a live subscription: its records (none on a heartbeat) and the stream position after it.

    Pass resume_token to a later subscribe call to continue exactly after this batch.
    """

    records: list[RecordT]
    resume_token: str
    replay: bool
    server_time: datetime | None


@dataclass(frozen=True)
class Reconnect:
    """A live subscription lost its stream (or could not reopen it) and reconnects after `delay_seconds`,
    resuming exactly after the last batch it delivered. `attempt` counts the failures in a row (1 for the
    first; a batch received starts the count afresh)."""

    error: K2Error
    attempt: int
    delay_seconds: float


@dataclass(frozen=True)
class Rejection:
    """An item the server refused: its position in the publish call's input, the field and the reason."""

    index: int
    field: str
    reason: str


@dataclass(frozen=True)
class PublishResult:
    accepted: int
    rejections: list[Rejection]
    batches: int
    # Batches the server had already seen (a retry after a lost acknowledgement): their original outcome counts.
    duplicates: int


@dataclass(frozen=True)
class Bar:
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal
    trade_count: int

    @classmethod
    def from_proto(cls, message: query_pb2.Bar) -> "Bar":
        prices = {
            name: parse_decimal(name, getattr(message, name))
            for name in ("open", "high", "low", "close", "volume", "vwap")
        }
        return cls(start=status_time(message.start), trade_count=message.trade_count, **prices)


# "1m" -> "BAR_INTERVAL_1M"
BAR_INTERVALS = {
    name.removeprefix("BAR_INTERVAL_").lower(): name for name, value in query_pb2.BarInterval.items() if value
}


@dataclass(frozen=True)
class Latest:
    symbol: str
    trade: Trade | None
    quote: Quote | None

    @classmethod
    def from_proto(cls, message: query_pb2.Latest) -> "Latest":
        return cls(
            symbol=message.symbol,
            trade=Trade.from_proto(message.trade) if message.HasField("trade") else None,
            quote=Quote.from_proto(message.quote) if message.HasField("quote") else None,
        )


@dataclass(frozen=True)
class Gap:
    symbol: str
    first_missing: int
    last_missing: int
    detected_at: datetime | None


@dataclass(frozen=True)
class FeedConnectionStatus:
    """One connection of a feed (a shard of its streams)."""

    number: int
    state: str
    endpoint: str
    streams: int
    symbols: int
    frames: int
    reconnects: int
    connected_since: datetime | None


@dataclass(frozen=True)
class SymbolActivity:
    symbol: str
    trades: int
    quotes: int


@dataclass(frozen=True)
class FeedStatus:
    name: str
    state: str
    endpoint: str
    streams: list[str]
    symbols: list[str]
    messages_per_second: float
    trades_per_second: float
    last_event_time: datetime | None
    reconnects_by_reason: dict[str, int]
    gaps_detected: int
    trades_missed: int
    trades_backfilled: int
    circuit_state: str
    connections: int
    recent_gaps: list[Gap]
    connection_statuses: list[FeedConnectionStatus] = field(default_factory=list)
    most_active: list[SymbolActivity] = field(default_factory=list)  # most trades first, at most 20

    @classmethod
    def from_proto(cls, message: ingest_pb2.FeedStatus) -> "FeedStatus":
        return cls(
            name=message.name,
            state=ingest_pb2.ConnectionState.Name(message.state).removeprefix("CONNECTION_STATE_"),
            endpoint=message.endpoint,
            streams=list(message.streams),
            symbols=list(message.symbols),
            messages_per_second=message.messages_per_second,
            trades_per_second=message.trades_per_second,
            last_event_time=optional_time(message, "last_event_time"),
            reconnects_by_reason=dict(message.reconnects_by_reason),
            gaps_detected=message.gaps_detected,
            trades_missed=message.trades_missed,
            trades_backfilled=message.trades_backfilled,
            circuit_state=ingest_pb2.CircuitState.Name(message.circuit_state).removeprefix("CIRCUIT_STATE_"),
            connections=message.connections,
            recent_gaps=[
                Gap(
                    symbol=gap.symbol,
                    first_missing=gap.first_missing,
                    last_missing=gap.last_missing,
                    detected_at=optional_time(gap, "detected_at"),
                )
                for gap in message.recent_gaps
            ],
            connection_statuses=[
                FeedConnectionStatus(
                    number=c.number,
                    state=ingest_pb2.ConnectionState.Name(c.state).removeprefix("CONNECTION_STATE_"),
                    endpoint=c.endpoint,
                    streams=c.streams,
                    symbols=c.symbols,
                    frames=c.frames,
                    reconnects=c.reconnects,
                    connected_since=optional_time(c, "connected_since"),
                )
                for c in message.connection_statuses
            ],
            most_active=[
                SymbolActivity(symbol=a.symbol, trades=a.trades, quotes=a.quotes) for a in message.most_active
            ],
        )


@dataclass(frozen=True)
class LoadProgress:
    path: str
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    rows_per_second: float

    @classmethod
    def from_proto(cls, message: ingest_pb2.LoadProgress) -> "LoadProgress":
        return cls(**{f.name: getattr(message, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class LoadSummary:
    files: list[LoadProgress]
    rows_read: int
    # Written to the trades/quotes topic; rejected rows went to the dead-letter topic with their reason.
    rows_accepted: int
    rows_rejected: int
    seconds: float

    @classmethod
    def from_proto(cls, message: ingest_pb2.LoadSummary) -> "LoadSummary":
        return cls(
            files=[LoadProgress.from_proto(f) for f in message.files],
            rows_read=message.rows_read,
            rows_accepted=message.rows_accepted,
            rows_rejected=message.rows_rejected,
            seconds=message.seconds,
        )


@dataclass(frozen=True)
class PartitionStatus:
    topic: str
    partition: int
    committed_offset: int
    high_watermark: int
    lag: int


@dataclass(frozen=True)
class TableStatus:
    table: str
    snapshot_id: int
    rows: int
    files: int
    newest_event_time: datetime | None
    freshness_seconds: float


@dataclass(frozen=True)
class WriterStatus:
    partitions: list[PartitionStatus]
    tables: list[TableStatus]
    last_commit_time: datetime | None
    last_commit_rows: int
    last_commit_bytes: int
    dead_lettered: int

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @classmethod
    def from_proto(cls, message: writer_pb2.GetStatusResponse) -> "WriterStatus":
        return cls(
            partitions=[
                PartitionStatus(
                    topic=p.topic,
                    partition=p.partition,
                    committed_offset=p.committed_offset,
                    high_watermark=p.high_watermark,
                    lag=p.lag,
                )
                for p in message.partitions
            ],
            tables=[
                TableStatus(
                    table=t.table,
                    snapshot_id=t.snapshot_id,
                    rows=t.rows,
                    files=t.files,
                    newest_event_time=optional_time(t, "newest_event_time"),
                    freshness_seconds=t.freshness_seconds,
                )
                for t in message.tables
            ],
            last_commit_time=optional_time(message, "last_commit_time"),
            last_commit_rows=message.last_commit_rows,
            last_commit_bytes=message.last_commit_bytes,
            dead_lettered=message.dead_lettered,
        )


@dataclass(frozen=True)
class TableCommit:
    table: str
    # 0 when nothing was buffered for the table.
    snapshot_id: int
    rows: int


@dataclass(frozen=True)
class CompactProgress:
    partition: str
    partitions_done: int
    partitions_total: int


@dataclass(frozen=True)
class CompactResult:
    files_before: int
    files_after: int
    snapshot_id: int


@dataclass(frozen=True)
class ServiceHealth:
    """A service's gRPC health: SERVING, NOT_SERVING, or UNAVAILABLE (not reachable; detail says why)."""

    service: str
    address: str
    status: str
    detail: str = ""

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"


@dataclass(frozen=True)
class ServiceTracing:
    """Where a service's traces go: the OTLP endpoint it exports to ("" when it exports none) and its sampler
    (OTEL_TRACES_SAMPLER's name, and the share of new traces it samples). `error` says why a service did not
    answer (then the other fields are empty)."""

    service: str
    address: str
    service_name: str = ""
    otlp_endpoint: str = ""
    sampler: str = ""
    sample_ratio: float = 0.0
    error: str = ""


def set_time(timestamp: Timestamp, value: datetime | None) -> None:
    """Sets a request's optional Timestamp field from an aware datetime (None leaves it unset)."""
    if value is not None:
        set_timestamp(timestamp, _utc("time", value))
