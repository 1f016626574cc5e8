"""The service's own thread pool for blocking work (Iceberg scans, Kafka range reads, conversions), so that slow
requests queue among themselves instead of starving the event loop's default executor."""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")


class Workers:
    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="query-worker")

    async def run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(function, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
