"""K2 clients: the Python SDK (K2Client, AsyncK2Client) and the `k2` command line (k2.clients.cli). See docs/sdk.md."""

from k2.clients.aio import AsyncK2Client
from k2.clients.client import K2Client
from k2.clients.errors import K2Error
from k2.clients.models import (
    Bar,
    CompactProgress,
    CompactResult,
    FeedConnectionStatus,
    FeedStatus,
    Gap,
    Latest,
    LoadProgress,
    LoadSummary,
    PartitionStatus,
    PublishResult,
    Quote,
    Reconnect,
    Rejection,
    ServiceHealth,
    ServiceTracing,
    SubscriptionBatch,
    SymbolActivity,
    TableCommit,
    TableStatus,
    Trade,
    WriterStatus,
)
from k2.clients.settings import ClientSettings
from k2.clients.times import parse_time

__all__ = [
    "AsyncK2Client",
    "Bar",
    "ClientSettings",
    "CompactProgress",
    "CompactResult",
    "FeedConnectionStatus",
    "FeedStatus",
    "Gap",
    "K2Client",
    "K2Error",
    "Latest",
    "LoadProgress",
    "LoadSummary",
    "PartitionStatus",
    "PublishResult",
    "Quote",
    "Reconnect",
    "Rejection",
    "ServiceHealth",
    "ServiceTracing",
    "SubscriptionBatch",
    "SymbolActivity",
    "TableCommit",
    "TableStatus",
    "Trade",
    "WriterStatus",
    "parse_time",
]
