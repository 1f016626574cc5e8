"""Exactly once, with writers as real processes (`python -m k2.services.writer`) while a producer keeps sending:
kill -9 at random points over several rounds; two writers in one group through rebalances; the same kill test
against a real PostgreSQL catalog. Afterwards the table holds exactly the acknowledged trades: same count, no
duplicate message_id, every decimal equal. And a message re-sent with the same message_id (as ingest does
after its own dedupe window) lands once, across a writer restart."""

import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from conftest import ROOT
from service_processes import ServiceProcess, platform_env
from strategies import sample_trade
from test_writer_service import TradeStream, produce, table_rows, wait_caught_up

from k2.core import avro
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.kafka import TRADES, topic_name
from k2.writer.v1 import writer_pb2_grpc


class WriterProcess(ServiceProcess):
    """`python -m k2.services.writer`, started at once, with an async stub."""

    def __init__(
        self,
        kafka: KafkaSettings,
        iceberg: IcebergSettings,
        group_id: str,
        log_path: Path,
        **settings: object,
    ):
        super().__init__(
            "writer",
            platform_env(kafka, iceberg)
            | {
                "K2_WRITER_GROUP_ID": group_id,
                "K2_WRITER_PROVISION_TOPICS": "false",
                "K2_WRITER_MONITOR_INTERVAL_SECONDS": "0.5",
                # The broker's minimum: a killed writer's partitions move on after 6 s.
                "K2_WRITER_SESSION_TIMEOUT_MS": "6000",
            }
            | {f"K2_WRITER_{name.upper()}": str(value) for name, value in settings.items()},
            log_path,
        )
        self.start()
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = writer_pb2_grpc.WriterServiceStub(self.channel)

    async def serving(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.wait_serving, timeout)

    async def wait_committing(self, commits: float = 1, timeout: float = 60.0) -> None:
        """Until the writer has committed to the trades table `commits` times (it owns partitions, works)."""
        deadline = time.monotonic() + timeout
        while self.commits() < commits:
            assert time.monotonic() < deadline, f"writer not committing: {self.log_tail()}"
            await asyncio.sleep(0.05)

    def commits(self) -> float:
        return self.metric("k2_writer_commits_total", table="market_data.trades", operation="append")

    async def close(self) -> None:
        if self.running():
            self.kill()
        await self.channel.close()


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[WriterProcess]]:
    started: list[WriterProcess] = []
    yield started
    for writer in started:
        if writer.running():
            writer.kill()


def assert_exactly_once(iceberg: IcebergSettings, stream: TradeStream) -> None:
    rows = table_rows(iceberg)
    assert len({r[0] for r in rows}) == len(rows), "duplicate message_id"
    assert len(rows) == len(stream.acknowledged)
    assert {r[0]: (r[1], r[2]) for r in rows} == stream.acknowledged


async def kill_rounds(
    kafka: KafkaSettings, iceberg: IcebergSettings, writers: list[WriterProcess], logs: Path, rounds: int
) -> None:
    rng = random.Random()
    group = f"writer-{uuid.uuid4().hex[:8]}"
    stream = TradeStream(kafka, rate=1500)
    stream.start()
    try:
        for number in range(rounds):
            writer = WriterProcess(
                kafka,
                iceberg,
                group,
                logs / f"writer-{number}.log",
                commit_interval_ms=rng.choice([50, 200, 500]),
            )
            writers.append(writer)
            await writer.serving()
            await writer.wait_committing()
            if number % 2:
                await asyncio.sleep(rng.uniform(0.0, 1.5))  # before, during or after a commit
            else:
                await writer.wait_committing(commits=writer.commits() + 1)  # right after a commit
            writer.kill()
        final = WriterProcess(kafka, iceberg, group, logs / "writer-final.log", commit_interval_ms=200)
        writers.append(final)
        await final.serving()
        await asyncio.sleep(1)
    finally:
        stream.stop()
    await wait_caught_up(final.stub, topic_name(kafka, TRADES), timeout=120)
    assert final.terminate() == 0, final.log_tail()
    assert_exactly_once(iceberg, stream)


async def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
    writers: list[WriterProcess],
    tmp_path: Path,
) -> None:
    await kill_rounds(kafka_settings, iceberg_settings, writers, tmp_path, rounds=4)


