"""The Binance live feed against the replay exchange (in-process, Binance's protocol, real fault injection) and
the session's real Kafka broker, through the ingest service's KafkaSink.

Loss accounting, used after every fault: per symbol, the trade ids on the trades topic have no duplicates, and
every id between the first and the last one is either on the topic, in the dead-letter topic, or inside a gap the
feed reported (FeedStatus.recent_gaps), never silently missing.
"""

import asyncio
import json
import random
import socket
import ssl
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest
from pydantic import ValidationError
from strategies import positive_decimals
from test_ingest_support import headers_of, read_topic

from k2.core import avro
from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.iceberg import load_catalog, table_identifier
from k2.core.kafka import DEAD_LETTER, QUOTES, TRADES, Topic, topic_name
from k2.core.producer import DeliveryReport
from k2.core.protos import decimal_text
from k2.core.records import Record, RecordKind
from k2.ingest.v1.ingest_pb2 import CircuitState, ConnectionState, FeedStatus
from k2.services.ingest.binance import BinanceFeed, BinanceSettings, create_feed, parsing
from k2.services.ingest.binance.parsing import MESSAGE_ID_NAMESPACE, FrameParser
from k2.services.ingest.binance.publishing import PublishBuffer
from k2.services.ingest.binance.resilience import Backoff
from k2.services.ingest.binance.sequencing import GapLog, SymbolState
from k2.services.ingest.sink import KafkaSink
from k2.services.replay_exchange import ReplayExchange
from k2.services.writer.config import WriterSettings
from k2.services.writer.server import WriterApp

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
CONNECTED = ConnectionState.CONNECTION_STATE_CONNECTED
# Quick reactions for tests; everything else as configured in production.
FAST = {
    "backoff_base_seconds": 0.05,
    "backoff_cap_seconds": 0.4,
    "switch_overlap_seconds": 1.0,
    "watchdog_silence_seconds": 5.0,
    "open_timeout_seconds": 5.0,
    "close_timeout_seconds": 1.0,
    "stop_flush_timeout_seconds": 20.0,
    "backfill_enabled": False,  # gaps are reported only, unless a test asks for the REST backfill
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def exchange_running(**config: Any) -> AsyncIterator[ReplayExchange]:
    async with ReplayExchange(**({"port": 0, "rate": 2000, "symbols": tuple(SYMBOLS)} | config)) as exchange:  # type: ignore[arg-type]
        yield exchange


@dataclass
class Run:
    feed: BinanceFeed
    kafka: KafkaSettings
    task: asyncio.Task[None]

    def status(self) -> FeedStatus:
        return self.feed.status()

    async def stop(self) -> FeedStatus:
        await self.feed.stop()
        await self.task
        return self.feed.status()

    async def trades(self) -> list[Record]:
        return await self._records(TRADES)

    async def quotes(self) -> list[Record]:
        return await self._records(QUOTES)

    async def _records(self, topic: Topic) -> list[Record]:
        return [
            avro.decode(m.value() or b"")[1]
            for m in await read_topic(self.kafka, topic_name(self.kafka, topic))
        ]

    async def dead_letters(self) -> list[Any]:
        return await read_topic(self.kafka, topic_name(self.kafka, DEAD_LETTER))

    def trades_received(self) -> int:
        return self.feed.trades_received()


@asynccontextmanager
async def feed_running(
    kafka: KafkaSettings, endpoints: list[str], sink: Any = None, **settings: Any
) -> AsyncIterator[Run]:
    kafka_sink = KafkaSink(kafka)
    feed = create_feed(
        sink or kafka_sink,
        BinanceSettings(**({"endpoints": endpoints, "symbols": SYMBOLS} | FAST | settings)),
    )
    run = Run(feed, kafka, asyncio.create_task(feed.run()))
    try:
        yield run
    finally:
        await run.stop()
        await kafka_sink.close()


async def connected(run: Run, trades_after: int = 100) -> None:
    """Waits until the feed is connected and `trades_after` more trades arrived."""
    await until(lambda: run.status().state == CONNECTED, what="connected")
    target = run.trades_received() + trades_after
    await until(lambda: run.trades_received() >= target, what=f"{trades_after} trades")


def assert_accounted(
    trades: list[Record], status: FeedStatus, dead_lettered: dict[str, set[int]] | None = None
) -> dict[str, set[int]]:
    """Every id from first to last is on the topic, dead-lettered, or in a reported gap; returns the gaps."""
    ids: dict[str, list[int]] = defaultdict(list)
    for trade in trades:
        ids[trade["symbol"]].append(trade["source_sequence"])
    reported: dict[str, set[int]] = defaultdict(set)
    for gap in status.recent_gaps:
        reported[gap.symbol].update(range(gap.first_missing, gap.last_missing + 1))
    assert status.trades_missed == sum(len(r) for r in reported.values()), "totals disagree with recent_gaps"
    for symbol, symbol_ids in ids.items():
        assert len(symbol_ids) == len(set(symbol_ids)), f"{symbol}: duplicate trades on the topic"
        expected = set(range(min(symbol_ids), max(symbol_ids) + 1))
        missing = expected - set(symbol_ids) - (dead_lettered or {}).get(symbol, set())
        assert missing == reported[symbol], (
            f"{symbol}: missing {_ranges(missing)}, reported {_ranges(reported[symbol])}"
        )
    return reported


def _ranges(ids: set[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for i in sorted(ids):
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ranges


# ---- the feed end to end ------------------------------------------------------------------------


async def test_trades_and_quotes_reach_kafka_normalised_and_pings_are_answered(
    kafka_settings: KafkaSettings,
) -> None:
    async with exchange_running(ping_interval=0.2, pong_timeout=5.0) as exchange:
        url = exchange.url
        async with feed_running(kafka_settings, [url]) as run:
            await connected(run, trades_after=2000)
            live = run.status()
            status = await run.stop()
        stats = exchange.stats()
    assert live.state == CONNECTED and live.connections == 1 and live.endpoint == url
    assert list(live.symbols) == SYMBOLS
    assert list(live.streams) == [
        "btcusdt@trade",
        "btcusdt@bookTicker",
        "ethusdt@trade",
        "ethusdt@bookTicker",
    ]
    assert live.trades_per_second > 0 and live.messages_per_second > live.trades_per_second
    assert live.circuit_state == CircuitState.CIRCUIT_STATE_CLOSED
    assert status.state == ConnectionState.CONNECTION_STATE_STOPPED and status.connections == 0
    assert status.trades_per_second == 0
    assert not status.reconnects_by_reason and status.gaps_detected == 0
    # The server's pings (every 0.2 s) were answered by websockets; nothing was closed for a missing pong.
    assert stats["pings"]["pongs_received"] >= 5
    assert "pong_timeout" not in stats["connections"]["closed"]

    trades = await run.trades()
    assert len(trades) == run.feed.trades_received() and run.feed.unpublished_at_stop == 0
    assert_accounted(trades, status)
    trade = trades[0]
    assert trade["exchange"] == "BINANCE" and trade["asset_class"] == "CRYPTO" and trade["currency"] == "USDT"
    for trade in trades:
        assert trade["trade_id"] == f"BINANCE-{trade['symbol']}-{trade['source_sequence']}"
        assert trade["message_id"] == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, trade["trade_id"]))
        maker = trade["vendor_data"]["is_buyer_maker"]
        assert trade["side"] == {"true": "SELL", "false": "BUY"}[maker]
        assert int(trade["vendor_data"]["event_time"]) > 0
        assert trade["timestamp"].tzinfo is not None and trade["ingestion_timestamp"] >= trade["timestamp"]
        assert trade["price"] > 0 and trade["quantity"] > 0
    last = status.last_event_time.seconds + status.last_event_time.nanos / 1e9
    assert abs(last - max(t["timestamp"] for t in trades).timestamp()) < 1e-6

    quotes = await run.quotes()
    assert quotes and len(quotes) == sum(s.quotes for s in run.feed.states)
    for quote in quotes:
        assert quote["quote_id"] == f"BINANCE-{quote['symbol']}-{quote['source_sequence']}"
        assert quote["vendor_data"] == {"timestamp_source": "receive_time"}
        assert quote["timestamp"] == quote["ingestion_timestamp"]
        assert quote["bid_price"] < quote["ask_price"]
    by_symbol = defaultdict(list)
    for quote in quotes:
        by_symbol[quote["symbol"]].append(quote["source_sequence"])
    assert all(ids == sorted(set(ids)) for ids in by_symbol.values()), "quotes in update-id order, no copies"

    metrics = generate_latest(REGISTRY).decode()
    assert 'k2_binance_trades_total{service="ingest",symbol="BTCUSDT"}' in metrics
    assert 'k2_binance_queue_depth{service="ingest"}' in metrics


async def test_abnormal_close_1006_reconnects_and_reports_the_gap_exactly(
    kafka_settings: KafkaSettings,
) -> None:
    async with exchange_running() as exchange, feed_running(kafka_settings, [exchange.url]) as run:
        await connected(run)
        await asyncio.sleep(0.2)
        assert exchange.drop_connections()
        await until(lambda: run.status().reconnects_by_reason.get("closed_1006") == 1, what="1006 reconnect")
        await connected(run)
        status = await run.stop()
    assert dict(status.reconnects_by_reason) == {"closed_1006": 1}
    gaps = assert_accounted(await run.trades(), status)
    assert (
        status.gaps_detected == len(status.recent_gaps)
        and sum(map(len, gaps.values())) == status.trades_missed
    )


async def test_stalled_connection_is_replaced_by_the_watchdog(kafka_settings: KafkaSettings) -> None:
    async with (
        exchange_running() as exchange,
        feed_running(kafka_settings, [exchange.url], watchdog_silence_seconds=0.8) as run,
    ):
        await connected(run)
        stalled_at = time.monotonic()
        exchange.stall(30.0)  # data stops, pings go on: only the watchdog notices
        await until(lambda: run.status().reconnects_by_reason.get("watchdog") == 1, what="watchdog")
        reacted_after = time.monotonic() - stalled_at
        await connected(run)
        status = await run.stop()
    assert 0.8 <= reacted_after < 3.0
    assert dict(status.reconnects_by_reason) == {"watchdog": 1}
    gaps = assert_accounted(await run.trades(), status)
    assert gaps, "the trades sent during the stall were lost to the feed and must be reported"


async def test_watchdog_never_fires_while_data_flows(kafka_settings: KafkaSettings) -> None:
    async with (
        exchange_running(rate=500) as exchange,
        feed_running(kafka_settings, [exchange.url], watchdog_silence_seconds=0.5) as run,
    ):
        await connected(run, trades_after=10)
        await asyncio.sleep(2.5)
        status = await run.stop()
    assert not status.reconnects_by_reason
    assert_accounted(await run.trades(), status)


class SlowSink:
    """The real KafkaSink behind a slow link: every publish takes at least `delay` seconds."""

    def __init__(self, sink: KafkaSink, delay: float):
        self.sink = sink
        self.delay = delay

    async def publish_encoded(
        self, kind: RecordKind, keys: Sequence[bytes], values: Sequence[bytes]
    ) -> DeliveryReport:
        await asyncio.sleep(self.delay)
        return await self.sink.publish_encoded(kind, keys, values)

    async def dead_letter(self, raw: bytes, reason: str, field: str, source: str) -> None:
        await self.sink.dead_letter(raw, reason, field, source)


async def test_slow_kafka_applies_backpressure_bounded_without_loss_or_watchdog(
    kafka_settings: KafkaSettings,
) -> None:
    capacity = 300
    sink = KafkaSink(kafka_settings)
    try:
        async with (
            exchange_running(rate=1500) as exchange,
            feed_running(
                kafka_settings,
                [exchange.url],
                sink=SlowSink(sink, 0.25),
                watchdog_silence_seconds=0.5,
                batch_size=100,
                max_buffered_records=capacity,
            ) as run,
        ):
            depth: list[int] = []
            blocked = False
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                depth.append(run.feed.buffer.size())
                blocked |= any(c.blocked for c in run.feed.open_connections())
                await asyncio.sleep(0.01)
            status = await run.stop()
    finally:
        await sink.close()
    assert blocked, "the reader must have stopped reading while Kafka was slow"
    assert max(depth) <= capacity
    assert not status.reconnects_by_reason, "waiting for Kafka is not a silent connection"
    trades = await run.trades()
    assert len(trades) == run.feed.trades_received() and run.feed.unpublished_at_stop == 0
    assert_accounted(trades, status)


class RefusingSink:
    """The real KafkaSink, except that Kafka refuses every trade (as it would a record above its size limit)."""

    def __init__(self, sink: KafkaSink):
        self.sink = sink

    async def publish_encoded(
        self, kind: RecordKind, keys: Sequence[bytes], values: Sequence[bytes]
    ) -> DeliveryReport:
        if kind == "trade":
            return DeliveryReport(["Broker: Message size too large"] * len(values))
        return await self.sink.publish_encoded(kind, keys, values)

    async def dead_letter(self, raw: bytes, reason: str, field: str, source: str) -> None:
        await self.sink.dead_letter(raw, reason, field, source)


async def test_records_kafka_keeps_refusing_are_dead_lettered_and_never_stall_the_feed(
    kafka_settings: KafkaSettings,
) -> None:
    sink = KafkaSink(kafka_settings)
    try:
        async with (
            exchange_running() as exchange,
            feed_running(kafka_settings, [exchange.url], sink=RefusingSink(sink), publish_attempts=3) as run,
        ):
            await connected(run)
            await until(lambda: run.feed.publisher.undeliverable["dead_lettered"] >= 50, what="dead letters")
            await connected(run)  # still reading: the refused trades did not stall it
            status = await run.stop()
    finally:
        await sink.close()
    assert await run.trades() == [] and status.state == ConnectionState.CONNECTION_STATE_STOPPED
    refused = [
        m
        for m in await read_topic(kafka_settings, topic_name(kafka_settings, DEAD_LETTER))
        if headers_of(m).get("k2.dlq.source") == b"binance:trade"
    ]
    assert len(refused) == run.feed.publisher.undeliverable["dead_lettered"] == run.feed.trades_received()
    assert not run.feed.publisher.undeliverable["lost"]
    reason = headers_of(refused[0])["k2.dlq.reason"].decode()
    assert reason == "Kafka refused the trade 3 times: Broker: Message size too large"
    assert avro.decode(refused[0].value())[1]["symbol"] in SYMBOLS  # the record itself, as it would have been


async def test_missing_pong_closes_and_reconnects(kafka_settings: KafkaSettings) -> None:
    async with (
        exchange_running() as exchange,
        feed_running(
            kafka_settings, [exchange.url], ping_interval_seconds=0.2, ping_timeout_seconds=0.4
        ) as run,
    ):
        await connected(run)
        exchange.suppress_pongs(30.0)
        await until(lambda: run.status().reconnects_by_reason.get("ping_timeout") == 1, what="ping timeout")
        await connected(run)
        status = await run.stop()
    assert dict(status.reconnects_by_reason) == {"ping_timeout": 1}
    assert_accounted(await run.trades(), status)


async def test_server_shutdown_switches_over_make_before_break_without_loss(
    kafka_settings: KafkaSettings,
) -> None:
    async with exchange_running() as exchange, feed_running(kafka_settings, [exchange.url]) as run:
        await connected(run)
        first = run.feed.open_connections()[0]
        exchange.server_shutdown(
            delay=10.0
        )  # generous: the switch-over must beat it even on a loaded machine
        await until(
            lambda: first not in run.feed.open_connections() and run.status().connections == 1,
            what="switch-over",
        )
        await connected(run)
        status = await run.stop()
        stats = exchange.stats()
    assert dict(status.reconnects_by_reason) == {"server_shutdown": 1}
    assert stats["connections"]["closed"].get("server_shutdown", 0) == 0, "we closed it before the server did"
    assert status.gaps_detected == 0
    assert_accounted(await run.trades(), status)
    assert sum(s.duplicate_trades for s in run.feed.states) > 0, (
        "both connections delivered during the overlap"
    )


async def test_rotation_before_the_lifetime_limit_loses_no_trade(kafka_settings: KafkaSettings) -> None:
    async with (
        exchange_running(max_lifetime=3.0) as exchange,
        feed_running(
            kafka_settings,
            [exchange.url],
            rotation_interval_seconds=1.0,
            rotation_jitter_seconds=0.0,
            switch_overlap_seconds=0.5,
        ) as run,
    ):
        await connected(run)
        await until(
            lambda: run.status().reconnects_by_reason.get("rotation", 0) >= 3, timeout=20, what="rotations"
        )
        status = await run.stop()
        stats = exchange.stats()
    assert set(status.reconnects_by_reason) == {"rotation"}
    assert "lifetime" not in stats["connections"]["closed"], (
        "a connection reached the server's lifetime limit"
    )
    assert status.gaps_detected == 0
    assert_accounted(await run.trades(), status)


async def test_skipped_trade_ids_are_reported_as_a_gap_with_the_exact_range(
    kafka_settings: KafkaSettings,
) -> None:
    async with exchange_running() as exchange, feed_running(kafka_settings, [exchange.url]) as run:
        await connected(run)
        next_id = exchange.skip_trade_ids("BTCUSDT", 7)
        await until(lambda: run.status().gaps_detected >= 1, what="gap")
        status = await run.stop()
    gaps = [(g.symbol, g.first_missing, g.last_missing) for g in status.recent_gaps]
    assert gaps == [("BTCUSDT", next_id - 7, next_id - 1)]
    assert status.trades_missed == 7 and not status.reconnects_by_reason
    assert_accounted(await run.trades(), status)
    metrics = generate_latest(REGISTRY).decode()
    assert 'k2_binance_gaps_total{service="ingest",symbol="BTCUSDT"}' in metrics


async def test_a_gap_is_filled_by_trade_id_from_the_rest_api(kafka_settings: KafkaSettings) -> None:
    async with (
        exchange_running() as exchange,
        feed_running(
            kafka_settings, [exchange.url], backfill_enabled=True, rest_endpoint=exchange.http_url
        ) as run,
    ):
        await connected(run)
        next_id = exchange.skip_trade_ids("BTCUSDT", 7)
        await until(lambda: run.status().trades_backfilled >= 7, what="backfill")
        await connected(run)
        status = await run.stop()
    assert status.trades_missed == 7 and status.trades_backfilled == 7
    assert [(g.first_missing, g.last_missing) for g in status.recent_gaps] == [(next_id - 7, next_id - 1)]
    btc = [t for t in await run.trades() if t["symbol"] == "BTCUSDT"]
    ids = [t["source_sequence"] for t in btc]
    assert len(ids) == len(set(ids)) and set(ids) == set(range(min(ids), max(ids) + 1)), "a hole is left"
    filled = [t for t in btc if t["vendor_data"].get("source") == "rest_backfill"]
    assert sorted(t["source_sequence"] for t in filled) == list(range(next_id - 7, next_id))
    for trade in filled:  # the identity the stream would have given it, so copies are recognisable downstream
        assert trade["trade_id"] == f"BINANCE-{trade['symbol']}-{trade['source_sequence']}"
        assert trade["message_id"] == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, trade["trade_id"]))
        assert trade["price"] > 0 and trade["quantity"] > 0 and trade["side"] in ("BUY", "SELL")
    metrics = generate_latest(REGISTRY).decode()
    assert 'k2_binance_backfills_total{outcome="filled",service="ingest"}' in metrics


