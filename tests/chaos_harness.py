"""The chaos suite's platform (no tests here; tests/test_chaos.py runs it): a 3-broker KRaft cluster started by
scripts/kafka.sh, the three services as real processes, a publisher and live subscribers using the SDK, the
faults, and the checks after each round. Every random choice comes from one seeded random.Random.

- The publisher sends batches of trades with message ids it sets itself and a sequence per symbol. A batch the
  SDK could not get acknowledged within its retry budget is sent again, same trades, same batch id (the SDK
  names a batch by its message ids), until it is; so at the end of a round every trade sent is acknowledged.
- Subscribers stream every symbol, one from the start of the run (history first), one from now; they resume
  by token after the query service goes away, for as long as it takes.
- After each round (publishing paused): every acknowledged trade is in Iceberg exactly once (count and
  message ids), every subscriber has seen every one exactly once and, per symbol, in the order published,
  within a bound (nothing is stuck).
"""

import os
import platform
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from conftest import ROOT
from service_processes import ServiceProcess, platform_env, restartable_port

from k2.clients import ClientSettings, K2Client, K2Error, Reconnect, Trade
from k2.core import avro
from k2.core.config import IcebergSettings, KafkaSettings
from k2.core.iceberg import load_catalog, table_identifier
from k2.core.kafka import TOPICS, TRADES, client_config, provision_topics, topic_name
from k2.core.records import TRADE

FAULTS = ("broker_leader_kill", "broker_pause", "writer_kill", "ingest_kill", "query_kill")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
BROKERS = 3
# Kafka's broker.session.timeout.ms: a broker silent this long is fenced and its partitions get new leaders.
BROKER_SESSION_TIMEOUT_SECONDS = 9.0
# How long the checks after a round wait for Iceberg and the subscribers to hold every trade: past it, something
# is stuck.
CATCH_UP_BOUND_SECONDS = 120.0
TOKEN = "chaos-write-token"


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


