"""Freshness: how long after a trade is produced it is visible in an Iceberg table scan, at 10,000 trades/s
spread over the scale dataset's 2,000 symbols (bench/scale_dataset.py: Zipf-weighted activity, one symbol ~19 %
of the trades), so each commit touches every symbol bucket of the exchange-day.

A producer process sends trades at a steady 10,000/s, each stamped with its send time (ingestion_timestamp);
the writer (`python -m k2.services.writer`, its own process, default settings) commits them; this process
reloads the table as soon as a commit writes its metadata (checked every 10 ms) and reads the rows of each new
snapshot (an incremental append scan), so a trade's freshness is the moment a reader first sees it minus its
send time. Measuring starts once the writer has committed a first trade, and the first seconds of the stream
are excluded. Prints one JSON object with p50/p99/max and the data files per commit."""

import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
from _kafka import ROOT, free_port, kafka_bootstrap
from scale_dataset import ScaleSpec, zipf_symbols

from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import load_catalog, table_identifier
from k2.core.kafka import TRADES, provision_topics, topic_name

RATE = 10_000  # trades/s
SECONDS = 25.0
WARMUP_SECONDS = 2.0
POLL_SECONDS = 0.01
SYMBOLS, CUMULATIVE_WEIGHTS = zipf_symbols(ScaleSpec())


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def produce(bootstrap: str, prefix: str, rate: int, seconds: float, sent: Any) -> None:
    """Sends `rate` trades/s in 10 ms steps for `seconds`, stamping each with its send time."""
    from confluent_kafka import Producer

    from k2.core import avro
    from k2.core.kafka import producer_config

    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    producer = Producer(producer_config(kafka))
    topic = topic_name(kafka, TRADES)
    step = rate // 100
    rng = random.Random(7)
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < seconds:
        now = datetime.now(UTC)
        for symbol in rng.choices(SYMBOLS, cum_weights=CUMULATIVE_WEIGHTS, k=step):
            producer.produce(
                topic,
                avro.encode(
                    "trade",
                    {
                        "message_id": str(uuid.uuid4()),
                        "trade_id": f"BINANCE-{count}",
                        "symbol": symbol,
                        "exchange": "BINANCE",
                        "asset_class": "CRYPTO",
                        "timestamp": now,
                        "price": Decimal("64123.45"),
                        "quantity": Decimal("0.015"),
                        "currency": "USDT",
                        "side": "BUY",
                        "trade_conditions": [],
                        "source_sequence": count,
                        "ingestion_timestamp": now,
                        "platform_sequence": None,
                        "vendor_data": None,
                    },
                ),
                symbol.encode(),
            )
            count += 1
        producer.poll(0)
        delay = started + count / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    producer.flush(30)
    sent.value = count


def watch(iceberg: IcebergSettings, until: float, seen: int) -> tuple[list[float], list[int]]:
    """Freshness (seconds) of every row committed after snapshot `seen`, but for the first WARMUP_SECONDS of
    them, as a reader polling the table sees it.
    The table is reloaded only when its metadata folder gained a file (a commit is under way), so that the
    watcher itself does not take the CPU the writer needs."""
    table = None
    measure_from_us: int | None = None
    freshness: list[float] = []
    files_per_commit: list[int] = []  # data files each snapshot seen added
    metadata_files = 0
    known: set[int] = {seen}
    while time.monotonic() < until:
        time.sleep(POLL_SECONDS)
        if table is None:
            try:
                table = load_catalog(iceberg).load_table(table_identifier(iceberg, "trade"))
            except Exception:  # noqa: BLE001, S112 - the writer has not created it yet; the next poll retries
                continue
            metadata_folder = table.location().removeprefix("file://") + "/metadata"
        entries = len(os.listdir(metadata_folder))
        if entries == metadata_files:
            continue
        table.refresh()
        current = table.current_snapshot()
        if current is None or current.snapshot_id == seen:
            continue  # the commit's metadata file is written before the catalog points to it: look again
        metadata_files = entries
        visible_at = time.time()
        added = table.incremental_append_scan(
            from_snapshot_id_exclusive=seen,
            to_snapshot_id_inclusive=current.snapshot_id,
            selected_fields=("ingestion_timestamp",),
        ).to_arrow()
        files_per_commit += [
            int(s.summary.additional_properties.get("added-data-files", 0))
            for s in table.snapshots()
            if s.summary and s.snapshot_id not in known
        ]
        known = {s.snapshot_id for s in table.snapshots()}
        seen = current.snapshot_id
        stamps = added["ingestion_timestamp"].cast(pa.int64()).to_pylist()
        if measure_from_us is None and stamps:
            measure_from_us = min(stamps) + int(WARMUP_SECONDS * 1e6)
        freshness += [visible_at - us / 1e6 for us in stamps if measure_from_us and us >= measure_from_us]
    return freshness, files_per_commit


