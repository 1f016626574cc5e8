"""Subscriptions against a real broker and Iceberg: history → Kafka replay → live hand-over under load with the
writer committing concurrently, filters, heartbeats, resume tokens, slow-subscriber isolation, graceful stop."""

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY
from test_query_harness import (
    T0,
    Market,
    Service,
    query_settings,
    quote,
    running_service,
    trade,
    trades,
    ts,
    wait_until,
)

from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.kafka import client_config
from k2.core.records import QUOTE, TRADE
from k2.marketdata.v1.marketdata_pb2 import Trade
from k2.query.v1 import query_pb2

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]


@dataclass
class Received:
    trades: list[Trade] = field(default_factory=list)
    responses: list[query_pb2.SubscribeTradesResponse] = field(default_factory=list)

    @property
    def token(self) -> str:
        return self.responses[-1].resume_token

    def ids(self) -> list[str]:
        return [t.message_id for t in self.trades]


async def receive(
    call: grpc.aio.UnaryStreamCall,
    until: Callable[[Received], bool],
    received: Received | None = None,
    timeout: float = 60.0,
) -> Received:
    received = received or Received()
    async with asyncio.timeout(timeout):
        while not until(received):
            response = await call.read()
            assert response is not grpc.aio.EOF, "stream ended"
            received.responses.append(response)
            received.trades.extend(response.trades)
    return received


def assert_exactly_once_in_order(got: list[Trade], produced: list[dict]) -> None:  # type: ignore[type-arg]
    ids = [t.message_id for t in got]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates"
    assert set(ids) == {r["message_id"] for r in produced}
    last: dict[str, int] = {}
    for t in got:  # per-symbol order: each symbol's source_sequence only increases
        assert t.source_sequence > last.get(t.symbol, -1), f"{t.symbol} out of order"
        last[t.symbol] = t.source_sequence


class Writer:
    """Background producer + committer: produces batches of trades and commits snapshots with advancing offsets
    while subscribers hand over between Iceberg, Kafka replay and live."""

    def __init__(self, market: Market, batches: int, per_batch: int, start_sequence: int):
        self.market = market
        self.batches = batches
        self.per_batch = per_batch
        self.sequence = start_sequence
        self.progress = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        for batch in range(self.batches):
            self.market.produce(
                TRADE,
                trades(
                    SYMBOLS,
                    self.per_batch,
                    start=T0 + timedelta(seconds=self.sequence),
                    first_sequence=self.sequence,
                ),
            )
            self.sequence += self.per_batch
            if batch % 3 == 1:
                self.market.commit(TRADE)
            self.progress.set()
        self.done.set()


@pytest.mark.parametrize("join_lag", [20_000, 200], ids=["join-at-once", "catch-up-first"])
async def test_history_to_live_handover_under_load_exactly_once(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings, join_lag: int
) -> None:
    async with running_service(
        kafka_settings, iceberg_settings, query_settings(join_lag_messages=join_lag)
    ) as service:
        await handover_under_load(market, service)


async def handover_under_load(market: Market, service: Service) -> None:
    market.produce(TRADE, trades(SYMBOLS, 1500))
    market.commit(TRADE)
    market.produce(TRADE, trades(SYMBOLS, 500, start=T0 + timedelta(seconds=1500), first_sequence=1500))
    writer = Writer(market, batches=24, per_batch=150, start_sequence=2000)
    background = asyncio.create_task(asyncio.to_thread(writer.run))
    try:
        early = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(start=ts(T0)))
        filtered = service.stub.SubscribeTrades(
            query_pb2.SubscribeTradesRequest(
                symbols=["ETHUSDT", "XRPUSDT"], start=ts(T0 + timedelta(seconds=700))
            )
        )
        await asyncio.to_thread(writer.progress.wait, 30)
        late = service.stub.SubscribeTrades(
            query_pb2.SubscribeTradesRequest(start=ts(T0 + timedelta(seconds=1200)))
        )
        await background
        produced = [p.record for p in market.produced[TRADE]]

        got_early = await receive(early, lambda r: len(r.trades) >= len(produced))
        assert_exactly_once_in_order(got_early.trades, produced)
        assert got_early.responses[0].replay

        want = [
            r
            for r in produced
            if r["symbol"] in ("ETHUSDT", "XRPUSDT") and r["timestamp"] >= T0 + timedelta(seconds=700)
        ]
        assert_exactly_once_in_order(
            (await receive(filtered, lambda r: len(r.trades) >= len(want))).trades, want
        )

        want = [r for r in produced if r["timestamp"] >= T0 + timedelta(seconds=1200)]
        assert_exactly_once_in_order((await receive(late, lambda r: len(r.trades) >= len(want))).trades, want)
        # nothing more arrives after the last one (no duplicate delivered late): only heartbeats, until it is live
        tail = await receive(early, lambda r: not r.responses[-1].replay if r.responses else False)
        assert not tail.trades and tail.token and tail.responses[-1].server_time.seconds
        for call in (early, filtered, late):
            call.cancel()
    finally:
        await background


