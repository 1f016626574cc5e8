"""LoadFiles against the real broker: the shared ASX files loaded exactly (counts, UTC times, ids, one-sided
and crossed books), bad rows dead-lettered with their reasons, the K2 CSV format, the load root enforced."""

import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_ingest_support import ASX_DATA, WRITE, Ingest, headers_of, running_ingest

from k2.core.config import KafkaSettings
from k2.core.kafka import QUOTES, TRADES
from k2.ingest.v1 import ingest_pb2
from k2.services.ingest.ids import record_message_id

ASX_TRADES, ASX_QUOTES = ingest_pb2.FILE_FORMAT_ASX_TRADES, ingest_pb2.FILE_FORMAT_ASX_QUOTES
CSV_TRADES, CSV_QUOTES = ingest_pb2.FILE_FORMAT_CSV_TRADES, ingest_pb2.FILE_FORMAT_CSV_QUOTES


async def load(
    ingest: Ingest, paths: list[str], file_format: int, **request: Any
) -> tuple[list[ingest_pb2.LoadProgress], ingest_pb2.LoadSummary]:
    progress, summaries = [], []
    call = ingest.stub.LoadFiles(
        ingest_pb2.LoadFilesRequest(paths=paths, format=file_format, **request), metadata=WRITE
    )
    async for event in call:
        if event.HasField("progress"):
            progress.append(event.progress)
        else:
            summaries.append(event.summary)
    [summary] = summaries
    return progress, summary


def asx_root(
    tmp_path: Path, trades: dict[str, str] | None = None, quotes: dict[str, str] | None = None
) -> Path:
    """A load root of our own: the real reference data plus the given files (name → content)."""
    root = tmp_path / "asx"
    (root / "reference-data").mkdir(parents=True)
    shutil.copy(ASX_DATA / "reference-data" / "company_info.csv", root / "reference-data")
    for folder, files in (("trades", trades or {}), ("quotes", quotes or {})):
        (root / folder).mkdir()
        for name, content in files.items():
            (root / folder / name).write_bytes(content.encode())
    return root


@pytest.mark.parametrize("company, trades, quotes", [("3153", 11, 60), ("7181", 232, 549)])
async def test_small_companies_load_every_row(
    kafka_settings: KafkaSettings, company: str, trades: int, quotes: int
) -> None:
    async with running_ingest(kafka_settings) as ingest:
        _, trade_summary = await load(ingest, [f"trades/{company}.csv"], ASX_TRADES)
        _, quote_summary = await load(ingest, [f"quotes/{company}.csv"], ASX_QUOTES)
        trade_records = await ingest.records(TRADES)
        quote_records = await ingest.records(QUOTES)
    for summary, rows in ((trade_summary, trades), (quote_summary, quotes)):
        assert (summary.rows_read, summary.rows_accepted, summary.rows_rejected) == (rows, rows, 0)
    assert len(trade_records) == len({r["trade_id"] for r in trade_records}) == trades
    assert len(quote_records) == len({r["quote_id"] for r in quote_records}) == quotes
    # Rows sharing a millisecond, price and volume are distinct trades, each once.
    same_values: dict[tuple[Any, ...], int] = {}
    for r in trade_records:
        key = (r["timestamp"], r["price"], r["quantity"])
        same_values[key] = same_values.get(key, 0) + 1
    if company == "7181":
        assert max(same_values.values()) >= 2


