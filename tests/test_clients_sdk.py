"""The Python SDK (K2Client, AsyncK2Client) over real gRPC against in-process servers (tests/test_clients_harness.py)."""

import dataclasses
import doctest
import importlib
import threading
import uuid
from collections.abc import Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from conftest import ASX_DATA
from test_clients_harness import (
    DAY,
    MAX_PAGE,
    TOKEN,
    Platform,
    quote,
    running_platform,
    trade,
    unused_address,
    wait_until,
)

from k2.clients import AsyncK2Client, ClientSettings, K2Client, K2Error, LoadSummary, Quote, Reconnect, Trade
from k2.core.arrow_records import arrow_schema, arrow_to_records
from k2.core.protos import datetime_from_timestamp

SDK_MODULES = ("client", "errors", "models", "settings", "times")

ASX_TRADES = ASX_DATA / "trades" / "3153.csv"


def fast_retries(**overrides: object) -> ClientSettings:
    """Short backoff; no token file, so only an explicit token authenticates."""
    return ClientSettings(
        retry_initial_backoff_seconds=0.01,
        retry_max_backoff_seconds=0.05,
        token_file=Path("/nonexistent/token"),
        **overrides,
    )  # type: ignore[arg-type]


@pytest.fixture
def platform() -> Iterator[Platform]:
    with running_platform() as running:
        yield running


@pytest.fixture
def k2(platform: Platform) -> Iterator[K2Client]:
    with K2Client(
        fast_retries(),
        ingest_address=platform.address,
        writer_address=platform.address,
        query_address=platform.address,
        token=TOKEN,
    ) as client:
        yield client


def async_client(platform: Platform, **overrides: object) -> AsyncK2Client:
    return AsyncK2Client(
        fast_retries(**overrides),
        ingest_address=platform.address,
        writer_address=platform.address,
        query_address=platform.address,
        token=TOKEN,
    )


# -- typed records ------------------------------------------------------------------------------------------------


def test_trade_normalises_exact_values_and_refuses_inexact_ones() -> None:
    record = trade(1)
    t = Trade.from_record(
        record
        | {
            "price": "37.50",
            "quantity": 40000,
            "timestamp": datetime(2014, 3, 10, 10, 5, tzinfo=UTC).astimezone(),
        }
    )
    assert t.price == Decimal("37.50") and isinstance(t.quantity, Decimal)
    assert t.timestamp.tzinfo is UTC and t.timestamp == datetime(2014, 3, 10, 10, 5, tzinfo=UTC)
    assert Trade.from_record(record).to_record() == record
    with pytest.raises(TypeError, match="float is not exact"):
        Trade.from_record(record | {"price": 37.5})
    with pytest.raises(ValueError, match="timezone-naive"):
        Trade.from_record(record | {"timestamp": datetime(2014, 3, 10)})
    with pytest.raises(ValueError, match="not a decimal number"):
        Trade.from_record(record | {"price": "37,5"})


# -- publishing ---------------------------------------------------------------------------------------------------


def test_publish_batches_and_stamps_message_ids(platform: Platform, k2: K2Client) -> None:
    records = [trade(n) | {"message_id": None} for n in range(1050)]
    items = [Trade.from_record(r) if n % 2 else r for n, r in enumerate(records)]
    result = k2.publish_trades(items, batch_size=100)
    assert (result.accepted, result.batches, result.duplicates, result.rejections) == (1050, 11, 0, [])
    batch_ids = platform.ingest.attempts[0]
    assert len(batch_ids) == len(set(batch_ids)) == 11
    published = platform.ingest.published
    assert len({r["message_id"] for r in published}) == 1050
    assert all(uuid.UUID(r["message_id"]).version == 4 for r in published)
    assert [(r["trade_id"], r["price"], r["timestamp"]) for r in published] == [
        (r["trade_id"], r["price"], r["timestamp"]) for r in records
    ]


def test_publish_keeps_a_publishers_message_id(platform: Platform, k2: K2Client) -> None:
    record = trade(7)
    assert k2.publish_trades([record]).accepted == 1
    assert platform.ingest.published[0]["message_id"] == record["message_id"]


async def test_lost_acknowledgement_is_retried_with_the_same_batch_and_not_written_twice(
    platform: Platform,
) -> None:
    platform.ingest.lose_ack_at = 2
    async with async_client(platform) as k2:
        result = await k2.publish_trades([trade(n) for n in range(1000)], batch_size=100)
    first, second = platform.ingest.attempts
    # The retry re-sends, with their batch ids, the batches not acknowledged (at least the third: its
    # acknowledgement was lost; the first two unless their acknowledgements were read before the stream failed).
    resent = first.index(second[0])
    assert resent <= 2 and second[: len(first) - resent] == first[resent:]
    assert result.accepted == 1000 and result.batches == 10
    assert result.duplicates == len(set(first) & set(second)) >= 1
    message_ids = [r["message_id"] for r in platform.ingest.published]
    assert len(message_ids) == len(set(message_ids)) == 1000


