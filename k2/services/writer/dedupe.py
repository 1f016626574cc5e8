"""De-duplication by message_id: ingest gives a message the same message_id every time it is sent, but a batch
re-sent after ingest's own dedupe window (or an ingest restart) reaches Kafka twice. The writer drops a row
whose message_id is among the rows it has buffered or committed within the window (by ingestion time, at most
`dedupe_max_ids` ids, the oldest forgotten first). The committed part is rebuilt from the table whenever the
writer positions partitions (start, assignment, rewind), so it survives restarts and covers what other
writers committed before.

A dropped row's offset is still recorded by the next commit: the message was consumed, its row is already in
the table or buffered. Buffered ids are forgotten with the rows they belong to (revocation, rewind), so a row
re-read from the table's offsets is never taken for a duplicate of itself."""

import time
from collections import deque

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

MESSAGE_ID = "message_id"
INGESTION_TIME = "ingestion_timestamp"
_REBUILD_CHUNK = 50_000  # ids per expiry step when rebuilt from the table


def _newest_micros(rows: pa.Table) -> int:
    newest = pc.max(rows[INGESTION_TIME]).cast(pa.int64()).as_py()
    return int(newest) if newest is not None else 0


class SeenIds:
    """One table's message_ids: committed within the window, and buffered awaiting commit."""

    def __init__(self, window_seconds: float, max_ids: int):
        self.enabled = window_seconds > 0 and max_ids > 0
        self._window_us = int(window_seconds * 1e6)
        self._max_ids = max_ids
        self._committed: set[str] = set()
        self._chunks: deque[tuple[int, list[str]]] = deque()  # (newest ingestion time µs, ids), oldest first
        self._buffered: set[str] = set()

    def __len__(self) -> int:
        return len(self._committed)

    def drop_seen(self, rows: pa.Table) -> tuple[pa.Table, int]:
        """(the rows whose message_id is neither committed, buffered, nor repeated among the rows before it,
        how many were dropped); the kept rows' ids count as buffered from now on."""
        if not self.enabled or not rows.num_rows:
            return rows, 0
        ids = rows[MESSAGE_ID].to_pylist()
        fresh = set(ids)
        if len(fresh) == len(ids) and fresh.isdisjoint(self._buffered) and fresh.isdisjoint(self._committed):
            self._buffered |= fresh
            return rows, 0
        keep = []
        buffered, committed = self._buffered, self._committed
        for message_id in ids:
            seen = message_id in buffered or message_id in committed
            if not seen:
                buffered.add(message_id)
            keep.append(not seen)
        kept = rows.filter(pa.array(keep, pa.bool_()))
        return kept, rows.num_rows - kept.num_rows

    def forget_buffered(self, remaining: pa.Table | None) -> None:
        """The buffer was cut down to `remaining` (None: emptied without a commit)."""
        if self.enabled:
            self._buffered = set() if remaining is None else set(remaining[MESSAGE_ID].to_pylist())

    def committed(self, rows: pa.Table | None) -> None:
        """The buffered rows landed in the table."""
        if not self.enabled:
            return
        if rows is not None and rows.num_rows:
            self._remember(_newest_micros(rows), list(self._buffered))
        self._buffered = set()
        self._expire()

    def rebuild(self, table: Table) -> None:
        """The committed ids from the table's rows ingested within the window (newest `max_ids`)."""
        if not self.enabled:
            return
        since_us = int(time.time() * 1e6) - self._window_us
        # The ingestion times first (8 bytes a row): ids are read only for the newest `max_ids` rows.
        times = table.scan(
            row_filter=f"{INGESTION_TIME} >= {since_us}", selected_fields=(INGESTION_TIME,)
        ).to_arrow()[INGESTION_TIME]
        if len(times) > self._max_ids:
            newest = pc.sort_indices(times, sort_keys=[("", "descending")])[self._max_ids - 1]
            since_us = times.cast(pa.int64())[newest.as_py()].as_py()
        rows = table.scan(
            row_filter=f"{INGESTION_TIME} >= {since_us}", selected_fields=(MESSAGE_ID, INGESTION_TIME)
        ).to_arrow()
        rows = rows.sort_by(INGESTION_TIME).slice(max(0, rows.num_rows - self._max_ids))
        self._committed, self._chunks = set(), deque()
        for start in range(0, rows.num_rows, _REBUILD_CHUNK):
            chunk = rows.slice(start, _REBUILD_CHUNK)
            self._remember(_newest_micros(chunk), chunk[MESSAGE_ID].to_pylist())
        self._expire()

    def _remember(self, newest_us: int, ids: list[str]) -> None:
        self._committed.update(ids)
        self._chunks.append((newest_us, ids))

    def _expire(self) -> None:
        oldest_kept = int(time.time() * 1e6) - self._window_us
        while self._chunks and (self._chunks[0][0] < oldest_kept or len(self._committed) > self._max_ids):
            _, ids = self._chunks.popleft()
            self._committed.difference_update(ids)
