"""The `k2` command line: run the platform, load files, query, tail live data, watch it all (`k2 demo`), follow a
trade through its trace (`k2 trace`).

Exit codes: 0 success, 2 usage error, 3 a service (or Jaeger) is unavailable (or `k2 status` found one not
serving), 4 authentication or permission refused, 5 invalid argument or request rejected by a service, 1 anything
else (`k2 trace`: no trace found). Errors print one line to stderr: the service, its address, the gRPC status and
its details.
"""

import asyncio
import fnmatch
import functools
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import grpc
import pydantic
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from k2.clients.aio import AsyncK2Client, FileFormat
from k2.clients.client import K2Client
from k2.clients.demo import MAX_ROWS, run_demo
from k2.clients.errors import K2Error
from k2.clients.models import (
    BAR_INTERVALS,
    CompactResult,
    FeedStatus,
    LoadProgress,
    LoadSummary,
    Quote,
    Reconnect,
    ServiceTracing,
    Trade,
)
from k2.clients.output import OutputFormat, emit, iso, table_of, text
from k2.clients.settings import ClientSettings
from k2.clients.times import parse_time
from k2.clients.traces import MAX_TRACES, Jaeger, JaegerUnavailable, find_traces, waterfall
from k2.core.config import ROOT

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_AUTH = 4
EXIT_REJECTED = 5
EXIT_CODES = {
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_REJECTED,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_REJECTED,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_REJECTED,
    grpc.StatusCode.NOT_FOUND: EXIT_REJECTED,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_REJECTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_REJECTED,
}

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="K2 market data: run the platform, load files, query history, tail live trades.",
    epilog="Token: K2_TOKEN, or the file `make up` writes (.run/token). TLS: K2_TLS, K2_TLS_CA_FILE, "
    "K2_TLS_CERT_FILE, K2_TLS_KEY_FILE. Exit codes: 0 ok, 2 usage, 3 service unavailable, "
    "4 authentication refused, 5 request rejected, 1 other.",
)
feed_app = typer.Typer(no_args_is_help=True, help="Exchange feeds of the ingest service.")
writer_app = typer.Typer(no_args_is_help=True, help="The Kafka → Iceberg writer.")
load_app = typer.Typer(no_args_is_help=True, help="Load vendor files through the ingest service.")
app.add_typer(feed_app, name="feed")
app.add_typer(writer_app, name="writer")
app.add_typer(load_app, name="load")

# Values (paths, server messages) are never rich markup.
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, markup=False)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int) -> NoReturn:
    print(f"k2: {message}", file=sys.stderr)
    raise typer.Exit(code)


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A failed call becomes one line on stderr and the exit code for its gRPC status."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except K2Error as error:
            fail(str(error), EXIT_CODES.get(error.code, EXIT_ERROR))

    return run


def _time(value: str, option: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=option) from None


def _optional_time(value: str | None, option: str) -> datetime | None:
    return None if value is None else _time(value, option)


def _interval(value: str) -> str:
    if value not in BAR_INTERVALS:
        raise typer.BadParameter(f"must be one of {', '.join(BAR_INTERVALS)}")
    return value


TIME_HELP = "ISO-8601 (naive = UTC) or relative: now, today, yesterday, -15m, -1h, -2d"
Time = Annotated[str, typer.Option(metavar="TIME", help=TIME_HELP)]
OptionalTime = Annotated[str | None, typer.Option(metavar="TIME", help=TIME_HELP)]
Format = Annotated[
    OutputFormat, typer.Option("--format", "-f", help="table, csv, or json (one object a line)")
]
Exchange = Annotated[str, typer.Option(help="Only this exchange, e.g. ASX or BINANCE")]
Top = Annotated[int, typer.Option(min=0, help="Show the N most active symbols (0: none)")]
Match = Annotated[
    str, typer.Option(metavar="GLOB", help="Only symbols matching this pattern, e.g. 'BTC*' or '*FDUSD'")
]
MAX_MATCHES = 200  # symbols a --match lists by name


class Kind(StrEnum):
    trades = "trades"
    quotes = "quotes"


