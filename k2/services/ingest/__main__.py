"""`python -m k2.services.ingest`: serves the ingest gRPC API until SIGTERM/SIGINT, then exits 0."""

from k2.core.config import AuthSettings, KafkaSettings
from k2.core.grpcserver import run
from k2.services.ingest.config import IngestSettings
from k2.services.ingest.server import ingest_service


def main() -> None:
    run(lambda: ingest_service(IngestSettings(), KafkaSettings(), AuthSettings()))


if __name__ == "__main__":
    main()
