"""The ingest gRPC service: PublishTrades/PublishQuotes (publish.py), LoadFiles (loader.py), GetFeedStatus
(feeds.py), all writing through one KafkaSink (sink.py)."""

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from k2.core.config import AuthSettings, KafkaSettings
from k2.core.grpcserver import Service
from k2.core.kafka import provision_topics, watch_reachability
from k2.core.telemetry import context_from_metadata
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.services.ingest import metrics
from k2.services.ingest.config import IngestSettings
from k2.services.ingest.feeds import Feed, FeedRegistry
from k2.services.ingest.loader import Loader, LoadRefused
from k2.services.ingest.publish import QUOTES, TRADES, BatchRefused, Publisher
from k2.services.ingest.sink import KafkaSink

log = logging.getLogger(__name__)
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
# A publish stream may stay open for hours: no span for the whole call; each batch is a span of its own (in the
# caller's trace, if it sent one), whose Kafka messages carry its send span's context.
PUBLISH_METHODS = (f"/{SERVICE_NAME}/PublishTrades", f"/{SERVICE_NAME}/PublishQuotes")


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, publisher: Publisher, loader: Loader, feeds: FeedRegistry):
        self.publisher = publisher
        self.loader = loader
        self.feeds = feeds

    async def PublishTrades(
        self,
        request_iterator: AsyncIterator[ingest_pb2.PublishTradesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ingest_pb2.PublishTradesResponse]:
        try:
            async for answer in self.publisher.stream(
                TRADES, request_iterator, context_from_metadata(context.invocation_metadata())
            ):
                yield answer
        except BatchRefused as refused:
            await context.abort(refused.code, refused.message)

    async def PublishQuotes(
        self,
        request_iterator: AsyncIterator[ingest_pb2.PublishQuotesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ingest_pb2.PublishQuotesResponse]:
        try:
            async for answer in self.publisher.stream(
                QUOTES, request_iterator, context_from_metadata(context.invocation_metadata())
            ):
                yield answer
        except BatchRefused as refused:
            await context.abort(refused.code, refused.message)

    async def LoadFiles(
        self, request: ingest_pb2.LoadFilesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.LoadFilesResponse]:
        try:
            files = await asyncio.to_thread(self.loader.plan, request)
            async for response in self.loader.load(files):
                yield response
        except LoadRefused as refused:
            await context.abort(refused.code, refused.message)

    async def GetFeedStatus(
        self, request: ingest_pb2.GetFeedStatusRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetFeedStatusResponse:
        return ingest_pb2.GetFeedStatusResponse(feeds=self.feeds.statuses())


class IngestApp(Service):
    """The ingest service: tests start it in-process on port 0; `python -m k2.services.ingest` serves it until
    SIGTERM."""

    # Publishing allocates ~30 short-lived objects per trade: collecting the young generation less often (fewer,
    # larger collections) takes ~10% less CPU per trade.
    gc_thresholds = (50_000, 20, 100)

    def __init__(self, settings: IngestSettings, kafka: KafkaSettings, auth: AuthSettings):
        super().__init__(metrics.SERVICE, settings, auth, untraced_methods=PUBLISH_METHODS)
        self.settings = settings
        self.kafka = kafka
        self.sink = KafkaSink(kafka)
        self.feeds = FeedRegistry()
        self._kafka_watch: asyncio.Task[None] | None = None
        symbols = metrics.SymbolLabels(settings.metrics_symbols_per_source)
        self.servicer = IngestServicer(
            Publisher(settings, self.sink, symbols), Loader(settings, self.sink, symbols), self.feeds
        )
        self.grpc.add(ingest_pb2_grpc.add_IngestServiceServicer_to_server, self.servicer, SERVICE_NAME)
        metrics.PRODUCER_BUFFERED_MESSAGES.set_function(self.sink.buffered)

    def add_feed(self, feed: Feed) -> None:
        """Registers an exchange feed before start(): it starts with the service and is stopped before the
        producer is flushed; GetFeedStatus lists it."""
        self.feeds.add(feed)

    async def prepare(self) -> None:
        if self.settings.provision_topics:
            created = await asyncio.to_thread(provision_topics, self.kafka)
            if created:
                log.info("created Kafka topics %s", ", ".join(created))
        self.servicer.publisher.recovery.start()

    async def start_work(self) -> None:
        """The feeds, and health that follows Kafka (NOT_SERVING while it is unreachable)."""
        self.feeds.start()
        self._kafka_watch = asyncio.create_task(watch_reachability(self.kafka, self.grpc.set_serving))

    async def close(self) -> None:
        """Stops the feeds, then flushes everything produced to Kafka."""
        if self._kafka_watch is not None:
            self._kafka_watch.cancel()
        await self.servicer.publisher.recovery.stop()
        await self.feeds.stop(self.settings.feed_stop_seconds)
        unflushed = await self.sink.close(timeout=max(self.settings.grace_seconds, 30.0))
        if unflushed:
            log.error("%d messages were not acknowledged by Kafka before shutdown", unflushed)


def exchange_feeds(settings: IngestSettings, sink: KafkaSink) -> list[Feed]:
    """The exchange feeds this configuration enables."""
    feeds: list[Feed] = []
    if settings.binance_enabled:
        from k2.services.ingest.binance import create_feed  # only imported where the feed is enabled

        feeds.append(create_feed(sink))
    return feeds


def ingest_service(settings: IngestSettings, kafka: KafkaSettings, auth: AuthSettings) -> IngestApp:
    """The service with the exchange feeds its settings enable."""
    app = IngestApp(settings, kafka, auth)
    for feed in exchange_feeds(settings, app.sink):
        app.add_feed(feed)
    return app