async def test_live_filters_and_heartbeats(market: Market, service: Service) -> None:
    by_exchange = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(exchanges=["ASX"]))
    by_symbol = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["BHP", "ETHUSDT"]))
    quotes = service.stub.SubscribeQuotes(query_pb2.SubscribeQuotesRequest(symbols=["BHP"]))
    first = await receive(by_exchange, lambda r: len(r.responses) >= 1)  # a heartbeat while idle
    assert not first.trades and first.token and not first.responses[0].replay
    await receive(by_symbol, lambda r: len(r.responses) >= 1)
    assert (await quotes.read()).resume_token

    records = [trade("BHP", T0 + timedelta(seconds=i), i, exchange="ASX") for i in range(50)]
    records += [trade("ETHUSDT", T0 + timedelta(seconds=i), i) for i in range(50)]
    records += [trade("CBA", T0 + timedelta(seconds=i), i, exchange="ASX") for i in range(50)]
    market.produce(TRADE, records)
    market.produce(QUOTE, [quote("BHP", T0, 1, exchange="ASX"), quote("CBA", T0, 1, exchange="ASX")])

    asx = await receive(by_exchange, lambda r: len(r.trades) >= 100, first)
    assert {t.exchange for t in asx.trades} == {"ASX"} and len(asx.ids()) == len(set(asx.ids())) == 100
    symbols = await receive(by_symbol, lambda r: len(r.trades) >= 100)
    assert {t.symbol for t in symbols.trades} == {"BHP", "ETHUSDT"} and len(set(symbols.ids())) == 100
    async with asyncio.timeout(30):
        while not (response := await quotes.read()).quotes:
            pass
    assert [q.symbol for q in response.quotes] == ["BHP"]
    for call in (by_exchange, by_symbol, quotes):
        call.cancel()


async def test_resume_after_disconnect_no_gap_no_duplicate(market: Market, service: Service) -> None:
    market.produce(TRADE, trades(SYMBOLS, 600))
    market.commit(TRADE)
    market.produce(TRADE, trades(SYMBOLS, 300, start=T0 + timedelta(seconds=600), first_sequence=600))
    request = query_pb2.SubscribeTradesRequest(start=ts(T0 + timedelta(seconds=100)))

    # 1. disconnect during the Iceberg history
    call = service.stub.SubscribeTrades(request)
    part1 = await receive(call, lambda r: len(r.trades) >= 1000)
    call.cancel()
    assert part1.responses[-1].replay
    # 2. resume, then disconnect during the live phase while new trades arrive and the writer commits
    call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(resume_token=part1.token))
    market.produce(TRADE, trades(SYMBOLS, 200, start=T0 + timedelta(seconds=900), first_sequence=900))
    market.commit(TRADE)
    so_far = [p for p in market.produced[TRADE] if p.record["timestamp"] >= T0 + timedelta(seconds=100)]
    part2 = await receive(call, lambda r: len(part1.trades) + len(r.trades) >= len(so_far) - 300)
    call.cancel()
    # 3. more trades while disconnected, then resume again
    market.produce(TRADE, trades(SYMBOLS, 100, start=T0 + timedelta(seconds=1100), first_sequence=1100))
    wanted = [
        p.record for p in market.produced[TRADE] if p.record["timestamp"] >= T0 + timedelta(seconds=100)
    ]
    call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(resume_token=part2.token))
    part3 = await receive(
        call, lambda r: len(part1.trades) + len(part2.trades) + len(r.trades) >= len(wanted)
    )
    call.cancel()
    assert_exactly_once_in_order(part1.trades + part2.trades + part3.trades, wanted)


async def test_resume_from_a_heartbeat_token(market: Market, service: Service) -> None:
    call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["BTCUSDT"]))
    heartbeat = await receive(call, lambda r: len(r.responses) >= 1)
    market.produce(TRADE, trades(["ETHUSDT"], 100))  # other symbols move the position on
    second = await receive(call, lambda r: len(r.responses) >= 1)
    assert second.token != heartbeat.token
    call.cancel()
    missed = trades(["BTCUSDT"], 20)
    market.produce(TRADE, missed)
    call = service.stub.SubscribeTrades(
        query_pb2.SubscribeTradesRequest(symbols=["BTCUSDT"], resume_token=second.token)
    )
    got = await receive(call, lambda r: len(r.trades) >= 20)
    call.cancel()
    assert_exactly_once_in_order(got.trades, missed)


