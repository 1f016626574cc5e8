"""BinanceFeed: Binance Spot trades and best bid/ask, live into Kafka through the ingest service's sink.

The symbols are a fixed list, or (symbols=ALL) every symbol the exchange trades, read from its REST exchangeInfo at
start and every symbols_refresh_seconds after: a listing is subscribed on a connection with room (a new one when
all are full), a delisting unsubscribed, each within the connection's control-message budget.
Symbols are split into connection groups of at most max_streams_per_connection streams (two per symbol:
<s>@trade and <s>@bookTicker). Each group keeps one connection open, independently of the others (its own
task, reconnects, rotation and subscriptions; the connection-attempt limit and circuit breaker are shared):
- a connection that drops (1006, a close frame, no pong) is replaced at once, or after a jittered exponential
  backoff when connecting keeps failing; endpoints are tried in failover order and a circuit breaker stops
  attempts for a cooldown after too many consecutive failures;
- a connection that delivers no frame for watchdog_silence_seconds (while not held back by publishing) is
  replaced;
- before Binance's 24 h limit, and when the server announces serverShutdown, the connection is switched over
  make-before-break: the new connection is opened and subscribed while the old one still delivers, both feed
  the same per-symbol sequencing (duplicates dropped, holes filled by whichever delivers them), then the old
  one is closed.
Trade-id gaps (e.g. the trades sent while a dropped connection was down) are detected per symbol, reported, and
filled by trade id from the REST API where it is reachable (backfill.py).
"""

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential
from websockets.exceptions import WebSocketException

from k2.core.protos import set_timestamp
from k2.core.timestamps import from_micros
from k2.ingest.v1.ingest_pb2 import ConnectionState, FeedStatus

from .backfill import GapBackfill
from .connection import FeedConnection, SubscribeError
from .listing import ExchangeListing, ListingUnavailable
from .parsing import FrameParser
from .publishing import PublishBuffer, Publisher, RecordSink
from .resilience import Backoff, CircuitBreaker, SlidingWindowLimiter
from .sequencing import GapLog, SymbolState
from .settings import BinanceSettings, quote_asset

log = logging.getLogger(__name__)
FEED_NAME = "binance"
# After the new connection's first frame, the old one keeps delivering for this long (at most the overlap
# setting) so the frames already on their way to it are read before it is closed.
SWITCH_SETTLE_SECONDS = 1.0
SWITCH_POLL_SECONDS = 0.02
RATE_WINDOW_SAMPLES = 11  # one per second: rates over the last 10 s
MOST_ACTIVE_SYMBOLS = 20  # FeedStatus.most_active


