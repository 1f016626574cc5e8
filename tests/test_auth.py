"""k2.core.auth.TokenAuthInterceptor on a real GrpcServer. The servicer is a small stand-in for the writer's
(Flush: write scope, GetStatus: read scope, Compact: write scope, server streaming — as writer.proto declares
them) because the interceptor, not the writer, is under test."""

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Self

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from k2.auth.v1 import auth_pb2
from k2.core.auth import method_scope
from k2.core.config import AuthSettings, ServerSettings
from k2.core.grpcserver import GrpcServer
from k2.ingest.v1 import ingest_pb2
from k2.query.v1 import query_pb2
from k2.telemetry.v1 import telemetry_pb2
from k2.writer.v1 import writer_pb2, writer_pb2_grpc

WRITER = "k2.writer.v1.WriterService"
CALL_TIMEOUT = 5.0
WRITE_TOKEN = secrets.token_urlsafe(24)
READ_TOKEN = secrets.token_urlsafe(24)
WRONG_TOKEN = secrets.token_urlsafe(24)


class _ServerSettings(ServerSettings):
    # A prefix nothing sets, so stray HOST/PORT variables of the environment cannot leak into these tests.
    model_config = SettingsConfigDict(env_prefix="K2_TEST_AUTH_UNUSED_", extra="ignore")


class _Writer(writer_pb2_grpc.WriterServiceServicer):
    async def GetStatus(
        self, request: writer_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.GetStatusResponse:
        return writer_pb2.GetStatusResponse(dead_lettered=7)

    async def Flush(
        self, request: writer_pb2.FlushRequest, context: grpc.aio.ServicerContext
    ) -> writer_pb2.FlushResponse:
        return writer_pb2.FlushResponse(commits=[writer_pb2.TableCommit(table="market_data.trades", rows=1)])

    async def Compact(
        self, request: writer_pb2.CompactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[writer_pb2.CompactResponse]:
        progress = writer_pb2.CompactProgress(partitions_done=1, partitions_total=1)
        yield writer_pb2.CompactResponse(progress=progress)
        yield writer_pb2.CompactResponse(result=writer_pb2.CompactResult(files_before=3, files_after=1))


def _auth(
    *,
    write: tuple[str, ...] = (WRITE_TOKEN,),
    read: tuple[str, ...] = (),
    token_file: Path | None = None,
    require_read_token: bool = False,
) -> AuthSettings:
    return AuthSettings(
        write_tokens=[SecretStr(t) for t in write],
        read_tokens=[SecretStr(t) for t in read],
        token_file=token_file,
        require_read_token=require_read_token,
    )


class _Served:
    """A GrpcServer with the stand-in writer, and a client channel to it."""

    def __init__(self, auth: AuthSettings):
        settings = _ServerSettings(
            host="127.0.0.1", port=0, metrics_port=0, allow_plaintext=False, grace_seconds=0.5
        )
        self.server = GrpcServer("auth-test", settings, auth)
        self.server.add(writer_pb2_grpc.add_WriterServiceServicer_to_server, _Writer(), WRITER)

    async def __aenter__(self) -> Self:
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.writer = writer_pb2_grpc.WriterServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop()


def _bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return () if token is None else (("authorization", f"Bearer {token}"),)


async def _flush(served: _Served, token: str | None) -> writer_pb2.FlushResponse:
    return await served.writer.Flush(writer_pb2.FlushRequest(), metadata=_bearer(token), timeout=CALL_TIMEOUT)


async def _status(served: _Served, token: str | None) -> writer_pb2.GetStatusResponse:
    return await served.writer.GetStatus(
        writer_pb2.GetStatusRequest(), metadata=_bearer(token), timeout=CALL_TIMEOUT
    )


async def _compact(served: _Served, token: str | None) -> list[writer_pb2.CompactResponse]:
    call = served.writer.Compact(
        writer_pb2.CompactRequest(table="market_data.trades"), metadata=_bearer(token), timeout=CALL_TIMEOUT
    )
    return [response async for response in call]


async def _refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value


def test_every_rpc_declares_its_scope_in_its_proto() -> None:
    declared = {
        f"/{service.full_name}/{method.name}": method_scope(f"/{service.full_name}/{method.name}")
        for module in (ingest_pb2, query_pb2, writer_pb2, telemetry_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert auth_pb2.SCOPE_UNSPECIFIED not in declared.values(), declared
    assert {method for method, scope in declared.items() if scope == auth_pb2.SCOPE_WRITE} == {
        "/k2.ingest.v1.IngestService/PublishTrades",
        "/k2.ingest.v1.IngestService/PublishQuotes",
        "/k2.ingest.v1.IngestService/LoadFiles",
        f"/{WRITER}/Flush",
        f"/{WRITER}/Compact",
    }


async def test_a_method_without_a_declared_scope_is_refused_even_where_reads_are_open() -> None:
    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"served"

    served = _Served(_auth())
    served.server.server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "k2.test.v1.UndeclaredService", {"Call": grpc.unary_unary_rpc_method_handler(answer)}
            ),
        )
    )
    async with served:
        call = served.channel.unary_unary("/k2.test.v1.UndeclaredService/Call")
        without_token = await _refusal(call(b"", timeout=CALL_TIMEOUT))
        with_write_token = await _refusal(call(b"", metadata=_bearer(WRITE_TOKEN), timeout=CALL_TIMEOUT))
    for error in (without_token, with_write_token):
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "declares no scope" in error.details()


@pytest.mark.parametrize("tokens", [{"write": ("",)}, {"write": ("   ",)}, {"read": ("",)}])
def test_an_empty_configured_token_is_refused_at_start(tokens: dict[str, tuple[str, ...]]) -> None:
    with pytest.raises(ValueError, match="empty token"):
        _Served(_auth(**tokens))  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["Bearer ", "Bearer  ", "bearer"])
