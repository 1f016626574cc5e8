"""`k2 demo`: a live terminal view of the running platform, refreshed in place and backed by real RPCs —
latest price and trade rate per symbol (SubscribeTrades), feed health and gaps (GetFeedStatus), Kafka lag and
Iceberg freshness (the writer's GetStatus) and each service's health."""

import asyncio
import fnmatch
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from k2.clients.aio import AsyncK2Client
from k2.clients.errors import K2Error
from k2.clients.models import FeedStatus, Reconnect, ServiceHealth, Trade, WriterStatus
from k2.clients.output import iso, text

RATE_WINDOW_SECONDS = 10.0
STATUS_INTERVAL_SECONDS = 2.0
RESUBSCRIBE_DELAY_SECONDS = 2.0
MAX_ROWS = 30


@dataclass
class SymbolActivity:
    exchange: str
    symbol: str
    first_price: Decimal
    last_price: Decimal
    last_time: datetime
    trades: int = 0
    # Arrival times (monotonic) within the rate window.
    arrivals: deque[float] = field(default_factory=deque)

    def add(self, trade: Trade, now: float) -> None:
        self.last_price, self.last_time = trade.price, trade.timestamp
        self.trades += 1
        self.arrivals.append(now)

    def rate(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] < now - RATE_WINDOW_SECONDS:
            self.arrivals.popleft()
        return len(self.arrivals) / RATE_WINDOW_SECONDS


@dataclass
class Dashboard:
    top: int = MAX_ROWS  # rows of the trades table: the busiest symbols
    match: str = ""  # a glob: only the symbols it matches are shown
    symbols: dict[tuple[str, str], SymbolActivity] = field(default_factory=dict)
    stream: str = "connecting"
    health: list[ServiceHealth] = field(default_factory=list)
    feeds: list[FeedStatus] | None = None
    feeds_error: str = ""
    writer: WriterStatus | None = None
    writer_error: str = ""

    def add(self, trade: Trade) -> None:
        now = time.monotonic()
        key = (trade.exchange, trade.symbol)
        if key not in self.symbols:
            self.symbols[key] = SymbolActivity(
                trade.exchange, trade.symbol, trade.price, trade.price, trade.timestamp
            )
        self.symbols[key].add(trade, now)

    def render(self) -> RenderableType:
        now = time.monotonic()
        header = Text.assemble(
            ("K2 live  ", "bold"),
            (iso(datetime.now(UTC).replace(microsecond=0)), "dim"),
            "   trades stream: ",
            (self.stream, "green" if self.stream == "live" else "yellow"),
            "   ",
            *self._health_marks(),
        )
        parts: list[RenderableType] = [
            header,
            self._trades_table(now),
            self._feeds_table(),
            self._writer_table(),
        ]
        return Group(*parts)

    def _health_marks(self) -> list[tuple[str, str]]:
        marks = []
        for health in self.health:
            marks.append(
                (f"{health.service} {'●' if health.serving else '○'} ", "green" if health.serving else "red")
            )
        return marks

    def _trades_table(self, now: float) -> Table:
        pattern = self.match.upper()
        shown = [s for s in self.symbols.values() if not pattern or fnmatch.fnmatchcase(s.symbol, pattern)]
        busiest = sorted(shown, key=lambda s: (-s.rate(now), -s.trades))[: self.top]
        matching = f" matching {self.match!r}" if self.match else ""
        title = "Trades (SubscribeTrades)"
        if len(shown) > len(busiest) or self.match:
            title += f": the {len(busiest)} busiest of {len(shown)} symbols{matching}, by trades/s"
        table = Table(title=title, expand=True)
        for name in ("exchange", "symbol", "last price", "change", "trades/s", "trades", "last trade (UTC)"):
            table.add_column(name, justify="left" if name in ("exchange", "symbol") else "right")
        for activity in busiest:
            change = activity.last_price - activity.first_price
            style = "green" if change > 0 else "red" if change < 0 else ""
            table.add_row(
                activity.exchange,
                activity.symbol,
                text(activity.last_price),
                Text(f"{'+' if change > 0 else ''}{text(change)}", style=style),
                f"{activity.rate(now):.1f}",
                str(activity.trades),
                iso(activity.last_time),
            )
        if not busiest:
            table.add_row(
                "",
                f"no symbol matches {self.match!r} yet" if self.symbols else "waiting for trades…",
                "",
                "",
                "",
                "",
                "",
            )
        return table

    def _feeds_table(self) -> RenderableType:
        if self.feeds is None:
            return Text(f"feeds: {self.feeds_error or 'waiting for GetFeedStatus…'}", style="yellow")
        table = Table(title="Feeds (GetFeedStatus)", expand=True)
        for name in (
            "feed",
            "state",
            "circuit",
            "symbols",
            "conns",
            "msg/s",
            "trades/s",
            "last event",
            "gaps",
            "missed",
            "reconnects",
            "recent gaps",
        ):
            table.add_column(name)
        for feed in self.feeds:
            gaps = ", ".join(f"{g.symbol} {g.first_missing}–{g.last_missing}" for g in feed.recent_gaps[-3:])
            table.add_row(
                feed.name,
                feed.state,
                feed.circuit_state,
                str(len(feed.symbols)),
                str(feed.connections),
                f"{feed.messages_per_second:.1f}",
                f"{feed.trades_per_second:.1f}",
                iso(feed.last_event_time) if feed.last_event_time else "",
                str(feed.gaps_detected),
                str(feed.trades_missed),
                str(sum(feed.reconnects_by_reason.values())),
                gaps,
            )
        if not self.feeds:
            table.add_row("(no feeds running)", *[""] * 11)
        return table

    def _writer_table(self) -> RenderableType:
        if self.writer is None:
            return Text(f"writer: {self.writer_error or 'waiting for GetStatus…'}", style="yellow")
        table = Table(
            title=f"Writer (GetStatus)  Kafka lag {self.writer.total_lag}  "
            f"dead-lettered {self.writer.dead_lettered}",
            expand=True,
        )
        for name in ("table", "rows", "files", "snapshot", "newest event (UTC)", "freshness s"):
            table.add_column(name)
        for t in self.writer.tables:
            table.add_row(
                t.table,
                str(t.rows),
                str(t.files),
                str(t.snapshot_id),
                iso(t.newest_event_time) if t.newest_event_time else "",
                f"{t.freshness_seconds:.1f}",
            )
        return table


