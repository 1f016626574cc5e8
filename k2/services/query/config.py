"""Query service settings, environment prefix K2_QUERY_ (K2_QUERY_PORT, K2_QUERY_MAX_LIMIT, ...)."""

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from k2.core.config import RUN_DIR, ServerSettings


class QuerySettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="K2_QUERY_", extra="ignore")

    port: int = 50053
    metrics_port: int = 9103

    # Keys page and resume tokens are signed with (HMAC-SHA256, at least 16 bytes each): the first signs, every
    # one verifies. Replicas on several machines need the same list. None: the key in token_key_file, made once,
    # so that tokens (a subscriber's resume token above all) hold across a restart.
    token_keys: list[SecretStr] = Field(default_factory=list)
    token_key_file: Path = RUN_DIR / "query" / "token-key"

    # QueryTrades / QueryQuotes
    default_limit: int = 100_000
    max_limit: int = 100_000
    response_rows: int = 2_000  # rows per streamed response at most...
    response_bytes: int = 1024 * 1024  # ...and bytes of rows (a larger row alone)
    # Rows one page may decode from Iceberg: past it the page ends early, with a token where it stopped.
    page_max_rows_read: int = 4_000_000
    # Kafka tail messages (not yet in Iceberg) one query reads at most, over all partitions: with the writer
    # further behind, a query answers as of the snapshot plus this much of the tail.
    tail_max_messages: int = 200_000
    max_span_days: int = 366
    max_symbols: int = 100
    # GetBars: at most this many intervals in the requested range
    max_bars: int = 100_000

    # Subscriptions
    subscription_batch: int = 1_000  # most trades per response; also the fan-out consumer's poll size
    # Bytes of records per subscription response at most (a larger batch is sent in several responses)
    subscription_response_bytes: int = 1024 * 1024
    # After a first message, how long the fan-out waits for more to send together (0: what has arrived, at once)
    flush_ms: float = 0.0
    heartbeat_seconds: float = 5.0
    # Bytes waiting to be sent to one subscriber before it is ended as too slow (RESOURCE_EXHAUSTED).
    subscriber_buffer_bytes: int = 8 * 1024 * 1024
    # A replaying subscriber joins the live fan-out once it is at most this many messages behind it.
    join_lag_messages: int = 20_000
    max_concurrent_replays: int = 8
    # At start the fan-out re-reads the Kafka tail not yet in Iceberg (for GetLatest), at most this many
    # messages per partition.
    latest_backfill_messages: int = 100_000
    # Symbols (message keys) whose latest trade and quote the fan-out keeps for GetLatest, per kind; past it the
    # longest known are forgotten (GetLatest then reads them from Iceberg, and the next message brings them back).
    latest_max_symbols: int = 100_000
    fetch_wait_max_ms: int = 5
    kafka_timeout_seconds: float = 10.0
    # threads for blocking work: Iceberg scans, Kafka range reads, row conversion
    worker_threads: int = 16
    # Parquet footers of Iceberg data files kept in memory (row-group statistics: a read then starts at the
    # row groups it needs), at most this many bytes, least recently used dropped first; 0: none.
    footer_cache_bytes: int = 64 * 1024 * 1024
    # Decoded rows of small data files (one row group, not compacted yet) kept between queries
    small_file_cache_bytes: int = 64 * 1024 * 1024
    # Rows read but not yet returned by scans whose page ended, kept so the next page goes on with the same scan
    # (least recently used dropped first); 0: every page plans and reads from its token's row.
    scan_cache_bytes: int = 128 * 1024 * 1024
