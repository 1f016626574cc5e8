"""How the CLI prints rows: a rich table for people, CSV or JSON Lines (exact decimals as strings) for programs."""

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

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


def emit(console: Console, rows: Sequence[Mapping[str, Any]], *, fmt: OutputFormat, columns: Sequence[str],
         title: str = "") -> None:
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
        table = Table(title=title or None, caption=f"{len(rows)} rows")
        for name in columns:
            table.add_column(name, justify="right" if name in RIGHT_ALIGNED else "left")
        for row in rows:
            table.add_row(*(text(row[name]) for name in columns))
        console.print(table)
    sys.stdout.flush()


RIGHT_ALIGNED = frozenset({"price", "quantity", "bid_price", "bid_quantity", "ask_price", "ask_quantity", "open",
                           "high", "low", "close", "volume", "vwap", "trade_count", "rows", "lag", "files"})
