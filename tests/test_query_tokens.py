"""Crafted tokens and failing subscribers, against the real query service and broker: a token field beyond its
range, or naming a partition the topic does not have, is INVALID_ARGUMENT at once (never UNKNOWN, never a wait for
the deadline), and so is any text or any bytes given as a token (property-tested); an error while serving one
subscriber ends that subscriber alone, with INTERNAL, counted, while the others go on receiving every trade."""

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import SecretStr
from test_query_harness import (
    T0,
    TOKEN_KEY,
    Market,
    Service,
    query_settings,
    running_service,
    start_service,
    stop_service,
    ts,
)
from test_query_harness import trades as make_trades
from test_query_subscriptions import SYMBOLS, Received, assert_exactly_once_in_order, receive

from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.records import TRADE, FieldError
from k2.core.timestamps import MICROS_RANGE, micros
from k2.query.v1 import query_pb2
from k2.services.query.fanout import Subscriber
from k2.services.query.selection import Selection
from k2.services.query.tokens import PARTITIONS, PageToken, StreamPosition, TokenKeys, query_digest

HUGE = 2**70
QUERY_METHOD = "/k2.query.v1.QueryService/QueryTrades"
SUBSCRIBE_METHOD = "/k2.query.v1.QueryService/SubscribeTrades"
RESUME_TOKEN_TAG = b"\x22"  # field 4, length-delimited
PAGE_TOKEN_TAG = b"\x32"  # field 6, length-delimited


KEYS = TokenKeys([SecretStr(TOKEN_KEY)])


def crafted(payload: dict[str, Any], keys: TokenKeys = KEYS) -> str:
    """A token as the service writes them (base64url of JSON, signed with the tests' key), with whatever it is
    given inside."""
    data = json.dumps(payload).encode()
    return f"{b64(data)}.{b64(keys.sign(data))}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


RESUME = {"v": 1, "k": "t", "o": [[0, 0]], "m": 0}
# The query the page tokens below are for: BTCUSDT in the hour from T0.
QUERY = query_pb2.QueryTradesRequest(symbols=["BTCUSDT"], start=ts(T0), end=ts(T0 + timedelta(hours=1)))
DIGEST = query_digest(
    TRADE, Selection(frozenset(["BTCUSDT"]), None, micros(T0), micros(T0 + timedelta(hours=1)))
)
RESUME_CHANGES = [
    {"o": [[0, HUGE]]},
    {"o": [[HUGE, 0]]},
    {"o": [[2**31, 0]]},
    {"o": [[-1, 0]]},
    {"o": [[0, -1]]},
    {"o": [[0, 2**63]]},
    {"o": [[0, 1.5]]},
    {"o": [[0, True]]},
    {"s": HUGE},
    {"s": -HUGE},
    {"s": MICROS_RANGE[1] + 1},
    {"m": HUGE},
    {"m": "0"},
    {"sn": HUGE, "a": None},
    {"sn": 1, "a": [HUGE, "X", "Y", None, "id"]},
    {"sn": 1, "a": [0, "X", "Y", -HUGE, "id"]},
    {"sn": 1, "a": [0, "X", "Y"]},
]


async def test_resume_token_fields_beyond_their_range_are_refused_at_once(service: Service) -> None:
    """2^70 in any field made the fan-out raise on every poll while the subscription was open."""
    for change in RESUME_CHANGES:
        call = service.stub.SubscribeTrades(
            query_pb2.SubscribeTradesRequest(resume_token=crafted(RESUME | change)), timeout=30
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, change
        assert (refused.value.details() or "").startswith("resume_token: malformed token: "), change
    healthy = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(resume_token=crafted(RESUME)))
    assert (await healthy.read()).resume_token  # the same token within range starts a stream
    healthy.cancel()


