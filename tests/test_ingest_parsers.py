"""Ingest's building blocks without a broker: deterministic ids, ASX local time, the CSV timestamp rules, and
the compiled Avro writer that the publish path relies on (byte for byte what fastavro writes)."""

import uuid
from datetime import UTC, date, datetime
from io import BytesIO

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import quotes, trades

from k2.core import avro
from k2.core.records import FieldError, Record
from k2.services.ingest import asx, csv_files
from k2.services.ingest.ids import RECORD_NAMESPACES, batch_message_ids, record_message_id


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["trade", "quote"]), st.text(min_size=1, max_size=40))
def test_record_message_ids_are_uuid5_of_the_record_id(kind: str, record_id: str) -> None:
    assert record_message_id(kind, record_id) == str(uuid.uuid5(RECORD_NAMESPACES[kind], record_id))  # type: ignore[arg-type]


def test_batch_message_ids_are_stable_distinct_uuids() -> None:
    ids = [batch_message_ids("trade", "batch-7")(i) for i in range(10_000)]
    assert ids == [batch_message_ids("trade", "batch-7")(i) for i in range(10_000)]
    assert len(set(ids)) == 10_000
    assert {(uuid.UUID(i).version, uuid.UUID(i).variant) for i in ids} == {(5, uuid.RFC_4122)}
    assert batch_message_ids("quote", "batch-7")(0) != ids[0]
    assert batch_message_ids("trade", "batch-8")(0) != ids[0]


@pytest.mark.parametrize(
    "day, time_text, utc",
    [
        (date(2014, 3, 10), "10:05:44.516", datetime(2014, 3, 9, 23, 5, 44, 516000, UTC)),  # AEDT, UTC+11
        (date(2014, 7, 1), "10:00:00.000", datetime(2014, 7, 1, 0, 0, tzinfo=UTC)),  # AEST, UTC+10
        (date(2014, 4, 6), "02:30:00.000", datetime(2014, 4, 5, 15, 30, tzinfo=UTC)),  # repeated hour: 1st
        (date(2014, 3, 10), "10:05:44", datetime(2014, 3, 9, 23, 5, 44, tzinfo=UTC)),
    ],
)
def test_asx_local_times_become_utc(day: date, time_text: str, utc: datetime) -> None:
    assert asx._utc(day, time_text) == utc


def test_asx_trades_parse_into_records_and_rejections() -> None:
    parser = asx.AsxTradeParser("7078", "BHP", datetime(2026, 1, 1, tzinfo=UTC))
    chunk = parser.parse(
        [
            (1, b"03/10/2014,10:05:44.516,37.51,40000,3,X,"),
            (2, b"03/10/2014,10:05:44.516,37.51,40000,3,X,"),
            (3, b"03/10/2014,10:05:44.516,37.51,\xff,3,X,"),
        ]
    )
    assert [r["trade_id"] for r in chunk.records] == ["ASX-7078-20140310-1", "ASX-7078-20140310-2"]
    assert chunk.records[0]["message_id"] != chunk.records[1]["message_id"]
    [rejected] = chunk.rejected
    assert (rejected.line, rejected.field) == (3, "") and "not UTF-8" in rejected.reason


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-01-02T03:04:05.123456Z", datetime(2026, 1, 2, 3, 4, 5, 123456, UTC)),
        ("2026-01-02T14:04:05.5+11:00", datetime(2026, 1, 2, 3, 4, 5, 500000, UTC)),
        ("2026-01-02T03:04:05.123456000Z", datetime(2026, 1, 2, 3, 4, 5, 123456, UTC)),
    ],
)
def test_csv_timestamps(text: str, expected: datetime) -> None:
    assert csv_files._timestamp(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("2026-01-02T03:04:05", "no UTC offset"),
        ("2026-01-02T03:04:05.1234567Z", "finer than a microsecond"),
        ("yesterday", "not an ISO-8601 timestamp"),
    ],
)
def test_csv_timestamps_refused(text: str, reason: str) -> None:
    with pytest.raises(FieldError, match=reason):
        csv_files._timestamp(text)


def fastavro_encode(kind: str, record: Record) -> bytes:
    version = avro.CURRENT[kind]  # type: ignore[index]
    out = BytesIO()
    out.write(avro.MAGIC + version.fingerprint)
    fastavro.schemaless_writer(out, version.parsed, record)
    return out.getvalue()


@settings(max_examples=500, deadline=None)
@given(st.one_of(trades().map(lambda r: ("trade", r)), quotes().map(lambda r: ("quote", r))))
def test_the_compiled_avro_writer_writes_what_fastavro_writes(kind_and_record: tuple[str, Record]) -> None:
    kind, record = kind_and_record
    assert avro.encode(kind, record) == fastavro_encode(kind, record)  # type: ignore[arg-type]
