"""Live fan-out throughput: trades/s delivered to 1 and to 10 subscribers of one query service, and its RSS with
1,000 idle subscribers.

The query service runs as its own process (`python -m k2.services.query`). Subscribers run in a client process
(every response fully parsed into Trade messages); a producer process writes pre-encoded trade messages to
Kafka as fast as it can while they listen. Delivered rate = trades received by all subscribers / time from the
first to the last trade received. Server CPU per trade = the query process's CPU time over the phase / trades
consumed from Kafka; client CPU = the subscribers' process (it parses every response), which shares the machine;
the producer's rate bounds what one subscriber can receive.
Prints one JSON object."""

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import psutil
from _kafka import ROOT, free_port, kafka_bootstrap
from confluent_kafka import Producer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k2.core import avro
from k2.core.config import KafkaSettings
from k2.core.kafka import TRADES, producer_config, provision_topics, topic_name
from k2.query.v1 import query_pb2, query_pb2_grpc

MESSAGES = 300_000
DISTINCT = 20_000  # distinct encoded trades, cycled (the fan-out decodes every message all the same)
SYMBOLS = [f"SYM{i:02d}USDT" for i in range(20)]
IDLE_SUBSCRIBERS = 1_000


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def trade_values(count: int) -> list[bytes]:
    start = datetime.now(UTC)
    return [
        avro.encode(
            "trade",
            {
                "message_id": str(uuid.uuid4()),
                "trade_id": f"BINANCE-{i}",
                "symbol": SYMBOLS[i % len(SYMBOLS)],
                "exchange": "BINANCE",
                "asset_class": "CRYPTO",
                "timestamp": start + timedelta(microseconds=i),
                "price": Decimal(f"{97000 + i % 1000}.{i % 100:02d}"),
                "quantity": Decimal("0.00150000"),
                "currency": "USDT",
                "side": "SELL" if i % 2 else "BUY",
                "trade_conditions": [],
                "source_sequence": i,
                "ingestion_timestamp": start,
                "platform_sequence": None,
                "vendor_data": {"is_buyer_maker": "true"},
            },
        )
        for i in range(count)
    ]


@contextmanager
def query_service(bootstrap: str, prefix: str, **settings: str) -> Iterator[tuple[int, int]]:
    """(gRPC port, pid) of `python -m k2.services.query` on a fresh Iceberg catalog, stopped with SIGTERM after."""
    folder = Path(tempfile.mkdtemp(prefix="k2-bench-query-"))
    port = free_port()
    env = (
        os.environ
        | {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "K2_KAFKA_TOPIC_PREFIX": prefix,
            "K2_ICEBERG_CATALOG_URI": f"sqlite:///{folder / 'catalog.db'}",
            "K2_ICEBERG_WAREHOUSE": f"file://{folder / 'warehouse'}",
            "K2_QUERY_PORT": str(port),
            "K2_QUERY_METRICS_PORT": "0",
            "K2_LOG_LEVEL": "WARNING",
        }
        | settings
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "k2.services.query"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    status = health.Check(
                        health_pb2.HealthCheckRequest(service="k2.query.v1.QueryService"), timeout=2
                    )
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the query service did not become SERVING")
                time.sleep(0.2)
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def produce(
    bootstrap: str, prefix: str, values: list[bytes], count: int, elapsed: "multiprocessing.Queue[float]"
) -> None:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    producer = Producer(producer_config(settings, **{"linger.ms": 5}))
    topic = topic_name(settings, TRADES)
    keys = [s.encode() for s in SYMBOLS]
    start = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, values[i % len(values)], keys[i % len(SYMBOLS)])
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    elapsed.put(time.perf_counter() - start)


