"""The writer's decode path (k2.core.arrow.BatchDecoder): Kafka values straight to Arrow must equal the
reference path (avro.decode + records_to_arrow) for every record, and reject exactly what the validators
reject."""

import os
from datetime import UTC, datetime
from decimal import Decimal
from io import BytesIO

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import RECORDS, sample_quote, sample_trade

from k2.core import avro
from k2.core.arrow import INVALID, UNDECODABLE, WRONG_KIND, BatchDecoder, records_to_arrow
from k2.core.records import VALIDATORS, RecordKind


def unchecked_encode(kind: RecordKind, record: dict[str, object]) -> bytes:
    """Avro bytes of a record the validators would refuse (avro.encode does not validate either)."""
    out = BytesIO()
    out.write(avro.MAGIC + avro.CURRENT[kind].fingerprint)
    fastavro.schemaless_writer(out, avro.CURRENT[kind].parsed, record)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["trade", "quote"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_batch_equals_the_reference_decode(kind: RecordKind, data: st.DataObject) -> None:
    records = data.draw(st.lists(RECORDS[kind](), min_size=1, max_size=30))
    values = [avro.encode(kind, r) for r in records]
    batch = BatchDecoder(kind).decode(values)
    accepted = []
    for record in records:
        try:
            accepted.append(VALIDATORS[kind](dict(record)))
        except ValueError:
            pass
    assert len(batch.rejected) == len(records) - len(accepted)
    reference = records_to_arrow(kind, [avro.decode(values[i])[1] for i in batch.rows.to_pylist()])
    assert batch.table.equals(reference)


def test_older_versions_and_rejections_in_one_batch() -> None:
    v1 = {"symbol": "BHP", "company_id": 7078, "exchange": "ASX",
          "exchange_timestamp": datetime(2014, 3, 9, 23, 5, 44, 516000, UTC), "price": Decimal("37.51"),
          "volume": 40000, "qualifiers": 3, "venue": "X", "buyer_id": None,
          "ingestion_timestamp": datetime(2014, 3, 9, 23, 5, 45, tzinfo=UTC), "sequence_number": 1}
    values = [
        avro.encode("trade", sample_trade()),
        avro.encode_with(avro.VERSIONS["trade"][0], v1),
        os.urandom(40),
        avro.encode("quote", sample_quote()),
        unchecked_encode("trade", sample_trade(quantity=Decimal(0))),
        unchecked_encode("trade", sample_trade(symbol="")),
        unchecked_encode("trade", sample_trade(price=Decimal("1" + "0" * 22))),  # beyond decimal(38,18)
        avro.encode("trade", sample_trade()) + b"\0",
    ]
    batch = BatchDecoder("trade").decode(values)
    assert sorted(batch.rows.to_pylist()) == [0, 1]
    assert [(r.index, r.category, r.field) for r in batch.rejected] == [
        (2, UNDECODABLE, ""), (3, WRONG_KIND, ""), (4, INVALID, "quantity"), (5, INVALID, "symbol"),
        (6, INVALID, "price"), (7, UNDECODABLE, "")]
    rows = {r["trade_id"]: r for r in batch.table.to_pylist()}
    assert rows["ASX-1"]["quantity"] == Decimal(40000)
    assert rows["ASX-1"]["price"] == Decimal("37.51")


def test_one_sided_and_half_empty_quotes() -> None:
    values = [avro.encode("quote", sample_quote(ask_price=None, ask_quantity=None)),
              unchecked_encode("quote", sample_quote(bid_quantity=None))]
    batch = BatchDecoder("quote").decode(values)
    assert batch.rows.to_pylist() == [0]
    assert batch.table.to_pylist()[0]["ask_price"] is None
    assert [(r.index, r.field) for r in batch.rejected] == [(1, "bid_quantity")]