async def test_page_token_fields_beyond_their_range_or_the_topic_are_refused_at_once(
    market: Market, service: Service
) -> None:
    """Out-of-range fields ended in UNKNOWN with a logged stack trace, a partition the topic does not have hung
    until the deadline."""
    market.produce(TRADE, make_trades(["BTCUSDT"], 5))
    page = {
        "v": 1,
        "q": DIGEST,
        "s": None,
        "ts": [[0, 0]],
        "te": [[0, 1]],
        "a": [micros(T0), "BINANCE", "BTCUSDT", 0, "id"],
    }
    changes = [
        {"ts": [[0, HUGE]]},
        {"te": [[HUGE, 1]]},
        {"te": [[0, -1]]},
        {"s": HUGE},
        {"a": [HUGE, "BINANCE", "BTCUSDT", 0, "id"]},
        {"a": [0, "BINANCE", "BTCUSDT", HUGE, "id"]},
        {"ts": [[PARTITIONS[1], 0]], "te": [[PARTITIONS[1], 5]]},
        {"ts": [[999, 0]], "te": [[999, 5]]},
        {"ts": [[0, 0]], "te": [[0, 10**9]]},
    ]  # signed, but more of the tail than one query may read
    for change in changes:
        request = query_pb2.QueryTradesRequest(page_token=crafted(page | change))
        request.MergeFrom(QUERY)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in service.stub.QueryTrades(request, timeout=30):
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, change
        assert (refused.value.details() or "").startswith("page_token: "), change


# ---- signed tokens: forged, tampered, rotated ------------------------------------------------------------------


async def test_forged_tokens_are_refused_and_rotated_keys_verify(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    """Unsigned, a page token naming a whole-topic range made one call read 4.8M messages: now a token the service
    did not sign (no signature, another key's, an old key dropped from the list) is refused before any read, and a
    key kept in the list after a rotation still verifies what it signed."""
    market.produce(TRADE, make_trades(["BTCUSDT"], 30))
    market.commit(TRADE)
    old, new = "the old key, sixteen bytes+", "the new key, sixteen bytes+"
    query = query_pb2.QueryTradesRequest(limit=10)
    query.MergeFrom(QUERY)

    async def page(service: Service, token: str = "") -> tuple[int, str]:
        request = query_pb2.QueryTradesRequest(page_token=token)
        request.MergeFrom(query)
        rows, next_token = 0, ""
        async for response in service.stub.QueryTrades(request, timeout=30):
            rows += len(response.trades)
            next_token = response.next_page_token or next_token
        return rows, next_token

    async def refused(service: Service, token: str) -> str:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await page(service, token)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return error.value.details() or ""

    async with running_service(kafka_settings, iceberg_settings, query_settings(token_keys=[old])) as service:
        rows, token = await page(service)
        assert rows == 10 and token
        body = token.partition(".")[0]
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        whole_topic = payload | {"ts": [[0, 0]], "te": [[0, 2**62]]}
        for forged in (
            body,
            crafted(whole_topic),
            crafted(payload, TokenKeys([SecretStr(new)])),
            crafted(payload, TokenKeys([])),
        ):
            assert "signature" in await refused(service, forged) or forged == body
    async with running_service(
        kafka_settings, iceberg_settings, query_settings(token_keys=[new, old])
    ) as service:  # rotating: new signs, old verifies
        rows, second = await page(service, token)
        assert rows == 10 and second
        assert (await page(service, second))[0] == 10
    async with running_service(kafka_settings, iceberg_settings, query_settings(token_keys=[new])) as service:
        assert "signature" in await refused(service, token)  # the old key dropped: its tokens end
        assert (await page(service, second))[0] == 10


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_token_with_any_bit_flipped_is_refused(data: st.DataObject) -> None:
    position = StreamPosition(
        TRADE, {0: 10, 3: 7}, since=5, snapshot_id=9, after=(1, "X", "Y", 4, "m"), mark=11
    )
    page = PageToken(DIGEST, 42, {0: 5}, {0: 9}, (micros(T0), "BINANCE", "BTCUSDT", None, "id"))
    for token, decode, field in (
        (position.encode(KEYS), lambda t: StreamPosition.decode(t, TRADE, KEYS), "resume_token"),
        (page.encode(KEYS), lambda t: PageToken.decode(t, DIGEST, KEYS), "page_token"),
    ):
        raw = bytearray(token.encode())
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= 1 << data.draw(st.integers(0, 7))
        with pytest.raises((FieldError, UnicodeDecodeError)) as error:
            decode(raw.decode())
        if isinstance(error.value, FieldError):
            assert error.value.field == field


# ---- any token: the decoders, then the service -------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**80), 2**80),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, *MICROS_RANGE]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
token_payloads = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(1), json_values),
        "k": st.one_of(st.just("t"), json_values),
        "q": st.one_of(st.just(DIGEST), json_values),
    },
    optional={key: json_values for key in ("o", "m", "s", "sn", "a", "ts", "te")},
)
tokens = st.one_of(
    st.text(max_size=300),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="),
    token_payloads.map(crafted),
)


