"""Prometheus metrics of the ingest service (documented in docs/metrics.md). Module-level: one set per
process, however many servers a process starts (tests start several)."""

from collections import Counter as Tally
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

SERVICE = "ingest"
OTHER_SYMBOL = "_other"

MESSAGES_RECEIVED = Counter(
    "k2_ingest_messages_received",
    "Trades and quotes received, before validation",
    ["service", "source", "kind", "symbol"],
)
MESSAGES_ACCEPTED = Counter(
    "k2_ingest_messages_accepted",
    "Trades and quotes acknowledged by Kafka on the trades/quotes topic",
    ["service", "source", "kind"],
)
MESSAGES_REJECTED = Counter(
    "k2_ingest_messages_rejected",
    "Trades and quotes refused: invalid (with the offending field) or not delivered",
    ["service", "source", "kind", "reason", "field"],
)
PUBLISH_BATCHES = Counter(
    "k2_ingest_publish_batches",
    "PublishTrades/PublishQuotes request batches by outcome",
    ["service", "kind", "outcome"],
)
PUBLISH_ITEMS_WRITTEN_BEFORE = Counter(
    "k2_ingest_publish_items_written_before",
    "Published items not written again: a previous ingest process had written them (read back at start)",
    ["service", "kind"],
)
PUBLISH_STREAMS = Gauge(
    "k2_ingest_publish_streams", "Open PublishTrades/PublishQuotes streams", ["service", "kind"]
)
PRODUCE_BATCHES_IN_FLIGHT = Gauge(
    "k2_ingest_produce_batches_in_flight",
    "Batches handed to the Kafka producer and not yet acknowledged",
    ["service"],
).labels(SERVICE)
PRODUCER_BUFFERED_MESSAGES = Gauge(
    "k2_ingest_producer_buffered_messages",
    "Messages in the Kafka producer's buffer, not yet acknowledged",
    ["service"],
).labels(SERVICE)
KAFKA_DELIVERY_SECONDS = Histogram(
    "k2_ingest_kafka_delivery_seconds",
    "From handing a batch to the producer until Kafka acknowledged all of it",
    ["service", "topic"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
KAFKA_MESSAGES = Counter(
    "k2_ingest_kafka_messages",
    "Messages produced to Kafka by topic and outcome (delivered or failed)",
    ["service", "topic", "outcome"],
)
LOAD_ROWS = Counter(
    "k2_ingest_load_rows",
    "Rows of loaded files: accepted (on the trades/quotes topic) or rejected (dead-lettered)",
    ["service", "format", "outcome"],
)
LOADS_ACTIVE = Gauge("k2_ingest_loads_active", "LoadFiles calls in progress", ["service"]).labels(SERVICE)
DEDUPE_WINDOW_BYTES = Gauge(
    "k2_ingest_dedupe_window_bytes",
    "Bytes held by the remembered answers of recent batch ids (bounded by K2_INGEST_DEDUPE_WINDOW_BYTES)",
    ["service", "kind"],
)


class SymbolLabels:
    """Bounds the symbol label's cardinality: the first `limit` symbols of a source get their own series."""

    def __init__(self, limit: int):
        self.limit = limit
        self._known: dict[str, set[str]] = {}

    def count_received(self, source: str, kind: str, symbols: Iterable[str]) -> None:
        self.count_received_per_symbol(source, kind, Tally(symbols))

    def count_received_per_symbol(self, source: str, kind: str, counts: Mapping[str, int]) -> None:
        known = self._known.setdefault(source, set())
        for symbol, count in counts.items():
            if symbol not in known:
                if len(known) >= self.limit:
                    symbol = OTHER_SYMBOL
                else:
                    known.add(symbol)
            MESSAGES_RECEIVED.labels(SERVICE, source, kind, symbol).inc(count)


def count_rejected(source: str, kind: str, reason: str, fields: Iterable[str]) -> None:
    for field, count in Tally(fields).items():
        MESSAGES_REJECTED.labels(SERVICE, source, kind, reason, field).inc(count)