async def test_bad_rest_pages_are_retried_counted_and_never_end_the_backfill(
    kafka_settings: KafkaSettings,
) -> None:
    """A page whose items are not trades ended the backfill task for good, unlogged. Now: a gap answered only
    with bad pages is retried (bounded), counted `bad_page` and left reported; one bad answer then a good one
    fills its gap; later gaps are filled."""
    async with (
        exchange_running() as exchange,
        feed_running(
            kafka_settings,
            [exchange.url],
            backfill_enabled=True,
            rest_endpoint=exchange.http_url,
            backfill_attempts=2,
        ) as run,
    ):
        await connected(run)
        exchange.serve_bad_pages(2)  # ids that are not integers, a list, a null: on both attempts
        first_gap_end = exchange.skip_trade_ids("BTCUSDT", 5) - 1
        await until(lambda: run.feed.backfill.outcomes["bad_page"] == 1, what="the bad pages")
        exchange.serve_bad_pages(1, [{"id": 1}])  # a trade without price, qty, time: once, then the real page
        second_gap_end = exchange.skip_trade_ids("BTCUSDT", 4) - 1
        await until(lambda: run.status().trades_backfilled >= 4, what="the second gap's backfill")
        third_gap_end = exchange.skip_trade_ids("BTCUSDT", 3) - 1
        await until(lambda: run.status().trades_backfilled >= 7, what="the third gap's backfill")
        await connected(run)
        status = await run.stop()
    assert dict(run.feed.backfill.outcomes) == {"bad_page": 1, "filled": 2}
    assert [(g.first_missing, g.last_missing) for g in status.recent_gaps] == [
        (first_gap_end - 4, first_gap_end),
        (second_gap_end - 3, second_gap_end),
        (third_gap_end - 2, third_gap_end),
    ]
    assert status.trades_missed == 12 and status.trades_backfilled == 7
    btc = {t["source_sequence"] for t in await run.trades() if t["symbol"] == "BTCUSDT"}
    assert (
        set(range(second_gap_end - 3, second_gap_end + 1)) | set(range(third_gap_end - 2, third_gap_end + 1))
        <= btc
    )
    assert not btc & set(range(first_gap_end - 4, first_gap_end + 1))
    assert not run.feed.task_restarts
    metrics = generate_latest(REGISTRY).decode()
    assert 'k2_binance_backfills_total{outcome="bad_page",service="ingest"}' in metrics


