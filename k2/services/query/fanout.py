"""The live fan-out: ONE Kafka consumer per process reads the trades and quotes topics and delivers every record
to every matching subscriber.

- A consumer thread waits for a message, takes what else has arrived (up to `subscription_batch` messages, waiting
  `flush_ms` more for them: 0 by default, so a record is never held back), splits them by topic into batches
  and decodes each once into serialized messages (k2._native: no per-message Python but for records handed to
  the plain path, see k2.services.query.convert), and hands the batches to the event loop. At most a few batches
  wait for the loop, so a busy loop slows the consumer rather than growing memory. Messages of a kind nobody
  subscribes to are not decoded at all (if a first subscriber arrives meanwhile, the loop decodes the batch it
  joins at).
- On the loop, subscribers with the same filter form a group: a group's response (matching records, selected and
  joined natively + resume token + server time) is built once per batch and the same bytes object is queued for
  each of its subscribers.
- Each subscriber has a bounded buffer (bytes waiting to be sent). Queuing never waits: a subscriber whose buffer
  is full is removed and ended with RESOURCE_EXHAUSTED, so a slow reader never slows the others.
- A batch whose records would make a response larger than `subscription_response_bytes` is delivered in parts
  (LiveBatch.split), each with the position after it, so no response outgrows that bound.
- Subscribers are isolated from one another: an error while serving one subscriber (or one group: its selection)
  ends that subscriber (or group) with INTERNAL, is logged and counted, and the others are served as if it had
  not happened.
- `positions` is the next offset per partition up to which every record has been delivered (queued) to the live
  subscribers: the hand-over point for a subscriber that joins (its own replay must cover what lies before).
- The fan-out also keeps the latest trade and quote per symbol for GetLatest: the last message read for the
  symbol (the topics are keyed by symbol, so that is the symbol's Kafka order), kept undecoded. At start it reads
  from the offsets the current Iceberg snapshot recorded (at most `latest_backfill_messages` back), so that state
  covers the tail not yet in Iceberg.
- Tracing: when a fan-out batch reaches subscribers, each distinct sampled trace context among its messages gets
  one CONSUMER span "deliver <topic>", a child of the producer's span (so a traced trade's trace runs on from
  ingest's send to its delivery); unsampled messages cost one header scan.
"""

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import grpc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from opentelemetry import trace

from k2._native import LiveBatch, read_messages
from k2.core.config import KafkaSettings
from k2.core.framing import Framing
from k2.core.kafka import QUOTES, TRADES, consumer_config, topic_name
from k2.core.records import QUOTE, TRADE, RecordKind
from k2.core.retry import until_stopped
from k2.core.telemetry import messaging_span, sampled_message_traces
from k2.services.query import metrics
from k2.services.query.config import QuerySettings
from k2.services.query.convert import MarketMessage, decode_batch, decode_message, response_bytes
from k2.services.query.history import History
from k2.services.query.kafka_tail import KAFKA_LOG, KafkaAdmin
from k2.services.query.selection import Selection
from k2.services.query.tokens import StreamPosition, TokenKeys

log = logging.getLogger(__name__)
Offsets = dict[int, int]
KINDS: tuple[RecordKind, ...] = (TRADE, QUOTE)
MAX_WAITING_BATCHES = 4
PROBE_SECONDS = 1.0
IDLE_POLL_SECONDS = 0.1  # the consumer thread's wait for a first message (then it probes and checks stopping)
tracer = trace.get_tracer(__name__)


class Subscriber:
    """One live stream's bounded queue of response bytes, filled by the fan-out and drained by its handler."""

    __slots__ = (
        "buffered",
        "ending",
        "final_position",
        "kind",
        "limit",
        "queue",
        "selection",
        "skip_below",
        "wakeup",
    )

    def __init__(self, kind: RecordKind, selection: Selection, limit: int, skip_below: Offsets):
        self.kind = kind
        self.selection = selection
        self.queue: deque[tuple[bytes, int, int]] = deque()  # (response bytes, records, newest timestamp)
        self.buffered = 0
        self.limit = limit
        self.wakeup = asyncio.Event()
        self.ending: tuple[grpc.StatusCode, str] | None = None
        self.final_position: Offsets | None = None  # the position when it was ended with its queue kept
        # Partitions where this subscriber starts ahead of the fan-out: records below these offsets are not its.
        self.skip_below = skip_below

    def offer(self, payload: bytes, records: int, newest: int) -> bool:
        if self.buffered + len(payload) > self.limit:
            return False
        self.queue.append((payload, records, newest))
        self.buffered += len(payload)
        self.wakeup.set()
        return True

    def take(self) -> tuple[bytes, int, int] | None:
        if not self.queue:
            return None
        entry = self.queue.popleft()
        self.buffered -= len(entry[0])
        return entry

    def end(self, code: grpc.StatusCode, reason: str, *, discard: bool) -> None:
        self.ending = (code, reason)
        if discard:
            self.queue.clear()
            self.buffered = 0
        self.wakeup.set()