class KafkaCluster:
    """The project's 3-node KRaft cluster (scripts/kafka.sh) on free ports, in a run folder of its own."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        client_ports = [restartable_port() for _ in range(BROKERS)]
        controller_ports = [restartable_port() for _ in range(BROKERS)]
        environment = {name: value for name, value in os.environ.items() if name != "KAFKA_BOOTSTRAP_SERVERS"}
        self.env = environment | {
            "K2_RUN_DIR": str(run_dir),
            "K2_KAFKA_BROKERS": str(BROKERS),
            "K2_KAFKA_PORT": ",".join(map(str, client_ports)),
            "K2_KAFKA_CONTROLLER_PORT": ",".join(map(str, controller_ports)),
        }
        self.bootstrap = ",".join(f"127.0.0.1:{port}" for port in client_ports)
        self.admin: AdminClient | None = None

    def _script(self, command: str) -> float:
        started = time.monotonic()
        result = subprocess.run(
            [ROOT / "scripts" / "kafka.sh", command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"scripts/kafka.sh {command} failed:\n{result.stdout}\n{result.stderr}"
        return time.monotonic() - started

    def up(self) -> float:
        """Starts every node not running and waits until each serves; returns the seconds it took."""
        seconds = self._script("up")
        if self.admin is None:
            self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return seconds

    def down(self) -> None:
        self._script("down")

    def pid(self, node: int) -> int:
        return int((self.run_dir / "kafka" / f"node-{node}" / "kafka.pid").read_text())

    def signal(self, node: int, signal_number: int) -> None:
        os.kill(self.pid(node), signal_number)

    def kill(self, node: int) -> None:
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and "Z" not in _process_state(pid):
            assert time.monotonic() < deadline, f"broker {node} (pid {pid}) survived SIGKILL"
            time.sleep(0.05)

    def partitions(self, topic: str) -> dict[int, Any]:
        assert self.admin is not None
        return self.admin.list_topics(topic, timeout=10).topics[topic].partitions

    def leader(self, topic: str, partition: int) -> int:
        return int(self.partitions(topic)[partition].leader)

    def wait_fully_replicated(self, topics: list[str], timeout: float = 180.0) -> float:
        """Until every partition of the topics has every replica in sync; returns the seconds waited."""
        started = time.monotonic()
        while True:
            try:
                lagging = [
                    (topic, number)
                    for topic in topics
                    for number, p in self.partitions(topic).items()
                    if p.leader < 0 or len(p.isrs) < len(p.replicas)
                ]
            except Exception as error:  # noqa: BLE001 - metadata unavailable while the cluster recovers
                lagging = [(str(error), -1)]
            if not lagging:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout, f"partitions not fully replicated: {lagging}"
            time.sleep(0.5)


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


class Publisher(threading.Thread):
    """Publishes trades through the SDK while `running`, `batches_per_call` batches a call (pipelined on one
    stream, so a fault mid-call finds batches in flight); every trade it sends ends acknowledged."""

    def __init__(self, address: str, batch_size: int = 25, batches_per_call: int = 8, interval: float = 0.1):
        super().__init__(name="chaos-publisher", daemon=True)
        self.settings = ClientSettings(
            ingest_address=address,
            token=TOKEN,
            retry_attempts=8,  # type: ignore[arg-type]
            retry_max_backoff_seconds=2.0,
            ack_timeout_seconds=60.0,
        )
        self.batch_size = batch_size
        self.batches_per_call = batches_per_call
        self.interval = interval
        self.acknowledged: dict[str, tuple[str, int]] = {}  # message_id → (symbol, sequence), in order
        self.ack_times: list[float] = []
        self.resends = 0  # batches sent again after the SDK gave up on them
        self.duplicate_batches = 0  # batches ingest answered as already published
        self.errors: list[str] = []  # rejections: a trade of ours refused is a defect of the suite or of K2
        self.running = threading.Event()
        self.in_call = threading.Event()
        self.idle = threading.Event()
        self.stopping = threading.Event()
        self._sequences = dict.fromkeys(SYMBOLS, 0)
        self._symbol = 0

    def _fresh(self) -> list[Trade]:
        batch = []
        now = datetime.now(UTC)
        for _ in range(self.batch_size * self.batches_per_call):
            symbol = SYMBOLS[self._symbol % len(SYMBOLS)]
            self._symbol += 1
            self._sequences[symbol] += 1
            sequence = self._sequences[symbol]
            batch.append(
                Trade(
                    message_id=str(uuid.uuid4()),
                    trade_id=f"CHAOS-{symbol}-{sequence}",
                    symbol=symbol,
                    exchange="BINANCE",
                    asset_class="CRYPTO",
                    timestamp=now,
                    price=Decimal(f"{100 + sequence % 50}.{sequence % 997:03d}000000000001"),
                    quantity=Decimal(f"0.{sequence % 89 + 1:02d}"),
                    currency="USDT",
                    side="BUY" if sequence % 2 else "SELL",
                    source_sequence=sequence,
                )
            )
        return batch

    def run(self) -> None:
        with K2Client(self.settings) as k2:
            unacknowledged: list[Trade] = []
            while not self.stopping.is_set():
                if not unacknowledged:
                    if not self.running.is_set():
                        self.idle.set()
                        time.sleep(0.02)
                        continue
                    unacknowledged = self._fresh()
                self.in_call.set()
                try:
                    result = k2.publish_trades(unacknowledged, batch_size=self.batch_size)
                except K2Error as error:
                    log(f"publisher: {error}; sending the trades again")
                    self.resends += 1
                    time.sleep(0.5)
                    continue
                except Exception as error:  # noqa: BLE001 - an SDK defect: reported, and the suite goes on
                    log(f"publisher: {error!r}; sending the trades again")
                    self.errors.append(f"publish_trades raised {error!r}, not K2Error")
                    self.resends += 1
                    time.sleep(0.5)
                    continue
                finally:
                    self.in_call.clear()
                rejected = {rejection.index for rejection in result.rejections}
                self.errors += [f"{r.field}: {r.reason}" for r in result.rejections]
                for index, trade in enumerate(unacknowledged):
                    if index not in rejected:
                        assert trade.message_id is not None and trade.source_sequence is not None
                        self.acknowledged[trade.message_id] = (trade.symbol, trade.source_sequence)
                self.duplicate_batches += result.duplicates
                self.ack_times.append(time.monotonic())
                unacknowledged = [unacknowledged[index] for index in sorted(rejected)]
                time.sleep(self.interval)

    def resume(self) -> None:
        self.idle.clear()
        self.running.set()

    def pause(self, timeout: float = CATCH_UP_BOUND_SECONDS) -> None:
        """Stops sending new batches; returns once everything sent is acknowledged."""
        self.running.clear()
        assert self.idle.wait(timeout), "the publisher could not get its last batch acknowledged"

    def longest_stall(self, since: float) -> float:
        """The longest wait between acknowledgements after `since`."""
        times = [since] + [t for t in self.ack_times if t >= since]
        return max((later - earlier for earlier, later in pairwise(times)), default=0.0)


class Subscriber(threading.Thread):
    """A live subscription to every symbol; records what it receives and when it reconnects."""

    def __init__(self, name: str, address: str, start: datetime | None):
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.label = name
        self.settings = ClientSettings(
            query_address=address,
            token=TOKEN,  # type: ignore[arg-type]
            retry_max_backoff_seconds=1.0,
        )
        self.start_time = start
        self.received: list[tuple[str, str, int]] = []  # (message_id, symbol, sequence)
        self.reconnects: list[Reconnect] = []
        self.positioned = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with K2Client(self.settings) as k2:
                for batch in k2.subscribe_trades(
                    list(SYMBOLS), start=self.start_time, on_reconnect=self.reconnects.append
                ):
                    self.positioned.set()
                    self.received += [
                        (t.message_id or "", t.symbol, t.source_sequence or 0) for t in batch.records
                    ]
                    if self.stopping.is_set():
                        return
        except BaseException as error:  # noqa: BLE001 - reported by the checks
            self.error = error


@dataclass
class RoundResult:
    number: int
    fault: str
    target: str
    fault_at_seconds: float  # into the round's publishing
    down_seconds: float  # killed or stopped for this long
    restart_seconds: float  # from restart until it served again
    longest_publish_stall_seconds: float
    published: int  # trades acknowledged in the round
    published_total: int
    iceberg_rows: int
    iceberg_catch_up_seconds: float  # from the end of publishing until Iceberg held every trade
    subscriber_catch_up_seconds: float  # ... until every subscriber had every trade
    subscriber_reconnects: int
    publisher_resends: int
    resent_items_not_rewritten: int  # re-sent items ingest did not write again (a killed process had)
    replicas_in_sync_seconds: float  # after the round, until every partition had its 3 replicas in sync
    failures: list[str] = field(default_factory=list)


class ChaosPlatform:
    def __init__(self, work_dir: Path, seed: int):
        self.work_dir = work_dir
        self.rng = random.Random(seed)
        self.seed = seed
        self.cluster = KafkaCluster(work_dir / "kafka-run")
        self.kafka = KafkaSettings(
            bootstrap_servers=self.cluster.bootstrap,
            topic_prefix=f"chaos-{uuid.uuid4().hex[:8]}.",
            replication_factor=BROKERS,
            min_insync_replicas=2,
        )
        self.iceberg = IcebergSettings(
            catalog_uri=f"sqlite:///{work_dir / 'catalog.db'}", warehouse=f"file://{work_dir / 'warehouse'}"
        )
        self.topics = [topic_name(self.kafka, topic) for topic in TOPICS]
        token_file = work_dir / "token"
        token_file.write_text(TOKEN + "\n")
        env = platform_env(self.kafka, self.iceberg) | {
            "K2_KAFKA_REPLICATION_FACTOR": str(BROKERS),
            "K2_KAFKA_MIN_INSYNC_REPLICAS": "2",
            "K2_AUTH_TOKEN_FILE": str(token_file),
            "K2_INGEST_PROVISION_TOPICS": "false",
            "K2_WRITER_PROVISION_TOPICS": "false",
            "K2_WRITER_SESSION_TIMEOUT_MS": "6000",
            "K2_WRITER_MONITOR_INTERVAL_SECONDS": "1",
            "K2_QUERY_HEARTBEAT_SECONDS": "0.5",
        }
        self.services = {
            name: ServiceProcess(name, env, work_dir / f"{name}.log")
            for name in ("ingest", "writer", "query")
        }
        self.publisher = Publisher(self.services["ingest"].address)
        self.subscribers: list[Subscriber] = []
        self.started = datetime.now(UTC)
        self.machine = machine()
        self.reported: set[str] = set()  # failures already reported by an earlier round
        self.startup_seconds: dict[str, float] = {}

    # ---- start and stop -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.startup_seconds["kafka_cluster"] = self.cluster.up()
        log(f"cluster serving on {self.cluster.bootstrap} in {self.startup_seconds['kafka_cluster']:.1f} s")
        provision_topics(self.kafka)
        self.cluster.wait_fully_replicated(self.topics)
        for service in self.services.values():
            service.start()
        for name, service in self.services.items():
            self.startup_seconds[name] = service.wait_serving()
        log("services serving: " + ", ".join(f"{n} {s:.1f} s" for n, s in self.startup_seconds.items()))
        query = self.services["query"].address
        self.subscribers = [
            Subscriber("from-start", query, self.started),
            Subscriber("from-now", query, None),
        ]
        for subscriber in self.subscribers:
            subscriber.start()
        for subscriber in self.subscribers:
            assert subscriber.positioned.wait(120), (
                f"subscriber {subscriber.label} never started: {subscriber.error}"
            )
        self.publisher.start()

    def stop(self) -> None:
        self.publisher.stopping.set()
        for subscriber in self.subscribers:
            subscriber.stopping.set()
        for service in self.services.values():
            service.stop()
        self.cluster.down()

    # ---- faults -------------------------------------------------------------------------------------------

    def _random_partition_leader(self) -> tuple[int, int]:
        topic = topic_name(self.kafka, TRADES)
        partition = self.rng.randrange(TRADES.partitions)
        return partition, self.cluster.leader(topic, partition)

    def _restart_service(self, name: str) -> float:
        service = self.services[name]
        service.start()
        return service.wait_serving()

    def inject(self, fault: str) -> tuple[str, float, float]:
        """Applies the fault and undoes it (restart, SIGCONT); returns (target, seconds down, seconds until
        the target served again)."""
        if fault == "broker_leader_kill":
            partition, node = self._random_partition_leader()
            self.cluster.kill(node)
            down = self.rng.uniform(1.0, 5.0)
            time.sleep(down)
            return f"broker {node} (leader of trades partition {partition})", down, self.cluster.up()
        if fault == "broker_pause":
            partition, node = self._random_partition_leader()
            self.cluster.signal(node, signal.SIGSTOP)
            down = BROKER_SESSION_TIMEOUT_SECONDS + self.rng.uniform(1.0, 4.0)
            time.sleep(down)
            self.cluster.signal(node, signal.SIGCONT)
            return f"broker {node} (leader of trades partition {partition})", down, 0.0
        name = fault.removesuffix("_kill")
        if name == "ingest":  # mid-publish: while a call has batches in flight
            self.publisher.in_call.wait(10)
            time.sleep(self.rng.uniform(0.0, 0.05))
        self.services[name].kill()
        down = self.rng.uniform(0.0, 2.0)
        time.sleep(down)
        return name, down, self._restart_service(name)

    # ---- checks -------------------------------------------------------------------------------------------

    def iceberg_message_ids(self) -> list[str]:
        catalog = load_catalog(self.iceberg)
        identifier = table_identifier(self.iceberg, TRADE)
        if not catalog.table_exists(identifier):
            return []
        table = catalog.load_table(identifier)
        column = table.scan(selected_fields=("message_id",)).to_arrow()["message_id"]
        return [str(value) for value in pc.cast(column, "string").to_pylist()]

    def check(self, failures: list[str]) -> tuple[float, int, float]:
        """The round's checks; returns (seconds until Iceberg held everything, its rows, seconds until every
        subscriber had), both counted from the end of publishing."""
        wanted = set(self.publisher.acknowledged)
        rows: list[str] = []
        waiting = {
            "Iceberg": lambda: len(rows) >= len(wanted),
            "subscribers": lambda: all(
                s.error is not None or len(s.received) >= len(wanted) for s in self.subscribers
            ),
        }
        caught_up: dict[str, float] = {}
        started = time.monotonic()
        while waiting:
            rows = self.iceberg_message_ids() if "Iceberg" in waiting else rows
            for label, done in list(waiting.items()):
                if done():
                    caught_up[label] = time.monotonic() - started
                    del waiting[label]
            if time.monotonic() - started > CATCH_UP_BOUND_SECONDS:
                failures += [
                    f"{label}: not caught up within {CATCH_UP_BOUND_SECONDS:.0f} s" for label in waiting
                ]
                break
            if waiting:
                time.sleep(0.1)
        if len(rows) != len(set(rows)):
            failures.append(f"Iceberg: {len(rows) - len(set(rows))} duplicate message ids")
        if set(rows) != wanted:
            failures.append(
                f"Iceberg: {len(wanted - set(rows))} acknowledged trades missing, "
                f"{len(set(rows) - wanted)} never acknowledged"
            )
        for subscriber in self.subscribers:
            failures += [
                f"subscriber {subscriber.label}: {problem}" for problem in self._check_subscriber(subscriber)
            ]
        bound = CATCH_UP_BOUND_SECONDS
        return caught_up.get("Iceberg", bound), len(rows), caught_up.get("subscribers", bound)

    def _check_subscriber(self, subscriber: Subscriber) -> Iterator[str]:
        if subscriber.error is not None:
            yield f"ended: {subscriber.error!r}"
        received = list(subscriber.received)
        ids = [message_id for message_id, _, _ in received]
        wanted = self.publisher.acknowledged
        if len(ids) != len(set(ids)):
            yield f"{len(ids) - len(set(ids))} trades received more than once"
        if missing := set(wanted) - set(ids):
            yield f"{len(missing)} acknowledged trades never received"
        if unknown := set(ids) - set(wanted):
            yield f"{len(unknown)} trades received that were never acknowledged"
        for symbol in SYMBOLS:
            sequences = [sequence for _, s, sequence in received if s == symbol]
            published = sorted(sequence for s, sequence in wanted.values() if s == symbol)
            if sequences != published:
                first = next(
                    (i for i, (a, b) in enumerate(zip(sequences, published, strict=False)) if a != b),
                    min(len(sequences), len(published)),
                )
                yield f"{symbol}: not in the published order from position {first}"

    def kafka_duplicates(self) -> int:
        """Trades whose message_id the trades topic holds more than once (the writer drops such copies; a
        subscriber would see them)."""
        topic = topic_name(self.kafka, TRADES)
        consumer = Consumer(
            client_config(self.kafka)
            | {"group.id": f"chaos-audit-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        try:
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in self.cluster.partitions(topic)
            }
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            seen: set[str] = set()
            duplicates = 0
            remaining = {p for p, end in ends.items() if end > 0}
            deadline = time.monotonic() + 120
            while remaining and time.monotonic() < deadline:
                for message in consumer.consume(1000, 1.0):
                    value, partition, offset = message.value(), message.partition(), message.offset()
                    if message.error() or value is None or partition is None or offset is None:
                        continue
                    message_id = avro.decode(value)[1]["message_id"]
                    duplicates += message_id in seen
                    seen.add(message_id)
                    if offset + 1 >= ends[partition]:
                        remaining.discard(partition)
            return duplicates
        finally:
            consumer.close()

    # ---- rounds -------------------------------------------------------------------------------------------

    def run_round(self, number: int, fault: str) -> RoundResult:
        published_before = len(self.publisher.acknowledged)
        ingest_starts, not_rewritten_before = self.services["ingest"].starts, self._not_rewritten()
        resends_before = self.publisher.resends
        reconnects_before = sum(len(s.reconnects) for s in self.subscribers)
        self.publisher.resume()
        started = time.monotonic()
        fault_at = self.rng.uniform(0.5, 3.0)
        time.sleep(fault_at)
        target, down, restart = self.inject(fault)
        log(
            f"round {number}: {fault} of {target} at {fault_at:.1f} s, down {down:.1f} s, back in {restart:.1f} s"
        )
        time.sleep(self.rng.uniform(1.0, 3.0))
        failures: list[str] = []
        try:
            self.publisher.pause()
        except AssertionError as error:
            failures.append(str(error))
        stall = self.publisher.longest_stall(started)
        iceberg_seconds, rows, subscriber_seconds = self.check(failures)
        in_sync = self.cluster.wait_fully_replicated(self.topics)
        not_rewritten = self._not_rewritten() - (
            0 if self.services["ingest"].starts > ingest_starts else not_rewritten_before
        )
        # The checks cover everything published so far: a problem is reported by the round that found it.
        failures = [failure for failure in failures + self.publisher.errors if failure not in self.reported]
        self.reported.update(failures)
        result = RoundResult(
            number=number,
            fault=fault,
            target=target,
            fault_at_seconds=round(fault_at, 2),
            down_seconds=round(down, 2),
            restart_seconds=round(restart, 2),
            longest_publish_stall_seconds=round(stall, 2),
            published=len(self.publisher.acknowledged) - published_before,
            published_total=len(self.publisher.acknowledged),
            iceberg_rows=rows,
            iceberg_catch_up_seconds=round(iceberg_seconds, 2),
            subscriber_catch_up_seconds=round(subscriber_seconds, 2),
            subscriber_reconnects=sum(len(s.reconnects) for s in self.subscribers) - reconnects_before,
            publisher_resends=self.publisher.resends - resends_before,
            resent_items_not_rewritten=int(not_rewritten),
            replicas_in_sync_seconds=round(in_sync, 2),
            failures=failures,
        )
        log(
            f"round {number}: {result.published} published ({result.published_total} in all), Iceberg in "
            f"{result.iceberg_catch_up_seconds} s, subscribers in {result.subscriber_catch_up_seconds} s, "
            f"longest stall {result.longest_publish_stall_seconds} s"
            + (f"; FAILED: {failures}" if failures else "")
        )
        return result

    def _not_rewritten(self) -> float:
        """Re-sent items the running ingest process answered without writing them again."""
        return self.services["ingest"].metric("k2_ingest_publish_items_written_before_total")

    def summary(self, rounds: list[RoundResult], kafka_duplicates: int) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "started": self.started.isoformat(timespec="seconds"),
            "machine": self.machine,
            "startup_seconds": {name: round(seconds, 2) for name, seconds in self.startup_seconds.items()},
            "rounds": [asdict(result) for result in rounds],
            "published": len(self.publisher.acknowledged),
            "duplicate_batches": self.publisher.duplicate_batches,
            "kafka_duplicate_messages": kafka_duplicates,
            "subscribers": {
                s.label: {"received": len(s.received), "reconnects": len(s.reconnects)}
                for s in self.subscribers
            },
        }


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


@contextmanager
def chaos_platform(work_dir: Path, seed: int) -> Iterator[ChaosPlatform]:
    chaos = ChaosPlatform(work_dir, seed)
    try:
        chaos.start()
        yield chaos
    finally:
        chaos.stop()
