"""The whole Binance spot market through the feed (K2_INGEST_BINANCE_SYMBOLS=ALL) against the replay exchange's
generated full market (thousands of symbols, Zipf activity, Binance's limits enforced) and the real Kafka broker:
streams sharded within 1,024 per connection and subscribed within the control-message budget, listings and
delistings followed while running, one connection's failure leaving the others flowing."""

import asyncio
import re
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from test_ingest_binance import CONNECTED, assert_accounted, exchange_running, feed_running, until

from k2.core.config import KafkaSettings
from k2.services.replay_exchange import ReplayExchange

MARKET = {"rate": 600, "quotes_per_trade": 2.0, "rest_history_trades": 2_000}


def sessions(exchange: ReplayExchange) -> list[dict[str, Any]]:
    return list(exchange.stats()["connections"]["list"])


def all_symbols(exchange: ReplayExchange, **settings: Any) -> dict[str, Any]:
    return {"symbols": "ALL", "rest_endpoint": exchange.http_url, "symbols_refresh_seconds": 0.5} | settings


async def test_the_full_market_is_sharded_within_binance_limits_and_subscribed_within_the_budget(
    kafka_settings: KafkaSettings,
) -> None:
    async with exchange_running(market_symbols=2_500, **MARKET) as exchange:
        info = exchange.exchange_info("TRADING")
        assert len(info["symbols"]) == 2_500
        async with feed_running(
            kafka_settings, [exchange.url], **all_symbols(exchange, metrics_symbols=100)
        ) as run:
            await until(
                lambda: (
                    len(run.status().connection_statuses) == 5
                    and run.status().state == CONNECTED
                    and sum(c.streams for c in run.status().connection_statuses) == 5_000
                ),
                timeout=60,
                what="5,000 streams subscribed on 5 connections",
            )
            await until(
                lambda: len({s.symbol for s in run.feed.states if s.trades}) >= 200,
                timeout=60,
                what="trades of 200 symbols",
            )
            live = run.status()
            stats = exchange.stats()
            metrics = generate_latest(REGISTRY).decode()
            status = await run.stop()
    # Metrics labels stay bounded: 100 symbols by name, the rest as _other; one connection label per connection.
    market = {s["symbol"] for s in info["symbols"]}
    labelled = set(
        re.findall(r'^k2_binance_trades_total\{service="ingest",symbol="([^"]+)"\}', metrics, re.MULTILINE)
    )
    assert len(labelled & market) <= 100 and "_other" in labelled
    connection_labels = set(
        re.findall(r'^k2_binance_connection_streams\{[^}]*connection="(\d+)"', metrics, re.MULTILINE)
    )
    assert connection_labels == {"0", "1", "2", "3", "4"}
    assert live.connections == 5
    assert sorted(c.number for c in live.connection_statuses) == [0, 1, 2, 3, 4]
    assert all(c.streams <= 1_024 for c in live.connection_statuses)
    assert len(live.symbols) == 2_500 and len(live.streams) == 5_000
    assert len(live.most_active) == 20 and {a.symbol for a in live.most_active} <= set(live.symbols)
    assert [a.trades for a in live.most_active] == sorted((a.trades for a in live.most_active), reverse=True)
    open_sessions = stats["connections"]["list"]
    assert len(open_sessions) == 5
    assert all(len(s["streams"]) <= 1_024 for s in open_sessions)
    assert sum(len(s["streams"]) for s in open_sessions) == 5_000
    # Each connection sent its SUBSCRIBEs (200 streams in the URL, then 200 per request) within the budget.
    assert all(s["peak_incoming_per_second"] <= 5 for s in open_sessions)
    assert all(s["control_messages"] >= 4 for s in open_sessions)
    assert stats["connections"]["closed"].get("rate_limit", 0) == 0
    assert not stats["connections"]["rejected"]
    assert not status.reconnects_by_reason
    trades = await run.trades()
    currencies = {t["symbol"]: t["currency"] for t in trades}
    quote_assets = {s["symbol"]: s["quoteAsset"] for s in info["symbols"]}
    assert all(quote_assets[symbol] == currency for symbol, currency in currencies.items())
    assert len({quote_assets[symbol] for symbol in currencies}) > 3  # not only USDT
    assert_accounted(trades, status)