async def test_an_unreachable_rest_api_leaves_the_gap_reported_and_the_feed_running(
    kafka_settings: KafkaSettings,
) -> None:
    async with (
        exchange_running() as exchange,
        feed_running(
            kafka_settings,
            [exchange.url],
            backfill_enabled=True,
            backfill_attempts=2,
            rest_endpoint=f"http://127.0.0.1:{free_port()}",
        ) as run,
    ):
        await connected(run)
        exchange.skip_trade_ids("BTCUSDT", 5)
        await until(lambda: run.feed.backfill.outcomes["unavailable"] >= 1, what="backfill given up")
        await connected(run)  # still streaming
        status = await run.stop()
    assert status.trades_missed == 5 and status.trades_backfilled == 0
    assert_accounted(await run.trades(), status)


async def test_malformed_frames_go_to_the_dead_letter_topic_with_payload_and_reason(
    kafka_settings: KafkaSettings,
) -> None:
    async with exchange_running() as exchange, feed_running(kafka_settings, [exchange.url]) as run:
        await connected(run)
        exchange.send_malformed("invalid_json", "BTCUSDT")
        exchange.send_malformed("missing_field", "BTCUSDT", field="p")
        exchange.send_malformed("non_decimal_price", "ETHUSDT", value="12.34.56")
        exchange.send_malformed("non_decimal_price", "ETHUSDT", value="123456789012345678901.5")  # 21 digits
        exchange.send_malformed("non_decimal_price", "ETHUSDT", value="0.0000000000000000001")  # 19 places
        await until(lambda: sum(run.feed.parser.malformed.values()) == 5, what="5 malformed frames")
        await connected(run)
        status = await run.stop()
    letters = await run.dead_letters()
    assert len(letters) == 5
    by_reason = {headers_of(m)["k2.dlq.reason"].decode(): m for m in letters}
    invalid = next(m for reason, m in by_reason.items() if reason.startswith("invalid JSON"))
    with pytest.raises(ValueError):
        json.loads(invalid.value())
    assert headers_of(invalid)["k2.dlq.source"] == b"binance"
    missing = by_reason["missing field 'p'"]
    assert headers_of(missing)["k2.dlq.field"] == b"price"
    assert headers_of(missing)["k2.dlq.source"] == b"binance:btcusdt@trade"
    assert "p" not in json.loads(missing.value())["data"]
    rejected_prices = {}
    for reason, message in by_reason.items():
        if headers_of(message).get("k2.dlq.field") == b"price" and message is not missing:
            rejected_prices[json.loads(message.value())["data"]["p"]] = reason
    assert (
        rejected_prices["12.34.56"]
        == "price: not a decimal number: '12.34.56' (digits with an optional '-', '.' and exponent, e.g. 97123.45 or 1E-8)"
    )
    assert "more than 20 integer digits" in rejected_prices["123456789012345678901.5"]
    assert "more than 18 decimal places" in rejected_prices["0.0000000000000000001"]
    assert dict(run.feed.parser.malformed) == {"invalid_json": 1, "missing_field": 1, "invalid_value": 3}
    # A rejected frame never moves the sequence (its id could be anything): each rejected trade's id, and the
    # unreadable one of the invalid JSON frame, is a one-trade gap, which the REST backfill fills where it can.
    dead_lettered: dict[str, set[int]] = defaultdict(set)
    for message in letters:
        if message is not invalid:
            data = json.loads(message.value())["data"]
            dead_lettered[data["s"]].add(data["t"])
    gaps = assert_accounted(await run.trades(), status)
    assert {symbol: len(ids) for symbol, ids in gaps.items() if ids} == {"BTCUSDT": 2, "ETHUSDT": 3}
    assert all(dead_lettered[symbol] <= gaps[symbol] for symbol in dead_lettered)


