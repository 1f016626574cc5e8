"""The query service as a process and with its neighbours: health while Kafka is unreachable, `python -m
k2.services.query` (metrics endpoint, SIGTERM → exit 0), and end to end with the real writer committing."""

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from datetime import timedelta

import grpc
import pytest
from conftest import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_query_harness import T0, Market, running_service, trades
from test_query_subscriptions import SYMBOLS, assert_exactly_once_in_order, receive, ts

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.records import TRADE
from k2.query.v1 import query_pb2, query_pb2_grpc
from k2.services.query.config import QuerySettings
from k2.services.query.server import QueryServer


async def health_status(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="k2.query.v1.QueryService"), timeout=30, wait_for_ready=True
    )
    return response.status


async def test_not_serving_while_kafka_is_unreachable(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    unreachable = kafka_settings.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})
    server = QueryServer(
        QuerySettings(port=0, metrics_port=0, kafka_timeout_seconds=1.0), unreachable, iceberg_settings
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = query_pb2_grpc.QueryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in stub.SubscribeTrades(query_pb2.SubscribeTradesRequest()):
                    pass
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()


async def test_serves_as_a_process_and_stops_on_sigterm(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    port, metrics_port = free_port(), free_port()
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "K2_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "K2_ICEBERG_CATALOG_URI": iceberg_settings.catalog_uri,
        "K2_ICEBERG_WAREHOUSE": iceberg_settings.warehouse,
        "K2_QUERY_PORT": str(port),
        "K2_QUERY_METRICS_PORT": str(metrics_port),
        "K2_QUERY_GRACE_SECONDS": "2",
        "K2_QUERY_HEARTBEAT_SECONDS": "0.5",
    }
    process = subprocess.Popen([sys.executable, "-m", "k2.services.query"], env=env)  # noqa: ASYNC220
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            async with asyncio.timeout(60):
                while await health_status(channel) != health_pb2.HealthCheckResponse.SERVING:
                    await asyncio.sleep(0.1)
            stub = query_pb2_grpc.QueryServiceStub(channel)
            await stub.GetLatest(query_pb2.GetLatestRequest(symbols=["BTCUSDT"]))
            subscription = stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())
            await subscription.read()  # a heartbeat
            metrics = await asyncio.to_thread(
                lambda: (
                    urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                    .read()
                    .decode()
                )
            )
            assert 'k2_query_requests_total{code="OK",rpc="GetLatest",service="query"} 1.0' in metrics
            assert 'k2_query_active_subscribers{kind="trade",service="query"} 1.0' in metrics
            process.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                while True:
                    await subscription.read()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_end_to_end_with_the_real_writer(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    writer_server = pytest.importorskip("k2.services.writer.server")
    writer_config = pytest.importorskip("k2.services.writer.config")
    writer = writer_server.WriterApp(
        writer_config.WriterSettings(
            port=0, metrics_port=0, group_id=f"writer-{uuid.uuid4().hex[:8]}", commit_interval_ms=200
        ),
        kafka_settings,
        iceberg_settings,
        AuthSettings(write_tokens=["query-test-token"]),
    )
    await writer.start()
    market = Market(kafka_settings, iceberg_settings)
    try:
        async with running_service(kafka_settings, iceberg_settings) as service:
            early = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(start=ts(T0)))
            late = None
            for batch in range(12):
                await asyncio.to_thread(
                    market.produce,
                    TRADE,
                    trades(
                        SYMBOLS, 100, start=T0 + timedelta(seconds=100 * batch), first_sequence=100 * batch
                    ),
                )
                await asyncio.sleep(0.15)  # the writer commits every 200 ms meanwhile
                if batch == 6:
                    late = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(start=ts(T0)))
            produced = [p.record for p in market.produced[TRADE]]
            assert late is not None
            for call in (early, late):
                got = await receive(call, lambda r: len(r.trades) >= len(produced))
                assert_exactly_once_in_order(got.trades, produced)
                call.cancel()
            responses = [
                r
                async for r in service.stub.QueryTrades(
                    query_pb2.QueryTradesRequest(
                        symbols=SYMBOLS, start=ts(T0), end=ts(T0 + timedelta(days=1)), limit=100_000
                    )
                )
            ]
            ids = [t.message_id for r in responses for t in r.trades]
            assert len(ids) == len(set(ids)) == len(produced)
    finally:
        market.close()
        await writer.stop()
