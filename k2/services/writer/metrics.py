"""The writer's Prometheus metrics (docs/metrics.md). Every metric carries service="writer"."""

from prometheus_client import Counter, Gauge, Histogram

SERVICE = "writer"

MESSAGES_CONSUMED = Counter(
    "k2_writer_messages_consumed_total", "Kafka messages taken from the consumer.", ["service", "topic"]
)
ROWS_COMMITTED = Counter(
    "k2_writer_rows_committed_total", "Rows committed to an Iceberg table.", ["service", "table"]
)
BYTES_COMMITTED = Counter(
    "k2_writer_bytes_committed_total",
    "Bytes of data files committed to an Iceberg table.",
    ["service", "table"],
)
COMMITS = Counter(
    "k2_writer_commits_total", "Iceberg commits that landed, by operation.", ["service", "table", "operation"]
)
COMMIT_SECONDS = Histogram(
    "k2_writer_commit_duration_seconds",
    "Time to commit a batch: writing data files and the catalog commit, including conflict retries.",
    ["service", "table"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
COMMIT_CONFLICTS = Counter(
    "k2_writer_commit_conflicts_total",
    "Commits refused because another commit landed first (retried on the reloaded table).",
    ["service", "table", "operation"],
)
COMMIT_FAILURES = Counter(
    "k2_writer_commit_failures_total",
    "Commits given up after every attempt failed.",
    ["service", "table", "operation"],
)
ROWS_ALREADY_COMMITTED = Counter(
    "k2_writer_rows_already_committed_total",
    "Buffered rows dropped because the table already holds their offsets (another writer committed them "
    "after a rebalance).",
    ["service", "table"],
)
DUPLICATES_DROPPED = Counter(
    "k2_writer_duplicates_dropped_total",
    "Rows dropped because a row with their message_id was committed within the dedupe window or is buffered.",
    ["service", "table"],
)
FILES_PER_COMMIT = Histogram(
    "k2_writer_files_per_commit",
    "Data files added by one commit.",
    ["service", "table"],
    buckets=(0, 1, 2, 4, 8, 16, 32, 64),
)
DATA_FILE_BYTES = Histogram(
    "k2_writer_data_file_bytes",
    "Size of each data file written (appends and compaction).",
    ["service", "table"],
    buckets=(16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6, 128e6, 256e6, 512e6),
)
VISIBILITY_DELAY = Histogram(
    "k2_writer_visibility_delay_seconds",
    "Per commit: from the ingestion of the oldest row in it to the commit landing (a row's worst-case delay "
    "before it is visible in Iceberg).",
    ["service", "table"],
    buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
FRESHNESS = Gauge(
    "k2_writer_freshness_seconds",
    "Seconds since the ingestion of the newest row visible in the table.",
    ["service", "table"],
)
CONSUMER_LAG = Gauge(
    "k2_writer_consumer_lag_messages",
    "Messages in a partition beyond the offset its table has committed.",
    ["service", "topic", "partition"],
)
COMMITTED_OFFSET = Gauge(
    "k2_writer_committed_offset",
    "Next offset to read, as recorded in the table.",
    ["service", "topic", "partition"],
)
BUFFERED_ROWS = Gauge(
    "k2_writer_buffered_rows", "Rows decoded and waiting for the next commit.", ["service", "table"]
)
DEAD_LETTERED = Counter(
    "k2_writer_dead_lettered_total",
    "Messages sent to the dead-letter topic, by reason (undecodable, wrong_kind, invalid).",
    ["service", "topic", "reason"],
)
REWINDS = Counter(
    "k2_writer_rewinds_total",
    "Times the writer dropped its buffers and re-read from the offsets its tables record, after an error.",
    ["service", "reason"],
)
KAFKA_UP = Gauge("k2_writer_kafka_up", "1 while the Kafka cluster answers, else 0.", ["service"])
COMPACTED_FILES = Counter(
    "k2_writer_compacted_files_total",
    "Data files removed and added by compaction.",
    ["service", "table", "change"],
)
SNAPSHOTS_EXPIRED = Counter("k2_writer_snapshots_expired_total", "Snapshots expired.", ["service", "table"])
FILES_DELETED = Counter(
    "k2_writer_files_deleted_total",
    "Files (data, manifests, manifest lists) deleted because no retained snapshot references them.",
    ["service", "table"],
)
