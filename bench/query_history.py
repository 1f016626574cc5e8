"""History queries on ~90k trades of one symbol (the ASX BHP file: 91,631 trades over five trading days, loaded
with the ingest ASX parser; generated trades of the same shape if that parser is absent):

- QueryTrades for one symbol-day (the busiest trading day, exchange-local midnight to midnight), read to the
  end by a gRPC client: p50 and p95;
- GetBars 1-minute for that day: p50;
- reference, same run: a plain pyiceberg scan of the same rows (table.scan(row_filter=...).to_arrow()): p50.

Rows are committed in chunks of 5,000 (one snapshot each, as a writer would), the Kafka tail is empty. The
query service runs as its own process. Prints one JSON object."""

import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
from _kafka import ROOT, kafka_bootstrap
from google.protobuf.timestamp_pb2 import Timestamp
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from query_fanout import log, query_service

from k2.core.arrow_records import records_to_arrow
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import ensure_table, load_catalog
from k2.core.kafka import provision_topics
from k2.core.protos import set_timestamp
from k2.core.records import Record
from k2.query.v1 import query_pb2, query_pb2_grpc

ASX_TRADES = ROOT / "data" / "asx" / "trades" / "7078.csv"
SYDNEY = ZoneInfo("Australia/Sydney")
COMMIT_ROWS = 5_000
RUNS = 9


def asx_trades() -> tuple[list[Record], str]:
    try:
        from k2.services.ingest.asx import AsxTradeParser
        from k2.services.ingest.rows import numbered_lines
    except ImportError:
        return generated_trades(), "generated"
    parser = AsxTradeParser("7078", "BHP", datetime.now(UTC))
    records: list[Record] = []
    for chunk in numbered_lines(ASX_TRADES, 20_000):
        records += parser.parse(chunk).records
    return records, "asx-bhp"


def generated_trades() -> list[Record]:
    records = []
    for day in range(5):
        opening = datetime(2014, 3, 10 + day, 10, tzinfo=SYDNEY).astimezone(UTC)
        for i in range(18_000):
            timestamp = opening + timedelta(milliseconds=i * 1200)
            records.append(
                {
                    "message_id": str(uuid.uuid4()),
                    "trade_id": f"ASX-7078-{day}-{i}",
                    "symbol": "BHP",
                    "exchange": "ASX",
                    "asset_class": "EQUITIES",
                    "timestamp": timestamp,
                    "price": Decimal(f"37.{(i * 7) % 100:02d}"),
                    "quantity": Decimal(100 + i % 900),
                    "currency": "AUD",
                    "side": "UNKNOWN",
                    "trade_conditions": ["3"],
                    "source_sequence": day * 18_000 + i,
                    "ingestion_timestamp": timestamp,
                    "platform_sequence": None,
                    "vendor_data": {"company_id": "7078"},
                }
            )
    return records


def timestamp(value: datetime) -> Timestamp:
    result = Timestamp()
    set_timestamp(result, value)
    return result


def p(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000, 1)


def timed(function) -> list[float]:  # type: ignore[no-untyped-def]
    function()  # warm-up
    durations = []
    for _ in range(RUNS):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return durations


def main() -> None:
    records, source = asx_trades()
    by_day: dict[date, int] = {}
    for record in records:
        local_day = record["timestamp"].astimezone(SYDNEY).date()
        by_day[local_day] = by_day.get(local_day, 0) + 1
    day = max(by_day, key=lambda d: by_day[d])
    with tempfile.TemporaryDirectory(prefix="k2-bench-history-") as folder:
        print(json.dumps(run(records, source, day, by_day[day], Path(folder))))


def run(records: list[Record], source: str, day: date, day_rows: int, folder: Path) -> dict[str, object]:
    start = datetime(day.year, day.month, day.day, tzinfo=SYDNEY).astimezone(UTC)
    end = start + timedelta(days=1)
    iceberg = IcebergSettings(
        catalog_uri=f"sqlite:///{folder / 'catalog.db'}", warehouse=f"file://{folder / 'warehouse'}"
    )
    table = ensure_table(load_catalog(iceberg), iceberg, "trade")
    log(f"committing {len(records)} {source} trades in chunks of {COMMIT_ROWS} ...")
    for offset in range(0, len(records), COMMIT_ROWS):
        table.append(records_to_arrow("trade", records[offset : offset + COMMIT_ROWS]))
    result: dict[str, object] = {
        "benchmark": "query_history",
        "data": source,
        "table_rows": len(records),
        "day": day.isoformat(),
        "day_rows": day_rows,
        "runs": RUNS,
    }

    # keyword arguments: the form both pyiceberg and the pydantic mypy plugin accept
    row_filter = And(
        EqualTo(term="symbol", value="BHP"),
        GreaterThanOrEqual(term="timestamp", value=int(start.timestamp() * 1e6)),
        LessThan(term="timestamp", value=int(end.timestamp() * 1e6)),
    )
    scan_rows: list[int] = []
    reference = timed(
        lambda: scan_rows.append(table.refresh().scan(row_filter=row_filter).to_arrow().num_rows)
    )
    assert scan_rows[-1] == day_rows

    with kafka_bootstrap() as bootstrap:
        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
        provision_topics(kafka)
        with (
            query_service(
                bootstrap,
                kafka.topic_prefix,
                K2_ICEBERG_CATALOG_URI=iceberg.catalog_uri,
                K2_ICEBERG_WAREHOUSE=iceberg.warehouse,
            ) as (port, _),
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 2**20)]
            ) as channel,
        ):
            stub = query_pb2_grpc.QueryServiceStub(channel)
            query = query_pb2.QueryTradesRequest(
                symbols=["BHP"], start=timestamp(start), end=timestamp(end), limit=100_000
            )
            counts: list[int] = []
            trades = timed(lambda: counts.append(sum(len(r.trades) for r in stub.QueryTrades(query))))
            assert counts[-1] == day_rows, (counts[-1], day_rows)
            bars_request = query_pb2.GetBarsRequest(
                symbol="BHP", interval=query_pb2.BAR_INTERVAL_1M, start=timestamp(start), end=timestamp(end)
            )
            bar_counts: list[int] = []
            bars = timed(lambda: bar_counts.append(len(stub.GetBars(bars_request).bars)))
    result |= {
        "query_trades_p50_ms": p(trades, 0.5),
        "query_trades_p95_ms": p(trades, 0.95),
        "get_bars_1m_p50_ms": p(bars, 0.5),
        "bars": bar_counts[-1],
        "reference_pyiceberg_scan_p50_ms": p(reference, 0.5),
    }
    return result


if __name__ == "__main__":
    main()
