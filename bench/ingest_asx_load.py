"""LoadFiles of the ASX BHP files (91,631 trades, 77,849 quotes) into Kafka: rows/s from the call to its
summary, every row acknowledged by Kafka. The ingest service runs in its own process. Reference measured in
the same run: parsing the trades file alone (read + parse + validate, no Kafka) on one core in this process.
Prints one JSON object."""

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import grpc
from _kafka import kafka_bootstrap
from ingest_publish import TOKEN, ingest_server

from k2.core.config import KafkaSettings
from k2.core.kafka import provision_topics
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.services.ingest.asx import AsxTradeParser
from k2.services.ingest.config import DEFAULT_LOAD_ROOT
from k2.services.ingest.rows import numbered_lines

ROUNDS = 2
FILES = {
    "trades": ("trades/7078.csv", ingest_pb2.FILE_FORMAT_ASX_TRADES),
    "quotes": ("quotes/7078.csv", ingest_pb2.FILE_FORMAT_ASX_QUOTES),
}


async def load(
    port: int, path: str, file_format: ingest_pb2.FileFormat
) -> tuple[float, ingest_pb2.LoadSummary]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        started = time.perf_counter()
        summary = None
        async for event in stub.LoadFiles(
            ingest_pb2.LoadFilesRequest(paths=[path], format=file_format),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
        ):
            if event.HasField("summary"):
                summary = event.summary
        assert summary is not None
        return time.perf_counter() - started, summary


def parse_only_rows_per_s() -> float:
    path = DEFAULT_LOAD_ROOT / FILES["trades"][0]
    started = time.perf_counter()
    parser = AsxTradeParser("7078", "BHP", datetime.now(UTC))
    rows = sum(parser.parse(chunk).rows for chunk in numbered_lines(path, 5000))
    return rows / (time.perf_counter() - started)


def main() -> None:
    figures: dict[str, object] = {}
    with kafka_bootstrap() as bootstrap:
        settings = KafkaSettings(
            bootstrap_servers=bootstrap, topic_prefix=f"bench-load-{uuid.uuid4().hex[:8]}."
        )
        provision_topics(settings)
        with ingest_server(bootstrap, settings.topic_prefix) as (port, _):
            for name, (path, file_format) in FILES.items():
                best_seconds, rows = float("inf"), 0
                for _ in range(ROUNDS):
                    seconds, summary = asyncio.run(load(port, path, file_format))
                    if summary.rows_accepted != summary.rows_read or summary.rows_rejected:
                        raise RuntimeError(f"{path}: {summary}")
                    best_seconds, rows = min(best_seconds, seconds), summary.rows_read
                figures[f"{name}_rows"] = rows
                figures[f"{name}_seconds"] = round(best_seconds, 2)
                figures[f"{name}_rows_per_s"] = round(rows / best_seconds)
    parse_only = max(parse_only_rows_per_s() for _ in range(ROUNDS))
    figures["reference_parse_only_trades_rows_per_s"] = round(parse_only)
    figures["rounds"] = ROUNDS
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
