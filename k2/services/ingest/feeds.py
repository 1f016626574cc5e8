"""Exchange feeds running inside the ingest service (e.g. services/ingest/binance): the server starts each
registered feed, stops it on shutdown, and reports its status through GetFeedStatus."""

import asyncio
import logging
from typing import Protocol

from k2.ingest.v1 import ingest_pb2

log = logging.getLogger(__name__)


class Feed(Protocol):
    name: str

    async def run(self) -> None:
        """Runs the feed (connecting, reconnecting, publishing through the KafkaSink) until stop()."""

    async def stop(self) -> None:
        """Asks run() to finish: stop reading, publish what was already received, then return."""

    def status(self) -> ingest_pb2.FeedStatus:
        """A snapshot for GetFeedStatus; cheap and never blocking."""


class FeedRegistry:
    def __init__(self) -> None:
        self.feeds: list[Feed] = []
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, feed: Feed) -> None:
        if any(existing.name == feed.name for existing in self.feeds):
            raise ValueError(f"a feed named {feed.name!r} is registered already")
        self.feeds.append(feed)

    def statuses(self) -> list[ingest_pb2.FeedStatus]:
        return [feed.status() for feed in self.feeds]

    def start(self) -> None:
        for feed in self.feeds:
            task = asyncio.create_task(feed.run(), name=f"feed-{feed.name}")
            task.add_done_callback(_log_end)
            self._tasks.append(task)

    async def stop(self, timeout: float) -> None:
        """Stops every feed (each publishes what it already received); one still running after the timeout is
        cancelled."""
        if not self._tasks:
            return
        stopping = [asyncio.create_task(feed.stop(), name=f"stop-{feed.name}") for feed in self.feeds]
        await asyncio.wait([*stopping, *self._tasks], timeout=timeout)
        for task in [*stopping, *self._tasks]:
            if not task.done():
                log.warning("%s did not stop within %.0f s; cancelling it", task.get_name(), timeout)
                task.cancel()
        await asyncio.gather(*stopping, *self._tasks, return_exceptions=True)
        self._tasks.clear()


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())
