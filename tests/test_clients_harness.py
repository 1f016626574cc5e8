"""Server-side test doubles for the client tests: the three K2 gRPC services (ingest, writer, query) implemented
in memory with the real contracts, the real core conversion and validation, and the real serving plumbing
(k2.core.grpcserver: token auth, health). The component under test is the client (SDK and CLI); these doubles
let the tests inject what real services do under failure: a stream lost before its acknowledgement, a
subscription dropped mid-stream, a service that is down.

The servers run on their own event-loop thread so blocking clients and the CLI (CliRunner) can call them.
No test functions here; test_clients_sdk.py and test_clients_cli.py use it.
"""

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import grpc
from pydantic import SecretStr

from k2.core.config import AuthSettings, ServerSettings
from k2.core.grpcserver import GrpcServer
from k2.core.protos import (
    datetime_from_timestamp,
    quote_from_proto,
    quote_to_proto,
    set_timestamp,
    trade_from_proto,
    trade_to_proto,
)
from k2.core.records import FieldError, Record, new_message_id
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.query.v1 import query_pb2, query_pb2_grpc
from k2.writer.v1 import writer_pb2, writer_pb2_grpc

TOKEN = "test-write-token"
T = TypeVar("T")
DAY = datetime(2014, 3, 10, tzinfo=UTC)
# The query double's page bound (the real service's "server maximum"), and trades per streamed response.
MAX_PAGE = 250
RESPONSE_CHUNK = 100
HEARTBEAT_SECONDS = 0.05


def trade(n: int, *, symbol: str = "BHP", price: str | None = None, quantity: str = "100") -> Record:
    """The n-th trade of a symbol on 2014-03-10, one second apart; prices use all 18 fractional digits."""
    return {
        "message_id": new_message_id(),
        "trade_id": f"ASX-{symbol}-{n}",
        "symbol": symbol,
        "exchange": "ASX",
        "asset_class": "EQUITIES",
        "timestamp": DAY + timedelta(seconds=n),
        "price": Decimal(price or f"37.{n:04d}00000000000001"),
        "quantity": Decimal(quantity),
        "currency": "AUD",
        "side": "BUY" if n % 2 else "SELL",
        "trade_conditions": ["XT"],
        "source_sequence": n,
        "ingestion_timestamp": DAY + timedelta(seconds=n, microseconds=250),
        "platform_sequence": None,
        "vendor_data": {"venue": "X"},
    }


def quote(n: int, *, symbol: str = "BHP") -> Record:
    return {
        "message_id": new_message_id(),
        "quote_id": f"ASX-{symbol}-q{n}",
        "symbol": symbol,
        "exchange": "ASX",
        "asset_class": "EQUITIES",
        "timestamp": DAY + timedelta(seconds=n),
        "bid_price": Decimal("37.70"),
        "bid_quantity": Decimal(300 + n),
        "ask_price": None if n % 3 == 0 else Decimal("37.71"),
        "ask_quantity": None if n % 3 == 0 else Decimal("1000.5"),
        "currency": "AUD",
        "source_sequence": None,
        "ingestion_timestamp": DAY + timedelta(seconds=n, microseconds=500),
        "platform_sequence": None,
        "vendor_data": None,
    }


