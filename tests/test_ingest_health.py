"""Ingest's health follows its Kafka dependency: NOT_SERVING while Kafka is unreachable, SERVING with it."""

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k2.core.config import AuthSettings, KafkaSettings
from k2.services.ingest.config import IngestSettings
from k2.services.ingest.server import IngestApp

SERVICE = "k2.ingest.v1.IngestService"


async def health_becomes(port: int, expected: int, timeout: float = 30.0) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        async with asyncio.timeout(timeout):
            while (await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))).status != expected:
                await asyncio.sleep(0.1)


async def test_not_serving_while_kafka_is_unreachable() -> None:
    unreachable = KafkaSettings(bootstrap_servers="127.0.0.1:9")
    app = IngestApp(
        IngestSettings(port=0, metrics_port=0, provision_topics=False, grace_seconds=1),
        unreachable,
        AuthSettings(),
    )
    port = await app.start()
    try:
        await health_becomes(port, health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        await app.stop()


async def test_serving_with_the_real_broker(kafka_settings: KafkaSettings) -> None:
    app = IngestApp(IngestSettings(port=0, metrics_port=0, grace_seconds=1), kafka_settings, AuthSettings())
    port = await app.start()
    try:
        await health_becomes(port, health_pb2.HealthCheckResponse.SERVING)
    finally:
        await app.stop()