def wait_until_writing(
    kafka: KafkaSettings, iceberg: IcebergSettings, writer: subprocess.Popen[bytes]
) -> int:
    """Until the writer has joined its group and committed a first trade (start-up is not freshness); returns
    that snapshot's id."""
    from confluent_kafka import Producer

    from k2.core import avro
    from k2.core.kafka import producer_config

    producer = Producer(producer_config(kafka))
    producer.produce(
        topic_name(kafka, TRADES),
        avro.encode(
            "trade",
            {
                "message_id": str(uuid.uuid4()),
                "trade_id": "WARMUP",
                "symbol": SYMBOLS[0],
                "exchange": "BINANCE",
                "asset_class": "CRYPTO",
                "timestamp": datetime.now(UTC),
                "price": Decimal(1),
                "quantity": Decimal(1),
                "currency": "USDT",
                "side": "BUY",
                "trade_conditions": [],
                "source_sequence": None,
                "ingestion_timestamp": datetime.now(UTC),
                "platform_sequence": None,
                "vendor_data": None,
            },
        ),
    )
    producer.flush(30)
    deadline = time.monotonic() + 120
    while True:
        assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start writing"
        try:
            table = load_catalog(iceberg).load_table(table_identifier(iceberg, "trade"))
            snapshot = table.current_snapshot()
            if snapshot is not None:
                return snapshot.snapshot_id
        except Exception:  # noqa: BLE001, S110 - the writer has not created it yet; the next poll retries
            pass
        time.sleep(0.1)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    folder = tempfile.mkdtemp(prefix="k2-bench-freshness-")
    try:
        with kafka_bootstrap() as bootstrap:
            kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
            provision_topics(kafka)
            iceberg = IcebergSettings(
                catalog_uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/wh"
            )
            env = os.environ | {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "K2_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
                "K2_ICEBERG_CATALOG_URI": iceberg.catalog_uri,
                "K2_ICEBERG_WAREHOUSE": iceberg.warehouse,
                "K2_WRITER_PORT": str(free_port()),
                "K2_WRITER_METRICS_PORT": "0",
                "K2_WRITER_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
                "K2_WRITER_PROVISION_TOPICS": "false",
                "K2_LOG_LEVEL": "WARNING",
            }
            writer = subprocess.Popen(
                [sys.executable, "-m", "k2.services.writer"],
                cwd=ROOT,
                env=env,
                stdout=sys.stderr,
                stderr=sys.stderr,
            )
            try:
                first_snapshot = wait_until_writing(kafka, iceberg, writer)
                context = multiprocessing.get_context("spawn")
                sent = context.Value("q", 0)
                producer = context.Process(
                    target=produce, args=(bootstrap, kafka.topic_prefix, RATE, SECONDS, sent)
                )
                log(f"producing {RATE} trades/s for {SECONDS:.0f} s ...")
                producer.start()
                freshness, files_per_commit = watch(iceberg, time.monotonic() + SECONDS + 10, first_snapshot)
                producer.join(60)
            finally:
                writer.send_signal(signal.SIGTERM)
                writer.wait(60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert freshness, "no committed trade was seen within the run"
    print(
        json.dumps(
            {
                "rate_trades_per_s": RATE,
                "trades_sent": sent.value,
                "trades_measured": len(freshness),
                "symbols": len(SYMBOLS),
                "snapshots_seen": len(files_per_commit),
                "data_files_per_commit": {
                    "mean": round(statistics.mean(files_per_commit), 1),
                    "max": max(files_per_commit),
                },
                "freshness_p50_s": round(statistics.median(freshness), 3),
                "freshness_p99_s": round(percentile(freshness, 0.99), 3),
                "freshness_max_s": round(max(freshness), 3),
                "target_p99_s": 2.0,
                "poll_interval_s": POLL_SECONDS,
            }
        )
    )


if __name__ == "__main__":
    main()
