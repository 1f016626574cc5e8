"""Prometheus metrics of the query service (documented in docs/metrics.md)."""

from prometheus_client import Counter, Gauge, Histogram

SERVICE = "query"

REQUEST_SECONDS = Histogram(
    "k2_query_request_seconds",
    "Time to answer a query RPC completely (streams: until the last response).",
    ["service", "rpc"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REQUESTS = Counter(
    "k2_query_requests_total", "Query RPCs by outcome (gRPC status code name).", ["service", "rpc", "code"]
)
ROWS_RETURNED = Counter(
    "k2_query_rows_returned_total",
    "Trades, quotes or bars returned by QueryTrades, QueryQuotes, GetBars and GetLatest.",
    ["service", "rpc"],
)
ACTIVE_SUBSCRIBERS = Gauge("k2_query_active_subscribers", "Open subscription streams.", ["service", "kind"])
DELIVERED = Counter(
    "k2_query_delivered_total",
    "Trades or quotes sent to subscribers, by phase.",
    ["service", "kind", "phase"],
)
SLOW_SUBSCRIBER_DROPS = Counter(
    "k2_query_slow_subscriber_drops_total",
    "Subscriptions ended with RESOURCE_EXHAUSTED because their send buffer was full.",
    ["service", "kind"],
)
FAILED_SUBSCRIBERS = Counter(
    "k2_query_failed_subscribers_total",
    "Subscriptions ended with INTERNAL because delivering to them failed (the error is logged); the fan-out "
    "goes on serving the others.",
    ["service", "kind"],
)
RESUME_FALLBACKS = Counter(
    "k2_query_resume_fallbacks_total",
    "Resumed subscriptions whose position had left Kafka (retention) or Iceberg (expired snapshot) and restarted "
    "from history at the token's time mark.",
    ["service", "kind"],
)
TAIL_LAG = Gauge(
    "k2_query_tail_lag_messages",
    "Messages in Kafka the live fan-out consumer has not yet read (high watermark - position).",
    ["service", "topic"],
)
KAFKA_UP = Gauge("k2_query_kafka_up", "1 while the fan-out consumer reaches Kafka, else 0.", ["service"])
LATEST_FORGOTTEN = Counter(
    "k2_query_latest_forgotten_total",
    "Symbols whose latest trade or quote the fan-out forgot because it held K2_QUERY_LATEST_MAX_SYMBOLS.",
    ["service", "kind"],
)
INVALID_MESSAGES = Counter(
    "k2_query_invalid_messages_total",
    "Kafka messages the fan-out skipped: not a valid record of the topic's kind.",
    ["service", "topic"],
)
TAIL_CAPPED = Counter(
    "k2_query_tail_capped_total",
    "History queries (QueryTrades/QueryQuotes first pages, GetBars) that read only K2_QUERY_TAIL_MAX_MESSAGES of "
    "the Kafka tail the writer had not yet committed: they answer as of the snapshot plus that much.",
    ["service", "kind"],
)
ROWS_READ = Counter(
    "k2_query_history_rows_read_total",
    "Rows decoded from Iceberg data files by history queries (what pushdown did not spare).",
    ["service", "rpc"],
)
