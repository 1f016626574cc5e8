"""Seeded market simulator: taker orders sweeping a one-tick book, per-symbol consecutive trade ids.

Each taker order picks a symbol (weighted by activity), a side (about 50/50, nudged back towards the
initial price so a long run does not drift away) and a number of fills; fills walk the book one tick
at a time, share the order's trade time, and are followed by an aggTrade per price level and a
bookTicker consistent with the last fill (bid < ask, one tick spread most of the time). Arrival
times (for real-time pacing) follow a two-state process: calm, and bursts at 12x the calm rate.
A large market (more than PICK_BY_BISECT symbols: the full-market profile) picks symbols from 32-bit weights by
bisection, gives each order `quotes_per_trade` bookTicker updates per fill (Binance's book changes several times
per trade), and has bursts of its own: now and then one symbol, any of them, takes a quarter of all orders for a
second or two, as a listed coin does when it suddenly moves.
Prices and quantities are integers in units of 10^-decimals and are printed from small caches, so the
per-trade Python work stays a handful of operations.
"""

import bisect
import math
import random
from collections.abc import Iterable

from .encoding import AGG_TRADE, BOOK_TICKER, TRADE
from .symbols import SymbolSpec

# Fills per taker order: mostly one, sometimes a sweep of several makers.
_FILL_COUNTS = [1] * 38 + [2] * 12 + [3] * 7 + [4] * 3 + [5, 6, 8, 12]
_QTY_POOL_BITS = 12
_BURST_MULTIPLIER = 12.0
_MEAN_CALM_SECONDS = 25.0
_MEAN_BURST_SECONDS = 1.5
_PRICE_CACHE_LIMIT = 200_000
PICK_BY_BISECT = 16
_MEAN_SYMBOL_BURST_US = 1_500_000
_MEAN_SYMBOL_CALM_US = 8_000_000


def _decimal_formatter(decimals: int):
    scale = 10**decimals
    if decimals == 0:
        return str
    template = f"%d.%0{decimals}d"

    def fmt(units: int) -> str:
        return template % divmod(units, scale)

    return fmt


# Pools by everything they are drawn from: symbols alike (a generated market's price tiers) share theirs, so
# thousands of symbols start in a moment.
_PoolCache = dict[tuple[object, ...], list[tuple[int, str]]]


def _quantity_pool(
    spec: SymbolSpec,
    rng: random.Random,
    median_notional: float,
    sigma: float,
    whale_share: float,
    cache: _PoolCache,
) -> list[tuple[int, str]]:
    key = (spec.initial_price, spec.qty_step, spec.qty_decimals, median_notional, sigma, whale_share)
    pool = cache.get(key)
    if pool is None:
        pool = cache[key] = _draw_quantity_pool(spec, rng, median_notional, sigma, whale_share)
    return pool


def _draw_quantity_pool(
    spec: SymbolSpec, rng: random.Random, median_notional: float, sigma: float, whale_share: float
) -> list[tuple[int, str]]:
    """Pre-drawn (units, text) quantities: log-normal notional, rounded to the lot step, many round lots."""
    fmt = _decimal_formatter(spec.qty_decimals)
    step_units = spec.units(spec.qty_step, spec.qty_decimals)
    price = float(spec.initial_price)
    unit_value = float(spec.qty_step)  # base asset per step
    pool = []
    for _ in range(1 << _QTY_POOL_BITS):
        notional = rng.lognormvariate(math.log(median_notional), sigma)
        if rng.random() < whale_share:
            notional *= rng.uniform(80.0, 400.0)
        steps = max(1, round(notional / price / unit_value))
        if rng.random() < 0.35:  # round lots: keep one or two significant digits
            keep = 10 ** max(0, len(str(steps)) - rng.choice((1, 2)))
            steps = max(1, round(steps / keep) * keep)
        units = steps * step_units
        pool.append((units, fmt(units)))
    return pool