async def test_a_bearer_header_without_a_token_is_unauthenticated(header: str) -> None:
    async with _Served(_auth()) as served:
        error = await _refusal(
            served.writer.Flush(
                writer_pb2.FlushRequest(), timeout=CALL_TIMEOUT, metadata=(("authorization", header),)
            )
        )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_write_method_without_a_token_is_unauthenticated() -> None:
    async with _Served(_auth()) as served:
        error = await _refusal(_flush(served, None))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in error.details()


async def test_write_method_with_a_wrong_token_is_unauthenticated() -> None:
    async with _Served(_auth(read=(READ_TOKEN,))) as served:
        error = await _refusal(_flush(served, WRONG_TOKEN))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "unknown token"


async def test_authorization_that_is_not_a_bearer_token_is_unauthenticated() -> None:
    async with _Served(_auth()) as served:
        error = await _refusal(
            served.writer.Flush(
                writer_pb2.FlushRequest(),
                timeout=CALL_TIMEOUT,
                metadata=(("authorization", f"Basic {WRITE_TOKEN}"),),
            )
        )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "must be 'Bearer <token>'" in error.details()


async def test_read_token_on_a_write_method_is_permission_denied() -> None:
    async with _Served(_auth(read=(READ_TOKEN,))) as served:
        error = await _refusal(_flush(served, READ_TOKEN))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "read scope only" in error.details() and f"/{WRITER}/Flush" in error.details()


async def test_write_token_is_served() -> None:
    async with _Served(_auth(read=(READ_TOKEN,))) as served:
        response = await _flush(served, WRITE_TOKEN)
    assert [(c.table, c.rows) for c in response.commits] == [("market_data.trades", 1)]


async def test_write_token_from_the_token_file_is_served(tmp_path: Path) -> None:
    file_token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(f"\n{file_token}\n")
    async with _Served(_auth(write=(), token_file=token_file)) as served:
        response = await _flush(served, file_token)
        error = await _refusal(_flush(served, WRITE_TOKEN))
    assert len(response.commits) == 1
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reads_are_open_without_read_tokens() -> None:
    async with _Served(_auth()) as served:
        anonymous = await _status(served, None)
        # A presented token is not checked where reads are open.
        with_wrong_token = await _status(served, WRONG_TOKEN)
    assert anonymous.dead_lettered == 7 and with_wrong_token.dead_lettered == 7


async def test_reads_need_a_token_once_read_tokens_are_configured() -> None:
    async with _Served(_auth(read=(READ_TOKEN,))) as served:
        missing = await _refusal(_status(served, None))
        wrong = await _refusal(_status(served, WRONG_TOKEN))
        with_read_token = await _status(served, READ_TOKEN)
        with_write_token = await _status(served, WRITE_TOKEN)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert with_read_token.dead_lettered == 7 and with_write_token.dead_lettered == 7


async def test_require_read_token_closes_reads_without_read_tokens() -> None:
    async with _Served(_auth(require_read_token=True)) as served:
        missing = await _refusal(_status(served, None))
        with_write_token = await _status(served, WRITE_TOKEN)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert with_write_token.dead_lettered == 7


async def test_streaming_write_method_is_refused_and_served_by_scope() -> None:
    async with _Served(_auth(read=(READ_TOKEN,))) as served:
        missing = await _refusal(_compact(served, None))
        read_only = await _refusal(_compact(served, READ_TOKEN))
        responses = await _compact(served, WRITE_TOKEN)
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert read_only.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [r.WhichOneof("event") for r in responses] == ["progress", "result"]
    assert responses[-1].result.files_after == 1


async def test_health_and_reflection_are_open_when_every_scope_needs_a_token() -> None:
    async with _Served(_auth(read=(READ_TOKEN,), require_read_token=True)) as served:
        health = await health_pb2_grpc.HealthStub(served.channel).Check(
            health_pb2.HealthCheckRequest(service=WRITER), timeout=CALL_TIMEOUT
        )
        reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=CALL_TIMEOUT
        )
        listed = [response async for response in reflection]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    services = {s.name for s in listed[0].list_services_response.service}
    assert {WRITER, "grpc.health.v1.Health"} <= services


async def test_tokens_never_appear_in_logs_or_errors(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    async with _Served(_auth(read=(READ_TOKEN,))) as served:
        errors = [
            await _refusal(_flush(served, WRONG_TOKEN)),
            await _refusal(_flush(served, READ_TOKEN)),
            await _refusal(_status(served, WRONG_TOKEN)),
            await _refusal(_compact(served, READ_TOKEN)),
        ]
        await _flush(served, WRITE_TOKEN)
        await _status(served, READ_TOKEN)
    captured = capfd.readouterr()
    for token in (WRITE_TOKEN, READ_TOKEN, WRONG_TOKEN):
        assert token not in caplog.text
        assert token not in captured.out and token not in captured.err
        for error in errors:
            assert token not in error.details()
