"""Kafka → Iceberg: sustained rows/s the writer commits. The trades topic is filled first; the writer
(`python -m k2.services.writer`, its own process, default settings) then drains it into a fresh SQLite-catalog
table, and the rate is measured between its first and last commit (start-up excluded).

References measured in the same run, on the same messages, without Kafka: the ceiling — raw fastavro decode
(schemaless_reader per message, logical types included) + Arrow + pyiceberg append of the same rows — and the
writer's own decode path (k2.core.arrow.batch_decoder) + append. Prints one JSON object."""

import gc
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import BytesIO
from typing import Any

import fastavro
import psutil
from _kafka import ROOT, free_port, kafka_bootstrap
from confluent_kafka import Producer

from k2.core import avro
from k2.core.arrow import batch_decoder
from k2.core.arrow_records import records_to_arrow
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import ensure_table, load_catalog, table_identifier
from k2.core.kafka import TRADES, producer_config, provision_topics, topic_name
from k2.services.writer.decoding import GC_THRESHOLDS

MESSAGES = 600_000
CHUNK = 100_000  # rows per append in the reference runs
SYMBOLS = [f"SYM{i:03d}USDT" for i in range(50)]
SORT_KEYS = [("symbol", "ascending"), ("timestamp", "ascending")]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def trade_values(count: int) -> list[bytes]:
    rng = random.Random(7)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    now = datetime.now(UTC)
    values = []
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        values.append(
            avro.encode(
                "trade",
                {
                    "message_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "trade_id": f"BINANCE-{i}",
                    "symbol": symbol,
                    "exchange": "BINANCE",
                    "asset_class": "CRYPTO",
                    "timestamp": start + timedelta(microseconds=i * 100),
                    "price": Decimal(f"{rng.randint(1, 99_999)}.{rng.randint(0, 10**8 - 1):08d}"),
                    "quantity": Decimal(f"0.{rng.randint(1, 10**8 - 1):08d}"),
                    "currency": "USDT",
                    "side": "BUY" if i % 2 else "SELL",
                    "trade_conditions": [],
                    "source_sequence": i,
                    "ingestion_timestamp": now,
                    "platform_sequence": i,
                    "vendor_data": {"is_buyer_maker": "true"},
                },
            )
        )
    return values


def fill_topic(kafka: KafkaSettings, values: list[bytes]) -> None:
    producer = Producer(producer_config(kafka, **{"linger.ms": 20}))
    topic = topic_name(kafka, TRADES)
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value, SYMBOLS[i % len(SYMBOLS)].encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def table_rows(table) -> int:  # type: ignore[no-untyped-def]
    table.refresh()
    snapshot = table.current_snapshot()
    return int(snapshot.summary.additional_properties.get("total-records", 0)) if snapshot else 0


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of the writer and its decode processes."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


def run_writer(kafka: KafkaSettings, iceberg: IcebergSettings, expected: int) -> dict[str, float]:
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "K2_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "K2_ICEBERG_CATALOG_URI": iceberg.catalog_uri,
        "K2_ICEBERG_WAREHOUSE": iceberg.warehouse,
        "K2_WRITER_PORT": str(free_port()),
        "K2_WRITER_METRICS_PORT": "0",
        "K2_WRITER_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
        "K2_WRITER_PROVISION_TOPICS": "false",
        "K2_WRITER_COMPACTION_INTERVAL_SECONDS": "0",
        "K2_LOG_LEVEL": "WARNING",
    }
    started = time.monotonic()
    writer = subprocess.Popen(
        [sys.executable, "-m", "k2.services.writer"], cwd=ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr
    )
    process = psutil.Process(writer.pid)
    try:
        table = None
        samples: list[tuple[float, int]] = []
        deadline = started + 300
        while not samples or samples[-1][1] < expected:
            assert time.monotonic() < deadline and writer.poll() is None, "the writer did not finish"
            time.sleep(0.05)
            if table is None:
                try:
                    table = load_catalog(iceberg).load_table(table_identifier(iceberg, "trade"))
                except Exception:  # noqa: BLE001, S112 - the writer has not created it yet; the next poll retries
                    continue
            rows = table_rows(table)
            if rows and (not samples or rows != samples[-1][1]):
                samples.append((time.monotonic(), rows))
        cpu = cpu_seconds(process)
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(60)
    (first_time, first_rows), (last_time, last_rows) = samples[0], samples[-1]
    return {
        "rows_per_s": (last_rows - first_rows) / (last_time - first_time),
        "seconds_to_drain": last_time - started,
        "commits_observed": len(samples),
        "cpu_seconds_per_million_rows": cpu / expected * 1e6,
    }


