"""Request checks: every bad field is refused with INVALID_ARGUMENT naming the field and the reason (FieldError),
before any work is done."""

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from k2.core.records import FieldError, RecordKind, check_name
from k2.query.v1 import query_pb2
from k2.services.query.config import QuerySettings
from k2.services.query.selection import Selection
from k2.services.query.tokens import PageToken, StreamPosition, TokenKeys, query_digest

DAY_MICROS = 86_400_000_000
# Timestamp.seconds of 0001-01-01 and 10000-01-01: the range a datetime holds
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_800
BAR_INTERVALS: dict[int, int] = {  # BarInterval → µs
    query_pb2.BAR_INTERVAL_1S: 1_000_000,
    query_pb2.BAR_INTERVAL_1M: 60_000_000,
    query_pb2.BAR_INTERVAL_5M: 300_000_000,
    query_pb2.BAR_INTERVAL_15M: 900_000_000,
    query_pb2.BAR_INTERVAL_1H: 3_600_000_000,
    query_pb2.BAR_INTERVAL_1D: DAY_MICROS,
}
QueryRequest = query_pb2.QueryTradesRequest | query_pb2.QueryQuotesRequest
SubscribeRequest = query_pb2.SubscribeTradesRequest | query_pb2.SubscribeQuotesRequest


def check_names(field: str, values: list[str], maximum: int, *, required: bool) -> frozenset[str] | None:
    """None for an empty list that is allowed (every name)."""
    if not values:
        if required:
            raise FieldError(field, "at least one is required")
        return None
    if len(values) > maximum:
        raise FieldError(field, f"{len(values)} given, at most {maximum}")
    for index, value in enumerate(values):
        check_name(f"{field}[{index}]", value)
    return frozenset(values)


def micros_of(field: str, value: Timestamp) -> int:
    if not MIN_SECONDS <= value.seconds < MAX_SECONDS or not 0 <= value.nanos < 1_000_000_000:
        raise FieldError(field, "outside the years 1-9999")
    if value.nanos % 1000:
        raise FieldError(field, "finer than a microsecond; K2 timestamps are whole microseconds")
    return value.seconds * 1_000_000 + value.nanos // 1000


def time_range(start: Timestamp | None, end: Timestamp | None, max_span: int) -> tuple[int, int]:
    if start is None:
        raise FieldError("start", "required")
    if end is None:
        raise FieldError("end", "required")
    first, last = micros_of("start", start), micros_of("end", end)
    if first >= last:
        raise FieldError("end", "must be after start")
    if last - first > max_span:
        raise FieldError("end", f"the range may span at most {max_span // DAY_MICROS} days")
    return first, last


@dataclass(frozen=True)
class RangeQuery:
    kind: RecordKind
    selection: Selection
    limit: int
    digest: str
    page: PageToken | None


def range_query(
    kind: RecordKind, request: QueryRequest, settings: QuerySettings, keys: TokenKeys
) -> RangeQuery:
    symbols = check_names("symbols", list(request.symbols), settings.max_symbols, required=True)
    exchanges = frozenset([check_name("exchange", request.exchange)]) if request.exchange else None
    start, end = time_range(
        request.start if request.HasField("start") else None,
        request.end if request.HasField("end") else None,
        settings.max_span_days * DAY_MICROS,
    )
    if request.limit > settings.max_limit:
        raise FieldError("limit", f"at most {settings.max_limit}")
    selection = Selection(symbols, exchanges, start, end)
    digest = query_digest(kind, selection)
    page = PageToken.decode(request.page_token, digest, keys) if request.page_token else None
    return RangeQuery(kind, selection, request.limit or settings.default_limit, digest, page)


def check_partitions(field: str, named: set[int], partitions: list[int]) -> None:
    """A token's partitions must be the topic's: a range on one it does not have would wait for the deadline."""
    unknown = named.difference(partitions)
    if unknown:
        raise FieldError(field, f"names partition {min(unknown)}, which the topic does not have")


def check_tail(field: str, start: dict[int, int], end: dict[int, int], most: int) -> None:
    """A token's Kafka range holds at most what one query may read (a token names what it was given)."""
    if sum(max(0, offset - start.get(p, 0)) for p, offset in end.items()) > most:
        raise FieldError(field, f"names a Kafka range of more than {most} messages")


@dataclass(frozen=True)
class BarsQuery:
    selection: Selection
    interval: int  # µs


def bars_query(request: query_pb2.GetBarsRequest, settings: QuerySettings) -> BarsQuery:
    symbol = check_name("symbol", request.symbol)
    exchanges = frozenset([check_name("exchange", request.exchange)]) if request.exchange else None
    interval = BAR_INTERVALS.get(request.interval)
    if interval is None:
        raise FieldError("interval", "required: one of 1S, 1M, 5M, 15M, 1H, 1D")
    start, end = time_range(
        request.start if request.HasField("start") else None,
        request.end if request.HasField("end") else None,
        settings.max_span_days * DAY_MICROS,
    )
    first_bar, last_bar = start - start % interval, end - 1 - (end - 1) % interval
    if (last_bar - first_bar) // interval + 1 > settings.max_bars:
        raise FieldError("end", f"the range holds more than {settings.max_bars} intervals of this size")
    return BarsQuery(Selection(frozenset([symbol]), exchanges, start, end), interval)


def latest_symbols(request: query_pb2.GetLatestRequest, settings: QuerySettings) -> list[str]:
    check_names("symbols", list(request.symbols), settings.max_symbols, required=True)
    return list(dict.fromkeys(request.symbols))


@dataclass(frozen=True)
class Subscription:
    kind: RecordKind
    symbols: frozenset[str] | None
    exchanges: frozenset[str] | None
    start: int | None  # µs: replay history from here
    resume: StreamPosition | None


def subscription(
    kind: RecordKind, request: SubscribeRequest, settings: QuerySettings, keys: TokenKeys
) -> Subscription:
    symbols = check_names("symbols", list(request.symbols), settings.max_symbols, required=False)
    exchanges = check_names("exchanges", list(request.exchanges), settings.max_symbols, required=False)
    start = micros_of("start", request.start) if request.HasField("start") else None
    resume = StreamPosition.decode(request.resume_token, kind, keys) if request.resume_token else None
    return Subscription(kind, symbols, exchanges, start, resume)
