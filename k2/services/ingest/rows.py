"""Reading vendor files as numbered rows, and the result of parsing a chunk of them."""

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

from k2.core.records import Record


@dataclass(frozen=True)
class RejectedRow:
    line: int
    raw: bytes
    field: str
    reason: str


@dataclass
class ParsedChunk:
    """Each row read is a record (with its line and raw bytes, should Kafka refuse it) or a rejection."""

    records: list[Record] = field(default_factory=list)
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.records) + len(self.rejected)


NumberedLines = list[tuple[int, bytes]]


def numbered_lines(path: Path, chunk_rows: int, skip: int = 0) -> Generator[NumberedLines, None, None]:
    """(line number from 1, line without its CRLF/LF) in chunks; blank lines are not rows and are skipped."""
    chunk: NumberedLines = []
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            if number <= skip:
                continue
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            chunk.append((number, line))
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