async def test_mwr_rows_are_exact(kafka_settings: KafkaSettings) -> None:
    async with running_ingest(kafka_settings) as ingest:
        await load(ingest, ["trades/3153.csv"], ASX_TRADES)
        await load(ingest, [str(ASX_DATA / "quotes" / "3153.csv")], ASX_QUOTES)  # absolute, below the root
        trades = {r["source_sequence"]: r for r in await ingest.records(TRADES)}
        quotes = {r["source_sequence"]: r for r in await ingest.records(QUOTES)}
    first = trades[1]  # 03/10/2014,13:50:38.849,1.11,3667,0,,
    assert first.pop("ingestion_timestamp") <= datetime.now(UTC)
    assert first == {
        "message_id": record_message_id("trade", "ASX-3153-20140310-1"),
        "trade_id": "ASX-3153-20140310-1",
        "symbol": "MWR",
        "exchange": "ASX",
        "asset_class": "EQUITIES",
        "timestamp": datetime(2014, 3, 10, 2, 50, 38, 849000, UTC),
        "price": Decimal("1.11"),
        "quantity": Decimal(3667),
        "currency": "AUD",
        "side": "UNKNOWN",
        "trade_conditions": ["0"],
        "source_sequence": 1,
        "platform_sequence": None,
        "vendor_data": {"company_id": "3153"},
    }
    assert trades[5]["trade_id"] == "ASX-3153-20140311-1"  # numbering restarts each day
    assert trades[4]["trade_conditions"] == ["2"]
    one_sided = quotes[1]  # 03/10/2014,05:46:13.604,1.11,0.0,10300,0
    assert [one_sided[f] for f in ("bid_price", "bid_quantity", "ask_price", "ask_quantity")] == [
        Decimal("1.11"),
        Decimal(10300),
        None,
        None,
    ]
    crossed = quotes[56]  # 03/14/2014,07:30:26.627,1.21,1.2,1000,1000: an auction's crossed book, kept
    assert (crossed["bid_price"], crossed["ask_price"]) == (Decimal("1.21"), Decimal("1.2"))
    assert crossed["quote_id"].startswith("ASX-3153-20140314-")


