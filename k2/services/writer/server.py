"""The writer's gRPC service (GetStatus, Flush, Compact) and the app that runs it beside the consume loop, the
maintenance scheduler and the monitor. Each of those threads uses a catalog of its own."""

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import grpc
from confluent_kafka import KafkaException
from google.protobuf.timestamp_pb2 import Timestamp

from k2.core.config import AuthSettings, IcebergSettings, KafkaSettings
from k2.core.grpcserver import Service
from k2.core.iceberg import load_catalog, table_identifier
from k2.core.kafka import TOPIC_FOR, provision_topics, topic_name
from k2.core.protos import set_timestamp
from k2.core.records import QUOTE, TRADE, FieldError, RecordKind
from k2.core.timestamps import EPOCH
from k2.writer.v1 import writer_pb2 as pb
from k2.writer.v1 import writer_pb2_grpc

from . import metrics
from .config import WriterSettings
from .consumer import WriterLoop
from .decoding import GC_THRESHOLDS
from .maintenance import CompactionProgress, CompactionResult, MaintenanceScheduler, TableMaintenance
from .status import Monitor, StatusReader
from .tables import open_table

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WriterService"].full_name
KINDS: tuple[RecordKind, ...] = (TRADE, QUOTE)


class WriterApp(Service):
    """The writer service: tests start it in-process on port 0; `python -m k2.services.writer` serves it until
    SIGTERM."""

    gc_thresholds = GC_THRESHOLDS

    def __init__(
        self, settings: WriterSettings, kafka: KafkaSettings, iceberg: IcebergSettings, auth: AuthSettings
    ):
        super().__init__(metrics.SERVICE, settings, auth)
        self.settings = settings
        self.kafka = kafka
        self.iceberg = iceberg
        self.grpc.add(writer_pb2_grpc.add_WriterServiceServicer_to_server, WriterServicer(self), SERVICE_NAME)
        self.loop: WriterLoop
        self.maintenance: dict[RecordKind, TableMaintenance]
        self.scheduler: MaintenanceScheduler
        self.status: StatusReader
        self.monitor: Monitor
        self.stopping = False

    async def prepare(self) -> None:
        await asyncio.to_thread(self._open_tables)
        event_loop = asyncio.get_running_loop()

        def on_kafka(up: bool) -> None:
            asyncio.run_coroutine_threadsafe(self.grpc.set_serving(up), event_loop)

        self.monitor = Monitor(self.status, self.settings, on_kafka)

    def _open_tables(self) -> None:
        """Topics, tables and the catalogs of the consume loop, maintenance and status (one each): blocking."""
        settings, kafka, iceberg = self.settings, self.kafka, self.iceberg
        if settings.provision_topics:
            try:
                provision_topics(kafka, timeout=10.0)
            except KafkaException as error:  # Kafka down: serve NOT_SERVING and consume once it is back
                log.warning("could not provision the topics: %s", error)
        catalog = load_catalog(iceberg)
        tables = {kind: open_table(catalog, iceberg, settings, kind) for kind in KINDS}
        self.loop = WriterLoop(settings, kafka, tables)
        maintenance_catalog = load_catalog(iceberg)
        self.maintenance = {
            kind: TableMaintenance(
                maintenance_catalog.load_table(table_identifier(iceberg, kind)),
                settings,
                self.loop.serialized,
            )
            for kind in KINDS
        }
        self.scheduler = MaintenanceScheduler(self.maintenance, settings)
        status_catalog = load_catalog(iceberg)
        self.status = StatusReader(
            kafka,
            settings,
            {
                topic_name(kafka, TOPIC_FOR[kind]): status_catalog.load_table(table_identifier(iceberg, kind))
                for kind in KINDS
            },
        )

    async def start_work(self) -> None:
        """Consuming, maintenance, and health that follows Kafka (the monitor)."""
        self.loop.start()
        self.scheduler.start()
        self.monitor.start()

    async def close(self) -> None:
        """Final commit of what is buffered, then every thread stops."""
        self.stopping = True
        await asyncio.to_thread(self.monitor.stop)
        await asyncio.to_thread(self.scheduler.stop)
        await asyncio.to_thread(self.loop.stop)
        await asyncio.to_thread(self.status.close)

    def kind_of(self, table: str) -> RecordKind | None:
        return next((kind for kind in KINDS if table_identifier(self.iceberg, kind) == table), None)