class _Book:
    __slots__ = (
        "agg_stream",
        "aggs_generated",
        "anchor",
        "ask",
        "ask_qty",
        "bid",
        "bid_qty",
        "book_qty",
        "book_stream",
        "books_generated",
        "emit_aggs",
        "emit_books",
        "emit_trades",
        "fmt_price",
        "fmt_qty",
        "jump_ticks",
        "last_price",
        "last_qty",
        "next_agg_id",
        "next_trade_id",
        "price_text",
        "spec",
        "sweep_mask",
        "symbol",
        "tick",
        "trade_qty",
        "trade_stream",
        "trades_generated",
        "update_id",
    )

    def __init__(self, spec: SymbolSpec, rng: random.Random, pools: _PoolCache) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        prefix = spec.stream_prefix
        self.trade_stream = prefix + "@trade"
        self.agg_stream = prefix + "@aggTrade"
        self.book_stream = prefix + "@bookTicker"
        self.tick = spec.units(spec.tick_size, spec.price_decimals)
        self.anchor = spec.units(spec.initial_price, spec.price_decimals)
        self.bid = self.anchor
        self.ask = self.anchor + self.tick
        # Coarse ticks (> 1 bp of the price, e.g. SHIB) sit on deep levels that rarely get swept.
        self.sweep_mask = 31 if self.anchor < 10_000 * self.tick else 3
        self.jump_ticks = self.anchor * 1e-5 / self.tick
        self.trade_qty = _quantity_pool(spec, rng, spec.median_trade_notional, 1.9, spec.whale_share, pools)
        self.book_qty = _quantity_pool(spec, rng, spec.median_trade_notional * 15, 1.4, 0.0, pools)
        self.bid_qty = self.book_qty[0][1]
        self.ask_qty = self.book_qty[1][1]
        self.next_trade_id = spec.first_trade_id
        self.next_agg_id = spec.first_trade_id // 3  # aggregate ids run behind trade ids on Binance
        self.update_id = spec.first_book_update_id
        self.price_text: dict[int, str] = {}
        self.fmt_price = _decimal_formatter(spec.price_decimals)
        self.fmt_qty = _decimal_formatter(spec.qty_decimals)
        self.last_price = self.bid
        self.last_qty = self.trade_qty[0][1]
        # Tuples are only built for streams somebody listens to; ids and RNG draws advance regardless.
        self.emit_trades = self.emit_aggs = self.emit_books = True
        self.trades_generated = self.aggs_generated = self.books_generated = 0

    def price(self, units: int) -> str:
        text = self.price_text.get(units)
        if text is None:
            if len(self.price_text) > _PRICE_CACHE_LIMIT:
                self.price_text.clear()
            text = self.price_text[units] = self.fmt_price(units)
        return text


