"""The query service: QueryServicer (grpc.aio) and QueryServer, the service (k2.core.grpcserver.Service) that also
runs the live fan-out.

Tests start it in-process: `server = QueryServer(settings, kafka, iceberg); port = await server.start();
await server.wait_ready(); ...; await server.stop()`.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pyarrow as pa
from confluent_kafka import KafkaException

from k2.core.arrow_records import arrow_schema
from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.grpcserver import Service
from k2.core.records import QUOTE, TRADE, FieldError, RecordKind
from k2.query.v1 import query_pb2
from k2.services.query import bars as bars_module
from k2.services.query import metrics, validation
from k2.services.query.cache import ReadCache, ScanCache
from k2.services.query.config import QuerySettings
from k2.services.query.fanout import FanOut
from k2.services.query.history import History, Scan, Snapshot, SnapshotGone, latest_row, ordered_rows
from k2.services.query.kafka_tail import KafkaAdmin, Offsets, OffsetsExpired, bounded_tail, read_tail_table
from k2.services.query.selection import ORDER_COLUMNS, Key, Selection, row_key
from k2.services.query.subscriptions import StreamEnded, Subscriptions
from k2.services.query.tokens import PageToken
from k2.services.query.wire import FRAMED, MESSAGE_TYPES, ipc_stream, joined, messages, response_slices
from k2.services.query.workers import Workers

SERVICE_NAME = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
T = TypeVar("T")
QUERY_RESPONSES: dict[RecordKind, type] = {
    TRADE: query_pb2.QueryTradesResponse,
    QUOTE: query_pb2.QueryQuotesResponse,
}


class DeadlineExceeded(Exception):
    pass


class Budget:
    """The time a request may take, readable from worker threads: its deadline, or cancellation."""

    def __init__(self, context: grpc.aio.ServicerContext):
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def expired(self) -> bool:
        return self._cancelled.is_set() or (self._deadline is not None and time.monotonic() > self._deadline)

    def check(self) -> None:
        if self.expired():
            raise DeadlineExceeded


KNOWN_FAILURES = (FieldError, SnapshotGone, OffsetsExpired, DeadlineExceeded, KafkaException, StreamEnded)


def _status(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status a known failure ends the call with."""
    if isinstance(error, FieldError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error.reason}"
    if isinstance(error, (SnapshotGone, OffsetsExpired)):
        return grpc.StatusCode.FAILED_PRECONDITION, f"{error}: the token's position expired; start without it"
    if isinstance(error, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the answer was complete"
    if isinstance(error, KafkaException):
        return grpc.StatusCode.UNAVAILABLE, f"Kafka: {error.args[0].str() if error.args else error}"
    assert isinstance(error, StreamEnded)
    return error.code, error.reason


class QueryServicer:
    def __init__(
        self,
        settings: QuerySettings,
        kafka: KafkaSettings,
        history: History,
        admin: KafkaAdmin,
        fanout: FanOut,
        subscriptions: Subscriptions,
        workers: Workers,
    ):
        self._settings = settings
        self._workers = workers
        self._kafka = kafka
        self._history = history
        self._admin = admin
        self._fanout = fanout
        self._subscriptions = subscriptions
        self._scans = ScanCache(settings.scan_cache_bytes)

    # ---- error handling and metrics --------------------------------------------------------------------------

    async def _stream(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        responses: Callable[[Budget], AsyncIterator[T]],
        *,
        timed: bool = True,
    ) -> AsyncIterator[T]:
        started = time.perf_counter()
        budget = Budget(context)
        context.add_done_callback(lambda _: budget.cancel())  # stops worker threads as soon as the call ends
        code = grpc.StatusCode.OK
        try:
            async for response in responses(budget):
                yield response
        except KNOWN_FAILURES as error:
            code, reason = _status(error)
            await context.abort(code, reason)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away (mid-await or mid-yield)
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL  # answered and logged by grpcserver's UnexpectedErrorInterceptor
            raise
        finally:
            budget.cancel()
            metrics.REQUESTS.labels(metrics.SERVICE, rpc, code.name).inc()
            if timed and code == grpc.StatusCode.OK:
                metrics.REQUEST_SECONDS.labels(metrics.SERVICE, rpc).observe(time.perf_counter() - started)

    async def _unary(
        self, rpc: str, context: grpc.aio.ServicerContext, answer: Callable[[Budget], Awaitable[T]]
    ) -> T:
        async def once(budget: Budget) -> AsyncIterator[T]:
            yield await answer(budget)

        answered: list[T] = []
        async for response in self._stream(rpc, context, once):  # to its end, so its bookkeeping runs now
            answered.append(response)
        return answered[0]

    # ---- QueryTrades / QueryQuotes ---------------------------------------------------------------------------

    async def QueryTrades(
        self, request: query_pb2.QueryTradesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for response in self._stream("QueryTrades", context, lambda b: self._range(TRADE, request, b)):
            yield response

    async def QueryQuotes(
        self, request: query_pb2.QueryQuotesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for response in self._stream("QueryQuotes", context, lambda b: self._range(QUOTE, request, b)):
            yield response

    async def _fresh_tail(self, kind: RecordKind) -> tuple[Snapshot, Offsets, Offsets]:
        """The current snapshot and the Kafka range it does not hold: [its recorded offsets, high watermarks),
        at most tail_max_messages of it. Both are read at once: a snapshot newer than the watermarks only makes
        that range empty."""
        topic = self._fanout.topics[kind]
        snapshot, (low, high) = await asyncio.gather(
            self._workers.run(self._history.current, kind, topic),
            self._workers.run(self._admin.watermarks, topic),
        )
        start = {p: max(snapshot.offsets.get(p, first), first) for p, first in low.items()}
        end = bounded_tail(start, high, self._settings.tail_max_messages)
        if end != high:
            metrics.TAIL_CAPPED.labels(metrics.SERVICE, kind).inc()
        return snapshot, start, end

    async def _tail(
        self,
        kind: RecordKind,
        start: Offsets,
        end: Offsets,
        selection: Selection,
        columns: list[str],
        budget: Budget,
    ) -> Any:
        return await self._workers.run(
            read_tail_table,
            self._kafka,
            self._fanout.framing,
            kind,
            self._fanout.topics[kind],
            start,
            end,
            selection,
            columns,
            self._settings.fetch_wait_max_ms,
            budget.check,
        )

    async def _range(
        self, kind: RecordKind, request: validation.QueryRequest, budget: Budget
    ) -> AsyncIterator[bytes]:
        query = validation.range_query(kind, request, self._settings, self._fanout.token_keys)
        arrow = request.format == query_pb2.ROW_FORMAT_ARROW
        columns = arrow_schema(kind).names
        scan_columns = columns if arrow else [*ORDER_COLUMNS, FRAMED]
        scan: Scan | None = None
        if query.page is None:
            snapshot, tail_start, tail_end = await self._fresh_tail(kind)
            after = None
        else:
            page = query.page
            tail_start, tail_end, after = page.tail_start, page.tail_end, page.after
            # the scan the previous page stopped in: this token was checked when that page began
            scan = self._scans.take((request.page_token, arrow))
            if scan is None:
                topic = self._fanout.topics[kind]
                validation.check_partitions(
                    "page_token",
                    {*page.tail_start, *page.tail_end},
                    await self._workers.run(self._admin.partitions, topic),
                )
                validation.check_tail(
                    "page_token", page.tail_start, page.tail_end, self._settings.tail_max_messages
                )
                snapshot = await self._workers.run(self._history.at, kind, topic, page.snapshot_id)
            else:
                snapshot = scan.snapshot
        if scan is None:
            tail = await self._tail(kind, tail_start, tail_end, query.selection, columns, budget)
            scan = await self._workers.run(Scan, kind, snapshot, query.selection, scan_columns, tail, after)
        scan.resume()
        read_limit = scan.rows_read + self._settings.page_max_rows_read
        rows_before = scan.rows_read
        remaining = query.limit
        last_key: Key | None = None
        resume: Key | None = None
        pending: pa.Table | None = None  # rows not sent yet: the last response carries the token
        returned = metrics.ROWS_RETURNED.labels(metrics.SERVICE, f"Query{kind.title()}s")
        reading: asyncio.Future[pa.Table | None] | None = None  # the next rows, read while these are sent
        try:
            while True:
                budget.check()
                if remaining == 0:
                    if await self._workers.run(scan.more, read_limit):
                        resume = last_key
                    break
                chunk = await (reading or self._workers.run(scan.next, read_limit, remaining))
                reading = None
                if chunk is None:
                    break
                if (
                    chunk.num_rows == 0
                ):  # the page read what it may: the next one goes on from where it stopped
                    position = scan.position()
                    resume = (
                        last_key if last_key is not None or position is None else (position, "", "", None, "")
                    )
                    break
                remaining -= chunk.num_rows
                last_key = row_key(chunk, chunk.num_rows - 1)
                if remaining:
                    reading = asyncio.ensure_future(self._workers.run(scan.next, read_limit, remaining))
                rows = chunk if pending is None else pa.concat_tables([pending, chunk])
                slices = self._response_slices(rows, arrow)
                for start, length in slices[:-1]:
                    returned.inc(length)
                    yield self._rows_response(kind, rows.slice(start, length), arrow, "")
                start, length = slices[-1]
                pending = rows.slice(start, length)
        finally:
            if reading is not None:  # the call ended early: the scan is left as it is, never kept
                reading.cancel()
            metrics.ROWS_READ.labels(metrics.SERVICE, f"Query{kind.title()}s").inc(
                scan.rows_read - rows_before
            )
        token = ""
        if resume is not None:
            token = PageToken(query.digest, snapshot.snapshot_id, tail_start, tail_end, resume).encode(
                self._fanout.token_keys
            )
            if (
                resume == last_key
            ):  # the scan stands right after the last row sent: the next page goes on with it
                self._scans.keep((token, arrow), scan)
        if pending is not None or token:
            returned.inc(0 if pending is None else pending.num_rows)
            yield self._rows_response(kind, pending, arrow, token)

    def _response_slices(self, rows: pa.Table, arrow: bool) -> list[tuple[int, int]]:
        most_rows, most_bytes = self._settings.response_rows, self._settings.response_bytes
        if not arrow:
            return list(response_slices(rows[FRAMED], most_rows, most_bytes))
        # Arrow rows are cut by bytes alone (many rows per response is what makes them fast), by their average size
        per_response = max(1, most_bytes * rows.num_rows // max(1, rows.nbytes))
        return [
            (start, min(per_response, rows.num_rows - start))
            for start in range(0, rows.num_rows, per_response)
        ]

    @staticmethod
    def _rows_response(kind: RecordKind, rows: pa.Table | None, arrow: bool, token: str) -> bytes:
        if rows is None or not rows.num_rows:
            return QUERY_RESPONSES[kind](next_page_token=token).SerializeToString()
        if arrow:
            return QUERY_RESPONSES[kind](arrow=ipc_stream(rows), next_page_token=token).SerializeToString()
        return (
            joined(rows[FRAMED].combine_chunks())
            + QUERY_RESPONSES[kind](next_page_token=token).SerializeToString()
        )

    # ---- GetBars ---------------------------------------------------------------------------------------------

    async def GetBars(
        self, request: query_pb2.GetBarsRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.GetBarsResponse:
        return await self._unary("GetBars", context, lambda budget: self._bars(request, budget))

    async def _bars(self, request: query_pb2.GetBarsRequest, budget: Budget) -> query_pb2.GetBarsResponse:
        query = validation.bars_query(request, self._settings)
        snapshot, tail_start, tail_end = await self._fresh_tail(TRADE)
        tail = await self._tail(TRADE, tail_start, tail_end, query.selection, bars_module.COLUMNS, budget)

        def compute() -> list[query_pb2.Bar]:
            builder = bars_module.BarBuilder(query.interval)
            for rows in ordered_rows(TRADE, snapshot, query.selection, bars_module.COLUMNS, tail):
                budget.check()
                builder.add(rows)
            return builder.protos()

        bars = await self._workers.run(compute)
        metrics.ROWS_RETURNED.labels(metrics.SERVICE, "GetBars").inc(len(bars))
        return query_pb2.GetBarsResponse(bars=bars)

    # ---- GetLatest -------------------------------------------------------------------------------------------

    async def GetLatest(
        self, request: query_pb2.GetLatestRequest, context: grpc.aio.ServicerContext
    ) -> query_pb2.GetLatestResponse:
        return await self._unary("GetLatest", context, lambda budget: self._latest(request, budget))

    async def _latest(
        self, request: query_pb2.GetLatestRequest, budget: Budget
    ) -> query_pb2.GetLatestResponse:
        symbols = validation.latest_symbols(request, self._settings)
        snapshots: dict[RecordKind, Snapshot] = {}
        entries = []
        for symbol in symbols:
            entry = query_pb2.Latest(symbol=symbol)
            for kind, field in ((TRADE, "trade"), (QUOTE, "quote")):
                live = self._fanout.latest(kind, symbol)
                if live is not None:
                    getattr(entry, field).CopyFrom(live)
                    continue
                budget.check()
                if kind not in snapshots:
                    topic = self._fanout.topics[kind]
                    snapshots[kind] = await self._workers.run(self._history.current, kind, topic)
                row = await self._workers.run(latest_row, kind, snapshots[kind], symbol)
                if row is not None:
                    getattr(entry, field).CopyFrom(
                        MESSAGE_TYPES[kind].FromString(messages(kind, row)[0].as_py())
                    )
            entries.append(entry)
        metrics.ROWS_RETURNED.labels(metrics.SERVICE, "GetLatest").inc(
            sum(e.HasField("trade") + e.HasField("quote") for e in entries)
        )
        return query_pb2.GetLatestResponse(latest=entries)

    # ---- subscriptions ---------------------------------------------------------------------------------------

    async def SubscribeTrades(
        self, request: query_pb2.SubscribeTradesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for payload in self._stream(
            "SubscribeTrades", context, lambda _: self._subscribe(TRADE, request, context), timed=False
        ):
            yield payload

    async def SubscribeQuotes(
        self, request: query_pb2.SubscribeQuotesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for payload in self._stream(
            "SubscribeQuotes", context, lambda _: self._subscribe(QUOTE, request, context), timed=False
        ):
            yield payload

    async def _subscribe(
        self, kind: RecordKind, request: validation.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        subscription = validation.subscription(kind, request, self._settings, self._fanout.token_keys)
        clean_ups: list[Callable[[], None]] = [metrics.ACTIVE_SUBSCRIBERS.labels(metrics.SERVICE, kind).dec]
        metrics.ACTIVE_SUBSCRIBERS.labels(metrics.SERVICE, kind).inc()

        def ended(_: object) -> None:
            while clean_ups:
                clean_ups.pop()()

        context.add_done_callback(ended)
        async for payload in self._subscriptions.stream(subscription, clean_ups.append):
            yield payload


def _pass_through(payload: bytes) -> bytes:
    return payload


def add_query_service(servicer: QueryServicer, server: grpc.aio.Server) -> None:
    """As the generated add_QueryServiceServicer_to_server, except that the streaming handlers yield their
    responses already serialized, so they pass through: QueryTrades/QueryQuotes encode rows column-wise
    (k2.services.query.wire), subscriptions share one response's bytes among every subscriber with the same filter."""
    handlers = {
        "QueryTrades": grpc.unary_stream_rpc_method_handler(
            servicer.QueryTrades,
            request_deserializer=query_pb2.QueryTradesRequest.FromString,
            response_serializer=_pass_through,
        ),
        "QueryQuotes": grpc.unary_stream_rpc_method_handler(
            servicer.QueryQuotes,
            request_deserializer=query_pb2.QueryQuotesRequest.FromString,
            response_serializer=_pass_through,
        ),
        "GetBars": grpc.unary_unary_rpc_method_handler(
            servicer.GetBars,
            request_deserializer=query_pb2.GetBarsRequest.FromString,
            response_serializer=query_pb2.GetBarsResponse.SerializeToString,
        ),
        "GetLatest": grpc.unary_unary_rpc_method_handler(
            servicer.GetLatest,
            request_deserializer=query_pb2.GetLatestRequest.FromString,
            response_serializer=query_pb2.GetLatestResponse.SerializeToString,
        ),
        "SubscribeTrades": grpc.unary_stream_rpc_method_handler(
            servicer.SubscribeTrades,
            request_deserializer=query_pb2.SubscribeTradesRequest.FromString,
            response_serializer=_pass_through,
        ),
        "SubscribeQuotes": grpc.unary_stream_rpc_method_handler(
            servicer.SubscribeQuotes,
            request_deserializer=query_pb2.SubscribeQuotesRequest.FromString,
            response_serializer=_pass_through,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class QueryServer(Service):
    def __init__(
        self,
        settings: QuerySettings | None = None,
        kafka: KafkaSettings | None = None,
        iceberg: IcebergSettings | None = None,
        auth: AuthSettings | None = None,
    ):
        settings = settings or QuerySettings()
        kafka = kafka or KafkaSettings()
        super().__init__(
            metrics.SERVICE,
            settings,
            auth or AuthSettings(),
            untraced_methods=[f"/{SERVICE_NAME}/SubscribeTrades", f"/{SERVICE_NAME}/SubscribeQuotes"],
        )
        history = History(
            iceberg or IcebergSettings(),
            ReadCache(settings.footer_cache_bytes, settings.small_file_cache_bytes),
        )
        admin = KafkaAdmin(kafka, settings.kafka_timeout_seconds)
        self.workers = Workers(settings.worker_threads)
        self.fanout = FanOut(kafka, settings, history, self.grpc.set_serving)
        self.subscriptions = Subscriptions(kafka, settings, admin, history, self.fanout, self.workers)
        self.grpc.add(
            add_query_service,  # type: ignore[arg-type]
            QueryServicer(settings, kafka, history, admin, self.fanout, self.subscriptions, self.workers),
            SERVICE_NAME,
        )

    async def start_work(self) -> None:
        await self.grpc.set_serving(False)  # until the fan-out reaches Kafka
        self.fanout.start()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the fan-out consumer has its partitions and reaches Kafka."""
        async with asyncio.timeout(timeout):
            await self.fanout.ready.wait()
            while not self.fanout.healthy:
                await asyncio.sleep(0.02)

    async def drain(self) -> None:
        """Ends every subscription cleanly (what it has queued, a last heartbeat with its resume_token, then
        UNAVAILABLE) before the grace period."""
        reason = "query service shutting down: resubscribe with the last resume_token"
        self.subscriptions.close(reason)
        self.fanout.end_all(grpc.StatusCode.UNAVAILABLE, reason)

    async def close(self) -> None:
        await self.fanout.stop()
        self.workers.close()