@app.callback()
def main(
    ctx: typer.Context,
    ingest_address: Annotated[str | None, typer.Option(help="host:port (env K2_INGEST_ADDRESS)")] = None,
    writer_address: Annotated[str | None, typer.Option(help="host:port (env K2_WRITER_ADDRESS)")] = None,
    query_address: Annotated[str | None, typer.Option(help="host:port (env K2_QUERY_ADDRESS)")] = None,
) -> None:
    overrides: dict[str, Any] = {
        "ingest_address": ingest_address,
        "writer_address": writer_address,
        "query_address": query_address,
    }
    try:
        ctx.obj = ClientSettings(**{name: value for name, value in overrides.items() if value is not None})
    except pydantic.ValidationError as error:
        fail(f"invalid client settings: {error}", EXIT_USAGE)


def _client(ctx: typer.Context) -> K2Client:
    return K2Client(ctx.obj)


# -- running the platform ----------------------------------------------------------------------------------------


def _make(target: str, *variables: str) -> None:
    if not (ROOT / "Makefile").is_file():
        fail(f"no Makefile in {ROOT}: `k2 {target}` runs `make {target}` in a K2 checkout", EXIT_ERROR)
    raise typer.Exit(subprocess.run(["make", target, *variables], cwd=ROOT, check=False).returncode)


@app.command()
def up(
    tracing: Annotated[
        bool, typer.Option("--tracing", help="Also a local Jaeger, every trace sampled (`make up TRACING=1`)")
    ] = False,
    registry: Annotated[
        bool,
        typer.Option(
            "--registry",
            help="Also the local schema registry, Kafka messages in its framing (`make up REGISTRY=1`)",
        ),
    ] = False,
) -> None:
    """Start Kafka and the three services (`make up`)."""
    _make("up", *(["TRACING=1"] if tracing else []), *(["REGISTRY=1"] if registry else []))


@app.command()
def down() -> None:
    """Stop the services and Kafka (`make down`)."""
    _make("down")


@app.command()
@handles_errors
def status(ctx: typer.Context, top: Top = 10, match: Match = "") -> None:
    """Every service's health and where its traces go, the exchange feeds (their connections, most active
    symbols, the symbols matching --match), writer lag and table freshness. Exit 3 if a service is not serving."""
    with _client(ctx) as k2:
        health = k2.health()
        table = table_of("Services", ("service", "address", "status", "detail"))
        for h in health:
            table.add_row(
                h.service, h.address, Text(h.status, style="green" if h.serving else "red"), h.detail
            )
        out.print(table)
        serving = {h.service for h in health if h.serving}
        _print_tracing(k2.tracing([h.service for h in health if h.serving]))
        shows: tuple[tuple[str, Callable[[K2Client], None]], ...] = (
            ("ingest", functools.partial(_print_feeds, top=top, match=match)),
            ("writer", _print_writer),
        )
        for service, show in shows:
            if service in serving:
                try:
                    show(k2)
                except K2Error as error:
                    out.print(Text(str(error), style="red"))
                    serving.remove(service)
    if len(serving) < len(health):
        raise typer.Exit(EXIT_UNAVAILABLE)


def _sampled(ratio: float) -> str:
    if ratio >= 1:
        return "every new trace"
    if ratio <= 0:
        return "no new trace"
    return f"{ratio * 100:g} % of new traces"


def _print_tracing(tracing: list[ServiceTracing]) -> None:
    table = table_of(
        "Tracing (OpenTelemetry)",
        ("service", "service.name", "traces exported to", "sampler"),
        unbroken=frozenset({"service", "service.name"}),
    )
    for t in tracing:
        if t.error:
            table.add_row(t.service, "", Text(t.error, style="red"), "")
        else:
            table.add_row(
                t.service,
                t.service_name,
                t.otlp_endpoint or Text("nowhere (no OTLP endpoint)", style="yellow"),
                f"{t.sampler}: {_sampled(t.sample_ratio)}",
            )
    out.print(table)


