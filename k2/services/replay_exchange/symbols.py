"""Instrument table for the simulated market: tick sizes, lot steps and how Binance prints each symbol.

Binance Spot prints USDT-quoted prices with 8 decimals and quantities with the base asset's precision
(8 for BTC/ETH/BNB/SOL, 2 for meme tokens such as SHIB and PEPE). Starting ids are of the order of
magnitude seen on the live exchange, so consumers see realistic widths.
"""

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
        SymbolSpec("BTCUSDT", Decimal("97123.45"), Decimal("0.01"), Decimal("0.00001"), 8, 8,
                   4_712_345_678, 68_123_456_789, 12.0, 300.0),
        SymbolSpec("ETHUSDT", Decimal("3412.67"), Decimal("0.01"), Decimal("0.0001"), 8, 8,
                   2_634_567_890, 52_345_678_901, 8.0, 250.0),
        SymbolSpec("BNBUSDT", Decimal("689.40"), Decimal("0.01"), Decimal("0.001"), 8, 8,
                   1_056_789_012, 21_098_765_432, 3.0, 150.0),
        SymbolSpec("SOLUSDT", Decimal("187.32"), Decimal("0.01"), Decimal("0.001"), 8, 8,
                   1_298_765_432, 25_432_109_876, 5.0, 150.0),
        SymbolSpec("SHIBUSDT", Decimal("0.00001234"), Decimal("0.00000001"), Decimal(1), 8, 2,
                   712_345_678, 13_579_246_801, 2.0, 120.0, whale_share=0.004),
        SymbolSpec("PEPEUSDT", Decimal("0.00000950"), Decimal("0.00000001"), Decimal(1), 8, 2,
                   498_765_432, 11_223_344_556, 2.0, 100.0, whale_share=0.004),
    )
}


def symbol_spec(symbol: str) -> SymbolSpec:
    try:
        return SYMBOLS[symbol.upper()]
    except KeyError:
        raise ValueError(f"unknown symbol {symbol!r}; the simulator knows {', '.join(SYMBOLS)}") from None
