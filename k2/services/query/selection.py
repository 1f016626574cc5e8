"""Which rows a request wants (symbols, exchanges, time range) and the one order rows are returned in.

The same selection becomes a pyiceberg row filter (built from typed values, never from request text), an Arrow
mask over Kafka-tail rows, and a per-trade test for live streams, so every source agrees on what matches."""

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
)

from k2.core.timestamps import micros

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

# Time order; equal timestamps by exchange, symbol and the exchange's own sequence (its order for one symbol),
# then message_id, so the order is total and a page token can name a position in it.
ORDER_COLUMNS = ("timestamp", "exchange", "symbol", "source_sequence", "message_id")
# (timestamp µs, exchange, symbol, source_sequence or None, message_id)
Key = tuple[int, str, str, int | None, str]


@dataclass(frozen=True)
class Selection:
    symbols: frozenset[str] | None = None  # None: every symbol
    exchanges: frozenset[str] | None = None  # None: every exchange
    start: int | None = None  # µs, inclusive
    end: int | None = None  # µs, exclusive

    def row_filter(self) -> BooleanExpression:
        terms: list[BooleanExpression] = []
        # Keyword arguments: pyiceberg's own __init__ takes (term, literal) positionally, but the pydantic mypy
        # plugin checks calls against the model's fields (term, value / literals), which it also accepts.
        if self.symbols is not None:
            symbols = sorted(self.symbols)
            terms.append(
                EqualTo(term="symbol", value=symbols[0])
                if len(symbols) == 1
                else In(term="symbol", literals=symbols)
            )
        if self.exchanges is not None:
            exchanges = sorted(self.exchanges)
            terms.append(
                EqualTo(term="exchange", value=exchanges[0])
                if len(exchanges) == 1
                else In(term="exchange", literals=exchanges)
            )
        if self.start is not None:
            terms.append(GreaterThanOrEqual(term="timestamp", value=self.start))
        if self.end is not None:
            terms.append(LessThan(term="timestamp", value=self.end))
        if not terms:
            return AlwaysTrue()
        return terms[0] if len(terms) == 1 else And(*terms)

    def mask(self, table: pa.Table) -> pa.Array | pa.ChunkedArray:
        terms: list[Any] = []
        if self.symbols is not None:
            terms.append(pc.is_in(table["symbol"], pa.array(sorted(self.symbols), pa.string())))
        if self.exchanges is not None:
            terms.append(pc.is_in(table["exchange"], pa.array(sorted(self.exchanges), pa.string())))
        if self.start is not None:
            terms.append(pc.greater_equal(table["timestamp"], pa.scalar(self.start, TIMESTAMP_TYPE)))
        if self.end is not None:
            terms.append(pc.less(table["timestamp"], pa.scalar(self.end, TIMESTAMP_TYPE)))
        if not terms:
            return pa.repeat(True, table.num_rows)
        mask = terms[0]
        for term in terms[1:]:
            mask = pc.and_(mask, term)
        return mask

    def filter(self, table: pa.Table) -> pa.Table:
        return table.filter(self.mask(table))

    def matches(self, symbol: str, exchange: str, timestamp: int) -> bool:
        return (
            (self.symbols is None or symbol in self.symbols)
            and (self.exchanges is None or exchange in self.exchanges)
            and (self.start is None or timestamp >= self.start)
            and (self.end is None or timestamp < self.end)
        )


def sort_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([(column, "ascending", "at_start") for column in ORDER_COLUMNS])


def _comparable(key: Key) -> tuple[Any, ...]:
    timestamp, exchange, symbol, sequence, message_id = key
    # a null sequence sorts first, as in sort_rows
    return timestamp, exchange, symbol, sequence is not None, sequence or 0, message_id


def row_key(table: pa.Table, index: int) -> Key:
    row = table.slice(index, 1).select(list(ORDER_COLUMNS)).to_pylist()[0]
    return (
        micros(row["timestamp"]),
        row["exchange"],
        row["symbol"],
        row["source_sequence"],
        row["message_id"],
    )


def rows_after(table: pa.Table, after: Key) -> pa.Table:
    """The rows of a sorted table that come after `after` in the order."""
    timestamps = table["timestamp"]
    table = table.filter(pc.greater_equal(timestamps, pa.scalar(after[0], TIMESTAMP_TYPE)))
    ties = pc.sum(pc.equal(table["timestamp"], pa.scalar(after[0], TIMESTAMP_TYPE))).as_py() or 0
    bound = _comparable(after)
    skip = 0
    while skip < ties and _comparable(row_key(table, skip)) <= bound:
        skip += 1
    return table.slice(skip)
