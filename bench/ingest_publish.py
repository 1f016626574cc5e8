"""PublishTrades into Kafka: sustained trades/s acknowledged (after Kafka's acks=all) with batches of 500 on
one stream, and the acknowledged latency per batch. The ingest service runs as its own process (`python -m
k2.services.ingest`), the client in this one; the client sends pre-serialised requests so that the figure is the
service's, with a window of batches outstanding as a pipelining publisher would.

References measured in the same run: the Kafka producer alone (pre-encoded messages, same producer settings,
same batch size), the ceiling ingest could reach; and ingest's per-trade Python work (validation, encoding) on
one core. Prints one JSON object."""

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import grpc
import psutil
from _kafka import ROOT, free_port, kafka_bootstrap
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k2.core import avro
from k2.core.config import KafkaSettings
from k2.core.kafka import TRADES, provision_topics, topic_name
from k2.core.producer import AsyncProducer
from k2.core.proto_avro import encode_trades
from k2.core.protos import trade_from_proto
from k2.ingest.v1 import ingest_pb2
from k2.marketdata.v1.marketdata_pb2 import AssetClass, Side, Trade
from k2.services.ingest.ids import batch_message_ids

TOKEN = "bench-ingest-token"
BATCH_SIZE = 500
WINDOW = 16  # batches a client keeps outstanding on its stream
WARMUP_SECONDS = 3.0
MEASURE_SECONDS = 15.0
REFERENCE_SECONDS = 5.0
UNLOADED_SECONDS = 3.0
METHOD = "/k2.ingest.v1.IngestService/PublishTrades"
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def sample_trades(count: int, offset: int = 0) -> list[Trade]:
    trades = []
    for i in range(offset, offset + count):
        trade = Trade(
            trade_id=f"BINANCE-{4_000_000_000 + i}",
            symbol=SYMBOLS[i % 3],
            exchange="BINANCE",
            asset_class=AssetClass.ASSET_CLASS_CRYPTO,
            price=f"{97_000 + i % 1000}.{i % 100:02d}",
            quantity=f"0.{i % 9000 + 1000:04d}",
            currency="USDT",
            side=Side.SIDE_BUY if i % 2 else Side.SIDE_SELL,
            source_sequence=4_000_000_000 + i,
            vendor_data={"is_buyer_maker": "true" if i % 2 else "false"},
        )
        trade.timestamp.FromMicroseconds(1_764_000_000_000_000 + i * 137)
        trades.append(trade)
    return trades


@contextmanager
def ingest_server(bootstrap: str, topic_prefix: str, **settings: str) -> Iterator[tuple[int, psutil.Process]]:
    """`python -m k2.services.ingest` on a free port, until SIGTERM at the end."""
    port = free_port()
    env = os.environ | {
        "K2_INGEST_PORT": str(port),
        "K2_INGEST_METRICS_PORT": "0",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "K2_KAFKA_TOPIC_PREFIX": topic_prefix,
        "K2_AUTH_WRITE_TOKENS": json.dumps([TOKEN]),
        "K2_LOG_LEVEL": "WARNING",
    }
    env |= {f"K2_INGEST_{name.upper()}": value for name, value in settings.items()}
    process = subprocess.Popen(
        [sys.executable, "-m", "k2.services.ingest"], cwd=ROOT, env=env, stdout=sys.stderr
    )
    try:
        _wait_serving(port, process)
        yield port, psutil.Process(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_serving(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"ingest exited with {process.returncode} during start-up")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"ingest did not serve on port {port} within {timeout} s")


async def publish_for(port: int, seconds: float, window: int = WINDOW) -> list[tuple[float, int, float]]:
    """Streams batches for `seconds`, `window` outstanding; returns (answer time, trades accepted, latency)
    per batch."""
    # Each request = its batch_id field followed by the same serialised trades (protobuf fields concatenate).
    templates = [
        ingest_pb2.PublishTradesRequest(trades=sample_trades(BATCH_SIZE, k * BATCH_SIZE)).SerializeToString()
        for k in range(8)
    ]
    run = uuid.uuid4().hex[:8]
    credits = asyncio.Semaphore(window)
    sent_at: dict[str, float] = {}
    answers: list[tuple[float, int, float]] = []
    stop_at = time.perf_counter() + seconds

    async def requests() -> AsyncIterator[bytes]:
        n = 0
        while time.perf_counter() < stop_at:
            await credits.acquire()
            batch_id = f"{run}-{n}"
            sent_at[batch_id] = time.perf_counter()
            header = ingest_pb2.PublishTradesRequest(batch_id=batch_id).SerializeToString()
            yield header + templates[n % len(templates)]
            n += 1

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=lambda raw: raw,
            response_deserializer=ingest_pb2.PublishTradesResponse.FromString,
        )
        async for answer in call(requests(), metadata=(("authorization", f"Bearer {TOKEN}"),)):
            now = time.perf_counter()
            if answer.rejections:
                raise RuntimeError(f"unexpected rejections: {answer.rejections[:3]}")
            answers.append((now, answer.accepted, now - sent_at.pop(answer.batch_id)))
            credits.release()
    return answers


