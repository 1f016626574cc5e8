"""Configuration from environment variables, prefix K2_ (documented in docs/configuration.md).

Shared settings live here; each service's settings class adds its own under K2_<SERVICE>_ (K2_INGEST_PORT, …).
Telemetry uses the standard OTEL_* variables, and KAFKA_BOOTSTRAP_SERVERS names an existing cluster.
"""

import ipaddress
import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# The K2 checkout this code runs from (make up, the tests), or the working directory where K2 runs installed.
ROOT = _PACKAGE_PARENT if (_PACKAGE_PARENT / "pyproject.toml").is_file() else Path.cwd()
# Run state: the embedded catalog and warehouse, logs, the token `make up` writes for the CLI.
RUN_DIR = Path(os.environ.get("K2_RUN_DIR") or ROOT / ".run")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KafkaSettings(BaseSettings):
    # populate_by_name: KafkaSettings(bootstrap_servers=...) works despite the env alias.
    model_config = SettingsConfigDict(env_prefix="K2_KAFKA_", extra="ignore", populate_by_name=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "K2_KAFKA_BOOTSTRAP_SERVERS"),
    )
    # librdkafka security settings for a production cluster, e.g. SASL_SSL.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_ca_location: str = ""
    topic_prefix: str = ""
    # Topics created by provisioning: replicas per partition (-1: the brokers' default.replication.factor) and
    # the replicas an acks=all write needs in sync (0: the brokers' min.insync.replicas).
    replication_factor: int = -1
    min_insync_replicas: int = 0
    # Bytes of produced-but-unacknowledged messages per producer before producers apply backpressure.
    producer_buffer_bytes: int = 64 * 1024 * 1024
    compression: str = "zstd"
    # Confluent-compatible API of a schema registry: set, messages are written in its framing (k2.core.framing).
    schema_registry_url: str = ""


class IcebergSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="K2_ICEBERG_", extra="ignore")

    catalog_name: str = "k2"
    # SQLAlchemy URI of the SQL catalog: SQLite embedded by default, PostgreSQL in production.
    catalog_uri: str = f"sqlite:///{RUN_DIR / 'iceberg' / 'catalog.db'}"
    warehouse: str = f"file://{RUN_DIR / 'iceberg' / 'warehouse'}"
    namespace: str = "market_data"
    s3_endpoint: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"


class ServerSettings(BaseSettings):
    """gRPC serving settings shared by every service; each service sets its env prefix and default ports."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # With a client CA, clients must present a certificate it signed (mTLS).
    tls_client_ca_file: Path | None = None
    # Plaintext gRPC is served on loopback only, unless this is set (e.g. inside a private container network).
    allow_plaintext: bool = False
    grace_seconds: float = 10.0
    max_message_bytes: int = 16 * 1024 * 1024
    # Limits answered with RESOURCE_EXHAUSTED (0: no limit). A client is its peer IP address.
    max_requests_per_second_per_client: float = 1000.0
    rate_burst_seconds: float = 2.0
    max_streams_per_client: int = 200
    max_streams: int = 5000


class AuthSettings(BaseSettings):
    """Bearer tokens. Each scope accepts the tokens listed for it; a write token also reads."""

    model_config = SettingsConfigDict(env_prefix="K2_AUTH_", extra="ignore")

    write_tokens: list[SecretStr] = []
    read_tokens: list[SecretStr] = []
    # A file with one token per line, granted write (and read) scope: how `make up` hands the CLI its token.
    token_file: Path | None = None
    # Without any read token, reads are open (the embedded default); writes always need a token.
    require_read_token: bool = False