def test_publishing_the_same_trades_again_is_answered_as_duplicates(platform: Platform, k2: K2Client) -> None:
    records = [trade(n) for n in range(250)]  # message ids set by the publisher
    first = k2.publish_trades(records, batch_size=100)
    again = k2.publish_trades([Trade.from_record(r) for r in records], batch_size=100)
    assert (first.accepted, first.duplicates) == (250, 0)
    assert (again.accepted, again.batches, again.duplicates) == (250, 3, 3)
    assert platform.ingest.attempts[0] == platform.ingest.attempts[1]
    assert len(platform.ingest.published) == 250


def test_unavailable_stream_is_retried(platform: Platform, k2: K2Client) -> None:
    platform.ingest.fail_streams = 2
    result = k2.publish_quotes([quote(n) for n in range(10)], batch_size=4)
    assert result.accepted == 10 and result.batches == 3
    assert len(platform.ingest.attempts) == 3
    assert [r["quote_id"] for r in platform.ingest.published] == [f"ASX-BHP-q{n}" for n in range(10)]


def publish_until_failure(address: str, failures: list[BaseException]) -> None:
    with K2Client(fast_retries(retry_attempts=2), ingest_address=address, token=TOKEN) as k2:
        try:
            k2.publish_trades((trade(n) for n in range(200_000)), batch_size=100)
        except BaseException as error:  # noqa: BLE001 - what the test looks at
            failures.append(error)


def test_a_service_going_away_mid_publish_is_a_k2_error() -> None:
    """The service stops while batches are being written: the SDK's retries find nothing listening, and the
    publish ends with K2Error UNAVAILABLE (not grpc.aio's internal error from the empty stream it opens to learn
    why the stream ended, which escaped and was not retried: the chaos suite's kill -9 of ingest)."""
    for _ in range(3):
        failures: list[BaseException] = []
        with running_platform() as platform:
            publisher = threading.Thread(target=publish_until_failure, args=(platform.address, failures))
            publisher.start()
            wait_until(lambda: len(platform.ingest.published) >= 2000, timeout=60)
            platform.stop()
            publisher.join(60)
        assert len(failures) == 1 and isinstance(failures[0], K2Error), failures
        assert failures[0].code == grpc.StatusCode.UNAVAILABLE


def test_retries_are_bounded(platform: Platform) -> None:
    platform.ingest.fail_streams = 1000
    with (
        K2Client(fast_retries(retry_attempts=3), ingest_address=platform.address, token=TOKEN) as k2,
        pytest.raises(K2Error) as failure,
    ):
        k2.publish_trades([trade(1)])
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE and failure.value.service == "ingest"
    assert len(platform.ingest.attempts) == 4


def test_rejections_are_indexed_in_the_input(platform: Platform, k2: K2Client) -> None:
    items = [trade(n) for n in range(10)]
    items[4] = items[4] | {"trade_id": ""}
    items[8] = items[8] | {"quantity": Decimal(0)}
    items[9] = Trade.from_record(items[9] | {"price": "1.0000000000000000001"})
    result = k2.publish_trades(items, batch_size=3)
    assert result.accepted == 7
    assert [(r.index, r.field) for r in result.rejections] == [(4, "trade_id"), (8, "quantity"), (9, "price")]
    assert "positive" in result.rejections[1].reason and "decimal places" in result.rejections[2].reason


def test_publish_without_a_token_is_refused_without_retrying(platform: Platform) -> None:
    with K2Client(fast_retries(), ingest_address=platform.address) as k2, pytest.raises(K2Error) as failure:
        k2.publish_trades([trade(1)])
    assert failure.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert platform.ingest.attempts == []


# -- querying -----------------------------------------------------------------------------------------------------


async def test_query_follows_pages_into_arrow_with_exact_decimals(platform: Platform) -> None:
    async with async_client(platform) as k2:
        table = await k2.query_trades("BHP", DAY, DAY + timedelta(days=1))
    assert table.schema == arrow_schema("trade")
    assert table.num_rows == 600
    assert [r.page_token for r in platform.query.query_requests] == ["", str(MAX_PAGE), str(2 * MAX_PAGE)]
    served = {t.trade_id: t for t in platform.query.trades}
    for row in arrow_to_records(table)[::97]:
        message = served[row["trade_id"]]
        assert row["price"] == Decimal(message.price) and row["quantity"] == Decimal(message.quantity)
        assert row["ingestion_timestamp"] == datetime_from_timestamp("i", message.ingestion_timestamp)
        assert row["message_id"] == message.message_id and row["vendor_data"] == {"venue": "X"}
    assert table["price"][1].as_py() == Decimal("37.000100000000000001")


