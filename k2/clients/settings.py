"""Where the services are and how to reach them: addresses, bearer token, TLS, timeouts and retry bounds.

Every setting reads an environment variable K2_<NAME> (K2_QUERY_ADDRESS, K2_TOKEN, K2_TLS_CA_FILE, ...);
constructor arguments override it. Without K2_TOKEN the token is read from the token file `make up` writes
(<repo>/.run/token, or $K2_RUN_DIR/token).
"""

import os
from pathlib import Path

import grpc
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from k2.core.config import RUN_DIR

SERVICES = ("ingest", "writer", "query")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _default_token_file() -> Path:
    return Path(os.environ.get("K2_RUN_DIR", RUN_DIR)) / "token"


class ClientSettings(BaseSettings):
    """Client settings; arguments override the environment.

    >>> ClientSettings(query_address="k2.internal:443", tls=True).query_address
    'k2.internal:443'
    """

    model_config = SettingsConfigDict(env_prefix="K2_", extra="ignore")

    ingest_address: str = "127.0.0.1:50051"
    writer_address: str = "127.0.0.1:50052"
    query_address: str = "127.0.0.1:50053"
    token: SecretStr | None = None
    token_file: Path = Field(default_factory=_default_token_file)
    # TLS with the system roots when set, or with tls_ca_file; a client certificate and key add mTLS.
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The name the server certificate is checked against, when it differs from the address's host.
    tls_server_name: str = ""
    # Deadline of unary calls (status, bars, latest, flush, health) and of each request to Jaeger.
    timeout_seconds: float = 10.0
    # Jaeger's query API (`k2 trace`), as `make up TRACING=1` runs it.
    jaeger_url: str = "http://127.0.0.1:16686"
    max_message_bytes: int = 16 * 1024 * 1024
    publish_batch_size: int = 500
    # Batches sent but not yet acknowledged on a publish stream; bounds memory and the work a retry repeats.
    publish_window: int = 8
    # A batch not acknowledged within this time is treated as a lost stream and retried.
    ack_timeout_seconds: float = 30.0
    # Retries after UNAVAILABLE (streams: also DEADLINE_EXCEEDED) in a row before an error is raised; progress
    # resets the count. Unary calls retry at most 4 times (gRPC's limit); subscriptions retry until stopped.
    retry_attempts: int = 5
    # The backoff before retry n is random in [0, min(initial * 2^(n-1), max)].
    retry_initial_backoff_seconds: float = 0.1
    retry_max_backoff_seconds: float = 5.0

    def address(self, service: str) -> str:
        return str(getattr(self, f"{service}_address"))

    def bearer_token(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value().strip() or None
        if self.token_file.is_file():
            return next(
                (line.strip() for line in self.token_file.read_text().splitlines() if line.strip()), None
            )
        return None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None for plaintext."""
        if not (self.tls or self.tls_ca_file or self.tls_cert_file):
            return None
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "mTLS needs both a client certificate (K2_TLS_CERT_FILE) and key (K2_TLS_KEY_FILE)"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca_file.read_bytes() if self.tls_ca_file else None,
            private_key=self.tls_key_file.read_bytes() if self.tls_key_file else None,
            certificate_chain=self.tls_cert_file.read_bytes() if self.tls_cert_file else None,
        )

    def channel_options(self) -> list[tuple[str, int | str]]:
        # The channel's own reconnect backoff under the same cap (gRPC's default grows to 120 s, and while it
        # waits every call fails at once, however often it is retried).
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", max(1, round(self.retry_initial_backoff_seconds * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, round(self.retry_max_backoff_seconds * 1000))),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options
