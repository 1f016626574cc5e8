"""The production storage set-up (docs/deployment.md): a PostgreSQL catalog and an S3-compatible warehouse, here a
real s3proxy server speaking S3 with v4 signatures. Writers as real processes are killed with -9 while a producer
keeps sending, and the table in the bucket holds exactly the acknowledged trades, read back by a table scan and
through the query service. A wrong secret stops the writer at start with the reason."""

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import S3Server
from pyarrow.fs import FileSelector
from test_query_harness import running_service, ts
from test_writer_exactly_once import WriterProcess, kill_rounds, postgres_catalog_uri, writers  # noqa: F401
from test_writer_service import table_rows, trades_table

from k2.core.config import IcebergSettings, KafkaSettings
from k2.query.v1 import query_pb2


async def query_all_trades(kafka: KafkaSettings, iceberg: IcebergSettings) -> list[str]:
    """Every trade's message_id, through the query service's QueryTrades, page by page."""
    ids: list[str] = []
    async with running_service(kafka, iceberg) as service:
        page_token = ""
        while True:
            request = query_pb2.QueryTradesRequest(
                symbols=["BTCUSDT", "ETHUSDT"],
                start=ts(datetime(2026, 1, 1, tzinfo=UTC)),
                end=ts(datetime(2026, 1, 3, tzinfo=UTC)),
                page_token=page_token,
            )
            page_token = ""
            async for response in service.stub.QueryTrades(request):
                ids += [trade.message_id for trade in response.trades]
                page_token = response.next_page_token or page_token
            if not page_token:
                return ids


async def test_kill_9_into_an_s3_warehouse_with_a_postgresql_catalog(
    kafka_settings: KafkaSettings,
    postgres_catalog_uri: str,  # noqa: F811
    s3_server: S3Server,
    s3_warehouse: str,
    writers: list[WriterProcess],  # noqa: F811
    tmp_path: Path,
) -> None:
    iceberg = IcebergSettings(
        catalog_name=f"test_{uuid.uuid4().hex[:8]}", catalog_uri=postgres_catalog_uri, warehouse=s3_warehouse
    )
    await kill_rounds(
        kafka_settings, iceberg, writers, tmp_path, rounds=2
    )  # asserts exactly once on a table scan

    table = trades_table(iceberg)
    assert table.location().startswith(f"{s3_warehouse}/")
    data_files = {task.file.file_path for task in table.scan().plan_files()}
    assert data_files and all(path.startswith(f"{s3_warehouse}/") for path in data_files)
    in_bucket = s3_server.filesystem().get_file_info(
        FileSelector(s3_warehouse.removeprefix("s3://"), recursive=True)
    )
    assert {path.removeprefix("s3://") for path in data_files} <= {info.path for info in in_bucket}

    rows = table_rows(iceberg)
    queried = await query_all_trades(kafka_settings, iceberg)
    assert sorted(queried) == [row[0] for row in rows]


async def test_a_wrong_s3_secret_stops_the_writer_at_start_with_the_reason(
    kafka_settings: KafkaSettings,
    s3_warehouse: str,
    writers: list[WriterProcess],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("K2_ICEBERG_S3_SECRET_ACCESS_KEY", "not-the-secret")
    iceberg = IcebergSettings(catalog_uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=s3_warehouse)
    writer = WriterProcess(kafka_settings, iceberg, f"writer-{uuid.uuid4().hex[:8]}", tmp_path / "writer.log")
    writers.append(writer)
    assert await asyncio.to_thread(writer.process.wait, 60) != 0
    log = writer.log_tail()
    assert f"the warehouse {s3_warehouse} refused or failed a request" in log, log
    assert "ACCESS_DENIED" in log, log
