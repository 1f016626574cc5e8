"""What the writer reports: per partition the offset its table records, the high watermark and the lag; per
table its snapshot, size and freshness; whether Kafka answers. A monitor thread refreshes the metrics and the
gRPC health from the same readings."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pyiceberg.table import Table

from k2.core.config import KafkaSettings
from k2.core.iceberg import committed_offsets
from k2.core.kafka import consumer_config

from . import metrics
from .config import WriterSettings
from .tables import MAX_EVENT_TIME, MAX_INGESTION_TIME, summary_micros

log = logging.getLogger(__name__)
KAFKA_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    committed_offset: int  # -1: the table records none
    high_watermark: int
    lag: int


@dataclass(frozen=True)
class TableState:
    table: str
    snapshot_id: int
    rows: int
    files: int
    newest_event_time: datetime | None
    freshness_seconds: float | None


class StatusReader:
    """Reads status from Kafka (a consumer outside the group) and from tables a catalog of its own loads."""

    def __init__(self, kafka: KafkaSettings, settings: WriterSettings, tables: dict[str, Table]):
        self.tables = tables  # by topic
        self._probe = Consumer(consumer_config(kafka, f"{settings.group_id}-status"))
        self._lock = threading.Lock()  # one reading at a time (the monitor and GetStatus)

    def kafka_reachable(self) -> bool:
        try:
            with self._lock:
                self._probe.list_topics(timeout=KAFKA_TIMEOUT_SECONDS)
            return True
        except KafkaException:
            return False

    def partitions(self) -> list[PartitionState]:
        with self._lock:
            metadata = self._probe.list_topics(timeout=KAFKA_TIMEOUT_SECONDS)
            states = []
            for topic, table in self.tables.items():
                table.refresh()
                recorded = committed_offsets(table).get(topic, {})
                topic_metadata = metadata.topics.get(topic)
                if topic_metadata is None or topic_metadata.error is not None:
                    continue
                for partition in sorted(topic_metadata.partitions):
                    low, high = self._probe.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=KAFKA_TIMEOUT_SECONDS, cached=False
                    )
                    committed = recorded.get(partition)
                    lag = high - committed if committed is not None else high - low
                    states.append(
                        PartitionState(
                            topic, partition, -1 if committed is None else committed, high, max(0, lag)
                        )
                    )
            return states

    def table_states(self) -> list[TableState]:
        with self._lock:
            return self._table_states()

    def _table_states(self) -> list[TableState]:
        states = []
        now = time.time()
        for table in self.tables.values():
            table.refresh()
            snapshot = table.current_snapshot()
            summary = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
            newest_event = summary_micros(table, MAX_EVENT_TIME)
            newest_ingestion = summary_micros(table, MAX_INGESTION_TIME)
            states.append(
                TableState(
                    ".".join(table.name()),
                    snapshot.snapshot_id if snapshot else 0,
                    int(summary.get("total-records", 0)),
                    int(summary.get("total-data-files", 0)),
                    datetime.fromtimestamp(newest_event / 1e6, UTC) if newest_event is not None else None,
                    max(0.0, now - newest_ingestion / 1e6) if newest_ingestion is not None else None,
                )
            )
        return states

    def close(self) -> None:
        with self._lock:
            self._probe.close()


class Monitor:
    """Every interval: whether Kafka answers (reported to `on_kafka`), consumer lag and freshness metrics."""

    def __init__(self, reader: StatusReader, settings: WriterSettings, on_kafka: Callable[[bool], None]):
        self.reader = reader
        self.interval = settings.monitor_interval_seconds
        self.on_kafka = on_kafka
        self.kafka_up: bool | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            up = self.reader.kafka_reachable()
            metrics.KAFKA_UP.labels(metrics.SERVICE).set(1 if up else 0)
            if up != self.kafka_up:
                log.log(
                    logging.INFO if up else logging.WARNING, "Kafka %s", "reachable" if up else "unreachable"
                )
                self.kafka_up = up
                self.on_kafka(up)
            try:
                if up:
                    for state in self.reader.partitions():
                        labels = (metrics.SERVICE, state.topic, str(state.partition))
                        metrics.CONSUMER_LAG.labels(*labels).set(state.lag)
                        metrics.COMMITTED_OFFSET.labels(*labels).set(state.committed_offset)
                for table in self.reader.table_states():
                    if table.freshness_seconds is not None:
                        metrics.FRESHNESS.labels(metrics.SERVICE, table.table).set(table.freshness_seconds)
            except Exception:
                log.exception("monitor: reading status failed")
            if self._stopping.wait(self.interval):
                return
