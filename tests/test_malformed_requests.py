"""A request that is not a valid protobuf of its method's type is INVALID_ARGUMENT with the reason, on every kind
of RPC (unary, server streaming, bidirectional), on the real services."""

import grpc
import pytest
from test_ingest_support import WRITE, running_ingest
from test_limits import start_query

from k2.core.config import IcebergSettings, KafkaSettings
from k2.ingest.v1 import ingest_pb2
from k2.marketdata.v1 import marketdata_pb2
from k2.query.v1 import query_pb2

GARBAGE = b"\xff\xff\xff"  # field 31 with wire type 7: no protobuf parser accepts it


async def test_query_unary_and_server_streaming(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    server = await start_query(kafka_settings, iceberg_settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            get_latest = channel.unary_unary("/k2.query.v1.QueryService/GetLatest")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await get_latest(GARBAGE, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in (refused.value.details() or "")

            subscription = channel.unary_stream("/k2.query.v1.QueryService/SubscribeTrades")(
                GARBAGE, timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await subscription.read()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            valid = query_pb2.GetLatestRequest(symbols=["BTCUSDT"]).SerializeToString()
            assert query_pb2.GetLatestResponse.FromString(await get_latest(valid, timeout=10)) is not None
    finally:
        await server.stop()


async def test_ingest_bidirectional_stream(kafka_settings: KafkaSettings) -> None:
    valid = ingest_pb2.PublishTradesRequest(
        batch_id="malformed-test-1",
        trades=[
            marketdata_pb2.Trade(
                trade_id="1",
                symbol="BHP",
                exchange="ASX",
                asset_class=marketdata_pb2.ASSET_CLASS_EQUITIES,
                price="45.10",
                quantity="100",
                currency="AUD",
                side=marketdata_pb2.SIDE_BUY,
                timestamp={"seconds": 1_700_000_000},
            )
        ],
    ).SerializeToString()
    async with (
        running_ingest(kafka_settings) as ingest,
        grpc.aio.insecure_channel(f"127.0.0.1:{ingest.app.port}") as channel,
    ):
        call = channel.stream_stream("/k2.ingest.v1.IngestService/PublishTrades")(
            iter([valid, GARBAGE]), metadata=WRITE, timeout=30
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ack in call:
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in (refused.value.details() or "")
