"""Prometheus metrics of the Binance feed (documented in docs/metrics.md).

The hot path only increments plain integers on the feed's objects; this collector turns them into metrics
when Prometheus scrapes, so per-message work carries no metrics-library cost.
"""

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from k2.services.ingest.metrics import OTHER_SYMBOL

if TYPE_CHECKING:
    from .feed import BinanceFeed

SERVICE = "ingest"
_feeds: "weakref.WeakSet[BinanceFeed]" = weakref.WeakSet()


def register_feed(feed: "BinanceFeed") -> None:
    _feeds.add(feed)


# (name, documentation, label or None, counter?)
_METRICS = [
    ("k2_binance_messages_received", "Data frames received, by symbol", "symbol", True),
    ("k2_binance_trades", "Trades parsed and queued for Kafka, by symbol", "symbol", True),
    ("k2_binance_quotes", "Quotes (bookTicker) parsed and queued for Kafka, by symbol", "symbol", True),
    (
        "k2_binance_duplicates",
        "Copies dropped (switch-over overlap, superseded quotes), by kind",
        "kind",
        True,
    ),
    (
        "k2_binance_published",
        "Records acknowledged by Kafka, by kind (trade, quote, dead_letter)",
        "kind",
        True,
    ),
    ("k2_binance_publish_retries", "Publish attempts repeated after Kafka refused records", None, True),
    (
        "k2_binance_undeliverable",
        "Records Kafka refused publish_attempts times, by outcome (dead_lettered, lost)",
        "outcome",
        True,
    ),
    ("k2_binance_unknown_events", "Frames of unknown event types, skipped", "event", True),
    ("k2_binance_unknown_fields", "Unknown fields in known events, skipped", "field", True),
    ("k2_binance_malformed", "Frames dead-lettered as malformed, by reason", "reason", True),
    ("k2_binance_reconnects", "Reconnects and switch-overs, by reason", "reason", True),
    ("k2_binance_connect_failures", "Failed connection attempts", None, True),
    ("k2_binance_gaps", "Trade-id gaps detected, by symbol", "symbol", True),
    ("k2_binance_trades_missed", "Trades missing in detected gaps, by symbol", "symbol", True),
    (
        "k2_binance_sequence_resets",
        "Trade-id sequences reset by an id beyond the maximum jump, by symbol",
        "symbol",
        True,
    ),
    (
        "k2_binance_trades_backfilled",
        "Missing trades recovered from the REST API and queued for Kafka, by symbol",
        "symbol",
        True,
    ),
    ("k2_binance_backfills", "Gaps handed to the REST backfill, by outcome", "outcome", True),
    ("k2_binance_task_restarts", "Feed tasks restarted after failing (the backfill), by task", "task", True),
    ("k2_binance_last_event_timestamp_seconds", "Trade time of the latest trade, by symbol", "symbol", False),
    (
        "k2_binance_connection_state",
        "ConnectionState of each connection group (1 connecting, 2 connected, 3 reconnecting, 4 stopped)",
        "connection",
        False,
    ),
    (
        "k2_binance_connection_streams",
        "Streams subscribed on each connection group's serving connection",
        "connection",
        False,
    ),
    (
        "k2_binance_connection_frames",
        "Frames received by each connection group, over its reconnects",
        "connection",
        True,
    ),
    (
        "k2_binance_connection_reconnects",
        "Reconnects and switch-overs of each connection group",
        "connection",
        True,
    ),
    ("k2_binance_connections", "Open WebSocket connections", None, False),
    ("k2_binance_symbols", "Symbols followed", None, False),
    (
        "k2_binance_symbol_changes",
        "Symbols listed or delisted while running (symbols=ALL), and listings past max_symbols not followed",
        "change",
        True,
    ),
    (
        "k2_binance_listing_reads",
        "Reads of the exchange's symbol list (exchangeInfo), by outcome",
        "outcome",
        True,
    ),
    ("k2_binance_circuit_state", "Circuit breaker state (1 closed, 2 open, 3 half-open)", None, False),
    ("k2_binance_queue_depth", "Records parsed but not yet acknowledged by Kafka", None, False),
]


