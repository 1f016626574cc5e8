"""TLS and mTLS of k2.core.grpcserver.GrpcServer, with a throwaway CA made by the openssl CLI: server
authentication with the CA, plaintext clients refused by a TLS server, client certificates required under
mTLS, and plaintext refused on a non-loopback address unless allow_plaintext is set. Calls go to the health
service, which every GrpcServer registers."""

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import SettingsConfigDict

from k2.core.config import AuthSettings, ServerSettings
from k2.core.grpcserver import GrpcServer

CALL_TIMEOUT = 5.0


class _ServerSettings(ServerSettings):
    # A prefix nothing sets, so stray HOST/PORT variables of the environment cannot leak into these tests.
    model_config = SettingsConfigDict(env_prefix="K2_TEST_TLS_UNUSED_", extra="ignore")


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # Signed by another CA: a server or client of the real CA must not trust it.
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "1",
        "-subj",
        f"/CN=K2 test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return cert, key


def _make_leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, request = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    extensions_file = directory / f"{name}.ext"
    extensions_file.write_text(extensions + "basicConstraints=critical,CA:FALSE\n")
    _openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        request,
        "-subj",
        f"/CN={name}",
    )
    serial = subprocess.run(["openssl", "rand", "-hex", "16"], check=True, capture_output=True, text=True)
    _openssl(
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-set_serial",
        f"0x{serial.stdout.strip()}",
        "-days",
        "1",
        "-extfile",
        extensions_file,
        "-out",
        cert,
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _make_ca(directory, "ca")
    other_ca = _make_ca(directory, "other-ca")
    server = _make_leaf(
        directory, "server", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    client = _make_leaf(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    stranger = _make_leaf(
        directory,
        "stranger",
        other_ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    return Pki(
        ca_cert=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        stranger_cert=stranger[0],
        stranger_key=stranger[1],
    )


def _tls_settings(pki: Pki, *, mutual: bool = False) -> _ServerSettings:
    return _ServerSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca_cert if mutual else None,
        allow_plaintext=False,
        grace_seconds=0.5,
    )


def _plaintext_settings(host: str, *, allow_plaintext: bool) -> _ServerSettings:
    return _ServerSettings(
        host=host, port=0, metrics_port=0, allow_plaintext=allow_plaintext, grace_seconds=0.5
    )


def _auth() -> AuthSettings:
    return AuthSettings(write_tokens=[], read_tokens=[], token_file=None, require_read_token=False)


async def _started(settings: _ServerSettings) -> GrpcServer:
    server = GrpcServer("tls-test", settings, _auth())
    await server.start()
    return server


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[GrpcServer]:
    server = await _started(_tls_settings(pki))
    yield server
    await server.stop()


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[GrpcServer]:
    server = await _started(_tls_settings(pki, mutual=True))
    yield server
    await server.stop()


def _credentials(
    pki: Pki, *, root: Path | None = None, client: tuple[Path, Path] | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(root or pki.ca_cert).read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )


async def _health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
    )
    return int(response.status)


async def _secure_health(port: int, credentials: grpc.ChannelCredentials, host: str = "127.0.0.1") -> int:
    async with grpc.aio.secure_channel(f"{host}:{port}", credentials) as channel:
        return await _health(channel)


async def _plaintext_health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await _health(channel)


SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_tls_client_trusting_the_ca_is_served(tls_server: GrpcServer, pki: Pki) -> None:
    assert await _secure_health(tls_server.port, _credentials(pki)) == SERVING
    # The certificate names both localhost and 127.0.0.1.
    assert await _secure_health(tls_server.port, _credentials(pki), host="localhost") == SERVING


async def test_plaintext_client_to_tls_server_fails(tls_server: GrpcServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _plaintext_health(tls_server.port)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_not_trusting_the_servers_ca_fails(tls_server: GrpcServer, pki: Pki) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _secure_health(tls_server.port, _credentials(pki, root=pki.stranger_cert))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_client_without_a_certificate(mtls_server: GrpcServer, pki: Pki) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _secure_health(mtls_server.port, _credentials(pki))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_certificate_of_another_ca(mtls_server: GrpcServer, pki: Pki) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        credentials = _credentials(pki, client=(pki.stranger_cert, pki.stranger_key))
        await _secure_health(mtls_server.port, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_serves_a_client_with_a_certificate_of_the_ca(mtls_server: GrpcServer, pki: Pki) -> None:
    credentials = _credentials(pki, client=(pki.client_cert, pki.client_key))
    assert await _secure_health(mtls_server.port, credentials) == SERVING


async def test_plaintext_on_a_non_loopback_address_is_refused_at_start() -> None:
    settings = _plaintext_settings("0.0.0.0", allow_plaintext=False)
    server = GrpcServer("tls-test", settings, _auth())
    with pytest.raises(ValueError, match="refusing plaintext gRPC on 0.0.0.0"):
        await server.start()


async def test_plaintext_on_a_non_loopback_address_with_allow_plaintext_serves() -> None:
    settings = _plaintext_settings("0.0.0.0", allow_plaintext=True)
    server = GrpcServer("tls-test", settings, _auth())
    await server.start()
    try:
        assert await _plaintext_health(server.port) == SERVING
    finally:
        await server.stop()


async def test_plaintext_on_loopback_is_served_without_allow_plaintext() -> None:
    settings = _plaintext_settings("127.0.0.1", allow_plaintext=False)
    server = GrpcServer("tls-test", settings, _auth())
    await server.start()
    try:
        assert await _plaintext_health(server.port) == SERVING
    finally:
        await server.stop()


@pytest.mark.parametrize("missing", ["tls_cert_file", "tls_key_file"])
async def test_a_certificate_without_its_key_or_the_reverse_is_refused_at_start(
    pki: Pki, missing: str
) -> None:
    settings = _tls_settings(pki).model_copy(update={missing: None})
    with pytest.raises(ValueError, match="TLS needs both tls_cert_file and tls_key_file"):
        await GrpcServer("tls-test", settings, _auth()).start()


async def test_client_ca_without_tls_is_refused_at_start(pki: Pki) -> None:
    # Even where plaintext is allowed: mTLS asked for must not silently become plaintext without client checks.
    settings = _plaintext_settings("0.0.0.0", allow_plaintext=True).model_copy(
        update={"tls_client_ca_file": pki.ca_cert}
    )
    with pytest.raises(ValueError, match="tls_client_ca_file"):
        await GrpcServer("tls-test", settings, _auth()).start()
