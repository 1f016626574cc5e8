"""Ingest settings, environment prefix K2_INGEST_ (K2_INGEST_PORT, K2_INGEST_LOAD_ROOT, ...)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from k2.core.config import ROOT, ServerSettings

# The ASX sample in the checkout (data/asx; installed, ./data/asx).
DEFAULT_LOAD_ROOT = ROOT / "data" / "asx"


class IngestSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="K2_INGEST_", extra="ignore")

    port: int = 50051
    metrics_port: int = 9101

    # LoadFiles reads only files below this folder; any other path is refused.
    load_root: Path = DEFAULT_LOAD_ROOT
    # Paths per LoadFiles request; more are refused (INVALID_ARGUMENT).
    max_load_paths: int = 1_000
    # ASX company_id → symbol mapping; default <load_root>/reference-data/company_info.csv.
    reference_data_path: Path | None = None
    # Rows parsed and produced to Kafka as one batch while loading files.
    load_batch_rows: int = 5_000
    # Batches of one load in flight (produced, awaiting Kafka acks) while the next is parsed.
    load_batches_in_flight: int = 4
    # LoadFiles streams a progress event at least every this many rows or seconds.
    load_progress_rows: int = 10_000
    load_progress_seconds: float = 1.0

    # Items per PublishTrades/PublishQuotes request; larger requests are refused (INVALID_ARGUMENT).
    max_batch_items: int = 10_000
    # Batches of one publish stream produced and awaiting Kafka acks at a time (the stream's pipeline depth).
    max_batches_in_flight: int = 8
    # Memory for the answers of recent batch ids, per kind: a batch re-sent while its answer is remembered is answered
    # again, not written again. Counted in bytes, since one answer can list up to max_batch_items rejections.
    dedupe_window_bytes: int = 64 * 1024 * 1024
    # At start, the message ids written in the last this many seconds (at most `publish_recovery_messages` per
    # kind, the newest) are read back from Kafka, and for as long again a published item with one of them is
    # answered, not written again: a batch re-sent after an ingest restart lost its answer (recovery.py). 0: off.
    publish_recovery_seconds: float = 120.0
    publish_recovery_messages: int = 200_000

    # Distinct symbols per source that get their own metrics label; the rest count as "_other".
    metrics_symbols_per_source: int = 1_000
    # Create missing Kafka topics at start-up (off where topics are managed elsewhere).
    provision_topics: bool = True

    # Exchange feeds: the Binance feed reads its own settings (K2_INGEST_BINANCE_*, services/ingest/binance).
    binance_enabled: bool = False
    # On shutdown, the longest wait for the feeds to stop (each first publishes what it already received).
    feed_stop_seconds: float = 60.0

    def reference_data(self) -> Path:
        return self.reference_data_path or self.load_root / "reference-data" / "company_info.csv"
