"""OpenTelemetry tracing (configured by the standard OTEL_* variables), trace context in Kafka headers, logging
and the Prometheus metrics endpoint.

Tracing exports over OTLP only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set; otherwise spans
are still created (so trace context still flows through Kafka) but nothing is exported. Without OTEL_TRACES_SAMPLER
the sampler is parent-based 1% ratio sampling, so full-rate streams stay fast. What a process set up is kept in
`tracing_setup()`, which every service reports over k2.telemetry.v1.TelemetryService/GetTracing.

Consumers of Kafka messages (writer, query) make one span per distinct SAMPLED trace context in a consumed batch,
not one per message: `sampled_message_traces` finds them, costing one header scan per message, and skips
unsampled contexts without parsing them (their spans would not be recorded anyway under parent-based sampling).
"""

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from prometheus_client import start_http_server

DEFAULT_SAMPLER = "parentbased_traceidratio"
DEFAULT_SAMPLE_RATIO = 0.01
# OTEL_TRACES_SAMPLER's standard names: those without an argument (with the share of new traces they sample), and
# the ratio samplers (OTEL_TRACES_SAMPLER_ARG, default DEFAULT_SAMPLE_RATIO).
FIXED_SAMPLERS: dict[str, tuple[Sampler, float]] = {
    "always_on": (ALWAYS_ON, 1.0),
    "always_off": (ALWAYS_OFF, 0.0),
    "parentbased_always_on": (DEFAULT_ON, 1.0),
    "parentbased_always_off": (DEFAULT_OFF, 0.0),
}
RATIO_SAMPLERS: dict[str, Callable[[float], Sampler]] = {
    "traceidratio": TraceIdRatioBased,
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}
# Messages of one send whose ids become events of its span (searchable in Jaeger): every message of the feed's and
# the file loader's batches (5000 by default); bounds a sampled span's size (~625 kB in OTLP).
MAX_MESSAGE_EVENTS = 5000
MESSAGE_ID = "messaging.message.id"
TRACEPARENT = "traceparent"
# W3C traceparent "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>": the sampled flag is bit 0 of the flags,
# i.e. the last hex digit is odd.
_TRACEPARENT_LENGTH = 55
_ODD_HEX_DIGITS = frozenset(b"13579bdf")
_provider: TracerProvider | None = None
_setup: "TracingSetup | None" = None


@dataclass(frozen=True)
class TracingSetup:
    """Where a process's traces go and which of them it samples."""

    service_name: str
    otlp_endpoint: str  # "" when spans are not exported
    sampler: str  # in OTEL_TRACES_SAMPLER's terms
    sample_ratio: float  # share of new traces (no caller's decision) sampled


def configured_sampler() -> tuple[str, float, Sampler]:
    """(name, share of new traces sampled, sampler) from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG. A name or
    ratio that is not valid is an error: a service must not start with a sampling other than the one asked for."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    if name in FIXED_SAMPLERS:
        sampler, ratio = FIXED_SAMPLERS[name]
        return name, ratio, sampler
    if name not in RATIO_SAMPLERS:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER: unknown sampler {name!r}; one of "
            f"{', '.join([*FIXED_SAMPLERS, *RATIO_SAMPLERS])}"
        )
    argument = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(argument) if argument else DEFAULT_SAMPLE_RATIO
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: not a ratio: {argument!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: {argument} is not a ratio between 0 and 1")
    return name, ratio, RATIO_SAMPLERS[name](ratio)


def otlp_endpoint() -> str:
    """The endpoint the OTLP/gRPC span exporter uses, by the standard variables' precedence; "" when unset."""
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or ""
    ).strip()


def setup_tracing(service: str) -> TracerProvider:
    """Installs the global tracer provider once per process; OTEL_SERVICE_NAME overrides `service`."""
    global _provider, _setup
    if _provider is not None:
        return _provider
    service_name = os.environ.get("OTEL_SERVICE_NAME") or service
    resource = Resource.create({"service.name": service_name, "service.namespace": "k2"})
    sampler_name, ratio, sampler = configured_sampler()
    # Room for the message events of a send (and an exception's), unless set by the standard variable.
    limits = SpanLimits(
        max_events=None if os.environ.get("OTEL_SPAN_EVENT_COUNT_LIMIT") else MAX_MESSAGE_EVENTS + 8
    )
    provider = TracerProvider(resource=resource, sampler=sampler, span_limits=limits)
    endpoint = otlp_endpoint()
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _setup = TracingSetup(service_name, endpoint, sampler_name, ratio)
    return provider


def tracing_setup() -> TracingSetup:
    """What setup_tracing installed in this process."""
    if _setup is None:
        raise RuntimeError("setup_tracing() has not run in this process")
    return _setup


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


def sampled_message_traces(
    headers: Iterable[Sequence[tuple[str, bytes | None]] | None],
) -> list[MessageTrace]:
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


def messaging_span(
    tracer: Tracer,
    name: str,
    parent: MessageTrace,
    *,
    operation: str,
    topic: str,
    partition: int,
    offset: int,
    group: str | None = None,
    operation_type: str = "process",
) -> Span:
    """A CONSUMER span for the messages of one trace context, a CHILD of the producer's span (so the trace
    continues across Kafka), with the messaging semantic-convention attributes. partition/offset are those of the
    first message of the context in the batch; messaging.batch.message_count says how many it covers."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.destination.partition": partition,
        "messaging.kafka.offset": offset,
        "messaging.batch.message_count": parent.count,
    }
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    return tracer.start_span(name, context=parent.context, kind=SpanKind.CONSUMER, attributes=attributes)


def add_message_events(span: Span, ids: Iterable[tuple[str, str]], record_id_attribute: str) -> None:
    """Up to MAX_MESSAGE_EVENTS events "message" on a recording span, each naming one message (its message_id and
    record id), so a search by either id finds the trace; `k2.message_events` says how many it names."""
    events = 0
    for message_id, record_id in ids:
        if events == MAX_MESSAGE_EVENTS:
            break
        span.add_event("message", {MESSAGE_ID: message_id, record_id_attribute: record_id})
        events += 1
    span.set_attribute("k2.message_events", events)


def links_to(traces: Iterable[MessageTrace]) -> list[Link]:
    """Links to the producers' spans of messages a span covers (e.g. a commit of many batches)."""
    return [Link(found.span_context) for found in traces]


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("K2_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def start_metrics_server(host: str, port: int) -> None:
    """Prometheus /metrics on host:port (0 disables it)."""
    if port:
        start_http_server(port, addr=host)
