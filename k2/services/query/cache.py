"""A bounded in-process cache of what Iceberg scans read: each data file's rows (and, once a query asks for them,
each row's encoded message), and each snapshot's planned file list.

Neither can go stale: a data file is never rewritten in place (compaction writes new files, which are new keys;
delete files that apply to it are part of its key) and a snapshot's file list never changes. Entries are dropped
least recently used once the bytes held pass `max_bytes` (K2_QUERY_FILE_CACHE_BYTES; 0 keeps nothing)."""

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import pyarrow as pa

from k2.core.records import RecordKind
from k2.services.query import wire

PLAN_ENTRY_BYTES = 64 * 1024  # what a snapshot's file list is counted as (it holds a few objects per file)


class FileRows:
    """One data file's rows (every column of the table schema), and their framed messages once asked for."""

    __slots__ = ("_framed", "_lock", "nbytes", "table")

    def __init__(self, table: pa.Table):
        self.table = table
        self.nbytes = table.nbytes
        self._framed: pa.Array | None = None
        self._lock = threading.Lock()

    def framed(self, kind: RecordKind) -> tuple[pa.Array, bool]:
        """(the framed messages, whether this call made them)"""
        with self._lock:
            if self._framed is not None:
                return self._framed, False
            self._framed = wire.framed(kind, self.table)
            self.nbytes += self._framed.nbytes
            return self._framed, True


class IcebergCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _get(self, key: Hashable, load: Callable[[], Any], size: Callable[[Any], int]) -> Any:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        value = load()  # outside the lock: two threads may load the same entry, the last one is kept
        self._put(key, value, size(value))
        return value

    def _put(self, key: Hashable, value: Any, nbytes: int) -> None:
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            if nbytes <= self.max_bytes:
                self._entries[key] = (value, nbytes)
                self._bytes += nbytes
            while self._bytes > self.max_bytes:
                self._bytes -= self._entries.popitem(last=False)[1][1]

    def file_rows(self, key: Hashable, load: Callable[[], pa.Table]) -> FileRows:
        return self._get(("file", key), lambda: FileRows(load()), lambda rows: rows.nbytes)

    def framed(self, key: Hashable, rows: FileRows, kind: RecordKind) -> pa.Array:
        """The rows' framed messages, encoded once per cached file (and counted in its size from then on)."""
        framed, made = rows.framed(kind)
        if made:
            with self._lock:
                cached = self._entries.get(("file", key), (None, 0))[0] is rows
            if cached:
                self._put(("file", key), rows, rows.nbytes)
        return framed

    def plan(self, key: Hashable, load: Callable[[], list[Any]]) -> list[Any]:
        return self._get(("plan", key), load, lambda files: PLAN_ENTRY_BYTES + 512 * len(files))

    @property
    def nbytes(self) -> int:
        return self._bytes
