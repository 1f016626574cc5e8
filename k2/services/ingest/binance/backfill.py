"""Filling trade-id gaps from Binance's REST API (`GET /api/v3/historicalTrades`), where it is reachable.

Binance does not replay a stream: trades sent while a connection was down are lost to it. Each detected gap is
queued (a bounded queue: past it, a gap stays reported and unfilled) and fetched by trade id, a page of at most
1,000 trades at a time, up to `backfill_max_trades_per_gap` per gap. A filled trade becomes the same v2 record the
stream would have produced — same trade_id and message_id (uuid5 of the trade id, which names the symbol), so a copy that also arrived on
a stream is recognisable downstream — with vendor_data source=rest_backfill, and goes through the feed's
publisher like any other. Requests are retried a bounded number of times with jittered backoff; when the API
cannot be reached (offline, or blocked) the gap stays reported, counted as not filled, and the feed carries on.
A page is checked before any of it is used: a list of trades, each an object with an integer id and the fields
a record needs; a page that is not is retried like an unreachable API, then the gap is counted `bad_page`.
Whatever else goes wrong with one gap is logged and counted `failed`: no gap ends the backfill.
"""

import asyncio
import http.client
import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from k2.core import avro
from k2.core.records import TRADE, FieldError, Record
from k2.core.timestamps import from_micros

from .parsing import ASSET_CLASS, EXCHANGE, exact_decimal, message_id, trade_id_of
from .publishing import PublishBuffer
from .sequencing import Gap, SymbolState
from .settings import BinanceSettings

log = logging.getLogger(__name__)
PAGE_LIMIT = 1000  # historicalTrades' maximum
MAX_RESPONSE_BYTES = 4 * 2**20  # a full page is ~150 kB


class RestUnavailable(Exception):
    """The REST API refused or could not be reached; the message says which."""

    def __init__(self, reason: str, retriable: bool):
        super().__init__(reason)
        self.retriable = (
            retriable  # network and server-side trouble; not a 4xx (bad symbol, banned, rate limited)
        )


class BadPage(RestUnavailable):
    """An answer that is not a page of trades (retried: a proxy or a server in trouble may send anything)."""

    def __init__(self, reason: str):
        super().__init__(reason, retriable=True)


TRADE_FIELDS = ("price", "qty", "time", "isBuyerMaker")  # besides the id: what a record is made of


def checked_page(body: Any) -> list[dict[str, Any]]:
    """`body` if it is a list of trades, each with an integer id and the fields a record needs; else BadPage."""
    if not isinstance(body, list):
        raise BadPage(f"not a list: {str(body)[:80]}")
    for position, item in enumerate(body):
        if not isinstance(item, dict) or type(item.get("id")) is not int:
            raise BadPage(f"item {position} is not a trade with an integer id: {str(item)[:80]}")
        missing = [name for name in TRADE_FIELDS if name not in item]
        if missing:
            raise BadPage(f"item {position} (id {item['id']}) lacks {', '.join(missing)}")
    return body


def _retriable(error: BaseException) -> bool:
    return isinstance(error, RestUnavailable) and error.retriable