def _print_feeds(k2: K2Client, top: int = 10, match: str = "") -> None:
    """One column per feed, one row per figure: fits a terminal however many figures a feed reports. Then each
    feed's connections, its `top` most active symbols, and the followed symbols matching `match` (a glob)."""
    feeds = k2.feed_status()
    table = table_of("Feeds", ("", *(feed.name for feed in feeds)), right_aligned=frozenset())
    rows: dict[str, list[str]] = {
        name: []
        for name in (
            "state",
            "circuit breaker",
            "symbols",
            "connections",
            "messages/s",
            "trades/s",
            "last event",
            "gaps",
            "trades missed",
            "trades backfilled",
            "reconnects",
        )
    }
    for feed in feeds:
        for name, value in zip(
            rows,
            (
                feed.state,
                feed.circuit_state,
                str(len(feed.symbols)),
                str(feed.connections),
                f"{feed.messages_per_second:.1f}",
                f"{feed.trades_per_second:.1f}",
                text(feed.last_event_time),
                str(feed.gaps_detected),
                str(feed.trades_missed),
                str(feed.trades_backfilled),
                ", ".join(f"{reason} {count}" for reason, count in sorted(feed.reconnects_by_reason.items())),
            ),
            strict=True,
        ):
            rows[name].append(value)
    for name, values in rows.items():
        table.add_row(name, *values)
    out.print(table)
    for feed in feeds:
        _print_feed_details(feed, top, match)


def _print_feed_details(feed: FeedStatus, top: int, match: str) -> None:
    if len(feed.connection_statuses) > 1:
        connections = table_of(
            f"{feed.name} connections",
            (
                "connection",
                "state",
                "endpoint",
                "streams",
                "symbols",
                "frames",
                "reconnects",
                "connected since",
            ),
        )
        for c in feed.connection_statuses:
            connections.add_row(
                str(c.number),
                c.state,
                c.endpoint,
                str(c.streams),
                str(c.symbols),
                str(c.frames),
                str(c.reconnects),
                text(c.connected_since),
            )
        out.print(connections)
    if top and len(feed.symbols) > top:
        active = table_of(
            f"{feed.name}: the {min(top, len(feed.most_active))} most active of {len(feed.symbols)} "
            "symbols (trades since the feed started)",
            ("symbol", "trades", "quotes"),
        )
        for a in feed.most_active[:top]:
            active.add_row(a.symbol, str(a.trades), str(a.quotes))
        out.print(active)
    if match:
        found = [symbol for symbol in feed.symbols if fnmatch.fnmatchcase(symbol, match.upper())]
        shown = ", ".join(found[:MAX_MATCHES]) + (
            f" … and {len(found) - MAX_MATCHES} more" if len(found) > MAX_MATCHES else ""
        )
        out.print(Text(f"{feed.name}: {len(found)} of {len(feed.symbols)} symbols match {match!r}: {shown}"))


def _print_writer(k2: K2Client) -> None:
    status = k2.writer_status()
    tables = table_of(
        f"Iceberg tables (last commit {text(status.last_commit_time) or 'none'}, "
        f"{status.last_commit_rows} rows; dead-lettered {status.dead_lettered})",
        ("table", "rows", "files", "newest event", "freshness s", "snapshot"),
        unbroken=frozenset({"table"}),
    )
    for t in status.tables:
        tables.add_row(
            t.table,
            str(t.rows),
            str(t.files),
            text(t.newest_event_time),
            f"{t.freshness_seconds:.1f}",
            str(t.snapshot_id),
        )
    out.print(tables)
    lag = table_of(
        f"Kafka lag (total {status.total_lag})", ("topic", "partition", "committed", "high watermark", "lag")
    )
    for p in status.partitions:
        committed = (
            "none" if p.committed_offset < 0 else str(p.committed_offset)
        )  # nothing committed from it yet
        lag.add_row(p.topic, str(p.partition), committed, str(p.high_watermark), str(p.lag))
    out.print(lag)


# -- loading files -------------------------------------------------------------------------------------------------


def _kind_of(path: Path) -> Kind | None:
    for folder in (path.parent.name, path.name):
        if folder in Kind.__members__:
            return Kind(folder)
    return None


def _expand(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.glob("*.csv"))
        else:
            yield path