async def test_two_symbols_trades_of_one_id_both_land_in_iceberg(
    kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    """Binance numbers trades per symbol: BTCUSDT and ETHUSDT trades carrying the same ids are all kept by the
    writer, whose dedupe goes by message_id."""
    async with exchange_running(rate=400) as exchange:
        for symbol in SYMBOLS:
            exchange.renumber_trades(symbol, 1_000)
        async with feed_running(kafka_settings, [exchange.url]) as run:
            await until(lambda: all(s.last_trade_id >= 1_050 for s in run.feed.states), what="50 trades each")
            status = await run.stop()
    trades = await run.trades()
    assert_accounted(trades, status)
    ids = {symbol: {t["source_sequence"] for t in trades if t["symbol"] == symbol} for symbol in SYMBOLS}
    shared = ids["BTCUSDT"] & ids["ETHUSDT"]
    assert len(shared) >= 50
    app = WriterApp(
        WriterSettings(port=0, metrics_port=0, group_id=f"w-{uuid.uuid4().hex[:8]}"),
        kafka_settings,
        iceberg_settings,
        AuthSettings(),
    )
    await app.start()
    try:
        await asyncio.to_thread(lambda: app.loop.flush().result(60))
        table = load_catalog(iceberg_settings).load_table(table_identifier(iceberg_settings, "trade"))
        await until(
            lambda: table.refresh().scan().count() >= len(trades), timeout=60, what="every trade in Iceberg"
        )
    finally:
        await app.stop()
    rows = (
        table.refresh().scan(selected_fields=("symbol", "source_sequence", "trade_id")).to_arrow().to_pylist()
    )
    assert sorted((r["symbol"], r["source_sequence"]) for r in rows) == sorted(
        (t["symbol"], t["source_sequence"]) for t in trades
    )
    assert {r["trade_id"] for r in rows if r["source_sequence"] == min(shared)} == {
        f"BINANCE-{symbol}-{min(shared)}" for symbol in SYMBOLS
    }


async def test_a_trade_id_jump_and_a_reset_back_re_baseline_the_sequence(
    kafka_settings: KafkaSettings,
) -> None:
    """An exchange renumbering a symbol 5,000,000 ids ahead, then back: each is a reported sequence reset, not a
    gap of millions nor a run of "duplicates"; every trade after either is published."""
    async with exchange_running() as exchange, feed_running(kafka_settings, [exchange.url]) as run:
        btc = next(s for s in run.feed.states if s.symbol == "BTCUSDT")
        await connected(run)
        jump = btc.last_trade_id + 5_000_000
        exchange.renumber_trades("BTCUSDT", jump)
        await until(lambda: btc.last_trade_id >= jump + 30, what="30 trades after the jump")
        before = run.feed.gap_log.recent_resets[0].previous_trade_id  # the last id the exchange sent before
        after_jump = btc.last_trade_id
        exchange.renumber_trades("BTCUSDT", before + 1)
        await until(lambda: before + 30 <= btc.last_trade_id < jump, what="30 trades after the reset back")
        status = await run.stop()
    btc_ids = sorted(t["source_sequence"] for t in await run.trades() if t["symbol"] == "BTCUSDT")
    assert len(btc_ids) == len(set(btc_ids))
    runs = _ranges(set(btc_ids))
    assert len(runs) == 2 and runs[1][0] == jump, runs  # [first .. before, then before+1 ..] and [jump ..]
    assert runs[0][1] >= before + 30 and runs[1][1] >= after_jump
    assert status.sequence_resets == 2 and status.trades_missed == 0 and not status.recent_gaps
    assert [(r.symbol, r.trade_id) for r in status.recent_resets] == [
        ("BTCUSDT", jump),
        ("BTCUSDT", before + 1),
    ]
    assert status.recent_resets[0].previous_trade_id == before
    assert status.recent_resets[1].previous_trade_id >= after_jump
    metrics = generate_latest(REGISTRY).decode()
    assert 'k2_binance_sequence_resets_total{service="ingest",symbol="BTCUSDT"}' in metrics


async def test_many_symbols_use_several_connections_and_rate_limited_subscribes(
    kafka_settings: KafkaSettings,
) -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "SHIBUSDT", "PEPEUSDT"]
    async with exchange_running(
        symbols=tuple(symbols), max_streams_per_connection=4, ping_interval=0.5
    ) as exchange:
        async with feed_running(
            kafka_settings,
            [exchange.url],
            symbols=symbols,
            max_streams_per_connection=4,
            streams_in_url=1,
            streams_per_subscribe=1,
            control_messages_per_second=2,
        ) as run:
            started = time.monotonic()
            await until(lambda: run.status().state == CONNECTED, what="3 connections subscribed")
            subscribed_after = time.monotonic() - started
            await until(lambda: all(s.trades for s in run.feed.states), what="trades of every symbol")
            live = run.status()
            status = await run.stop()
        stats = exchange.stats()
    assert live.connections == 3 and len(live.streams) == 12
    # 3 SUBSCRIBEs per connection at 2/s: the last one waits for a free slot in the 1 s window.
    assert subscribed_after >= 1.0
    assert stats["connections"]["closed"].get("rate_limit", 0) == 0
    assert not status.reconnects_by_reason
    trades = await run.trades()
    assert {t["symbol"] for t in trades} == set(symbols)
    assert {t["currency"] for t in trades} == {"USDT"}
    assert_accounted(trades, status)


