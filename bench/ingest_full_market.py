"""The whole Binance spot market through the feed: the replay exchange's generated full market (its own process:
--market-symbols symbols, Zipf activity, bookTicker several times the trade rate, bursts, Binance's limits) →
BinanceFeed with K2_INGEST_BINANCE_SYMBOLS=ALL (this process: exchangeInfo, sharded connections) → KafkaSink →
Kafka. A consumer process reads the trades topic all along and measures freshness (its receipt minus the trade
time the exchange stamped) and its lag behind the high watermarks, once a second. With --writer, the writer
(`python -m k2.services.writer`, its own process) commits both topics to Iceberg tables in a temporary folder
all along, and its GetStatus is sampled once a second: Kafka lag (all partitions) and the trades table's freshness.

Reports achieved trade and bookTicker rates (acknowledged by Kafka) against the exchange's generated rates, gaps,
freshness and lag p50/p99/max, the feed process's CPU (cores, all its threads), the machine's load average.
Default 60 s after a 15 s warm-up; --duration 600 for the 10-minute run. Prints one JSON object.

Kafka: the cluster named by KAFKA_BOOTSTRAP_SERVERS, else a broker of the benchmark's own (bench/_kafka.py).
"""

import argparse
import asyncio
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from _kafka import kafka_bootstrap
from confluent_kafka import Consumer, TopicPartition
from scale_dataset import settings_for, writer_process

from k2.core import avro
from k2.core.config import KafkaSettings
from k2.core.kafka import TRADES, provision_topics, topic_name
from k2.services.ingest.binance import BinanceFeed, BinanceSettings
from k2.services.ingest.sink import KafkaSink
from k2.services.replay_exchange import ReplayExchangeProcess
from k2.writer.v1 import writer_pb2, writer_pb2_grpc