def _samples(feed: "BinanceFeed") -> Iterator[tuple[str, str, float]]:
    """(metric, label value or "", value) of one feed. Past metrics_symbols symbols, counts go to "_other"."""
    labelled = feed.settings.metrics_symbols
    for index, s in enumerate(feed.states):
        symbol = s.symbol if index < labelled else OTHER_SYMBOL
        yield "k2_binance_messages_received", symbol, s.messages
        yield "k2_binance_trades", symbol, s.trades
        yield "k2_binance_quotes", symbol, s.quotes
        yield "k2_binance_gaps", symbol, s.gaps
        yield "k2_binance_trades_missed", symbol, s.missed
        yield "k2_binance_sequence_resets", symbol, s.resets
        yield "k2_binance_trades_backfilled", symbol, s.backfilled
        if s.last_event_us and index < labelled:
            yield "k2_binance_last_event_timestamp_seconds", symbol, s.last_event_us / 1e6
    for outcome, count in feed.backfill.outcomes.items():
        yield "k2_binance_backfills", outcome, count
    for task, count in feed.task_restarts.items():
        yield "k2_binance_task_restarts", task, count
    yield "k2_binance_duplicates", "trade", sum(s.duplicate_trades for s in feed.states)
    yield "k2_binance_duplicates", "quote", sum(s.duplicate_quotes for s in feed.states)
    for kind, count in feed.publisher.published.items():
        yield "k2_binance_published", kind, count
    yield "k2_binance_publish_retries", "", feed.publisher.retries
    for outcome, count in feed.publisher.undeliverable.items():
        yield "k2_binance_undeliverable", outcome, count
    for event, count in feed.parser.unknown_events.items():
        yield "k2_binance_unknown_events", event, count
    for field, count in feed.parser.unknown_fields.items():
        yield "k2_binance_unknown_fields", field, count
    for reason, count in feed.parser.malformed.items():
        yield "k2_binance_malformed", reason, count
    for reason, count in feed.reconnects.items():
        yield "k2_binance_reconnects", reason, count
    yield "k2_binance_connect_failures", "", feed.connect_failures
    for group in feed.groups:
        number = str(group.number)
        yield "k2_binance_connection_state", number, feed.group_state(group)
        yield (
            "k2_binance_connection_streams",
            number,
            len(group.active.streams) if group.active is not None else 0,
        )
        yield "k2_binance_connection_frames", number, group.frames
        yield "k2_binance_connection_reconnects", number, group.reconnects
    yield "k2_binance_connections", "", len(feed.open_connections())
    yield "k2_binance_symbols", "", len(feed.states)
    yield "k2_binance_symbol_changes", "listed", feed.listed
    yield "k2_binance_symbol_changes", "delisted", feed.delisted
    yield "k2_binance_symbol_changes", "over_limit", feed.over_limit
    if feed.listing is not None:
        yield "k2_binance_listing_reads", "ok", feed.listing.reads
        yield "k2_binance_listing_reads", "failed", feed.listing.failures
    yield "k2_binance_circuit_state", "", feed.breaker.state
    yield "k2_binance_queue_depth", "", feed.publisher.unpublished()


class BinanceFeedCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        totals: dict[tuple[str, str], float] = {}
        for feed in list(_feeds):  # one per process in service; several can coexist in tests: values add up
            for name, label, value in _samples(feed):
                totals[name, label] = totals.get((name, label), 0) + value
        for name, documentation, label_name, is_counter in _METRICS:
            family_type = CounterMetricFamily if is_counter else GaugeMetricFamily
            family = family_type(
                name, documentation, labels=["service"] + ([label_name] if label_name else [])
            )
            for (metric, label_value), value in sorted(totals.items()):
                if metric == name:
                    family.add_metric([SERVICE, label_value] if label_name else [SERVICE], value)
            yield family


REGISTRY.register(BinanceFeedCollector())
