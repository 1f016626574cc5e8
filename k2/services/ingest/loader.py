"""LoadFiles: vendor files already on the ingest host, below its load root, parsed in chunks into Kafka.

Why server-side: vendor files are large and land on the ingest host anyway; streaming them through gRPC would
read and send every byte twice. (A client holding records elsewhere publishes them with PublishTrades.)

Every row ends up in exactly one place: the trades/quotes topic, or the dead-letter topic with its reason,
field, file and line (and the raw row as the value): rows_read = rows_accepted + rows_rejected. A row Kafka
refuses is dead-lettered too; if the dead-letter topic refuses a row as well, the load stops with UNAVAILABLE
rather than lose it. Parsing runs in a worker thread while the chunks before await their acks.
"""

import asyncio
import errno
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import grpc

from k2.core.producer import DeliveryReport
from k2.core.records import QUOTE, TRADE, RecordKind, utc_now
from k2.ingest.v1 import ingest_pb2
from k2.services.ingest import asx, csv_files, metrics
from k2.services.ingest.config import IngestSettings
from k2.services.ingest.rows import ParsedChunk, numbered_lines
from k2.services.ingest.sink import DeadLetter, KafkaSink

SOURCE = "file"
# Dead-letter headers of a rejected file row, besides the core's k2.dlq.reason/field/source.
DLQ_FILE = "k2.dlq.file"
DLQ_LINE = "k2.dlq.line"
MAX_PATH_LENGTH = 4096  # Linux's PATH_MAX
# A path the file system cannot take (a name over 255 bytes, a loop of links) is the request's fault.
PATH_ERRORS = (errno.ENAMETOOLONG, errno.ELOOP)


class Parser(Protocol):
    @property
    def kind(self) -> RecordKind: ...

    def parse(self, lines: list[tuple[int, bytes]]) -> ParsedChunk: ...


@dataclass(frozen=True)
class Format:
    name: str
    kind: RecordKind
    vendor: str  # "asx" | "csv"


FORMATS = {
    ingest_pb2.FILE_FORMAT_ASX_TRADES: Format("asx_trades", TRADE, "asx"),
    ingest_pb2.FILE_FORMAT_ASX_QUOTES: Format("asx_quotes", QUOTE, "asx"),
    ingest_pb2.FILE_FORMAT_CSV_TRADES: Format("csv_trades", TRADE, "csv"),
    ingest_pb2.FILE_FORMAT_CSV_QUOTES: Format("csv_quotes", QUOTE, "csv"),
}