class _Group:
    __slots__ = ("selection", "subscribers")

    def __init__(self, selection: Selection):
        self.selection = selection
        self.subscribers: set[Subscriber] = set()


class FanOut:
    def __init__(
        self,
        kafka: KafkaSettings,
        settings: QuerySettings,
        history: History,
        on_health: Callable[[bool], Awaitable[None]],
    ):
        self.framing = Framing.connect(kafka)
        # shared by the subscriptions and queries of this service
        self.token_keys = TokenKeys(settings.token_keys, settings.token_key_file)
        self._kafka = kafka
        self._settings = settings
        self._history = history
        self._on_health = on_health
        self._admin = KafkaAdmin(kafka, min(settings.kafka_timeout_seconds, 2.0))
        self.topics: dict[RecordKind, str] = {
            TRADE: topic_name(kafka, TRADES),
            QUOTE: topic_name(kafka, QUOTES),
        }
        self._kinds = {topic: kind for kind, topic in self.topics.items()}
        self.positions: dict[RecordKind, Offsets] = {kind: {} for kind in KINDS}
        # symbol (the message key) → the last message value read; written by the consumer thread
        self._latest: dict[RecordKind, dict[bytes, bytes]] = {kind: {} for kind in KINDS}
        # whether any subscriber wants the kind; read by the consumer thread to skip decoding
        self._wanted: dict[RecordKind, bool] = {kind: False for kind in KINDS}
        self.ready = asyncio.Event()
        self.healthy = False
        self._groups: dict[RecordKind, dict[Selection, _Group]] = {kind: {} for kind in KINDS}
        self._by_symbol: dict[RecordKind, dict[str, set[_Group]]] = {kind: {} for kind in KINDS}
        self._every_symbol: dict[RecordKind, set[_Group]] = {kind: set() for kind in KINDS}
        self._ahead: dict[RecordKind, set[Subscriber]] = {kind: set() for kind in KINDS}
        self._waiting = threading.Semaphore(MAX_WAITING_BATCHES)
        self._stopping = threading.Event()
        self._consumed: dict[RecordKind, Offsets] | None = (
            None  # the next offset of each partition, once known
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._reported_health: bool | None = None  # consumer thread side

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="query-fanout", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self.end_all(grpc.StatusCode.UNAVAILABLE, "query service stopped")

    def end_all(self, code: grpc.StatusCode, reason: str) -> None:
        """Ends every subscription (each is sent what it has queued, then the status)."""
        for kind in KINDS:
            subscribers = [s for g in self._groups[kind].values() for s in g.subscribers] + list(
                self._ahead[kind]
            )
            for subscriber in subscribers:
                subscriber.final_position = self.position_of(subscriber)
                self.unregister(subscriber)
                subscriber.end(code, reason, discard=False)

    # ---- subscribers (event loop) ----------------------------------------------------------------------------

    def register(
        self, kind: RecordKind, selection: Selection, offsets: Offsets
    ) -> tuple[Subscriber, Offsets]:
        """A new live subscriber whose stream continues from `offsets`. Returns it and the fan-out position it
        joins at: records before that position (and from `offsets`) are the caller's to replay."""
        live = self.positions[kind]
        skip_below = {p: offset for p, offset in offsets.items() if offset > live.get(p, 0)}
        subscriber = Subscriber(kind, selection, self._settings.subscriber_buffer_bytes, skip_below)
        if skip_below:
            self._ahead[kind].add(subscriber)
        else:
            self._join_group(subscriber)
        self._wanted[kind] = True
        return subscriber, dict(live)

    def _join_group(self, subscriber: Subscriber) -> None:
        kind, selection = subscriber.kind, subscriber.selection
        group = self._groups[kind].get(selection)
        if group is None:
            group = self._groups[kind][selection] = _Group(selection)
            if selection.symbols is None:
                self._every_symbol[kind].add(group)
            else:
                for symbol in selection.symbols:
                    self._by_symbol[kind].setdefault(symbol, set()).add(group)
        group.subscribers.add(subscriber)

    def unregister(self, subscriber: Subscriber) -> None:
        kind, selection = subscriber.kind, subscriber.selection
        if subscriber in self._ahead[kind]:
            self._ahead[kind].discard(subscriber)
            self._wanted[kind] = bool(self._groups[kind] or self._ahead[kind])
            return
        group = self._groups[kind].get(selection)
        if group is not None and subscriber in group.subscribers:
            group.subscribers.discard(subscriber)
            if not group.subscribers:
                del self._groups[kind][selection]
                if selection.symbols is None:
                    self._every_symbol[kind].discard(group)
                else:
                    for symbol in selection.symbols:
                        groups = self._by_symbol[kind][symbol]
                        groups.discard(group)
                        if not groups:
                            del self._by_symbol[kind][symbol]
        self._wanted[kind] = bool(self._groups[kind] or self._ahead[kind])

    def latest(self, kind: RecordKind, symbol: str) -> MarketMessage | None:
        """The last valid message the fan-out read for the symbol, if any."""
        value = self._latest[kind].get(symbol.encode())
        return None if value is None else decode_message(kind, value, self.framing)

    def position_of(self, subscriber: Subscriber) -> Offsets:
        """The subscriber's stream position once its queue is empty."""
        if subscriber.final_position is not None:
            return subscriber.final_position
        live = self.positions[subscriber.kind]
        return {p: max(offset, subscriber.skip_below.get(p, 0)) for p, offset in live.items()} | {
            p: offset for p, offset in subscriber.skip_below.items() if p not in live
        }

    def _failed(self, subscribers: list[Subscriber]) -> None:
        """Ends subscribers that could not be served (the exception being handled): only them."""
        log.exception(
            "fan-out: delivering to %d %s subscriber(s) failed; ending them",
            len(subscribers),
            subscribers[0].kind,
        )
        for subscriber in subscribers:
            self.unregister(subscriber)
            subscriber.end(
                grpc.StatusCode.INTERNAL,
                "the server failed delivering to this subscription and ended it (the error is "
                "logged); resubscribe with the last resume_token received to continue",
                discard=True,
            )
            metrics.FAILED_SUBSCRIBERS.labels(metrics.SERVICE, subscriber.kind).inc()

    def _too_slow(self, subscriber: Subscriber) -> None:
        self.unregister(subscriber)
        subscriber.end(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"subscriber too slow: more than {subscriber.limit} bytes of {subscriber.kind}s were "
            "waiting to be sent; resubscribe with the last resume_token received to continue",
            discard=True,
        )
        metrics.SLOW_SUBSCRIBER_DROPS.labels(metrics.SERVICE, subscriber.kind).inc()

    # ---- routing (event loop) --------------------------------------------------------------------------------

    def _route(self, batches: dict[RecordKind, LiveBatch], positions: dict[RecordKind, Offsets]) -> None:
        try:
            for kind in KINDS:
                position = self.positions[kind]
                batch = batches[kind]
                if not batch.decoded and self._wanted[kind]:  # a first subscriber arrived after the poll
                    self._decode(kind, batch)
                for part in batch.split(self._settings.subscription_response_bytes):
                    position.update(part.positions)
                    if part.records:
                        self._traced_deliver(kind, part, position)
                position.update(positions[kind])
                if self._ahead[kind]:
                    self._promote(kind, position)
        finally:
            self._waiting.release()

    def _traced_deliver(self, kind: RecordKind, batch: LiveBatch, position: Offsets) -> None:
        """_deliver within a "deliver" span per sampled trace context of the batch, which records how many
        subscribers got part of the batch."""
        headers = batch.headers
        traces = [] if headers is None else sampled_message_traces(headers)
        if not traces:
            self._deliver(kind, batch, position)
            return
        topic = self.topics[kind]
        spans = []
        for found in traces:
            partition, offset = batch.position(found.first)
            spans.append(
                messaging_span(
                    tracer,
                    f"deliver {topic}",
                    found,
                    operation="deliver",
                    topic=topic,
                    partition=partition,
                    offset=offset,
                )
            )
        subscribers = self._deliver(kind, batch, position)
        for span in spans:
            span.set_attribute("k2.subscribers", subscribers)
            span.end()

    def _deliver(self, kind: RecordKind, batch: LiveBatch, position: Offsets) -> int:
        """Queues the matching records for each subscriber; returns how many subscribers got some."""
        reached = 0
        groups = list(self._every_symbol[kind])
        by_symbol = self._by_symbol[kind]
        if by_symbol:
            groups += {group for symbol in batch.symbols() for group in by_symbol.get(symbol, ())}
        for group in groups:
            selection, subscribers = group.selection, list(group.subscribers)
            try:
                framed, count, newest = batch.select(
                    selection.symbols, selection.exchanges, selection.start, selection.end
                )
                if count:
                    self._send(kind, framed, count, newest, position, selection, subscribers)
                    reached += len(subscribers)
            except Exception:  # noqa: BLE001 - this group's alone: the others are served
                self._failed(subscribers)
        for subscriber in list(self._ahead[kind]):
            selection = subscriber.selection
            try:
                framed, count, newest = batch.select(
                    selection.symbols,
                    selection.exchanges,
                    selection.start,
                    selection.end,
                    subscriber.skip_below,
                )
                if count:
                    self._send(
                        kind, framed, count, newest, self.position_of(subscriber), selection, [subscriber]
                    )
                    reached += 1
            except Exception:  # noqa: BLE001 - this subscriber's alone
                self._failed([subscriber])
        return reached

    def _send(
        self,
        kind: RecordKind,
        framed: bytes,
        count: int,
        newest: int,
        position: Offsets,
        selection: Selection,
        subscribers: list[Subscriber],
    ) -> None:
        token = StreamPosition(kind, position, since=selection.start, mark=newest).encode(self.token_keys)
        payload = response_bytes(kind, framed, token, replay=False)
        for subscriber in subscribers:
            try:
                queued = subscriber.offer(payload, count, newest)
            except Exception:  # noqa: BLE001 - this subscriber's alone
                self._failed([subscriber])
                continue
            if not queued:
                self._too_slow(subscriber)

    def _promote(self, kind: RecordKind, position: Offsets) -> None:
        for subscriber in list(self._ahead[kind]):
            subscriber.skip_below = {p: o for p, o in subscriber.skip_below.items() if position.get(p, 0) < o}
            if not subscriber.skip_below:
                self._ahead[kind].discard(subscriber)
                self._join_group(subscriber)

    def _decode(self, kind: RecordKind, batch: LiveBatch) -> None:
        refused = decode_batch(kind, batch, self.framing)
        if refused:
            metrics.INVALID_MESSAGES.labels(metrics.SERVICE, self.topics[kind]).inc(refused)

    def _set_health(self, healthy: bool) -> None:
        self.healthy = healthy
        metrics.KAFKA_UP.labels(metrics.SERVICE).set(1 if healthy else 0)
        task = asyncio.ensure_future(self._on_health(healthy))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    def _started(self, positions: dict[RecordKind, Offsets]) -> None:
        for kind in KINDS:
            self.positions[kind].update(positions[kind])
        self.ready.set()

    # ---- the consumer thread ---------------------------------------------------------------------------------

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: the process is ending
            self._stopping.set()

    def _report_health(self, healthy: bool) -> None:
        if healthy != self._reported_health:
            self._reported_health = healthy
            self._call(self._set_health, healthy)

    def _run(self) -> None:
        until_stopped(
            self._stopping, "fan-out consumer", cap=10.0, on_failure=lambda _error: self._report_health(False)
        )(self._consume_until_stopped)

    def _consume_until_stopped(self) -> None:
        """Consumes from where the last run got to (from the tables' offsets the first time) until the stop;
        a failure (Kafka or Iceberg unreachable, a fatal consumer error) ends the run, to be retried."""
        consumer = None
        try:
            if self._consumed is None:
                self._consumed = self._starting_offsets()
                self._call(self._started, {kind: dict(self._consumed[kind]) for kind in KINDS})
            consumer = self._open(self._consumed)
            self._consume(consumer, self._consumed)
        finally:
            if consumer is not None:
                consumer.close()

    def _starting_offsets(self) -> dict[RecordKind, Offsets]:
        offsets: dict[RecordKind, Offsets] = {}
        for kind, topic in self.topics.items():
            low, high = self._admin.watermarks(topic)
            try:
                committed = self._history.current(kind, topic).offsets
            except Exception as error:  # noqa: BLE001 - no usable Iceberg: only the backfill bound applies
                log.warning("fan-out: reading the %s snapshot offsets failed: %s", kind, error)
                committed = {}
            backfill = self._settings.latest_backfill_messages
            offsets[kind] = {p: max(committed.get(p, low[p]), low[p], high[p] - backfill) for p in high}
        return offsets

    def _open(self, consumed: dict[RecordKind, Offsets]) -> Consumer:
        consumer = Consumer(
            consumer_config(
                self._kafka,
                f"k2-query-fanout-{uuid.uuid4().hex}",
                **{"fetch.wait.max.ms": self._settings.fetch_wait_max_ms, "fetch.error.backoff.ms": 50},
            ),
            logger=KAFKA_LOG,
        )
        consumer.assign(
            [
                TopicPartition(self.topics[kind], p, offset)
                for kind in KINDS
                for p, offset in consumed[kind].items()
            ]
        )
        return consumer

    def _forget_oldest(self, kind: RecordKind, values: dict[bytes, bytes]) -> None:
        """Brings the latest-value map back under its bound, with a tenth of it to spare (so this is rare): any
        producer can write any key, and a map keeping every key ever seen would grow without end."""
        bound = self._settings.latest_max_symbols
        excess = len(values) - bound + bound // 10
        for key in list(itertools.islice(values, excess)):  # the oldest inserted first
            del values[key]
        metrics.LATEST_FORGOTTEN.labels(metrics.SERVICE, kind).inc(excess)

    def _probe(self, consumer: Consumer, consumed: dict[RecordKind, Offsets]) -> None:
        """Raises when Kafka is unreachable; publishes the tail lag; assigns partitions added to a topic."""
        for kind, topic in self.topics.items():
            low, high = self._admin.watermarks(topic)
            added = [p for p in high if p not in consumed[kind]]
            if added:
                consumer.incremental_assign([TopicPartition(topic, p, low[p]) for p in added])
                for p in added:
                    consumed[kind][p] = low[p]
            lag = sum(max(0, high[p] - consumed[kind].get(p, 0)) for p in high)
            metrics.TAIL_LAG.labels(metrics.SERVICE, topic).set(lag)

    def _consume(self, consumer: Consumer, consumed: dict[RecordKind, Offsets]) -> None:
        batch_size = self._settings.subscription_batch
        gather = self._settings.flush_ms / 1000
        topics = [self.topics[kind] for kind in KINDS]
        latest = [self._latest[kind] for kind in KINDS]
        next_probe = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_probe:
                self._probe(consumer, consumed)  # raises while Kafka is unreachable
                next_probe = now + PROBE_SECONDS
                self._report_health(True)
            messages = consumer.consume(1, IDLE_POLL_SECONDS)
            if not messages:
                continue
            if batch_size > 1:  # what else has arrived (or arrives within `flush_ms`) joins this batch
                messages += consumer.consume(batch_size - 1, gather)
            batches, errors = read_messages(messages, topics, latest)
            for kind, values in zip(KINDS, latest, strict=True):
                if len(values) > self._settings.latest_max_symbols:
                    self._forget_oldest(kind, values)
            for message in errors:
                error = message.error()
                assert error is not None  # read_messages returns the messages that have one
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("fan-out consumer: %s", error.str())
            polled = dict(zip(KINDS, batches, strict=True))
            for (
                kind,
                batch,
            ) in polled.items():  # may raise (a schema registry not answering): the poll is re-read
                if self._wanted[kind] and len(batch):
                    self._decode(kind, batch)
            for kind, batch in polled.items():
                consumed[kind].update(batch.positions)
            while not self._waiting.acquire(timeout=0.5):
                if self._stopping.is_set():
                    return
            self._call(self._route, polled, {kind: dict(consumed[kind]) for kind in KINDS})
