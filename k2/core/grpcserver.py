"""Serving a K2 gRPC service: interceptors (tracing, token auth, limits, unexpected errors, malformed requests),
the library health servicer with per-service status, where the service's traces go
(k2.telemetry.v1.TelemetryService), server reflection, TLS/mTLS, the metrics endpoint; and the one lifecycle of
the three services (Service: start, ready, drain, stop), run as a process by `run` until SIGTERM/SIGINT (health
NOT_SERVING → stop accepting → in-flight calls drain for the grace period → the service's own cleanup → traces
flushed → exit 0)."""

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from k2.core.auth import OPEN_PREFIXES, TokenAuthInterceptor
from k2.core.config import AuthSettings, ServerSettings, is_loopback_host
from k2.core.limits import LimitsInterceptor
from k2.core.telemetry import (
    setup_logging,
    setup_tracing,
    shutdown_tracing,
    start_metrics_server,
    tracing_setup,
)
from k2.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

log = logging.getLogger(__name__)
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
TELEMETRY_SERVICE = telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    # A half-configured TLS must fail at start, not quietly serve plaintext.
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        if settings.tls_client_ca_file is not None:
            raise ValueError("tls_client_ca_file (mTLS) needs TLS: set tls_cert_file and tls_key_file")
        if not (settings.allow_plaintext or is_loopback_host(settings.host)):
            raise ValueError(
                f"refusing plaintext gRPC on {settings.host}: set a TLS certificate and key, "
                "or allow_plaintext for a private network"
            )
        return None
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _traced(untraced_methods: Collection[str]) -> Callable[[object], bool]:
    # Health probes, the tracing set-up and reflection are never traced: they are noise, and the aio interceptor
    # cannot wrap Health/Watch (its handler writes through context.write instead of yielding), failing every Watch.
    return filters.negate(
        filters.any_of(
            filters.health_check(),
            filters.service_prefix("grpc.reflection."),
            filters.service_prefix(TELEMETRY_SERVICE),
            *(filters.full_method_name(m) for m in untraced_methods),
        )
    )


