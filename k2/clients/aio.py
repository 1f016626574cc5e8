"""AsyncK2Client: the asyncio (grpc.aio) SDK for K2's ingest, writer and query services.

import asyncio
from k2.clients import AsyncK2Client

async def main() -> None:
    async with AsyncK2Client() as k2:
        table = await k2.query_trades("BHP", start="2014-03-10T00:00Z", end="2014-03-11T00:00Z")
        print(table.num_rows, table["price"][0])
        async for batch in k2.subscribe_trades(["BTCUSDT"]):
            for trade in batch.records:
                print(trade.timestamp, trade.price)

asyncio.run(main())
"""

import asyncio
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Self, TypeVar

import grpc
import pyarrow as pa
from grpc._cython.cygrpc import ExecuteBatchError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k2.clients.errors import K2Error
from k2.clients.models import (
    BAR_INTERVALS,
    Bar,
    CompactProgress,
    CompactResult,
    FeedStatus,
    Latest,
    LoadProgress,
    LoadSummary,
    PublishResult,
    Quote,
    Reconnect,
    RecordT,
    Rejection,
    ServiceHealth,
    ServiceTracing,
    SubscriptionBatch,
    TableCommit,
    Trade,
    WriterStatus,
    optional_time,
    quote_record,
    set_time,
    trade_record,
)
from k2.clients.retrying import OnReconnect, service_config, stream_retrying
from k2.clients.settings import SERVICES, ClientSettings
from k2.clients.times import parse_time
from k2.core.arrow_records import arrow_schema, records_to_arrow
from k2.core.records import QUOTE, TRADE, Record, RecordKind, new_message_id
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.marketdata.v1 import marketdata_pb2
from k2.query.v1 import query_pb2, query_pb2_grpc
from k2.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from k2.writer.v1 import writer_pb2, writer_pb2_grpc

TimeArg = datetime | str
FileFormat = Literal["asx_trades", "asx_quotes", "csv_trades", "csv_quotes"]


def _time(value: TimeArg | None) -> datetime | None:
    """An aware datetime, or a string parse_time understands ("2014-03-10", "-1h")."""
    return parse_time(value) if isinstance(value, str) else value


def _symbols(symbols: str | Sequence[str]) -> list[str]:
    return [symbols] if isinstance(symbols, str) else list(symbols)


def _trade(item: Trade | Mapping[str, Any]) -> Trade:
    return item if isinstance(item, Trade) else Trade.from_record(item)


def _quote(item: Quote | Mapping[str, Any]) -> Quote:
    return item if isinstance(item, Quote) else Quote.from_record(item)


MessageT = TypeVar("MessageT", marketdata_pb2.Trade, marketdata_pb2.Quote)


def _with_message_id(message: MessageT) -> MessageT:
    """Set before the first attempt, so a re-sent item is recognised as the same one."""
    if not message.message_id:
        message.message_id = new_message_id()
    return message


# Names batches by their items' message ids (uuid5): the same items batched alike are the same batch.
BATCH_ID_NAMESPACE = uuid.UUID("6f3c1d0e-2b7a-5c84-9e51-4a0d8b7c2f19")


def _batch_id(messages: Sequence[marketdata_pb2.Trade] | Sequence[marketdata_pb2.Quote]) -> str:
    return str(uuid.uuid5(BATCH_ID_NAMESPACE, "\n".join(message.message_id for message in messages)))


@dataclass
class _Batch:
    offset: int
    request: Any

    @property
    def batch_id(self) -> str:
        return str(self.request.batch_id)


@dataclass
class _Position:
    """Where a subscription resumes from, and how many batches it has received."""

    token: str
    batches: int = 0


