"""ReplayExchange: a local WebSocket server speaking Binance Spot's market-data stream protocol.

One market (simulated or replayed) is broadcast: every connection subscribed to a stream receives the
same events, so a second connection opened for a make-before-break rotation sees the same trade ids.

Connection rules follow Binance: pings with a payload every `ping_interval` seconds and a close
(1008 "Pong timeout") when a ping stays unanswered for `pong_timeout` seconds; more than
`max_incoming_messages_per_second` incoming frames (pings, pongs, control messages) within one second
close the connection (1008 "Too many messages"); at most `max_streams_per_connection` streams; a
connection is closed after `max_lifetime` seconds (1001 "Connection lifetime exceeded"); more than
`max_connection_attempts` handshakes per `connection_attempt_window` seconds are refused with HTTP 429.

Plain HTTP on the same port: `GET /stats`, `GET|POST /control/<fault>?...` (see `_HTTP_FAULTS`), Binance's
REST `GET /api/v3/historicalTrades?symbol=&fromId=&limit=` over the most recent trades of each symbol, including
those a fault kept off the streams (skipped ids), so a feed handler can fill its gaps by trade id, and
`GET /api/v3/exchangeInfo[?symbolStatus=TRADING]`: every symbol, status TRADING, or BREAK once delisted.

The full market: `market_symbols=N` (--market-symbols) generates N symbols with Zipf-distributed activity (see
symbols.full_market) instead of the named ones; `quotes_per_trade` sets the bookTicker updates per trade.
`/control/list?symbol=X` lists a symbol while running and `/control/delist?symbol=X` delists one (its streams stay
subscribed and go quiet, as on Binance).
"""

import asyncio
import collections
import contextlib
import dataclasses
import http
import json
import logging
import re
import time
from collections.abc import Coroutine
from decimal import Decimal
from itertools import islice
from typing import Any, Self, cast
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConcurrencyError, ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from .encoding import RECORDED, TRADE, ascii_json, encode_batch, frame, server_shutdown_payload, wrap_combined
from .market import MarketSimulator
from .replay import RecordedStream
from .symbols import SymbolSpec, full_market, listed_spec, symbol_spec

log = logging.getLogger("k2.services.replay_exchange")

RATE_REALTIME = "realtime"
RATE_MAX = "max"

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008

_STREAM_NAME = re.compile(r"^[a-z0-9]+@(trade|aggTrade|bookTicker)$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9]{1,36}$")
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
_MALFORMED_KINDS = ("invalid_json", "missing_field", "non_decimal_price")
_SELECTIONS = ("all", "oldest", "newest")