async def _subscribe(
    port: int,
    subscribers: int,
    expected: int,
    ready: "multiprocessing.synchronize.Event",
    results: "multiprocessing.Queue[object]",
) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, subscribers // 100))]
    calls = [
        query_pb2_grpc.QueryServiceStub(channels[i % len(channels)]).SubscribeTrades(
            query_pb2.SubscribeTradesRequest()
        )
        for i in range(subscribers)
    ]
    await asyncio.gather(*(call.read() for call in calls))  # each has its first heartbeat: registered
    ready.set()
    started = time.process_time()
    if not expected:
        results.put(None)
        await asyncio.sleep(3600)

    async def count(call: grpc.aio.UnaryStreamCall) -> tuple[float, float, int]:
        first, received = 0.0, 0
        while received < expected:
            response = await call.read()
            if response.trades:
                first = first or time.perf_counter()
                received += len(response.trades)
        return first, time.perf_counter(), received

    counts = await asyncio.gather(*(count(call) for call in calls))
    results.put((counts, time.process_time() - started))


def subscribe(
    port: int,
    subscribers: int,
    expected: int,
    ready: "multiprocessing.synchronize.Event",
    results: "multiprocessing.Queue[object]",
) -> None:
    asyncio.run(_subscribe(port, subscribers, expected, ready, results))


def delivered_rate(
    bootstrap: str, port: int, pid: int, values: list[bytes], subscribers: int, prefix: str
) -> dict[str, float]:
    server = psutil.Process(pid)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    client = context.Process(target=subscribe, args=(port, subscribers, MESSAGES, ready, results))
    client.start()
    if not ready.wait(60):
        raise RuntimeError("subscribers did not start")
    cpu_before = sum(server.cpu_times()[:2])
    produced = context.Queue()
    producer = context.Process(target=produce, args=(bootstrap, prefix, values, MESSAGES, produced))
    producer.start()
    counts, client_cpu = results.get(timeout=600)
    server_cpu = sum(server.cpu_times()[:2]) - cpu_before
    producing = produced.get(timeout=60)
    producer.join()
    client.join()
    first = min(c[0] for c in counts)
    last = max(c[1] for c in counts)
    total = sum(c[2] for c in counts)
    return {
        "subscribers": subscribers,
        "trades_per_subscriber": MESSAGES,
        "seconds": round(last - first, 3),
        "delivered_trades_per_s": round(total / (last - first)),
        "server_cpu_us_per_trade": round(server_cpu / MESSAGES * 1e6, 2),
        "client_cpu_s": round(client_cpu, 2),
        "producer_trades_per_s": round(MESSAGES / producing),
    }


def idle_rss(port: int, pid: int) -> dict[str, float]:
    server = psutil.Process(pid)
    before = server.memory_info().rss
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    client = context.Process(target=subscribe, args=(port, IDLE_SUBSCRIBERS, 0, ready, results), daemon=True)
    client.start()
    if not ready.wait(120):
        raise RuntimeError("idle subscribers did not start")
    results.get(timeout=60)
    time.sleep(2)
    after = server.memory_info().rss
    client.terminate()
    client.join()
    return {
        "idle_subscribers": IDLE_SUBSCRIBERS,
        "rss_mb_before": round(before / 2**20, 1),
        "rss_mb_with_idle_subscribers": round(after / 2**20, 1),
    }


def main() -> None:
    values = trade_values(DISTINCT)
    result: dict[str, object] = {"benchmark": "query_fanout", "messages": MESSAGES}
    with kafka_bootstrap() as bootstrap:
        prefix = f"bench-{uuid.uuid4().hex[:8]}."
        provision_topics(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix))
        # a generous per-subscriber buffer: this measures throughput, not the slow-subscriber policy
        with query_service(
            bootstrap,
            prefix,
            K2_QUERY_HEARTBEAT_SECONDS="0.2",
            K2_QUERY_SUBSCRIBER_BUFFER_BYTES=str(256 * 2**20),
            # every benchmark subscriber connects from this one address
            K2_QUERY_MAX_STREAMS_PER_CLIENT="0",
            K2_QUERY_MAX_REQUESTS_PER_SECOND_PER_CLIENT="0",
        ) as (port, pid):
            for subscribers in (1, 10):
                log(f"fan-out to {subscribers} subscriber(s) ...")
                result[f"subscribers_{subscribers}"] = delivered_rate(
                    bootstrap, port, pid, values, subscribers, prefix
                )
            log(f"RSS with {IDLE_SUBSCRIBERS} idle subscribers ...")
            result["idle"] = idle_rss(port, pid)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