def _day(field: str, timestamp: Timestamp) -> date:
    try:
        return (EPOCH + timedelta(seconds=timestamp.seconds)).date()
    except OverflowError:
        raise FieldError(field, f"outside years 1-9999: {timestamp.seconds} s since 1970") from None


class WriterServicer(writer_pb2_grpc.WriterServiceServicer):
    def __init__(self, app: WriterApp):
        self.app = app

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        reader = self.app.status
        try:
            partitions = await asyncio.to_thread(reader.partitions)
        except KafkaException as error:
            log.warning("status: Kafka unreachable: %s", error)
            partitions = []
        tables = await asyncio.to_thread(reader.table_states)
        response = pb.GetStatusResponse(dead_lettered=self.app.loop.dead_letters.acknowledged)
        for p in partitions:
            response.partitions.add(
                topic=p.topic,
                partition=p.partition,
                committed_offset=p.committed_offset,
                high_watermark=p.high_watermark,
                lag=p.lag,
            )
        for t in tables:
            status = response.tables.add(
                table=t.table,
                snapshot_id=t.snapshot_id,
                rows=t.rows,
                files=t.files,
                freshness_seconds=t.freshness_seconds or 0.0,
            )
            if t.newest_event_time is not None:
                set_timestamp(status.newest_event_time, t.newest_event_time)
        last = self.app.loop.last_commit
        if last is not None:
            set_timestamp(response.last_commit_time, datetime.fromtimestamp(last.time, UTC))
            response.last_commit_rows = last.rows
            response.last_commit_bytes = last.bytes
        return response

    async def Flush(self, request: pb.FlushRequest, context: grpc.aio.ServicerContext) -> pb.FlushResponse:
        if self.app.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the writer is shutting down")
        try:
            results = await asyncio.wrap_future(self.app.loop.flush())
        except Exception as error:  # any commit failure is the caller's UNAVAILABLE
            log.exception(
                "flush failed"
            )  # the details (which may name the warehouse's paths) stay in the log
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"flush failed ({type(error).__name__}); the writer logged why; retry",
            )
        return pb.FlushResponse(
            commits=[pb.TableCommit(table=r.table, snapshot_id=r.snapshot_id, rows=r.rows) for r in results]  # type: ignore[attr-defined]
        )

    async def Compact(
        self, request: pb.CompactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompactResponse]:
        kind = self.app.kind_of(request.table)
        if kind is None:
            known = ", ".join(table_identifier(self.app.iceberg, k) for k in KINDS)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"unknown table {request.table!r}; one of {known}"
            )
            return
        try:
            start = _day("start", request.start) if request.HasField("start") else None
            end = _day("end", request.end) if request.HasField("end") else None
        except FieldError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if start is not None and end is not None and start >= end:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "start must be before end")
        event_loop = asyncio.get_running_loop()
        events: asyncio.Queue[CompactionProgress | CompactionResult | Exception] = asyncio.Queue()

        def report(event: CompactionProgress | CompactionResult | Exception) -> None:
            event_loop.call_soon_threadsafe(events.put_nowait, event)

        def compact() -> None:
            maintenance = self.app.maintenance[kind]
            try:
                result = maintenance.compact(start, end, request.target_file_size_bytes, on_progress=report)
                maintenance.expire()  # on request too: snapshots past the retention go, with their files
                report(result)
            except Exception as error:
                log.exception("compaction of %s failed", request.table)
                report(error)

        running = event_loop.run_in_executor(None, compact)
        while True:
            event = await events.get()
            if isinstance(event, CompactionProgress):
                yield pb.CompactResponse(
                    progress=pb.CompactProgress(
                        partition=event.partition,
                        partitions_done=event.partitions_done,
                        partitions_total=event.partitions_total,
                    )
                )
            elif isinstance(event, CompactionResult):
                yield pb.CompactResponse(
                    result=pb.CompactResult(
                        files_before=event.files_before,
                        files_after=event.files_after,
                        snapshot_id=event.snapshot_id,
                    )
                )
                break
            else:
                await running
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"compaction failed ({type(event).__name__}); the writer logged why",
                )
        await running