async def test_failover_to_the_next_endpoint(kafka_settings: KafkaSettings) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    async with exchange_running() as exchange, feed_running(kafka_settings, [dead, exchange.url]) as run:
        await connected(run)
        status = run.status()
        assert status.endpoint == exchange.url
    assert run.feed.connect_failures == 1
    assert status.circuit_state == CircuitState.CIRCUIT_STATE_CLOSED


async def test_circuit_breaker_opens_after_consecutive_failures_and_recovers(
    kafka_settings: KafkaSettings,
) -> None:
    port = free_port()
    async with feed_running(
        kafka_settings,
        [f"ws://127.0.0.1:{port}"],
        circuit_failure_threshold=3,
        circuit_cooldown_seconds=1.5,
        backoff_base_seconds=0.01,
        backoff_cap_seconds=0.02,
    ) as run:
        await until(
            lambda: run.status().circuit_state == CircuitState.CIRCUIT_STATE_OPEN, what="open circuit"
        )
        opened_at = time.monotonic()
        assert run.feed.connect_failures == 3
        await asyncio.sleep(0.7)
        assert run.feed.connect_failures == 3, "no attempt while the circuit is open"
        # The half-open trial against the still dead endpoint fails: open again for another cooldown.
        await until(lambda: run.feed.connect_failures == 4, what="half-open trial")
        assert time.monotonic() - opened_at >= 1.4
        assert run.status().circuit_state == CircuitState.CIRCUIT_STATE_OPEN
        async with exchange_running(port=port):
            await until(lambda: run.status().state == CONNECTED, timeout=10, what="recovery")
            assert run.status().circuit_state == CircuitState.CIRCUIT_STATE_CLOSED
            assert run.feed.connect_failures == 4
            await connected(run)
            await run.stop()
    assert run.feed.breaker.opened == 2