def _line_count(path: str) -> int | None:
    """Rows to expect, when the file is readable here too (the ingest host is usually this machine)."""
    try:
        with open(path, "rb") as file:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
    except OSError:
        return None


FILE_FORMATS: dict[tuple[str, Kind], FileFormat] = {
    ("asx", Kind.trades): "asx_trades",
    ("asx", Kind.quotes): "asx_quotes",
    ("csv", Kind.trades): "csv_trades",
    ("csv", Kind.quotes): "csv_quotes",
}


def _load_group(
    k2: K2Client,
    progress: Progress,
    file_format: FileFormat,
    files: list[str],
    reference: str,
    header_rows: int,
) -> LoadSummary | None:
    """One LoadFiles call, a progress bar per file."""
    tasks: dict[str, TaskID] = {}

    def add_task(path: str, rows: int | None) -> TaskID:
        tasks[path] = progress.add_task(f"{file_format} {Path(path).name}", rate="", total=rows)
        return tasks[path]

    def task_for(path: str) -> TaskID:
        # The service may report a path in its own form (e.g. relative to its load root).
        match = next((p for p in tasks if p == path or p.endswith(path) or path.endswith(p)), None)
        return add_task(path, None) if match is None else tasks[match]

    for path in files:
        lines = _line_count(path)
        add_task(path, None if lines is None else lines - header_rows)
    summary = None
    for event in k2.load_files(files, file_format, reference_data_path=reference):
        if isinstance(event, LoadProgress):
            progress.update(
                task_for(event.path),
                completed=event.rows_read,
                rate=f"{event.rows_per_second:,.0f} rows/s  rejected {event.rows_rejected}",
            )
        else:
            summary = event
            for file in event.files:
                progress.update(task_for(file.path), completed=file.rows_read, total=file.rows_read)
    return summary


def _load(ctx: typer.Context, paths: list[Path], kind: Kind | None, vendor: str, reference: str) -> None:
    groups: dict[FileFormat, list[str]] = {}
    for path in _expand(paths):
        file_kind = kind or _kind_of(path)
        if file_kind is None:
            raise typer.BadParameter(
                f"cannot tell trades from quotes for {path}: its folder is neither "
                "'trades' nor 'quotes'; pass --kind"
            )
        groups.setdefault(FILE_FORMATS[vendor, file_kind], []).append(
            str(path.resolve()) if path.exists() else str(path)
        )
    if not groups:
        raise typer.BadParameter("no files to load")
    summaries: list[LoadSummary] = []
    with (
        _client(ctx) as k2,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err,
        ) as progress,
    ):
        for file_format, files in groups.items():
            summary = _load_group(
                k2, progress, file_format, files, reference, header_rows=0 if vendor == "asx" else 1
            )
            if summary is not None:
                summaries.append(summary)
    table = table_of(
        "Loaded",
        ("file", "rows read", "accepted", "rejected (dead-letter)", "rows/s"),
        right_aligned=frozenset({"rows read", "accepted", "rejected (dead-letter)", "rows/s"}),
    )
    for summary in summaries:
        for file in summary.files:
            table.add_row(
                str(Path(*Path(file.path).parts[-2:])),
                str(file.rows_read),
                str(file.rows_accepted),
                str(file.rows_rejected),
                f"{file.rows_per_second:,.0f}",
            )
    table.add_row(
        "total",
        str(sum(s.rows_read for s in summaries)),
        str(sum(s.rows_accepted for s in summaries)),
        str(sum(s.rows_rejected for s in summaries)),
        f"{sum(s.seconds for s in summaries):.1f} s",
    )
    out.print(table)


Paths = Annotated[list[Path], typer.Argument(help="Files, or folders of *.csv files, on the ingest host")]
KindOption = Annotated[Kind | None, typer.Option(help="trades or quotes; default: from the folder name")]
Reference = Annotated[
    str,
    typer.Option(
        "--reference", help="ASX company_info.csv (default: the ingest service's configured reference data)"
    ),
]


@load_app.command("asx")
@handles_errors
def load_asx(ctx: typer.Context, paths: Paths, kind: KindOption = None, reference: Reference = "") -> None:
    """Load ASX vendor files (…/trades/<company_id>.csv, …/quotes/<company_id>.csv)."""
    _load(ctx, paths, kind, "asx", reference)