class TelemetryServicer(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Where this process's traces go: what setup_tracing installed."""

    async def GetTracing(
        self, request: telemetry_pb2.GetTracingRequest, context: grpc.aio.ServicerContext
    ) -> telemetry_pb2.GetTracingResponse:
        setup = tracing_setup()
        return telemetry_pb2.GetTracingResponse(
            service_name=setup.service_name,
            otlp_endpoint=setup.otlp_endpoint,
            sampler=setup.sampler,
            sample_ratio=setup.sample_ratio,
        )


class MalformedRequest(Exception):
    """A request that is not a valid protobuf of its method's type; says why."""


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """A request that is not a valid protobuf of its method's type is answered INVALID_ARGUMENT with the parser's
    reason; left to the library, it becomes UNKNOWN ("Unexpected DecodeError"), which reads like a server fault."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_deserializer is None
            or handler_call_details.method.startswith(OPEN_PREFIXES)
        ):  # type: ignore[attr-defined]
            return handler
        deserialize = handler.request_deserializer

        def parse(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError as error:
                raise MalformedRequest(f"request: not a valid protobuf message: {error}") from None

        async def parsed(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return parse(data)
            except MalformedRequest as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        async def parsed_stream(datas: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            # Raises rather than aborts: a handler may read its requests from another task (PublishTrades does,
            # to pipeline), and an abort from there races the handler's own writes (the call then hangs). The
            # exception reaches the handler, which answers what came before; the abort is sent from its task.
            async for data in datas:
                yield parse(data)

        serialize = handler.response_serializer
        if handler.request_streaming and handler.response_streaming:

            async def stream_stream(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for response in handler.stream_stream(parsed_stream(requests), context):
                        yield response
                except MalformedRequest as error:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

            return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)
        if handler.request_streaming:

            async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await handler.stream_unary(parsed_stream(requests), context)
                except MalformedRequest as error:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
        if handler.response_streaming:

            async def unary_stream(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for response in handler.unary_stream(await parsed(data, context), context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)

        async def unary_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await handler.unary_unary(await parsed(data, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)


INTERNAL_ERROR = "internal error; the server logged its details"


class UnexpectedErrorInterceptor(grpc.aio.ServerInterceptor):
    """An exception a handler did not expect ends its call with INTERNAL and a generic message; the details (the
    exception and its stack) are logged here, for the operator. Left to the library, the call would end UNKNOWN
    with the exception's text, which can name the server's files and reads like the client's own fault."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        options: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        async def internal(context: grpc.aio.ServicerContext) -> None:
            log.exception("%s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)

        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

            async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.BaseError:  # the library's own: an abort, or a call that has already ended
                    raise
                except Exception:  # noqa: BLE001 - any: the client gets INTERNAL, the log the details
                    await internal(context)

            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(guarded_stream, **options)

        unary = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await unary(request, context)
            except grpc.aio.BaseError:  # the library's own: an abort, or a call that has already ended
                raise
            except Exception:  # noqa: BLE001 - any: the client gets INTERNAL, the log the details
                await internal(context)

        make_unary = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make_unary(guarded, **options)


class GrpcServer:
    def __init__(
        self,
        service: str,
        settings: ServerSettings,
        auth: AuthSettings,
        untraced_methods: Collection[str] = (),
    ):
        """untraced_methods: full names ("/k2.query.v1.QueryService/SubscribeTrades") served without a span: endless
        streams, whose span would never end usefully and which the OpenTelemetry aio interceptor cannot close
        cleanly when the client goes away (it logs "Failed to detach context" for every such stream)."""
        setup_tracing(service)
        self.service = service
        self.settings = settings
        self.health = health_aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[
                aio_server_interceptor(filter_=_traced(untraced_methods)),
                TokenAuthInterceptor(auth),
                LimitsInterceptor(settings),
                UnexpectedErrorInterceptor(),
                MalformedRequestInterceptor(),
            ],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        self.service_names: list[str] = []
        self.port = 0
        self.serving = False

    def add(
        self, add_to_server: Callable[[object, grpc.aio.Server], None], servicer: object, full_name: str
    ) -> None:
        """Registers a servicer, e.g. add(add_IngestServiceServicer_to_server, servicer, "k2.ingest.v1.IngestService")."""
        add_to_server(servicer, self.server)
        self.service_names.append(full_name)

    async def set_serving(self, serving: bool) -> None:
        """Per-service health, e.g. NOT_SERVING while a dependency such as Kafka is unreachable."""
        self.serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def start(self) -> int:
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(TelemetryServicer(), self.server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                TELEMETRY_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        await self.server.start()
        start_metrics_server(self.settings.host, self.settings.metrics_port)
        await self.set_serving(True)
        log.info(
            "%s serving gRPC on %s:%d (%s), metrics on %s",
            self.service,
            self.settings.host,
            self.port,
            "TLS" if credentials else "plaintext",
            self.settings.metrics_port or "off",
        )
        return self.port

    async def stop(self) -> None:
        self.serving = False
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds)


class Service:
    """The lifecycle every K2 service has (ingest, writer, query), each filling in its hooks:

    - start(): prepare (set-up before serving: topics, tables) → serve gRPC (health SERVING) → start_work (feeds,
      consume loops, the fan-out); returns the bound port.
    - wait_ready(): until health says SERVING (its Kafka dependency reached, where a service follows one).
    - stop(): drain (ends what would otherwise outlive the grace period: live subscriptions) → health NOT_SERVING,
      no new calls, in-flight calls get the grace period → close (the service's own cleanup: flush, commit).

    Tests start a service in-process on port 0; `run` serves one as a process."""

    # The process's young-generation collection thresholds (gc.set_threshold) under `run`; None: Python's.
    gc_thresholds: tuple[int, int, int] | None = None

    def __init__(
        self, name: str, settings: ServerSettings, auth: AuthSettings, untraced_methods: Collection[str] = ()
    ):
        """name: the service's name in traces, metrics and logs ("ingest"); untraced_methods as GrpcServer's."""
        self.grpc = GrpcServer(name, settings, auth, untraced_methods)

    @property
    def port(self) -> int:
        return self.grpc.port

    async def prepare(self) -> None:
        """Set-up before serving."""

    async def start_work(self) -> None:
        """The service's own work, started once gRPC serves."""

    async def drain(self) -> None:
        """Before gRPC stops accepting calls."""

    async def close(self) -> None:
        """After the last call ended."""

    async def start(self) -> int:
        await self.prepare()
        port = await self.grpc.start()
        await self.start_work()
        return port

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.grpc.serving:
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        await self.drain()
        await self.grpc.stop()
        await self.close()


def run(make_service: Callable[[], Service]) -> None:
    """`python -m k2.services.<name>`: serves the service that make_service builds until SIGTERM/SIGINT, then stops
    it gracefully and flushes its traces (exit 0)."""
    setup_logging()
    asyncio.run(_serve_until_signalled(make_service))


async def _serve_until_signalled(make_service: Callable[[], Service]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = make_service()  # in the event loop: the gRPC server belongs to the loop it is created in
    if service.gc_thresholds is not None:
        gc.set_threshold(*service.gc_thresholds)
    await service.start()
    # What start-up created (modules, schemas, catalogs, clients) lives as long as the process: frozen, the
    # collector skips it, so collections on the live path stay short.
    gc.collect()
    gc.freeze()
    await stop.wait()
    log.info("%s: shutting down (grace %.0f s)", service.grpc.service, service.grpc.settings.grace_seconds)
    await service.stop()
    shutdown_tracing()  # the spans still batched for export
