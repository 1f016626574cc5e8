"""OpenTelemetry tracing (configured by the standard OTEL_* variables), trace context in Kafka headers, logging
and the Prometheus metrics endpoint.

Tracing exports over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set; otherwise spans
are still created (so trace context still flows through Kafka) but nothing is exported. Without OTEL_TRACES_SAMPLER
the sampler is parent-based 1% ratio sampling, so full-rate streams stay fast.
"""

import logging
import os
from collections.abc import Iterable

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from prometheus_client import start_http_server

DEFAULT_SAMPLE_RATIO = 0.01
_provider: TracerProvider | None = None


def setup_tracing(service: str) -> TracerProvider:
    """Installs the global tracer provider once per process; OTEL_SERVICE_NAME overrides `service`."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service),
                                "service.namespace": "k2"})
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBasedTraceIdRatio(DEFAULT_SAMPLE_RATIO)
    provider = TracerProvider(resource=resource, sampler=sampler)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


class _HeaderSetter:
    def set(self, carrier: list[tuple[str, bytes]], key: str, value: str) -> None:
        carrier.append((key, value.encode()))


class _HeaderGetter:
    def get(self, carrier: dict[str, bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value.decode(errors="replace")]

    def keys(self, carrier: dict[str, bytes]) -> list[str]:
        return list(carrier)


def trace_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """W3C traceparent/tracestate and baggage of the current (or given) context, as Kafka record headers."""
    headers: list[tuple[str, bytes]] = []
    propagate.inject(headers, context=context, setter=_HeaderSetter())  # type: ignore[arg-type]
    return headers


def context_from_headers(headers: Iterable[tuple[str, bytes]] | None) -> Context:
    carrier = {key: value for key, value in headers or () if value is not None}
    return propagate.extract(carrier, getter=_HeaderGetter())  # type: ignore[arg-type]


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("K2_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def start_metrics_server(host: str, port: int) -> None:
    """Prometheus /metrics on host:port (0 disables it)."""
    if port:
        start_http_server(port, addr=host)
