"""Per-client and per-process limits on every K2 service, answered with RESOURCE_EXHAUSTED and the reason:
requests per second per client (a token bucket; a stream counts once, when it opens) and concurrent server
streams (subscriptions, query and load progress streams, health watches, reflection) per client and per process.

A client is its peer address (IP, without the port). Health and reflection need no token but are limited like
every other call, so unauthenticated probes cannot use up what the service's own clients need."""

import inspect
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cachetools import LRUCache

from k2.core.config import ServerSettings

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# Bounds the rate limiter's memory: past it the least recently seen client is forgotten, which costs at most a
# fresh burst for that client.
MAX_TRACKED_CLIENTS = 100_000


def client_of(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or "unknown"  # e.g. "ipv4:127.0.0.1:52814", "ipv6:[::1]:52814", "unix:/path"
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class TokenBuckets:
    """A token bucket per client: `rate` requests per second, bursts of `burst`."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.buckets: LRUCache[str, tuple[float, float]] = LRUCache(
            MAX_TRACKED_CLIENTS
        )  # (tokens, last refill)

    def take(self, client: str) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self.buckets[client] = (tokens - 1 if allowed else tokens, now)
        return allowed


class LimitsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, settings: ServerSettings):
        self._settings = settings
        rate = settings.max_requests_per_second_per_client
        self._buckets = TokenBuckets(rate, max(1.0, rate * settings.rate_burst_seconds)) if rate > 0 else None
        self._streams_by_client: dict[str, int] = defaultdict(int)
        self._streams = 0

    def _refusal(self, client: str, streaming: bool) -> str | None:
        settings = self._settings
        if self._buckets is not None and not self._buckets.take(client):
            return (
                f"more than {settings.max_requests_per_second_per_client:g} requests per second from this "
                "client; slow down and retry"
            )
        if streaming:
            if settings.max_streams and self._streams >= settings.max_streams:
                return (
                    f"this server already serves its maximum of {settings.max_streams} streams; retry later"
                )
            if (
                settings.max_streams_per_client
                and self._streams_by_client[client] >= settings.max_streams_per_client
            ):
                return (
                    f"this client already has {settings.max_streams_per_client} open streams, the maximum; "
                    "close one first"
                )
        return None

    def _open(self, client: str) -> None:
        self._streams += 1
        self._streams_by_client[client] += 1

    def _close(self, client: str) -> None:
        self._streams -= 1
        self._streams_by_client[client] -= 1
        if not self._streams_by_client[client]:
            del self._streams_by_client[client]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        options: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )

            async def admit(context: grpc.aio.ServicerContext) -> str:
                client = client_of(context)
                refusal = self._refusal(client, streaming=True)
                if refusal is not None:
                    await context.abort(EXHAUSTED, refusal)
                self._open(client)
                return client

            if not inspect.isasyncgenfunction(behavior):  # writes through context.write (health's Watch)

                async def limited_writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                    client = await admit(context)
                    try:
                        await behavior(request, context)
                    finally:
                        self._close(client)

                return make(limited_writer, **options)

            async def limited_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                client = await admit(context)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    self._close(client)

            return make(limited_stream, **options)

        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = self._refusal(client_of(context), streaming=False)
            if refusal is not None:
                await context.abort(EXHAUSTED, refusal)
            return await behavior(request, context)

        make = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(limited, **options)
