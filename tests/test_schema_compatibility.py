"""Backward compatibility, as a schema registry would enforce it: every published schema version in schemas/ is
readable by the current reader (Avro resolution or the version's upgrade), and a published version is never edited
in place — messages already on Kafka name it by fingerprint."""

import json
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import avro_data

from k2.core import avro
from k2.core.avro import CURRENT, VERSIONS, SchemaVersion
from k2.core.records import VALIDATORS

ROOT = Path(__file__).resolve().parent.parent
ALL_VERSIONS = [v for versions in VERSIONS.values() for v in versions]


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.path.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_published_version_reads_as_a_current_record(version: SchemaVersion, data: st.DataObject) -> None:
    datum = data.draw(avro_data(version.schema))
    kind, record = avro.decode(avro.encode_with(version, datum))
    assert kind == version.kind
    assert fastavro.validate(record, CURRENT[kind].parsed, raise_errors=True)
    assert avro.decode(avro.encode(kind, record)) == (kind, record)


def test_v1_trade_upgrades_field_by_field() -> None:
    v1 = VERSIONS["trade"][0]
    datum = {"symbol": "BHP", "company_id": 7078, "exchange": "ASX",
             "exchange_timestamp": fastavro_millis(1394406344516), "price": Decimal("37.51"),
             "volume": 40000, "qualifiers": 3, "venue": "X", "buyer_id": None,
             "ingestion_timestamp": fastavro_millis(1394406345000), "sequence_number": 17}
    kind, record = avro.decode(avro.encode_with(v1, datum))
    assert VALIDATORS[kind](dict(record)) == record
    assert (record["quantity"], record["price"], record["trade_id"], record["source_sequence"]) == (40000, datum["price"], "ASX-17", 17)
    assert record["timestamp"] == datum["exchange_timestamp"]
    assert record["trade_conditions"] == ["3"]
    assert record["vendor_data"] == {"company_id": "7078", "qualifiers": "3", "venue": "X"}
    assert avro.decode(avro.encode_with(v1, datum))[1]["message_id"] == record["message_id"]


def test_v1_quote_zero_side_becomes_absent() -> None:
    v1 = VERSIONS["quote"][0]
    datum = {"symbol": "BHP", "company_id": 7078, "exchange": "ASX",
             "exchange_timestamp": fastavro_millis(1394406344516), "bid_price": Decimal("37.7"), "ask_price": Decimal(0),
             "bid_volume": 300, "ask_volume": 0, "ingestion_timestamp": fastavro_millis(1394406345000),
             "sequence_number": None}
    _, record = avro.decode(avro.encode_with(v1, datum))
    assert (record["bid_price"], record["bid_quantity"]) == (Decimal("37.7"), 300)
    assert (record["ask_price"], record["ask_quantity"]) == (None, None)


def fastavro_millis(millis: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)


def published_on_main() -> dict[str, str]:
    """schemas/*.avsc as committed on main (the published versions)."""
    listing = subprocess.run(["git", "ls-tree", "--name-only", "main", "schemas/"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.split()
    return {Path(name).name: subprocess.run(["git", "show", f"main:{name}"], cwd=ROOT, text=True,
                                            capture_output=True, check=True).stdout
            for name in listing if name.endswith(".avsc")}


def test_published_schemas_are_never_edited_in_place() -> None:
    published = published_on_main()
    assert published, "main has no published schemas"
    for name, text in published.items():
        path = ROOT / "schemas" / name
        assert path.exists(), f"{name} was published on main and must stay: messages on Kafka name it"
        assert avro.schema_fingerprint(json.loads(path.read_text())) == avro.schema_fingerprint(json.loads(text)), (
            f"{name} changed in place; publish a new version file instead")
