"""Per-symbol stream state: trade-id sequencing (duplicates and gaps), book-update order, counters.

Binance trade ids are consecutive per symbol, so the next id is always last + 1. A smaller id is a duplicate
(the same trade from the overlapping connection of a make-before-break switch-over) unless it fills a hole; a
larger one leaves a hole. While a switch-over is in progress the symbol is "held": holes stay pending, because
the other connection may still deliver those ids; when the hold ends, what is still missing is a gap. Outside a
switch-over a hole is a gap at once (after a reconnect: the trades sent while disconnected).

An id further than `max_jump` from the last one, ahead or behind (a corrupt frame, an exchange that reset or
renumbered, a restarted replay exchange), is neither a gap of a billion trades nor the start of endless
"duplicates": the sequence is reset there (re-baselined at that id), and the reset is reported and counted.
"""

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from k2.core.records import utc_now

log = logging.getLogger(__name__)
NO_TRADE_YET = -1
DEFAULT_MAX_TRADE_ID_JUMP = 1_000_000


@dataclass(frozen=True)
class Gap:
    """Trade ids first_missing..last_missing (inclusive) never arrived."""

    symbol: str
    first_missing: int
    last_missing: int
    detected_at: datetime

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True)
class SequenceReset:
    """The symbol's trade ids went from previous_trade_id to trade_id, further than a gap can be."""

    symbol: str
    previous_trade_id: int
    trade_id: int
    detected_at: datetime


class GapLog:
    """Every gap of the feed: totals, the most recent ones, a log line each, and `on_gap` (the REST backfill);
    and every sequence reset likewise."""

    def __init__(
        self,
        recent: int,
        on_gap: Callable[[Gap], None] | None = None,
        max_jump: int = DEFAULT_MAX_TRADE_ID_JUMP,
    ):
        self.recent: deque[Gap] = deque(maxlen=recent)
        self.detected = 0
        self.missed = 0
        self.on_gap = on_gap
        self.max_jump = max_jump
        self.recent_resets: deque[SequenceReset] = deque(maxlen=recent)
        self.resets = 0

    def record_reset(self, state: "SymbolState", trade_id: int) -> None:
        reset = SequenceReset(state.symbol, state.last_trade_id, trade_id, utc_now())
        self.recent_resets.append(reset)
        self.resets += 1
        state.resets += 1
        log.warning(
            "binance %s: trade id %d after %d, further than %d: the sequence is reset there, no gap reported",
            state.symbol,
            trade_id,
            state.last_trade_id,
            self.max_jump,
        )

    def record(self, state: "SymbolState", first_missing: int, last_missing: int) -> None:
        gap = Gap(state.symbol, first_missing, last_missing, utc_now())
        self.recent.append(gap)
        self.detected += 1
        self.missed += gap.size
        state.gaps += 1
        state.missed += gap.size
        log.warning(
            "binance %s: %d trade(s) missing, ids %d..%d", state.symbol, gap.size, first_missing, last_missing
        )
        if self.on_gap is not None:
            self.on_gap(gap)


class SymbolState:
    __slots__ = (
        "backfilled",
        "currency",
        "duplicate_quotes",
        "duplicate_trades",
        "gap_log",
        "gaps",
        "holds",
        "last_event_us",
        "last_trade_id",
        "last_update_id",
        "messages",
        "missed",
        "pending",
        "quote_stream",
        "quotes",
        "resets",
        "symbol",
        "trade_stream",
        "trades",
    )

    def __init__(self, symbol: str, currency: str, gap_log: GapLog):
        self.symbol = symbol
        self.currency = currency
        self.trade_stream = symbol.lower() + "@trade"
        self.quote_stream = symbol.lower() + "@bookTicker"
        self.gap_log = gap_log
        self.last_trade_id = NO_TRADE_YET
        self.last_update_id = -1
        self.pending: list[tuple[int, int]] = []  # holes that a held switch-over may still fill
        self.holds = 0
        self.messages = self.trades = self.quotes = self.duplicate_trades = self.duplicate_quotes = 0
        self.gaps = self.missed = self.backfilled = self.resets = 0
        self.last_event_us = 0

    def take_trade_id(self, trade_id: int) -> bool:
        """Whether the trade is new (advancing the sequence, filling a held hole, or resetting the sequence); a
        repeated one is counted. Called for valid trades only: a rejected frame's id never moves the sequence."""
        last = self.last_trade_id
        if trade_id == last + 1 or last == NO_TRADE_YET:
            self.last_trade_id = trade_id
            return True
        if trade_id > last:
            if trade_id - last > self.gap_log.max_jump:
                self._reset(trade_id)
            elif self.holds:
                self.pending.append((last + 1, trade_id - 1))
            else:
                self.gap_log.record(self, last + 1, trade_id - 1)
            self.last_trade_id = trade_id
            return True
        for index, (first, final) in enumerate(self.pending):
            if first <= trade_id <= final:
                pieces = [(lo, hi) for lo, hi in ((first, trade_id - 1), (trade_id + 1, final)) if lo <= hi]
                self.pending[index : index + 1] = pieces
                return True
        if last - trade_id > self.gap_log.max_jump:
            self._reset(trade_id)
            self.last_trade_id = trade_id
            return True
        self.duplicate_trades += 1
        return False

    def _reset(self, trade_id: int) -> None:
        """Re-baselines the sequence at `trade_id`; holes of the old one still pending are gaps."""
        for first, final in self.pending:
            self.gap_log.record(self, first, final)
        self.pending.clear()
        self.gap_log.record_reset(self, trade_id)

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        """Ends one hold; when none is left, holes nobody filled are gaps."""
        self.holds -= 1
        if self.holds == 0:
            for first, final in self.pending:
                self.gap_log.record(self, first, final)
            self.pending.clear()

    def has_pending(self) -> bool:
        return bool(self.pending)