def reference(iceberg: IcebergSettings, values: list[bytes]) -> dict[str, dict[str, float]]:
    """Decode + append of the same messages in this process, without Kafka, in chunks like the writer's (with
    the writer's garbage-collection thresholds)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    catalog = load_catalog(iceberg)
    reader = avro.CURRENT["trade"].parsed_for_reading
    decoder = batch_decoder("trade")
    results = {}
    for name in ("fastavro", "batch_decoder"):
        iceberg_ref = iceberg.model_copy(update={"namespace": f"reference_{name}"})
        table = ensure_table(catalog, iceberg_ref, "trade")
        decode_seconds = append_seconds = 0.0
        for start in range(0, len(values), CHUNK):
            chunk = values[start : start + CHUNK]
            began = time.perf_counter()
            if name == "fastavro":
                records: list[Any] = []
                for value in chunk:
                    body = BytesIO(value)
                    body.seek(avro.HEADER_SIZE)
                    records.append(fastavro.schemaless_reader(body, reader, None))
                rows = records_to_arrow("trade", records)
            else:
                rows = decoder.decode(chunk).table
            decoded = time.perf_counter()
            table.append(rows.sort_by(SORT_KEYS))
            decode_seconds += decoded - began
            append_seconds += time.perf_counter() - decoded
        results[name] = {
            "rows_per_s": len(values) / (decode_seconds + append_seconds),
            "decode_us_per_row": decode_seconds / len(values) * 1e6,
            "append_us_per_row": append_seconds / len(values) * 1e6,
        }
    return results


def main() -> None:
    folder = tempfile.mkdtemp(prefix="k2-bench-writer-")
    try:
        with kafka_bootstrap() as bootstrap:
            kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
            provision_topics(kafka)
            log(f"encoding {MESSAGES} trades ...")
            values = trade_values(MESSAGES)
            log("filling the trades topic ...")
            fill_topic(kafka, values)
            iceberg = IcebergSettings(
                catalog_uri=f"sqlite:///{folder}/catalog.db", warehouse=f"file://{folder}/wh"
            )
            log("writer draining the topic ...")
            writer = run_writer(kafka, iceberg, MESSAGES)
        log("references ...")
        references = reference(iceberg, values)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ceiling = references["fastavro"]["rows_per_s"]
    print(
        json.dumps(
            {
                "messages": MESSAGES,
                "writer_rows_per_s": round(writer["rows_per_s"]),
                "writer_seconds_to_drain": round(writer["seconds_to_drain"], 2),
                "writer_commits_observed": writer["commits_observed"],
                "writer_cpu_seconds_per_million_rows": round(writer["cpu_seconds_per_million_rows"], 2),
                "target_rows_per_s": 100_000,
                "ceiling_fastavro_decode_append_rows_per_s": round(ceiling),
                "ceiling_fastavro_decode_us_per_row": round(references["fastavro"]["decode_us_per_row"], 2),
                "ceiling_append_us_per_row": round(references["fastavro"]["append_us_per_row"], 2),
                "batch_decoder_append_rows_per_s": round(references["batch_decoder"]["rows_per_s"]),
                "batch_decoder_us_per_row": round(references["batch_decoder"]["decode_us_per_row"], 2),
                "writer_vs_ceiling": round(writer["rows_per_s"] / ceiling, 2),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
