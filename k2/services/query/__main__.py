"""`python -m k2.services.query`: serve the query service until SIGTERM/SIGINT, then stop gracefully (exit 0)."""

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.grpcserver import run
from k2.services.query.config import QuerySettings
from k2.services.query.server import QueryServer


def main() -> None:
    run(lambda: QueryServer(QuerySettings(), KafkaSettings(), IcebergSettings(), AuthSettings()))


if __name__ == "__main__":
    main()