class GapBackfill:
    def __init__(self, settings: BinanceSettings, states: list[SymbolState], buffer: PublishBuffer):
        self.settings = settings
        self.states = {state.symbol: state for state in states}
        self.buffer = buffer
        self.queue: asyncio.Queue[Gap] = asyncio.Queue(maxsize=settings.backfill_max_pending_gaps)
        self.scale = 1 if settings.time_unit == "MICROSECOND" else 1000  # REST times → µs
        self.filled = 0  # trades recovered and queued for Kafka
        self.outcomes: Counter[str] = (
            Counter()
        )  # per gap: filled, partly_filled, unavailable, not_queued, delisted
        self._tls = ssl.create_default_context()  # certificate and host name verification, always

    def request(self, gap: Gap) -> None:
        """Called for each detected gap; never blocks the stream."""
        if not self.settings.backfill_enabled:
            return
        try:
            self.queue.put_nowait(gap)
        except asyncio.QueueFull:
            self.outcomes["not_queued"] += 1
            log.warning(
                "binance %s: backfill queue full; ids %d..%d stay unfilled",
                gap.symbol,
                gap.first_missing,
                gap.last_missing,
            )

    async def run(self) -> None:
        while True:
            gap = await self.queue.get()
            try:
                outcome = await self.fill(gap)
            except BadPage as error:
                outcome = "bad_page"
                log.warning(
                    "binance %s: ids %d..%d not backfilled: the REST API answered a bad page %d time(s): %s",
                    gap.symbol,
                    gap.first_missing,
                    gap.last_missing,
                    self.settings.backfill_attempts,
                    error,
                )
            except RestUnavailable as error:
                outcome = "unavailable"
                log.warning(
                    "binance %s: ids %d..%d not backfilled: %s",
                    gap.symbol,
                    gap.first_missing,
                    gap.last_missing,
                    error,
                )
            except Exception:
                outcome = "failed"
                log.exception(
                    "binance %s: backfilling ids %d..%d failed",
                    gap.symbol,
                    gap.first_missing,
                    gap.last_missing,
                )
            self.outcomes[outcome] += 1

    async def fill(self, gap: Gap) -> str:
        state = self.states.get(gap.symbol)
        if state is None:  # delisted since the gap was detected
            return "delisted"
        last = min(gap.last_missing, gap.first_missing + self.settings.backfill_max_trades_per_gap - 1)
        next_id, recovered = gap.first_missing, 0
        while next_id <= last:
            page = await self._page(gap.symbol, next_id, min(PAGE_LIMIT, last - next_id + 1))
            trades = [trade for trade in page if next_id <= trade["id"] <= last]
            if not trades:
                break  # older than the API keeps, or not there at all
            for trade in trades:
                await self.buffer.wait_for_space()
                try:
                    self.buffer.trades.append(self._message(state, trade))
                except (FieldError, TypeError, ValueError, OverflowError) as error:
                    log.warning("binance %s: backfilled trade %s refused: %s", gap.symbol, trade["id"], error)
                    continue
                recovered += 1
                self.filled += 1  # counted as they go: a later page failing takes nothing back
                state.backfilled += 1
            next_id = max(trade["id"] for trade in trades) + 1
        log.info(
            "binance %s: backfilled %d of %d missing trade(s), ids %d..%d",
            gap.symbol,
            recovered,
            gap.size,
            gap.first_missing,
            gap.last_missing,
        )
        return "filled" if recovered == gap.size else "partly_filled"

    async def _page(self, symbol: str, from_id: int, limit: int) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"symbol": symbol, "fromId": from_id, "limit": limit})
        url = f"{self.settings.rest_endpoint}/api/v3/historicalTrades?{query}"
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.backfill_attempts),
            wait=wait_exponential_jitter(
                multiplier=self.settings.backoff_base_seconds, max=self.settings.backoff_cap_seconds
            ),
            retry=retry_if_exception(_retriable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await asyncio.to_thread(self._get, url)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _get(self, url: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(url, headers={"X-MBX-TIME-UNIT": self.settings.time_unit})
        try:
            with urllib.request.urlopen(
                request,
                timeout=self.settings.open_timeout_seconds,
                context=self._tls if url.startswith("https:") else None,
            ) as response:
                data = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as error:
            raise RestUnavailable(
                f"HTTP {error.code} from {self.settings.rest_endpoint}", error.code >= 500
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise RestUnavailable(f"{self.settings.rest_endpoint} unreachable ({error})", True) from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise RestUnavailable(
                f"an answer above {MAX_RESPONSE_BYTES} bytes from {self.settings.rest_endpoint}", False
            )
        try:
            body = json.loads(data, parse_float=str)  # numbers stay exact (Binance sends decimals as strings)
        except (ValueError, RecursionError):
            raise RestUnavailable(
                f"an answer that is not JSON from {self.settings.rest_endpoint}", False
            ) from None
        return checked_page(body)

    def _message(self, state: SymbolState, trade: dict[str, Any]) -> tuple[bytes, bytes, int]:
        trade_id = trade["id"]
        price, quantity = exact_decimal("price", trade["price"]), exact_decimal("quantity", trade["qty"])
        if price <= 0 or quantity <= 0:
            raise FieldError("price" if price <= 0 else "quantity", "must be positive")
        maker = trade["isBuyerMaker"]
        if type(maker) is not bool:
            raise FieldError("side", f"isBuyerMaker: not a boolean: {maker!r:.40}")
        trade_id_text = trade_id_of(state.symbol, trade_id)
        received_us = time.time_ns() // 1000
        record: Record = {
            "message_id": message_id(trade_id_text),
            "trade_id": trade_id_text,
            "symbol": state.symbol,
            "exchange": EXCHANGE,
            "asset_class": ASSET_CLASS,
            "timestamp": from_micros(int(trade["time"]) * self.scale),
            "price": price,
            "quantity": quantity,
            "currency": state.currency,
            "side": "SELL" if maker else "BUY",
            "trade_conditions": [],
            "source_sequence": trade_id,
            "ingestion_timestamp": from_micros(received_us),
            "platform_sequence": None,
            "vendor_data": {"is_buyer_maker": "true" if maker else "false", "source": "rest_backfill"},
        }
        return state.symbol.encode(), avro.encode(TRADE, record), received_us
