"""Schema evolution by Avro's own rules, checked with Apache Avro for Java 1.12.2 (scripts/avro_java.sh), the
reference implementation, rather than the fastavro the services use:

- every published version is readable by the current reader through Avro resolution, as Java's SchemaCompatibility
  judges it and as Java's BinaryMessageDecoder reads K2's messages: the same values K2 reads, or, for v1, which
  resolution cannot carry into v2 and K2 converts itself (docs/tables.md), a refusal, never a wrong value;
- a published version is never edited beyond its docs, aliases and added defaults: messages on Kafka name it by a
  fingerprint that covers only its names and types."""

import copy
import json
import select
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import IO, Any, cast

import fastavro
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import avro_data
from test_ingest_publish import batch, publish, trade
from test_ingest_support import read_topic, running_ingest

from k2.core import avro
from k2.core.avro import CURRENT, UPGRADES, VERSIONS, SchemaVersion
from k2.core.config import KafkaSettings
from k2.core.kafka import TRADES, producer_config
from k2.core.records import VALIDATORS, RecordKind
from k2.core.schemas import SCHEMA_DIR

ROOT = Path(__file__).resolve().parent.parent
JAVA_AVRO = ROOT / "scripts" / "avro_java.sh"
ALL_VERSIONS = [v for versions in VERSIONS.values() for v in versions]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def fastavro_millis(millis: int) -> datetime:
    return EPOCH + timedelta(milliseconds=millis)


V1_TRADE = {
    "symbol": "BHP",
    "company_id": 7078,
    "exchange": "ASX",
    "exchange_timestamp": fastavro_millis(1394406344516),
    "price": Decimal("37.51"),
    "volume": 40000,
    "qualifiers": 3,
    "venue": "X",
    "buyer_id": None,
    "ingestion_timestamp": fastavro_millis(1394406345000),
    "sequence_number": 17,
}


