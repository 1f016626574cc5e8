"""Bearer-token authentication and scopes for every K2 gRPC service.

Write scope: publishing, loading and maintenance RPCs. Read scope: everything else of K2's services. Health and
reflection are open so operators and orchestrators can always probe. Tokens are compared in constant time and
never logged.
"""

import hmac
from collections.abc import Awaitable, Callable

import grpc

from k2.core.config import AuthSettings

WRITE_METHODS = frozenset({
    "/k2.ingest.v1.IngestService/PublishTrades",
    "/k2.ingest.v1.IngestService/PublishQuotes",
    "/k2.ingest.v1.IngestService/LoadFiles",
    "/k2.writer.v1.WriterService/Flush",
    "/k2.writer.v1.WriterService/Compact",
})
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def load_tokens(settings: AuthSettings) -> tuple[list[bytes], list[bytes]]:
    """(write tokens, read tokens); a write token reads too."""
    write = [t.get_secret_value().encode() for t in settings.write_tokens]
    if settings.token_file is not None and settings.token_file.exists():
        write += [line.strip().encode() for line in settings.token_file.read_text().splitlines() if line.strip()]
    read = [t.get_secret_value().encode() for t in settings.read_tokens]
    return write, write + read


def _matches(presented: bytes, tokens: list[bytes]) -> bool:
    found = False
    for token in tokens:  # every token is compared, so timing does not reveal which one nearly matched
        found |= hmac.compare_digest(presented, token)
    return found


def _denying_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def deny_stream(request: object, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, settings: AuthSettings):
        self._write, self._read = load_tokens(settings)
        self._require_read = settings.require_read_token or bool(settings.read_tokens)

    def _check(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> tuple[grpc.StatusCode, str] | None:
        if method.startswith(OPEN_PREFIXES):
            return None
        write = method in WRITE_METHODS
        if not write and not self._require_read:
            return None
        header = next((value for key, value in metadata if key == "authorization"), None)
        if header is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
        text = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
        presented = token.strip().encode()
        if write:
            if _matches(presented, self._write):
                return None
            if _matches(presented, self._read):
                return grpc.StatusCode.PERMISSION_DENIED, f"token has read scope only; {method} needs write scope"
            return grpc.StatusCode.UNAUTHENTICATED, "unknown token"
        if _matches(presented, self._read):
            return None
        return grpc.StatusCode.UNAUTHENTICATED, "unknown token"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        refusal = self._check(handler_call_details.method,  # type: ignore[attr-defined]
                              handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        handler = await continuation(handler_call_details)
        if refusal is None or handler is None:
            return handler
        return _denying_handler(handler, *refusal)