def test_query_limit_bounds_every_page(platform: Platform, k2: K2Client) -> None:
    table = k2.query_trades(["BHP"], "2014-03-10", "2014-03-11", limit=300)
    assert table.num_rows == 300
    assert [r.limit for r in platform.query.query_requests] == [300, 50]
    empty = k2.query_trades("NOPE", "2014-03-10", "2014-03-11")
    assert empty.num_rows == 0 and empty.schema == arrow_schema("trade")


def test_query_records_are_typed(platform: Platform, k2: K2Client) -> None:
    trades = k2.query_trade_records("DVN", "2014-03-10T11:00+11:00", "2014-03-11T00:00Z")
    assert [t.price for t in trades] == [Decimal("1.005")] * 5
    assert all(isinstance(t, Trade) and t.timestamp.tzinfo is UTC for t in trades)
    request = platform.query.query_requests[0]
    assert datetime_from_timestamp("start", request.start) == DAY and list(request.symbols) == ["DVN"]
    quotes = k2.query_quote_records("BHP", DAY, DAY + timedelta(minutes=1))
    assert len(quotes) == 30 and isinstance(quotes[0], Quote)
    assert quotes[0].ask_price is None and quotes[1].ask_quantity == Decimal("1000.5")
    assert k2.query_quotes("BHP", DAY, DAY + timedelta(minutes=1))["bid_quantity"][5].as_py() == Decimal(305)


def test_rejected_query_raises_with_service_and_status(platform: Platform, k2: K2Client) -> None:
    with pytest.raises(K2Error) as failure:
        k2.query_trades("BHP", DAY, DAY)
    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(failure.value) == f"query at {platform.address}: INVALID_ARGUMENT: start must be before end"


def test_bars_and_latest(k2: K2Client) -> None:
    bars = k2.bars("BHP", DAY, DAY + timedelta(hours=1), interval="1m")
    assert [b.start for b in bars] == [DAY + timedelta(minutes=m) for m in range(3)]
    assert bars[0].volume == Decimal("12000.000000000000000001") and bars[0].trade_count == 60
    with pytest.raises(ValueError, match="interval must be one of"):
        k2.bars("BHP", DAY, DAY, interval="2m")
    latest = k2.latest(["BHP", "DVN", "NONE"])
    assert set(latest) == {"BHP", "DVN"}
    assert latest["BHP"].trade is not None and latest["BHP"].trade.trade_id == "ASX-BHP-599"
    assert latest["DVN"].quote is None


# -- subscriptions ------------------------------------------------------------------------------------------------


def test_subscription_resumes_after_the_stream_drops(platform: Platform, k2: K2Client) -> None:
    platform.query.drop_after = 3
    received: list[Trade] = []
    tokens = []
    for batch in k2.subscribe_trades("BTCUSDT"):
        received += batch.records
        tokens.append(batch.resume_token)
        if len(received) >= len(platform.query.live):
            break
    assert [t.trade_id for t in received] == [t.trade_id for t in platform.query.live]
    first, resumed = platform.query.subscribe_requests
    assert first.resume_token == "" and resumed.resume_token == "3" == tokens[2]
    wait_until(lambda: platform.query.open_subscriptions == 0)


def test_subscription_reconnects_until_stopped_and_reports_each_reconnect(platform: Platform) -> None:
    platform.query.drop_after = 3
    platform.query.refuse_after_drop = 6  # more refusals in a row than retry_attempts allows any other call
    received: list[Trade] = []
    reconnects: list[Reconnect] = []
    with K2Client(fast_retries(retry_attempts=2), query_address=platform.address, token=TOKEN) as k2:
        for batch in k2.subscribe_trades("BTCUSDT", on_reconnect=reconnects.append):
            received += batch.records
            if len(received) >= len(platform.query.live):
                break
    assert [t.trade_id for t in received] == [t.trade_id for t in platform.query.live]
    assert [r.resume_token for r in platform.query.subscribe_requests] == ["", *["3"] * 7]
    assert [r.attempt for r in reconnects] == [1, 2, 3, 4, 5, 6, 7]
    assert reconnects[0].delay_seconds == 0  # the lost stream is reopened at once, refusals after a backoff
    assert all(0 <= r.delay_seconds <= 0.05 for r in reconnects)
    assert {(r.error.service, r.error.code) for r in reconnects} == {("query", grpc.StatusCode.UNAVAILABLE)}
    assert "injected: subscription dropped" in reconnects[0].error.details
    wait_until(lambda: platform.query.open_subscriptions == 0)


