"""QueryTrades/QueryQuotes across the Iceberg/Kafka boundary, paging, GetBars against an independent computation,
GetLatest, and request validation — against a real broker and a real Iceberg catalog."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from zoneinfo import ZoneInfo

import grpc
import pytest
from conftest import ASX_DATA
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY
from test_query_harness import T0, Market, Service, query_settings, quote, running_service, trade, trades, ts

from k2.core.arrow_records import records_to_arrow
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import ensure_table, load_catalog
from k2.core.records import QUOTE, TRADE, Record
from k2.core.timestamps import micros
from k2.query.v1 import query_pb2


def order(record: Record) -> tuple:  # type: ignore[type-arg]
    return (
        record["timestamp"],
        record["exchange"],
        record["symbol"],
        record["source_sequence"] is not None,
        record["source_sequence"] or 0,
        record["message_id"],
    )


def half_of_each_partition(market: Market, kind: str = TRADE) -> dict[int, int]:
    offsets: dict[int, list[int]] = {}
    for produced in market.produced[kind]:  # type: ignore[index]
        offsets.setdefault(produced.partition, []).append(produced.offset)
    return {p: sorted(o)[len(o) // 2] for p, o in offsets.items()}


async def query_all(
    service: Service, **request: object
) -> tuple[list[str], list[query_pb2.QueryTradesResponse]]:
    responses = [r async for r in service.stub.QueryTrades(query_pb2.QueryTradesRequest(**request))]
    return [t.message_id for r in responses for t in r.trades], responses


async def test_hybrid_query_spans_iceberg_and_kafka_exactly(market: Market, service: Service) -> None:
    first = trades(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 300)
    market.produce(TRADE, first)
    market.commit(TRADE, half_of_each_partition(market))  # half in Iceberg, the rest only in Kafka
    later = trades(
        ["BTCUSDT", "ETHUSDT", "SOLUSDT"], 200, start=T0 + timedelta(seconds=300), first_sequence=300
    )
    market.produce(TRADE, later)
    wanted = sorted(
        (
            r
            for r in first + later
            if r["symbol"] in ("BTCUSDT", "ETHUSDT")
            and T0 + timedelta(seconds=10) <= r["timestamp"] < T0 + timedelta(seconds=450)
        ),
        key=order,
    )

    ids, responses = await query_all(
        service,
        symbols=["BTCUSDT", "ETHUSDT"],
        start=ts(T0 + timedelta(seconds=10)),
        end=ts(T0 + timedelta(seconds=450)),
    )

    assert ids == [r["message_id"] for r in wanted]  # exact count, no duplicates, time order
    assert not responses[-1].next_page_token
    got = responses[0].trades[0]
    assert got.price == format(wanted[0]["price"].normalize(), "f") and got.symbol == wanted[0]["symbol"]


async def test_paging_is_consistent_while_commits_continue(market: Market, service: Service) -> None:
    market.produce(TRADE, trades(["BTCUSDT", "ETHUSDT"], 400))
    market.commit(TRADE, half_of_each_partition(market))
    expected = sorted((p.record for p in market.produced[TRADE]), key=order)

    ids: list[str] = []
    token = ""
    pages = 0
    while True:
        page_ids, responses = await query_all(
            service,
            symbols=["BTCUSDT", "ETHUSDT"],
            start=ts(T0),
            end=ts(T0 + timedelta(days=1)),
            limit=170,
            page_token=token,
        )
        ids += page_ids
        pages += 1
        token = responses[-1].next_page_token
        if not token:
            break
        # the writer moves on and new trades arrive: the paged query still reads what its first page saw
        market.commit(TRADE)
        market.produce(TRADE, trades(["BTCUSDT"], 5, start=T0 + timedelta(seconds=1000 + pages * 10)))
    assert pages == 5
    assert ids == [r["message_id"] for r in expected]


async def test_quotes_query(market: Market, service: Service) -> None:
    quotes = [quote("BTCUSDT", T0 + timedelta(milliseconds=10 * i), i) for i in range(50)]
    market.produce(QUOTE, quotes)
    market.commit(QUOTE, half_of_each_partition(market, QUOTE))
    responses = [
        r
        async for r in service.stub.QueryQuotes(
            query_pb2.QueryQuotesRequest(
                symbols=["BTCUSDT"], start=ts(T0), end=ts(T0 + timedelta(minutes=1)), limit=20
            )
        )
    ]
    assert [q.message_id for r in responses for q in r.quotes] == [q["message_id"] for q in quotes[:20]]
    assert responses[-1].next_page_token
    assert responses[0].quotes[0].bid_price == "100.1" and responses[0].quotes[0].ask_quantity == "0.25"


def expected_bars(records: list[Record], interval: timedelta) -> list[dict[str, object]]:
    """Plain Python over the same records: group by UTC interval start, Decimal arithmetic."""
    step = int(interval.total_seconds() * 1_000_000)
    groups: dict[int, list[Record]] = {}
    for record in sorted(records, key=order):
        start = micros(record["timestamp"]) // step * step
        groups.setdefault(start, []).append(record)
    bars = []
    with localcontext() as context:
        context.prec = 200
        for start, group in sorted(groups.items()):
            volume = sum((r["quantity"] for r in group), Decimal(0))
            notional = sum((r["price"] * r["quantity"] for r in group), Decimal(0))
            bars.append(
                {
                    "start": start,
                    "open": group[0]["price"],
                    "close": group[-1]["price"],
                    "high": max(r["price"] for r in group),
                    "low": min(r["price"] for r in group),
                    "volume": volume,
                    "count": len(group),
                    "vwap": (notional / volume).quantize(Decimal("1e-18"), rounding=ROUND_HALF_EVEN),
                }
            )
    return bars


@pytest.mark.parametrize(
    "interval, bar_interval",
    [
        (timedelta(minutes=1), query_pb2.BAR_INTERVAL_1M),
        (timedelta(minutes=5), query_pb2.BAR_INTERVAL_5M),
        (timedelta(hours=1), query_pb2.BAR_INTERVAL_1H),
        (timedelta(seconds=1), query_pb2.BAR_INTERVAL_1S),
    ],
)
async def test_bars_match_an_independent_computation(
    market: Market, service: Service, interval: timedelta, bar_interval: int
) -> None:
    records = trades(["BTCUSDT"], 2000, start=T0 + timedelta(minutes=58), step=timedelta(milliseconds=350))
    records += [
        trade("BTCUSDT", T0 + timedelta(minutes=59), 9000 + i, price=f"99.{i}", quantity="0.333333333")
        for i in range(5)
    ]  # equal timestamps: the sequence decides open/close
    records.append(trade("ETHUSDT", T0 + timedelta(minutes=59), 1))  # another symbol: not in the bars
    market.produce(TRADE, records)
    market.commit(TRADE, half_of_each_partition(market))
    start, end = T0 + timedelta(minutes=58, seconds=30), T0 + timedelta(hours=2)
    selected = [r for r in records if r["symbol"] == "BTCUSDT" and start <= r["timestamp"] < end]

    response = await service.stub.GetBars(
        query_pb2.GetBarsRequest(symbol="BTCUSDT", interval=bar_interval, start=ts(start), end=ts(end))
    )  # type: ignore[arg-type]

    expected = expected_bars(selected, interval)
    assert len(response.bars) == len(expected)
    for bar, want in zip(response.bars, expected, strict=True):
        assert bar.start.seconds * 1_000_000 + bar.start.nanos // 1000 == want["start"]
        assert (
            Decimal(bar.open),
            Decimal(bar.high),
            Decimal(bar.low),
            Decimal(bar.close),
            Decimal(bar.volume),
            Decimal(bar.vwap),
            bar.trade_count,
        ) == (
            want["open"],
            want["high"],
            want["low"],
            want["close"],
            want["volume"],
            want["vwap"],
            want["count"],
        )


def asx_bhp_trades() -> list[Record]:
    asx = pytest.importorskip("k2.services.ingest.asx")
    rows = pytest.importorskip("k2.services.ingest.rows")
    parser = asx.AsxTradeParser("7078", "BHP", T0)
    records: list[Record] = []
    for chunk in rows.numbered_lines(ASX_DATA / "trades" / "7078.csv", 20_000):
        records += parser.parse(chunk).records
    return records


@pytest.mark.parametrize(
    "interval, bar_interval, days",
    [
        (timedelta(minutes=1), query_pb2.BAR_INTERVAL_1M, 1),
        (timedelta(minutes=15), query_pb2.BAR_INTERVAL_15M, 5),
        (timedelta(days=1), query_pb2.BAR_INTERVAL_1D, 5),
    ],
)
async def test_bars_on_asx_bhp_match_an_independent_computation(
    iceberg_settings: IcebergSettings, service: Service, interval: timedelta, bar_interval: int, days: int
) -> None:
    records = asx_bhp_trades()
    table = ensure_table(load_catalog(iceberg_settings), iceberg_settings, TRADE)
    table.append(records_to_arrow(TRADE, records))
    sydney = ZoneInfo("Australia/Sydney")
    start = datetime(2014, 3, 11, tzinfo=sydney).astimezone(UTC)  # a trading day, local midnight to midnight
    end = start + timedelta(days=days)
    selected = [r for r in records if start <= r["timestamp"] < end]

    response = await service.stub.GetBars(
        query_pb2.GetBarsRequest(
            symbol="BHP",
            exchange="ASX",
            interval=bar_interval,  # type: ignore[arg-type]
            start=ts(start),
            end=ts(end),
        )
    )

    expected = expected_bars(selected, interval)
    assert sum(bar.trade_count for bar in response.bars) == len(selected) > 10_000
    assert [
        (
            Decimal(b.open),
            Decimal(b.high),
            Decimal(b.low),
            Decimal(b.close),
            Decimal(b.volume),
            Decimal(b.vwap),
            b.trade_count,
            b.start.seconds * 1_000_000,
        )
        for b in response.bars
    ] == [
        (w["open"], w["high"], w["low"], w["close"], w["volume"], w["vwap"], w["count"], w["start"])
        for w in expected
    ]


async def test_latest_from_live_state_and_from_iceberg(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    old = [trade("OLDSYM", T0 + timedelta(seconds=i), i, price=f"{10 + i}") for i in range(30)]
    market.produce(TRADE, old)
    market.commit(TRADE)  # all in Iceberg: the fan-out starts after it, GetLatest must fall back to Iceberg
    async with running_service(kafka_settings, iceberg_settings) as service:
        live = [trade("BTCUSDT", T0 + timedelta(seconds=i), i, price=f"{200 + i}") for i in range(20)]
        quotes = [quote("BTCUSDT", T0 + timedelta(seconds=i), i, bid=f"{199 + i}") for i in range(20)]
        market.produce(TRADE, live)
        market.produce(QUOTE, quotes)

        async def latest() -> query_pb2.GetLatestResponse:
            return await service.stub.GetLatest(
                query_pb2.GetLatestRequest(symbols=["BTCUSDT", "OLDSYM", "NONE"])
            )

        async with asyncio.timeout(30):
            while True:  # until the fan-out has consumed the last ones
                response = await latest()
                if (response.latest[0].trade.message_id, response.latest[0].quote.message_id) == (
                    live[-1]["message_id"],
                    quotes[-1]["message_id"],
                ):
                    break
                await asyncio.sleep(0.05)
        btc, old_symbol, none = response.latest
        assert (btc.symbol, btc.trade.message_id, btc.quote.message_id) == (
            "BTCUSDT",
            live[-1]["message_id"],
            quotes[-1]["message_id"],
        )
        assert btc.trade.price == "219"
        assert old_symbol.trade.message_id == old[-1]["message_id"] and old_symbol.trade.price == "39"
        assert not old_symbol.HasField("quote")
        assert none.symbol == "NONE" and not none.HasField("trade") and not none.HasField("quote")


INVALID = [
    ("QueryTrades", query_pb2.QueryTradesRequest(start=ts(T0), end=ts(T0 + timedelta(1))), "symbols"),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(symbols=["btc"], start=ts(T0), end=ts(T0 + timedelta(1))),
        "symbols[0]",
    ),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(symbols=["A" * 33], start=ts(T0), end=ts(T0 + timedelta(1))),
        "symbols[0]",
    ),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(
            symbols=[f"S{i}" for i in range(101)], start=ts(T0), end=ts(T0 + timedelta(1))
        ),
        "symbols",
    ),
    ("QueryTrades", query_pb2.QueryTradesRequest(symbols=["BTC"], end=ts(T0)), "start"),
    ("QueryTrades", query_pb2.QueryTradesRequest(symbols=["BTC"], start=ts(T0), end=ts(T0)), "end"),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(symbols=["BTC"], start=ts(T0), end=ts(T0 + timedelta(400))),
        "end",
    ),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(symbols=["BTC"], start=Timestamp(seconds=1, nanos=1), end=ts(T0)),
        "start",
    ),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(symbols=["BTC"], start=ts(T0), end=ts(T0 + timedelta(1)), limit=100_001),
        "limit",
    ),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(
            symbols=["BTC"], start=ts(T0), end=ts(T0 + timedelta(1)), page_token="not-a-token"
        ),
        "page_token",
    ),
    (
        "QueryTrades",
        query_pb2.QueryTradesRequest(
            symbols=["BTC"], exchange="bin ance", start=ts(T0), end=ts(T0 + timedelta(1))
        ),
        "exchange",
    ),
    ("QueryQuotes", query_pb2.QueryQuotesRequest(symbols=["BTC"], start=ts(T0)), "end"),
    ("GetBars", query_pb2.GetBarsRequest(symbol="BTC", start=ts(T0), end=ts(T0 + timedelta(1))), "interval"),
    (
        "GetBars",
        query_pb2.GetBarsRequest(
            symbol="BTC", interval=query_pb2.BAR_INTERVAL_1S, start=ts(T0), end=ts(T0 + timedelta(days=2))
        ),
        "end",
    ),
    (
        "GetBars",
        query_pb2.GetBarsRequest(interval=query_pb2.BAR_INTERVAL_1M, start=ts(T0), end=ts(T0 + timedelta(1))),
        "symbol",
    ),
    ("GetLatest", query_pb2.GetLatestRequest(), "symbols"),
    ("SubscribeTrades", query_pb2.SubscribeTradesRequest(resume_token="garbage"), "resume_token"),
    ("SubscribeTrades", query_pb2.SubscribeTradesRequest(exchanges=["ok", "x"]), "exchanges[0]"),
    ("SubscribeQuotes", query_pb2.SubscribeQuotesRequest(symbols=["BTC USDT"]), "symbols[0]"),
]


async def test_invalid_requests_name_the_field(service: Service) -> None:
    for rpc, request_message, field in INVALID:
        call = getattr(service.stub, rpc)(request_message)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            if hasattr(call, "__aiter__"):
                async for _ in call:
                    pass
            else:
                await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, field)
        assert raised.value.details().startswith(f"{field}: "), (rpc, raised.value.details())


async def test_page_token_of_another_query_is_refused(market: Market, service: Service) -> None:
    market.produce(TRADE, trades(["BTCUSDT"], 10))
    _, responses = await query_all(
        service, symbols=["BTCUSDT"], start=ts(T0), end=ts(T0 + timedelta(1)), limit=3
    )
    token = responses[-1].next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await query_all(
            service, symbols=["ETHUSDT"], start=ts(T0), end=ts(T0 + timedelta(1)), page_token=token
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different query" in raised.value.details()


async def test_the_latest_values_kept_are_bounded_and_the_forgotten_read_from_iceberg(
    market: Market, kafka_settings: KafkaSettings, iceberg_settings: IcebergSettings
) -> None:
    symbols = [f"SYM{n:03d}" for n in range(60)]  # every producer key is a symbol the fan-out would keep
    records = trades(symbols, 3)
    forgotten_before = (
        REGISTRY.get_sample_value("k2_query_latest_forgotten_total", {"service": "query", "kind": "trade"})
        or 0.0
    )
    async with running_service(
        kafka_settings, iceberg_settings, query_settings(latest_max_symbols=20)
    ) as service:
        market.produce(TRADE, records)
        market.commit(TRADE)
        last = {record["symbol"]: record for record in records}

        async def forgotten() -> float:
            return (
                REGISTRY.get_sample_value(
                    "k2_query_latest_forgotten_total", {"service": "query", "kind": "trade"}
                )
                or 0.0
            ) - forgotten_before

        async with asyncio.timeout(30):
            while await forgotten() < 40:  # 60 keys seen, at most 20 kept
                await asyncio.sleep(0.05)
        response = await service.stub.GetLatest(query_pb2.GetLatestRequest(symbols=symbols))
    assert [(entry.symbol, entry.trade.message_id) for entry in response.latest] == [
        (symbol, last[symbol]["message_id"]) for symbol in symbols
    ]
