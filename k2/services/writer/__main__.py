"""`python -m k2.services.writer`: settings from the environment (K2_WRITER_*, K2_KAFKA_*, K2_ICEBERG_*,
K2_AUTH_*), serve until SIGTERM, commit what is buffered, exit 0."""

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.grpcserver import run

from .config import WriterSettings
from .server import WriterApp


def main() -> None:
    run(lambda: WriterApp(WriterSettings(), KafkaSettings(), IcebergSettings(), AuthSettings()))  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