def parse_rate(value: str | int) -> str | int:
    """`realtime`, `max`, or a fixed number of trades per second (events/s when replaying)."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        rate = int(value)
        if rate <= 0:
            raise ValueError("a fixed rate must be a positive number of events per second")
        return rate
    if value in (RATE_REALTIME, RATE_MAX):
        return value
    raise ValueError(f"rate must be {RATE_REALTIME!r}, {RATE_MAX!r} or a positive integer, not {value!r}")


@dataclasses.dataclass(frozen=True)
class ExchangeConfig:
    host: str = "127.0.0.1"
    port: int = 9443  # 0 picks a free port (see ReplayExchange.port)
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    rate: str | int = RATE_REALTIME  # "realtime", "max", or trades per second across all symbols
    speed: float = 1.0  # real-time multiplier (realtime rate only)
    seed: int = 42
    replay_path: str | None = None  # JSON-lines recording replayed instead of the simulator
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    max_lifetime: float = 24 * 3600.0
    max_streams_per_connection: int = 1024
    max_incoming_messages_per_second: int = 5
    max_connection_attempts: int = 300  # per window and client IP; 0 disables the limit
    connection_attempt_window: float = 300.0
    close_timeout: float = 5.0  # wait for the client's close frame before dropping TCP
    max_batch_trades: int = 2048  # trades generated per send batch at the max rate
    max_write_buffer: int = 64 * 2**20  # bytes queued for one client before it is dropped as too slow
    slow_consumer_timeout: float = 10.0  # max rate: how long the market waits for one client to drain
    rest_history_trades: int = 100_000  # per symbol: the trades historicalTrades can return
    market_symbols: int = 0  # > 0: a generated full market of this many symbols instead of `symbols`
    quotes_per_trade: float = 0.0  # > 0: bookTicker updates per trade (0: the simulator's own, ~0.75)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", parse_rate(self.rate))
        object.__setattr__(self, "symbols", tuple(s.upper() for s in self.symbols))
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        for name in (
            "ping_interval",
            "pong_timeout",
            "max_lifetime",
            "close_timeout",
            "slow_consumer_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.market_symbols < 0 or self.quotes_per_trade < 0:
            raise ValueError("market_symbols and quotes_per_trade must not be negative")
        if self.replay_path is None and not self.market_symbols:
            for symbol in self.symbols:
                symbol_spec(symbol)

    def specs(self) -> list[SymbolSpec]:
        if self.market_symbols:
            return full_market(self.market_symbols, self.seed)
        return [symbol_spec(symbol) for symbol in self.symbols]


class _ExchangeProtocol(ServerProtocol):
    """Sans-I/O protocol that can withhold the automatic pong answers to client pings (a fault)."""

    pongs_suppressed_until = 0.0
    pongs_withheld = 0

    def send_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PONG and time.monotonic() < self.pongs_suppressed_until:
            self.pongs_withheld += 1
            return
        super().send_frame(frame)


class _ExchangeConnection(ServerConnection):
    def __init__(self, protocol: ServerProtocol, server: Server, **kwargs: Any) -> None:
        protocol.__class__ = _ExchangeProtocol  # serve() builds a plain ServerProtocol; add the pong fault
        super().__init__(protocol, server, **kwargs)
        self.session: _Session | None = None

    def process_event(self, event: Any) -> None:
        if self.request is not None and self.session is not None:
            self.session.on_incoming_frame(event)
        super().process_event(event)


class _Session:
    """Per-connection state: subscriptions, format, faults, counters."""

    def __init__(
        self,
        exchange: "ReplayExchange",
        connection: _ExchangeConnection,
        session_id: int,
        path: str,
        streams: list[str],
        combined: bool,
        micro: bool,
    ) -> None:
        self.exchange = exchange
        self.connection = connection
        self.id = session_id
        self.path = path
        self.streams = dict.fromkeys(streams)  # insertion-ordered set, as LIST_SUBSCRIPTIONS reports it
        self.combined = combined
        self.micro = micro
        self.opened_at = time.monotonic()
        self.stalled_until = 0.0
        self.pings_suppressed_until = 0.0
        self.sent_events = 0
        self.control_messages = 0
        self.peak_incoming_per_second = 0  # most incoming frames seen within one second
        self.close_reason: str | None = None
        self._incoming: collections.deque[float] = collections.deque(
            maxlen=exchange.config.max_incoming_messages_per_second + 1
        )

    @property
    def protocol(self) -> _ExchangeProtocol:
        return self.connection.protocol  # type: ignore[return-value]

    def on_incoming_frame(self, frame: Frame) -> None:
        stats = self.exchange._stats
        stats["incoming_messages"] += 1
        if frame.opcode is Opcode.PONG:
            stats["pongs_received"] += 1
        now = time.monotonic()
        self._incoming.append(now)
        within_second = sum(1 for at in self._incoming if now - at < 1.0)
        self.peak_incoming_per_second = max(self.peak_incoming_per_second, within_second)
        if (
            len(self._incoming) == self._incoming.maxlen
            and now - self._incoming[0] < 1.0
            and frame.opcode is not Opcode.CLOSE
        ):
            self.close("rate_limit", CLOSE_POLICY_VIOLATION, "Too many messages")

    def write(self, data: bytes, events: int, now: float) -> bool:
        """Queue pre-framed text frames; False when the connection takes no data now."""
        if now < self.stalled_until:
            self.exchange._stats["dropped_while_stalled"] += events
            return False
        connection = self.connection
        if self.close_reason is not None or connection.protocol.state is not OPEN:
            return False
        transport = connection.transport
        if transport.is_closing():
            return False
        transport.write(data)
        self.sent_events += events
        if transport.get_write_buffer_size() > self.exchange.config.max_write_buffer:
            self.abort("slow_consumer")
        return True

    def close(self, reason: str, code: int, text: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self.exchange._spawn(self.close_within_timeout(code, text))

    async def close_within_timeout(self, code: int, text: str) -> None:
        """Closing handshake, bounded: the TCP connection of a client that stopped reading is dropped
        after close_timeout (websockets alone would wait for its write buffer to drain first)."""
        try:
            async with asyncio.timeout(self.exchange.config.close_timeout):
                await self.connection.close(code, text)
        except TimeoutError:
            self.connection.transport.abort()

    def abort(self, reason: str) -> None:
        """Drop TCP without a close frame (the client sees 1006)."""
        if self.close_reason is None:
            self.close_reason = reason
        self.connection.transport.abort()

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "streams": list(self.streams),
            "combined": self.combined,
            "time_unit": "MICROSECOND" if self.micro else "MILLISECOND",
            "age_seconds": round(now - self.opened_at, 3),
            "sent_events": self.sent_events,
            "control_messages": self.control_messages,
            "peak_incoming_per_second": self.peak_incoming_per_second,
            "stalled": now < self.stalled_until,
            "pings_suppressed": now < self.pings_suppressed_until,
            "pongs_suppressed": now < self.protocol.pongs_suppressed_until,
            "closing": self.close_reason,
        }


class _HttpError(Exception):
    def __init__(self, status: http.HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReplayExchange:
    """The server. Use `async with ReplayExchange(port=0, rate=1000) as exchange:` or start()/stop().

    Keyword arguments override fields of `config` (see ExchangeConfig). Fault methods act on the
    connections chosen by `which` ("all", "oldest", "newest") or by `connection` (an id from stats()),
    and return the ids they acted on.
    """

    def __init__(self, config: ExchangeConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or ExchangeConfig(), **overrides)
        if self.config.replay_path is not None:
            self._source: MarketSimulator | RecordedStream = RecordedStream(self.config.replay_path)
        else:
            self._source = MarketSimulator(
                self.config.specs(), self.config.seed, self.config.quotes_per_trade
            )
        self._known_streams = frozenset(self._source.streams())
        self._delisted: dict[str, SymbolSpec] = {}  # shown as BREAK in exchangeInfo
        self._sessions: dict[int, _Session] = {}
        self._next_session_id = 1
        # (combined, micro) -> (union of streams, [(streams, sessions)])
        self._variants: dict[
            tuple[bool, bool], tuple[frozenset[str], list[tuple[frozenset[str], list[_Session]]]]
        ]
        self._variants = {}
        self._market_listened = False
        self._listeners_changed = asyncio.Event()
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._attempts: dict[str, collections.deque[float]] = {}
        self._started_at = time.monotonic()
        self._sent: collections.Counter[str] = collections.Counter()
        self._closed: collections.Counter[str] = collections.Counter()
        self._rejected: collections.Counter[str] = collections.Counter()
        self._faults: collections.Counter[str] = collections.Counter()
        self._stats: collections.Counter[str] = collections.Counter()
        self._pongs_withheld_closed = 0
        # symbol -> the most recent trade events (see encoding.TRADE), oldest first, ids ascending
        self._trade_history: dict[str, collections.deque[tuple]] = collections.defaultdict(
            lambda: collections.deque(maxlen=self.config.rest_history_trades)
        )
        self.failure: BaseException | None = None
        self._bad_pages: collections.deque[Any] = collections.deque()  # answers historicalTrades gives first

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> Self:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=_ExchangeConnection,
            compression=None,  # frames are pre-built uncompressed
            ping_interval=None,  # keepalive is ours: Binance's cadence, payload and timeout
            ping_timeout=None,
            close_timeout=self.config.close_timeout,
            write_limit=(2**20, 2**18),
        )
        self._started_at = time.monotonic()
        self._pump_task = asyncio.create_task(self._pump(), name="replay-exchange-market")
        return self

    async def stop(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
            self._pump_task = None
        sessions = list(self._sessions.values())
        for session in sessions:
            session.close_reason = session.close_reason or "server_stop"
        await asyncio.gather(*(s.close_within_timeout(CLOSE_GOING_AWAY, "Server shutdown") for s in sessions))
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def wait_closed(self) -> None:
        """Return when the server stops (after stop(), or after the market pump failed)."""
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the exchange is not started")
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """Base WebSocket URL, e.g. ws://127.0.0.1:9443 (append /ws/<stream> or /stream?streams=...)."""
        return f"ws://{self._url_host()}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host()}:{self.port}"

    def _url_host(self) -> str:
        host = self.config.host or "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- market pump -----------------------------------------------------------------------------

    async def _pump(self) -> None:
        rate = self.config.rate
        try:
            if isinstance(self._source, RecordedStream):
                await self._until_listened()  # a recording starts playing with its first listener
            if rate == RATE_MAX:
                await self._pump_max()
            elif rate == RATE_REALTIME:
                await self._pump_realtime(self.config.speed)
            else:
                assert isinstance(rate, int)
                await self._pump_fixed(rate)
            log.info("replay finished: all recorded frames sent")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("market pump failed; closing the exchange")
            self.failure = exc
            if self._server is not None:
                self._server.close()

    async def _pump_realtime(self, speed: float) -> None:
        loop = asyncio.get_running_loop()
        source = self._source
        cap = self.config.max_batch_trades
        origin = loop.time()
        origin_us = time.time_ns() // 1000
        while not source.exhausted:
            target = (loop.time() - origin) * speed
            batch: list[tuple] = []
            trades = 0
            while source.sim_time <= target and trades < cap:
                trades += source.emit_orders(1, origin_us + int(source.sim_time / speed * 1e6), batch)
                source.advance_clock()
            self._deliver(batch)
            if trades >= cap:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(max(origin + source.sim_time / speed - loop.time(), 0.001))

    async def _pump_fixed(self, per_second: int) -> None:
        loop = asyncio.get_running_loop()
        source = self._source
        cap = self.config.max_batch_trades
        origin = loop.time()
        emitted = 0
        while not source.exhausted:
            budget = min(int((loop.time() - origin) * per_second) - emitted, cap)
            batch: list[tuple] = []
            now_us = time.time_ns() // 1000
            if budget > 0:
                emitted += source.emit_orders(budget, now_us, batch)
            self._deliver(batch)
            delay = origin + (emitted + 1) / per_second - loop.time()
            await asyncio.sleep(max(delay, 0.001) if delay > 0 else 0)

    async def _pump_max(self) -> None:
        source = self._source
        cap = self.config.max_batch_trades
        while not source.exhausted:
            await self._until_listened()  # nobody listens: pause instead of spinning
            batch: list[tuple] = []
            now_us = time.time_ns() // 1000
            source.emit_orders(cap, now_us, batch)
            self._deliver(batch)
            await self._await_writable()

    async def _until_listened(self) -> None:
        while not self._market_listened:
            self._listeners_changed.clear()
            await self._listeners_changed.wait()

    async def _await_writable(self) -> None:
        for session in list(self._sessions.values()):
            connection = session.connection
            if connection.paused and session.close_reason is None:
                try:
                    async with asyncio.timeout(self.config.slow_consumer_timeout):
                        with contextlib.suppress(OSError):  # the connection went away while draining
                            await connection.drain()
                except TimeoutError:
                    session.abort("slow_consumer")
        await asyncio.sleep(0)

    def _deliver(self, batch: list[tuple]) -> None:
        if not batch or not self._variants:
            return
        history = self._trade_history
        for event in batch:
            if event[1] == TRADE:
                history[event[2]].append(event)
            elif event[1] == RECORDED and event[2].get("e") == "trade":
                data = event[2]
                history[data["s"]].append(
                    (
                        event[0],
                        TRADE,
                        data["s"],
                        data["t"],
                        data["p"],
                        data["q"],
                        time.time_ns() // 1000,
                        "true" if data.get("m") else "false",
                    )
                )
        event_time_us = time.time_ns() // 1000
        now = time.monotonic()
        per_stream: collections.Counter[str] | None = None
        for (combined, micro), (union, views) in self._variants.items():
            framed = encode_batch(batch, union, combined, micro, event_time_us)
            for streams, sessions in views:
                if streams is union:
                    parts = [f for f in framed if f is not None]
                else:
                    parts = [f for event, f in zip(batch, framed) if f is not None and event[0] in streams]
                if not parts:
                    continue
                data = "".join(parts).encode("latin-1")
                delivered = sum(session.write(data, len(parts), now) for session in sessions)
                if delivered:
                    if per_stream is None:
                        per_stream = collections.Counter(event[0] for event in batch)
                    for stream, count in per_stream.items():
                        if stream in streams:
                            self._sent[stream] += count * delivered

    def _listeners_updated(self) -> None:
        """Regroup sessions by (streams, format) so each batch is encoded once per variant."""
        groups: dict[tuple[frozenset[str], bool, bool], list[_Session]] = {}
        for session in self._sessions.values():
            if session.streams and session.close_reason is None:
                key = (frozenset(session.streams), session.combined, session.micro)
                groups.setdefault(key, []).append(session)
        by_variant: dict[tuple[bool, bool], list[tuple[frozenset[str], list[_Session]]]] = {}
        for (streams, combined, micro), sessions in groups.items():
            by_variant.setdefault((combined, micro), []).append((streams, sessions))
        variants = {}
        wanted: set[str] = set()
        for variant, views in by_variant.items():
            union = frozenset().union(*(streams for streams, _ in views))
            if len(views) == 1:
                views = [(union, views[0][1])]  # identity marks "every framed event goes to this view"
            variants[variant] = (union, views)
            wanted |= union
        self._variants = variants
        self._source.set_wanted_streams(frozenset(wanted))
        self._market_listened = bool(wanted & self._known_streams)
        self._listeners_changed.set()

    # ---- connections -----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            if url.path == "/stats":
                return self._json_response(connection, http.HTTPStatus.OK, self.stats())
            if url.path.startswith("/control/"):
                if request.method not in ("GET", "POST"):
                    raise _HttpError(http.HTTPStatus.METHOD_NOT_ALLOWED, "use GET or POST")
                result = self._http_fault(url.path.removeprefix("/control/"), query)
                return self._json_response(connection, http.HTTPStatus.OK, result)
            if url.path == "/api/v3/exchangeInfo":
                return self._json_response(
                    connection, http.HTTPStatus.OK, self.exchange_info(query.get("symbolStatus", [""])[-1])
                )
            if url.path == "/api/v3/historicalTrades":
                return self._historical_trades_response(connection, request, query)
            if url.path in ("/ws", "/stream") or url.path.startswith(("/ws/", "/stream/")):
                self._admit(cast(_ExchangeConnection, connection), request, url.path, query)
                return None
            raise _HttpError(http.HTTPStatus.NOT_FOUND, f"no endpoint {url.path}")
        except _HttpError as exc:
            return self._json_response(connection, exc.status, {"error": str(exc)})

    def _admit(
        self, connection: _ExchangeConnection, request: Request, path: str, query: dict[str, list[str]]
    ) -> None:
        limit = self.config.max_connection_attempts
        if limit:
            peer = connection.remote_address[0] if connection.remote_address else "?"
            attempts = self._attempts.setdefault(peer, collections.deque())
            now = time.monotonic()
            while attempts and now - attempts[0] > self.config.connection_attempt_window:
                attempts.popleft()
            if len(attempts) >= limit:
                self._rejected["too_many_attempts"] += 1
                raise _HttpError(http.HTTPStatus.TOO_MANY_REQUESTS, "too many connection attempts")
            attempts.append(now)
        combined = path.startswith("/stream")
        if combined:
            names = [s for value in query.get("streams", []) for s in value.split("/") if s]
        else:
            names = [s for s in path.removeprefix("/ws").split("/") if s]
        time_unit = query.get("timeUnit", ["MILLISECOND"])[-1]
        if time_unit.upper() not in ("MILLISECOND", "MICROSECOND"):
            self._rejected["bad_request"] += 1
            raise _HttpError(http.HTTPStatus.BAD_REQUEST, f"invalid timeUnit {time_unit!r}")
        invalid = [name for name in names if not _STREAM_NAME.match(name)]
        if invalid:
            self._rejected["bad_request"] += 1
            raise _HttpError(http.HTTPStatus.BAD_REQUEST, f"invalid stream name(s): {', '.join(invalid)}")
        if len(set(names)) > self.config.max_streams_per_connection:
            self._rejected["bad_request"] += 1
            raise _HttpError(
                http.HTTPStatus.BAD_REQUEST,
                f"at most {self.config.max_streams_per_connection} streams per connection",
            )
        connection.session = _Session(
            self,
            connection,
            self._next_session_id,
            request.path,
            names,
            combined,
            time_unit.upper() == "MICROSECOND",
        )
        self._next_session_id += 1

    async def _handle(self, connection: ServerConnection) -> None:
        session = cast(_ExchangeConnection, connection).session
        assert session is not None
        self._sessions[session.id] = session
        self._stats["connections_total"] += 1
        self._listeners_updated()
        helpers = [asyncio.create_task(self._keepalive(session)), asyncio.create_task(self._expire(session))]
        try:
            async for message in connection:
                if session.close_reason is not None:
                    continue  # closing: drain the client's frames, answer nothing
                session.control_messages += 1
                reply = self._control_reply(session, message)
                if reply is not None:
                    await connection.send(reply)
        except ConnectionClosed:
            pass
        finally:
            for task in helpers:
                task.cancel()
            del self._sessions[session.id]
            self._closed[session.close_reason or "client"] += 1
            self._pongs_withheld_closed += session.protocol.pongs_withheld
            self._listeners_updated()

    async def _keepalive(self, session: _Session) -> None:
        """Binance keepalive: a ping with a payload every interval; close when one stays unanswered."""
        connection = session.connection
        loop = asyncio.get_running_loop()
        interval, timeout = self.config.ping_interval, self.config.pong_timeout
        next_ping = loop.time() + interval
        while True:
            now = loop.time()
            oldest = min((sent_at for _, sent_at in connection.pending_pings.values()), default=None)
            if oldest is not None and now - oldest >= timeout:
                session.close("pong_timeout", CLOSE_POLICY_VIOLATION, "Pong timeout")
                return
            if now >= next_ping:
                next_ping = now + interval
                if time.monotonic() >= session.pings_suppressed_until:
                    try:
                        # Bounded: behind a full write buffer the ping itself can wait for the client.
                        async with asyncio.timeout(timeout):
                            await connection.ping(str(time.time_ns() // 1_000_000).encode())
                    except TimeoutError:
                        session.close("pong_timeout", CLOSE_POLICY_VIOLATION, "Pong timeout")
                        return
                    except ConcurrencyError:  # same payload still pending (interval below 1 ms)
                        pass
                    except ConnectionClosed:
                        return
                    self._stats["pings_sent"] += 1
                    continue  # re-evaluate the pong deadline with the new ping
            wake = next_ping if oldest is None else min(next_ping, oldest + timeout)
            await asyncio.sleep(max(wake - loop.time(), 0.0))

    async def _expire(self, session: _Session) -> None:
        await asyncio.sleep(self.config.max_lifetime)
        session.close("lifetime", CLOSE_GOING_AWAY, "Connection lifetime exceeded")

    # ---- control messages (SUBSCRIBE & co.) ------------------------------------------------------

    def _control_reply(self, session: _Session, message: str | bytes) -> str | None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", errors="replace")
        try:
            request = json.loads(message)
        except ValueError as exc:
            position = (
                f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "?"
            )
            return self._error(3, f"Invalid JSON: expected value at {position}", None)
        if not isinstance(request, dict):
            return self._error(2, "Invalid request: expected an object", None)
        request_id = request.get("id")
        valid_id = (
            request_id is None
            or (type(request_id) is int and -(2**63) <= request_id < 2**63)
            or (isinstance(request_id, str) and _REQUEST_ID.match(request_id))
        )
        if not valid_id:
            return self._error(2, "Invalid request: request ID must be an unsigned integer", None)
        if "method" not in request:
            return self._error(2, "Invalid request: missing field `method`", request_id)
        method = request["method"]
        params = request.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if (
                not isinstance(params, list)
                or not params
                or not all(isinstance(p, str) and _STREAM_NAME.match(p) for p in params)
            ):
                return self._error(2, "Invalid request: invalid stream", request_id)
            if method == "SUBSCRIBE":
                added = [p for p in params if p not in session.streams]
                if len(session.streams) + len(set(added)) > self.config.max_streams_per_connection:
                    return self._error(
                        2,
                        f"Invalid request: too many streams (max {self.config.max_streams_per_connection})",
                        request_id,
                    )
                session.streams.update(dict.fromkeys(added))
            else:
                for name in params:
                    session.streams.pop(name, None)
            self._listeners_updated()
            return ascii_json({"result": None, "id": request_id})
        if method == "LIST_SUBSCRIPTIONS":
            return ascii_json({"result": list(session.streams), "id": request_id})
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            expected = 2 if method == "SET_PROPERTY" else 1
            if not isinstance(params, list) or len(params) > expected:
                return self._error(2, "Invalid request: too many parameters", request_id)
            if len(params) < 1 or not isinstance(params[0], str):
                return self._error(2, "Invalid request: property name must be a string", request_id)
            if params[0] != "combined":
                return self._error(0, "Unknown property", request_id)
            if method == "GET_PROPERTY":
                return ascii_json({"result": session.combined, "id": request_id})
            if len(params) < 2 or not isinstance(params[1], bool):
                return self._error(1, "Invalid value type: expected Boolean", request_id)
            session.combined = params[1]
            self._listeners_updated()
            return ascii_json({"result": None, "id": request_id})
        return self._error(
            2, f"Invalid request: unknown variant `{method}`, expected one of {_METHODS}", request_id
        )

    @staticmethod
    def _error(code: int, message: str, request_id: Any) -> str:
        return ascii_json({"error": {"code": code, "msg": message}, "id": request_id})

    # ---- faults ----------------------------------------------------------------------------------

    def connection_ids(self) -> list[int]:
        return sorted(self._sessions)

    def _select(self, which: str, connection: int | None) -> list[_Session]:
        live = [s for _, s in sorted(self._sessions.items()) if s.close_reason is None]
        if connection is not None:
            return [s for s in live if s.id == connection]
        if which == "all":
            return live
        if which == "oldest":
            return live[:1]
        if which == "newest":
            return live[-1:]
        raise ValueError(f"which must be one of {', '.join(_SELECTIONS)}, not {which!r}")

    def drop_connections(self, which: str = "all", connection: int | None = None) -> list[int]:
        """Abort TCP without a close frame: the client sees an abnormal closure (1006)."""
        sessions = self._select(which, connection)
        for session in sessions:
            session.abort("fault_drop")
        self._faults["drop"] += 1
        return [s.id for s in sessions]

    def close_connections(
        self, code: int = 1000, reason: str = "", which: str = "all", connection: int | None = None
    ) -> list[int]:
        """Close with a close frame carrying `code` and `reason`."""
        sessions = self._select(which, connection)
        for session in sessions:
            session.close("fault_close", code, reason)
        self._faults["close"] += 1
        return [s.id for s in sessions]

    def stall(self, seconds: float, which: str = "all", connection: int | None = None) -> list[int]:
        """Send no data for `seconds` (events in that window are lost for these connections) while
        keeping the connection, pings and pongs alive."""
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        until = time.monotonic() + seconds
        sessions = self._select(which, connection)
        for session in sessions:
            session.stalled_until = until
        self._faults["stall"] += 1
        return [s.id for s in sessions]

    def suppress_pings(
        self, seconds: float | None = None, which: str = "all", connection: int | None = None
    ) -> list[int]:
        """Stop sending keepalive pings (for `seconds`, or until clear_faults)."""
        until = float("inf") if seconds is None else time.monotonic() + seconds
        sessions = self._select(which, connection)
        for session in sessions:
            session.pings_suppressed_until = until
        self._faults["suppress_pings"] += 1
        return [s.id for s in sessions]

    def suppress_pongs(
        self, seconds: float | None = None, which: str = "all", connection: int | None = None
    ) -> list[int]:
        """Stop answering the client's pings (for `seconds`, or until clear_faults)."""
        until = float("inf") if seconds is None else time.monotonic() + seconds
        sessions = self._select(which, connection)
        for session in sessions:
            session.protocol.pongs_suppressed_until = until
        self._faults["suppress_pongs"] += 1
        return [s.id for s in sessions]

    def clear_faults(self, which: str = "all", connection: int | None = None) -> list[int]:
        """End stalls and ping/pong suppression."""
        sessions = self._select(which, connection)
        for session in sessions:
            session.stalled_until = 0.0
            session.pings_suppressed_until = 0.0
            session.protocol.pongs_suppressed_until = 0.0
        return [s.id for s in sessions]

    def skip_trade_ids(self, symbol: str, count: int) -> int:
        """Keep the next `count` trades on `symbol` off the streams for everyone (they still happen: REST
        historicalTrades returns them); returns the next trade id to be sent."""
        if count <= 0:
            raise ValueError("count must be positive")
        symbol = symbol.upper()
        now_us = time.time_ns() // 1000
        history = self._trade_history[symbol]
        for _ in range(count):
            trade_id, price, qty = self._source.take_trade(symbol)
            history.append((f"{symbol.lower()}@trade", TRADE, symbol, trade_id, price, qty, now_us, "false"))
        self._faults["skip_ids"] += 1
        return trade_id + 1

    def renumber_trades(self, symbol: str, next_id: int) -> int:
        """The symbol's next trades carry ids from `next_id` on, as after an exchange reset or a jump of its ids
        (REST history restarts with them); returns `next_id`."""
        if next_id < 0:
            raise ValueError("next_id must not be negative")
        symbol = symbol.upper()
        self._source.renumber_trades(symbol, next_id)
        self._trade_history[symbol].clear()  # historicalTrades finds trades by id: ids there stay consecutive
        self._faults["renumber"] += 1
        return next_id

    def serve_bad_pages(self, count: int, page: Any = None) -> int:
        """The next `count` historicalTrades answers are `page` (default: items that are not trades) instead
        of the trades asked for; returns how many bad pages are now pending."""
        if count <= 0:
            raise ValueError("count must be positive")
        self._bad_pages.extend(
            [[{"id": "not-a-number"}, ["a", "list"], None] if page is None else page] * count
        )
        self._faults["bad_pages"] += 1
        return len(self._bad_pages)

    def historical_trades(
        self, symbol: str, from_id: int | None, limit: int, micros: bool
    ) -> list[dict[str, Any]]:
        """Binance's GET /api/v3/historicalTrades: up to `limit` trades from `from_id` (default: the most recent),
        as Binance returns them (decimal strings; time in ms, or µs when asked with X-MBX-TIME-UNIT)."""
        history = self._trade_history.get(symbol.upper())
        if not history:
            return []
        first_id = history[0][3]
        start = len(history) - limit if from_id is None else from_id - first_id  # ids are consecutive
        trades = islice(history, max(start, 0), max(start, 0) + limit)
        return [
            {
                "id": trade_id,
                "price": price,
                "qty": qty,
                "quoteQty": str(Decimal(price) * Decimal(qty)),
                "time": time_us if micros else time_us // 1000,
                "isBuyerMaker": maker == "true",
                "isBestMatch": True,
            }
            for _, _, _, trade_id, price, qty, time_us, maker in trades
            if from_id is None or trade_id >= from_id
        ]

    def send_malformed(
        self,
        kind: str,
        symbol: str | None = None,
        field: str = "p",
        value: str = "12.34.56",
        which: str = "all",
        connection: int | None = None,
    ) -> list[int]:
        """Send one corrupted trade on `<symbol>@trade` to the chosen connections subscribed to it.

        kind: "invalid_json" (the frame text cut in half), "missing_field" (the trade without `field`),
        "non_decimal_price" (`p` set to `value`). The corrupted trade uses up the symbol's next trade
        id, as a real corrupted message would: whoever rejects it sees a gap of one id.
        """
        if kind not in _MALFORMED_KINDS:
            raise ValueError(f"kind must be one of {', '.join(_MALFORMED_KINDS)}, not {kind!r}")
        symbol = (symbol or self._default_symbol()).upper()
        trade_id, price, qty = self._source.take_trade(symbol)
        stream = symbol.lower() + "@trade"
        now_us = time.time_ns() // 1000
        now = time.monotonic()
        sessions = [s for s in self._select(which, connection) if stream in s.streams]
        for session in sessions:
            scale = 1 if session.micro else 1000
            trade = {
                "e": "trade",
                "E": now_us // scale,
                "s": symbol,
                "t": trade_id,
                "p": price,
                "q": qty,
                "T": now_us // scale,
                "m": True,
                "M": True,
            }
            if kind == "missing_field":
                trade.pop(field, None)
            elif kind == "non_decimal_price":
                trade["p"] = value
            payload = ascii_json(trade)
            if session.combined:
                payload = wrap_combined(stream, payload)
            if kind == "invalid_json":
                payload = payload[: len(payload) // 2]
            session.write(frame(payload).encode("latin-1"), 1, now)
        self._faults["malformed"] += 1
        return [s.id for s in sessions]

    def server_shutdown(
        self, delay: float = 1.0, which: str = "all", connection: int | None = None
    ) -> list[int]:
        """Send the serverShutdown event now, then close (1001) after `delay` seconds."""
        now_us = time.time_ns() // 1000
        now = time.monotonic()
        sessions = self._select(which, connection)
        for session in sessions:
            payload = server_shutdown_payload(now_us, session.micro, session.combined)
            session.write(frame(payload).encode("latin-1"), 0, now)
            self._spawn(self._close_later(session, delay))
        self._faults["server_shutdown"] += 1
        return [s.id for s in sessions]

    async def _close_later(self, session: _Session, delay: float) -> None:
        await asyncio.sleep(delay)
        session.close("server_shutdown", CLOSE_GOING_AWAY, "Server shutdown")

    def list_symbol(self, symbol: str, orders_per_second: float | None = None) -> dict[str, Any]:
        """A listing while running: the symbol trades from now on (at `orders_per_second` calm taker orders, by
        default a tail symbol's) and exchangeInfo shows it TRADING."""
        if not isinstance(self._source, MarketSimulator):
            raise TypeError("a recording cannot list symbols")
        spec = self._delisted.pop(symbol.upper(), None) or listed_spec(symbol, self.config.seed)
        if orders_per_second is not None:
            if orders_per_second <= 0:
                raise ValueError("orders_per_second must be positive")
            spec = dataclasses.replace(spec, taker_orders_per_second=orders_per_second)
        self._source.list_symbol(spec)
        self._known_streams = frozenset(self._source.streams())
        self._listeners_updated()
        self._faults["list"] += 1
        return {"fault": "list", "symbol": spec.symbol}

    def delist_symbol(self, symbol: str) -> dict[str, Any]:
        """A delisting: the symbol trades no more; exchangeInfo shows it as BREAK."""
        if not isinstance(self._source, MarketSimulator):
            raise TypeError("a recording cannot delist symbols")
        spec = next((s for s in self._source.specs() if s.symbol == symbol.upper()), None)
        self._source.delist_symbol(symbol)
        if spec is not None:
            self._delisted[spec.symbol] = spec
        self._faults["delist"] += 1
        return {"fault": "delist", "symbol": symbol.upper()}

    def exchange_info(self, status: str = "") -> dict[str, Any]:
        """Binance's GET /api/v3/exchangeInfo, with the fields a market-data client reads."""
        if isinstance(self._source, MarketSimulator):
            trading = self._source.specs()
        else:  # a recording: its symbols, with the quote asset their names end with
            trading = []
            for symbol in self._source.symbols:
                with contextlib.suppress(ValueError):
                    trading.append(listed_spec(symbol, self.config.seed))
        entries = [(spec, "TRADING") for spec in trading] + [
            (spec, "BREAK") for spec in self._delisted.values()
        ]
        return {
            "timezone": "UTC",
            "serverTime": time.time_ns() // 1_000_000,
            "rateLimits": [
                {
                    "rateLimitType": "CONNECTIONS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": self.config.max_connection_attempts,
                }
            ],
            "exchangeFilters": [],
            "symbols": [
                {
                    "symbol": spec.symbol,
                    "status": state,
                    "baseAsset": spec.base_asset or spec.symbol.removesuffix(spec.quote_asset),
                    "baseAssetPrecision": 8,
                    "quoteAsset": spec.quote_asset,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "isSpotTradingAllowed": True,
                    "filters": [
                        {"filterType": "PRICE_FILTER", "tickSize": str(spec.tick_size)},
                        {"filterType": "LOT_SIZE", "stepSize": str(spec.qty_step)},
                    ],
                }
                for spec, state in entries
                if not status or state == status
            ],
        }

    def _default_symbol(self) -> str:
        symbols = self._source.symbols
        if not symbols:
            raise ValueError("no symbol to use")
        return symbols[0]

    # ---- stats and HTTP control ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        generated = self._source.generated_counts()
        streams = {
            stream: {"generated": generated.get(stream, 0), "sent": self._sent.get(stream, 0)}
            for stream in sorted(set(generated) | set(self._sent))
        }
        open_sessions = [s for _, s in sorted(self._sessions.items())]
        return {
            "source": "replay" if self.config.replay_path else "simulator",
            "symbols": list(self._source.symbols),
            "rate": self.config.rate,
            "speed": self.config.speed,
            "uptime_seconds": round(now - self._started_at, 3),
            "exhausted": self._source.exhausted,
            "streams": streams,
            "connections": {
                "open": len(open_sessions),
                "total": self._stats["connections_total"],
                "closed": dict(self._closed),
                "rejected": dict(self._rejected),
                "list": [s.describe(now) for s in open_sessions],
            },
            "pings": {
                "sent": self._stats["pings_sent"],
                "pongs_received": self._stats["pongs_received"],
                "pongs_withheld": self._pongs_withheld_closed
                + sum(s.protocol.pongs_withheld for s in open_sessions),
            },
            "incoming_messages": self._stats["incoming_messages"],
            "dropped_while_stalled": self._stats["dropped_while_stalled"],
            "faults": dict(self._faults),
        }

    def _http_fault(self, name: str, query: dict[str, list[str]]) -> dict[str, Any]:
        params = {key: values[-1] for key, values in query.items()}
        if name not in _HTTP_FAULTS:
            raise _HttpError(
                http.HTTPStatus.NOT_FOUND, f"unknown fault {name!r}; known: {', '.join(_HTTP_FAULTS)}"
            )
        try:
            target: dict[str, Any] = {"which": params.pop("which", "all")}
            if "connection" in params:
                target["connection"] = int(params.pop("connection"))
            if name in ("list", "delist"):
                symbol = params.pop("symbol", "")
                rate = float(params.pop("orders_per_second")) if "orders_per_second" in params else None
                self._reject_leftovers(params)
                return self.list_symbol(symbol, rate) if name == "list" else self.delist_symbol(symbol)
            if name == "skip_ids":
                next_id = self.skip_trade_ids(
                    params.pop("symbol", self._default_symbol()), int(params.pop("count", "1"))
                )
                self._reject_leftovers(params)
                return {"fault": name, "next_trade_id": next_id}
            if name == "renumber":
                next_id = self.renumber_trades(
                    params.pop("symbol", self._default_symbol()), int(params.pop("next_id"))
                )
                self._reject_leftovers(params)
                return {"fault": name, "next_trade_id": next_id}
            if name == "bad_pages":
                pending = self.serve_bad_pages(int(params.pop("count", "1")))
                self._reject_leftovers(params)
                return {"fault": name, "pending": pending}
            method, converters = _HTTP_FAULTS[name]
            arguments = {
                key: convert(params.pop(key)) for key, convert in converters.items() if key in params
            }
            self._reject_leftovers(params)
            ids = getattr(self, method)(**arguments, **target)
        except (
            ValueError,
            TypeError,
            KeyError,
        ) as exc:  # TypeError, KeyError: a required parameter is missing
            raise _HttpError(http.HTTPStatus.BAD_REQUEST, str(exc)) from None
        return {"fault": name, "connections": ids}

    def _historical_trades_response(
        self, connection: ServerConnection, request: Request, query: dict[str, list[str]]
    ) -> Response:
        params = {key: values[-1] for key, values in query.items()}
        symbol = params.get("symbol", "").upper()
        if symbol not in self._source.symbols:
            return self._json_response(
                connection, http.HTTPStatus.BAD_REQUEST, {"code": -1121, "msg": "Invalid symbol."}
            )
        try:
            limit = int(params.get("limit", "500"))
            from_id = int(params["fromId"]) if "fromId" in params else None
        except ValueError:
            return self._json_response(
                connection,
                http.HTTPStatus.BAD_REQUEST,
                {"code": -1100, "msg": "Illegal characters found in a parameter."},
            )
        if not 1 <= limit <= 1000:
            return self._json_response(
                connection,
                http.HTTPStatus.BAD_REQUEST,
                {"code": -1131, "msg": "Invalid limit: must be between 1 and 1000."},
            )
        micros = request.headers.get("X-MBX-TIME-UNIT", "").upper() == "MICROSECOND"
        self._stats["rest_requests"] += 1
        if self._bad_pages:
            return self._json_response(connection, http.HTTPStatus.OK, self._bad_pages.popleft())
        return self._json_response(
            connection, http.HTTPStatus.OK, self.historical_trades(symbol, from_id, limit, micros)
        )

    @staticmethod
    def _reject_leftovers(params: dict[str, str]) -> None:
        if params:
            raise ValueError(f"unknown parameter(s): {', '.join(params)}")

    @staticmethod
    def _json_response(connection: ServerConnection, status: http.HTTPStatus, body: Any) -> Response:
        response = connection.respond(status, json.dumps(body, indent=1) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response


# HTTP control path -> (ReplayExchange method, query parameter converters); every fault also takes
# `which` (all|oldest|newest) and `connection` (an id from /stats). skip_ids takes symbol and count, renumber
# symbol and next_id, bad_pages count.
_HTTP_FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "drop": ("drop_connections", {}),
    "close": ("close_connections", {"code": int, "reason": str}),
    "stall": ("stall", {"seconds": float}),
    "suppress_pings": ("suppress_pings", {"seconds": float}),
    "suppress_pongs": ("suppress_pongs", {"seconds": float}),
    "clear": ("clear_faults", {}),
    "malformed": ("send_malformed", {"kind": str, "symbol": str, "field": str, "value": str}),
    "server_shutdown": ("server_shutdown", {"delay": float}),
    "skip_ids": ("skip_trade_ids", {}),
    "list": ("list_symbol", {}),
    "delist": ("delist_symbol", {}),
    "renumber": ("renumber_trades", {}),
    "bad_pages": ("serve_bad_pages", {}),
}
