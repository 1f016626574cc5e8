"""The Avro v2 records and the k2.marketdata.v1 protobuf messages mirror each other field by field.

A change to one side without the other fails here. The mapping is the one documented in marketdata.proto.
"""

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from k2.core.avro import CURRENT
from k2.core.records import QUOTE, TRADE, RecordKind
from k2.marketdata.v1.marketdata_pb2 import Quote, Trade

MESSAGES: dict[RecordKind, Descriptor] = {TRADE: Trade.DESCRIPTOR, QUOTE: Quote.DESCRIPTOR}


def expected_proto_shape(avro_type: object) -> tuple[str, bool]:
    """(proto type description, has presence) for an Avro field type."""
    nullable = isinstance(avro_type, list)
    if nullable:
        assert isinstance(avro_type, list) and avro_type[0] == "null" and len(avro_type) == 2
        avro_type = avro_type[1]
    if isinstance(avro_type, str):
        shape = {"string": "string", "long": "int64"}[avro_type]
    elif avro_type.get("logicalType") == "decimal":  # type: ignore[union-attr]
        shape = "string"
    elif avro_type.get("logicalType") == "timestamp-micros":  # type: ignore[union-attr]
        shape = "message google.protobuf.Timestamp"
    elif avro_type.get("logicalType") == "uuid":  # type: ignore[union-attr]
        shape = "string"
    elif avro_type["type"] == "enum":  # type: ignore[index]
        shape = f"enum {avro_type['name']}"  # type: ignore[index]
    elif avro_type["type"] == "array":  # type: ignore[index]
        shape = f"repeated {expected_proto_shape(avro_type['items'])[0]}"  # type: ignore[index]
    elif avro_type["type"] == "map":  # type: ignore[index]
        shape = f"map<string, {expected_proto_shape(avro_type['values'])[0]}>"  # type: ignore[index]
    else:
        raise AssertionError(f"no proto mirror defined for Avro type {avro_type}")
    # A nullable map mirrors a proto map (empty = null), which has no presence; other nullables are `optional`.
    return shape, nullable and not shape.startswith("map<")


def proto_shape(field: FieldDescriptor) -> tuple[str, bool]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return f"map<string, {proto_shape(value)[0]}>", False
    scalar = {FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_INT64: "int64"}
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        shape = f"message {field.message_type.full_name}"
    elif field.type == FieldDescriptor.TYPE_ENUM:
        shape = f"enum {field.enum_type.name}"
    else:
        shape = scalar[field.type]
    if field.is_repeated:
        return f"repeated {shape}", False
    return shape, field.has_presence and field.type != FieldDescriptor.TYPE_MESSAGE


@pytest.mark.parametrize("kind", [TRADE, QUOTE])
def test_fields_mirror_in_name_order_and_type(kind: RecordKind) -> None:
    avro_fields = CURRENT[kind].schema["fields"]
    message = MESSAGES[kind]
    assert [f["name"] for f in avro_fields] == [
        f.name for f in sorted(message.fields, key=lambda f: f.number)
    ]
    for number, avro_field in enumerate(avro_fields, start=1):
        proto_field = message.fields_by_name[avro_field["name"]]
        assert proto_field.number == number, f"{avro_field['name']}: proto field number follows Avro order"
        assert proto_shape(proto_field) == expected_proto_shape(avro_field["type"]), avro_field["name"]


@pytest.mark.parametrize("kind", [TRADE, QUOTE])
def test_enum_symbols_mirror(kind: RecordKind) -> None:
    message = MESSAGES[kind]
    for avro_field in CURRENT[kind].schema["fields"]:
        avro_type = avro_field["type"]
        if not (isinstance(avro_type, dict) and avro_type.get("type") == "enum"):
            continue
        enum = message.fields_by_name[avro_field["name"]].enum_type
        prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name).lstrip("_") + "_"
        proto_symbols = [v.name.removeprefix(prefix) for v in enum.values if v.number != 0]
        assert enum.values_by_number[0].name == prefix + "UNSPECIFIED"
        assert proto_symbols == avro_type["symbols"], enum.name
