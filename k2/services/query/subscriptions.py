"""SubscribeTrades / SubscribeQuotes: one stream = history (Iceberg), then a Kafka replay, then the live fan-out,
with no gap and no duplicate at either hand-over.

1. Start position. From now: the high watermarks at request time. From a past time T: the current Iceberg
   snapshot S (rows with timestamp >= T), then Kafka from the offsets S recorded — exactly what S does not hold.
   From a resume token: the position it encodes (a snapshot and row key while still in history, else offsets).
2. History: S is read in row order by one scan that streams its row groups (k2.services.query.history.Scan).
3. Replay: while the stream is far behind the fan-out, it reads Kafka from its offsets up to the fan-out's
   position with its own short-lived reader. Close enough, it registers with the fan-out, which from then on
   queues every matching live record for it, and replays the last stretch [its offsets, the position the fan-out
   had at registration). Records are identified by (partition, offset), so the two sets are disjoint and together
   complete. (If the stream is ahead of the fan-out, the fan-out skips records below its offsets instead.)
4. Live: the queued responses, and a heartbeat (no records; the position; server time) when idle.

Every response carries the position after it as resume_token. A position whose offsets Kafka no longer retains
(or whose snapshot was expired) restarts from history at the token's time mark: the newest timestamp it had
delivered. That fallback is the one inexact case: records at exactly that time can come again, and records with
an earlier timestamp that arrived later are not replayed.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc

from k2._native import read_messages
from k2.core.config import KafkaSettings
from k2.core.records import RecordKind
from k2.core.timestamps import from_micros
from k2.services.query import metrics
from k2.services.query.config import QuerySettings
from k2.services.query.convert import decode_batch, response_bytes
from k2.services.query.fanout import FanOut, Subscriber
from k2.services.query.history import History, SnapshotGone, ordered_rows
from k2.services.query.kafka_tail import KafkaAdmin, Offsets, RangeReader, symbol_keys
from k2.services.query.selection import ORDER_COLUMNS, Key, Selection, row_key
from k2.services.query.tokens import StreamPosition
from k2.services.query.validation import Subscription
from k2.services.query.wire import FRAMED, joined, response_slices
from k2.services.query.workers import Workers

log = logging.getLogger(__name__)


class StreamEnded(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _now_micros() -> int:
    return time.time_ns() // 1000


class Subscriptions:
    def __init__(
        self,
        kafka: KafkaSettings,
        settings: QuerySettings,
        admin: KafkaAdmin,
        history: History,
        fanout: FanOut,
        workers: Workers,
    ):
        self._kafka = kafka
        self._workers = workers
        self._settings = settings
        self._admin = admin
        self._history = history
        self._fanout = fanout
        self._replays = asyncio.Semaphore(settings.max_concurrent_replays)
        self._closing: str | None = None

    def close(self, reason: str) -> None:
        """Refuses new streams and ends those still replaying at their next response (live ones are ended by
        the fan-out)."""
        self._closing = reason

    def _check_open(self) -> None:
        if self._closing is not None:
            raise StreamEnded(grpc.StatusCode.UNAVAILABLE, self._closing)

    async def stream(
        self, request: Subscription, on_end: Callable[[Callable[[], None]], None]
    ) -> AsyncIterator[bytes]:
        """Response bytes until the client cancels; StreamEnded when the server ends the stream. `on_end`
        registers a clean-up to run as soon as the RPC ends, however it ends (a generator abandoned at a yield by
        a cancelled RPC only runs its `finally` when it is finalized)."""
        kind = request.kind
        self._check_open()
        if not self._fanout.ready.is_set() or not self._fanout.healthy:
            raise StreamEnded(grpc.StatusCode.UNAVAILABLE, "Kafka is unreachable; retry later")
        position = await self._start_position(request)
        selection = Selection(request.symbols, request.exchanges, start=position.since)
        if position.snapshot_id is not None:
            async for payload, advanced in self._history_phase(kind, selection, position):
                yield payload
                position = advanced
                self._check_open()
            position = replace(position, snapshot_id=None, after=None)
        while True:  # far behind: catch up without holding a live queue
            live = self._fanout.positions[kind]
            behind = sum(max(0, offset - position.offsets.get(p, 0)) for p, offset in live.items())
            if behind <= self._settings.join_lag_messages:
                break
            async for replayed, advanced in self._replay(kind, selection, position, dict(live)):
                if replayed is not None:
                    yield replayed
                position = advanced
                self._check_open()
        subscriber, handover = self._fanout.register(kind, selection, position.offsets)
        on_end(lambda: self._fanout.unregister(subscriber))
        try:
            async for replayed, advanced in self._replay(kind, selection, position, handover):
                if replayed is not None:
                    yield replayed
                position = advanced
                self._check_open()
                if subscriber.ending is not None and subscriber.final_position is None:
                    raise StreamEnded(
                        *subscriber.ending
                    )  # its live queue overflowed (or failed) while it replayed
            async for payload in self._live(subscriber, position.mark):
                yield payload
        finally:
            self._fanout.unregister(subscriber)

    # ---- start -----------------------------------------------------------------------------------------------

    async def _start_position(self, request: Subscription) -> StreamPosition:
        kind, topic = request.kind, self._fanout.topics[request.kind]
        low, high = await self._workers.run(self._admin.watermarks, topic)
        if request.resume is not None:
            position = request.resume
            expired = any(offset < low.get(p, 0) for p, offset in position.offsets.items())
            if position.snapshot_id is not None and not expired:
                try:
                    await self._workers.run(self._history.at, kind, topic, position.snapshot_id)
                except SnapshotGone:
                    expired = True
            if not expired:  # partitions added since the token was issued are read from their start
                return replace(position, offsets={p: position.offsets.get(p, low[p]) for p in high})
            metrics.RESUME_FALLBACKS.labels(metrics.SERVICE, kind).inc()
            log.info(
                "resume position of a %s stream has left Kafka or Iceberg; restarting from history at %s",
                kind,
                from_micros(position.mark),
            )
            restart: Key = (position.mark, "", "", None, "")  # before every row at the mark
            return await self._from_history(kind, topic, low, position.since, position.mark, restart)
        if request.start is not None:
            return await self._from_history(kind, topic, low, request.start, request.start, None)
        return StreamPosition(kind, dict(high), mark=_now_micros())

    async def _from_history(
        self, kind: RecordKind, topic: str, low: Offsets, since: int | None, mark: int, after: Key | None
    ) -> StreamPosition:
        snapshot = await self._workers.run(self._history.current, kind, topic)
        offsets = {p: max(snapshot.offsets.get(p, first), first) for p, first in low.items()}
        return StreamPosition(
            kind, offsets, since=since, snapshot_id=snapshot.snapshot_id, after=after, mark=mark
        )

    # ---- history ---------------------------------------------------------------------------------------------

    async def _history_phase(
        self, kind: RecordKind, selection: Selection, position: StreamPosition
    ) -> AsyncIterator[tuple[bytes, StreamPosition]]:
        topic = self._fanout.topics[kind]
        snapshot = await self._workers.run(self._history.at, kind, topic, position.snapshot_id)
        rows = ordered_rows(kind, snapshot, selection, [*ORDER_COLUMNS, FRAMED], after=position.after)
        while True:
            window = await self._workers.run(next, rows, None)
            if window is None:
                return
            for start, length in response_slices(
                window[FRAMED], self._settings.subscription_batch, self._settings.subscription_response_bytes
            ):
                chunk = window.slice(start, length)
                framed = joined(chunk[FRAMED].combine_chunks())
                after = row_key(chunk, chunk.num_rows - 1)
                position = replace(position, after=after, mark=max(position.mark, after[0]))
                metrics.DELIVERED.labels(metrics.SERVICE, kind, "history").inc(chunk.num_rows)
                yield (
                    response_bytes(kind, framed, position.encode(self._fanout.token_keys), replay=True),
                    position,
                )

    # ---- Kafka replay ----------------------------------------------------------------------------------------

    def _read(
        self, reader: RangeReader, kind: RecordKind, selection: Selection, offsets: Offsets
    ) -> list[tuple[bytes, int, int, Offsets]]:
        """(framed records, count, newest timestamp, offsets after them) of the reader's next messages, in parts
        of at most subscription_response_bytes; advances `offsets`."""
        messages = reader.read(self._settings.subscription_batch, 0.2)
        [batch], _ = read_messages(messages, [reader.topic], keys=symbol_keys(selection))
        decode_batch(kind, batch, self._fanout.framing)
        parts = []
        for part in batch.split(self._settings.subscription_response_bytes):
            offsets.update(part.positions)
            framed, count, newest = part.select(
                selection.symbols, selection.exchanges, selection.start, selection.end
            )
            parts.append((framed, count, newest, dict(offsets)))
        offsets.update(batch.positions)  # and the messages of other symbols, which it skipped undecoded
        parts[-1] = (*parts[-1][:3], dict(offsets))
        return parts

    async def _replay(
        self, kind: RecordKind, selection: Selection, position: StreamPosition, end: Offsets
    ) -> AsyncIterator[tuple[bytes | None, StreamPosition]]:
        """Kafka records from the position's offsets up to `end`; the last item is (None, position at `end`)."""
        offsets = dict(position.offsets)
        if any(offsets.get(p, 0) < offset for p, offset in end.items()):
            topic = self._fanout.topics[kind]
            reader = await self._workers.run(
                RangeReader, self._kafka, topic, offsets, end, self._settings.fetch_wait_max_ms
            )
            try:
                last_sent = time.monotonic()
                while not reader.done:
                    # A replay slot bounds the reading, not the sending: a client that stops reading holds none.
                    async with self._replays:
                        parts = await self._workers.run(self._read, reader, kind, selection, offsets)
                    for framed, count, newest, after in parts:
                        now = time.monotonic()
                        if count or now - last_sent >= self._settings.heartbeat_seconds:
                            position = replace(position, offsets=after, mark=max(position.mark, newest))
                            metrics.DELIVERED.labels(metrics.SERVICE, kind, "replay").inc(count)
                            last_sent = now
                            yield (
                                response_bytes(
                                    kind, framed, position.encode(self._fanout.token_keys), replay=True
                                ),
                                position,
                            )
            finally:
                await self._workers.run(reader.close)
        # the range is done even where its last offsets held no message (transaction markers)
        offsets |= {p: max(offsets.get(p, 0), offset) for p, offset in end.items()}
        yield None, replace(position, offsets=offsets)

    # ---- live ------------------------------------------------------------------------------------------------

    async def _live(self, subscriber: Subscriber, mark: int) -> AsyncIterator[bytes]:
        kind = subscriber.kind
        heartbeat = self._settings.heartbeat_seconds
        delivered = metrics.DELIVERED.labels(metrics.SERVICE, kind, "live")
        while True:
            entry = subscriber.take()
            if entry is not None:
                payload, records, mark = entry
                delivered.inc(records)
                yield payload
                continue
            if subscriber.ending is not None:
                if subscriber.final_position is not None:  # ended with its queue kept: its position is exact
                    yield self._heartbeat(subscriber, mark)
                raise StreamEnded(*subscriber.ending)
            subscriber.wakeup.clear()
            try:
                async with asyncio.timeout(heartbeat):
                    await subscriber.wakeup.wait()
            except TimeoutError:
                yield self._heartbeat(subscriber, mark)

    def _heartbeat(self, subscriber: Subscriber, mark: int) -> bytes:
        position = StreamPosition(
            subscriber.kind, self._fanout.position_of(subscriber), since=subscriber.selection.start, mark=mark
        )
        return response_bytes(subscriber.kind, b"", position.encode(self._fanout.token_keys), replay=False)