def assert_decodes_or_refuses(decode: Any, field: str) -> Any:
    try:
        return decode()
    except FieldError as error:
        assert error.field == field and error.reason
        return None


@settings(max_examples=600, deadline=None)
@given(tokens)
def test_any_token_decodes_to_a_position_within_range_or_is_refused_with_a_reason(token: str) -> None:
    position = assert_decodes_or_refuses(lambda: StreamPosition.decode(token, TRADE, KEYS), "resume_token")
    if position is not None:
        assert StreamPosition.decode(position.encode(KEYS), TRADE, KEYS) == position
        assert all(
            PARTITIONS[0] <= p <= PARTITIONS[1] and 0 <= o < 2**63 for p, o in position.offsets.items()
        )
        assert all(MICROS_RANGE[0] <= t <= MICROS_RANGE[1] for t in (position.mark, position.since or 0))
    page = assert_decodes_or_refuses(lambda: PageToken.decode(token, DIGEST, KEYS), "page_token")
    if page is not None:
        assert all(0 <= o < 2**63 for o in [*page.tail_start.values(), *page.tail_end.values()])


@pytest.fixture
def service_port(kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings) -> Iterator[int]:
    """The query service on an event loop of its own thread, for a synchronous property test to call."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="query-service", daemon=True)
    thread.start()
    service = asyncio.run_coroutine_threadsafe(
        start_service(kafka_settings, iceberg_settings, query_settings()), loop
    ).result(120)
    try:
        yield service.server.port
    finally:
        asyncio.run_coroutine_threadsafe(stop_service(service), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def delimited(tag: bytes, value: bytes) -> bytes:
    length, size = b"", len(value)
    while size > 0x7F:
        length, size = length + bytes([size & 0x7F | 0x80]), size >> 7
    return tag + length + bytes([size]) + value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.one_of(st.binary(min_size=1, max_size=300), tokens.map(str.encode)))
def test_any_token_bytes_are_invalid_argument_with_a_reason(service_port: int, token: bytes) -> None:
    """Through the service: any bytes as resume_token or page_token (invalid UTF-8 included, which no protobuf
    string may hold) end the call with INVALID_ARGUMENT and a reason, well within the deadline."""
    assume(token)
    with grpc.insecure_channel(f"127.0.0.1:{service_port}") as channel:
        for method, request in (
            (SUBSCRIBE_METHOD, delimited(RESUME_TOKEN_TAG, token)),
            (QUERY_METHOD, QUERY.SerializeToString() + delimited(PAGE_TOKEN_TAG, token)),
        ):
            call = channel.unary_stream(method)(request, timeout=30)
            try:
                next(iter(call))
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
                assert error.details().startswith(
                    ("resume_token: ", "page_token: ", "request: not a valid protobuf")
                )
            else:  # a resume token this test happened to make valid starts a stream
                assert method == SUBSCRIBE_METHOD and token_within_range(token)
                call.cancel()


def token_within_range(token: bytes) -> bool:
    try:
        StreamPosition.decode(token.decode(), TRADE, KEYS)
    except (UnicodeDecodeError, FieldError):
        return False
    return True


# ---- one subscriber's failure is its own ------------------------------------------------------------------------


class FailingSubscriber(Subscriber):
    """A subscriber whose delivery fails: what any error while serving it (a bug, a value no check foresaw) does."""

    __slots__ = ()

    def offer(self, payload: bytes, records: int, newest: int) -> bool:
        raise RuntimeError("injected: delivering to this subscriber fails")


def live_subscribers(service: Service) -> set[Subscriber]:
    groups = service.server.fanout._groups[TRADE].values()  # where the fault is injected, from outside
    return {subscriber for group in groups for subscriber in group.subscribers}


def failed_subscribers() -> float:
    return (
        REGISTRY.get_sample_value("k2_query_failed_subscribers_total", {"service": "query", "kind": "trade"})
        or 0.0
    )


async def test_a_subscriber_failing_in_delivery_ends_alone(market: Market, service: Service) -> None:
    before = failed_subscribers()
    healthy = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())
    await receive(healthy, lambda r: len(r.responses) >= 1)  # live, and registered with the fan-out
    known = live_subscribers(service)
    failing = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())  # the same filter: one group
    await receive(failing, lambda r: len(r.responses) >= 1)
    [injected] = live_subscribers(service) - known
    injected.__class__ = FailingSubscriber
    filtered = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest(symbols=["ETHUSDT"]))
    await receive(filtered, lambda r: len(r.responses) >= 1)

    records = make_trades(SYMBOLS, 500)
    await asyncio.to_thread(market.produce, TRADE, records)

    got = await receive(healthy, lambda r: len(r.trades) >= len(records))
    assert_exactly_once_in_order(got.trades, records)
    ethereum = [r for r in records if r["symbol"] == "ETHUSDT"]
    assert_exactly_once_in_order(
        (await receive(filtered, lambda r: len(r.trades) >= len(ethereum))).trades, ethereum
    )
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await receive(failing, lambda r: False, Received())
    assert ended.value.code() == grpc.StatusCode.INTERNAL
    assert "resume_token" in (ended.value.details() or "") and "injected" not in (ended.value.details() or "")
    assert failed_subscribers() == before + 1
    more = make_trades(SYMBOLS, 50, start=T0 + timedelta(seconds=500), first_sequence=500)
    await asyncio.to_thread(market.produce, TRADE, more)  # the fan-out carries on
    got = await receive(healthy, lambda r: len(r.trades) >= len(records) + len(more), got)
    assert_exactly_once_in_order(got.trades, records + more)
    healthy.cancel()
    filtered.cancel()


async def test_live_responses_stay_within_their_byte_bound(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    """Polls of many records (the fan-out gathers for 300 ms here) are sent in several responses of at most
    subscription_response_bytes of records (~25 trades here), live and replayed, each naming the position after
    it: resuming from any of them misses and repeats nothing."""
    bound = 4096
    settings = query_settings(subscription_response_bytes=bound, flush_ms=300)
    async with running_service(kafka_settings, iceberg_settings, settings) as service:
        call = service.stub.SubscribeTrades(query_pb2.SubscribeTradesRequest())
        await receive(call, lambda r: len(r.responses) >= 1)
        records = make_trades(SYMBOLS, 400)
        await asyncio.to_thread(market.produce, TRADE, records)
        got = await receive(call, lambda r: len(r.trades) >= len(records))
        call.cancel()
        assert_exactly_once_in_order(got.trades, records)
        with_trades = [r for r in got.responses if r.trades]
        assert all(framed_size(r) <= bound for r in with_trades)
        assert len(with_trades) >= sum(framed_size(r) for r in with_trades) // bound

        middle = with_trades[len(with_trades) // 2]
        seen = [t.message_id for r in with_trades[: with_trades.index(middle) + 1] for t in r.trades]
        resumed = service.stub.SubscribeTrades(
            query_pb2.SubscribeTradesRequest(resume_token=middle.resume_token)
        )
        rest = await receive(resumed, lambda r: len(r.trades) >= len(records) - len(seen))
        resumed.cancel()
        assert_exactly_once_in_order(rest.trades, [r for r in records if r["message_id"] not in set(seen)])
        assert all(framed_size(r) <= bound for r in rest.responses)


def framed_size(response: query_pb2.SubscribeTradesResponse) -> int:
    """The bytes of a response's records: each trade behind its field tag and length."""
    return sum(1 + (1 if t.ByteSize() < 128 else 2) + t.ByteSize() for t in response.trades)
