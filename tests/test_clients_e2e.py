"""The SDK and the CLI end to end against the real services (ingest, writer, query) started in-process, with the
real Kafka broker of the test session and a per-test Iceberg catalog."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import ASX_DATA
from pydantic import SecretStr
from test_clients_harness import TOKEN, server_thread, trade, wait_until
from typer.testing import CliRunner

from k2.clients import K2Client, Trade
from k2.clients.cli import app
from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.services.ingest.config import IngestSettings
from k2.services.ingest.server import IngestApp
from k2.services.query.config import QuerySettings
from k2.services.query.server import QueryServer
from k2.services.writer.config import WriterSettings
from k2.services.writer.server import WriterApp


@dataclass
class Services:
    ingest: str
    writer: str
    query: str

    def client(self) -> K2Client:
        return K2Client(
            ingest_address=self.ingest, writer_address=self.writer, query_address=self.query, token=TOKEN
        )

    def env(self) -> dict[str, str]:
        return {
            "K2_INGEST_ADDRESS": self.ingest,
            "K2_WRITER_ADDRESS": self.writer,
            "K2_QUERY_ADDRESS": self.query,
            "K2_TOKEN": TOKEN,
            "COLUMNS": "200",
        }


@pytest.fixture
def services(kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings) -> Iterator[Services]:
    """The three services on one event-loop thread, so blocking clients and the CLI can call them."""
    thread = server_thread()
    auth = AuthSettings(write_tokens=[SecretStr(TOKEN)])
    local = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "grace_seconds": 1.0}

    async def start() -> tuple[IngestApp, WriterApp, QueryServer, Services]:
        ingest = IngestApp(IngestSettings(**local), kafka_settings, auth)  # type: ignore[arg-type]
        writer = WriterApp(
            WriterSettings(**local, commit_interval_ms=200),  # type: ignore[arg-type]
            kafka_settings,
            iceberg_settings,
            auth,
        )
        query = QueryServer(
            QuerySettings(**local, heartbeat_seconds=0.5),  # type: ignore[arg-type]
            kafka_settings,
            iceberg_settings,
            auth,
        )
        ports = [await ingest.start(), await writer.start(), await query.start()]
        await query.wait_ready()
        return ingest, writer, query, Services(*(f"127.0.0.1:{port}" for port in ports))

    ingest, writer, query, running = thread.run(start())
    try:
        yield running
    finally:
        for service in (query, writer, ingest):
            thread.run(service.stop())


def test_publish_subscribe_query_through_the_platform(services: Services) -> None:
    symbol = "E2E"
    records = [trade(n, symbol=symbol) for n in range(300)]
    start = records[0]["timestamp"]
    with services.client() as k2:
        result = k2.publish_trades(records, batch_size=64)
        assert (result.accepted, result.rejections) == (300, [])

        received: list[Trade] = []
        for batch in k2.subscribe_trades(symbol, start=start):
            received += batch.records
            if len(received) >= 300:
                break
        assert [t.message_id for t in received] == [r["message_id"] for r in records]
        assert [t.price for t in received] == [r["price"] for r in records]

        k2.flush()
        end = start + timedelta(days=1)
        wait_until(lambda: k2.query_trades(symbol, start, end).num_rows == 300, timeout=30)
        table = k2.query_trades(symbol, start, end)
        assert table["price"].to_pylist() == [r["price"] for r in records]
        assert table["quantity"].to_pylist() == [Decimal(100)] * 300
        assert {h.service: h.status for h in k2.health()} == {
            "ingest": "SERVING",
            "writer": "SERVING",
            "query": "SERVING",
        }
        assert sum(t.rows for t in k2.writer_status().tables) >= 300

    runner = CliRunner()
    rows = runner.invoke(
        app,
        ["trades", symbol, "--start", "2014-03-10", "--end", "2014-03-11", "-f", "json"],
        env=services.env(),
    )
    assert rows.exit_code == 0, rows.output
    assert [json.loads(line)["price"] for line in rows.stdout.splitlines()][:2] == [
        "37.000000000000000001",
        "37.000100000000000001",
    ]
    status = runner.invoke(app, ["status"], env=services.env())
    assert status.exit_code == 0, status.output


def test_cli_loads_asx_files_and_queries_them(services: Services) -> None:
    runner = CliRunner()
    loaded = runner.invoke(app, ["load", "asx", str(ASX_DATA / "trades" / "3153.csv")], env=services.env())
    assert loaded.exit_code == 0, loaded.output
    assert "total" in loaded.stdout and "trades/3153.csv" in loaded.stdout
    with services.client() as k2:
        k2.flush()
        day = datetime(2014, 3, 9, tzinfo=UTC)
        wait_until(lambda: k2.query_trades("MWR", day, day + timedelta(days=7)).num_rows == 11, timeout=30)
    bars = runner.invoke(
        app,
        ["bars", "MWR", "--interval", "1d", "--start", "2014-03-09", "--end", "2014-03-16", "-f", "json"],
        env=services.env(),
    )
    assert bars.exit_code == 0, bars.output
    assert sum(json.loads(line)["trade_count"] for line in bars.stdout.splitlines()) == 11