async def test_local_times_are_stored_in_utc(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    rows = (
        "03/10/2014,10:05:44.516,37.51,40000,3,X,\r\n"  # AEDT (UTC+11)
        "04/07/2014,10:05:44.516,37.51,1,0,,\r\n"
    )  # AEST (UTC+10) after daylight saving ended on April 6
    root = asx_root(tmp_path, trades={"7078.csv": rows})
    async with running_ingest(kafka_settings, load_root=root) as ingest:
        await load(ingest, ["trades/7078.csv"], ASX_TRADES)
        records = sorted(await ingest.records(TRADES), key=lambda r: r["source_sequence"])
    assert [r["timestamp"].isoformat() for r in records] == [
        "2014-03-09T23:05:44.516000+00:00",
        "2014-04-07T00:05:44.516000+00:00",
    ]
    assert (records[0]["symbol"], records[0]["vendor_data"]) == ("BHP", {"company_id": "7078", "venue": "X"})


async def test_bad_rows_go_to_the_dead_letter_topic_with_their_reasons(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    rows = [
        "03/10/2014,10:00:06.717,36.78,358,0,,",
        "03/10/2014,10:00:06.717,abc,358,0,,",  # price not a decimal
        "03/10/2014,10:00:06.717,36.78,358,0",  # a column short
        "13/45/2014,10:00:06.717,36.78,358,0,,",  # no such date
        "03/10/2014,10:61:06.717,36.78,358,0,,",  # no such time
        "03/10/2014,10:00:06.717,36.78,-5,0,,",  # negative volume
        "03/10/2014,10:00:06.717,0,358,0,,",  # zero price
        "03/10/2014,10:00:06.718,36.79,100,0,,",
    ]
    quotes = ["03/10/2014,05:43:45.676,37.7,0.0,300,0", "03/10/2014,05:43:45.676,0.0,37.7,300,5"]
    root = asx_root(
        tmp_path,
        trades={"7078.csv": "\r\n".join(rows) + "\r\n"},
        quotes={"7078.csv": "\r\n".join(quotes) + "\r\n"},
    )
    async with running_ingest(kafka_settings, load_root=root) as ingest:
        _, summary = await load(ingest, ["trades/7078.csv"], ASX_TRADES)
        _, quote_summary = await load(ingest, ["quotes/7078.csv"], ASX_QUOTES)
        accepted = await ingest.records(TRADES)
        dead = await ingest.dead_letters()
    assert (summary.rows_read, summary.rows_accepted, summary.rows_rejected) == (8, 2, 6)
    assert (quote_summary.rows_read, quote_summary.rows_accepted, quote_summary.rows_rejected) == (2, 1, 1)
    assert sorted(r["source_sequence"] for r in accepted) == [1, 8]
    # ids count every row of the day, rejected ones too: fixing a bad row later does not shift the others
    assert sorted(r["trade_id"] for r in accepted) == ["ASX-7078-20140310-1", "ASX-7078-20140310-7"]
    letters = {(headers_of(m)["k2.dlq.source"].decode(), int(headers_of(m)["k2.dlq.line"])): m for m in dead}
    expected = {
        2: ("price", "not a decimal number"),
        3: ("", "expected 7 columns"),
        4: ("timestamp", "not MM/DD/YYYY"),
        5: ("timestamp", "not HH:MM:SS.mmm"),
        6: ("quantity", "must be positive"),
        7: ("price", "must be positive"),
    }
    assert sorted(letters) == [("asx_quotes", 2)] + [("asx_trades", line) for line in expected]
    for line, (field, reason) in expected.items():
        message = letters[("asx_trades", line)]
        headers = headers_of(message)
        assert message.value() == rows[line - 1].encode()  # the raw row
        assert headers.get("k2.dlq.field", b"").decode() == field
        assert reason in headers["k2.dlq.reason"].decode()
        assert headers["k2.dlq.file"].decode() == str(root / "trades" / "7078.csv")
    assert headers_of(letters[("asx_quotes", 2)])["k2.dlq.field"] == b"bid_price"


async def test_reloading_a_file_gives_the_same_ids(kafka_settings: KafkaSettings) -> None:
    async with running_ingest(kafka_settings) as ingest:
        await load(ingest, ["trades/7181.csv"], ASX_TRADES)
        await load(ingest, ["trades/7181.csv"], ASX_TRADES)
        records = await ingest.records(TRADES)
    assert len(records) == 464
    assert len({r["message_id"] for r in records}) == len({r["trade_id"] for r in records}) == 232


async def test_progress_is_streamed_then_a_summary(kafka_settings: KafkaSettings) -> None:
    async with running_ingest(kafka_settings, load_batch_rows=50, load_progress_rows=100) as ingest:
        progress, summary = await load(
            ingest,
            ["quotes/7181.csv", "trades/7181.csv"],
            ASX_QUOTES,
            reference_data_path="reference-data/company_info.csv",
        )
    assert len(progress) >= 5
    quote_progress = [p.rows_read for p in progress if p.path == "quotes/7181.csv"]
    assert quote_progress == sorted(quote_progress) and quote_progress[-1] == 549
    # trades/7181.csv read as quotes: 7 columns each, every row dead-lettered, and still counted
    assert [(f.path, f.rows_read, f.rows_accepted, f.rows_rejected) for f in summary.files] == [
        ("quotes/7181.csv", 549, 549, 0),
        ("trades/7181.csv", 232, 0, 232),
    ]
    assert (summary.rows_read, summary.rows_accepted, summary.rows_rejected) == (781, 549, 232)


@pytest.mark.parametrize(
    "paths, file_format, code, message",
    [
        (["/etc/passwd"], ASX_TRADES, grpc.StatusCode.PERMISSION_DENIED, "outside the load root"),
        (["../../../etc/passwd"], ASX_TRADES, grpc.StatusCode.PERMISSION_DENIED, "outside the load root"),
        (["trades/9999.csv"], ASX_TRADES, grpc.StatusCode.NOT_FOUND, "no such file"),
        (
            ["reference-data/company_info.csv"],
            ASX_TRADES,
            grpc.StatusCode.INVALID_ARGUMENT,
            "<company_id>.csv",
        ),
        (["trades/3153.csv"], ingest_pb2.FILE_FORMAT_UNSPECIFIED, grpc.StatusCode.INVALID_ARGUMENT, "format"),
        ([], ASX_TRADES, grpc.StatusCode.INVALID_ARGUMENT, "no paths"),
        (
            ["trades/3153.csv", "trades/../trades/3153.csv"],
            ASX_TRADES,
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than once",
        ),
        (["trades/3153.csv"], CSV_TRADES, grpc.StatusCode.INVALID_ARGUMENT, "missing required column"),
    ],
)
async def test_requests_that_cannot_load_are_refused_before_writing(
    kafka_settings: KafkaSettings, paths: list[str], file_format: int, code: grpc.StatusCode, message: str
) -> None:
    async with running_ingest(kafka_settings) as ingest:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await load(ingest, paths, file_format)
        assert await ingest.count(TRADES) == 0
    assert error.value.code() == code
    assert message in (error.value.details() or "")


async def test_hostile_paths_are_refused_with_a_reason_that_keeps_the_root_private(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A NUL, an over-long name or path and a loop of links ended in UNKNOWN; refusals named the absolute root."""
    root = asx_root(tmp_path, trades={"3153.csv": "03/10/2014,10:00:06.717,36.78,358,0,,\r\n"})
    (root / "trades" / "loop-a.csv").symlink_to(root / "trades" / "loop-b.csv")
    (root / "trades" / "loop-b.csv").symlink_to(root / "trades" / "loop-a.csv")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (["trades/3153\0.csv"], invalid, "with a NUL"),
        (["trades/" + "d/" * 2100], invalid, "longer than 4096"),
        (["trades/" + "n" * 300 + ".csv"], invalid, "File name too long"),
        (["trades/loop-a.csv"], invalid, "trades/loop-a.csv: a loop of symbolic links"),
        (["trades/9999.csv"], grpc.StatusCode.NOT_FOUND, "trades/9999.csv: no such file below the load root"),
        (["../elsewhere.csv"], grpc.StatusCode.PERMISSION_DENIED, "../elsewhere.csv: outside the load root"),
        (["trades/3153.csv", "./trades/3153.csv"], invalid, "listed more than once: trades/3153.csv"),
        (["trades/3153.csv"] * 11, invalid, "11 paths; at most 10 per request"),
    ]
    async with running_ingest(kafka_settings, load_root=root, max_load_paths=10) as ingest:
        for paths, code, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await load(ingest, paths, ASX_TRADES)
            details = refused.value.details() or ""
            assert (refused.value.code(), reason in details) == (code, True), details
            assert str(tmp_path) not in details
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await load(ingest, ["trades/3153.csv"], ASX_TRADES, reference_data_path="reference-data/none.csv")
        assert refused.value.details() == "reference-data/none.csv: no such file below the load root"
        assert await ingest.count(TRADES) == 0


async def test_many_paths_are_checked_in_linear_time(kafka_settings: KafkaSettings) -> None:
    """The duplicate check compared every path with every other: 20,000 paths took ~64 s of ingest's CPU."""
    paths = [f"./{'./' * (n % 50)}trades/3153.csv" for n in range(20_000)]
    async with running_ingest(kafka_settings, max_load_paths=len(paths)) as ingest:
        call = ingest.stub.LoadFiles(
            ingest_pb2.LoadFilesRequest(paths=paths, format=ASX_TRADES), metadata=WRITE, timeout=60
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "listed more than once: trades/3153.csv"


async def test_unknown_company_and_escaping_symlinks_are_refused(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    root = asx_root(tmp_path, trades={"1234.csv": "03/10/2014,10:00:06.717,36.78,358,0,,\r\n"})
    (root / "trades" / "escape.csv").symlink_to(ASX_DATA / "trades" / "3153.csv")
    async with running_ingest(kafka_settings, load_root=root) as ingest:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await load(ingest, ["trades/1234.csv"], ASX_TRADES)
        with pytest.raises(grpc.aio.AioRpcError) as escape:
            await load(ingest, ["trades/escape.csv"], ASX_TRADES)
    assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1234 is not in the ASX reference data" in (unknown.value.details() or "")
    assert escape.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_k2_csv_trades_and_quotes(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    trades = tmp_path / "trades.csv"
    trades.write_text(
        "trade_id,symbol,exchange,asset_class,timestamp,price,quantity,currency,side,trade_conditions,"
        "source_sequence,vendor_data\n"
        "NYSE-1,IBM,NYSE,EQUITIES,2026-01-02T09:30:00.000001-05:00,187.25,100,USD,BUY,@|F,17,"
        '"{""venue"": ""N""}"\n'
        "NYSE-2,IBM,NYSE,EQUITIES,2026-01-02T14:30:00Z,187.2500,0.5,USD,UNKNOWN,,,\n"
        "NYSE-3,IBM,NYSE,EQUITIES,2026-01-02T14:30:00,187.25,1,USD,BUY,,,\n"  # no offset
        "NYSE-4,IBM,NYSE,EQUITIES,2026-01-02T14:30:00.0000001Z,187.25,1,USD,BUY,,,\n"  # sub-microsecond
        "NYSE-5,IBM,NYSE,EQUITIES,2026-01-02T14:30:00Z,187.25,1,USD,LONG,,,\n"  # unknown side
        'NYSE-6,IBM,NYSE,EQUITIES,2026-01-02T14:30:00Z,187.25,1,USD,BUY,,,"[1]"\n'  # vendor_data not {...}
        "NYSE-7,ibm,NYSE,EQUITIES,2026-01-02T14:30:00Z,187.25,1,USD,BUY,,,\n"  # a symbol no query asks
        "NYSE-8,IBM,NYSE,EQUITIES,2026-01-02T14:30:00Z,+187.25,1,USD,BUY,,,\n"  # '+'
        "NYSE-9,IBM,NYSE,EQUITIES,2026-01-02T14:30:00Z,187.25,1,USD,BUY,A|B|C|D|E|F|G|H|I,,\n"
    )  # 9 conditions
    quotes = tmp_path / "quotes.csv"
    quotes.write_text(
        "quote_id,symbol,exchange,asset_class,timestamp,bid_price,bid_quantity,ask_price,ask_quantity,"
        "currency\nQ-1,IBM,NYSE,EQUITIES,2026-01-02T14:30:00Z,187.2,300,,,USD\n"
        "Q-2,IBM,NYSE,EQUITIES,2026-01-02T14:30:00Z,0,300,,,USD\n"
    )  # an equity bid at 0
    async with running_ingest(kafka_settings, load_root=tmp_path) as ingest:
        _, summary = await load(ingest, ["trades.csv"], CSV_TRADES)
        _, quote_summary = await load(ingest, ["quotes.csv"], CSV_QUOTES)
        records = sorted(await ingest.records(TRADES), key=lambda r: r["trade_id"])
        [quote] = await ingest.records(QUOTES)
        dead = {
            int(headers_of(m)["k2.dlq.line"]): headers_of(m)["k2.dlq.field"].decode()
            for m in await ingest.dead_letters()
        }
    assert (summary.rows_read, summary.rows_accepted, summary.rows_rejected) == (9, 2, 7)
    assert (quote_summary.rows_accepted, quote_summary.rows_rejected) == (1, 1)
    assert dead == {
        4: "timestamp",
        5: "timestamp",
        6: "side",
        7: "vendor_data",
        8: "symbol",
        9: "price",
        10: "trade_conditions",
        3: "bid_price",
    }  # (line 3 is the quotes file's)
    first, second = records
    assert first["timestamp"] == datetime(2026, 1, 2, 14, 30, 0, 1, UTC)
    assert (first["price"], first["trade_conditions"], first["source_sequence"], first["vendor_data"]) == (
        Decimal("187.25"),
        ["@", "F"],
        17,
        {"venue": "N"},
    )
    assert first["message_id"] == record_message_id("trade", "NYSE-1")
    assert [second[f] for f in ("quantity", "trade_conditions", "source_sequence", "vendor_data")] == [
        Decimal("0.5"),
        [],
        None,
        None,
    ]
    assert [quote[f] for f in ("bid_price", "bid_quantity", "ask_price")] == [
        Decimal("187.2"),
        Decimal(300),
        None,
    ]


@pytest.mark.slow
async def test_bhp_full_files(kafka_settings: KafkaSettings) -> None:
    async with running_ingest(kafka_settings) as ingest:
        _, trades = await load(ingest, ["trades/7078.csv"], ASX_TRADES)
        _, quotes = await load(ingest, ["quotes/7078.csv"], ASX_QUOTES)
        records = {r["source_sequence"]: r for r in await ingest.records(TRADES)}
        assert await ingest.count(QUOTES) == 77_849
    assert (trades.rows_read, trades.rows_accepted, trades.rows_rejected) == (91_631, 91_631, 0)
    assert (quotes.rows_read, quotes.rows_accepted, quotes.rows_rejected) == (77_849, 77_849, 0)
    assert len(records) == len({r["trade_id"] for r in records.values()}) == 91_631
    # lines 57188-57192: five trades at 03/12/2014 15:31:11.621 of 88 shares at 35.94, five distinct trades
    same = [records[line] for line in range(57188, 57193)]
    assert {(r["timestamp"], r["price"], r["quantity"]) for r in same} == {
        (datetime(2014, 3, 12, 4, 31, 11, 621000, UTC), Decimal("35.94"), Decimal(88))
    }
    assert len({r["trade_id"] for r in same}) == 5
    assert [r["trade_conditions"] for r in same] == [["2"], ["0"], ["0"], ["0"], ["0"]]
