"""Shared fixtures. Kafka tests use the real broker that scripts/kafka.sh starts (once per test session, on its own
ports and run folder so it never meets `make up`'s); each test gets its own topics through a unique prefix."""

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_query_harness import Market, Service, running_service

from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.kafka import provision_topics

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ASX_DATA = SHARED / "data" / "asx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka broker for the test session (or the existing cluster named by KAFKA_BOOTSTRAP_SERVERS)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    run_dir = tmp_path_factory.mktemp("kafka-run")
    port, controller_port = free_port(), free_port()
    env = os.environ | {"K2_RUN_DIR": str(run_dir), "K2_KAFKA_PORT": str(port),
                        "K2_KAFKA_CONTROLLER_PORT": str(controller_port)}
    script = ROOT / "scripts" / "kafka.sh"
    subprocess.run([script, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([script, "down"], env=env, check=False, stdout=subprocess.DEVNULL)


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Settings whose topics are this test's own (a unique prefix), already provisioned."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:10]}.")
    provision_topics(settings)
    return settings


@pytest.fixture
def iceberg_settings(tmp_path: Path) -> IcebergSettings:
    """An embedded SQLite catalog and local warehouse of this test's own."""
    return IcebergSettings(catalog_uri=f"sqlite:///{tmp_path / 'catalog.db'}",
                           warehouse=f"file://{tmp_path / 'warehouse'}")


@pytest.fixture
def market(kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings) -> Market:
    """Produces trades/quotes to Kafka and commits Iceberg snapshots as the writer would (query tests)."""
    return Market(kafka_settings, iceberg_settings)


@pytest.fixture
async def service(kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings) -> AsyncIterator[Service]:
    """A query service in-process on a free port over this test's topics and catalog."""
    async with running_service(kafka_settings, iceberg_settings) as started:
        yield started
