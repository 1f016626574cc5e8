"""One WebSocket connection to a Binance combined-stream endpoint: open, subscribe, read until closed.

Pings from the server are answered by websockets itself, as soon as a frame is read from the socket (also while
our reader waits for the publisher: the frames are queued, up to RECEIVE_QUEUE_FRAMES, before the socket is no
longer read). Our own keepalive pings detect a dead peer (no pong within ping_timeout → closed, 1011).
"""

import asyncio
import itertools
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from k2.core.config import is_loopback_host

from .parsing import SERVER_SHUTDOWN, FrameParser
from .publishing import PublishBuffer
from .resilience import SlidingWindowLimiter
from .settings import BinanceSettings

log = logging.getLogger(__name__)
# Frames websockets queues before it stops reading the socket. Large enough that flow control is not exercised
# per few frames at full rate, small enough to stay bounded (a Binance frame is ~200 bytes).
RECEIVE_QUEUE_FRAMES = 4096
MAX_FRAME_BYTES = 1 << 20
USER_AGENT = "k2-ingest"


class SubscribeError(Exception):
    """The exchange refused or did not acknowledge a SUBSCRIBE (or UNSUBSCRIBE) request."""


def close_reason(connection: ClientConnection) -> str:
    """Why a connection ended, as a reconnect reason: closed_<code> for a close frame from the server,
    ping_timeout when our keepalive got no pong, closed_1006 when TCP dropped without a close frame."""
    received = connection.protocol.close_rcvd
    if received is not None:
        return f"closed_{received.code}"
    sent = connection.protocol.close_sent
    if sent is not None and sent.code == CloseCode.INTERNAL_ERROR and "keepalive" in sent.reason:
        return "ping_timeout"
    return f"closed_{CloseCode.ABNORMAL_CLOSURE}"


class FeedConnection:
    """A connection and its reader task. `frames` counts every frame read (the watchdog's activity signal);
    `blocked` is true while the reader waits for room in the publish buffer (not a silence)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        settings: BinanceSettings,
        endpoint: str,
        streams: list[str],
        parser: FrameParser,
        buffer: PublishBuffer,
        on_server_shutdown: Callable[["FeedConnection"], None],
    ):
        self.id = next(self._ids)
        self.settings = settings
        self.endpoint = endpoint
        self.streams = streams
        self.parser = parser
        self.buffer = buffer
        self.on_server_shutdown = on_server_shutdown
        self.frames = 0
        self.blocked = False
        self.reason: str | None = None  # why it closed (or is being closed by us)
        self.closed = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._request_ids = itertools.count(1)
        self._control_limiter = SlidingWindowLimiter(settings.control_messages_per_second, 1.0)

    def url(self) -> str:
        in_url = self.streams[: self.settings.streams_in_url]
        query = f"streams={'/'.join(in_url)}&" if in_url else ""
        return f"{self.endpoint}/stream?{query}timeUnit={self.settings.time_unit}"

    async def open(self) -> None:
        """Connects and subscribes every stream; raises on any failure (the connection is then closed)."""
        settings = self.settings
        secure = urlsplit(self.endpoint).scheme == "wss"
        self._ws = await connect(
            self.url(),
            ssl=ssl.create_default_context() if secure else None,  # certificate and host name verified
            proxy=None if is_loopback_host(urlsplit(self.endpoint).hostname or "") else True,
            open_timeout=settings.open_timeout_seconds,
            ping_interval=settings.ping_interval_seconds,
            ping_timeout=settings.ping_timeout_seconds,
            close_timeout=settings.close_timeout_seconds,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            max_queue=RECEIVE_QUEUE_FRAMES,
            user_agent_header=USER_AGENT,
        )
        self._reader = asyncio.create_task(self._read(self._ws), name=f"binance-reader-{self.id}")
        try:
            await self._control("SUBSCRIBE", self.streams[settings.streams_in_url :])
        except BaseException:
            await self.close("subscribe_failed")
            raise

    async def subscribe(self, streams: list[str]) -> None:
        """Adds streams to the open connection (a listing); raises SubscribeError when refused or closed."""
        await self._control("SUBSCRIBE", streams)
        self.streams = self.streams + streams

    async def unsubscribe(self, streams: list[str]) -> None:
        """Removes streams (a delisting); once this returns, no more frames of them arrive on this connection."""
        await self._control("UNSUBSCRIBE", streams)
        gone = set(streams)
        self.streams = [stream for stream in self.streams if stream not in gone]

    async def _control(self, method: str, streams: list[str]) -> None:
        """One request per streams_per_subscribe streams, each within the control-message budget."""
        step = self.settings.streams_per_subscribe
        for start in range(0, len(streams), step):
            await self._request(method, streams[start : start + step])

    async def _request(self, method: str, streams: list[str]) -> None:
        assert self._ws is not None
        await self._control_limiter.acquire()
        if self.closed.is_set():
            raise SubscribeError(f"connection closed before {method}")
        request_id = next(self._request_ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        try:
            await self._ws.send(json.dumps({"method": method, "params": streams, "id": request_id}))
            async with asyncio.timeout(self.settings.control_reply_timeout_seconds):
                answer = await reply
        except TimeoutError:
            raise SubscribeError(
                f"no answer to {method} within {self.settings.control_reply_timeout_seconds}s"
            ) from None
        except ConnectionClosed as error:
            raise SubscribeError(f"connection closed during {method}: {error}") from None
        finally:
            self._replies.pop(request_id, None)
        if answer.get("error") is not None:
            raise SubscribeError(f"{method} refused: {answer['error']}")

    async def _read(self, ws: ClientConnection) -> None:
        parse = self.parser.parse
        buffer = self.buffer
        recv = ws.recv
        try:
            while True:
                raw = await recv(False)
                self.frames += 1
                control = parse(raw)  # type: ignore[arg-type]
                if control is not None:
                    self._on_control(control)
                if buffer.full():
                    self.blocked = True
                    await buffer.wait_for_space()
                    self.blocked = False
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("binance connection %d: reading failed; closing it", self.id)
            self.reason = self.reason or "reader_error"
            await ws.close()
        finally:
            if self.reason is None:
                self.reason = close_reason(ws)
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_exception(SubscribeError("connection closed while subscribing"))
            self.closed.set()

    def _on_control(self, message: dict[str, Any]) -> None:
        if message.get("e") == SERVER_SHUTDOWN:
            log.info("binance connection %d (%s): serverShutdown announced", self.id, self.endpoint)
            self.on_server_shutdown(self)
            return
        request_id = message.get("id")
        reply = self._replies.get(request_id) if type(request_id) is int else None
        if reply is not None and not reply.done():
            reply.set_result(message)
        elif message.get("error") is not None:
            log.warning("binance connection %d: error reply %s", self.id, message)

    async def close(self, reason: str) -> None:
        """Closes (a close frame, then TCP) and waits for the reader to finish; idempotent."""
        if self.reason is None:
            self.reason = reason
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            if not self._reader.done():
                self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.closed.set()

    async def stop_reading(self) -> None:
        """Stops consuming frames (what was parsed stays in the buffer); the connection stays open."""
        if self.reason is None:
            self.reason = "stopped"
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self.closed.is_set()
