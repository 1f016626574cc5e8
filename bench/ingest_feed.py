"""Binance live feed throughput: replay exchange (max rate, its own process) → BinanceFeed → KafkaSink → Kafka.

Two configurations: trade streams only (the headline: trades/s acknowledged by Kafka) and trade + bookTicker
streams (records/s); then the CPU per trade of each stage alone (WebSocket receive, parsing, the sink). The reference, measured in the same run just before each feed phase: the exchange's own
send rate to a bare client that only counts events (k2.services.replay_exchange.throughput), i.e. the most any
client could receive. Prints one JSON object.

Kafka: the cluster named by KAFKA_BOOTSTRAP_SERVERS, else a broker of the benchmark's own (bench/_kafka.py).
"""

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from typing import Any

from _kafka import kafka_bootstrap
from websockets.asyncio.client import connect

from k2.core.config import KafkaSettings
from k2.core.kafka import provision_topics
from k2.services.ingest.binance import BinanceFeed, BinanceSettings
from k2.services.ingest.binance.connection import RECEIVE_QUEUE_FRAMES
from k2.services.ingest.sink import KafkaSink
from k2.services.replay_exchange import ReplayExchangeProcess
from k2.services.replay_exchange.throughput import measure_send_rate

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"]
TARGET_TRADES_PER_SECOND = 50_000
CEILING_SECONDS = 2.5
WARMUP_SECONDS = 2.0
MEASURE_SECONDS = 5.0
BREAKDOWN_FRAMES = 20_000


def _path(stream_types: list[str]) -> str:
    streams = "/".join(f"{symbol.lower()}@{kind}" for symbol in SYMBOLS for kind in stream_types)
    return f"/stream?timeUnit=MICROSECOND&streams={streams}"


async def _feed_phase(url: str, kafka: KafkaSettings, stream_types: list[str]) -> dict[str, Any]:
    sink = KafkaSink(kafka)
    settings = BinanceSettings(endpoints=[url], symbols=SYMBOLS, stream_types=stream_types)  # type: ignore[arg-type]
    feed = BinanceFeed(settings, sink)
    task = asyncio.create_task(feed.run())
    await asyncio.sleep(WARMUP_SECONDS)
    published_before = dict(feed.publisher.published)
    cpu_before, started = time.process_time(), time.monotonic()
    await asyncio.sleep(MEASURE_SECONDS)
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    published = {
        kind: count - published_before.get(kind, 0) for kind, count in feed.publisher.published.items()
    }
    await feed.stop()
    await task
    await sink.close()
    status = feed.status()
    trades = published.get("trade", 0) / elapsed
    quotes = published.get("quote", 0) / elapsed
    return {
        "trades_per_second": round(trades),
        "quotes_per_second": round(quotes),
        "records_per_second": round(trades + quotes),
        "feed_process_cpu_cores": round(cpu / elapsed, 2),
        # CPU of the feed's process (event loop, Kafka client threads) per record: load-independent cost.
        "feed_cpu_us_per_record": round(cpu / max(1, sum(published.values())) * 1e6, 1),
        "gaps_detected": status.gaps_detected,
        "reconnects": dict(status.reconnects_by_reason),
        "malformed": sum(feed.parser.malformed.values()),
        "unpublished_at_stop": feed.unpublished_at_stop,
    }


async def _cpu_breakdown(url: str, kafka: KafkaSettings) -> dict[str, float]:
    """CPU µs per trade of each stage on its own, on real frames from the exchange: the WebSocket client's
    receive path, the feed's parsing into records (Avro-encoded Kafka messages), and the sink (producing, Kafka
    acks)."""
    async with connect(url + _path(["trade"]), compression=None, max_queue=RECEIVE_QUEUE_FRAMES) as ws:
        for _ in range(1000):
            await ws.recv(False)
        started = time.process_time()
        frames = [await ws.recv(False) for _ in range(BREAKDOWN_FRAMES)]
        receive = time.process_time() - started
    sink = KafkaSink(kafka)
    feed = BinanceFeed(BinanceSettings(endpoints=[url], symbols=SYMBOLS, stream_types=["trade"]), sink)
    started = time.process_time()
    for frame in frames:
        feed.parser.parse(frame)  # type: ignore[arg-type]
    parse = time.process_time() - started
    keys = [key for key, _, _ in feed.buffer.trades]
    values = [value for _, value, _ in feed.buffer.trades]
    await sink.publish_encoded("trade", keys[:1000], values[:1000])
    started = time.process_time()
    for start in range(0, len(values), 5000):
        await sink.publish_encoded("trade", keys[start : start + 5000], values[start : start + 5000])
    publish = time.process_time() - started
    await sink.close()
    return {
        "websocket_receive": round(receive / len(frames) * 1e6, 1),
        "parse_to_records": round(parse / len(frames) * 1e6, 1),
        "sink_publish": round(publish / len(values) * 1e6, 1),
    }


def _phase(exchange_url: str, kafka: KafkaSettings, stream_types: list[str]) -> dict[str, Any]:
    ceiling = measure_send_rate(exchange_url, _path(stream_types), CEILING_SECONDS)
    result = asyncio.run(_feed_phase(exchange_url, kafka, stream_types))
    result["ceiling_bare_client_events_per_second"] = round(ceiling["events_per_second"])
    result["feed_vs_ceiling"] = round(result["records_per_second"] / ceiling["events_per_second"], 3)
    return result


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with kafka_bootstrap() as bootstrap:
        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-feed-{uuid.uuid4().hex[:8]}.")
        provision_topics(kafka)
        with ReplayExchangeProcess(
            "--rate", "max", "--symbols", ",".join(SYMBOLS), "--log-level", "WARNING"
        ) as exchange:
            trades_only = _phase(exchange.url, kafka, ["trade"])
            with_quotes = _phase(exchange.url, kafka, ["trade", "bookTicker"])
            breakdown = asyncio.run(_cpu_breakdown(exchange.url, kafka))
    print(
        json.dumps(
            {
                "benchmark": "binance feed: replay exchange (max rate, separate process) -> BinanceFeed -> Kafka (acks=all)",
                "symbols": len(SYMBOLS),
                "cpu_cores": os.cpu_count(),
                "measure_seconds": MEASURE_SECONDS,
                "target_trades_per_second": TARGET_TRADES_PER_SECOND,
                "trades_per_second": trades_only["trades_per_second"],
                "meets_target": trades_only["trades_per_second"] >= TARGET_TRADES_PER_SECOND,
                "trade_streams": trades_only,
                "trade_and_book_ticker_streams": with_quotes,
                # Where a trade's CPU goes, each stage measured alone (µs per trade, this process's threads included).
                "cpu_us_per_trade_by_stage": breakdown,
            }
        )
    )


if __name__ == "__main__":
    main()