async def test_a_listing_and_a_delisting_are_followed_while_running(kafka_settings: KafkaSettings) -> None:
    async with (
        exchange_running(market_symbols=600, **MARKET) as exchange,
        feed_running(kafka_settings, [exchange.url], **all_symbols(exchange)) as run,
    ):
        await until(
            lambda: run.status().state == CONNECTED and len(run.status().connection_statuses) == 2,
            timeout=30,
            what="600 symbols on 2 connections",
        )
        await until(lambda: run.feed.states[1].trades > 0, what="ETHUSDT trades")
        exchange.list_symbol("NEWCOINUSDT", orders_per_second=30.0)
        exchange.delist_symbol("ETHUSDT")
        await until(
            lambda: "NEWCOINUSDT" in run.status().symbols and "ETHUSDT" not in run.status().symbols,
            what="the listing and the delisting in the feed's symbols",
        )
        await until(
            lambda: (
                all("ethusdt@trade" not in s["streams"] for s in sessions(exchange))
                and any("newcoinusdt@trade" in s["streams"] for s in sessions(exchange))
            ),
            what="ETHUSDT unsubscribed and NEWCOINUSDT subscribed",
        )
        await until(lambda: not run.feed.retiring, what="ETHUSDT no longer parsed")
        newcoin = next(s for s in run.feed.states if s.symbol == "NEWCOINUSDT")
        await until(lambda: newcoin.trades >= 20, what="NEWCOINUSDT trades")
        live = run.status()
        stats = exchange.stats()
        status = await run.stop()
    # The listing went to the connection with room: still two connections, none re-opened.
    assert live.connections == 2 and not status.reconnects_by_reason
    assert sorted(c.symbols for c in live.connection_statuses) == [89, 511]
    assert stats["connections"]["closed"].get("rate_limit", 0) == 0
    assert all(s["peak_incoming_per_second"] <= 5 for s in stats["connections"]["list"])
    trades = await run.trades()
    assert any(t["symbol"] == "NEWCOINUSDT" for t in trades)
    listed = [t for t in trades if t["symbol"] == "NEWCOINUSDT"]
    assert {t["currency"] for t in listed} == {"USDT"}
    assert_accounted(trades, status)
    assert not any(gap.symbol in ("NEWCOINUSDT", "ETHUSDT") for gap in status.recent_gaps)


async def test_a_killed_connection_reconnects_alone_while_the_others_keep_flowing(
    kafka_settings: KafkaSettings,
) -> None:
    async with (
        exchange_running(market_symbols=1_100, **MARKET) as exchange,
        feed_running(kafka_settings, [exchange.url], **all_symbols(exchange, recent_gaps=1_000)) as run,
    ):
        await until(
            lambda: run.status().state == CONNECTED and len(run.status().connection_statuses) == 3,
            timeout=30,
            what="1,100 symbols on 3 connections",
        )
        btc = run.feed.states[0]
        await until(lambda: btc.trades > 0, what="BTCUSDT trades")
        victim = next(s for s in sessions(exchange) if "btcusdt@trade" not in s["streams"])
        victim_symbols = {stream.split("@")[0].upper() for stream in victim["streams"]}
        victim_group = next(g.number for g in run.feed.groups if g.states[0].symbol in victim_symbols)
        others = {g.number: g.frames for g in run.feed.groups if g.number != victim_group}
        btc_before = btc.trades
        exchange.drop_connections(connection=victim["id"])
        await until(lambda: run.status().reconnects_by_reason.get("closed_1006") == 1, what="the drop seen")
        # While that connection is replaced, BTCUSDT (on another connection) keeps arriving.
        await until(lambda: btc.trades > btc_before + 20, what="BTCUSDT trades after the drop")
        await until(lambda: run.status().state == CONNECTED, what="reconnected")
        await asyncio.sleep(1.0)
        live = run.status()
        status = await run.stop()
    by_number = {c.number: c for c in live.connection_statuses}
    assert by_number[victim_group].reconnects == 1
    assert all(by_number[n].reconnects == 0 and by_number[n].frames > frames for n, frames in others.items())
    assert dict(status.reconnects_by_reason) == {"closed_1006": 1}
    trades = await run.trades()
    gaps = assert_accounted(trades, status)
    # Only the dropped connection's symbols can have missed trades.
    assert {symbol for symbol, missing in gaps.items() if missing} <= victim_symbols