async def test_async_subscription_from_a_time_then_from_a_token(platform: Platform) -> None:
    async with async_client(platform) as k2:
        async with aclosing(k2.subscribe_trades(["BTCUSDT"], start="2014-03-10T00:00:00Z")) as stream:
            batch = await anext(stream)
        assert [t.trade_id for t in batch.records] == ["ASX-BTCUSDT-1000", "ASX-BTCUSDT-1001"]
        assert batch.server_time is not None and not batch.replay
        async with aclosing(k2.subscribe_trades(resume_token=batch.resume_token)) as stream:
            after = await anext(stream)
    assert after.records[0].trade_id == "ASX-BTCUSDT-1002"
    first, second = platform.query.subscribe_requests
    assert datetime_from_timestamp("start", first.start) == DAY and not second.HasField("start")
    wait_until(lambda: platform.query.open_subscriptions == 0)


def test_heartbeats_carry_the_position(platform: Platform, k2: K2Client) -> None:
    platform.query.live = platform.query.live[:2]
    batches = []
    for batch in k2.subscribe_trades():
        batches.append(batch)
        if len(batches) == 3:
            break
    assert [len(b.records) for b in batches] == [2, 0, 0]
    assert [b.resume_token for b in batches] == ["1", "1", "1"]


def test_unary_calls_retry_unavailable_within_a_bounded_budget(platform: Platform, k2: K2Client) -> None:
    platform.query.fail_latest = 2
    assert set(k2.latest(["BHP"])) == {"BHP"}
    assert platform.query.latest_calls == 3
    platform.query.fail_latest, platform.query.latest_calls = 100, 0
    with pytest.raises(K2Error) as failure:
        k2.latest(["BHP"])
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE and "not serving yet" in failure.value.details
    assert platform.query.latest_calls == 5  # gRPC's retry policy: at most 5 attempts
    platform.query.latest_calls = 0
    with (
        K2Client(fast_retries(retry_attempts=0), query_address=platform.address) as once,
        pytest.raises(K2Error),
    ):
        once.latest(["BHP"])
    assert platform.query.latest_calls == 1


# -- files, feeds, writer, health ---------------------------------------------------------------------------------


def test_load_files_streams_progress_then_a_summary(platform: Platform, k2: K2Client) -> None:
    events = list(k2.load_files([str(ASX_TRADES)], "asx_trades"))
    summary = events[-1]
    assert isinstance(summary, LoadSummary) and summary.rows_read == 11 and summary.rows_rejected == 1
    assert [e.rows_read for e in events[:-1]] == [0, 5, 10]
    request = platform.ingest.load_requests[0]
    assert list(request.paths) == [str(ASX_TRADES)] and request.format == 1


def test_feed_and_writer_status(platform: Platform, k2: K2Client) -> None:
    (feed,) = k2.feed_status()
    assert (feed.name, feed.state, feed.circuit_state, feed.reconnects_by_reason) == (
        "binance",
        "CONNECTED",
        "CLOSED",
        {"watchdog": 2},
    )
    assert feed.recent_gaps[0].first_missing == 101 and feed.recent_gaps[0].detected_at is None
    status = k2.writer_status()
    assert status.total_lag == 12 and status.tables[0].newest_event_time == DAY + timedelta(hours=5)
    assert [dataclasses.astuple(c) for c in k2.flush()] == [
        ("market_data.trades", 43, 17),
        ("market_data.quotes", 0, 0),
    ]
    events = list(k2.compact("market_data.trades", start="2014-03-10", end="2014-03-13"))
    assert [type(e).__name__ for e in events] == ["CompactProgress"] * 3 + ["CompactResult"]
    with pytest.raises(K2Error) as failure:
        list(k2.compact("market_data.nope"))
    assert failure.value.code == grpc.StatusCode.NOT_FOUND


def test_health_reports_absent_services(platform: Platform) -> None:
    absent = unused_address()
    with K2Client(
        fast_retries(), ingest_address=platform.address, writer_address=absent, query_address=platform.address
    ) as k2:
        health = {h.service: h for h in k2.health()}
    assert health["ingest"].serving and health["query"].serving
    assert health["writer"].status == "UNAVAILABLE" and health["writer"].address == absent
    assert health["writer"].detail


def test_token_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\nfrom-file\n")
    assert ClientSettings(token_file=token_file).bearer_token() == "from-file"
    monkeypatch.setenv("K2_TOKEN", "from-env")
    monkeypatch.setenv("K2_QUERY_ADDRESS", "query.example:443")
    settings = ClientSettings(token_file=token_file)
    assert settings.bearer_token() == "from-env" and settings.query_address == "query.example:443"
    with pytest.raises(ValueError, match="both a client certificate"):
        ClientSettings(tls_cert_file=token_file).channel_credentials()


@pytest.mark.parametrize("name", SDK_MODULES)
def test_docstring_examples_run(name: str) -> None:
    assert doctest.testmod(importlib.import_module(f"k2.clients.{name}")).failed == 0
