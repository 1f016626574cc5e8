"""History queries at exchange scale, on the scale dataset (bench/scale_dataset.py: SCALEX 2021-01-04, 2,000
symbols, BIGUSDT 1,000,000 trades, 5.2M in all; `--small`: 200 symbols, BIGUSDT 100,000), the query service in
its own process over the dataset's table, each figure beside a plain pyiceberg scan + filter of the same rows
measured in the same run:

- a small symbol's day (the one nearest 5,000 trades): QueryTrades p50 read by a plain gRPC client (Trade
  messages) and through the SDK's query_trades (Arrow), against the plain scan's p50;
- BIGUSDT's day through the SDK's query_trades into an Arrow table: rows/s, against the plain scan;
- GetBars 1m over BIGUSDT's day: p50, against the plain scan + pyarrow group_by (min, max, sum, count per minute);
- the query service's RSS (peak, sampled every 10 ms) during the BIGUSDT query;
- the Kafka tail far behind: 1,000,000 messages the table does not hold (other symbols), the small symbol's
  query with the tail bounded (K2_QUERY_TAIL_MAX_MESSAGES, default) and unbounded.

Prints one JSON object."""

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Self

import grpc
import pyarrow as pa
import pyarrow.compute as pc
from _kafka import kafka_bootstrap
from confluent_kafka import Producer
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from query_fanout import log, query_service
from scale_dataset import SMALL, ScaleSpec, dataset
from writer_throughput import trade_values

from k2.clients import K2Client
from k2.core.config import KafkaSettings
from k2.core.iceberg import load_catalog, table_identifier
from k2.core.kafka import TRADES, producer_config, provision_topics, topic_name
from k2.core.protos import set_timestamp
from k2.query.v1 import query_pb2, query_pb2_grpc

RUNS = 9
LAG_MESSAGES = 1_000_000