async def test_tls_certificates_are_verified(
    kafka_settings: KafkaSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A wss:// endpoint with a certificate no trusted CA signed is refused (and counted as a failed attempt)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    await asyncio.to_thread(lambda: subprocess.run(command, check=True, capture_output=True))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with feed_running(kafka_settings, [f"wss://127.0.0.1:{port}"]) as run:
            await until(lambda: run.feed.connect_failures >= 2, what="refused TLS connections")
            assert run.status().connections == 0
    finally:
        server.close()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_stop_publishes_everything_parsed(kafka_settings: KafkaSettings) -> None:
    async with (
        exchange_running(rate=5000) as exchange,
        feed_running(kafka_settings, [exchange.url], batch_size=2000) as run,
    ):
        await connected(run, trades_after=3000)
        await run.stop()
    trades = await run.trades()
    assert len(trades) == run.feed.trades_received() and run.feed.unpublished_at_stop == 0
    assert run.feed.publisher.published["trade"] == len(trades)


# ---- parts ------------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_jittered() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(7))
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4, "jittered"
    assert backoff.delay(10_000) <= 30.0


def test_settings_validation() -> None:
    assert BinanceSettings().endpoints == [
        "wss://stream.binance.com:9443",
        "wss://stream.binance.com:443",
        "wss://data-stream.binance.vision",
    ]
    assert BinanceSettings().time_unit == "MICROSECOND"
    with pytest.raises(ValidationError, match="loopback"):
        BinanceSettings(endpoints=["ws://stream.binance.com:9443"])
    with pytest.raises(ValidationError, match="24 h"):
        BinanceSettings(rotation_interval_seconds=24 * 3600)
    with pytest.raises(ValidationError, match="quote asset"):
        BinanceSettings(symbols=["FOOBAR"])
    with pytest.raises(ValidationError, match="1024"):
        BinanceSettings(max_streams_per_connection=2000)
    with pytest.raises(ValidationError, match="below Binance's 5"):
        BinanceSettings(control_messages_per_second=5)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K2_INGEST_BINANCE_SYMBOLS", "btcusdt, ethbtc,BTCFDUSD")
    monkeypatch.setenv("K2_INGEST_BINANCE_ENDPOINTS", "ws://127.0.0.1:9443,wss://data-stream.binance.vision")
    monkeypatch.setenv("K2_INGEST_BINANCE_STREAM_TYPES", "trade")
    settings = BinanceSettings()
    assert settings.symbols == ["BTCUSDT", "ETHBTC", "BTCFDUSD"]
    assert settings.endpoints == ["ws://127.0.0.1:9443", "wss://data-stream.binance.vision"]
    assert settings.stream_types == ["trade"]


class ListSink:
    """Collects what the feed publishes (for feeding frames to the parser directly)."""

    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = defaultdict(list)

    async def publish_encoded(
        self, kind: RecordKind, keys: Sequence[bytes], values: Sequence[bytes]
    ) -> DeliveryReport:
        self.records[kind] += [avro.decode(value)[1] for value in values]
        return DeliveryReport([None] * len(values))

    async def dead_letter(self, raw: bytes, reason: str, field: str, source: str) -> None:
        self.records["dead_letter"].append({"raw": raw, "reason": reason, "field": field, "source": source})


def parsed(messages: list[tuple[bytes, bytes, int]]) -> list[Record]:
    """The records of the feed's buffered messages, each checked to be keyed by its symbol."""
    records = [avro.decode(value)[1] for _, value, _ in messages]
    assert [key for key, _, _ in messages] == [record["symbol"].encode() for record in records]
    return records


def _frame(stream: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"stream": stream, "data": data}).encode()


def _trade(trade_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "e": "trade",
        "E": 1764072000123456,
        "s": "BTCUSDT",
        "t": trade_id,
        "p": "97123.45000000",
        "q": "0.00012000",
        "T": 1764072000123000,
        "m": True,
        "M": True,
    } | fields


def test_parser_maps_fields_exactly_and_counts_unknowns() -> None:
    feed = BinanceFeed(BinanceSettings(symbols=["BTCUSDT", "ETHBTC"], time_unit="MILLISECOND"), ListSink())
    parse = feed.parser.parse
    parse(
        _frame(
            "btcusdt@trade",
            _trade(
                5,
                T=1764072000123,
                E=1764072000124,
                p="0.00000001",
                q="12345678901234567890.123456789012345678",
            ),
        )
    )
    parse(_frame("btcusdt@trade", _trade(6, T=1764072000125, E=1764072000126, m=False, X="new field")))
    parse(_frame("btcusdt@trade", _trade(7)))  # a microsecond time read as milliseconds: out of range
    parse(_frame("btcusdt@aggTrade", {"e": "aggTrade", "s": "BTCUSDT"}))
    parse(
        _frame(
            "ethbtc@bookTicker",
            {
                "u": 9,
                "s": "ETHBTC",
                "b": "0.03100000",
                "B": "0.00000000",
                "a": "0.03200000",
                "A": "1.50000000",
            },
        )
    )
    parse(
        _frame("ethbtc@bookTicker", {"u": 8, "s": "ETHBTC", "b": "0.031", "B": "1", "a": "0.032", "A": "1"})
    )
    parse(b'{"result":null,"id":3}')
    first, second = parsed(feed.buffer.trades)
    assert first["price"] == Decimal("0.00000001")
    assert first["quantity"] == Decimal("12345678901234567890.123456789012345678")
    assert first["timestamp"] == datetime(2025, 11, 25, 12, 0, 0, 123000, UTC)
    assert first["vendor_data"] == {"is_buyer_maker": "true", "event_time": "1764072000124000"}
    assert first["side"] == "SELL" and second["side"] == "BUY"
    assert second["currency"] == "USDT"
    (quote,) = parsed(feed.buffer.quotes)  # the older update id 8 came after 9: superseded
    assert quote["currency"] == "BTC" and quote["bid_price"] is None and quote["bid_quantity"] is None
    assert quote["ask_price"] == Decimal("0.032") and quote["source_sequence"] == 9
    assert feed.parser.unknown_events == {"aggTrade": 1}
    assert feed.parser.unknown_fields == {"X": 1}
    ((raw, reason, _, source),) = feed.buffer.dead_letters
    assert json.loads(raw)["data"]["t"] == 7 and reason.startswith("value out of range")
    assert source == "binance:btcusdt@trade"


def test_book_tickers_follow_the_ingest_rules() -> None:
    """A side priced at zero with a quantity was accepted; quotes are validated as every ingest path does."""
    feed = BinanceFeed(BinanceSettings(symbols=["ETHBTC"]), ListSink())
    feed.parser.parse(
        _frame("ethbtc@bookTicker", {"u": 1, "s": "ETHBTC", "b": "0", "B": "1", "a": "0.032", "A": "1"})
    )
    feed.parser.parse(
        _frame("ethbtc@bookTicker", {"u": 2, "s": "ETHBTC", "b": "0.031", "B": "1", "a": "0.032", "A": "1"})
    )
    (quote,) = parsed(feed.buffer.quotes)
    assert quote["source_sequence"] == 2
    ((raw, reason, field, _),) = feed.buffer.dead_letters
    assert (json.loads(raw)["data"]["u"], field, reason) == (1, "bid_price", "bid_price: must be positive: 0")