class IngestDouble(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self) -> None:
        self.published: list[Record] = []
        self.outcomes: dict[str, Any] = {}
        # Every batch id received, per stream (an empty stream is a client's probe, see k2.clients.aio._PublishRun).
        self.streams: list[list[str]] = []
        # Streams to fail with UNAVAILABLE when their first batch arrives, before processing it.
        self.fail_streams = 0

        # Process the n-th batch received (0-based, counted across streams), then fail the stream before its
        # acknowledgement is sent: the publisher cannot tell whether it was written.
        self.lose_ack_at: int | None = None
        self.load_requests: list[ingest_pb2.LoadFilesRequest] = []
        self.feeds = [
            ingest_pb2.FeedStatus(
                name="binance",
                state=ingest_pb2.CONNECTION_STATE_CONNECTED,
                endpoint="wss://stream.example:9443",
                streams=["btcusdt@trade"],
                symbols=["BTCUSDT"],
                messages_per_second=12.5,
                trades_per_second=10.0,
                reconnects_by_reason={"watchdog": 2},
                gaps_detected=1,
                trades_missed=3,
                circuit_state=ingest_pb2.CIRCUIT_STATE_CLOSED,
                connections=1,
                recent_gaps=[ingest_pb2.Gap(symbol="BTCUSDT", first_missing=101, last_missing=103)],
            )
        ]

    async def _publish(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        items: str,
        convert: Any,
        response_type: Any,
    ) -> AsyncIterator[Any]:
        stream: list[str] = []
        self.streams.append(stream)
        async for request in requests:
            stream.append(request.batch_id)
            if self.fail_streams:
                self.fail_streams -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: stream failed")
            if request.batch_id in self.outcomes:
                response = response_type()
                response.CopyFrom(self.outcomes[request.batch_id])
                response.duplicate = True
            else:
                response = response_type(batch_id=request.batch_id)
                for index, message in enumerate(getattr(request, items)):
                    try:
                        self.published.append(convert(message))
                        response.accepted += 1
                    except FieldError as error:
                        response.rejections.add(index=index, field=error.field, reason=error.reason)
                self.outcomes[request.batch_id] = response
            if sum(len(s) for s in self.streams) - 1 == self.lose_ack_at:
                self.lose_ack_at = None
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: acknowledgement lost")
            yield response

    @property
    def attempts(self) -> list[list[str]]:
        """The batch ids of each publish stream that carried any."""
        return [stream for stream in self.streams if stream]

    async def PublishTrades(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for response in self._publish(
            request_iterator, context, "trades", trade_from_proto, ingest_pb2.PublishTradesResponse
        ):
            yield response

    async def PublishQuotes(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for response in self._publish(
            request_iterator, context, "quotes", quote_from_proto, ingest_pb2.PublishQuotesResponse
        ):
            yield response

    async def LoadFiles(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.load_requests.append(request)
        summary = ingest_pb2.LoadSummary()
        for path in request.paths:
            if not Path(path).is_file():
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"not a file below the load root: {path}"
                )
            rows = Path(path).read_bytes().count(b"\n")
            for read in range(0, rows, max(5, rows // 4)):
                yield ingest_pb2.LoadFilesResponse(
                    progress=ingest_pb2.LoadProgress(
                        path=path, rows_read=read, rows_accepted=read, rows_per_second=1000.0
                    )
                )
            summary.files.add(
                path=path, rows_read=rows, rows_accepted=rows - 1, rows_rejected=1, rows_per_second=1000.0
            )
            summary.rows_read += rows
            summary.rows_accepted += rows - 1
            summary.rows_rejected += 1
        summary.seconds = 0.5
        yield ingest_pb2.LoadFilesResponse(summary=summary)

    async def GetFeedStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return ingest_pb2.GetFeedStatusResponse(feeds=self.feeds)


class QueryDouble(query_pb2_grpc.QueryServiceServicer):
    def __init__(self) -> None:
        self.trades = [trade_to_proto(trade(n)) for n in range(600)]
        self.trades += [trade_to_proto(trade(n, symbol="DVN", price="1.005")) for n in range(5)]
        self.trades.sort(key=lambda t: (t.timestamp.seconds, t.timestamp.nanos))
        self.quotes = [quote_to_proto(quote(n)) for n in range(30)]
        self.query_requests: list[Any] = []
        # The live tail served by SubscribeTrades, two trades per response; resume tokens are response numbers.
        self.live = [trade_to_proto(trade(1000 + n, symbol="BTCUSDT")) for n in range(20)]
        self.subscribe_requests: list[query_pb2.SubscribeTradesRequest] = []
        # Fail the first subscription with UNAVAILABLE after this many responses.
        self.drop_after: int | None = None
        # Refuse this many subscriptions (UNAVAILABLE) after the first drop, as a restarting service would.
        self.refuse_after_drop = 0
        self.open_subscriptions = 0
        # Fail this many GetLatest calls with UNAVAILABLE before answering; every call is counted.
        self.fail_latest = 0
        self.latest_calls = 0

    async def _query(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        messages: list[Any],
        field: str,
        response_type: Any,
    ) -> AsyncIterator[Any]:
        self.query_requests.append(request)
        start, end = (datetime_from_timestamp(name, getattr(request, name)) for name in ("start", "end"))
        if start >= end:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "start must be before end")
        matching = [
            m
            for m in messages
            if m.symbol in request.symbols
            and start <= datetime_from_timestamp("timestamp", m.timestamp) < end
        ]
        offset = int(request.page_token or 0)
        page_end = offset + min(request.limit or MAX_PAGE, MAX_PAGE)
        page = matching[offset:page_end]
        for chunk in range(0, len(page), RESPONSE_CHUNK):
            response = response_type(**{field: page[chunk : chunk + RESPONSE_CHUNK]})
            if chunk + RESPONSE_CHUNK >= len(page) and page_end < len(matching):
                response.next_page_token = str(page_end)
            yield response

    async def QueryTrades(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self._query(
            request, context, self.trades, "trades", query_pb2.QueryTradesResponse
        ):
            yield response

    async def QueryQuotes(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self._query(
            request, context, self.quotes, "quotes", query_pb2.QueryQuotesResponse
        ):
            yield response

    async def GetBars(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.interval != query_pb2.BAR_INTERVAL_1M:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "only 1m bars here")
        bars = query_pb2.GetBarsResponse()
        for minute in range(3):
            bar = bars.bars.add(
                open="37.51",
                high="37.6",
                low="37.5",
                close="37.55",
                volume="12000.000000000000000001",
                vwap="37.543333333333333333",
                trade_count=60,
            )
            set_timestamp(bar.start, DAY + timedelta(minutes=minute))
        return bars

    async def GetLatest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.latest_calls += 1
        if self.fail_latest:
            self.fail_latest -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: not serving yet")
        response = query_pb2.GetLatestResponse()
        for symbol in request.symbols:
            trades = [t for t in self.trades if t.symbol == symbol]
            quotes = [q for q in self.quotes if q.symbol == symbol]
            if trades or quotes:
                latest = response.latest.add(symbol=symbol)
                if trades:
                    latest.trade.CopyFrom(trades[-1])
                if quotes:
                    latest.quote.CopyFrom(quotes[-1])
        return response

    async def SubscribeTrades(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.subscribe_requests.append(request)
        if request.resume_token and self.refuse_after_drop:
            self.refuse_after_drop -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: restarting")
        self.open_subscriptions += 1
        try:
            position = int(request.resume_token or 0)
            sent = 0
            while True:
                if self.drop_after is not None and sent == self.drop_after:
                    self.drop_after = None
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: subscription dropped")
                batch = [
                    t
                    for t in self.live[2 * position : 2 * position + 2]
                    if not request.symbols or t.symbol in request.symbols
                ]
                response = query_pb2.SubscribeTradesResponse(trades=batch, replay=False)
                set_timestamp(response.server_time, datetime.now(UTC))
                if 2 * position < len(self.live):
                    position += 1
                else:
                    await asyncio.sleep(HEARTBEAT_SECONDS)
                response.resume_token = str(position)
                sent += 1
                yield response
        finally:
            self.open_subscriptions -= 1


class WriterDouble(writer_pb2_grpc.WriterServiceServicer):
    def __init__(self) -> None:
        self.flushes = 0

    async def GetStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status = writer_pb2.GetStatusResponse(last_commit_rows=1200, last_commit_bytes=56000, dead_lettered=4)
        status.partitions.add(
            topic="market.trades.v2", partition=0, committed_offset=90, high_watermark=100, lag=10
        )
        status.partitions.add(
            topic="market.quotes.v2", partition=0, committed_offset=50, high_watermark=52, lag=2
        )
        table = status.tables.add(
            table="market_data.trades", snapshot_id=42, rows=91631, files=7, freshness_seconds=1.5
        )
        set_timestamp(table.newest_event_time, DAY + timedelta(hours=5))
        set_timestamp(status.last_commit_time, DAY + timedelta(hours=6))
        return status

    async def Flush(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.flushes += 1
        response = writer_pb2.FlushResponse()
        response.commits.add(table="market_data.trades", snapshot_id=43, rows=17)
        response.commits.add(table="market_data.quotes", snapshot_id=0, rows=0)
        return response

    async def Compact(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if request.table not in ("market_data.trades", "market_data.quotes"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no table {request.table}")
        for done in range(1, 4):
            yield writer_pb2.CompactResponse(
                progress=writer_pb2.CompactProgress(
                    partition=f"timestamp_day=2014-03-1{done - 1}", partitions_done=done, partitions_total=3
                )
            )
        yield writer_pb2.CompactResponse(
            result=writer_pb2.CompactResult(files_before=30, files_after=3, snapshot_id=44)
        )


class ServerThread:
    """An event loop on its own thread, for servers that blocking clients call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)


_server_thread: ServerThread | None = None


def server_thread() -> ServerThread:
    global _server_thread
    if _server_thread is None:
        _server_thread = ServerThread()
    return _server_thread


@dataclass
class Platform:
    """The three doubles behind one gRPC server (the client's three addresses all point at it)."""

    address: str
    ingest: IngestDouble = field(default_factory=IngestDouble)
    query: QueryDouble = field(default_factory=QueryDouble)
    writer: WriterDouble = field(default_factory=WriterDouble)
    stop: Callable[[], None] = lambda: None  # stops serving (a service going away), at most once

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment for the CLI: every address at this server, the test token."""
        return {
            "K2_INGEST_ADDRESS": self.address,
            "K2_WRITER_ADDRESS": self.address,
            "K2_QUERY_ADDRESS": self.address,
            "K2_TOKEN": TOKEN,
            **overrides,
        }


@contextmanager
def running_platform() -> Iterator[Platform]:
    thread = server_thread()
    platform = Platform(address="")

    async def start() -> GrpcServer:
        server = GrpcServer(
            "client-test",
            ServerSettings(host="127.0.0.1", port=0, grace_seconds=0.2),
            AuthSettings(write_tokens=[SecretStr(TOKEN)]),
        )
        server.add(
            ingest_pb2_grpc.add_IngestServiceServicer_to_server, platform.ingest, "k2.ingest.v1.IngestService"
        )
        server.add(
            query_pb2_grpc.add_QueryServiceServicer_to_server, platform.query, "k2.query.v1.QueryService"
        )
        server.add(
            writer_pb2_grpc.add_WriterServiceServicer_to_server, platform.writer, "k2.writer.v1.WriterService"
        )
        await server.start()
        return server

    server = thread.run(start())
    platform.address = f"127.0.0.1:{server.port}"
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            thread.run(server.stop())

    platform.stop = stop
    try:
        yield platform
    finally:
        stop()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def unused_address() -> str:
    """An address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"