def timed(function: Callable[[], object], runs: int = RUNS) -> list[float]:
    function()  # warm-up
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return durations


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The largest RSS of a process while the block runs, sampled every 10 ms."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> Self:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def fill_tail(kafka: KafkaSettings, count: int) -> None:
    """`count` trades of symbols the dataset does not have, on the query service's topic: what a writer that far
    behind leaves between the table and the topic's end."""
    values = trade_values(1000)
    producer = Producer(producer_config(kafka, **{"linger.ms": 20}))
    topic = topic_name(kafka, TRADES)
    for i in range(count):
        while True:
            try:
                producer.produce(topic, values[i % len(values)], f"LAG{i % 50:02d}USDT".encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small dataset (200 symbols, 300k trades)")
    args = parser.parse_args()
    spec = SMALL if args.small else ScaleSpec()
    iceberg, _ = dataset(spec)
    print(json.dumps(run(spec, iceberg)))


def run(spec: ScaleSpec, iceberg) -> dict[str, object]:  # type: ignore[no-untyped-def]
    day = datetime(spec.day.year, spec.day.month, spec.day.day, tzinfo=UTC)
    end = day + timedelta(days=1)
    counts = spec.counts()
    small, big = spec.small_symbol(), spec.big_symbol
    table = load_catalog(iceberg).load_table(table_identifier(iceberg, "trade"))
    result: dict[str, object] = {
        "benchmark": "query_scale",
        "dataset": "small" if spec == SMALL else "full",
        "table_rows": sum(counts.values()),
        "data_files": len(table.inspect.files()),
        "small_symbol": small,
        "small_rows": counts[small],
        "big_symbol": big,
        "big_rows": counts[big],
        "runs": RUNS,
        "nproc": os.cpu_count(),
        "load_average_start": os.getloadavg()[0],
    }

    def scan(symbol: str) -> pa.Table:
        # keyword arguments: the form both pyiceberg and the pydantic mypy plugin accept
        row_filter = And(
            EqualTo(term="symbol", value=symbol),
            GreaterThanOrEqual(term="timestamp", value=spec.day_start_us),
            LessThan(term="timestamp", value=spec.day_start_us + 86_400_000_000),
        )
        return table.refresh().scan(row_filter=row_filter).to_arrow()

    def scan_bars() -> int:
        rows = scan(big)
        micros = pc.cast(rows["timestamp"], pa.int64())
        minutes = pc.subtract(micros, pc.modulo(micros, 60_000_000))
        bars = (
            pa.table({"minute": minutes, "price": rows["price"], "quantity": rows["quantity"]})
            .group_by("minute")
            .aggregate([("price", "min"), ("price", "max"), ("quantity", "sum"), ("minute", "count")])
        )
        return bars.num_rows

    scan_small = timed(lambda: scan(small))
    scan_big = timed(lambda: scan(big), 3)
    scan_bars_s = timed(scan_bars, 3)
    big_reference = scan(big)
    assert big_reference.num_rows == counts[big]

    with kafka_bootstrap() as bootstrap:
        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
        provision_topics(kafka)
        catalog = {"K2_ICEBERG_CATALOG_URI": iceberg.catalog_uri, "K2_ICEBERG_WAREHOUSE": iceberg.warehouse}
        with (
            query_service(bootstrap, kafka.topic_prefix, **catalog) as (port, pid),
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 2**20)]
            ) as channel,
            K2Client(query_address=f"127.0.0.1:{port}") as k2,
        ):
            stub = query_pb2_grpc.QueryServiceStub(channel)
            request = query_pb2.QueryTradesRequest(symbols=[small], limit=100_000)
            set_timestamp(request.start, day)
            set_timestamp(request.end, end)

            def grpc_small() -> None:
                assert sum(len(r.trades) for r in stub.QueryTrades(request)) == counts[small]

            def sdk_small() -> None:
                assert k2.query_trades(small, day, end).num_rows == counts[small]

            small_grpc = timed(grpc_small)
            small_sdk = timed(sdk_small)
            rss_idle = rss_bytes(pid)
            big_runs = []
            with PeakRss(pid) as peak:
                for _ in range(3):
                    started = time.perf_counter()
                    got = k2.query_trades(big, day, end)
                    big_runs.append(time.perf_counter() - started)
            assert got.num_rows == counts[big]
            assert (
                got["message_id"].to_pylist()
                == big_reference.sort_by([("timestamp", "ascending"), ("source_sequence", "ascending")])[
                    "message_id"
                ].to_pylist()
            )
            assert pc.sum(got["price"]) == pc.sum(big_reference["price"])
            bars_request = query_pb2.GetBarsRequest(symbol=big, interval=query_pb2.BAR_INTERVAL_1M)
            set_timestamp(bars_request.start, day)
            set_timestamp(bars_request.end, end)
            bars = timed(lambda: stub.GetBars(bars_request), 5)
            result |= {
                "small_query_grpc_p50_ms": ms(small_grpc),
                "small_query_sdk_arrow_p50_ms": ms(small_sdk),
                "small_plain_scan_p50_ms": ms(scan_small),
                "small_ratio_sdk_to_scan": round(ms(small_sdk) / ms(scan_small), 2),
                "small_ratio_grpc_to_scan": round(ms(small_grpc) / ms(scan_small), 2),
                "big_sdk_arrow_s": round(statistics.median(big_runs), 3),
                "big_sdk_rows_per_s": round(counts[big] / statistics.median(big_runs)),
                "big_plain_scan_s": round(statistics.median(scan_big), 3),
                "big_ratio_sdk_to_scan": round(statistics.median(big_runs) / statistics.median(scan_big), 2),
                "bars_1m_big_p50_ms": ms(bars),
                "bars_count": len(stub.GetBars(bars_request).bars),
                "bars_plain_scan_group_by_p50_ms": ms(scan_bars_s),
                "service_rss_idle_mb": round(rss_idle / 2**20),
                "service_rss_peak_big_query_mb": round(peak.peak / 2**20),
            }

            log(f"producing {LAG_MESSAGES:,} messages the table does not hold ...")
            fill_tail(kafka, LAG_MESSAGES)
            lagging = timed(grpc_small, 5)
        with (
            query_service(
                bootstrap, kafka.topic_prefix, K2_QUERY_TAIL_MAX_MESSAGES=str(10 * LAG_MESSAGES), **catalog
            ) as (port, _),
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = query_pb2_grpc.QueryServiceStub(channel)
            unbounded = timed(grpc_small, 3)
    result |= {
        "tail_lag_messages": LAG_MESSAGES,
        "small_query_with_lag_bounded_p50_ms": ms(lagging),
        "small_query_with_lag_unbounded_p50_ms": ms(unbounded),
        "load_average_end": os.getloadavg()[0],
    }
    return result


if __name__ == "__main__":
    main()