class LoadRefused(Exception):
    """A load refused or stopped as a whole, with the status to return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class PlannedFile:
    requested: str
    path: Path
    format: Format
    parser: Parser
    header_lines: int


@dataclass
class FileCounts:
    path: str
    started: float = field(default_factory=time.monotonic)
    read: int = 0
    accepted: int = 0
    rejected: int = 0

    def progress(self) -> ingest_pb2.LoadProgress:
        elapsed = time.monotonic() - self.started
        return ingest_pb2.LoadProgress(
            path=self.path,
            rows_read=self.read,
            rows_accepted=self.accepted,
            rows_rejected=self.rejected,
            rows_per_second=self.read / elapsed if elapsed > 0 else 0.0,
        )


@dataclass
class _InFlight:
    chunk: ParsedChunk
    delivery: asyncio.Future[DeliveryReport]
    dead_letters: asyncio.Future[DeliveryReport] | None


class Loader:
    def __init__(self, settings: IngestSettings, sink: KafkaSink, symbols: metrics.SymbolLabels):
        self.settings = settings
        self.sink = sink
        self.symbols = symbols

    def plan(self, request: ingest_pb2.LoadFilesRequest) -> list[PlannedFile]:
        """Checks the whole request before anything is written: format, paths, reference data, headers."""
        spec = FORMATS.get(request.format)
        if spec is None:
            raise LoadRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"format is required: one of {', '.join(ingest_pb2.FileFormat.keys()[1:])}",
            )
        if not request.paths:
            raise LoadRefused(grpc.StatusCode.INVALID_ARGUMENT, "no paths to load")
        if len(request.paths) > self.settings.max_load_paths:
            raise LoadRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.paths)} paths; at most {self.settings.max_load_paths} per request",
            )
        root = self.settings.load_root.resolve()
        paths = [self._below_root(root, text) for text in request.paths]
        repeated = sorted(str(path.relative_to(root)) for path, count in Counter(paths).items() if count > 1)
        if repeated:
            raise LoadRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"listed more than once: {', '.join(repeated[:10])}"
                + (f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""),
            )
        received = utc_now()
        if spec.vendor == "asx":
            symbols = self._asx_symbols(root, request.reference_data_path)
            parsers: list[Parser] = [self._asx_parser(spec, path, symbols, received) for path in paths]
            header_lines = 0
        else:
            parsers = [
                csv_files.CsvParser(spec.kind, self._csv_columns(spec, path), received) for path in paths
            ]
            header_lines = 1
        return [
            PlannedFile(text, path, spec, parser, header_lines)
            for text, path, parser in zip(request.paths, paths, parsers, strict=True)
        ]

    async def load(self, files: list[PlannedFile]) -> AsyncIterator[ingest_pb2.LoadFilesResponse]:
        started = time.monotonic()
        finished: list[ingest_pb2.LoadProgress] = []
        metrics.LOADS_ACTIVE.inc()
        try:
            for file in files:
                async for progress in self._load_file(file):
                    yield ingest_pb2.LoadFilesResponse(progress=progress)
                finished.append(progress)
        finally:
            metrics.LOADS_ACTIVE.dec()
        yield ingest_pb2.LoadFilesResponse(
            summary=ingest_pb2.LoadSummary(
                files=finished,
                rows_read=sum(p.rows_read for p in finished),
                rows_accepted=sum(p.rows_accepted for p in finished),
                rows_rejected=sum(p.rows_rejected for p in finished),
                seconds=time.monotonic() - started,
            )
        )

    async def _load_file(self, file: PlannedFile) -> AsyncIterator[ingest_pb2.LoadProgress]:
        counts = FileCounts(file.requested)
        lines = numbered_lines(file.path, self.settings.load_batch_rows, skip=file.header_lines)
        parse = file.parser.parse

        def next_chunk() -> ParsedChunk | None:
            chunk_lines = next(lines, None)
            return None if chunk_lines is None else parse(chunk_lines)

        in_flight: deque[_InFlight] = deque()
        reported_at, reported_rows = time.monotonic(), 0
        try:
            while (chunk := await asyncio.to_thread(next_chunk)) is not None:
                counts.read += chunk.rows
                in_flight.append(await self._produce(file, chunk))
                while len(in_flight) >= self.settings.load_batches_in_flight:
                    await self._settle(file, counts, in_flight.popleft())
                now = time.monotonic()
                if (
                    counts.read - reported_rows >= self.settings.load_progress_rows
                    or now - reported_at >= self.settings.load_progress_seconds
                ):
                    reported_at, reported_rows = now, counts.read
                    yield counts.progress()
            while in_flight:
                await self._settle(file, counts, in_flight.popleft())
        finally:
            with suppress(ValueError):  # still running in its thread when the load was cancelled
                lines.close()
        yield counts.progress()

    async def _produce(self, file: PlannedFile, chunk: ParsedChunk) -> _InFlight:
        self.symbols.count_received(SOURCE, file.format.kind, (record["symbol"] for record in chunk.records))
        delivery = await self.sink.produce(file.format.kind, chunk.records)
        letters = [self._letter(file, row.line, row.raw, row.reason, row.field) for row in chunk.rejected]
        dead_letters = await self.sink.produce_dead_letters(letters) if letters else None
        return _InFlight(chunk, delivery, dead_letters)

    async def _settle(self, file: PlannedFile, counts: FileCounts, batch: _InFlight) -> None:
        """Counts a produced chunk once Kafka answered; rows Kafka refused go to the dead-letter topic."""
        kind, chunk = file.format.kind, batch.chunk
        report = await batch.delivery
        refused = [
            self._letter(file, *chunk.lines[position], f"not written to Kafka: {error}", "")
            for position, error in enumerate(report.errors)
            if error is not None
        ]
        if refused:
            self._check_dead_letters(file, counts, await (await self.sink.produce_dead_letters(refused)))
        if batch.dead_letters is not None:
            self._check_dead_letters(file, counts, await batch.dead_letters)
        accepted = len(chunk.records) - len(refused)
        rejected = len(chunk.rejected) + len(refused)
        counts.accepted += accepted
        counts.rejected += rejected
        metrics.MESSAGES_ACCEPTED.labels(metrics.SERVICE, SOURCE, kind).inc(accepted)
        metrics.count_rejected(SOURCE, kind, "invalid", (row.field for row in chunk.rejected))
        metrics.count_rejected(SOURCE, kind, "not_delivered", ("" for _ in refused))
        metrics.LOAD_ROWS.labels(metrics.SERVICE, file.format.name, "accepted").inc(accepted)
        metrics.LOAD_ROWS.labels(metrics.SERVICE, file.format.name, "rejected").inc(rejected)

    def _check_dead_letters(self, file: PlannedFile, counts: FileCounts, report: DeliveryReport) -> None:
        if report.failed:
            error = next(e for e in report.errors if e is not None)
            raise LoadRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"{file.requested}: the dead-letter topic refused {report.failed} rejected "
                f"rows ({error}); stopped after {counts.read} rows read, {counts.accepted} "
                "accepted",
            )

    def _letter(self, file: PlannedFile, line: int, raw: bytes, reason: str, field: str) -> DeadLetter:
        return DeadLetter(
            raw,
            reason,
            field,
            file.format.name,
            ((DLQ_FILE, str(file.path).encode()), (DLQ_LINE, str(line).encode())),
        )

    @staticmethod
    def _below_root(root: Path, text: str) -> Path:
        """The file a requested path names, below the root. Refusals name the path as the client sent it, never
        where the root is."""
        if not text:
            raise LoadRefused(grpc.StatusCode.INVALID_ARGUMENT, "an empty path")
        if len(text) > MAX_PATH_LENGTH or "\0" in text:
            raise LoadRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{text[:60]!r}: not a path (longer than {MAX_PATH_LENGTH} characters or with a NUL)",
            )
        path = Path(text)
        try:
            resolved = (path if path.is_absolute() else root / path).resolve()
            is_file = resolved.is_file()
        except RuntimeError:  # Path.resolve's "Symlink loop"
            raise LoadRefused(grpc.StatusCode.INVALID_ARGUMENT, f"{text}: a loop of symbolic links") from None
        except OSError as error:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if error.errno in PATH_ERRORS
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            raise LoadRefused(code, f"{text}: {error.strerror}") from None
        if not resolved.is_relative_to(root):
            raise LoadRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{text}: outside the load root; LoadFiles reads only files below it",
            )
        if not is_file:
            raise LoadRefused(grpc.StatusCode.NOT_FOUND, f"{text}: no such file below the load root")
        return resolved

    def _asx_symbols(self, root: Path, requested: str) -> dict[str, str]:
        path = self._below_root(root, requested) if requested else self.settings.reference_data()
        try:
            return asx.load_symbols(path)
        except OSError as error:
            reason = error.strerror
        except (ValueError, KeyError) as error:
            reason = str(error)
        raise LoadRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"ASX reference data {requested or '(the configured file)'} unreadable: {reason}",
        )

    @staticmethod
    def _asx_parser(format: Format, path: Path, symbols: dict[str, str], received: datetime) -> Parser:
        try:
            company_id = asx.company_id_of(path)
        except ValueError as error:
            raise LoadRefused(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        symbol = symbols.get(company_id)
        if symbol is None:
            raise LoadRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{path.name}: company id {company_id} is not in the ASX reference data",
            )
        parser_type = asx.AsxTradeParser if format.kind == TRADE else asx.AsxQuoteParser
        return parser_type(company_id, symbol, received)

    @staticmethod
    def _csv_columns(format: Format, path: Path) -> list[str]:
        try:
            return csv_files.read_header(format.kind, path)
        except (ValueError, UnicodeDecodeError) as error:
            raise LoadRefused(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        except OSError as error:
            raise LoadRefused(grpc.StatusCode.FAILED_PRECONDITION, f"{path.name}: {error.strerror}") from None