def java_avro(*args: str | Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        [JAVA_AVRO, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class JavaDecoder:
    """Java's BinaryMessageDecoder for one record kind, as a Java consumer of K2's topics would set it up: the current
    schema as reader, every published version in its schema store. One JVM, asked one message at a time."""

    def __init__(self, kind: RecordKind) -> None:
        java_avro("fingerprint", CURRENT[kind].path)  # fetches and compiles the tool first, within a timeout
        self.process = subprocess.Popen(
            [JAVA_AVRO, "decode", CURRENT[kind].path, *(v.path for v in VERSIONS[kind])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def decode(self, message: bytes) -> dict[str, Any]:
        """{"record": the record, timestamps as epoch microseconds} or {"error": why Java could not read it}."""
        stdin, stdout = cast(IO[str], self.process.stdin), cast(IO[str], self.process.stdout)
        stdin.write(message.hex() + "\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], 60)
        assert ready, "the Java decoder did not answer within 60 s"
        line = stdout.readline()
        assert line, f"the Java decoder exited ({self.process.poll()})"
        return cast(dict[str, Any], json.loads(line, parse_float=Decimal))

    def close(self) -> None:
        cast(IO[str], self.process.stdin).close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def java_decoders() -> Iterator[dict[RecordKind, JavaDecoder]]:
    decoders = {kind: JavaDecoder(kind) for kind in VERSIONS}
    yield decoders
    for decoder in decoders.values():
        decoder.close()


def as_java_reads(value: Any) -> Any:
    """A K2 record in the Java decoder's terms: timestamps as epoch microseconds (decimals compare by value)."""
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(microseconds=1)
    if isinstance(value, dict):
        return {k: as_java_reads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_java_reads(v) for v in value]
    return value


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.path.name)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_published_version_reads_as_a_current_record(
    version: SchemaVersion, data: st.DataObject, java_decoders: dict[RecordKind, JavaDecoder]
) -> None:
    message = avro.encode_with(version, data.draw(avro_data(version.schema)))
    kind, record = avro.decode(message)
    assert kind == version.kind
    assert fastavro.validate(record, CURRENT[kind].parsed, raise_errors=True)
    written_by_k2 = avro.encode(kind, record)
    assert avro.decode(written_by_k2) == (kind, record)

    java = java_decoders[kind]
    assert java.decode(written_by_k2) == {"record": as_java_reads(record)}
    if (kind, version.version) in UPGRADES:
        assert "AvroTypeException" in java.decode(message)["error"]
    else:
        assert java.decode(message) == {"record": as_java_reads(record)}


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.path.name)
def test_java_judges_every_version_but_the_converted_readable_by_the_current_reader(
    version: SchemaVersion,
) -> None:
    verdict = json.loads(java_avro("compatibility", CURRENT[version.kind].path, version.path))
    if (version.kind, version.version) in UPGRADES:
        assert version.version == 1, "only v1, older than K2's v2 contract, may need a conversion"
        assert verdict["compatibility"] == "INCOMPATIBLE"
    else:
        assert verdict == {"compatibility": "COMPATIBLE", "incompatibilities": []}


def a_default(schema: Any) -> Any:
    """A valid default for a field of this type (a union's default is of its first branch)."""
    if isinstance(schema, list):
        return a_default(schema[0])
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "enum":
        return schema["symbols"][0]
    return {"null": None, "string": "", "bytes": "", "int": 0, "long": 0, "array": [], "map": {}}[kind]


def other_units(node: Any) -> Any:
    """The schema with every decimal's scale and precision and every timestamp's unit changed."""
    if isinstance(node, list):
        return [other_units(v) for v in node]
    if not isinstance(node, dict):
        return node
    changed = {k: other_units(v) for k, v in node.items()}
    if node.get("logicalType") == "decimal":
        changed |= {"precision": node["precision"] - 1, "scale": node["scale"] - 1}
    elif node.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
        changed["logicalType"] = "timestamp-nanos"
    return changed


def test_fingerprints_ignore_docs_aliases_defaults_and_logical_types(tmp_path: Path) -> None:
    """Java's fingerprints are K2's; Parsing Canonical Form drops docs, aliases and defaults, which a published version
    may therefore gain, but also logical types, which is why the never-edited check compares more than fingerprints."""
    variants: list[tuple[SchemaVersion, dict[str, Any]]] = []
    for version in ALL_VERSIONS:
        annotated = copy.deepcopy(version.schema)
        annotated |= {"doc": "another doc", "aliases": [f"{annotated['name']}Alias"]}
        for field in annotated["fields"]:
            field |= {"doc": "another doc", "aliases": [f"{field['name']}_alias"]}
            field.setdefault("default", a_default(field["type"]))
        variants += [(version, version.schema), (version, annotated), (version, other_units(version.schema))]
    paths = []
    for i, (_, schema) in enumerate(variants):
        paths.append(tmp_path / f"variant_{i}.avsc")
        paths[-1].write_text(json.dumps(schema))
    java = [bytes.fromhex(line) for line in java_avro("fingerprint", *paths).split()]
    assert java == [version.fingerprint for version, _ in variants]
    assert [avro.schema_fingerprint(schema) for _, schema in variants] == java


def test_every_version_has_its_own_fingerprint() -> None:
    """A new version differing from an older one only in logical types would share its fingerprint: the messages of
    both would be read alike, one of them wrongly."""
    assert len({v.fingerprint for v in ALL_VERSIONS}) == len(ALL_VERSIONS)


def test_resolving_v1_into_v2_reads_wrong_values_in_java(tmp_path: Path) -> None:
    """Through v2 with every alias and default resolution could use, Java reads a v1 trade without error and judges
    the schemas compatible, but reads v1's price and times in v2's scale and unit (fastavro, with v1's: the
    implementations disagree where the spec says the decimals do not match). Both versions name those fields alike,
    so no other reader schema could tell them apart either (docs/tables.md)."""
    v1, reader = VERSIONS["trade"][0], copy.deepcopy(CURRENT["trade"].schema)
    reader["aliases"] = [f"{v1.schema['namespace']}.{v1.schema['name']}"]
    renamed = {"timestamp": "exchange_timestamp", "source_sequence": "sequence_number"}
    defaults = {
        "message_id": "00000000-0000-0000-0000-000000000000",
        "trade_id": "",
        "asset_class": "EQUITIES",
        "quantity": "\u0000",
        "currency": "AUD",
        "side": "UNKNOWN",
    }
    for field in reader["fields"]:
        if field["name"] in renamed:
            field["aliases"] = [renamed[field["name"]]]
        if field["name"] in defaults:
            field["default"] = defaults[field["name"]]
    path = tmp_path / "trade_v2_resolving_v1.avsc"
    path.write_text(json.dumps(reader))
    message = avro.encode_with(v1, V1_TRADE)

    assert json.loads(java_avro("compatibility", path, v1.path))["compatibility"] == "COMPATIBLE"
    java = json.loads(java_avro("decode", path, v1.path, stdin=message.hex() + "\n"), parse_float=Decimal)[
        "record"
    ]
    assert (java["price"], java["timestamp"], java["ingestion_timestamp"], java["source_sequence"]) == (
        Decimal("0.00000000003751"),
        1394406344516,
        1394406345000,
        17,
    )
    by_fastavro = cast(
        dict[str, Any], fastavro.schemaless_reader(BytesIO(message[avro.HEADER_SIZE :]), v1.schema, reader)
    )
    assert by_fastavro["price"] == Decimal("37.51")
    assert avro.decode(message)[1]["price"] == Decimal("37.51")


def test_v1_trade_upgrades_field_by_field() -> None:
    v1, datum = VERSIONS["trade"][0], V1_TRADE
    kind, record = avro.decode(avro.encode_with(v1, datum))
    assert VALIDATORS[kind](dict(record)) == record
    assert (record["quantity"], record["price"], record["trade_id"], record["source_sequence"]) == (
        40000,
        datum["price"],
        "ASX-17",
        17,
    )
    assert record["timestamp"] == datum["exchange_timestamp"]
    assert record["trade_conditions"] == ["3"]
    assert record["vendor_data"] == {"company_id": "7078", "qualifiers": "3", "venue": "X"}
    assert avro.decode(avro.encode_with(v1, datum))[1]["message_id"] == record["message_id"]


def test_v1_quote_zero_side_becomes_absent() -> None:
    v1 = VERSIONS["quote"][0]
    datum = {
        "symbol": "BHP",
        "company_id": 7078,
        "exchange": "ASX",
        "exchange_timestamp": fastavro_millis(1394406344516),
        "bid_price": Decimal("37.7"),
        "ask_price": Decimal(0),
        "bid_volume": 300,
        "ask_volume": 0,
        "ingestion_timestamp": fastavro_millis(1394406345000),
        "sequence_number": None,
    }
    _, record = avro.decode(avro.encode_with(v1, datum))
    assert (record["bid_price"], record["bid_quantity"]) == (Decimal("37.7"), 300)
    assert (record["ask_price"], record["ask_quantity"]) == (None, None)


def produce_v1_trade(settings: KafkaSettings, topic: str) -> None:
    producer = Producer(producer_config(settings))
    producer.produce(topic, avro.encode_with(VERSIONS["trade"][0], V1_TRADE), b"BHP")
    assert producer.flush(30) == 0


async def test_a_java_consumer_reads_the_trades_topic_as_k2_does(
    kafka_settings: KafkaSettings, java_decoders: dict[RecordKind, JavaDecoder]
) -> None:
    """The bytes on the topic as the ingest service publishes them (its compiled encoder), and a v1 message of the
    older ASX platform beside them."""
    sent = [trade(i) for i in range(20)]
    sent[3].price = "99999999999999999999.999999999999999999"
    sent[4].quantity = "0.000000000000000001"
    sent[5].trade_conditions[:] = ["A", "XT"]
    sent[6].ClearField("source_sequence")
    sent[6].vendor_data.clear()
    async with running_ingest(kafka_settings) as ingest:
        [answer] = await publish(ingest.stub, batch("batch-1", sent))
        assert answer.accepted == len(sent)
        produce_v1_trade(kafka_settings, ingest.topic(TRADES))
        messages = await read_topic(kafka_settings, ingest.topic(TRADES))

    assert len(messages) == len(sent) + 1
    java = java_decoders["trade"]
    read: dict[str, dict[str, Any]] = {}
    for message in messages:
        value = message.value() or b""
        _, record = avro.decode(value)
        if value[2:10] == VERSIONS["trade"][0].fingerprint:
            assert "missing required field" in java.decode(value)["error"]
        else:
            assert java.decode(value) == {"record": as_java_reads(record)}
            read[record["trade_id"]] = record
    assert [(read[t.trade_id]["price"], read[t.trade_id]["quantity"]) for t in sent] == [
        (Decimal(t.price), Decimal(t.quantity)) for t in sent
    ]


def published_on_main() -> dict[str, str]:
    """The schema files as committed on main (the published versions)."""
    folder = SCHEMA_DIR.relative_to(ROOT).as_posix()
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", "main", f"{folder}/"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    return {
        Path(name).name: subprocess.run(
            ["git", "show", f"main:{name}"], cwd=ROOT, text=True, capture_output=True, check=True
        ).stdout
        for name in listing
        if name.endswith(".avsc")
    }


def without_annotations(node: Any) -> Any:
    """The schema without docs, aliases and defaults: its names, types, logical types and their parameters."""
    if isinstance(node, dict):
        return {k: without_annotations(v) for k, v in node.items() if k not in ("doc", "aliases", "default")}
    if isinstance(node, list):
        return [without_annotations(v) for v in node]
    return node


def test_published_schemas_are_never_edited_in_place() -> None:
    published = published_on_main()
    assert published, "main has no published schemas"
    for name, text in published.items():
        path = SCHEMA_DIR / name
        assert path.exists(), f"{name} was published on main and must stay: messages on Kafka name it"
        before, now = json.loads(text), json.loads(path.read_text())
        assert without_annotations(now) == without_annotations(before), (
            f"{name} changed in place (only docs, aliases and new defaults may); publish a new version file instead"
        )
        defaults_before = {f["name"]: f["default"] for f in before["fields"] if "default" in f}
        assert defaults_before.items() <= {f["name"]: f.get("default") for f in now["fields"]}.items(), (
            f"{name}: a published default changed"
        )
