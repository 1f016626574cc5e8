"""What the query service keeps between reads of Iceberg: metadata, and the rows of small files only.

- each snapshot's planned file list (a few objects per data file), least recently used dropped past
  `plans` snapshots;
- each data file's Parquet footer (row-group statistics, where each column chunk is), by bytes: reading a row
  group then needs no footer read first;
- per row group and selection, the time range its selected rows actually span (or that none are selected): a
  row group's statistics cover every symbol in it, its selected rows often far fewer times, so a later page
  skips it without reading it;
- the decoded row group of each small data file (at most history.SMALL_FILE_ROWS rows: a commit compaction has
  not merged yet), by bytes: opening and reading such a file costs more than the rows in it, and a query of
  recent data reads many of them. A large file's rows are never kept: a query reads only its selected rows.

None of these can go stale: a data file is never rewritten in place (compaction writes new files, which are new
keys) and a snapshot's file list never changes. None makes a read slower than reading without it: a miss costs
what a read without the cache costs (for a small file, its whole row group, which is what the read decodes
anyway), and each is bounded (K2_QUERY_FOOTER_CACHE_BYTES, K2_QUERY_SMALL_FILE_CACHE_BYTES)."""

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from cachetools import LRUCache

T = TypeVar("T")
MISSING = object()
PLANS = 64  # snapshots whose file lists are kept
BOUNDS = 200_000  # row groups × selections whose selected rows' time range is kept (~200 bytes each)


class ReadCache:
    def __init__(self, footer_bytes: int, small_files_bytes: int = 0):
        self.footer_bytes = footer_bytes
        self.small_files_bytes = small_files_bytes
        self._row_groups: LRUCache[Hashable, Any] = LRUCache(max(small_files_bytes, 1), getsizeof=_table_size)
        self._plans: LRUCache[Hashable, Any] = LRUCache(PLANS)
        self._footers: LRUCache[Hashable, Any] = LRUCache(max(footer_bytes, 1), getsizeof=_footer_size)
        self._bounds: LRUCache[Hashable, tuple[int, int] | None] = LRUCache(BOUNDS)
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe

    def _get(self, cache: LRUCache[Hashable, Any], key: Hashable, load: Callable[[], T]) -> T:
        with self._lock:
            found = cache.get(key, MISSING)
        if found is not MISSING:
            return found  # type: ignore[no-any-return]
        value = load()  # outside the lock: two threads may load the same entry, either is right
        with self._lock:
            try:
                cache[key] = value
            except ValueError:  # larger than the whole cache: used, never kept
                pass
        return value

    def plan(self, key: Hashable, load: Callable[[], T]) -> T:
        return self._get(self._plans, key, load)

    def footer(self, key: Hashable, load: Callable[[], T]) -> T:
        if self.footer_bytes <= 0:
            return load()
        return self._get(self._footers, key, load)

    def row_group(self, key: Hashable, load: Callable[[], T]) -> T:
        return self._get(self._row_groups, key, load)

    def bounds(self, key: Hashable) -> tuple[int, int] | None | object:
        """The remembered (first, last) time of a row group's selected rows, None if it holds none, or MISSING."""
        with self._lock:
            return self._bounds.get(key, MISSING)

    def remember_bounds(self, key: Hashable, bounds: tuple[int, int] | None) -> None:
        with self._lock:
            self._bounds[key] = bounds

    @property
    def footers_nbytes(self) -> int:
        return int(self._footers.currsize)

    @property
    def small_files_nbytes(self) -> int:
        return int(self._row_groups.currsize)


def _table_size(table: Any) -> int:
    return int(table.nbytes)


def _footer_size(footer: Any) -> int:
    return int(footer.nbytes)


SCAN_OVERHEAD = 64 * 1024  # what a kept scan holds besides its rows (its plan of row groups), counted so


class ScanCache:
    """Scans a page stopped in, by the page token that goes on from there: the next page (on this replica)
    continues the same scan instead of planning and reading up to the token's row again. A scan is taken out
    while a page uses it; bounded by the bytes of rows the scans hold (K2_QUERY_SCAN_CACHE_BYTES), least recently
    used dropped first. A token whose scan is not here (another replica, dropped) is read as without it."""

    def __init__(self, max_bytes: int):
        self._scans: LRUCache[Hashable, Any] = LRUCache(max(max_bytes, 1), getsizeof=_scan_size)
        self._enabled = max_bytes > 0
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> Any:
        with self._lock:
            return self._scans.pop(key, None)

    def keep(self, key: Hashable, scan: Any) -> None:
        if not self._enabled:
            return
        with self._lock:
            try:
                self._scans[key] = scan
            except ValueError:  # larger than the whole cache
                pass


def _scan_size(scan: Any) -> int:
    return SCAN_OVERHEAD + int(scan.nbytes)