async def test_two_writers_in_one_group_through_rebalances(
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
    writers: list[WriterProcess],
    tmp_path: Path,
) -> None:
    group = f"writer-{uuid.uuid4().hex[:8]}"
    stream = TradeStream(kafka_settings, rate=2000)
    stream.start()
    try:
        # "range" splits the trades topic across both writers (cooperative-sticky may give one of them every
        # quotes partition and the other every trades partition), so both commit to the trades table at once.
        first = WriterProcess(
            kafka_settings,
            iceberg_settings,
            group,
            tmp_path / "first.log",
            commit_interval_ms=50,
            assignment_strategy="range",
        )
        writers.append(first)
        await first.serving()
        await asyncio.sleep(2)
        second = WriterProcess(
            kafka_settings,
            iceberg_settings,
            group,
            tmp_path / "second.log",
            commit_interval_ms=50,
            assignment_strategy="range",
        )
        writers.append(second)
        await second.serving()  # joining the group: partitions move from the first to the second
        deadline = time.monotonic() + 30
        conflicts = "k2_writer_commit_conflicts_total"
        while first.metric(conflicts) + second.metric(conflicts) == 0:
            assert time.monotonic() < deadline, "two writers committing every 50 ms never conflicted"
            await asyncio.sleep(0.5)
        assert first.metric("k2_writer_commit_failures_total") == 0
        assert first.terminate() == 0, first.log_tail()  # leaving: the second takes every partition
        await asyncio.sleep(2)
    finally:
        stream.stop()
    await wait_caught_up(second.stub, topic_name(kafka_settings, TRADES), timeout=120)
    assert second.metric("k2_writer_commit_failures_total") == 0
    assert second.terminate() == 0, second.log_tail()
    assert_exactly_once(iceberg_settings, stream)


@pytest.fixture
def postgres_catalog_uri() -> Iterator[str]:
    """A real PostgreSQL server started by scripts/postgres.sh in a folder of its own, stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="k2-postgres-"))
    folder.chmod(0o755)  # run as root, the server runs as the postgres user, which must reach it
    env = os.environ | {"K2_POSTGRES_DIR": str(folder / "postgres"), "K2_RUN_DIR": str(folder / "run")}
    script = ROOT / "scripts" / "postgres.sh"
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=600, check=False)
    try:
        assert up.returncode == 0, f"scripts/postgres.sh up failed:\n{up.stdout}\n{up.stderr}"
        yield up.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([script, "down"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


async def test_kill_9_with_a_postgresql_catalog(
    kafka_settings: KafkaSettings, postgres_catalog_uri: str, writers: list[WriterProcess], tmp_path: Path
) -> None:
    iceberg = IcebergSettings(
        catalog_name=f"test_{uuid.uuid4().hex[:8]}",
        catalog_uri=postgres_catalog_uri,
        warehouse=f"file://{tmp_path / 'warehouse'}",
    )
    await kill_rounds(kafka_settings, iceberg, writers, tmp_path, rounds=2)


async def test_a_resent_message_id_lands_once_across_a_restart(
    kafka_settings: KafkaSettings,
    iceberg_settings: IcebergSettings,
    writers: list[WriterProcess],
    tmp_path: Path,
) -> None:
    topic = topic_name(kafka_settings, TRADES)
    group = f"writer-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    trade = sample_trade(message_id=str(uuid.uuid4()), trade_id="T-1", ingestion_timestamp=now)
    resent = trade | {"ingestion_timestamp": now + timedelta(seconds=5)}  # ingest re-sending the same trade
    other = sample_trade(message_id=str(uuid.uuid4()), trade_id="T-2", ingestion_timestamp=now)
    duplicates = "k2_writer_duplicates_dropped_total"

    first = WriterProcess(
        kafka_settings, iceberg_settings, group, tmp_path / "first.log", commit_interval_ms=50
    )
    writers.append(first)
    await first.serving()
    produce(kafka_settings, topic, [avro.encode("trade", trade), avro.encode("trade", trade)], partition=0)
    await wait_caught_up(first.stub, topic)
    assert first.metric(duplicates, table="market_data.trades") == 1
    assert first.terminate() == 0, first.log_tail()

    second = WriterProcess(
        kafka_settings, iceberg_settings, group, tmp_path / "second.log", commit_interval_ms=50
    )
    writers.append(second)
    await second.serving()
    produce(kafka_settings, topic, [avro.encode("trade", resent), avro.encode("trade", other)], partition=1)
    await wait_caught_up(second.stub, topic)
    assert second.metric(duplicates, table="market_data.trades") == 1
    assert second.terminate() == 0, second.log_tail()
    assert [row[0] for row in table_rows(iceberg_settings)] == sorted(
        [trade["message_id"], other["message_id"]]
    )
