"""The writer's decode path (k2.core.arrow.batch_decoder): Kafka values straight to Arrow by the compiled decoder
must equal the plain path (avro.decode, the validators, records_to_arrow) for every message, and reject exactly
what the validators reject."""

import os
from datetime import UTC, datetime
from decimal import Decimal
from io import BytesIO

import fastavro
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import KNOWN_IDS, RECORDS, avro_data, in_either_framing, sample_quote, sample_trade

from k2.core import avro
from k2.core.arrow import (
    INVALID,
    UNDECODABLE,
    WRONG_KIND,
    CompiledBatchDecoder,
    DecodedBatch,
    PlainBatchDecoder,
    batch_decoder,
)
from k2.core.arrow_records import avro_field_type, records_to_arrow
from k2.core.records import DECIMAL_SCALE, VALIDATORS, RecordKind


def _wide(node: object) -> object:
    """The schema with room for decimals of any precision: their bytes are written the same way."""
    if isinstance(node, dict):
        return {k: 80 if k == "precision" else _wide(v) for k, v in node.items()}
    return [_wide(v) for v in node] if isinstance(node, list) else node


_UNCHECKED = {kind: fastavro.parse_schema(_wide(version.schema)) for kind, version in avro.CURRENT.items()}


def unchecked_encode(kind: RecordKind, record: dict[str, object]) -> bytes:
    """Avro bytes of a record the validators would refuse, decimals beyond decimal(38,18) included (avro.encode
    validates nothing, but fastavro refuses a decimal beyond the schema's precision)."""
    out = BytesIO()
    out.write(avro.MAGIC + avro.CURRENT[kind].fingerprint)
    fastavro.schemaless_writer(out, _UNCHECKED[kind], record)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["trade", "quote"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_batch_equals_the_plain_decode(kind: RecordKind, data: st.DataObject) -> None:
    """In either Kafka framing."""
    records = data.draw(st.lists(RECORDS[kind](), min_size=1, max_size=30))
    values = [avro.encode(kind, r) for r in records]
    batch = batch_decoder(kind, KNOWN_IDS).decode(in_either_framing(data, kind, values))
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
    v1 = {
        "symbol": "BHP",
        "company_id": 7078,
        "exchange": "ASX",
        "exchange_timestamp": datetime(2014, 3, 9, 23, 5, 44, 516000, UTC),
        "price": Decimal("37.51"),
        "volume": 40000,
        "qualifiers": 3,
        "venue": "X",
        "buyer_id": None,
        "ingestion_timestamp": datetime(2014, 3, 9, 23, 5, 45, tzinfo=UTC),
        "sequence_number": 1,
    }
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
    batch = batch_decoder("trade").decode(values)
    assert sorted(batch.rows.to_pylist()) == [0, 1]
    assert [(r.index, r.category, r.field) for r in batch.rejected] == [
        (2, UNDECODABLE, ""),
        (3, WRONG_KIND, ""),
        (4, INVALID, "quantity"),
        (5, INVALID, "symbol"),
        (6, INVALID, "price"),
        (7, UNDECODABLE, ""),
    ]
    rows = {r["trade_id"]: r for r in batch.table.to_pylist()}
    assert rows["ASX-1"]["quantity"] == Decimal(40000)
    assert rows["ASX-1"]["price"] == Decimal("37.51")


def test_one_sided_and_half_empty_quotes() -> None:
    values = [
        avro.encode("quote", sample_quote(ask_price=None, ask_quantity=None)),
        unchecked_encode("quote", sample_quote(bid_quantity=None)),
    ]
    batch = batch_decoder("quote").decode(values)
    assert batch.rows.to_pylist() == [0]
    assert batch.table.to_pylist()[0]["ask_price"] is None
    assert [(r.index, r.field) for r in batch.rejected] == [(1, "bid_quantity")]


def test_values_at_the_edges_decode_like_the_plain_path() -> None:
    """Lengths of 64 bytes and more, varints longer than 8 bytes, negative and 16-byte decimals, non-ASCII text,
    lists and maps at their bounds, timestamps before 1970: each row as the plain path gives it."""
    trades = [
        sample_trade(),
        sample_trade(
            trade_id="T" * 64,
            currency="Ünïcödé-€",
            trade_conditions=["é" * 32] * 8,
            vendor_data={f"k{i}": "é" * 64 for i in range(8)},
        ),
        sample_trade(
            asset_class="FUTURES",
            price=Decimal("-12345678901234567890.123456789012345678"),
            source_sequence=-(2**63),
            platform_sequence=2**63 - 1,
        ),
        sample_trade(
            price=Decimal("99999999999999999999.999999999999999999"),
            source_sequence=2**55,
            timestamp=datetime(1969, 12, 31, 23, 59, 59, 999999, UTC),
            trade_conditions=["@", "XT"],
        ),
        sample_trade(
            quantity=Decimal("0.000000000000000001"),
            source_sequence=-1,
            platform_sequence=0,
            vendor_data=None,
        ),
    ]
    quotes = [
        sample_quote(),
        sample_quote(bid_price=None, bid_quantity=None, vendor_data={"a": "b"}),
        sample_quote(ask_price=Decimal("-0.5"), asset_class="FUTURES", source_sequence=None),
    ]
    for kind, records in (("trade", trades), ("quote", quotes)):
        values = [avro.encode(kind, r) for r in records]  # type: ignore[arg-type]
        batch = batch_decoder(kind).decode(values)  # type: ignore[arg-type]
        assert batch.rejected == []
        reference = records_to_arrow(kind, [avro.decode(values[i])[1] for i in batch.rows.to_pylist()])  # type: ignore[arg-type]
        assert sorted(batch.rows.to_pylist()) == list(range(len(records)))
        assert batch.table.equals(reference)


def test_invalid_utf8_is_undecodable() -> None:
    in_a_column = avro.encode("trade", sample_trade(symbol="XYZUSDT")).replace(b"XYZ", b"\xff\xfe\xfd")
    in_a_map = avro.encode("trade", sample_trade(vendor_data={"XYZ": "1"})).replace(b"XYZ", b"\xff\xfe\xfd")
    batch = batch_decoder("trade").decode([in_a_column, avro.encode("trade", sample_trade()), in_a_map])
    assert batch.rows.to_pylist() == [1]
    assert [(r.index, r.category) for r in batch.rejected] == [(0, UNDECODABLE), (2, UNDECODABLE)]


@pytest.mark.parametrize(
    "kind, change, field, reason",
    [
        ("trade", {"symbol": "btcusdt"}, "symbol", "'btcusdt' is not 1-32 characters of A-Z 0-9 . _ -"),
        ("trade", {"symbol": "BTC/USDT"}, "symbol", "'BTC/USDT' is not 1-32 characters of A-Z 0-9 . _ -"),
        (
            "trade",
            {"exchange": "X" * 33},
            "exchange",
            f"'{'X' * 33}' is not 1-32 characters of A-Z 0-9 . _ -",
        ),
        ("trade", {"trade_conditions": ["X"] * 9}, "trade_conditions", "9 given, at most 8"),
        ("trade", {"trade_conditions": ["é" * 33]}, "trade_conditions", "[0] is longer than 32 characters"),
        ("trade", {"vendor_data": {f"{n}": "" for n in range(9)}}, "vendor_data", "9 entries, at most 8"),
        (
            "trade",
            {"vendor_data": {"K" * 33: ""}},
            "vendor_data",
            f"key '{'K' * 33}' is longer than 32 characters",
        ),
        (
            "trade",
            {"vendor_data": {"k": "é" * 65}},
            "vendor_data",
            "the value of 'k' is longer than 64 characters",
        ),
        ("quote", {"symbol": "bhp"}, "symbol", "'bhp' is not 1-32 characters of A-Z 0-9 . _ -"),
        ("quote", {"bid_price": Decimal(0)}, "bid_price", "must be positive: 0"),  # as read: 0E-18
        ("quote", {"ask_price": Decimal(-1)}, "ask_price", "must be positive: -1"),
        (
            "quote",
            {"vendor_data": {"k": "V" * 65}},
            "vendor_data",
            "the value of 'k' is longer than 64 characters",
        ),
    ],
)
def test_records_beyond_the_rules_are_rejected_with_the_field(
    kind: RecordKind, change: dict[str, object], field: str, reason: str
) -> None:
    """The writer applies the ingest rules (records.VALIDATORS) to what it reads, fast path included: a record
    written before a rule existed, or by another producer, is dead-lettered rather than kept where no query can
    ask for it."""
    sample = sample_trade() if kind == "trade" else sample_quote()
    values = [avro.encode(kind, sample), unchecked_encode(kind, sample | change)]
    batch = batch_decoder(kind).decode(values)
    assert batch.rows.to_pylist() == [0]
    [rejection] = batch.rejected
    assert (rejection.index, rejection.category, rejection.field) == (1, INVALID, field)
    assert rejection.reason.startswith(reason)


# Any value the schema's types hold, not only valid records: negative, zero and 17-byte decimals (beyond
# decimal(38,18)), texts the validators refuse, nulls where a rule pairs fields, timestamps before 1970.
wide_decimals = st.integers(-(2**135), 2**135).map(lambda units: Decimal(f"{units}E-{DECIMAL_SCALE}"))


def any_record(kind: RecordKind) -> st.SearchStrategy[dict[str, object]]:
    fields = {}
    for field in avro.CURRENT[kind].schema["fields"]:
        strategy = avro_data(field["type"])
        inner, _ = avro_field_type(field["type"])
        if isinstance(inner, dict) and inner.get("logicalType") == "decimal":
            strategy = st.one_of(strategy, wide_decimals)
        fields[field["name"]] = strategy
    return st.fixed_dictionaries(fields)


@st.composite
def messages(draw: st.DrawFn, kind: RecordKind) -> bytes:
    """A Kafka value of a `kind` topic: a valid or any current-version record, an older version's, the other
    kind's, or any of them cut short, with a byte changed or with a byte after it."""
    other: RecordKind = "quote" if kind == "trade" else "trade"
    value = draw(
        st.one_of(
            RECORDS[kind]().map(lambda record: avro.encode(kind, record)),
            any_record(kind).map(lambda record: unchecked_encode(kind, record)),
            avro_data(avro.VERSIONS[kind][0].schema).map(
                lambda record: avro.encode_with(avro.VERSIONS[kind][0], record)
            ),
            RECORDS[other]().map(lambda record: avro.encode(other, record)),
        )
    )
    change = draw(st.sampled_from(["none", "none", "cut", "byte", "trailing"]))
    if change == "cut":
        return value[: draw(st.integers(0, len(value) - 1))]
    if change == "byte":
        at = draw(st.integers(0, len(value) - 1))
        return value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1 :]
    return value + b"\0" if change == "trailing" else value


