"""The replay exchange against a real websockets client: payloads, control messages, keepalive, limits,
faults, HTTP control, the CLI subprocess, recording/replay and the max send rate."""

import asyncio
import functools
import itertools
import json
import re
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.frames import Frame, Opcode

from k2.services.replay_exchange import (
    SYMBOLS,
    MarketSimulator,
    ReplayExchange,
    ReplayExchangeProcess,
    http_control,
    http_stats,
    record_stream,
)
from k2.services.replay_exchange.throughput import measure_send_rate

DECIMAL_8 = re.compile(r"^\d+\.\d{8}$")
TRADE_KEYS = ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
BOOK_KEYS = ["u", "s", "b", "B", "a", "A"]

# Test clients read everything: with websockets' default bounded queue, a client that stops calling
# recv() stops reading TCP, and its closing handshake then waits behind unread market data.
open_client = functools.partial(connect, max_queue=None)


def ordered(text: str) -> list[tuple[str, object]]:
    return json.loads(text, object_pairs_hook=list)


def loads(text: str | bytes) -> dict:
    return json.loads(text)


class PingRecordingClient(ClientConnection):
    """Client connection that remembers the payloads of the server's pings."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ping_payloads: list[bytes] = []

    def process_event(self, event) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.ping_payloads.append(bytes(event.data))
        super().process_event(event)


@pytest.fixture
async def start_exchange():
    started: list[ReplayExchange] = []

    async def start(**overrides) -> ReplayExchange:
        overrides.setdefault("port", 0)
        overrides.setdefault("rate", 2000)
        exchange = ReplayExchange(**overrides)
        await exchange.start()
        started.append(exchange)
        return exchange

    yield start
    for exchange in started:
        await exchange.stop()


async def receive(ws, count: int, timeout: float = 5.0) -> list[str]:
    async with asyncio.timeout(timeout):
        return [await ws.recv() for _ in range(count)]


async def reply_to(ws, request: dict, timeout: float = 5.0) -> dict:
    """Send a control message and return its reply, skipping market data in between."""
    await ws.send(json.dumps(request))
    async with asyncio.timeout(timeout):
        while True:
            message = loads(await ws.recv())
            if "id" in message and ("result" in message or "error" in message):
                return message


async def wait_for(condition, timeout: float = 5.0, interval: float = 0.02) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(interval)


async def wait_closed_for(exchange: ReplayExchange, reason: str, count: int = 1) -> None:
    """The server accounts for a closed connection when its handler ends, just after the client sees it."""
    await wait_for(lambda: exchange.stats()["connections"]["closed"].get(reason) == count)


def trade_ids(frames: list[str]) -> list[int]:
    return [loads(f)["t"] for f in frames]


# ---- payloads ---------------------------------------------------------------------------------------


async def test_raw_trade_payload_has_binance_shape(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws/btcusdt@trade") as ws:
        frames = await receive(ws, 60)
    for text in frames:
        assert " " not in text  # compact, as Binance sends it
        pairs = ordered(text)
        assert [key for key, _ in pairs] == TRADE_KEYS
        trade = dict(pairs)
        assert trade["e"] == "trade" and trade["s"] == "BTCUSDT" and trade["M"] is True
        assert type(trade["t"]) is int and type(trade["E"]) is int and type(trade["T"]) is int
        assert type(trade["m"]) is bool
        assert DECIMAL_8.match(trade["p"]) and DECIMAL_8.match(trade["q"])
        assert Decimal(trade["p"]) % Decimal("0.01") == 0  # on the tick
        assert Decimal(trade["q"]) % Decimal("0.00001") == 0 and Decimal(trade["q"]) > 0  # on the lot step
        assert len(str(trade["E"])) == 13 and trade["E"] >= trade["T"]
        assert abs(trade["E"] / 1000 - time.time()) < 5
    ids = trade_ids(frames)
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert ids[0] > 4_000_000_000  # realistic BTCUSDT magnitude


async def test_combined_streams_wrap_and_book_ticker_is_consistent(start_exchange):
    exchange = await start_exchange()
    streams = ["btcusdt@trade", "ethusdt@trade", "btcusdt@bookTicker", "ethusdt@bookTicker"]
    async with open_client(exchange.url + "/stream?streams=" + "/".join(streams)) as ws:
        frames = await receive(ws, 600)
    last_ids: dict[str, int] = {}
    last_update: dict[str, int] = {}
    last_price: dict[str, Decimal] = {}
    one_tick = books = 0
    for text in frames:
        pairs = ordered(text)
        assert [key for key, _ in pairs] == ["stream", "data"]
        stream, data = pairs[0][1], dict(pairs[1][1])
        assert stream in streams
        symbol = data["s"]
        assert stream.startswith(symbol.lower() + "@")
        if stream.endswith("@trade"):
            if symbol in last_ids:
                assert data["t"] == last_ids[symbol] + 1
            last_ids[symbol] = data["t"]
            last_price[symbol] = Decimal(data["p"])
        else:
            assert [key for key, _ in pairs[1][1]] == BOOK_KEYS  # no event time in bookTicker
            assert all(DECIMAL_8.match(data[key]) for key in ("b", "B", "a", "A"))
            bid, ask = Decimal(data["b"]), Decimal(data["a"])
            assert bid < ask
            if symbol in last_update:
                assert data["u"] > last_update[symbol]
            last_update[symbol] = data["u"]
            if symbol in last_price:
                assert abs(last_price[symbol] - (bid + ask) / 2) / last_price[symbol] < Decimal("0.001")
            books += 1
            one_tick += ask - bid == Decimal("0.01")
    assert set(last_ids) == {"BTCUSDT", "ETHUSDT"}
    assert one_tick / books > 0.8


async def test_agg_trades_sum_their_trades(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/stream?streams=btcusdt@trade/btcusdt@aggTrade") as ws:
        frames = [loads(f)["data"] for f in await receive(ws, 400)]
    trades = {d["t"]: d for d in frames if d["e"] == "trade"}
    checked = 0
    for agg in (d for d in frames if d["e"] == "aggTrade"):
        members = [trades.get(i) for i in range(agg["f"], agg["l"] + 1)]
        if None in members:
            continue  # started mid-aggregate
        assert sum(Decimal(t["q"]) for t in members) == Decimal(agg["q"])
        assert {(t["p"], t["T"], t["m"]) for t in members} == {(agg["p"], agg["T"], agg["m"])}
        checked += 1
    assert checked > 20


async def test_time_unit_microsecond(start_exchange):
    exchange = await start_exchange()
    for path in (
        "/ws/btcusdt@trade?timeUnit=MICROSECOND",
        "/stream?streams=btcusdt@trade&timeUnit=microsecond",
    ):
        async with open_client(exchange.url + path) as ws:
            message = loads((await receive(ws, 1))[0])
        trade = message.get("data", message)
        assert len(str(trade["E"])) == 16 and len(str(trade["T"])) == 16
        assert abs(trade["E"] / 1e6 - time.time()) < 5
    with pytest.raises(InvalidStatus) as rejected:
        async with open_client(exchange.url + "/ws/btcusdt@trade?timeUnit=NANOSECOND"):
            pass
    assert rejected.value.response.status_code == 400


def test_low_priced_symbol_prints_two_decimal_quantities_some_above_ten_digits():
    market = MarketSimulator([SYMBOLS["SHIBUSDT"]], seed=7)
    market.set_wanted_streams({"shibusdt@trade"})
    trades: list[tuple] = []
    market.emit_orders(30_000, 0, trades)  # deterministic for the seed: ~1 in 2,000 is a whale
    assert all(re.match(r"^0\.\d{8}$", t[4]) and re.match(r"^\d+\.\d{2}$", t[5]) for t in trades)
    assert any(len(t[5].split(".")[0]) > 10 for t in trades)
    sellers = sum(t[7] == "true" for t in trades) / len(trades)
    assert 0.4 < sellers < 0.6


def test_market_is_seeded_and_bursty():
    def first_trades(seed: int) -> list[tuple]:
        market = MarketSimulator([SYMBOLS["BTCUSDT"], SYMBOLS["ETHUSDT"]], seed)
        market.set_wanted_streams({"btcusdt@trade", "ethusdt@trade"})
        out: list[tuple] = []
        market.emit_orders(2000, 0, out)
        return out

    assert first_trades(42) == first_trades(42)
    assert first_trades(42) != first_trades(43)
    market = MarketSimulator([SYMBOLS["BTCUSDT"]], seed=1)
    arrivals = []
    for _ in range(20_000):
        market.advance_clock()
        arrivals.append(market.sim_time)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert statistics.stdev(gaps) / statistics.mean(gaps) > 1.3  # clustered, unlike Poisson's 1.0


async def test_realtime_rate_paces_trades(start_exchange):
    exchange = await start_exchange(rate="realtime", speed=5)
    async with open_client(exchange.url + "/ws/btcusdt@trade") as ws:
        frames = [loads(f) for f in await receive(ws, 30, timeout=10)]
    ids = [f["t"] for f in frames]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert all(f["E"] >= f["T"] for f in frames)
    assert [f["T"] for f in frames] == sorted(f["T"] for f in frames)


# ---- control messages and limits -----------------------------------------------------------------------


async def test_subscribe_list_properties_and_errors(start_exchange):
    exchange = await start_exchange(max_incoming_messages_per_second=100)
    async with open_client(exchange.url + "/ws") as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}))
        assert await ws.recv() == '{"result":null,"id":1}'
        assert loads(await ws.recv())["e"] == "trade"  # raw form
        assert await reply_to(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2}) == {
            "result": ["btcusdt@trade"],
            "id": 2,
        }
        assert await reply_to(ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 3}) == {
            "result": None,
            "id": 3,
        }
        assert loads(await ws.recv())["stream"] == "btcusdt@trade"
        assert await reply_to(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": "q4"}) == {
            "result": True,
            "id": "q4",
        }
        assert await reply_to(ws, {"method": "SUBSCRIBE", "params": ["ethusdt@bookTicker"], "id": 5}) == {
            "result": None,
            "id": 5,
        }
        assert (await reply_to(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 6}))["result"] == [
            "btcusdt@trade",
            "ethusdt@bookTicker",
        ]
        assert await reply_to(
            ws, {"method": "UNSUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@bookTicker"], "id": 7}
        ) == {"result": None, "id": 7}
        assert await reply_to(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 8}) == {"result": [], "id": 8}
        bad_stream = await reply_to(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@nonsense"], "id": 9})
        assert bad_stream == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 9}
        unknown = await reply_to(ws, {"method": "SUBSCRIBEX", "id": 10})
        assert unknown["error"]["code"] == 2 and "unknown variant" in unknown["error"]["msg"]
        bad_property = await reply_to(ws, {"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 11})
        assert bad_property["error"] == {"code": 1, "msg": "Invalid value type: expected Boolean"}
        await ws.send("{not json")
        invalid = loads(await ws.recv())
        assert invalid["error"]["code"] == 3 and invalid["error"]["msg"].startswith("Invalid JSON")


async def test_more_than_five_messages_per_second_closes_the_connection(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws") as ws:
        for request_id in range(4):  # within the limit: answered, connection stays
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}))
            assert loads(await ws.recv())["id"] == request_id
        await asyncio.sleep(1.1)
        for request_id in range(6):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}))
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws, 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    await wait_closed_for(exchange, "rate_limit")


async def test_stream_count_limit(start_exchange):
    exchange = await start_exchange(max_streams_per_connection=3)
    four = "btcusdt@trade/ethusdt@trade/btcusdt@bookTicker/ethusdt@bookTicker"
    with pytest.raises(InvalidStatus) as rejected:
        async with open_client(exchange.url + "/stream?streams=" + four):
            pass
    assert rejected.value.response.status_code == 400
    async with open_client(exchange.url + "/stream?streams=btcusdt@trade/ethusdt@trade") as ws:
        answer = await reply_to(
            ws, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "ethusdt@aggTrade"], "id": 1}
        )
        assert answer["error"]["code"] == 2


async def test_connection_attempt_limit(start_exchange):
    exchange = await start_exchange(max_connection_attempts=2)
    for _ in range(2):
        async with open_client(exchange.url + "/ws"):
            pass
    with pytest.raises(InvalidStatus) as rejected:
        async with open_client(exchange.url + "/ws"):
            pass
    assert rejected.value.response.status_code == 429


async def test_connection_lifetime_limit(start_exchange):
    exchange = await start_exchange(max_lifetime=0.3)
    async with open_client(exchange.url + "/ws/btcusdt@trade") as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await receive(ws, 100_000)
        assert 0.25 < time.monotonic() - started < 2
    assert ws.close_code == 1001
    await wait_closed_for(exchange, "lifetime")


async def test_second_connection_sees_the_same_trades(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws/btcusdt@trade") as old:
        await receive(old, 20)
        async with open_client(exchange.url + "/ws/btcusdt@trade") as new:
            from_new = await receive(new, 40)
        from_old = await receive(old, 200)
    by_id = {loads(f)["t"]: f for f in from_old}
    overlap = [f for f in from_new if loads(f)["t"] in by_id]
    assert len(overlap) == 40
    assert all(by_id[loads(f)["t"]] == f for f in overlap)  # byte-identical frames


async def test_stop_is_bounded_when_a_client_stopped_reading():
    exchange = ReplayExchange(port=0, rate="max", close_timeout=0.3)
    await exchange.start()
    async with connect(exchange.url + "/ws/btcusdt@trade") as ws:  # bounded queue: stops reading TCP
        await receive(ws, 1)
        await asyncio.sleep(1.0)  # kernel buffers and the server's write buffer fill up
        started = time.monotonic()
        await exchange.stop()
        assert time.monotonic() - started < 2
        ws.transport.abort()


# ---- keepalive ----------------------------------------------------------------------------------------


async def test_pings_carry_a_payload_and_unanswered_pings_close(start_exchange):
    exchange = await start_exchange(ping_interval=0.1, pong_timeout=0.4, close_timeout=0.3)
    async with open_client(exchange.url + "/ws", create_connection=PingRecordingClient) as ws:
        await wait_for(lambda: len(ws.ping_payloads) >= 3)
        assert all(payload.isdigit() for payload in ws.ping_payloads)
        await wait_for(lambda: exchange.stats()["pings"]["pongs_received"] >= 3)
        ws.transport.pause_reading()  # stop answering pings
        await wait_closed_for(exchange, "pong_timeout")
        ws.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            await receive(ws, 100_000)


async def test_suppressed_pings_stop_and_resume(start_exchange):
    exchange = await start_exchange(ping_interval=0.05)
    async with open_client(exchange.url + "/ws", create_connection=PingRecordingClient) as ws:
        await wait_for(lambda: len(ws.ping_payloads) >= 2)
        exchange.suppress_pings()
        await asyncio.sleep(0.1)
        before = len(ws.ping_payloads)
        await asyncio.sleep(0.4)
        assert len(ws.ping_payloads) == before
        exchange.clear_faults()
        await wait_for(lambda: len(ws.ping_payloads) > before)


async def test_suppressed_pongs_leave_client_pings_unanswered(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws", ping_interval=None) as ws:
        await asyncio.wait_for(await ws.ping(b"one"), 2)
        exchange.suppress_pongs(seconds=5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(await ws.ping(b"two")), 0.4)
        exchange.clear_faults()
        await asyncio.wait_for(await ws.ping(b"three"), 2)
    assert exchange.stats()["pings"]["pongs_withheld"] == 1


# ---- faults -----------------------------------------------------------------------------------------


async def test_drop_closes_without_a_close_frame(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws/btcusdt@trade") as ws:
        await receive(ws, 5)
        assert exchange.drop_connections() == exchange.connection_ids()
        with pytest.raises(ConnectionClosedError) as dropped:
            await receive(ws, 100_000)
    assert dropped.value.rcvd is None  # 1006: TCP gone, no close frame
    await wait_closed_for(exchange, "fault_drop")


async def test_drop_only_the_oldest_connection(start_exchange):
    exchange = await start_exchange()
    async with (
        open_client(exchange.url + "/ws/btcusdt@trade") as old,
        open_client(exchange.url + "/ws/btcusdt@trade") as new,
    ):
        await receive(old, 1)
        await receive(new, 1)
        oldest, newest = exchange.connection_ids()
        assert exchange.drop_connections(which="oldest") == [oldest]
        with pytest.raises(ConnectionClosedError):
            await receive(old, 100_000)
        await receive(new, 50)
        assert exchange.connection_ids() == [newest]


async def test_stall_pauses_data_but_keeps_the_connection(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws/btcusdt@trade") as ws:
        await receive(ws, 5)
        exchange.stall(0.6)
        started = time.monotonic()
        async with asyncio.timeout(5):
            while loads(await ws.recv()) and time.monotonic() - started < 0.05:
                pass  # frames already in flight
            resumed = time.monotonic()
        assert resumed - started >= 0.5
        after = trade_ids(await receive(ws, 5))
        assert after == list(range(after[0], after[0] + 5))
    assert exchange.stats()["dropped_while_stalled"] > 0


async def test_skip_ids_leaves_a_gap(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws/btcusdt@trade") as ws:
        ids = trade_ids(await receive(ws, 5))
        next_id = exchange.skip_trade_ids("BTCUSDT", 7)
        async with asyncio.timeout(10):  # frames generated before the skip may still be in flight
            while not ids or ids[-1] < next_id:
                ids += trade_ids(await receive(ws, 50))
    jumps = [(a, b) for a, b in itertools.pairwise(ids) if b != a + 1]
    assert len(jumps) == 1 and jumps[0][1] - jumps[0][0] == 8 and jumps[0][1] == next_id

    # The skipped trades happened: REST historicalTrades returns them, as Binance would, by trade id.
    missing = await asyncio.to_thread(
        rest_get, exchange, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=next_id - 7, limit=7
    )
    assert [t["id"] for t in missing] == list(range(next_id - 7, next_id))
    for trade in missing:
        assert set(trade) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"}
        assert Decimal(trade["quoteQty"]) == Decimal(trade["price"]) * Decimal(trade["qty"])
    streamed = await asyncio.to_thread(
        rest_get, exchange, "/api/v3/historicalTrades", symbol="BTCUSDT", fromId=ids[0], limit=3
    )
    assert [t["id"] for t in streamed] == ids[:3]


async def test_historical_trades_refuses_what_binance_refuses(start_exchange):
    exchange = await start_exchange()
    for params, code in (
        ({"symbol": "NOPEUSDT"}, -1121),
        ({"symbol": "BTCUSDT", "limit": 1001}, -1131),
        ({"symbol": "BTCUSDT", "fromId": "x"}, -1100),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(rest_get, exchange, "/api/v3/historicalTrades", **params)
        assert refused.value.code == 400 and json.loads(refused.value.read())["code"] == code


def rest_get(exchange: ReplayExchange, path: str, **params: object) -> Any:
    with urllib.request.urlopen(
        f"{exchange.http_url}{path}?{urllib.parse.urlencode(params)}", timeout=10
    ) as response:
        return json.loads(response.read())


async def test_malformed_frames(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/stream?streams=btcusdt@trade") as ws:
        await receive(ws, 3)

        async def next_bad(kind: str, **options) -> str:
            assert exchange.send_malformed(kind, symbol="BTCUSDT", **options) == exchange.connection_ids()
            async with asyncio.timeout(5):
                while True:
                    text = await ws.recv()
                    try:
                        data = loads(text)["data"]
                    except ValueError:
                        return text
                    if set(data) != set(TRADE_KEYS) or not DECIMAL_8.match(data["p"]):
                        return text

        truncated = await next_bad("invalid_json")
        with pytest.raises(ValueError):
            json.loads(truncated)
        missing = loads(await next_bad("missing_field", field="t"))["data"]
        assert "t" not in missing and missing["e"] == "trade"
        bad_price = loads(await next_bad("non_decimal_price"))["data"]
        with pytest.raises(InvalidOperation):
            Decimal(bad_price["p"])
        following = loads(await ws.recv())["data"]
        assert following["t"] == bad_price["t"] + 1  # the corrupted trade used up an id


async def test_server_shutdown_event_then_close(start_exchange):
    exchange = await start_exchange()
    async with (
        open_client(exchange.url + "/stream?streams=btcusdt@trade") as combined,
        open_client(exchange.url + "/ws/btcusdt@trade?timeUnit=MICROSECOND") as raw,
    ):
        await receive(combined, 1)
        await receive(raw, 1)
        exchange.server_shutdown(delay=0.3)
        notices = {}
        for name, ws in (("combined", combined), ("raw", raw)):
            async with asyncio.timeout(5):
                while name not in notices:
                    message = loads(await ws.recv())
                    if message.get("stream") == "!serverShutdown" or message.get("e") == "serverShutdown":
                        notices[name] = message
        assert list(notices["combined"]) == ["stream", "data"]
        assert notices["combined"]["data"]["e"] == "serverShutdown"
        assert len(str(notices["combined"]["data"]["E"])) == 13
        assert notices["raw"]["e"] == "serverShutdown" and len(str(notices["raw"]["E"])) == 16
        for ws in (combined, raw):
            with pytest.raises(ConnectionClosed):
                await receive(ws, 100_000)
            assert ws.close_code == 1001


# ---- HTTP control, CLI subprocess, recording, throughput ------------------------------------------------


async def test_http_stats_and_control(start_exchange):
    exchange = await start_exchange()
    async with open_client(exchange.url + "/ws/btcusdt@trade") as ws:
        await receive(ws, 5)
        answer = await asyncio.to_thread(http_control, exchange.url, "skip_ids", symbol="BTCUSDT", count=3)
        ids = trade_ids(await receive(ws, 200))
        assert answer["next_trade_id"] in ids
        assert ids[ids.index(answer["next_trade_id"]) - 1] == answer["next_trade_id"] - 4
        stats = await asyncio.to_thread(http_stats, exchange.url)
        assert stats["connections"]["open"] == 1
        assert stats["connections"]["list"][0]["streams"] == ["btcusdt@trade"]
        assert stats["streams"]["btcusdt@trade"]["sent"] >= 205
        assert stats["streams"]["btcusdt@trade"]["generated"] >= stats["streams"]["btcusdt@trade"]["sent"]
        assert stats["faults"] == {"skip_ids": 1}
        with pytest.raises(RuntimeError, match="HTTP 404"):
            await asyncio.to_thread(http_control, exchange.url, "explode")
        with pytest.raises(RuntimeError, match="HTTP 400"):
            await asyncio.to_thread(http_control, exchange.url, "stall", seconds="soon")
        connections = exchange.connection_ids()
        dropped = await asyncio.to_thread(http_control, exchange.url, "drop", which="newest")
        assert dropped == {"fault": "drop", "connections": connections}
        with pytest.raises(ConnectionClosedError):
            await receive(ws, 100_000)


async def test_cli_subprocess_serves_and_exits_cleanly_on_sigterm():
    process = ReplayExchangeProcess(
        "--rate", "500", "--symbols", "BTCUSDT,SHIBUSDT", "--ping-interval", "0.2"
    )
    url = await asyncio.to_thread(process.start)
    try:
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+", url)
        async with open_client(url + "/ws/shibusdt@trade") as ws:
            trade = loads((await receive(ws, 1))[0])
            assert trade["s"] == "SHIBUSDT" and re.match(r"^\d+\.\d{2}$", trade["q"])
            await asyncio.to_thread(process.control, "server_shutdown", delay=0.1)
            async with asyncio.timeout(5):
                while (notice := loads(await ws.recv()))["e"] == "trade":
                    pass  # trades sent before the notice may still be in flight
            assert notice == {"e": "serverShutdown", "E": pytest.approx(time.time() * 1000, abs=5000)}
            with pytest.raises(ConnectionClosed):
                await receive(ws, 100_000)
        await wait_for(lambda: process.stats()["connections"]["closed"] == {"server_shutdown": 1})
    finally:
        assert await asyncio.to_thread(process.stop) == 0


async def test_record_then_replay(start_exchange, tmp_path: Path):
    live = await start_exchange()
    recording = tmp_path / "btc.jsonl"
    written = await record_stream(
        live.url + "/stream?streams=btcusdt@trade/btcusdt@bookTicker", recording, max_frames=300
    )
    assert written == 300
    recorded = [loads(line) for line in recording.read_text().splitlines()]
    replay = await start_exchange(replay_path=str(recording), rate="max")
    async with open_client(replay.url + "/stream?streams=btcusdt@trade/btcusdt@bookTicker") as ws:
        replayed = [loads(f) for f in await receive(ws, 300)]
    assert [f["stream"] for f in replayed] == [f["stream"] for f in recorded]
    for original, again in zip(recorded, replayed):
        a, b = original["data"], again["data"]
        assert {k: v for k, v in a.items() if k not in "ET"} == {k: v for k, v in b.items() if k not in "ET"}
        if "E" in a:
            assert b["E"] - b["T"] == a["E"] - a["T"] and abs(b["E"] / 1000 - time.time()) < 5
    await wait_for(lambda: replay.stats()["exhausted"])

    # Real-time pacing follows the recorded event times, divided by the speed.
    times = [f["data"]["E"] for f in recorded if "E" in f["data"]]
    span = (times[-1] - times[0]) / 1000
    paced = await start_exchange(replay_path=str(recording), rate="realtime", speed=0.5)
    async with open_client(paced.url + "/stream?streams=btcusdt@trade/btcusdt@bookTicker") as ws:
        started = time.monotonic()
        await receive(ws, 300)
        assert time.monotonic() - started > span / 0.5 * 0.7


async def test_max_rate_send_throughput_to_one_client():
    """The downstream feed targets >= 50,000 trades/s; the exchange must deliver well above that.

    Judged per CPU-second of the server process, so other load on the machine does not make it flaky;
    the wall-clock rate is printed (run with -s) and only needs to clear the target.
    """
    with ReplayExchangeProcess("--rate", "max") as process:
        server = psutil.Process(process.process.pid)
        cpu_before = sum(server.cpu_times()[:2])
        result = await asyncio.to_thread(
            measure_send_rate, process.url, "/stream?streams=btcusdt@trade/ethusdt@trade", 2.0, 0.0
        )
        cpu_seconds = sum(server.cpu_times()[:2]) - cpu_before
    per_cpu_second = result["events"] / cpu_seconds
    print(
        f"max send rate to one client: {result['events_per_second']:,.0f} trades/s wall, "
        f"{per_cpu_second:,.0f} trades per server CPU-second"
    )
    assert per_cpu_second > 150_000
    assert result["events_per_second"] > 50_000
