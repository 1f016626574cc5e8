"""Writer settings, environment prefix K2_WRITER_ (K2_WRITER_PORT, K2_WRITER_COMMIT_INTERVAL_MS, ...)."""

from pydantic_settings import SettingsConfigDict

from k2.core.config import ServerSettings


class WriterSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="K2_WRITER_", extra="ignore")

    port: int = 50052
    metrics_port: int = 9102

    # Consumer group shared by every writer process; Kafka spreads the topics' partitions over its members.
    group_id: str = "k2-writer"
    # "cooperative-sticky" keeps the other partitions flowing during a rebalance but may leave one writer with
    # all of a topic; "range" splits each topic evenly across writers, with stop-the-world rebalances.
    assignment_strategy: str = "cooperative-sticky"
    # A writer that dies (kill -9, lost host) holds its partitions until this passes.
    session_timeout_ms: int = 10_000
    # A table's buffered rows are committed when any of these is reached (rows, in-memory Arrow bytes, or the
    # age of the oldest buffered message): the interval bounds how stale a table can be.
    commit_rows: int = 200_000
    commit_bytes: int = 128 * 1024 * 1024
    commit_interval_ms: int = 500
    # Messages taken from the consumer per call; each call's messages are decoded as one batch.
    consume_batch: int = 20_000
    # Processes decoding batches beside the consume loop (0: decode on the loop's thread).
    decode_processes: int = 2
    # Commit attempts when concurrent commits (other writers, compaction) conflict, with jittered exponential
    # backoff up to the maximum wait.
    commit_attempts: int = 10
    commit_backoff_max_seconds: float = 2.0

    # De-duplication by message_id: a row is dropped when a row with its message_id was committed within the
    # window (by ingestion time; kept in memory, at most `dedupe_max_ids` ids, rebuilt from the table on start)
    # or is buffered. 0 in either disables it.
    dedupe_window_seconds: float = 600.0
    dedupe_max_ids: int = 1_000_000

    # Compaction every interval (0 = only on request): a partition without a new file for
    # `compaction_quiet_seconds` whose files below 3/4 of the target size number at least `compaction_min_files`
    # is rewritten into sorted files of about the target size; a partition still being written (today's) has
    # the small files of each size class merged once that class has `compaction_min_files` of them; files of
    # an older partition spec are rewritten into the current layout.
    compaction_interval_seconds: float = 60.0
    compaction_quiet_seconds: float = 900.0
    compaction_target_file_bytes: int = 64 * 1024 * 1024
    compaction_min_files: int = 4
    # Snapshot expiry (0 = never): snapshots older than the maximum age are expired, except the newest
    # `snapshot_min_keep`; files only they referenced are deleted. A reader must finish a scan within the age.
    snapshot_expiry_interval_seconds: float = 60.0
    snapshot_max_age_seconds: float = 300.0
    snapshot_min_keep: int = 20

    # How often Kafka reachability (gRPC health), consumer lag and freshness metrics are refreshed.
    monitor_interval_seconds: float = 2.0
    # Create missing Kafka topics at start-up (off where topics are managed elsewhere).
    provision_topics: bool = True