@load_app.command("csv")
@handles_errors
def load_csv(ctx: typer.Context, paths: Paths, kind: KindOption = None) -> None:
    """Load K2 headered CSV files of trades or quotes (docs/file-formats.md)."""
    _load(ctx, paths, kind, "csv", "")


# -- querying ------------------------------------------------------------------------------------------------------

TRADE_COLUMNS = ("timestamp", "exchange", "symbol", "side", "price", "quantity", "trade_id")
QUOTE_COLUMNS = ("timestamp", "exchange", "symbol", "bid_quantity", "bid_price", "ask_price", "ask_quantity")
Symbols = Annotated[list[str], typer.Argument(help="One or more symbols, e.g. BHP BTCUSDT")]
Limit = Annotated[int, typer.Option(min=0, help="At most this many rows (0: all)")]


@app.command()
@handles_errors
def trades(
    ctx: typer.Context,
    symbols: Symbols,
    start: Time = "-1h",
    end: Time = "now",
    limit: Limit = 1000,
    exchange: Exchange = "",
    fmt: Format = OutputFormat.table,
) -> None:
    """Trades of SYMBOLS in [start, end)."""
    with _client(ctx) as k2:
        records = k2.query_trade_records(
            symbols, _time(start, "--start"), _time(end, "--end"), exchange=exchange, limit=limit or None
        )
    emit(
        out, [asdict(r) for r in records], fmt=fmt, columns=TRADE_COLUMNS, title=f"Trades {' '.join(symbols)}"
    )


@app.command()
@handles_errors
def quotes(
    ctx: typer.Context,
    symbols: Symbols,
    start: Time = "-1h",
    end: Time = "now",
    limit: Limit = 1000,
    exchange: Exchange = "",
    fmt: Format = OutputFormat.table,
) -> None:
    """Quotes of SYMBOLS in [start, end)."""
    with _client(ctx) as k2:
        records = k2.query_quote_records(
            symbols, _time(start, "--start"), _time(end, "--end"), exchange=exchange, limit=limit or None
        )
    emit(
        out, [asdict(r) for r in records], fmt=fmt, columns=QUOTE_COLUMNS, title=f"Quotes {' '.join(symbols)}"
    )


@app.command()
@handles_errors
def bars(
    ctx: typer.Context,
    symbol: Annotated[str, typer.Argument()],
    interval: Annotated[str, typer.Option(parser=_interval, metavar="|".join(BAR_INTERVALS))] = "1m",
    start: Time = "today",
    end: Time = "now",
    exchange: Exchange = "",
    fmt: Format = OutputFormat.table,
) -> None:
    """OHLCV bars of SYMBOL, with VWAP and trade count."""
    with _client(ctx) as k2:
        rows = k2.bars(
            symbol, _time(start, "--start"), _time(end, "--end"), interval=interval, exchange=exchange
        )
    emit(
        out,
        [asdict(b) for b in rows],
        fmt=fmt,
        columns=("start", "open", "high", "low", "close", "volume", "vwap", "trade_count"),
        title=f"{symbol} {interval} bars",
    )


@app.command()
@handles_errors
def latest(ctx: typer.Context, symbols: Symbols, fmt: Format = OutputFormat.table) -> None:
    """The latest trade and quote of each symbol."""
    with _client(ctx) as k2:
        found = k2.latest(symbols)
    rows = []
    for symbol, latest in found.items():
        trade, quote = latest.trade, latest.quote
        rows.append(
            {
                "symbol": symbol,
                "trade_time": trade and trade.timestamp,
                "price": trade and trade.price,
                "quantity": trade and trade.quantity,
                "quote_time": quote and quote.timestamp,
                "bid_price": quote and quote.bid_price,
                "ask_price": quote and quote.ask_price,
            }
        )
    emit(out, rows, fmt=fmt, columns=list(rows[0]) if rows else ["symbol"], title="Latest")


