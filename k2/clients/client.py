"""K2Client: the blocking SDK. The same calls as AsyncK2Client, run on a private event-loop thread, so there is
one implementation of batching, retries and resumption.

    from k2.clients import K2Client

    with K2Client() as k2:
        table = k2.query_trades("BHP", start="2014-03-10T00:00Z", end="2014-03-11T00:00Z")
        print(table.num_rows)
        for batch in k2.subscribe_trades(["BTCUSDT"]):
            for trade in batch.records:
                print(trade.timestamp, trade.symbol, trade.price)
"""

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar

import pyarrow as pa

from k2.clients.aio import AsyncK2Client, FileFormat, TimeArg
from k2.clients.models import (
    Bar,
    CompactProgress,
    CompactResult,
    FeedStatus,
    Latest,
    LoadProgress,
    LoadSummary,
    PublishResult,
    Quote,
    ServiceHealth,
    ServiceTracing,
    SubscriptionBatch,
    TableCommit,
    Trade,
    WriterStatus,
)
from k2.clients.retrying import OnReconnect
from k2.clients.settings import SERVICES, ClientSettings

T = TypeVar("T")
CANCEL_WAIT_SECONDS = 5.0


class K2Client:
    """Blocking client of the three K2 services; close it with `close()` or use it as a context manager.

    >>> with K2Client(query_address="127.0.0.1:1") as k2:
    ...     [h.status for h in k2.health(["query"])]
    ['UNAVAILABLE']
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
        self._aio = AsyncK2Client(
            settings,
            ingest_address=ingest_address,
            writer_address=writer_address,
            query_address=query_address,
            token=token,
        )
        self.settings = self._aio.settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k2-client", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._aio.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C): cancel the call itself, not only the wait for it.
            future.cancel()
            concurrent.futures.wait([future], timeout=CANCEL_WAIT_SECONDS)
            raise

    def _iterate(self, generator: AsyncGenerator[T, None]) -> Iterator[T]:
        async def step() -> T:
            return await anext(generator)

        try:
            while True:
                try:
                    yield self._run(step())
                except StopAsyncIteration:
                    return
        finally:
            if not self._loop.is_closed():
                self._run(generator.aclose())

    def publish_trades(
        self, trades: Iterable[Trade | Mapping[str, Any]], *, batch_size: int | None = None
    ) -> PublishResult:
        """See AsyncK2Client.publish_trades."""
        return self._run(self._aio.publish_trades(trades, batch_size=batch_size))

    def publish_quotes(
        self, quotes: Iterable[Quote | Mapping[str, Any]], *, batch_size: int | None = None
    ) -> PublishResult:
        return self._run(self._aio.publish_quotes(quotes, batch_size=batch_size))

    def load_files(
        self, paths: Sequence[str], file_format: FileFormat, *, reference_data_path: str = ""
    ) -> Iterator[LoadProgress | LoadSummary]:
        return self._iterate(
            self._aio.load_files(paths, file_format, reference_data_path=reference_data_path)
        )

    def feed_status(self) -> list[FeedStatus]:
        return self._run(self._aio.feed_status())

    def writer_status(self) -> WriterStatus:
        return self._run(self._aio.writer_status())

    def flush(self) -> list[TableCommit]:
        return self._run(self._aio.flush())

    def compact(
        self,
        table: str,
        *,
        start: TimeArg | None = None,
        end: TimeArg | None = None,
        target_file_size_bytes: int = 0,
    ) -> Iterator[CompactProgress | CompactResult]:
        return self._iterate(
            self._aio.compact(table, start=start, end=end, target_file_size_bytes=target_file_size_bytes)
        )

    def query_trades(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> pa.Table:
        """See AsyncK2Client.query_trades."""
        return self._run(self._aio.query_trades(symbols, start, end, exchange=exchange, limit=limit))

    def query_quotes(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> pa.Table:
        return self._run(self._aio.query_quotes(symbols, start, end, exchange=exchange, limit=limit))

    def query_trade_records(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> list[Trade]:
        return self._run(self._aio.query_trade_records(symbols, start, end, exchange=exchange, limit=limit))

    def query_quote_records(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg,
        *,
        exchange: str = "",
        limit: int | None = None,
    ) -> list[Quote]:
        return self._run(self._aio.query_quote_records(symbols, start, end, exchange=exchange, limit=limit))

    def bars(
        self, symbol: str, start: TimeArg, end: TimeArg, *, interval: str = "1m", exchange: str = ""
    ) -> list[Bar]:
        return self._run(self._aio.bars(symbol, start, end, interval=interval, exchange=exchange))

    def latest(self, symbols: str | Sequence[str]) -> dict[str, Latest]:
        return self._run(self._aio.latest(symbols))

    def subscribe_trades(
        self,
        symbols: str | Sequence[str] = (),
        *,
        exchanges: Sequence[str] = (),
        start: TimeArg | None = None,
        resume_token: str = "",
        on_reconnect: OnReconnect | None = None,
    ) -> Iterator[SubscriptionBatch[Trade]]:
        """See AsyncK2Client.subscribe_trades. Closing the iterator (or leaving a for loop) ends the stream;
        `on_reconnect` is called on the client's event-loop thread."""
        return self._iterate(
            self._aio.subscribe_trades(
                symbols,
                exchanges=exchanges,
                start=start,
                resume_token=resume_token,
                on_reconnect=on_reconnect,
            )
        )

    def subscribe_quotes(
        self,
        symbols: str | Sequence[str] = (),
        *,
        exchanges: Sequence[str] = (),
        start: TimeArg | None = None,
        resume_token: str = "",
        on_reconnect: OnReconnect | None = None,
    ) -> Iterator[SubscriptionBatch[Quote]]:
        return self._iterate(
            self._aio.subscribe_quotes(
                symbols,
                exchanges=exchanges,
                start=start,
                resume_token=resume_token,
                on_reconnect=on_reconnect,
            )
        )

    def health(self, services: Sequence[str] = SERVICES) -> list[ServiceHealth]:
        return self._run(self._aio.health(services))

    def tracing(self, services: Sequence[str] = SERVICES) -> list[ServiceTracing]:
        return self._run(self._aio.tracing(services))
