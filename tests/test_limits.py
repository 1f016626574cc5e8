"""Per-client request rates and stream caps, enforced on a real K2 service (query) with RESOURCE_EXHAUSTED and
a reason, on every call: health and reflection need no token but are limited like the rest."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.limits import MAX_TRACKED_CLIENTS, TokenBuckets
from k2.query.v1 import query_pb2, query_pb2_grpc
from k2.services.query.config import QuerySettings
from k2.services.query.server import QueryServer


async def start_query(kafka: KafkaSettings, iceberg: IcebergSettings, **limits: float) -> QueryServer:
    server = QueryServer(QuerySettings(port=0, metrics_port=0, **limits), kafka, iceberg, AuthSettings())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        async with asyncio.timeout(30):  # its Kafka fan-out consumer starts in the background
            while (
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            ).status != health_pb2.HealthCheckResponse.SERVING:
                await asyncio.sleep(0.1)
    return server


async def test_streams_per_client_are_capped_and_freed_on_cancel(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    server = await start_query(kafka_settings, iceberg_settings, max_streams_per_client=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            open_streams = [
                stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["BTCUSDT"])) for _ in range(2)
            ]
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


async def test_request_rate_per_client_is_limited(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    server = await start_query(
        kafka_settings, iceberg_settings, max_requests_per_second_per_client=5, rate_burst_seconds=1
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            await asyncio.sleep(1.5)  # start_query's own health probes count too: the bucket is full again
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
    finally:
        await server.stop()


async def check_codes(health: health_pb2_grpc.HealthStub, calls: int) -> list[grpc.StatusCode]:
    codes = []
    for _ in range(calls):
        try:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
    return codes


async def test_health_checks_are_rate_limited_like_every_call(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    server = await start_query(
        kafka_settings, iceberg_settings, max_requests_per_second_per_client=20, rate_burst_seconds=1
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await asyncio.sleep(1.5)  # start_query's own probes are forgotten: the bucket is full again
            codes = await check_codes(health_pb2_grpc.HealthStub(channel), 60)
            assert codes[:20] == [grpc.StatusCode.OK] * 20
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 30
            await asyncio.sleep(1.5)
            assert await check_codes(health_pb2_grpc.HealthStub(channel), 5) == [grpc.StatusCode.OK] * 5
    finally:
        await server.stop()


async def test_health_watch_streams_count_against_the_stream_caps(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    server = await start_query(kafka_settings, iceberg_settings, max_streams_per_client=3)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(3)]
            for watch in watches:
                assert (
                    await asyncio.wait_for(watch.read(), 15)
                ).status == health_pb2.HealthCheckResponse.SERVING
            fourth = health.Watch(health_pb2.HealthCheckRequest())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(fourth.read(), 15)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 open streams" in (refused.value.details() or "")
            stub = query_pb2_grpc.QueryServiceStub(channel)  # the watches use this client's streams up too
            subscription = stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["BTCUSDT"]))
            with pytest.raises(grpc.aio.AioRpcError) as also_refused:
                await asyncio.wait_for(subscription.read(), 15)
            assert also_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            watches[0].cancel()
            await asyncio.sleep(0.5)
            again = health.Watch(health_pb2.HealthCheckRequest())
            assert (await asyncio.wait_for(again.read(), 15)).status == health_pb2.HealthCheckResponse.SERVING
            for watch in [again, *watches[1:]]:
                watch.cancel()
    finally:
        await server.stop()


def test_the_rate_limiter_forgets_the_least_recently_seen_clients_past_its_bound() -> None:
    buckets = TokenBuckets(rate=0.001, burst=2.0)
    assert [buckets.take("throttled") for _ in range(3)] == [True, True, False]
    for client in range(2 * MAX_TRACKED_CLIENTS):  # far more clients than it may remember: bounded memory
        buckets.take(f"10.0.{client >> 8}.{client & 255}")
        if client % 1000 == 0:
            assert not buckets.take("throttled")  # seen recently: still remembered, still throttled
    assert len(buckets.buckets) == MAX_TRACKED_CLIENTS
