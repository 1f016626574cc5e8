"""OHLCV bars from trades, exactly: prices and quantities as integers of their decimal units (decimal(38,18) is an
integer count of 10^-18), so sums and products never round.

- A bar covers the trades with start <= timestamp < start + interval, bars aligned to UTC boundaries (epoch
  multiples of the interval; days start at 00:00 UTC). Intervals without trades have no bar. The first and last
  bar hold only the trades inside the requested [start, end).
- open/close: the first/last trade in the row order (time, then the exchange's sequence).
- VWAP = Σ(price × quantity) / Σ(quantity), rounded half-even to 18 decimal places (the scale of every K2 decimal).

Each batch of rows is aggregated by Arrow kernels (a group per bar: min, max, sums in decimal256, which hold every
sum exactly while the products and their count stay within its 76 digits, checked first), then merged into the
bars in Python, per bar; a batch whose values could overflow that takes the per-row integer path instead.
"""

import itertools
import sys
from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from k2.core.protos import decimal_text, set_timestamp
from k2.core.timestamps import from_micros
from k2.query.v1 import query_pb2

# decimal256 holds 76 digits: factors of at most FACTOR_DIGITS multiply exactly (scale 36), and their sum stays
# exact while it is below 10^(76 - 36)
FACTOR_DIGITS = 37
EXACT_FACTOR_LIMIT = 10**19  # |price|, quantity below this fit FACTOR_DIGITS at scale 18
EXACT_NOTIONAL_LIMIT = 10**40
COLUMNS = ["timestamp", "exchange", "symbol", "source_sequence", "message_id", "price", "quantity"]


def decimal_units(column: pa.ChunkedArray | pa.Array) -> tuple[list[int], int]:
    """(unscaled integers, scale) of a decimal128 or decimal256 column without nulls, read from its buffer: no
    Decimal objects."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.byte_width
    data = memoryview(array.buffers()[1])[array.offset * width : (array.offset + len(array)) * width]
    from_bytes = int.from_bytes
    order = sys.byteorder
    return [
        from_bytes(data[i : i + width], order, signed=True) for i in range(0, len(data), width)
    ], array.type.scale


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
        price, quantity = rows["price"], rows["quantity"]
        if price.type.scale != quantity.type.scale:
            raise ValueError("price and quantity must share one decimal scale")
        self.scale = price.type.scale
        largest = (
            int(
                max(
                    abs(value.as_py() or 0)
                    for value in (*pc.min_max(price).values(), *pc.min_max(quantity).values())
                )
            )
            + 1
        )
        if largest >= EXACT_FACTOR_LIMIT or largest * largest * rows.num_rows >= EXACT_NOTIONAL_LIMIT:
            self._add_by_row(rows)
            return
        micros = pc.cast(rows["timestamp"], pa.int64())
        starts = pc.subtract(micros, pc.modulo(micros, self.interval))
        narrow = pa.decimal256(FACTOR_DIGITS, self.scale)
        table = pa.table(
            {
                "start": starts,
                "price": price,
                "volume": quantity.cast(pa.decimal256(76, self.scale)),
                "notional": pc.multiply(price.cast(narrow), quantity.cast(narrow)),
            }
        )
        groups = table.group_by("start", use_threads=False).aggregate(
            [("price", "min"), ("price", "max"), ("volume", "sum"), ("notional", "sum"), ("start", "count")]
        )
        counts = groups["start_count"].to_pylist()
        lasts = list(itertools.accumulate(counts))
        firsts = [last - count for last, count in zip(lasts, counts, strict=True)]
        opens, _ = decimal_units(pc.take(price, pa.array(firsts)))
        closes, _ = decimal_units(pc.take(price, pa.array([last - 1 for last in lasts])))
        lows, _ = decimal_units(groups["price_min"])
        highs, _ = decimal_units(groups["price_max"])
        volumes, volume_scale = decimal_units(groups["volume_sum"])
        notionals, notional_scale = decimal_units(groups["notional_sum"])
        assert (volume_scale, notional_scale) == (self.scale, 2 * self.scale)
        for bar in zip(
            groups["start"].to_pylist(), opens, highs, lows, closes, volumes, notionals, counts, strict=True
        ):
            self._merge(_Bar(*bar))

    def _merge(self, bar: "_Bar") -> None:
        previous = self.bars[-1] if self.bars else None
        if previous is None or previous.start != bar.start:
            self.bars.append(bar)
            return
        previous.high = max(previous.high, bar.high)
        previous.low = min(previous.low, bar.low)
        previous.close = bar.close
        previous.volume += bar.volume
        previous.notional += bar.notional
        previous.count += bar.count

    def _add_by_row(self, rows: pa.Table) -> None:
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
            message = query_pb2.Bar(
                open=self._text(bar.open),
                high=self._text(bar.high),
                low=self._text(bar.low),
                close=self._text(bar.close),
                volume=self._text(bar.volume),
                vwap=self._text(divide_half_even(bar.notional, bar.volume)),
                trade_count=bar.count,
            )
            set_timestamp(message.start, from_micros(bar.start))
            result.append(message)
        return result