class _PublishRun:
    """One publish call's progress across stream attempts: batches are built lazily from the input, at most
    `window` of them wait for acknowledgement, and a new attempt re-sends exactly those (same batch ids)."""

    def __init__(self, client: "AsyncK2Client", method: Any, source: Iterator[_Batch]):
        self.client = client
        self.method = method
        self.source = source
        self.window = client.settings.publish_window
        self.ack_timeout = client.settings.ack_timeout_seconds
        self.exhausted = False
        self.unacked: deque[_Batch] = deque()
        self.acknowledged = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejections: list[Rejection] = []

    def _error(self, code: grpc.StatusCode, details: str) -> K2Error:
        return self.client._error("ingest", code, details)

    async def attempt(self) -> None:
        call = self.method(metadata=self.client._metadata)
        try:
            with self.client._errors("ingest"):
                await self._exchange(call)
        finally:
            call.cancel()

    async def _exchange(self, call: Any) -> None:
        for batch in self.unacked:
            await self._send(call, batch)
        half_closed = False
        while True:
            while not self.exhausted and len(self.unacked) < self.window:
                fresh = next(self.source, None)
                if fresh is None:
                    self.exhausted = True
                else:
                    self.unacked.append(fresh)
                    await self._send(call, fresh)
            if self.exhausted and not half_closed:
                await call.done_writing()
                half_closed = True
            if not self.unacked:
                return
            waiting_for = self.unacked[0].batch_id
            try:
                response = await asyncio.wait_for(call.read(), self.ack_timeout)
            except TimeoutError:
                raise self._error(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"batch {waiting_for} not acknowledged within {self.ack_timeout:g} s",
                ) from None
            if response is grpc.aio.EOF:
                raise self._error(
                    grpc.StatusCode.UNAVAILABLE,
                    f"publish stream ended before acknowledging batch {waiting_for}",
                )
            self._acknowledge(response)

    async def _send(self, call: Any, batch: _Batch) -> None:
        try:
            await call.write(batch.request)
            return
        except asyncio.InvalidStateError:
            raise self._error(await call.code(), await call.details() or "stream already ended") from None
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INTERNAL or "execute_batch" not in (
                error.debug_error_string() or ""
            ):
                raise
        # The service ended the stream while we were sending, and grpc.aio replaced its status with INTERNAL
        # (grpc/grpc#36066). An empty stream shows what the service says now (e.g. an authentication refusal,
        # or UNAVAILABLE: it went away); if it accepts it, the stream was lost and a retry re-sends the
        # unacknowledged batches.
        probe = self.method(metadata=self.client._metadata, timeout=self.client.settings.timeout_seconds)
        try:
            await probe.done_writing()
        except ExecuteBatchError:  # the probe failed before it could half-close: read() raises its status
            pass
        await probe.read()
        raise self._error(
            grpc.StatusCode.UNAVAILABLE, f"publish stream ended while sending batch {batch.batch_id}"
        )

    def _acknowledge(self, response: Any) -> None:
        batch = self.unacked.popleft()
        if response.batch_id != batch.batch_id:
            raise self._error(
                grpc.StatusCode.INTERNAL,
                f"acknowledgement for batch {response.batch_id!r}, expected {batch.batch_id!r}",
            )
        self.acknowledged += 1
        self.accepted += response.accepted
        self.duplicates += response.duplicate
        self.rejections += [Rejection(batch.offset + r.index, r.field, r.reason) for r in response.rejections]

    def result(self) -> PublishResult:
        return PublishResult(
            accepted=self.accepted,
            rejections=self.rejections,
            batches=self.acknowledged,
            duplicates=self.duplicates,
        )


