"""How the CLI prints rows: a rich table for people, CSV or JSON Lines (exact decimals as strings) for programs."""

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from k2.core.protos import decimal_text


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """A JSON-ready value: Decimal → canonical string (exact), datetime → ISO-8601 UTC."""
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def text(value: Any) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def table_of(
    title: str,
    columns: Sequence[str],
    *,
    caption: str | None = None,
    right_aligned: frozenset[str] | None = None,
    unbroken: frozenset[str] = frozenset(),
) -> Table:
    """A table that never hides a value: a cell too wide for the terminal wraps instead of being cut with an
    ellipsis; timestamps and the `unbroken` columns (short names) keep their full width."""
    table = Table(title=title or None, caption=caption, box=box.SIMPLE_HEAD)
    right = RIGHT_ALIGNED if right_aligned is None else right_aligned
    for name in columns:
        table.add_column(
            name,
            justify="right" if name in right else "left",
            overflow="fold",
            min_width=TIMESTAMP_WIDTH if name in TIMESTAMP_COLUMNS else None,
            no_wrap=name in unbroken,
        )
    return table


def emit(
    console: Console,
    rows: Sequence[Mapping[str, Any]],
    *,
    fmt: OutputFormat,
    columns: Sequence[str],
    title: str = "",
) -> None:
    """Prints rows: the table shows `columns`; CSV and JSON carry every field of each row."""
    if fmt is OutputFormat.json:
        for row in rows:
            sys.stdout.write(json.dumps(plain(row)) + "\n")
    elif fmt is OutputFormat.csv:
        fields = list(rows[0]) if rows else list(columns)
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({name: text(value) for name, value in row.items()})
    else:
        table = table_of(title, columns, caption=f"{len(rows)} rows")
        for row in rows:
            table.add_row(*(text(row[name]) for name in columns))
        console.print(table)
    sys.stdout.flush()


TIMESTAMP_WIDTH = len("2014-03-10T00:00:06.090000Z")
TIMESTAMP_COLUMNS = frozenset({"timestamp", "start", "time", "last event", "newest event"})
RIGHT_ALIGNED = frozenset(
    {
        "price",
        "quantity",
        "bid_price",
        "bid_quantity",
        "ask_price",
        "ask_quantity",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "vwap",
        "trade_count",
        "rows",
        "lag",
        "files",
        "msg/s",
        "trades/s",
        "gaps",
        "trades missed",
        "connections",
        "partition",
        "committed",
        "high watermark",
        "freshness s",
        "rows read",
        "accepted",
        "rejected (dead-letter)",
    }
)
