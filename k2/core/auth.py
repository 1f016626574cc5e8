"""Bearer-token authentication and scopes for every K2 gRPC service.

Each RPC declares the scope it needs in its proto, `option (k2.auth.v1.scope)` (proto/k2/auth/v1/auth.proto): write
for publishing, loading and maintenance, read for everything else. A method that declares none is refused, so a
new RPC cannot slip through as a read (fail closed). Health and reflection need no token, so operators and
orchestrators can always probe; they are rate- and stream-limited like everything else (k2.core.limits). Tokens
are compared in constant time and never logged.
"""

import hmac
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from k2.auth.v1 import auth_pb2
from k2.core.config import AuthSettings

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# The generated stub types the extension as a plain FieldDescriptor, which Extensions[...] does not accept.
SCOPE_OPTION: Any = auth_pb2.scope


@cache
def method_scope(method: str) -> int:
    """The scope a served method's proto declares ("/k2.ingest.v1.IngestService/PublishTrades" → SCOPE_WRITE);
    SCOPE_UNSPECIFIED when it declares none. Only called for methods the server serves, so the cache is bounded."""
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return auth_pb2.SCOPE_UNSPECIFIED
    return int(found.GetOptions().Extensions[SCOPE_OPTION])


def _configured(name: str, tokens: list[str]) -> list[bytes]:
    for token in tokens:
        if not token.strip():
            raise ValueError(f"{name}: an empty token would let anyone in; remove it")
    return [token.strip().encode() for token in tokens]


def load_tokens(settings: AuthSettings) -> tuple[list[bytes], list[bytes]]:
    """(write tokens, read tokens); a write token reads too. An empty configured token is refused at start."""
    write = _configured("K2_AUTH_WRITE_TOKENS", [t.get_secret_value() for t in settings.write_tokens])
    if settings.token_file is not None and settings.token_file.exists():
        write += [
            line.strip().encode() for line in settings.token_file.read_text().splitlines() if line.strip()
        ]
    read = _configured("K2_AUTH_READ_TOKENS", [t.get_secret_value() for t in settings.read_tokens])
    return write, write + read


def _matches(presented: bytes, tokens: list[bytes]) -> bool:
    found = False
    for token in tokens:  # every token is compared, so timing does not reveal which one nearly matched
        found |= hmac.compare_digest(presented, token)
    return found


def _denying_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
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

    def _check(
        self, method: str, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> tuple[grpc.StatusCode, str] | None:
        if method.startswith(OPEN_PREFIXES):
            return None
        scope = method_scope(method)
        if scope == auth_pb2.SCOPE_UNSPECIFIED:
            return grpc.StatusCode.PERMISSION_DENIED, f"{method} declares no scope, so nobody may call it"
        write = scope == auth_pb2.SCOPE_WRITE
        if not write and not self._require_read:
            return None
        header = next((value for key, value in metadata if key == "authorization"), None)
        if header is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata"
        text = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        presented = token.strip().encode()
        if scheme.lower() != "bearer" or not presented:
            return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
        if write:
            if _matches(presented, self._write):
                return None
            if _matches(presented, self._read):
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"token has read scope only; {method} needs write scope",
                )
            return grpc.StatusCode.UNAUTHENTICATED, "unknown token"
        if _matches(presented, self._read):
            return None
        return grpc.StatusCode.UNAUTHENTICATED, "unknown token"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # not served: the library answers UNIMPLEMENTED
            return handler
        refusal = self._check(
            handler_call_details.method,  # type: ignore[attr-defined]
            handler_call_details.invocation_metadata,
        )  # type: ignore[attr-defined]
        return handler if refusal is None else _denying_handler(handler, *refusal)
