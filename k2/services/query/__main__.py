"""`python -m k2.services.query`: serve the query service until SIGTERM/SIGINT, then stop gracefully (exit 0)."""

import asyncio
import gc

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.grpcserver import run_until_signalled
from k2.core.telemetry import setup_logging
from k2.services.query.config import QuerySettings
from k2.services.query.server import QueryServer


async def serve() -> None:
    # the gRPC server belongs to the event loop it is created in
    server = QueryServer(QuerySettings(), KafkaSettings(), IcebergSettings(), AuthSettings())
    # What start-up created (modules, schemas, clients) lives as long as the process: frozen, the collector skips
    # it, so collections on the live path stay short.
    gc.collect()
    gc.freeze()
    await run_until_signalled(server)


def main() -> None:
    setup_logging()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