class AsyncK2Client:
    """Async client of the three K2 services; channels open on first use, close with `aclose()` or `async with`.

    Addresses, token and TLS come from ClientSettings (K2_* environment variables); the keyword arguments
    override them, e.g. AsyncK2Client(query_address="127.0.0.1:60053"). Failed calls raise K2Error.
    """

    def __init__(
        self,
        settings: ClientSettings | None = None,
        *,
        ingest_address: str | None = None,
        writer_address: str | None = None,
        query_address: str | None = None,
        token: str | None = None,
    ):
        overrides: dict[str, Any] = {
            "ingest_address": ingest_address,
            "writer_address": writer_address,
            "query_address": query_address,
            "token": token,
        }
        self.settings = (settings or ClientSettings()).model_copy(
            update={name: value for name, value in overrides.items() if value is not None}
        )
        bearer = self.settings.bearer_token() if token is None else token
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {bearer}"),) if bearer else ()
        )
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    def _channel(self, service: str) -> grpc.aio.Channel:
        # Made on first use, inside the running loop that will drive it.
        if service not in self._channels:
            address, options = self.settings.address(service), self.settings.channel_options()
            config = service_config(service, self.settings)
            if config is not None:
                options += [("grpc.enable_retries", 1), ("grpc.service_config", config)]
            credentials = self.settings.channel_credentials()
            self._channels[service] = (
                grpc.aio.insecure_channel(address, options=options)
                if credentials is None
                else grpc.aio.secure_channel(address, credentials, options=options)
            )
        return self._channels[service]

    @property
    def _ingest(self) -> Any:
        return ingest_pb2_grpc.IngestServiceStub(self._channel("ingest"))

    @property
    def _writer(self) -> Any:
        return writer_pb2_grpc.WriterServiceStub(self._channel("writer"))

    @property
    def _query(self) -> Any:
        return query_pb2_grpc.QueryServiceStub(self._channel("query"))

    def _error(self, service: str, code: grpc.StatusCode, details: str) -> K2Error:
        return K2Error(service, self.settings.address(service), code, details)

    @contextmanager
    def _errors(self, service: str) -> Iterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as error:
            raise self._error(service, error.code(), error.details() or "") from None

    async def _unary(self, service: str, method: Any, request: Any) -> Any:
        with self._errors(service):
            return await method(request, metadata=self._metadata, timeout=self.settings.timeout_seconds)

    async def _stream(self, service: str, method: Any, request: Any) -> AsyncGenerator[Any, None]:
        call = method(request, metadata=self._metadata)
        try:
            with self._errors(service):
                async for response in call:
                    yield response
        finally:
            call.cancel()

    # -- ingest ----------------------------------------------------------------------------------------------------

    async def publish_trades(
        self, trades: Iterable[Trade | Mapping[str, Any]], *, batch_size: int | None = None
    ) -> PublishResult:
        """Publishes trades (Trade objects or v2 record dicts) in batches; returns once Kafka holds every accepted one.

        Each trade without one gets a message_id (uuid4) before it is first sent, and each batch a batch_id made
        from its message ids, so the retries after UNAVAILABLE or a lost acknowledgement never write a trade
        twice (nor does calling again with the same trades, their message_ids set, batched alike). Trades the
        service finds invalid are returned as rejections, with their index in `trades`. `trades` is read lazily: an item that is
        no trade at all (a float price, a naive datetime) raises TypeError/ValueError after the batches before it
        were published.
        """

        def request(items: list[Trade | Mapping[str, Any]]) -> ingest_pb2.PublishTradesRequest:
            messages = [_with_message_id(_trade(item).to_proto()) for item in items]
            return ingest_pb2.PublishTradesRequest(batch_id=_batch_id(messages), trades=messages)

        return await self._publish(self._ingest.PublishTrades, request, trades, batch_size)

    async def publish_quotes(
        self, quotes: Iterable[Quote | Mapping[str, Any]], *, batch_size: int | None = None
    ) -> PublishResult:
        """As publish_trades, for quotes."""

        def request(items: list[Quote | Mapping[str, Any]]) -> ingest_pb2.PublishQuotesRequest:
            messages = [_with_message_id(_quote(item).to_proto()) for item in items]
            return ingest_pb2.PublishQuotesRequest(batch_id=_batch_id(messages), quotes=messages)

        return await self._publish(self._ingest.PublishQuotes, request, quotes, batch_size)

    async def _publish(
        self,
        open_stream: Callable[..., Any],
        request: Callable[[list[Any]], Any],
        items: Iterable[Any],
        batch_size: int | None,
    ) -> PublishResult:
        size = batch_size or self.settings.publish_batch_size
        if size < 1:
            raise ValueError(f"batch_size must be positive: {size}")

        def batches() -> Iterator[_Batch]:
            chunk: list[Any] = []
            offset = 0
            for item in items:
                chunk.append(item)
                if len(chunk) == size:
                    yield _Batch(offset, request(chunk))
                    offset, chunk = offset + size, []
            if chunk:
                yield _Batch(offset, request(chunk))

        run = _PublishRun(self, open_stream, batches())
        while True:  # one run of failures in a row per pass: an acknowledgement starts a new one
            acknowledged = run.acknowledged
            try:
                retrying = stream_retrying(self.settings, bounded=True, progress=lambda: run.acknowledged)
                async for attempt in retrying:
                    with attempt:
                        await run.attempt()
                return run.result()
            except K2Error as error:
                if not (error.retryable and run.acknowledged > acknowledged):
                    raise

    async def load_files(
        self, paths: Sequence[str], file_format: FileFormat, *, reference_data_path: str = ""
    ) -> AsyncGenerator[LoadProgress | LoadSummary, None]:
        """Loads vendor files on the ingest host: progress events, then one LoadSummary."""
        request = ingest_pb2.LoadFilesRequest(
            paths=list(paths),
            reference_data_path=reference_data_path,
            format=f"FILE_FORMAT_{file_format.upper()}",
        )
        async with aclosing(self._stream("ingest", self._ingest.LoadFiles, request)) as responses:
            async for response in responses:
                if response.HasField("summary"):
                    yield LoadSummary.from_proto(response.summary)
                else:
                    yield LoadProgress.from_proto(response.progress)

    async def feed_status(self) -> list[FeedStatus]:
        response = await self._unary("ingest", self._ingest.GetFeedStatus, ingest_pb2.GetFeedStatusRequest())
        return [FeedStatus.from_proto(feed) for feed in response.feeds]

    # -- writer ----------------------------------------------------------------------------------------------------

    async def writer_status(self) -> WriterStatus:
        """Committed offsets, Kafka lag, table sizes and freshness."""
        return WriterStatus.from_proto(
            await self._unary("writer", self._writer.GetStatus, writer_pb2.GetStatusRequest())
        )

    async def flush(self) -> list[TableCommit]:
        """Commits what the writer has buffered now."""
        response = await self._unary("writer", self._writer.Flush, writer_pb2.FlushRequest())
        return [TableCommit(table=c.table, snapshot_id=c.snapshot_id, rows=c.rows) for c in response.commits]

    async def compact(
        self,
        table: str,
        *,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        target_file_size_bytes: int = 0,
    ) -> AsyncGenerator[CompactProgress | CompactResult, None]:
        """Compacts a table ("market_data.trades"), optionally the partition days in [start, end)."""
        request = writer_pb2.CompactRequest(table=table, target_file_size_bytes=target_file_size_bytes)
        set_time(request.start, _time(start))
        set_time(request.end, _time(end))
        async with aclosing(self._stream("writer", self._writer.Compact, request)) as responses:
            async for response in responses:
                if response.HasField("result"):
                    r = response.result
                    yield CompactResult(
                        files_before=r.files_before, files_after=r.files_after, snapshot_id=r.snapshot_id
                    )
                else:
                    p = response.progress
                    yield CompactProgress(
                        partition=p.partition,
                        partitions_done=p.partitions_done,
                        partitions_total=p.partitions_total,
                    )

    # -- query -----------------------------------------------------------------------------------------------------

    async def _query_pages(
        self, method: Any, request: Any, field: str, limit: int | None
    ) -> AsyncIterator[Any]:
        """Responses of every page (following next_page_token) until `limit` records or the end."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be positive: {limit}")
        received = 0
        while True:
            request.limit = 0 if limit is None else limit - received
            next_page = ""
            async for response in self._stream("query", method, request):
                received += len(getattr(response, field))
                if response.arrow and limit is not None:
                    received += pa.ipc.open_stream(response.arrow).read_all().num_rows
                next_page = response.next_page_token or next_page
                yield response
            if not next_page or (limit is not None and received >= limit):
                return
            request.page_token = next_page

    def _range_request(
        self,
        message: Callable[..., Any],
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        exchange: str,
    ) -> Any:
        request = message(symbols=_symbols(symbols), exchange=exchange)
        set_time(request.start, _time(start))
        set_time(request.end, _time(end))
        return request

    async def _query_records(
        self,
        kind: RecordKind,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        exchange: str,
        limit: int | None,
    ) -> AsyncIterator[list[Record]]:
        convert: Callable[[Any], Record]
        if kind == TRADE:
            method, field, convert = self._query.QueryTrades, "trades", trade_record
            request = self._range_request(query_pb2.QueryTradesRequest, symbols, start, end, exchange)
        else:
            method, field, convert = self._query.QueryQuotes, "quotes", quote_record
            request = self._range_request(query_pb2.QueryQuotesRequest, symbols, start, end, exchange)
        async for response in self._query_pages(method, request, field, limit):
            yield [convert(message) for message in getattr(response, field)]

    async def _query_table(
        self,
        kind: RecordKind,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        exchange: str,
        limit: int | None,
    ) -> pa.Table:
        """Asks for the rows as Arrow record batches (ROW_FORMAT_ARROW): no message per row on either side."""
        schema = arrow_schema(kind)
        if kind == TRADE:
            method, field = self._query.QueryTrades, "trades"
            request = self._range_request(query_pb2.QueryTradesRequest, symbols, start, end, exchange)
        else:
            method, field = self._query.QueryQuotes, "quotes"
            request = self._range_request(query_pb2.QueryQuotesRequest, symbols, start, end, exchange)
        request.format = query_pb2.ROW_FORMAT_ARROW
        tables = []
        async for response in self._query_pages(method, request, field, limit):
            if response.arrow:
                tables.append(pa.ipc.open_stream(response.arrow).read_all())
            elif getattr(response, field):  # a server that does not know the format answers with messages
                convert = trade_record if kind == TRADE else quote_record
                tables.append(records_to_arrow(kind, [convert(m) for m in getattr(response, field)]))
        return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()

    async def query_trades(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> pa.Table:
        """Trades in [start, end) as an Arrow table (decimal128(38,18) prices, UTC timestamps), every page unless
        `limit` is given. Times are aware datetimes or strings such as "2014-03-10T10:00+11:00" or "-1h"."""
        return await self._query_table(TRADE, symbols, start, end, exchange, limit)

    async def query_quotes(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> pa.Table:
        return await self._query_table(QUOTE, symbols, start, end, exchange, limit)

    async def query_trade_records(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> list[Trade]:
        """As query_trades, as Trade objects."""
        return [
            Trade.from_record(record)
            async for records in self._query_records(TRADE, symbols, start, end, exchange, limit)
            for record in records
        ]

    async def query_quote_records(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> list[Quote]:
        return [
            Quote.from_record(record)
            async for records in self._query_records(QUOTE, symbols, start, end, exchange, limit)
            for record in records
        ]

    async def bars(
        self, symbol: str, start: TimeArg, end: TimeArg, *, interval: str = "1m", exchange: str = ""
    ) -> list[Bar]:
        """OHLCV, VWAP and trade count per interval (1s, 1m, 5m, 15m, 1h, 1d), exact decimals."""
        if interval not in BAR_INTERVALS:
            raise ValueError(f"interval must be one of {', '.join(BAR_INTERVALS)}: {interval!r}")
        request = query_pb2.GetBarsRequest(symbol=symbol, exchange=exchange, interval=BAR_INTERVALS[interval])
        set_time(request.start, _time(start))
        set_time(request.end, _time(end))
        response = await self._unary("query", self._query.GetBars, request)
        return [Bar.from_proto(bar) for bar in response.bars]

    async def latest(self, symbols: str | Sequence[str]) -> dict[str, Latest]:
        """The latest trade and quote per symbol."""
        response = await self._unary(
            "query", self._query.GetLatest, query_pb2.GetLatestRequest(symbols=_symbols(symbols))
        )
        return {latest.symbol: Latest.from_proto(latest) for latest in response.latest}

    def subscribe_trades(
        self,
        symbols: str | Sequence[str] = (),
        *,
        exchanges: Sequence[str] = (),
        start: TimeArg | None = None,
        resume_token: str = "",
        on_reconnect: OnReconnect | None = None,
    ) -> AsyncGenerator[SubscriptionBatch[Trade], None]:
        """Live trades (every symbol when none given), from now, from `start` (history first), or exactly after a
        previous batch's resume_token; empty batches are heartbeats. A stream lost to UNAVAILABLE (a restart
        of the query service, a network failure) is reopened after a capped, jittered backoff for as long as
        the caller iterates, resuming after the last batch received, so nothing is missed or repeated;
        `on_reconnect(Reconnect)` is told before each reconnect. Other errors raise K2Error."""

        def request(token: str) -> query_pb2.SubscribeTradesRequest:
            message = query_pb2.SubscribeTradesRequest(
                symbols=_symbols(symbols), exchanges=list(exchanges), resume_token=token
            )
            set_time(message.start, None if token else _time(start))
            return message

        def batch(response: query_pb2.SubscribeTradesResponse) -> SubscriptionBatch[Trade]:
            return SubscriptionBatch(
                [Trade.from_proto(t) for t in response.trades],
                response.resume_token,
                response.replay,
                optional_time(response, "server_time"),
            )

        return self._subscribe("SubscribeTrades", request, batch, resume_token, on_reconnect)

    def subscribe_quotes(
        self,
        symbols: str | Sequence[str] = (),
        *,
        exchanges: Sequence[str] = (),
        start: TimeArg | None = None,
        resume_token: str = "",
        on_reconnect: OnReconnect | None = None,
    ) -> AsyncGenerator[SubscriptionBatch[Quote], None]:
        """As subscribe_trades, for quotes."""

        def request(token: str) -> query_pb2.SubscribeQuotesRequest:
            message = query_pb2.SubscribeQuotesRequest(
                symbols=_symbols(symbols), exchanges=list(exchanges), resume_token=token
            )
            set_time(message.start, None if token else _time(start))
            return message

        def batch(response: query_pb2.SubscribeQuotesResponse) -> SubscriptionBatch[Quote]:
            return SubscriptionBatch(
                [Quote.from_proto(q) for q in response.quotes],
                response.resume_token,
                response.replay,
                optional_time(response, "server_time"),
            )

        return self._subscribe("SubscribeQuotes", request, batch, resume_token, on_reconnect)

    async def _subscribe(
        self,
        rpc: str,
        request: Callable[[str], Any],
        batch: Callable[[Any], SubscriptionBatch[RecordT]],
        token: str,
        on_reconnect: OnReconnect | None,
    ) -> AsyncGenerator[SubscriptionBatch[RecordT], None]:
        position = _Position(token)
        lost = 0
        while True:  # one run of failures in a row per pass: a batch received starts a new one
            received = position.batches
            try:
                retrying = stream_retrying(
                    self.settings,
                    bounded=False,
                    progress=lambda: position.batches,
                    on_retry=on_reconnect,
                    failures_before=lost,
                )
                async for attempt in retrying:
                    with attempt:
                        stream = self._stream("query", getattr(self._query, rpc), request(position.token))
                        async with aclosing(stream) as responses:
                            async for response in responses:
                                position.batches += 1
                                position.token = response.resume_token or position.token
                                yield batch(response)
                        return
            except K2Error as error:
                if not (error.retryable and position.batches > received):
                    raise
                lost = 1  # the stream's loss is the new run's first failure: it reconnects at once
                if on_reconnect is not None:
                    on_reconnect(Reconnect(error, 1, 0.0))

    # -- every service ---------------------------------------------------------------------------------------------

    async def health(self, services: Sequence[str] = SERVICES) -> list[ServiceHealth]:
        """Each service's gRPC health; an unreachable service is reported (status UNAVAILABLE), never raised."""

        async def check(service: str) -> ServiceHealth:
            address = self.settings.address(service)
            try:
                response = await self._unary(
                    service,
                    health_pb2_grpc.HealthStub(self._channel(service)).Check,
                    health_pb2.HealthCheckRequest(),
                )
            except K2Error as error:
                return ServiceHealth(service, address, error.code.name, error.details)
            return ServiceHealth(
                service, address, health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            )

        return list(await asyncio.gather(*(check(service) for service in services)))

    async def tracing(self, services: Sequence[str] = SERVICES) -> list[ServiceTracing]:
        """Where each service's traces go; a service that does not answer is reported (error), never raised."""

        async def ask(service: str) -> ServiceTracing:
            address = self.settings.address(service)
            try:
                response = await self._unary(
                    service,
                    telemetry_pb2_grpc.TelemetryServiceStub(self._channel(service)).GetTracing,
                    telemetry_pb2.GetTracingRequest(),
                )
            except K2Error as error:
                return ServiceTracing(service, address, error=f"{error.code.name}: {error.details}")
            return ServiceTracing(
                service,
                address,
                response.service_name,
                response.otlp_endpoint,
                response.sampler,
                response.sample_ratio,
            )

        return list(await asyncio.gather(*(ask(service) for service in services)))