def test_parser_sequencing_drops_copies_and_fills_holes_while_held() -> None:
    feed = BinanceFeed(BinanceSettings(symbols=["BTCUSDT"]), ListSink())
    (state,) = feed.states
    for trade_id in (10, 11, 11, 12):
        feed.parser.parse(_frame("btcusdt@trade", _trade(trade_id)))
    state.hold()  # a switch-over: the new connection runs ahead of the old one
    for trade_id in (16, 17, 13, 14, 16):
        feed.parser.parse(_frame("btcusdt@trade", _trade(trade_id)))
    assert state.has_pending()
    state.release()  # 15 never came
    feed.parser.parse(_frame("btcusdt@trade", _trade(20)))  # not held: a gap at once
    assert [t["source_sequence"] for t in parsed(feed.buffer.trades)] == [10, 11, 12, 16, 17, 13, 14, 20]
    assert [(g.first_missing, g.last_missing) for g in feed.gap_log.recent] == [(15, 15), (18, 19)]
    assert state.duplicate_trades == 2 and feed.gap_log.missed == 3


def test_a_rejected_frame_never_moves_the_sequence_and_far_ids_reset_it() -> None:
    feed = BinanceFeed(BinanceSettings(symbols=["BTCUSDT"], trade_id_max_jump=1000), ListSink())
    (state,) = feed.states
    parse = feed.parser.parse
    parse(_frame("btcusdt@trade", _trade(10)))
    parse(
        _frame("btcusdt@trade", _trade(10**15, p="not a price"))
    )  # corrupt: dead-lettered, sequence unmoved
    parse(_frame("btcusdt@trade", _trade(11)))
    parse(_frame("btcusdt@trade", _trade(13)))  # a hole within the bound: a gap, as always
    parse(_frame("btcusdt@trade", _trade(1013 + 1)))  # beyond the bound ahead: a reset
    parse(_frame("btcusdt@trade", _trade(1015)))
    parse(_frame("btcusdt@trade", _trade(1015)))  # a copy
    parse(_frame("btcusdt@trade", _trade(5)))  # beyond the bound behind: a reset
    parse(_frame("btcusdt@trade", _trade(6)))
    assert [t["source_sequence"] for t in parsed(feed.buffer.trades)] == [10, 11, 13, 1014, 1015, 5, 6]
    assert len(feed.buffer.dead_letters) == 1
    assert [(g.first_missing, g.last_missing) for g in feed.gap_log.recent] == [(12, 12)]
    status = feed.status()
    assert status.sequence_resets == 2 and state.duplicate_trades == 1
    assert [(r.previous_trade_id, r.trade_id) for r in status.recent_resets] == [(13, 1014), (1015, 5)]


def test_json_numbers_in_frames_are_read_exactly_never_as_floats() -> None:
    feed = BinanceFeed(BinanceSettings(symbols=["BTCUSDT"], time_unit="MILLISECOND"), ListSink())
    feed.parser.parse(
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1764072000124,"s":"BTCUSDT","t":5,'
        b'"p":0.1,"q":3,"T":1764072000123,"m":true,"M":true}}'
    )
    feed.parser.parse(_frame("btcusdt@trade", _trade(6)).replace(b'"t": 6', b'"t": 6.5'))
    [trade] = parsed(feed.buffer.trades)
    assert (trade["price"], trade["quantity"]) == (Decimal("0.1"), Decimal(3))  # 0.1 exactly, not the float's
    [(_, reason, field, _)] = feed.buffer.dead_letters
    assert (field, reason) == ("source_sequence", "source_sequence: t: not an integer: Decimal('6.5')")


# ---- native trade frames: the same outcome as the Python parser's -------------------------------------------

FRAME_SYMBOLS = [("BTCUSDT", "USDT"), ("ÉTHBTC", "BTC")]  # a non-ASCII symbol: its stream and key are UTF-8
INT64 = 2**63


