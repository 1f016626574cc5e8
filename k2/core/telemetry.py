"""OpenTelemetry tracing (configured by the standard OTEL_* variables), trace context in Kafka headers, logging
and the Prometheus metrics endpoint.

Tracing exports over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set; otherwise spans
are still created (so trace context still flows through Kafka) but nothing is exported. Without OTEL_TRACES_SAMPLER
the sampler is parent-based 1% ratio sampling, so full-rate streams stay fast.

Consumers of Kafka messages (writer, query) make one span per distinct SAMPLED trace context in a consumed batch,
not one per message: `sampled_message_traces` finds them, costing one header scan per message, and skips
unsampled contexts without parsing them (their spans would not be recorded anyway under parent-based sampling).
"""

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from prometheus_client import start_http_server

DEFAULT_SAMPLE_RATIO = 0.01
TRACEPARENT = "traceparent"
# W3C traceparent "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>": the sampled flag is bit 0 of the flags,
# i.e. the last hex digit is odd.
_TRACEPARENT_LENGTH = 55
_ODD_HEX_DIGITS = frozenset(b"13579bdf")
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


def context_from_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> Context:
    carrier = {key: value for key, value in headers or () if value is not None}
    return propagate.extract(carrier, getter=_HeaderGetter())  # type: ignore[arg-type]


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context (traceparent, baggage) from gRPC invocation metadata."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)


def is_sampled(traceparent: bytes) -> bool:
    """Whether a traceparent header value carries the sampled flag (without parsing the rest)."""
    return len(traceparent) >= _TRACEPARENT_LENGTH and traceparent[_TRACEPARENT_LENGTH - 1] in _ODD_HEX_DIGITS


@dataclass
class MessageTrace:
    """One distinct sampled trace context among a batch of messages: the producer's context (with its baggage),
    the first message that carries it and how many do."""

    context: Context
    first: int
    count: int

    @property
    def span_context(self) -> trace.SpanContext:
        return trace.get_current_span(self.context).get_span_context()


def _traceparent(headers: Sequence[tuple[str, bytes | None]]) -> bytes | None:
    for key, value in headers:
        if key == TRACEPARENT:
            return value
    return None


def sampled_message_traces(headers: Iterable[Sequence[tuple[str, bytes | None]] | None]) -> list[MessageTrace]:
    """The distinct sampled trace contexts of a batch of messages (each message's Kafka headers, in batch order),
    in order of first appearance. A batch published together shares one context, so this is usually one entry
    per producer batch, and none at all for unsampled traffic."""
    traces: dict[bytes, MessageTrace | None] = {}  # traceparent → its entry, None when unsampled
    for index, message_headers in enumerate(headers):
        value = _traceparent(message_headers) if message_headers else None
        if value is None:
            continue
        if value in traces:
            found = traces[value]
            if found is not None:
                found.count += 1
        elif is_sampled(value):
            traces[value] = MessageTrace(context_from_headers(message_headers), index, 1)
        else:
            traces[value] = None
    return [found for found in traces.values() if found is not None]


def messaging_span(tracer: Tracer, name: str, parent: MessageTrace, *, operation: str, topic: str, partition: int,
                   offset: int, group: str | None = None, operation_type: str = "process") -> Span:
    """A CONSUMER span for the messages of one trace context, a CHILD of the producer's span (so the trace
    continues across Kafka), with the messaging semantic-convention attributes. partition/offset are those of the
    first message of the context in the batch; messaging.batch.message_count says how many it covers."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka", "messaging.operation.type": operation_type,
        "messaging.operation.name": operation, "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition), "messaging.kafka.destination.partition": partition,
        "messaging.kafka.offset": offset, "messaging.batch.message_count": parent.count}
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    return tracer.start_span(name, context=parent.context, kind=SpanKind.CONSUMER, attributes=attributes)


def links_to(traces: Iterable[MessageTrace]) -> list[Link]:
    """Links to the producers' spans of messages a span covers (e.g. a commit of many batches)."""
    return [Link(found.span_context) for found in traces]


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("K2_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def start_metrics_server(host: str, port: int) -> None:
    """Prometheus /metrics on host:port (0 disables it)."""
    if port:
        start_http_server(port, addr=host)
