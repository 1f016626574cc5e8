"""No handler lets an unexpected exception reach the client as UNKNOWN: on every kind of RPC K2 serves, the call
ends INTERNAL with a generic message (the exception, its text and its stack stay in the server's log), while what a
handler answers on purpose passes unchanged. Then a real service under a fault: a query service whose Iceberg
catalog is not a database."""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_query_harness import T0, query_settings, running_service, ts

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings, ServerSettings
from k2.core.grpcserver import INTERNAL_ERROR, GrpcServer
from k2.ingest.v1 import ingest_pb2
from k2.query.v1 import query_pb2

SECRET = "/secret/server/path"  # what the failing handlers' exceptions say: it must not reach the client
INGEST = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
TOKEN = "unexpected-errors-test"


async def failing_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"abort":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise FileNotFoundError(2, "No such file or directory", SECRET)


async def failing_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    raise RuntimeError(f"broken at {SECRET}")


def add_failing_service(_: object, server: grpc.aio.Server) -> None:
    """Failing handlers in the place of the ingest service's, one of each kind of RPC K2 serves (auth reads the
    scope each method declares in its proto)."""
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                INGEST,
                {
                    "GetFeedStatus": grpc.unary_unary_rpc_method_handler(failing_unary),
                    "LoadFiles": grpc.unary_stream_rpc_method_handler(failing_stream),
                    "PublishTrades": grpc.stream_stream_rpc_method_handler(failing_stream),
                },
            ),
        )
    )


async def test_every_kind_of_rpc_ends_internal_with_a_generic_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = GrpcServer("test", ServerSettings(port=0, metrics_port=0), AuthSettings(write_tokens=[TOKEN]))
    server.add(add_failing_service, None, INGEST)
    port = await server.start()
    write = [("authorization", f"Bearer {TOKEN}")]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: channel.unary_unary(f"/{INGEST}/GetFeedStatus")(b"x", timeout=10),
                lambda: collect(
                    channel.unary_stream(f"/{INGEST}/LoadFiles")(b"x", metadata=write, timeout=10)
                ),
                lambda: collect(
                    channel.stream_stream(f"/{INGEST}/PublishTrades")(
                        iter([b"a"]), metadata=write, timeout=10
                    )
                ),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call()
                assert (failed.value.code(), failed.value.details()) == (
                    grpc.StatusCode.INTERNAL,
                    INTERNAL_ERROR,
                )
            with pytest.raises(grpc.aio.AioRpcError) as aborted:  # an answer on purpose is the handler's own
                await channel.unary_unary(f"/{INGEST}/GetFeedStatus")(b"abort", timeout=10)
            assert (aborted.value.code(), aborted.value.details()) == (
                grpc.StatusCode.NOT_FOUND,
                "no such thing",
            )
    finally:
        await server.stop()
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "k2.core.grpcserver"]
    assert len(logged) == 3 and all(r.exc_info and SECRET in str(r.exc_info[1]) for r in logged)


async def collect(call: Any) -> list[Any]:
    return [response async for response in call]


async def test_query_with_a_broken_catalog_answers_internal(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.db"
    catalog.write_bytes(b"not an SQLite database")
    iceberg = IcebergSettings(
        catalog_uri=f"sqlite:///{catalog}", warehouse=f"file://{tmp_path / 'warehouse'}"
    )
    async with running_service(kafka_settings, iceberg, query_settings()) as service:
        requests: list[Callable[[], Awaitable[Any]]] = [
            lambda: collect(
                service.stub.QueryTrades(
                    query_pb2.QueryTradesRequest(
                        symbols=["BTCUSDT"], start=ts(T0), end=ts(T0.replace(hour=1))
                    ),
                    timeout=30,
                )
            ),
            lambda: service.stub.GetLatest(query_pb2.GetLatestRequest(symbols=["BTCUSDT"]), timeout=30),
            lambda: service.stub.GetBars(
                query_pb2.GetBarsRequest(
                    symbol="BTCUSDT",
                    interval=query_pb2.BAR_INTERVAL_1M,
                    start=ts(T0),
                    end=ts(T0.replace(hour=1)),
                ),
                timeout=30,
            ),
        ]
        for request in requests:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await request()
            assert failed.value.code() == grpc.StatusCode.INTERNAL  # was UNKNOWN, with the database's error
            assert failed.value.details() == INTERNAL_ERROR