def in_input_order(batch: DecodedBatch) -> DecodedBatch:
    order = pc.sort_indices(batch.rows)
    return DecodedBatch(batch.table.take(order), batch.rows.take(order), batch.rejected)


@pytest.mark.parametrize("kind", ["trade", "quote"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_compiled_decoder_equals_the_plain_path(kind: RecordKind, data: st.DataObject) -> None:
    """Every message the compiled decoder does not take (null values too) is handed to the plain path: the batch
    is the plain path's, row for row and rejection for rejection, whatever the messages."""
    framed = in_either_framing(data, kind, data.draw(st.lists(messages(kind), min_size=1, max_size=30)))
    values = [None if data.draw(st.integers(0, 9)) == 0 else value for value in framed]  # tombstones
    decoder = batch_decoder(kind, KNOWN_IDS)
    assert isinstance(decoder, CompiledBatchDecoder)
    compiled = in_input_order(decoder.decode(values))
    plain = PlainBatchDecoder(kind, KNOWN_IDS).decode(values)
    assert compiled.rows.equals(plain.rows)
    assert compiled.table.equals(plain.table)
    assert compiled.rejected == plain.rejected


@pytest.mark.parametrize("kind", ["trade", "quote"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_valid_current_records_are_decoded_compiled(kind: RecordKind, data: st.DataObject) -> None:
    """None of them is left to the plain path."""
    values = in_either_framing(
        data,
        kind,
        [
            avro.encode(kind, record)
            for record in data.draw(st.lists(RECORDS[kind](), min_size=1, max_size=30))
        ],
    )
    decoder = batch_decoder(kind, KNOWN_IDS)
    assert isinstance(decoder, CompiledBatchDecoder)
    _, count, _, handed_back = decoder.compiled.decode(values)
    assert (count, handed_back) == (len(values), [])


@pytest.mark.parametrize(
    "units, accepted",
    [
        (10**38 - 1, True),
        (-(10**38 - 1), True),
        (1, True),  # the largest and smallest magnitudes decimal(38,18) holds
        (10**38, False),
        (2**127 - 1, False),
        (-(2**127), False),  # 16 bytes, beyond 38 digits
        (2**127, False),
        (-(2**135), False),  # 17 bytes and more
    ],
)
def test_decimals_beyond_the_table_type_are_rejected_never_rounded(units: int, accepted: bool) -> None:
    price = Decimal(f"{units}E-{DECIMAL_SCALE}")
    batch = batch_decoder("trade").decode(
        [unchecked_encode("trade", sample_trade(asset_class="FUTURES", price=price))]
    )
    if accepted:
        assert batch.rejected == []
        assert batch.table["price"][0].as_py() == price
    else:
        assert batch.table.num_rows == 0
        [rejection] = batch.rejected
        assert (rejection.category, rejection.field) == (INVALID, "price")
        assert "more than 20 integer digits" in rejection.reason


def test_a_repeated_map_key_keeps_the_last_value_as_the_plain_path_does() -> None:
    value = avro.encode("trade", sample_trade(vendor_data={"a": "1", "b": "2", "c": "3"}))
    repeated = value.replace(b"\x02b\x022", b"\x02a\x022")
    batch = batch_decoder("trade").decode([value, repeated])
    assert batch.rejected == []
    assert batch.table.equals(PlainBatchDecoder("trade").decode([value, repeated]).table)
    assert [dict(row) for row in batch.table["vendor_data"].to_pylist()] == [
        {"a": "1", "b": "2", "c": "3"},
        {"a": "2", "c": "3"},
    ]
