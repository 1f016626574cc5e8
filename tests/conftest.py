"""Shared fixtures. Kafka tests use the real broker that scripts/kafka.sh starts (once per test session, on its own
ports and run folder so it never meets `make up`'s); each test gets its own topics through a unique prefix.
S3 warehouse tests likewise share the S3-compatible server scripts/s3.sh starts, and registry-framing tests the schema
registry scripts/registry.sh starts, the first time one asks for it."""

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyarrow.fs import S3FileSystem
from test_query_harness import Market, Service, running_service

from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.kafka import provision_topics

ROOT = Path(__file__).resolve().parent.parent
ASX_DATA = ROOT / "data" / "asx"


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
    env = os.environ | {
        "K2_RUN_DIR": str(run_dir),
        "K2_KAFKA_PORT": str(port),
        "K2_KAFKA_CONTROLLER_PORT": str(controller_port),
    }
    script = ROOT / "scripts" / "kafka.sh"
    subprocess.run([script, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([script, "down"], env=env, check=False, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class S3Server:
    environment: dict[str, str]  # the env file scripts/s3.sh wrote: K2_ICEBERG_S3_* and the AWS SDK settings
    bucket: str

    def filesystem(self) -> S3FileSystem:
        """A client of the server, for looking at the bucket directly."""
        env = self.environment
        return S3FileSystem(
            endpoint_override=env["K2_ICEBERG_S3_ENDPOINT"],
            region=env["K2_ICEBERG_S3_REGION"],
            access_key=env["K2_ICEBERG_S3_ACCESS_KEY_ID"],
            secret_key=env["K2_ICEBERG_S3_SECRET_ACCESS_KEY"],
            allow_bucket_creation=True,
        )


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (s3proxy, filesystem backend, S3 v4 signatures, credentials generated for this
    session) with one bucket."""
    env = os.environ | {"K2_RUN_DIR": str(tmp_path_factory.mktemp("s3-run")), "K2_S3_PORT": str(free_port())}
    script = ROOT / "scripts" / "s3.sh"
    up = subprocess.run([script, "up"], check=False, env=env, capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, f"scripts/s3.sh up failed:\n{up.stdout}\n{up.stderr}"
        server = S3Server(read_env_file(Path(up.stdout.strip().splitlines()[-1])), "k2-test")
        with pytest.MonkeyPatch.context() as patch:  # the AWS SDK reads its settings from the environment
            for name, value in server.environment.items():
                patch.setenv(name, value)
            server.filesystem().create_dir(server.bucket)
        yield server
    finally:
        subprocess.run([script, "down"], check=False, env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real schema registry (Apicurio Registry) for the test session: the URL of its Confluent-compatible API."""
    env = os.environ | {
        "K2_RUN_DIR": str(tmp_path_factory.mktemp("registry-run")),
        "K2_REGISTRY_PORT": str(free_port()),
    }
    script = ROOT / "scripts" / "registry.sh"
    up = subprocess.run([script, "up"], check=False, env=env, capture_output=True, text=True, timeout=900)
    try:
        assert up.returncode == 0, f"scripts/registry.sh up failed:\n{up.stdout}\n{up.stderr}"
        yield up.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([script, "down"], check=False, env=env, capture_output=True, timeout=120)


@pytest.fixture
def s3_warehouse(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A warehouse of this test's own in the S3 server's bucket. The server's variables are set in the test's
    environment, so IcebergSettings() and every service process the test starts use it, as a deployment would."""
    for name, value in s3_server.environment.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:10]}/warehouse"


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Settings whose topics are this test's own (a unique prefix), already provisioned."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:10]}.")
    provision_topics(settings)
    return settings


@pytest.fixture
def iceberg_settings(tmp_path: Path) -> IcebergSettings:
    """An embedded SQLite catalog and local warehouse of this test's own."""
    return IcebergSettings(
        catalog_uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=f"file://{tmp_path / 'warehouse'}"
    )


@pytest.fixture
def market(kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings) -> Market:
    """Produces trades/quotes to Kafka and commits Iceberg snapshots as the writer would (query tests)."""
    return Market(kafka_settings, iceberg_settings)


@pytest.fixture
async def service(kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings) -> AsyncIterator[Service]:
    """A query service in-process on a free port over this test's topics and catalog."""
    async with running_service(kafka_settings, iceberg_settings) as started:
        yield started