@st.composite
def trade_frames(draw: st.DrawFn, microseconds: bool) -> tuple[bytes, bytes]:
    """A trade frame (and its escaped copy), mostly one native code writes, each value at its edges one time in
    sixteen."""

    def value(valid: st.SearchStrategy[Any], edges: st.SearchStrategy[Any]) -> Any:
        return draw(edges) if draw(st.integers(0, 15)) == 0 else draw(valid)

    scale = 1 if microseconds else 1000
    first, end = -62_135_596_800_000_000 // scale, 253_402_300_800_000_000 // scale  # the datetime range
    symbol = draw(st.sampled_from([symbol for symbol, _ in FRAME_SYMBOLS]))
    numbers = st.one_of(
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.none(),
        st.booleans(),
        st.text(max_size=3),
    )
    plain_decimals = positive_decimals().map(decimal_text)
    edge_decimals = st.one_of(
        numbers,
        st.sampled_from(
            [
                "0",
                "0.000",
                "1e3",
                "-1",
                "1.",
                ".5",
                " 1",
                "1.0000000000000000000",
                "123456789012345678901",
                "0.0000000000000000001",
                "99999999999999999999.999999999999999999",
                "0.000000000000000001",
                "١",
            ]
        ),
    )
    event: dict[str, Any] = {
        "e": "trade",
        "E": value(
            st.integers(-(2**62) // scale, 2**62 // scale),
            st.one_of(numbers, st.sampled_from([INT64 - 1, -INT64, INT64, INT64 // 1000 + 1, 10**30])),
        ),
        "s": value(st.just(symbol), st.sampled_from(["", "btcusdt", "ETHBTC", "BTCUSDT", "ÉTHBTC"])),
        "t": value(
            st.integers(0, 40), st.one_of(numbers, st.sampled_from([-1, INT64 - 1, INT64, -INT64 - 1]))
        ),
        "p": value(plain_decimals, edge_decimals),
        "q": value(plain_decimals, edge_decimals),
        "T": value(
            st.integers(first, end - 1),
            st.one_of(numbers, st.sampled_from([first - 1, first, end - 1, end, INT64 - 1, -INT64, INT64])),
        ),
        "m": value(st.booleans(), numbers),
        "M": value(st.booleans(), numbers),
    }
    for key in (
        draw(st.lists(st.sampled_from(sorted(event)), max_size=2)) if draw(st.integers(0, 15)) == 0 else ()
    ):
        event.pop(key, None)
    if draw(st.integers(0, 31)) == 0:
        event["X"] = draw(numbers)
    stream = symbol.lower() + draw(st.sampled_from(["@trade"] * 14 + ["@bookTicker", "@aggTrade"]))
    return frame_pair(
        stream,
        event,
        draw(st.sampled_from([(",", ":"), (", ", ": ")])),
        draw(st.booleans()),
        draw(st.integers(0, 40)) if draw(st.integers(0, 31)) == 0 else None,
        draw(st.sampled_from(["", "", "", "", "", "", "\n", " x"])),
    )


def frame_pair(
    stream: str,
    event: dict[str, Any],
    separators: tuple[str, str] = (",", ":"),
    ensure_ascii: bool = True,
    trade_id_again: int | None = None,
    ending: str = "",
) -> tuple[bytes, bytes]:
    """The frame of an event, and the same frame with a character escaped, which only the Python parser reads."""
    data = json.dumps(event, separators=separators, ensure_ascii=ensure_ascii)
    if trade_id_again is not None:  # a key twice: the last one counts
        data = data[:-1] + separators[0] + f'"t"{separators[1]}{trade_id_again}' + "}"
    frame = (
        json.dumps({"stream": stream}, separators=separators, ensure_ascii=ensure_ascii)[:-1]
        + f'{separators[0]}"data"{separators[1]}{data}'
        + "}"
        + ending
    )
    escaped = frame.replace('"trade"', '"tr\\u0061de"', 1)  # the event type, which the parser does not read
    if ending == " x":  # not JSON: the reason names a position, so the plain frame is padded to the same size
        frame = frame.replace('"trade"', '"trade"     ', 1)
    return frame.encode(), escaped.encode()


def parser_outcome(frames: list[bytes], microseconds: bool) -> dict[str, Any]:
    """Everything a FrameParser makes of the frames: messages, dead letters, counters, symbol states and gaps."""
    gap_log = GapLog(recent=100)
    states = [SymbolState(symbol, currency, gap_log) for symbol, currency in FRAME_SYMBOLS]
    out = PublishBuffer(capacity=10**9)
    parser = FrameParser(states, ["trade", "bookTicker"], microseconds, out)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parsing, "time_ns", lambda: 1_764_000_000_123_456_789)
        for index, frame in enumerate(frames):
            if index == len(frames) // 2:
                states[0].hold()  # a switch-over for part of the run: holes stay pending
            parser.parse(frame)
    states[0].release()
    return {
        "trades": out.trades,
        "quotes": out.quotes,
        "dead_letters": [(reason, field, source) for _, reason, field, source in out.dead_letters],
        "counters": (parser.unknown_events, parser.unknown_fields, parser.malformed),
        "states": [
            [getattr(state, name) for name in SymbolState.__slots__ if name != "gap_log"] for state in states
        ],
        "gaps": [(gap.symbol, gap.first_missing, gap.last_missing) for gap in gap_log.recent],
    }


@settings(max_examples=300, deadline=None)
@given(
    st.booleans().flatmap(
        lambda microseconds: st.tuples(
            st.just(microseconds), st.lists(trade_frames(microseconds), max_size=12)
        )
    )
)
def test_trade_frames_written_natively_are_what_the_python_parser_makes_of_them(
    run: tuple[bool, list[tuple[bytes, bytes]]],
) -> None:
    microseconds, frames = run
    assert parser_outcome([plain for plain, _ in frames], microseconds) == parser_outcome(
        [escaped for _, escaped in frames], microseconds
    )


@pytest.mark.parametrize("microseconds", [True, False])
def test_trade_frames_at_every_limit_are_written_natively_as_the_python_parser_writes_them(
    microseconds: bool,
) -> None:
    scale = 1 if microseconds else 1000
    first, end = -62_135_596_800_000_000 // scale, 253_402_300_800_000_000 // scale
    trade = {
        "e": "trade",
        "E": 1764072000123,
        "s": "BTCUSDT",
        "t": 0,
        "p": "97123.45",
        "q": "0.5",
        "T": 1764072000123,
        "m": True,
        "M": True,
    }
    changes = [{"T": value} for value in (first - 1, first, -1, 0, end - 1, end, INT64 - 1, -INT64)]
    changes += [{"E": value} for value in (INT64 - 1, -INT64, INT64 // 1000, INT64 // 1000 + 1, -1, 0)]
    changes += [
        {name: text}
        for name in ("p", "q")
        for text in (
            "99999999999999999999.999999999999999999",
            "0.000000000000000001",
            "99999999999999999999",
            "100000000000000000000",
            "0.0000000000000000001",
            "0",
            "0.0",
            "00000000000000000001",
            "1.000000000000000000",
            "1.0000000000000000000",
            "18446744073709551616",
            "1e3",
        )
    ]
    changes += [{"t": value} for value in (INT64 - 1, -INT64, 0)]
    frames = [
        frame_pair("btcusdt@trade", trade | change | ({} if "t" in change else {"t": number}))
        for number, change in enumerate(changes, 1)
    ]
    assert parser_outcome([plain for plain, _ in frames], microseconds) == parser_outcome(
        [escaped for _, escaped in frames], microseconds
    )


def test_plain_trade_frames_are_written_natively() -> None:
    feed = BinanceFeed(BinanceSettings(symbols=["BTCUSDT"]), ListSink())
    encode = feed.parser._encode_plain_trade
    frame = _frame("btcusdt@trade", _trade(5))
    position, trade_id, event_us, key, value = encode(frame, 1_764_000_000_000_000)
    assert (position, trade_id, event_us, key) == (0, 5, 1764072000123000, b"BTCUSDT")
    record = avro.decode(value)[1]
    assert record["trade_id"] == "BINANCE-BTCUSDT-5"
    assert record["message_id"] == str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "BINANCE-BTCUSDT-5"))
    assert encode(frame.replace(b'"trade"', b'"tr\\u0061de"'), 0) is None


def test_two_symbols_trades_of_one_id_have_their_own_trade_and_message_ids() -> None:
    """Binance numbers trades per symbol: the same id on two symbols is two trades, natively and in Python."""
    trade = {
        "e": "trade",
        "E": 1764072000123,
        "t": 77,
        "p": "1.5",
        "q": "2",
        "T": 1764072000123,
        "m": False,
        "M": True,
    }
    frames = [frame_pair(f"{symbol.lower()}@trade", trade | {"s": symbol}) for symbol, _ in FRAME_SYMBOLS]
    native = parser_outcome([plain for plain, _ in frames], microseconds=False)
    assert native == parser_outcome([escaped for _, escaped in frames], microseconds=False)
    records = [avro.decode(value)[1] for _, value, _ in native["trades"]]
    assert [r["trade_id"] for r in records] == ["BINANCE-BTCUSDT-77", "BINANCE-ÉTHBTC-77"]
    assert [r["message_id"] for r in records] == [
        str(uuid.uuid5(MESSAGE_ID_NAMESPACE, r["trade_id"])) for r in records
    ]
    assert records[0]["message_id"] != records[1]["message_id"]