async def test_resume_after_retention_falls_back_to_history(
    market: Market, service: Service, kafka_settings: KafkaSettings
) -> None:
    first = trades(["BTCUSDT"], 50)
    market.produce(TRADE, first)
    call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(start=ts(T0)))
    got = await receive(call, lambda r: len(r.trades) >= 50)
    call.cancel()
    later = trades(["BTCUSDT"], 30, start=T0 + timedelta(seconds=50), first_sequence=50)
    market.produce(TRADE, later)
    market.commit(TRADE)  # all in Iceberg; then Kafka drops it (as retention would)
    admin = AdminClient(client_config(kafka_settings))
    ends = {p.partition: p.offset + 1 for p in market.produced[TRADE]}
    deleted = admin.delete_records([TopicPartition(market.topic(TRADE), p, o) for p, o in ends.items()])
    for future in deleted.values():
        future.result()

    call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(resume_token=got.token))
    resumed = await receive(call, lambda r: len(r.trades) >= 31)
    call.cancel()
    # from the newest delivered timestamp on: the last trade seen again (same timestamp), then everything after
    assert resumed.ids() == [first[-1]["message_id"]] + [r["message_id"] for r in later]


async def test_slow_subscriber_is_ended_without_slowing_others(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    settings = query_settings(subscriber_buffer_bytes=256 * 1024)
    async with running_service(kafka_settings, iceberg_settings, settings) as service:
        slow = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())
        fast = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())
        await receive(slow, lambda r: len(r.responses) >= 1)  # started; from now on it never reads
        await receive(fast, lambda r: len(r.responses) >= 1)
        records = trades(SYMBOLS, 12_000, step=timedelta(milliseconds=1))

        async def produce_in_steps() -> (
            None
        ):  # at a pace the fast reader, on this event loop too, keeps up with
            for start in range(0, len(records), 1000):
                await asyncio.to_thread(market.produce, TRADE, records[start : start + 1000])
                await asyncio.sleep(0.05)

        producing = asyncio.create_task(produce_in_steps())
        got = await receive(fast, lambda r: len(r.trades) >= len(records), timeout=120)
        await producing
        assert_exactly_once_in_order(got.trades, records)

        slow_got = Received()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await receive(slow, lambda r: False, slow_got)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too slow" in raised.value.details() and "resume_token" in raised.value.details()
        assert len(slow_got.trades) < len(records)
        fast.cancel()


def active_subscribers() -> float:
    return (
        REGISTRY.get_sample_value("k2_query_active_subscribers", {"service": "query", "kind": "trade"}) or 0.0
    )


async def test_cancelling_frees_subscribers_at_once(market: Market, service: Service) -> None:
    before = active_subscribers()
    calls = [service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest()) for _ in range(30)]
    for call in calls:
        await receive(call, lambda r: len(r.responses) >= 1)
    assert active_subscribers() == before + 30
    producing = asyncio.create_task(asyncio.to_thread(market.produce, TRADE, trades(SYMBOLS, 3000)))
    for call in calls:  # cancelled while trades flow to them
        await receive(call, lambda r: len(r.trades) >= 1)
        call.cancel()
    await producing
    await wait_until(lambda: active_subscribers() == before, timeout=5)
    check = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())
    await receive(check, lambda r: len(r.responses) >= 1)  # the service carries on
    check.cancel()


async def test_graceful_stop_ends_streams_with_a_resume_token(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    async with running_service(kafka_settings, iceberg_settings) as service:
        call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())
        await receive(call, lambda r: len(r.responses) >= 1)
        market.produce(TRADE, trades(["BTCUSDT"], 10))
        got = await receive(call, lambda r: len(r.trades) >= 10)
        stopping = asyncio.create_task(service.server.stop())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await receive(call, lambda r: False, got, timeout=5)
        await stopping
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "resume_token" in raised.value.details()
    assert not got.responses[-1].trades and got.token  # the last heartbeat names the position


async def test_a_client_that_stops_reading_its_replay_holds_no_replay_slot(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    records = trades(SYMBOLS, 25_000, step=timedelta(milliseconds=1))  # ~15 MB of responses to replay
    market.produce(TRADE, records)
    settings = query_settings(max_concurrent_replays=1, join_lag_messages=100)
    request = query_pb2.SubscribeTradesRequest(start=ts(T0))
    async with running_service(kafka_settings, iceberg_settings, settings) as service:
        stalled = service.stub.SubscribeTrades(request)
        await receive(stalled, lambda r: len(r.trades) >= 1)  # replaying; from now on it never reads
        await asyncio.sleep(2)  # its responses fill the transport's windows: the stream waits on the client
        other = service.stub.SubscribeTrades(request)
        got = await receive(other, lambda r: len(r.trades) >= len(records), timeout=120)
        assert_exactly_once_in_order(got.trades, records)
        stalled.cancel()
        other.cancel()