class MarketSimulator:
    """Generates taker orders as encoded-ready event tuples (see encoding.py)."""

    exhausted = False  # a simulated market never runs out (a RecordedStream does)

    def __init__(self, specs: Iterable[SymbolSpec], seed: int, quotes_per_trade: float = 0.0) -> None:
        self._rng = random.Random(seed)
        self._pools: _PoolCache = {}
        self._books = [_Book(spec, self._rng, self._pools) for spec in specs]
        if not self._books:
            raise ValueError("the market needs at least one symbol")
        self._by_symbol = {book.symbol: book for book in self._books}
        self.quotes_per_trade = quotes_per_trade
        self._burst_book: _Book | None = None
        self._burst_change_us = 0
        self._weigh()
        self._bursting = False
        self._regime_ends_at = self._rng.expovariate(1.0 / _MEAN_CALM_SECONDS)
        self.sim_time = 0.0  # seconds of simulated market time at the next order

    def _weigh(self) -> None:
        """The weighted pick over the books: 16-bit thresholds scanned (a few symbols), or 32-bit ones bisected."""
        total = sum(book.spec.taker_orders_per_second for book in self._books)
        self._calm_orders_per_second = total
        self._pick: list[tuple[int, _Book]] = []
        cumulative = 0.0
        for book in self._books:
            cumulative += book.spec.taker_orders_per_second / total
            self._pick.append((min(65536, round(cumulative * 65536)), book))
        self._pick[-1] = (65536, self._pick[-1][1])
        self._large = len(self._books) > PICK_BY_BISECT
        self._thresholds: list[int] = []
        cumulative = 0.0
        for book in self._books:
            cumulative += book.spec.taker_orders_per_second / total
            self._thresholds.append(min(1 << 32, round(cumulative * (1 << 32))))
        self._thresholds[-1] = 1 << 32

    def list_symbol(self, spec: SymbolSpec) -> None:
        """A listing: the symbol trades from now on."""
        if spec.symbol in self._by_symbol:
            raise ValueError(f"{spec.symbol} is listed already")
        book = _Book(spec, self._rng, self._pools)
        book.emit_trades = book.emit_aggs = book.emit_books = False  # until somebody subscribes
        self._books.append(book)
        self._by_symbol[spec.symbol] = book
        self._weigh()

    def delist_symbol(self, symbol: str) -> None:
        """A delisting: the symbol trades no more."""
        book = self._book(symbol)
        if len(self._books) == 1:
            raise ValueError("the market needs at least one symbol")
        self._books.remove(book)
        del self._by_symbol[book.symbol]
        if self._burst_book is book:
            self._burst_book = None
        self._weigh()

    @property
    def symbols(self) -> list[str]:
        return [book.symbol for book in self._books]

    def specs(self) -> list[SymbolSpec]:
        return [book.spec for book in self._books]

    def streams(self) -> list[str]:
        return [s for book in self._books for s in (book.trade_stream, book.agg_stream, book.book_stream)]

    def advance_clock(self) -> None:
        """Move sim_time to the next taker-order arrival (clustered: calm and burst regimes)."""
        rng = self._rng
        rate = self._calm_orders_per_second * (_BURST_MULTIPLIER if self._bursting else 1.0)
        self.sim_time += rng.expovariate(rate)
        while self.sim_time >= self._regime_ends_at:
            self._bursting = not self._bursting
            mean = _MEAN_BURST_SECONDS if self._bursting else _MEAN_CALM_SECONDS
            self._regime_ends_at += rng.expovariate(1.0 / mean)

    def emit_orders(self, min_trades: int, trade_time_us: int, out: list[tuple]) -> int:
        """Append whole taker orders (trades, an aggTrade per price level, then the bookTicker after
        the order) until at least `min_trades` trades were generated; return that count.

        This is the hot path at the max rate: everything is inlined on local variables.
        """
        rng = self._rng
        getbits = rng.getrandbits
        append = out.append
        pick_table = self._pick
        only_book = self._books[0] if len(self._books) == 1 else None
        pool_bits = _QTY_POOL_BITS
        produced = 0
        large = self._large
        if large and trade_time_us >= self._burst_change_us:
            self._toggle_burst(trade_time_us)
        burst_book = self._burst_book
        thresholds, books, bisect_right = self._thresholds, self._books, bisect.bisect_right
        quotes_per_trade = self.quotes_per_trade
        while produced < min_trades:
            bits = getbits(64)
            if large:
                if burst_book is not None and bits & 3 == 0:
                    book = burst_book
                else:
                    book = books[bisect_right(thresholds, getbits(32))]
            elif only_book is None:
                pick = bits & 0xFFFF
                for threshold, book in pick_table:
                    if pick < threshold:
                        break
            else:
                book = only_book
            tick = book.tick
            texts = book.price_text
            # Mean reversion: the taker side leans up to 15% towards the anchor, fully at 1% away from it.
            bias = (book.anchor - book.bid) * 983_040 // book.anchor
            if bias > 9830:
                bias = 9830
            elif bias < -9830:
                bias = -9830
            taker_buys = ((bits >> 16) & 0xFFFF) < 32768 + bias
            fills = _FILL_COUNTS[(bits >> 32) & 0x3F]
            sweep_bits = bits >> 38
            sweep_mask = book.sweep_mask
            qty_pool = book.trade_qty
            if taker_buys:
                price, step, maker = book.ask, tick, "false"
            else:
                price, step, maker = book.bid, -tick, "true"
            emit_trades = book.emit_trades
            emit_aggs = book.emit_aggs
            trade_stream = book.trade_stream
            symbol = book.symbol
            trade_id = book.next_trade_id
            agg_id = book.next_agg_id
            level_first_id = trade_id
            level_units = 0
            price_text = texts.get(price) or book.price(price)
            for fill in range(fills):
                units, qty_text = qty_pool[getbits(pool_bits)]
                if emit_trades:
                    append(
                        (trade_stream, TRADE, symbol, trade_id, price_text, qty_text, trade_time_us, maker)
                    )
                level_units += units
                trade_id += 1
                if fill + 1 < fills and (sweep_bits >> (fill & 7)) & sweep_mask == 0:  # level exhausted
                    if emit_aggs:
                        append(
                            (
                                book.agg_stream,
                                AGG_TRADE,
                                symbol,
                                agg_id,
                                price_text,
                                book.fmt_qty(level_units),
                                level_first_id,
                                trade_id - 1,
                                trade_time_us,
                                maker,
                            )
                        )
                    agg_id += 1
                    level_first_id, level_units = trade_id, 0
                    price += step
                    price_text = texts.get(price) or book.price(price)
            if emit_aggs:
                append(
                    (
                        book.agg_stream,
                        AGG_TRADE,
                        symbol,
                        agg_id,
                        price_text,
                        book.fmt_qty(level_units),
                        level_first_id,
                        trade_id - 1,
                        trade_time_us,
                        maker,
                    )
                )
            agg_id += 1
            book.aggs_generated += agg_id - book.next_agg_id
            book.next_agg_id = agg_id
            book.next_trade_id = trade_id
            book.trades_generated += fills
            book.last_price = price
            book.last_qty = qty_text
            produced += fills
            # Makers re-quote around the last fill, sometimes after the price jumped a few ticks in the
            # taker's direction; the spread is one tick most of the time.
            if (bits >> 54) & 3 == 0:
                jump = book.jump_ticks
                if jump >= 1.0:
                    price += step * (1 + getbits(16) % int(jump))
                elif rng.random() < jump:
                    price += step
            wide = tick if (bits >> 56) & 0xF == 0 else 0
            book_qty = book.book_qty
            if taker_buys:
                book.ask = price
                book.bid = price - tick - wide
                book.ask_qty = book_qty[getbits(pool_bits)][1]
            else:
                book.bid = price
                book.ask = price + tick + wide
                book.bid_qty = book_qty[getbits(pool_bits)][1]
            if quotes_per_trade:
                quote_updates = max(1, int(fills * quotes_per_trade + rng.random()))
            else:
                quote_updates = 1 + ((bits >> 60) & 1)  # sometimes a quote-only update before the next order
            book.books_generated += quote_updates
            for update in range(quote_updates):
                if update:
                    if (bits >> 61) & 1:
                        book.bid_qty = book_qty[getbits(pool_bits)][1]
                    else:
                        book.ask_qty = book_qty[getbits(pool_bits)][1]
                book.update_id += 1 + getbits(4)  # other depth levels change in between
                if book.emit_books:
                    append(
                        (
                            book.book_stream,
                            BOOK_TICKER,
                            symbol,
                            book.update_id,
                            texts.get(book.bid) or book.price(book.bid),
                            book.bid_qty,
                            texts.get(book.ask) or book.price(book.ask),
                            book.ask_qty,
                        )
                    )
        return produced

    def _toggle_burst(self, now_us: int) -> None:
        rng = self._rng
        if self._burst_book is None:
            self._burst_book = rng.choice(self._books)
            self._burst_change_us = now_us + int(rng.expovariate(1.0 / _MEAN_SYMBOL_BURST_US))
        else:
            self._burst_book = None
            self._burst_change_us = now_us + int(rng.expovariate(1.0 / _MEAN_SYMBOL_CALM_US))

    def set_wanted_streams(self, streams: set[str] | frozenset[str]) -> None:
        """Build event tuples only for these streams (the market itself evolves identically)."""
        for book in self._books:
            book.emit_trades = book.trade_stream in streams
            book.emit_aggs = book.agg_stream in streams
            book.emit_books = book.book_stream in streams

    def generated_counts(self) -> dict[str, int]:
        counts = {}
        for book in self._books:
            counts[book.trade_stream] = book.trades_generated
            counts[book.agg_stream] = book.aggs_generated
            counts[book.book_stream] = book.books_generated
        return counts

    def take_trade(self, symbol: str) -> tuple[int, str, str]:
        """Consume the next trade id for an injected (malformed) trade: (id, last price, last qty)."""
        book = self._book(symbol)
        trade_id = book.next_trade_id
        book.next_trade_id += 1
        return trade_id, book.price(book.last_price), book.last_qty

    def renumber_trades(self, symbol: str, next_id: int) -> None:
        """The symbol's trades continue from `next_id` (an exchange reset, or a jump of its ids)."""
        self._book(symbol).next_trade_id = next_id

    def _book(self, symbol: str) -> _Book:
        try:
            return self._by_symbol[symbol.upper()]
        except KeyError:
            raise ValueError(
                f"symbol {symbol!r} is not in this market ({', '.join(self._by_symbol)})"
            ) from None