class ConnectionGroup:
    """Some symbols' streams, served by one connection (two during a switch-over)."""

    def __init__(self, feed: "BinanceFeed", number: int, states: list[SymbolState]):
        self.feed = feed
        self.number = number
        self.states = states
        self.leaving: list[SymbolState] = []  # delisted, still subscribed on the open connection
        self.state = ConnectionState.CONNECTION_STATE_CONNECTING
        self.active: FeedConnection | None = None
        self.connections: set[FeedConnection] = set()
        self.endpoint_index = 0
        self.failures = 0  # consecutive failed attempts and connections that closed before delivering
        self.reconnects = 0
        self.frames_closed = 0  # frames of this group's connections that are closed
        self.connected_at = 0.0  # wall-clock time the serving connection opened
        self._shutdown_announced: FeedConnection | None = None
        self._symbols_changed = False
        self._wake = asyncio.Event()

    @property
    def endpoint(self) -> str:
        return self.feed.settings.endpoints[self.endpoint_index]

    @property
    def streams(self) -> list[str]:
        kinds = self.feed.settings.stream_types
        return [f"{state.symbol.lower()}@{kind}" for state in self.states for kind in kinds]

    @property
    def frames(self) -> int:
        return self.frames_closed + sum(connection.frames for connection in self.connections)

    def add(self, states: list[SymbolState]) -> None:
        """Listed symbols: subscribed on the open connection by the group's own task."""
        self.states.extend(states)
        self._symbols_changed = True
        self._wake.set()

    def remove(self, symbols: set[str]) -> list[SymbolState]:
        """Delisted symbols: unsubscribed by the group's own task; returns those this group had."""
        removed = [state for state in self.states if state.symbol in symbols]
        if removed:
            self.states = [state for state in self.states if state.symbol not in symbols]
            self.leaving.extend(removed)
            self._symbols_changed = True
            self._wake.set()
        return removed

    def _count_reconnect(self, reason: str) -> None:
        self.reconnects += 1
        self.feed.count_reconnect(reason)

    def _forget(self, connection: FeedConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
            self.frames_closed += connection.frames

    def _retire_leaving(self) -> None:
        """The delisted symbols are on no open connection any more: the feed stops parsing them."""
        if self.leaving:
            self.feed.retire(self.leaving)
            self.leaving = []

    async def run(self) -> None:
        try:
            connection = await self._connect()
            while True:
                reason = await self._supervise(connection)
                self._retire_leaving()
                self._count_reconnect(reason)
                self.state = ConnectionState.CONNECTION_STATE_RECONNECTING
                self.active = None
                connection = await self._connect()
        finally:
            self.active = None

    # ---- opening connections ---------------------------------------------------------------------

    async def _connect(self) -> FeedConnection:
        """Opens a connection, retrying with backoff through the endpoints until one succeeds."""
        while True:
            if self.failures:
                await asyncio.sleep(self.feed.backoff.delay(self.failures - 1))
            connection = await self._attempt()
            if connection is not None:
                self._start_serving(connection)
                return connection

    async def _attempt(self) -> FeedConnection | None:
        feed = self.feed
        await feed.breaker.admit()
        self._symbols_changed = False  # the new connection subscribes the streams as they are now
        connection = FeedConnection(
            feed.settings, self.endpoint, self.streams, feed.parser, feed.buffer, self._on_server_shutdown
        )
        self.connections.add(connection)
        try:
            await feed.connection_attempts.acquire()
            await connection.open()
        except asyncio.CancelledError:
            feed.breaker.abandoned()
            raise
        except (
            OSError,
            TimeoutError,
            WebSocketException,
            SubscribeError,
        ) as error:  # refused, TLS, HTTP 429, ...
            self._symbols_changed = True  # whatever changed meanwhile: the next attempt subscribes it
            self._forget(connection)
            feed.breaker.failed()
            feed.connect_failures += 1
            self.failures += 1
            failed_endpoint = self.endpoint
            self.endpoint_index = (self.endpoint_index + 1) % len(feed.settings.endpoints)
            log.warning(
                "binance group %d: connecting to %s failed (%s: %s); next attempt on %s",
                self.number,
                failed_endpoint,
                type(error).__name__,
                error,
                self.endpoint,
            )
            return None
        feed.breaker.succeeded()
        log.info(
            "binance group %d: connection %d open on %s (%d streams)",
            self.number,
            connection.id,
            connection.endpoint,
            len(connection.streams),
        )
        return connection

    def _start_serving(self, connection: FeedConnection) -> None:
        self.active = connection
        self.state = ConnectionState.CONNECTION_STATE_CONNECTED
        self.connected_at = time.time()
        self._shutdown_announced = None
        self._wake.clear()
        self._retire_leaving_unless_carried(connection)

    def _retire_leaving_unless_carried(self, connection: FeedConnection) -> None:
        carried = set(connection.streams)
        if not any(state.trade_stream in carried or state.quote_stream in carried for state in self.leaving):
            self._retire_leaving()

    def _on_server_shutdown(self, connection: FeedConnection) -> None:
        if connection is self.active:
            self._shutdown_announced = connection
            self._wake.set()

    # ---- serving ---------------------------------------------------------------------------------

    async def _supervise(self, connection: FeedConnection) -> str:
        """Serves through switch-overs; returns the reason when the group must reconnect (break-before-make)."""
        settings = self.feed.settings
        check_interval = min(1.0, settings.watchdog_silence_seconds / 4)
        rotate_at = self._rotation_deadline()
        seen_frames, active_since = connection.frames, time.monotonic()
        failed_switches = 0
        while True:
            await _wait_any((connection.closed, self._wake), check_interval)
            self._wake.clear()  # a serverShutdown is remembered in _shutdown_announced, a listing in _symbols_changed
            now = time.monotonic()
            if connection.closed.is_set():
                self._forget(connection)
                self.failures = 0 if connection.frames else self.failures + 1
                log.warning(
                    "binance group %d: connection %d closed (%s)",
                    self.number,
                    connection.id,
                    connection.reason,
                )
                return connection.reason or "closed"
            if connection.frames:
                self.failures = 0
            if self._symbols_changed:
                self._symbols_changed = False
                try:
                    await self._follow_symbols(connection)
                except SubscribeError as error:
                    log.warning(
                        "binance group %d: changing the subscriptions of connection %d failed (%s); "
                        "reconnecting",
                        self.number,
                        connection.id,
                        error,
                    )
                    await connection.close("subscribe_failed")
                    self._forget(connection)
                    return "subscribe_failed"
            reason = None
            if self._shutdown_announced is connection:
                reason = "server_shutdown"
            elif now >= rotate_at:
                reason = "rotation"
            if reason is not None:
                self._wake.clear()
                replacement = await self._switch_over(connection, reason)
                if replacement is None:  # the old connection keeps serving; try again after a backoff
                    rotate_at = time.monotonic() + self.feed.backoff.delay(failed_switches)
                    failed_switches += 1
                    self._shutdown_announced = None
                    continue
                failed_switches = 0
                connection = replacement
                self._start_serving(connection)
                rotate_at = self._rotation_deadline()
                seen_frames, active_since = connection.frames, time.monotonic()
                continue
            if connection.frames != seen_frames or connection.blocked:
                seen_frames, active_since = connection.frames, now
            elif now - active_since >= settings.watchdog_silence_seconds:
                log.warning(
                    "binance group %d: no data on connection %d for %.1fs; reconnecting",
                    self.number,
                    connection.id,
                    now - active_since,
                )
                await connection.close("watchdog")
                self._forget(connection)
                return "watchdog"

    async def _follow_symbols(self, connection: FeedConnection) -> None:
        """Subscribes listed symbols' streams, then unsubscribes delisted ones (so the connection never carries
        more than the room the feed counted for it)."""
        wanted = self.streams
        carried = set(connection.streams)
        added = [stream for stream in wanted if stream not in carried]
        if added:
            await connection.subscribe(added)
            log.info(
                "binance group %d: subscribed %d stream(s) on connection %d",
                self.number,
                len(added),
                connection.id,
            )
        wanted_set = set(wanted)
        removed = [stream for stream in connection.streams if stream not in wanted_set]
        if removed:
            await connection.unsubscribe(removed)
            log.info(
                "binance group %d: unsubscribed %d stream(s) on connection %d",
                self.number,
                len(removed),
                connection.id,
            )
        self._retire_leaving()

    def _rotation_deadline(self) -> float:
        settings = self.feed.settings
        return (
            time.monotonic()
            + settings.rotation_interval_seconds
            + random.uniform(0, settings.rotation_jitter_seconds)
        )

    async def _switch_over(self, old: FeedConnection, reason: str) -> FeedConnection | None:
        """Make-before-break: open and subscribe a new connection, let both deliver until the new one has
        started and the old one has caught up, then close the old one."""
        feed = self.feed
        self._count_reconnect(reason)
        log.info("binance group %d: switching connection %d over (%s)", self.number, old.id, reason)
        self.state = ConnectionState.CONNECTION_STATE_RECONNECTING
        new = await self._attempt()
        if new is None:
            self.state = ConnectionState.CONNECTION_STATE_CONNECTED
            return None
        for state in self.states:
            state.hold()
        try:
            overlap_ends = time.monotonic() + feed.settings.switch_overlap_seconds
            while not new.frames and not new.closed.is_set() and time.monotonic() < overlap_ends:
                await asyncio.sleep(SWITCH_POLL_SECONDS)
            settle_ends = min(overlap_ends, time.monotonic() + SWITCH_SETTLE_SECONDS)
            while not new.closed.is_set() and not old.closed.is_set():
                now = time.monotonic()
                if now >= overlap_ends:
                    break
                if now >= settle_ends and new.frames and not any(s.has_pending() for s in self.states):
                    break
                await asyncio.sleep(SWITCH_POLL_SECONDS)
            if new.closed.is_set():
                log.warning(
                    "binance group %d: new connection %d closed during the switch-over (%s)",
                    self.number,
                    new.id,
                    new.reason,
                )
                self._forget(new)
                self.state = ConnectionState.CONNECTION_STATE_CONNECTED
                return None
            await old.close(reason)
            self._forget(old)
        finally:
            for state in self.states:
                state.release()
        log.info("binance group %d: switched from connection %d to %d", self.number, old.id, new.id)
        return new

    async def stop_reading(self) -> None:
        for connection in list(self.connections):
            await connection.stop_reading()

    async def close(self) -> None:
        for connection in list(self.connections):
            await connection.close("stopped")
            self._forget(connection)
        self.state = ConnectionState.CONNECTION_STATE_STOPPED


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class BinanceFeed:
    """The live feed. `await feed.run()` serves until `await feed.stop()`; `feed.status()` at any time."""

    name = FEED_NAME

    def __init__(self, settings: BinanceSettings, sink: RecordSink):
        self.settings = settings
        self.gap_log = GapLog(settings.recent_gaps, max_jump=settings.trade_id_max_jump)
        self.states: list[SymbolState] = []  # the symbols followed, in the order they were listed
        self.retiring: dict[str, SymbolState] = {}  # delisted, still parsed until no connection carries them
        self.buffer = PublishBuffer(settings.max_buffered_records)
        self.parser = FrameParser([], settings.stream_types, settings.time_unit == "MICROSECOND", self.buffer)
        self.backoff = Backoff(settings.backoff_base_seconds, settings.backoff_cap_seconds)
        self.publisher = Publisher(
            sink,
            self.buffer,
            settings.batch_size,
            settings.batch_linger_seconds,
            self.backoff,
            settings.publish_attempts,
        )
        self.backfill = GapBackfill(settings, [], self.buffer)
        self.gap_log.on_gap = self.backfill.request
        self.breaker = CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_cooldown_seconds)
        self.connection_attempts = SlidingWindowLimiter(
            settings.max_connection_attempts, settings.connection_attempt_window_seconds
        )
        self.symbols_per_connection = settings.max_streams_per_connection // len(settings.stream_types)
        self.listing = ExchangeListing(settings) if settings.all_symbols else None
        self.groups: list[ConnectionGroup] = []
        self.listed = self.delisted = self.over_limit = (
            0  # symbol changes followed; listings past max_symbols
        )
        self.reconnects: Counter[str] = Counter()
        self.task_restarts: Counter[str] = Counter()
        self.connect_failures = 0
        self.unpublished_at_stop = 0
        self._retired_messages = self._retired_trades = 0  # of symbols no longer followed (for the rates)
        self._group_tasks: dict[ConnectionGroup, asyncio.Task[None]] = {}
        self._crashed: asyncio.Future[None] | None = None
        self._running = False
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=RATE_WINDOW_SAMPLES)
        if not settings.all_symbols:
            self._follow({symbol: quote_asset(symbol) for symbol in settings.symbols})

    # ---- the symbol list -------------------------------------------------------------------------

    def _follow(self, listed: dict[str, str]) -> list[ConnectionGroup]:
        """Makes the followed symbols those of `listed` ({symbol: quote asset}); returns the groups left without
        a symbol, for the caller to stop. No await: the parser's routes and the groups change together."""
        current = {state.symbol for state in self.states}
        gone = current - listed.keys()
        # A symbol relisted while its old streams are still being unsubscribed waits for the next refresh.
        new = [symbol for symbol in listed if symbol not in current and symbol not in self.retiring]
        room = max(self.settings.max_symbols - (len(current) - len(gone)), 0)
        if len(new) > room:
            self.over_limit = len(new) - room
            log.warning(
                "binance: %d listed symbol(s) past max_symbols=%d not followed, e.g. %s",
                len(new) - room,
                self.settings.max_symbols,
                ", ".join(new[room : room + 5]),
            )
            new = new[:room]
        if gone:
            for group in self.groups:
                for state in group.remove(gone):
                    self.retiring[state.symbol] = state
            self.states = [state for state in self.states if state.symbol not in gone]
            self.delisted += len(gone)
            log.info("binance: %d symbol(s) delisted: %s", len(gone), ", ".join(sorted(gone)[:20]))
        added = [SymbolState(symbol, listed[symbol], self.gap_log) for symbol in new]
        if added:
            self.states.extend(added)
            self.backfill.states.update((state.symbol, state) for state in added)
            if self._running:
                self.listed += len(added)
                log.info("binance: %d symbol(s) listed: %s", len(added), ", ".join(new[:20]))
        self.parser.route(self.states + list(self.retiring.values()))
        self._place(added)
        return [group for group in self.groups if not group.states]

    def _place(self, states: list[SymbolState]) -> None:
        """New symbols go to connections with room (a delisted symbol's streams count until unsubscribed), the
        rest to new connections."""
        per_connection = self.symbols_per_connection
        for group in self.groups:
            room = per_connection - len(group.states) - len(group.leaving)
            if room > 0 and states:
                group.add(states[:room])
                states = states[room:]
        while states:
            numbers = {group.number for group in self.groups}
            group = ConnectionGroup(
                self, next(n for n in itertools.count() if n not in numbers), states[:per_connection]
            )
            states = states[per_connection:]
            self.groups.append(group)
            if self._running:
                self._start_group(group)

    def retire(self, states: list[SymbolState]) -> None:
        """Delisted symbols no connection carries any more: no longer parsed, backfilled or reported."""
        for state in states:
            if self.retiring.get(state.symbol) is state:
                del self.retiring[state.symbol]
                self.backfill.states.pop(state.symbol, None)
                self._retired_messages += state.messages
                self._retired_trades += state.trades
        self.parser.route(self.states + list(self.retiring.values()))

    async def _follow_listings(self) -> None:
        """symbols=ALL: reads exchangeInfo now and every symbols_refresh_seconds (after a failure, sooner)."""
        assert self.listing is not None
        while True:
            try:
                listed = await self.listing.read()
                if not listed:
                    raise ListingUnavailable("exchangeInfo lists no TRADING symbol", False)
            except ListingUnavailable as error:
                log.warning(
                    "binance: reading the symbol list failed (%s); %s",
                    error,
                    "keeping the current list" if self.states else "no symbol to follow yet",
                )
                if not self.listing.reads:
                    await asyncio.sleep(self.backoff.delay(self.listing.failures - 1))
                    continue
            else:
                for group in self._follow(listed):
                    await self._stop_group(group)
            await asyncio.sleep(self.settings.symbols_refresh_seconds)

    def _start_group(self, group: ConnectionGroup) -> None:
        task = asyncio.create_task(group.run(), name=f"binance-group-{group.number}")
        self._group_tasks[group] = task
        task.add_done_callback(self._group_ended)

    def _group_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        if self._crashed is not None and not self._crashed.done():
            self._crashed.set_exception(task.exception())  # type: ignore[arg-type]

    async def _stop_group(self, group: ConnectionGroup) -> None:
        """A group whose symbols were all delisted: its task ends and its connection closes."""
        self.groups.remove(group)
        task = self._group_tasks.pop(group, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await group.close()
        self.retire(group.leaving)
        group.leaving = []
        log.info("binance group %d: no symbol left; connection closed", group.number)

    def count_reconnect(self, reason: str) -> None:
        self.reconnects[reason] += 1

    # ---- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connects and publishes until stop(); then stops reading, flushes what was parsed, closes."""
        if self._running:
            raise RuntimeError("the feed is already running")
        if self._stop_requested.is_set():
            return
        self._running = True
        if self.listing is not None:
            log.info(
                "binance feed: every TRADING symbol of %s, endpoints %s",
                self.settings.rest_endpoint,
                ", ".join(self.settings.endpoints),
            )
        else:
            log.info(
                "binance feed: %d symbol(s) on %d connection(s), endpoints %s",
                len(self.states),
                len(self.groups),
                ", ".join(self.settings.endpoints),
            )
        draining = asyncio.Event()
        self._crashed = asyncio.get_running_loop().create_future()
        for group in self.groups:
            self._start_group(group)
        publisher = asyncio.create_task(self.publisher.run(draining), name="binance-publisher")
        sampler = asyncio.create_task(self._sample_rates(), name="binance-rates")
        backfill = asyncio.create_task(
            self._restarting("backfill", self.backfill.run), name="binance-backfill"
        )
        helpers = [sampler, backfill]
        if self.listing is not None:
            helpers.append(asyncio.create_task(self._follow_listings(), name="binance-listing"))
        stop = asyncio.create_task(self._stop_requested.wait())
        failure: BaseException | None = None
        try:
            waited: list[asyncio.Future[Any]] = [stop, publisher, self._crashed, *helpers[2:]]
            done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and not task.cancelled() and task.exception() is not None:
                    failure = task.exception()
                    log.error("binance feed: a task failed", exc_info=failure)
        finally:
            stop.cancel()
            for task in [*helpers, *self._group_tasks.values()]:
                task.cancel()
            await asyncio.gather(*helpers, *self._group_tasks.values(), return_exceptions=True)
            self._group_tasks.clear()
            for group in self.groups:
                await group.stop_reading()
            draining.set()
            await asyncio.wait([publisher], timeout=self.settings.stop_flush_timeout_seconds)
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            self.unpublished_at_stop = self.publisher.unpublished()
            if self.unpublished_at_stop:
                log.error(
                    "binance feed: %d parsed record(s) could not be published before stopping",
                    self.unpublished_at_stop,
                )
            for group in self.groups:
                await group.close()
            self._running = False
            self._stopped.set()
            log.info("binance feed stopped")
        if failure is not None:
            raise failure

    async def _restarting(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Runs a task that should never end (the backfill) until cancelled: if it fails or ends all the same, it
        is logged, counted and started again after a capped, jittered backoff, never left dead."""

        def restarting(state: RetryCallState) -> None:
            assert state.outcome is not None
            self.task_restarts[name] += 1
            log.error(
                "binance feed: %s failed; restarting it in %.1fs",
                name,
                state.upcoming_sleep,
                exc_info=state.outcome.exception(),
            )

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            before_sleep=restarting,
            wait=wait_random_exponential(
                self.settings.backoff_base_seconds, self.settings.backoff_cap_seconds
            ),
        ):
            with attempt:
                await run()
                raise RuntimeError(f"{name} ended")

    async def stop(self) -> None:
        """Graceful: stop reading, publish what was parsed, close the connections. Returns when done."""
        self._stop_requested.set()
        if self._running:
            await self._stopped.wait()

    async def _sample_rates(self) -> None:
        while True:
            self._samples.append((time.monotonic(), self.messages_received(), self.trades_received()))
            await asyncio.sleep(1.0)

    # ---- state -----------------------------------------------------------------------------------

    def messages_received(self) -> int:
        return self._retired_messages + sum(
            state.messages for state in [*self.states, *self.retiring.values()]
        )

    def trades_received(self) -> int:
        return self._retired_trades + sum(state.trades for state in [*self.states, *self.retiring.values()])

    def open_connections(self) -> list[FeedConnection]:
        return [c for group in self.groups for c in group.connections if c.is_open]

    def group_state(self, group: ConnectionGroup) -> int:
        return group.state if self._running else ConnectionState.CONNECTION_STATE_STOPPED

    def connection_state(self) -> int:
        if not self._running:
            return ConnectionState.CONNECTION_STATE_STOPPED
        states = {group.state for group in self.groups}
        if states == {ConnectionState.CONNECTION_STATE_CONNECTED}:
            return ConnectionState.CONNECTION_STATE_CONNECTED
        if ConnectionState.CONNECTION_STATE_RECONNECTING in states:
            return ConnectionState.CONNECTION_STATE_RECONNECTING
        return ConnectionState.CONNECTION_STATE_CONNECTING

    def _rates(self) -> tuple[float, float]:
        if not self._running or not self._samples:
            return 0.0, 0.0
        then, messages, trades = self._samples[0]
        elapsed = time.monotonic() - then
        if elapsed <= 0:
            return 0.0, 0.0
        return (self.messages_received() - messages) / elapsed, (self.trades_received() - trades) / elapsed

    def status(self) -> FeedStatus:
        messages_rate, trades_rate = self._rates()
        endpoints = list(
            dict.fromkeys(
                group.active.endpoint if group.active is not None else group.endpoint for group in self.groups
            )
        )
        status = FeedStatus(
            name=FEED_NAME,
            state=self.connection_state(),  # type: ignore[arg-type]
            endpoint=", ".join(endpoints),
            streams=[stream for group in self.groups for stream in group.streams],
            symbols=[state.symbol for state in self.states],
            messages_per_second=messages_rate,
            trades_per_second=trades_rate,
            reconnects_by_reason=dict(self.reconnects),
            gaps_detected=self.gap_log.detected,
            trades_missed=self.gap_log.missed,
            trades_backfilled=self.backfill.filled,
            sequence_resets=self.gap_log.resets,
            circuit_state=self.breaker.state,  # type: ignore[arg-type]
            connections=len(self.open_connections()),
        )
        for group in sorted(self.groups, key=lambda g: g.number):
            connection = status.connection_statuses.add(
                number=group.number,
                state=self.group_state(group),  # type: ignore[arg-type]
                endpoint=group.active.endpoint if group.active is not None else group.endpoint,
                streams=len(group.active.streams) if group.active is not None else 0,
                symbols=len(group.states),
                frames=group.frames,
                reconnects=group.reconnects,
            )
            if group.active is not None:
                set_timestamp(connection.connected_since, from_micros(int(group.connected_at * 1e6)))
        for state in heapq.nlargest(MOST_ACTIVE_SYMBOLS, self.states, key=lambda s: (s.trades, s.quotes)):
            status.most_active.add(symbol=state.symbol, trades=state.trades, quotes=state.quotes)
        last_event_us = max((state.last_event_us for state in self.states), default=0)
        if last_event_us:
            set_timestamp(status.last_event_time, from_micros(last_event_us))
        for gap in self.gap_log.recent:
            entry = status.recent_gaps.add(
                symbol=gap.symbol, first_missing=gap.first_missing, last_missing=gap.last_missing
            )
            set_timestamp(entry.detected_at, gap.detected_at)
        for reset in self.gap_log.recent_resets:
            reported = status.recent_resets.add(
                symbol=reset.symbol, previous_trade_id=reset.previous_trade_id, trade_id=reset.trade_id
            )
            set_timestamp(reported.detected_at, reset.detected_at)
        return status
