"""Instrument table for the simulated market: tick sizes, lot steps and how Binance prints each symbol.

Binance Spot prints USDT-quoted prices with 8 decimals and quantities with the base asset's precision
(8 for BTC/ETH/BNB/SOL, 2 for meme tokens such as SHIB and PEPE). Starting ids are of the order of
magnitude seen on the live exchange, so consumers see realistic widths.
"""

import dataclasses
import random
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class SymbolSpec:
    symbol: str
    initial_price: Decimal
    tick_size: Decimal
    qty_step: Decimal
    price_decimals: int
    qty_decimals: int
    first_trade_id: int
    first_book_update_id: int
    taker_orders_per_second: float  # calm-market arrival rate; bursts multiply it
    median_trade_notional: float  # USDT, median of the log-normal trade size
    whale_share: float = 0.0  # share of trades ~100x the usual size (SHIB quantities above 10 integer digits)
    base_asset: str = ""
    quote_asset: str = "USDT"

    @property
    def stream_prefix(self) -> str:
        return self.symbol.lower()

    def units(self, value: Decimal, decimals: int) -> int:
        scaled = value.scaleb(decimals)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"{self.symbol}: {value} has more than {decimals} decimals")
        return int(scaled)


SYMBOLS: dict[str, SymbolSpec] = {
    spec.symbol: spec
    for spec in (
        SymbolSpec(
            "BTCUSDT",
            Decimal("97123.45"),
            Decimal("0.01"),
            Decimal("0.00001"),
            8,
            8,
            4_712_345_678,
            68_123_456_789,
            12.0,
            300.0,
        ),
        SymbolSpec(
            "ETHUSDT",
            Decimal("3412.67"),
            Decimal("0.01"),
            Decimal("0.0001"),
            8,
            8,
            2_634_567_890,
            52_345_678_901,
            8.0,
            250.0,
        ),
        SymbolSpec(
            "BNBUSDT",
            Decimal("689.40"),
            Decimal("0.01"),
            Decimal("0.001"),
            8,
            8,
            1_056_789_012,
            21_098_765_432,
            3.0,
            150.0,
        ),
        SymbolSpec(
            "SOLUSDT",
            Decimal("187.32"),
            Decimal("0.01"),
            Decimal("0.001"),
            8,
            8,
            1_298_765_432,
            25_432_109_876,
            5.0,
            150.0,
        ),
        SymbolSpec(
            "SHIBUSDT",
            Decimal("0.00001234"),
            Decimal("0.00000001"),
            Decimal(1),
            8,
            2,
            712_345_678,
            13_579_246_801,
            2.0,
            120.0,
            whale_share=0.004,
        ),
        SymbolSpec(
            "PEPEUSDT",
            Decimal("0.00000950"),
            Decimal("0.00000001"),
            Decimal(1),
            8,
            2,
            498_765_432,
            11_223_344_556,
            2.0,
            100.0,
            whale_share=0.004,
        ),
    )
}


# Quote assets of the generated market and their share of its symbols (Binance Spot's mix, roughly).
_QUOTES = (
    ("USDT", 0.45),
    ("USDC", 0.12),
    ("FDUSD", 0.08),
    ("BTC", 0.14),
    ("ETH", 0.05),
    ("BNB", 0.04),
    ("TRY", 0.05),
    ("EUR", 0.03),
    ("BRL", 0.02),
    ("JPY", 0.02),
)
# (initial price, tick size, lot step): from sub-cent tokens to large caps.
_PRICE_TIERS = (
    (Decimal("0.00001234"), Decimal("0.00000001"), Decimal(1)),
    (Decimal("0.004567"), Decimal("0.000001"), Decimal("0.1")),
    (Decimal("0.3456"), Decimal("0.0001"), Decimal("0.1")),
    (Decimal("2.345"), Decimal("0.001"), Decimal("0.01")),
    (Decimal("34.56"), Decimal("0.01"), Decimal("0.001")),
    (Decimal("456.7"), Decimal("0.1"), Decimal("0.0001")),
)
ZIPF_EXPONENT = 1.0
# The most active symbol's taker orders per second in the generated market (the total scales with --rate anyway).
TOP_ORDERS_PER_SECOND = 12.0


def _base_name(index: int) -> str:
    """X + four letters: XAAAA, XAAAB, ... (never a real asset's name)."""
    letters = ""
    for _ in range(4):
        index, digit = divmod(index, 26)
        letters = chr(ord("A") + digit) + letters
    if index:
        raise ValueError("at most 26**4 generated symbols")
    return "X" + letters


def generated_spec(symbol: str, base: str, quote: str, rank: int, rng: random.Random) -> SymbolSpec:
    price, tick, step = _PRICE_TIERS[rng.randrange(len(_PRICE_TIERS))]
    return SymbolSpec(
        symbol,
        price,
        tick,
        step,
        8,
        8,
        rng.randrange(1_000_000, 900_000_000),
        rng.randrange(1_000_000, 9_000_000_000),
        TOP_ORDERS_PER_SECOND / rank**ZIPF_EXPONENT,
        rng.choice((20.0, 50.0, 100.0)),
        base_asset=base,
        quote_asset=quote,
    )


def full_market(count: int, seed: int) -> list[SymbolSpec]:
    """`count` symbols, most active first: the six real ones, then generated ones whose taker-order rates
    follow Zipf's law (rank r: TOP_ORDERS_PER_SECOND / r), so a few symbols carry most trades."""
    rng = random.Random(seed)
    real = [
        dataclasses.replace(
            spec,
            taker_orders_per_second=TOP_ORDERS_PER_SECOND / rank**ZIPF_EXPONENT,
            base_asset=spec.symbol.removesuffix("USDT"),
        )
        for rank, spec in enumerate(SYMBOLS.values(), start=1)
    ][:count]
    quotes, weights = zip(*_QUOTES, strict=True)
    specs = list(real)
    for index in range(count - len(real)):
        base, quote = _base_name(index), rng.choices(quotes, weights)[0]
        specs.append(generated_spec(base + quote, base, quote, len(specs) + 1, rng))
    return specs


def listed_spec(symbol: str, seed: int) -> SymbolSpec:
    """The spec of a symbol listed while running: a known one, or a generated one with a tail symbol's activity."""
    symbol = symbol.upper()
    if symbol in SYMBOLS:
        return SYMBOLS[symbol]
    quote = next(
        (q for q, _ in sorted(_QUOTES, key=lambda q: -len(q[0])) if symbol.endswith(q) and symbol != q), None
    )
    if quote is None:
        raise ValueError(f"{symbol}: no quote asset suffix ({', '.join(q for q, _ in _QUOTES)})")
    return generated_spec(symbol, symbol.removesuffix(quote), quote, 1000, random.Random(f"{seed}:{symbol}"))


def symbol_spec(symbol: str) -> SymbolSpec:
    try:
        return SYMBOLS[symbol.upper()]
    except KeyError:
        raise ValueError(f"unknown symbol {symbol!r}; the simulator knows {', '.join(SYMBOLS)}") from None
