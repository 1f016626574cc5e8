"""OHLCV bars from trades, exactly: prices and quantities as integers of their decimal units (decimal(38,18) is an
integer count of 10^-18), so sums and products never round.

- A bar covers the trades with start <= timestamp < start + interval, bars aligned to UTC boundaries (epoch
  multiples of the interval; days start at 00:00 UTC). Intervals without trades have no bar. The first and last
  bar hold only the trades inside the requested [start, end).
- open/close: the first/last trade in the row order (time, then the exchange's sequence).
- VWAP = Σ(price × quantity) / Σ(quantity), rounded half-even to 18 decimal places (the scale of every K2 decimal).
"""

import sys
from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from k2.core.protos import decimal_text, set_timestamp
from k2.query.v1 import query_pb2
from k2.services.query.selection import from_micros

COLUMNS = ["timestamp", "exchange", "symbol", "source_sequence", "message_id", "price", "quantity"]


def decimal_units(column: pa.ChunkedArray | pa.Array) -> tuple[list[int], int]:
    """(unscaled integers, scale) of a decimal128 column without nulls."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    data = memoryview(array.buffers()[1])[array.offset * 16:(array.offset + len(array)) * 16]
    from_bytes = int.from_bytes
    order = sys.byteorder
    return [from_bytes(data[i:i + 16], order, signed=True) for i in range(0, len(data), 16)], array.type.scale


def divide_half_even(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2):
        quotient += 1
    return quotient


@dataclass(slots=True)
class _Bar:
    start: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    notional: int  # Σ price × quantity, in units of 10^-(2 × scale)
    count: int


class BarBuilder:
    def __init__(self, interval: int):
        self.interval = interval
        self.bars: list[_Bar] = []
        self.scale = 18

    def add(self, rows: pa.Table) -> None:
        """Rows in the row order, later than any added before."""
        if not rows.num_rows:
            return
        timestamps = pc.cast(rows["timestamp"], pa.int64()).to_pylist()
        prices, self.scale = decimal_units(rows["price"])
        quantities, quantity_scale = decimal_units(rows["quantity"])
        if quantity_scale != self.scale:
            raise ValueError("price and quantity must share one decimal scale")
        interval = self.interval
        bars = self.bars
        bar = bars[-1] if bars else None
        for timestamp, price, quantity in zip(timestamps, prices, quantities, strict=True):
            start = timestamp - timestamp % interval
            if bar is None or bar.start != start:
                bar = _Bar(start, price, price, price, price, 0, 0, 0)
                bars.append(bar)
            elif price > bar.high:
                bar.high = price
            elif price < bar.low:
                bar.low = price
            bar.close = price
            bar.volume += quantity
            bar.notional += price * quantity
            bar.count += 1

    def _text(self, units: int) -> str:
        return decimal_text(Decimal(f"{units}E-{self.scale}"))  # exact: no context rounding

    def protos(self) -> list[query_pb2.Bar]:
        result = []
        for bar in self.bars:
            message = query_pb2.Bar(open=self._text(bar.open), high=self._text(bar.high), low=self._text(bar.low),
                                    close=self._text(bar.close), volume=self._text(bar.volume),
                                    vwap=self._text(divide_half_even(bar.notional, bar.volume)),
                                    trade_count=bar.count)
            set_timestamp(message.start, from_micros(bar.start))
            result.append(message)
        return result
