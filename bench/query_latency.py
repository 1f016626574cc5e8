"""Publish → SubscribeTrades latency at 10,000 trades/s: p50/p99 of (time a subscriber receives a trade) - (time
the trade was handed to the Kafka producer), one machine, one clock.

The query service runs as its own process (default settings); a producer process publishes pre-encoded trades,
10 every millisecond (linger.ms=0), writing each one's publish time into shared memory (indexed by its
source_sequence); one subscriber in this process measures on arrival. The reference, in the same run: a plain
Kafka consumer in a process of its own (assigned to every partition, the fan-out's fetch settings) measuring the
same trades on arrival — what Kafka itself takes on this machine, which the service cannot beat. The first 15 s
are warm-up and not counted: a freshly started broker's JVM takes that long to settle (measured: the plain consumer's
p50 falls from ~28 ms in the first seconds to 3-9 ms). Prints one JSON object."""

import asyncio
import ctypes
import json
import multiprocessing
import statistics
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import grpc
from _kafka import kafka_bootstrap
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from query_fanout import log, query_service

from k2.core import avro
from k2.core.config import KafkaSettings
from k2.core.kafka import TRADES, consumer_config, producer_config, provision_topics, topic_name
from k2.query.v1 import query_pb2, query_pb2_grpc

RATE = 10_000  # trades/s
SECONDS = 25
WARM_UP = 15.0  # s: a freshly started broker (JVM JIT) and service warm up
PER_TICK = 10  # trades per 1 ms tick


def encoded_trades() -> list[bytes]:
    now = datetime.now(UTC)
    return [
        avro.encode(
            "trade",
            {
                "message_id": str(uuid.uuid4()),
                "trade_id": f"BINANCE-{i}",
                "symbol": f"SYM{i % 20:02d}USDT",
                "exchange": "BINANCE",
                "asset_class": "CRYPTO",
                "timestamp": now,
                "price": Decimal("97123.45"),
                "quantity": Decimal("0.0015"),
                "currency": "USDT",
                "side": "BUY",
                "trade_conditions": [],
                "source_sequence": i,
                "ingestion_timestamp": now,
                "platform_sequence": None,
                "vendor_data": None,
            },
        )
        for i in range(RATE * SECONDS)
    ]


def publish(
    bootstrap: str,
    prefix: str,
    sent: "ctypes.Array[ctypes.c_double]",
    ready: "multiprocessing.synchronize.Event",
    go: "multiprocessing.synchronize.Event",
) -> None:
    """Trade i (source_sequence i) is handed to the producer at wall-clock time sent[i]."""
    values = encoded_trades()  # encoded beforehand: the publisher only publishes
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    producer = Producer(producer_config(settings, **{"linger.ms": 0}))
    topic = topic_name(settings, TRADES)
    keys = [f"SYM{i % 20:02d}USDT".encode() for i in range(20)]
    ready.set()
    go.wait()
    start = time.perf_counter()
    for tick in range(RATE * SECONDS // PER_TICK):
        delay = start + tick * PER_TICK / RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        for i in range(tick * PER_TICK, (tick + 1) * PER_TICK):
            sent[i] = time.time()
            producer.produce(topic, values[i], keys[i % 20])
        producer.poll(0)
    producer.flush(60)


def consume(
    bootstrap: str,
    prefix: str,
    received: "ctypes.Array[ctypes.c_double]",
    ready: "multiprocessing.synchronize.Event",
) -> None:
    """The reference: trade i (source_sequence i) arrived at a plain Kafka consumer at wall-clock time received[i]."""
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    consumer = Consumer(consumer_config(settings, f"bench-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 5}))
    topic = topic_name(settings, TRADES)
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(TRADES.partitions)])
    consumer.consume(1, 1.0)  # connected, positions resolved
    ready.set()
    count = 0
    while count < RATE * SECONDS:
        # consume(n, timeout) waits for n messages or the timeout: take one, then whatever else has arrived
        for message in consumer.consume(1, 0.1) + consumer.consume(999, 0):
            if message.error() is None:
                value = message.value()
                assert value is not None  # every benchmark trade has a value
                received[avro.decode(value)[1]["source_sequence"]] = time.time()
                count += 1
    consumer.close()


def quantiles(latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    cuts = statistics.quantiles(latencies, n=1000)
    return {
        "p50_ms": round(cuts[499], 2),
        "p99_ms": round(cuts[989], 2),
        "p999_ms": round(cuts[998], 2),
        "max_ms": round(latencies[-1], 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


async def measure(port: int, bootstrap: str, prefix: str) -> dict[str, object]:
    context = multiprocessing.get_context("spawn")
    sent = context.Array("d", RATE * SECONDS, lock=False)
    arrived = context.Array("d", RATE * SECONDS, lock=False)
    ready, go, reference_ready = context.Event(), context.Event(), context.Event()
    producer = context.Process(target=publish, args=(bootstrap, prefix, sent, ready, go))
    reference = context.Process(target=consume, args=(bootstrap, prefix, arrived, reference_ready))
    producer.start()
    reference.start()
    await asyncio.to_thread(ready.wait, 120)
    await asyncio.to_thread(reference_ready.wait, 120)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = query_pb2_grpc.QueryServiceStub(channel).SubscribeTrades(query_pb2.SubscribeTradesRequest())
        await call.read()  # the first heartbeat: subscribed
        go.set()
        latencies: list[float] = []
        received = 0
        async with asyncio.timeout(SECONDS * 6 + 30):
            while received < RATE * SECONDS:
                response = await call.read()
                now = time.time()
                for trade in response.trades:
                    if trade.source_sequence >= WARM_UP * RATE:
                        latencies.append((now - sent[trade.source_sequence]) * 1000)
                received += len(response.trades)
        call.cancel()
    await asyncio.to_thread(producer.join)
    await asyncio.to_thread(reference.join)
    first = int(WARM_UP * RATE)
    kafka_only = [(arrived[i] - sent[i]) * 1000 for i in range(first, RATE * SECONDS)]
    return (
        {"rate_per_s": RATE, "measured_trades": len(latencies)}
        | quantiles(latencies)
        | {"reference_plain_kafka_consumer": quantiles(kafka_only)}
    )


def main() -> None:
    result: dict[str, object] = {"benchmark": "query_latency"}
    with kafka_bootstrap() as bootstrap:
        prefix = f"bench-{uuid.uuid4().hex[:8]}."
        provision_topics(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix))
        with query_service(bootstrap, prefix, K2_QUERY_HEARTBEAT_SECONDS="0.5") as (port, _):
            log(f"publishing {RATE} trades/s for {SECONDS} s ...")
            result |= asyncio.run(measure(port, bootstrap, prefix))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