async def kafka_reference(settings: KafkaSettings, seconds: float) -> float:
    """Pre-encoded trades through the same producer settings, batches of 500, 8 in flight: messages/s."""
    producer = AsyncProducer(settings)
    topic = topic_name(settings, TRADES)
    records = [trade_from_proto(t) for t in sample_trades(BATCH_SIZE)]
    keys = [r["symbol"].encode() for r in records]
    values = [avro.encode("trade", r) for r in records]
    in_flight: asyncio.Queue[asyncio.Future[object]] = asyncio.Queue(8)
    sent = 0
    started = time.perf_counter()

    async def drain() -> None:
        while True:
            await (await in_flight.get())

    drainer = asyncio.create_task(drain())
    while time.perf_counter() - started < seconds:
        await in_flight.put(await producer.produce_batch(topic, keys, values))  # type: ignore[arg-type]
        sent += len(values)
    while not in_flight.empty():
        await (await in_flight.get())
    elapsed = time.perf_counter() - started
    drainer.cancel()
    await producer.close()
    return sent / elapsed


def validate_encode_reference() -> float:
    """Ingest's per-trade work on one core: validating and Avro-encoding batches of 500 published trades
    (encode_trades), trades/s."""
    requests = [
        ingest_pb2.PublishTradesRequest.FromString(  # as the service has them: parsed
            ingest_pb2.PublishTradesRequest(
                trades=sample_trades(BATCH_SIZE, k * BATCH_SIZE)
            ).SerializeToString()
        )
        for k in range(10)
    ]
    received = datetime.now(UTC)
    message_ids = batch_message_ids("trade", "reference")
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for request in requests:
            encode_trades(request, received, message_ids)
        best = max(best, BATCH_SIZE * len(requests) / (time.perf_counter() - started))
    return best


def main() -> None:
    with kafka_bootstrap() as bootstrap:
        settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
        provision_topics(settings)
        with ingest_server(bootstrap, settings.topic_prefix) as (port, server):
            asyncio.run(publish_for(port, 1.0))  # connect, warm the producer
            client = psutil.Process()
            server_cpu, client_cpu = sum(server.cpu_times()[:2]), sum(client.cpu_times()[:2])
            answers = asyncio.run(publish_for(port, WARMUP_SECONDS + MEASURE_SECONDS))
            server_cpu = sum(server.cpu_times()[:2]) - server_cpu
            client_cpu = sum(client.cpu_times()[:2]) - client_cpu
            one_at_a_time = asyncio.run(publish_for(port, UNLOADED_SECONDS, window=1))
        start = answers[0][0] + WARMUP_SECONDS
        measured = [answer for answer in answers if answer[0] > start]
        elapsed = measured[-1][0] - start
        reference_settings = KafkaSettings(
            bootstrap_servers=bootstrap, topic_prefix=f"bench-ref-{uuid.uuid4().hex[:8]}."
        )
        provision_topics(reference_settings)
        kafka_only = asyncio.run(kafka_reference(reference_settings, REFERENCE_SECONDS))
    quantiles = statistics.quantiles([latency for _, _, latency in measured], n=100)
    unloaded = statistics.quantiles([latency for _, _, latency in one_at_a_time], n=100)
    total = WARMUP_SECONDS + MEASURE_SECONDS
    print(
        json.dumps(
            {
                "batch_size": BATCH_SIZE,
                "client_window_batches": WINDOW,
                "streams": 1,
                "seconds": round(elapsed, 1),
                "trades_per_s": round(sum(accepted for _, accepted, _ in measured) / elapsed),
                # at the sustained rate: includes the wait behind the client's window of outstanding batches
                "batch_ack_latency_ms": {
                    "p50": round(quantiles[49] * 1000, 1),
                    "p99": round(quantiles[98] * 1000, 1),
                },
                # one batch outstanding at a time: the service's own latency, receive → validate → Kafka acks → answer
                "batch_ack_latency_one_outstanding_ms": {
                    "p50": round(unloaded[49] * 1000, 1),
                    "p99": round(unloaded[98] * 1000, 1),
                },
                "server_cpu_cores": round(server_cpu / total, 2),
                "client_cpu_cores": round(client_cpu / total, 2),
                # the service's CPU (all its threads) per trade: what bounds its rate on a core, whatever else runs
                "server_cpu_us_per_trade": round(
                    server_cpu / sum(accepted for _, accepted, _ in answers) * 1e6, 1
                ),
                "cpus": os.cpu_count(),
                "reference_kafka_producer_only_msgs_per_s": round(kafka_only),
                "reference_validate_encode_one_core_per_s": round(validate_encode_reference()),
            }
        )
    )


if __name__ == "__main__":
    main()