async def _watch_trades(
    client: AsyncK2Client, dashboard: Dashboard, symbols: list[str], start: datetime | None
) -> None:
    token = ""

    def reconnecting(reconnect: Reconnect) -> None:
        dashboard.stream = f"reconnecting ({reconnect.error.code.name}: {reconnect.error.details[:60]})"

    while True:
        try:
            async for batch in client.subscribe_trades(
                symbols, start=start, resume_token=token, on_reconnect=reconnecting
            ):
                token = batch.resume_token or token
                dashboard.stream = "replay" if batch.replay else "live"
                for trade in batch.records:
                    dashboard.add(trade)
        except K2Error as error:  # refused (the subscription itself reconnects after UNAVAILABLE)
            dashboard.stream = f"stopped ({error.code.name}: {error.details[:60]})"
        await asyncio.sleep(RESUBSCRIBE_DELAY_SECONDS)


async def _poll_status(client: AsyncK2Client, dashboard: Dashboard) -> None:
    while True:
        dashboard.health = await client.health()
        try:
            dashboard.feeds, dashboard.feeds_error = await client.feed_status(), ""
        except K2Error as error:
            dashboard.feeds, dashboard.feeds_error = None, str(error)
        try:
            dashboard.writer, dashboard.writer_error = await client.writer_status(), ""
        except K2Error as error:
            dashboard.writer, dashboard.writer_error = None, str(error)
        await asyncio.sleep(STATUS_INTERVAL_SECONDS)


async def run_demo(
    client: AsyncK2Client,
    console: Console,
    *,
    symbols: list[str],
    start: datetime | None,
    duration: float | None,
    refresh_per_second: float = 4.0,
    top: int = MAX_ROWS,
    match: str = "",
) -> Dashboard:
    """Shows the live view until `duration` seconds pass (forever when None); returns the final state."""
    dashboard = Dashboard(top=top, match=match)
    tasks = [
        asyncio.create_task(_watch_trades(client, dashboard, symbols, start)),
        asyncio.create_task(_poll_status(client, dashboard)),
    ]
    deadline = None if duration is None else time.monotonic() + duration
    try:
        with Live(dashboard.render(), console=console, refresh_per_second=refresh_per_second) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1 / refresh_per_second)
                for task in tasks:
                    if task.done():
                        task.result()  # the watchers run until cancelled: surface an unexpected error
                live.update(dashboard.render())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return dashboard
