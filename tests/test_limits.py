"""Per-client request rates and stream caps, enforced on a real K2 service (query) with RESOURCE_EXHAUSTED and
a reason; health stays open."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.query.v1 import query_pb2, query_pb2_grpc
from k2.services.query.config import QuerySettings
from k2.services.query.server import QueryServer


async def start_query(kafka: KafkaSettings, iceberg: IcebergSettings, **limits: float) -> QueryServer:
    server = QueryServer(QuerySettings(port=0, metrics_port=0, **limits), kafka, iceberg, AuthSettings())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        async with asyncio.timeout(30):  # its Kafka fan-out consumer starts in the background
            while (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())).status != \
                    health_pb2.HealthCheckResponse.SERVING:
                await asyncio.sleep(0.1)
    return server


async def test_streams_per_client_are_capped_and_freed_on_cancel(kafka_settings: KafkaSettings,
                                                                  iceberg_settings: IcebergSettings) -> None:
    server = await start_query(kafka_settings, iceberg_settings, max_streams_per_client=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            open_streams = [stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["BTCUSDT"]))
                            for _ in range(2)]
            for call in open_streams:
                await asyncio.wait_for(call.read(), 15)  # first heartbeat: the stream is being served
            third = stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["BTCUSDT"]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(third.read(), 15)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 open streams" in (refused.value.details() or "")

            open_streams[0].cancel()
            await asyncio.sleep(0.5)
            again = stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["BTCUSDT"]))
            assert (await asyncio.wait_for(again.read(), 15)).resume_token
            again.cancel()
            open_streams[1].cancel()
    finally:
        await server.stop()


async def test_request_rate_per_client_is_limited_but_health_is_not(kafka_settings: KafkaSettings,
                                                                    iceberg_settings: IcebergSettings) -> None:
    server = await start_query(kafka_settings, iceberg_settings, max_requests_per_second_per_client=5,
                               rate_burst_seconds=1)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            codes = []
            for _ in range(8):
                try:
                    await stub.GetLatest(query_pb2.GetLatestRequest(symbols=["BTCUSDT"]), timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "requests per second" in (error.details() or "")
            assert codes[:5] == [grpc.StatusCode.OK] * 5
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[5:]
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(10):
                assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == \
                    health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop()
