"""The `k2` command line: output formats, exit codes and error lines, against in-process servers
(tests/test_clients_harness.py) and against addresses where nothing listens."""

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import ASX_DATA
from test_clients_harness import Platform, running_platform, unused_address, wait_until
from typer.testing import CliRunner, Result

from k2.clients.cli import app
from k2.clients.times import parse_time
from k2.core.telemetry import tracing_setup
from k2.ingest.v1 import ingest_pb2

DAY_RANGE = ["--start", "2014-03-10T11:00+11:00", "--end", "2014-03-11"]
runner = CliRunner()


@pytest.fixture
def platform() -> Iterator[Platform]:
    with running_platform() as running:
        yield running


def k2(platform: Platform, *args: str, **env: str) -> Result:
    """Runs `k2 ARGS` against the platform, in a wide (200 column) terminal."""
    return runner.invoke(
        app, list(args), env=platform.env(K2_TOKEN_FILE="/nonexistent/token", COLUMNS="200", **env)
    )


def test_trades_as_json_lines_keep_exact_decimals(platform: Platform) -> None:
    result = k2(platform, "trades", "BHP", *DAY_RANGE, "--limit", "300", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 300
    assert rows[1]["price"] == "37.000100000000000001" and rows[1]["timestamp"] == "2014-03-10T00:00:01Z"
    assert rows[0]["vendor_data"] == {"venue": "X"} and rows[0]["trade_conditions"] == ["XT"]


def test_trades_as_csv_and_table(platform: Platform) -> None:
    result = k2(platform, "trades", "DVN", *DAY_RANGE, "-f", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [Decimal(r["price"]) for r in rows] == [Decimal("1.005")] * 5
    assert rows[0]["exchange"] == "ASX" and rows[0]["message_id"]
    table = k2(platform, "trades", "DVN", *DAY_RANGE)
    assert table.exit_code == 0 and "1.005" in table.stdout and "5 rows" in table.stdout
    # An 80-column terminal still shows whole values: timestamps unbroken, long ids wrapped, never cut with "…".
    assert rows[0]["timestamp"] in table.stdout and "…" not in table.stdout


def test_quotes_bars_latest(platform: Platform) -> None:
    quotes = k2(platform, "quotes", "BHP", *DAY_RANGE, "-f", "json")
    assert quotes.exit_code == 0, quotes.output
    first = json.loads(quotes.stdout.splitlines()[0])
    assert first["ask_price"] is None and first["bid_price"] == "37.7"
    bars = k2(platform, "bars", "BHP", "--interval", "1m", *DAY_RANGE, "-f", "csv")
    assert bars.exit_code == 0, bars.output
    rows = list(csv.DictReader(io.StringIO(bars.stdout)))
    assert rows[0]["volume"] == "12000.000000000000000001" and rows[2]["start"] == "2014-03-10T00:02:00Z"
    latest = k2(platform, "latest", "BHP", "-f", "json")
    assert json.loads(latest.stdout)["price"] == "37.059900000000000001"


def test_unavailable_service_exits_3_with_one_line(platform: Platform) -> None:
    result = k2(platform, "trades", "BHP", K2_QUERY_ADDRESS=unused_address())
    assert result.exit_code == 3
    (line,) = result.stderr.splitlines()
    assert line.startswith("k2: query at 127.0.0.1:") and "UNAVAILABLE" in line


def test_rejected_request_exits_5(platform: Platform) -> None:
    result = k2(platform, "trades", "BHP", "--start", "2014-03-10", "--end", "2014-03-10")
    assert result.exit_code == 5
    assert result.stderr.strip().endswith("INVALID_ARGUMENT: start must be before end")
    missing = k2(platform, "writer", "compact", "market_data.nope")
    assert missing.exit_code == 5 and "NOT_FOUND" in missing.stderr


def test_write_without_a_token_exits_4(platform: Platform) -> None:
    result = k2(platform, "load", "asx", str(ASX_DATA / "trades" / "3153.csv"), K2_TOKEN="")
    assert result.exit_code == 4
    assert "UNAUTHENTICATED" in result.stderr and platform.ingest.load_requests == []


def test_usage_errors_exit_2(platform: Platform) -> None:
    assert k2(platform, "trades", "BHP", "--start", "last tuesday").exit_code == 2
    assert k2(platform, "bars", "BHP", "--interval", "2m").exit_code == 2
    assert k2(platform, "trades", "BHP", "--format", "xml").exit_code == 2
    unknown = k2(platform, "load", "asx", str(ASX_DATA / "README.md"))
    assert unknown.exit_code == 2 and "--kind" in unknown.output


def test_load_asx_detects_the_kind_and_reports_progress(platform: Platform) -> None:
    result = k2(
        platform,
        "load",
        "asx",
        str(ASX_DATA / "trades" / "3153.csv"),
        str(ASX_DATA / "quotes" / "3153.csv"),
        str(ASX_DATA / "quotes" / "7181.csv"),
    )
    assert result.exit_code == 0, result.output
    trades, quotes = platform.ingest.load_requests
    assert (trades.format, list(trades.paths)) == (1, [str((ASX_DATA / "trades" / "3153.csv").resolve())])
    assert quotes.format == 2 and len(quotes.paths) == 2
    assert "total" in result.stdout and "3153.csv" in result.stdout
    folder = k2(platform, "load", "asx", str(ASX_DATA / "trades"))
    assert folder.exit_code == 0 and len(platform.ingest.load_requests[2].paths) == 3


def test_subscribe_prints_a_line_per_trade(platform: Platform) -> None:
    platform.query.drop_after = 2
    result = k2(platform, "subscribe", "BTCUSDT", "--from", "2014-03-10", "--count", "7")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 7
    assert lines[0] == "2014-03-10T00:16:40Z  ASX:BTCUSDT  SELL  100 @ 37.100000000000000001"
    assert [r.resume_token for r in platform.query.subscribe_requests] == ["", "2"]
    assert result.stderr.startswith(
        f"k2: query at {platform.address}: UNAVAILABLE: injected: subscription dropped; "
        "reconnecting in 0.0 s (attempt 1), resuming after the last record shown"
    )
    as_json = k2(platform, "subscribe", "--count", "2", "-f", "json")
    assert [json.loads(line)["trade_id"] for line in as_json.stdout.splitlines()] == [
        "ASX-BTCUSDT-1000",
        "ASX-BTCUSDT-1001",
    ]


def test_status_reports_each_service(platform: Platform) -> None:
    result = k2(platform, "status")
    assert result.exit_code == 0, result.output
    for text in ("SERVING", "binance", "CONNECTED", "market_data.trades", "total 12"):
        assert text in result.stdout
    tracing = tracing_setup()  # the services run in this process
    assert "Tracing (OpenTelemetry)" in result.stdout
    assert (
        len(
            [
                line
                for line in result.stdout.splitlines()
                if f"{tracing.sampler}: " in line and (tracing.otlp_endpoint or "nowhere") in line
            ]
        )
        == 3
    )
    absent = k2(platform, "status", K2_WRITER_ADDRESS=unused_address())
    assert absent.exit_code == 3
    assert "UNAVAILABLE" in absent.stdout and "binance" in absent.stdout and "Kafka lag" not in absent.stdout
    assert len([line for line in absent.stdout.splitlines() if f"{tracing.sampler}: " in line]) == 2


def test_feed_and_writer_commands(platform: Platform) -> None:
    feeds = k2(platform, "feed", "status", "-f", "json")
    assert feeds.exit_code == 0 and json.loads(feeds.stdout)["recent_gaps"][0]["last_missing"] == 103
    status = k2(platform, "writer", "status", "-f", "json")
    assert json.loads(status.stdout)["partitions"][0]["lag"] == 10
    flush = k2(platform, "writer", "flush")
    assert flush.exit_code == 0 and platform.writer.flushes == 1 and "43" in flush.stdout
    compact = k2(platform, "writer", "compact", "market_data.trades", "--start", "2014-03-10")
    assert compact.exit_code == 0 and "30 files → 3" in compact.stdout


def full_market_feed() -> ingest_pb2.FeedStatus:
    """A feed following 3,000 symbols over 6 connections."""
    symbols = ["BTCUSDT", "ETHUSDT"] + [f"X{n:04d}USDT" for n in range(2_997)] + ["BTCFDUSD"]
    feed = ingest_pb2.FeedStatus(
        name="binance",
        state=ingest_pb2.CONNECTION_STATE_CONNECTED,
        symbols=symbols,
        streams=[f"{s.lower()}@{kind}" for s in symbols for kind in ("trade", "bookTicker")],
        connections=6,
    )
    for number in range(6):
        feed.connection_statuses.add(
            number=number,
            state=ingest_pb2.CONNECTION_STATE_CONNECTED,
            endpoint="wss://stream.example:9443",
            streams=1_000,
            symbols=500,
            frames=10_000 + number,
            reconnects=number,
        )
    for rank, symbol in enumerate(symbols[:20]):
        feed.most_active.add(symbol=symbol, trades=100_000 // (rank + 1), quotes=500_000 // (rank + 1))
    return feed


def test_feed_status_of_thousands_of_symbols_shows_connections_the_most_active_and_matches(
    platform: Platform,
) -> None:
    platform.ingest.feeds = [full_market_feed()]
    result = k2(platform, "feed", "status", "--top", "3", "--match", "btc*")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["symbols", "3000"] for line in lines)
    assert "binance connections" in result.stdout
    assert len([line for line in lines if "wss://stream.example:9443" in line]) == 6
    assert "the 3 most active of 3000 symbols" in result.stdout
    assert any(line.split() == ["ETHUSDT", "50000", "250000"] for line in lines)
    assert not any(line.startswith("X0017USDT") for line in lines)  # 3 rows only, not the 20 reported
    assert "binance: 2 of 3000 symbols match 'btc*': BTCUSDT, BTCFDUSD" in result.stdout
    assert "X0001USDT" not in result.stdout  # never the whole list
    overview = k2(platform, "status", "--top", "2")
    assert overview.exit_code == 0 and "the 2 most active of 3000 symbols" in overview.stdout


def test_demo_shows_the_busiest_symbols_matching_a_pattern(platform: Platform) -> None:
    matching = k2(platform, "demo", "--duration", "2.5", "--top", "5", "--match", "btc*")
    assert matching.exit_code == 0, matching.output
    assert "the 1 busiest of 1 symbols matching 'btc*'" in matching.stdout  # the live trades are BTCUSDT's
    wait_until(lambda: platform.query.open_subscriptions == 0)
    other = k2(platform, "demo", "--duration", "2.5", "--top", "5", "--match", "ETH*")
    assert other.exit_code == 0, other.output
    assert (
        "the 0 busiest of 0 symbols matching 'ETH*'" in other.stdout
        and "no symbol matches 'ETH*' yet" in other.stdout
    )
    wait_until(lambda: platform.query.open_subscriptions == 0)


def test_demo_shows_live_prices_feeds_and_writer(platform: Platform) -> None:
    result = k2(platform, "demo", "--duration", "2.5")
    assert result.exit_code == 0, result.output
    for text in ("BTCUSDT", "trades/s", "binance", "CONNECTED", "market_data.trades", "Kafka lag 12"):
        assert text in result.stdout
    assert len(platform.query.subscribe_requests) == 1
    wait_until(lambda: platform.query.open_subscriptions == 0)


def test_demo_survives_absent_services(platform: Platform) -> None:
    absent = unused_address()
    result = k2(platform, "demo", "--duration", "1", K2_QUERY_ADDRESS=absent, K2_WRITER_ADDRESS=absent)
    assert result.exit_code == 0, result.output
    assert "UNAVAILABLE" in result.stdout and "binance" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2014-03-10T10:05:44.516+11:00", datetime(2014, 3, 9, 23, 5, 44, 516000, tzinfo=UTC)),
        ("2014-03-10T00:05Z", datetime(2014, 3, 10, 0, 5, tzinfo=UTC)),
        ("2014-03-10 00:05:01", datetime(2014, 3, 10, 0, 5, 1, tzinfo=UTC)),
        ("2014-03-10", datetime(2014, 3, 10, tzinfo=UTC)),
        ("now", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)),
        ("today", datetime(2024, 5, 6, tzinfo=UTC)),
        ("yesterday", datetime(2024, 5, 5, tzinfo=UTC)),
        ("-90s", datetime(2024, 5, 6, 7, 6, 39, tzinfo=UTC)),
        ("-15m", datetime(2024, 5, 6, 6, 53, 9, tzinfo=UTC)),
        ("-1h", datetime(2024, 5, 6, 6, 8, 9, tzinfo=UTC)),
        ("-2d", datetime(2024, 5, 4, 7, 8, 9, tzinfo=UTC)),
        ("-1w", datetime(2024, 4, 29, 7, 8, 9, tzinfo=UTC)),
    ],
)
def test_time_parsing(text: str, expected: datetime) -> None:
    assert parse_time(text, now=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["", "1h", "-1y", "last tuesday", "2014-13-01"])
def test_time_parsing_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text)


def test_relative_defaults_are_evaluated_when_run() -> None:
    assert abs(parse_time("now") - datetime.now(UTC)) < timedelta(seconds=5)
