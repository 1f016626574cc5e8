"""The Binance Spot live feed of the ingest service: trades and best bid/ask over combined WebSocket streams,
normalised to v2 records and published to Kafka through the service's sink.

    feed = BinanceFeed(BinanceSettings(), sink)
    task = asyncio.create_task(feed.run())
    feed.status()          # k2.ingest.v1.FeedStatus
    await feed.stop()      # stop reading, publish what was parsed, close the connections
"""

from .feed import BinanceFeed
from .metrics import register_feed
from .publishing import RecordSink
from .settings import BinanceSettings

__all__ = ["BinanceFeed", "BinanceSettings", "RecordSink", "create_feed"]


def create_feed(sink: RecordSink, settings: BinanceSettings | None = None) -> BinanceFeed:
    """The feed as the ingest service runs it: settings from the environment (K2_INGEST_BINANCE_*), its counters
    exported as the k2_binance_* metrics."""
    feed = BinanceFeed(settings or BinanceSettings(), sink)
    register_feed(feed)
    return feed