DECODE_EVERY = 16  # freshness from every 16th trade (decoding all would cost the measuring process a core)
SAMPLE_SECONDS = 1.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def consume(bootstrap: str, topic: str, measure_from: float, until: float, results: Any) -> None:
    """In its own process: freshness of sampled trades and the lag behind the high watermarks, once a second."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    freshness: list[float] = []
    lags: list[int] = []
    seen = 0
    next_sample = time.time() + SAMPLE_SECONDS
    while time.time() < until:
        for message in consumer.consume(num_messages=2000, timeout=0.2):
            if message.error() is not None:
                continue
            seen += 1
            if seen % DECODE_EVERY == 0:
                received = time.time()
                if received >= measure_from:
                    record = avro.decode(message.value() or b"")[1]
                    freshness.append(received - record["timestamp"].timestamp())
        if time.time() >= next_sample:
            next_sample += SAMPLE_SECONDS
            if time.time() >= measure_from:
                assigned = consumer.assignment()
                positions = consumer.position(assigned)
                lag = 0
                for partition in positions:
                    _, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition.partition), timeout=2
                    )
                    lag += max(high - partition.offset, 0) if partition.offset >= 0 else high
                lags.append(lag)
    consumer.close()
    results.put({"freshness": freshness, "lags": lags, "consumed": seen})


def exchange_rates(before: dict[str, Any], after: dict[str, Any], elapsed: float) -> dict[str, float]:
    def generated(stats: dict[str, Any], kind: str) -> int:
        return sum(s["generated"] for name, s in stats["streams"].items() if name.endswith("@" + kind))

    return {
        kind: (generated(after, kind) - generated(before, kind)) / elapsed for kind in ("trade", "bookTicker")
    }


WriterSample = tuple[int, float]  # Kafka lag (messages), trades table freshness (s)


@contextmanager
def writer_sampler(
    bootstrap: str, kafka: KafkaSettings, enabled: bool
) -> Iterator[Callable[[], WriterSample] | None]:
    """With the writer running: a function sampling its GetStatus; None without it."""
    if not enabled:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="k2-bench-market-")
    try:
        with (
            writer_process(bootstrap, kafka.topic_prefix, settings_for(Path(folder))) as port,
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = writer_pb2_grpc.WriterServiceStub(channel)

            def sample() -> WriterSample:
                status = stub.GetStatus(writer_pb2.GetStatusRequest(), timeout=10)
                freshness = max(
                    (t.freshness_seconds for t in status.tables if t.table.endswith("trades")),
                    default=float("nan"),
                )
                return sum(p.lag for p in status.partitions), freshness

            yield sample
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def run_feed(
    exchange: ReplayExchangeProcess,
    kafka: KafkaSettings,
    warmup: float,
    duration: float,
    sample_writer: Callable[[], WriterSample] | None,
) -> dict[str, Any]:
    http = exchange.url.replace("ws://", "http://")
    sink = KafkaSink(kafka)
    settings = BinanceSettings(
        endpoints=[exchange.url],
        symbols="ALL",
        rest_endpoint=http,  # type: ignore[arg-type]
        backfill_enabled=False,
        recent_gaps=1000,
    )
    feed = BinanceFeed(settings, sink)
    task = asyncio.create_task(feed.run())
    await asyncio.sleep(warmup)
    stats_before = await asyncio.to_thread(exchange.stats)
    published_before = dict(feed.publisher.published)
    gaps_before, missed_before = feed.gap_log.detected, feed.gap_log.missed
    cpu_before, started = time.process_time(), time.monotonic()
    cpu_samples: list[float] = []
    queue_depths: list[int] = []
    writer_samples: list[WriterSample] = []
    last_cpu, last_time = cpu_before, started
    while time.monotonic() - started < duration:
        await asyncio.sleep(SAMPLE_SECONDS)
        now, cpu = time.monotonic(), time.process_time()
        cpu_samples.append((cpu - last_cpu) / (now - last_time))
        last_cpu, last_time = cpu, now
        queue_depths.append(feed.publisher.unpublished())
        if sample_writer is not None:
            try:
                writer_samples.append(await asyncio.to_thread(sample_writer))
            except grpc.RpcError as error:  # starting, or too busy to answer within the timeout
                log(f"writer GetStatus failed: {error.code()}")
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    stats_after = await asyncio.to_thread(exchange.stats)
    published = {
        kind: count - published_before.get(kind, 0) for kind, count in feed.publisher.published.items()
    }
    status = feed.status()
    await feed.stop()
    await task
    await sink.close()
    connections = stats_after["connections"]["list"]
    writer: dict[str, Any] = {}
    if sample_writer is not None:
        lags = [float(lag) for lag, _ in writer_samples]
        freshness = [fresh for _, fresh in writer_samples if not math.isnan(fresh)]  # NaN: no table yet
        writer = {
            "writer_kafka_lag_messages": {
                "p50": percentile(lags, 0.5),
                "p99": percentile(lags, 0.99),
                "samples": len(lags),
            },
            "writer_trades_freshness_seconds": {
                "p50": round(percentile(freshness, 0.5), 2),
                "p99": round(percentile(freshness, 0.99), 2),
            },
        }
    return {
        "measured_seconds": round(elapsed, 1),
        "symbols": len(status.symbols),
        "connections": len(status.connection_statuses),
        "streams_per_connection_max": max(c.streams for c in status.connection_statuses),
        "exchange_peak_incoming_messages_per_second": max(c["peak_incoming_per_second"] for c in connections),
        "exchange_rate_limit_closes": stats_after["connections"]["closed"].get("rate_limit", 0),
        "exchange_generated_per_second": {
            k: round(v) for k, v in exchange_rates(stats_before, stats_after, elapsed).items()
        },
        "trades_per_second": round(published.get("trade", 0) / elapsed),
        "book_tickers_per_second": round(published.get("quote", 0) / elapsed),
        "symbols_with_trades": sum(1 for s in feed.states if s.trades),
        "gaps_detected": feed.gap_log.detected - gaps_before,
        "trades_missed": feed.gap_log.missed - missed_before,
        "reconnects": dict(status.reconnects_by_reason),
        "dead_lettered": published.get("dead_letter", 0),
        "feed_cpu_cores": round(cpu / elapsed, 3),
        "feed_cpu_cores_p99_per_second": round(percentile(cpu_samples, 0.99), 3),
        "feed_queue_depth_max": max(queue_depths, default=0),
        **writer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=60.0, help="measured seconds (600: the 10-minute run)"
    )
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--symbols", type=int, default=2_000)
    parser.add_argument("--trades-per-second", type=int, default=10_000)
    parser.add_argument("--quotes-per-trade", type=float, default=5.0)
    parser.add_argument(
        "--writer", action="store_true", help="also run the writer into Iceberg and sample it"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    load_before = os.getloadavg()
    with kafka_bootstrap() as bootstrap:
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap, topic_prefix=f"bench-market-{uuid.uuid4().hex[:8]}."
        )
        provision_topics(kafka)
        with ReplayExchangeProcess(
            "--market-symbols",
            str(args.symbols),
            "--rate",
            str(args.trades_per_second),
            "--quotes-per-trade",
            str(args.quotes_per_trade),
            "--rest-history-trades",
            "1000",
            "--log-level",
            "WARNING",
        ) as exchange:
            results: Any = multiprocessing.get_context("spawn").Queue()
            now = time.time()
            consumer = multiprocessing.get_context("spawn").Process(
                target=consume,
                args=(
                    bootstrap,
                    topic_name(kafka, TRADES),
                    now + args.warmup,
                    now + args.warmup + args.duration + 5,
                    results,
                ),
            )
            consumer.start()
            log(f"feeding {args.symbols} symbols for {args.warmup:.0f} s warm-up + {args.duration:.0f} s")
            with writer_sampler(bootstrap, kafka, args.writer) as sample_writer:
                figures = asyncio.run(run_feed(exchange, kafka, args.warmup, args.duration, sample_writer))
            measured = results.get(timeout=args.duration + 120)
            consumer.join(30)
    freshness, lags = measured["freshness"], measured["lags"]
    print(
        json.dumps(
            {
                "benchmark": "full Binance market: replay exchange (generated market, separate process) -> BinanceFeed "
                "(symbols=ALL) -> Kafka (acks=all)" + (" -> writer -> Iceberg" if args.writer else ""),
                "target": {
                    "symbols": args.symbols,
                    "trades_per_second": args.trades_per_second,
                    "book_tickers_per_second": round(args.trades_per_second * args.quotes_per_trade),
                },
                **figures,
                "freshness_seconds": {
                    "p50": round(statistics.median(freshness), 3) if freshness else None,
                    "p99": round(percentile(freshness, 0.99), 3),
                    "max": round(max(freshness, default=float("nan")), 3),
                    "samples": len(freshness),
                },
                "consumer_lag_messages": {
                    "p50": percentile([float(x) for x in lags], 0.5),
                    "p99": percentile([float(x) for x in lags], 0.99),
                    "max": max(lags, default=0),
                },
                "cpu_cores": os.cpu_count(),
                "load_average_1m": {
                    "before": round(load_before[0], 2),
                    "after": round(os.getloadavg()[0], 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
