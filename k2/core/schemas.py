"""The Avro schemas of K2's records (k2/schemas/<kind>_v<N>.avsc): every published version of each record kind,
read as plain JSON. The newest version of a kind is its current schema, the one K2 writes and the contract the
Iceberg columns, the Arrow tables and the protobuf messages follow."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2.core.records import QUOTE, TRADE, RecordKind

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


@dataclass(frozen=True)
class SchemaFile:
    kind: RecordKind
    version: int
    path: Path
    schema: dict[str, Any]


def _published() -> dict[RecordKind, list[SchemaFile]]:
    files: dict[RecordKind, list[SchemaFile]] = {TRADE: [], QUOTE: []}
    for path in sorted(SCHEMA_DIR.glob("*_v*.avsc")):
        kind, _, number = path.stem.rpartition("_v")
        if kind not in files:
            raise RuntimeError(f"{path.name}: unknown record kind {kind!r}")
        files[kind].append(SchemaFile(kind, int(number), path, json.loads(path.read_text())))  # type: ignore[arg-type]
    for versions in files.values():
        if not versions:
            raise RuntimeError(f"no schema files in {SCHEMA_DIR}")
        versions.sort(key=lambda f: f.version)
    return files


PUBLISHED = _published()
CURRENT_SCHEMA: dict[RecordKind, dict[str, Any]] = {
    kind: files[-1].schema for kind, files in PUBLISHED.items()
}