def _trade_line(trade: Trade) -> str:
    return (
        f"{iso(trade.timestamp)}  {trade.exchange}:{trade.symbol}  {trade.side:<4}  "
        f"{text(trade.quantity)} @ {text(trade.price)}"
    )


def _quote_line(quote: Quote) -> str:
    return (
        f"{iso(quote.timestamp)}  {quote.exchange}:{quote.symbol}  bid {text(quote.bid_quantity) or '-'} @ "
        f"{text(quote.bid_price) or '-'}  ask {text(quote.ask_price) or '-'} x {text(quote.ask_quantity) or '-'}"
    )


@app.command()
@handles_errors
def subscribe(
    ctx: typer.Context,
    symbols: Annotated[list[str] | None, typer.Argument(help="Symbols (none: all)")] = None,
    from_time: Annotated[
        str | None, typer.Option("--from", metavar="TIME", help="Replay from this time, then continue live")
    ] = None,
    exchange: Annotated[list[str] | None, typer.Option(help="Only these exchanges")] = None,
    quotes: Annotated[bool, typer.Option("--quotes", help="Quotes instead of trades")] = False,
    count: Annotated[int, typer.Option(min=0, help="Stop after this many records (0: never)")] = 0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="line or json")] = "line",
) -> None:
    """Tail live trades (or quotes) in the terminal, one line each; a lost stream is reconnected (a notice on
    stderr) until Ctrl-C stops it (exit 0)."""
    if fmt not in ("line", "json"):
        raise typer.BadParameter("--format must be line or json")
    start = _optional_time(from_time, "--from")
    seen = 0

    def notice(reconnect: Reconnect) -> None:
        print(
            f"k2: {reconnect.error}; reconnecting in {reconnect.delay_seconds:.1f} s (attempt "
            f"{reconnect.attempt}), resuming after the last record shown",
            file=sys.stderr,
            flush=True,
        )

    with _client(ctx) as k2:
        subscribe = k2.subscribe_quotes if quotes else k2.subscribe_trades
        stream: Iterator[Any] = subscribe(
            symbols or [], exchanges=exchange or [], start=start, on_reconnect=notice
        )
        try:
            for batch in stream:
                for record in batch.records:
                    if fmt == "json":
                        emit(out, [asdict(record)], fmt=OutputFormat.json, columns=())
                    else:
                        sys.stdout.write((_quote_line(record) if quotes else _trade_line(record)) + "\n")
                        sys.stdout.flush()
                    seen += 1
                    if count and seen >= count:
                        return
        except KeyboardInterrupt:
            return


# -- feeds and writer ------------------------------------------------------------------------------------------------


@feed_app.command("status")
@handles_errors
def feed_status(
    ctx: typer.Context, fmt: Format = OutputFormat.table, top: Top = 10, match: Match = ""
) -> None:
    """The state, rates, gaps and reconnects of every exchange feed, its connections and most active symbols."""
    with _client(ctx) as k2:
        if fmt is OutputFormat.table:
            _print_feeds(k2, top, match)
        else:
            emit(out, [asdict(f) for f in k2.feed_status()], fmt=fmt, columns=())


@writer_app.command("status")
@handles_errors
def writer_status(ctx: typer.Context, fmt: Format = OutputFormat.table) -> None:
    """Committed offsets, Kafka lag, table sizes and freshness."""
    with _client(ctx) as k2:
        if fmt is OutputFormat.table:
            _print_writer(k2)
        else:
            emit(out, [asdict(k2.writer_status())], fmt=fmt, columns=())


@writer_app.command("flush")
@handles_errors
def writer_flush(ctx: typer.Context) -> None:
    """Commit what the writer has buffered now."""
    with _client(ctx) as k2:
        commits = k2.flush()
    emit(
        out,
        [asdict(c) for c in commits],
        fmt=OutputFormat.table,
        columns=("table", "snapshot_id", "rows"),
        title="Flushed",
    )


@writer_app.command("compact")
@handles_errors
def writer_compact(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="market_data.trades or market_data.quotes")],
    start: OptionalTime = None,
    end: OptionalTime = None,
    target_file_size: Annotated[int, typer.Option(min=0, help="Bytes (0: the writer's default)")] = 0,
) -> None:
    """Rewrite a table's small files (optionally only partition days in [start, end)) into target-size files."""
    result: CompactResult | None = None
    with (
        _client(ctx) as k2,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress,
    ):
        task = progress.add_task(f"compacting {table}", total=None)
        for event in k2.compact(
            table,
            start=_optional_time(start, "--start"),
            end=_optional_time(end, "--end"),
            target_file_size_bytes=target_file_size,
        ):
            if isinstance(event, CompactResult):
                result = event
            else:
                progress.update(
                    task,
                    completed=event.partitions_done,
                    total=event.partitions_total,
                    description=f"compacting {table} {event.partition}",
                )
    if result is not None:
        out.print(
            f"{table}: {result.files_before} files → {result.files_after}, snapshot {result.snapshot_id}"
        )


# -- traces ----------------------------------------------------------------------------------------------------------


@app.command()
def trace(
    ctx: typer.Context,
    identifier: Annotated[str, typer.Argument(metavar="ID", help="A trade_id, a message_id or a trace id")],
    jaeger: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="Jaeger's query API (env K2_JAEGER_URL; default http://127.0.0.1:16686)"
        ),
    ] = None,
    service: Annotated[str, typer.Option(help="service.name of the ingest service's spans")] = "ingest",
    start: Annotated[
        str, typer.Option(metavar="TIME", help=f"Search traces since then; {TIME_HELP}")
    ] = "-2d",
) -> None:
    """A trade's trace from Jaeger as a waterfall in the terminal: publish → send → process → commit → deliver,
    each span under its parent with its service, start, duration and a bar. Exit 1 when Jaeger has no trace of
    it (only sampled trades are traced), 3 when Jaeger does not answer."""
    settings: ClientSettings = ctx.obj
    query = Jaeger(jaeger or settings.jaeger_url, settings.timeout_seconds)
    since = _time(start, "--start")
    try:
        taken_as, traces = find_traces(query, identifier, service, since, parse_time("now"))
    except JaegerUnavailable as error:
        fail(
            f"{error} (`make up TRACING=1` runs one; --jaeger or K2_JAEGER_URL names another)",
            EXIT_UNAVAILABLE,
        )
    if not traces:
        fail(
            f"no trace in Jaeger at {query.url} names {taken_as} {identifier!r} since {iso(since)}: only sampled "
            "trades are traced (`k2 status` shows each service's sampler), Jaeger keeps traces for a while only, "
            "and a send span names its first 5000 messages",
            EXIT_ERROR,
        )
    newest = traces[0]
    marked = (
        None
        if taken_as == "trace id"
        else (taken_as, identifier.lower() if "message" in taken_as else identifier)
    )
    out.print(waterfall(newest, marked, out.width))
    if len(traces) > 1:
        more = "at least " if len(traces) == MAX_TRACES else ""
        out.print(
            f"{more}{len(traces) - 1} older traces also name {taken_as} {identifier} (sent again): "
            + " ".join(found.trace_id for found in traces[1:])
        )


# -- the live view ----------------------------------------------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    symbols: Annotated[list[str] | None, typer.Argument(help="Symbols (none: all)")] = None,
    from_time: Annotated[
        str | None, typer.Option("--from", metavar="TIME", help="Replay trades from this time first")
    ] = None,
    duration: Annotated[float, typer.Option(min=0, help="Seconds to run (0: until Ctrl-C)")] = 0,
    top: Annotated[int, typer.Option(min=1, help="Rows: the N symbols with the most trades/s")] = MAX_ROWS,
    match: Match = "",
) -> None:
    """A live view of the running platform: prices and trade rates (the --top busiest symbols, of those matching
    --match), feed health and gaps, Kafka lag and Iceberg freshness, refreshed in place. Ctrl-C exits."""
    start = _optional_time(from_time, "--from")

    async def show() -> None:
        async with AsyncK2Client(ctx.obj) as k2:
            await run_demo(
                k2, out, symbols=symbols or [], start=start, duration=duration or None, top=top, match=match
            )

    try:
        asyncio.run(show())
    except KeyboardInterrupt:
        pass
