"""A trade's trace from Jaeger, drawn in the terminal (`k2 trace`).

Jaeger's HTTP/JSON query API (the one its UI reads) finds traces by a span's attribute or an event's field
(`/api/traces?service=...&tags={...}`) and returns one by id (`/api/traces/<id>`). Ingest's send spans name every
message they sent in an event ("message": messaging.message.id with k2.trade_id or k2.quote_id), so a sampled
trade's trace is found by its trade_id or its message_id.
"""

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from rich.console import Group
from rich.text import Text

MESSAGE_ID = "messaging.message.id"
TRADE_ID = "k2.trade_id"
TRACE_ID = re.compile(r"^(?:[0-9a-f]{16}|[0-9a-f]{32})$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_TRACES = 20  # traces one search asks Jaeger for
MIN_BAR_WIDTH, MAX_BAR_WIDTH = 10, 60
SERVICE_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "red")
# Attributes worth a glance in the waterfall, in this order, with their label.
DETAILS = (
    ("k2.batch.items", "items"),
    ("messaging.batch.message_count", "messages"),
    ("messaging.kafka.destination.partition", "partition"),
    ("messaging.kafka.offset", "offset"),
    ("k2.rows", "rows"),
    ("k2.snapshot_id", "snapshot"),
    ("k2.subscribers", "subscribers"),
)


class JaegerUnavailable(Exception):
    """Jaeger's query API did not answer (or not as Jaeger does)."""


@dataclass(frozen=True)
class TraceSpan:
    span_id: str
    parent_id: str | None  # its CHILD_OF parent, when that span is in the trace
    service: str
    operation: str
    start_us: int  # epoch microseconds
    duration_us: int
    attributes: dict[str, Any]
    event_fields: list[dict[str, Any]]
    links: int  # FOLLOWS_FROM references (spans this one links to)

    def names(self, key: str, value: str) -> bool:
        """Whether the span's attributes or one of its events carry key=value."""
        return str(self.attributes.get(key)) == value or any(
            str(fields.get(key)) == value for fields in self.event_fields
        )


@dataclass(frozen=True)
class Trace:
    trace_id: str
    spans: list[TraceSpan] = field(default_factory=list)

    @property
    def start_us(self) -> int:
        return min(span.start_us for span in self.spans)

    @property
    def end_us(self) -> int:
        return max(span.start_us + span.duration_us for span in self.spans)

    def tree(self) -> Iterator[tuple[str, str, TraceSpan]]:
        """(guide, guide below, span) depth first, children (and roots) in start order; a span whose parent is not
        in the trace (the caller's, say) is a root. The guide draws the span's place under its parent ("│ ├ "),
        the guide below continues the lines past it, for text under the span's own line."""
        children: dict[str | None, list[TraceSpan]] = {}
        for span in self.spans:
            children.setdefault(span.parent_id, []).append(span)

        def walk(parent: str | None, indent: str) -> Iterator[tuple[str, str, TraceSpan]]:
            ordered = sorted(children.get(parent, []), key=lambda s: (s.start_us, s.operation))
            for index, span in enumerate(ordered):
                last = index == len(ordered) - 1
                guide, inner = (
                    ("", "")
                    if parent is None
                    else (indent + ("└ " if last else "├ "), indent + ("  " if last else "│ "))
                )
                yield guide, inner + ("│ " if span.span_id in children else "  "), span
                yield from walk(span.span_id, inner)

        return walk(None, "")


def trace_from_json(data: dict[str, Any]) -> Trace:
    """One trace of Jaeger's JSON API ({traceID, spans, processes})."""
    services = {key: process["serviceName"] for key, process in data.get("processes", {}).items()}
    ids = {span["spanID"] for span in data["spans"]}
    spans = []
    for span in data["spans"]:
        references = span.get("references") or []
        parents = [
            ref["spanID"] for ref in references if ref["refType"] == "CHILD_OF" and ref["spanID"] in ids
        ]
        spans.append(
            TraceSpan(
                span["spanID"],
                parents[0] if parents else None,
                services.get(span["processID"], "?"),
                span["operationName"],
                span["startTime"],
                span["duration"],
                {tag["key"]: tag["value"] for tag in span.get("tags") or []},
                [{f["key"]: f["value"] for f in log.get("fields") or []} for log in span.get("logs") or []],
                sum(1 for ref in references if ref["refType"] == "FOLLOWS_FROM"),
            )
        )
    return Trace(data["traceID"], spans)


class Jaeger:
    """Jaeger's query API at `url` (e.g. http://127.0.0.1:16686); each request bounded by `timeout` seconds."""

    def __init__(self, url: str, timeout: float):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        """The answer's JSON; None for 404 (no such trace)."""
        url = self.url + path + (f"?{urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise JaegerUnavailable(
                f"Jaeger at {self.url} answered HTTP {error.code}: "
                f"{error.read(500).decode(errors='replace').strip()}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise JaegerUnavailable(f"Jaeger at {self.url} is not reachable: {reason}") from None
        except ValueError as error:  # not JSON: something else listens there
            raise JaegerUnavailable(f"{url} did not answer as Jaeger's query API: {error}") from None

    def trace(self, trace_id: str) -> Trace | None:
        answer = self._get(f"/api/traces/{quote(trace_id)}")
        data = (answer or {}).get("data") or []
        return trace_from_json(data[0]) if data else None

    def search(self, service: str, attributes: dict[str, str], start: datetime, end: datetime) -> list[Trace]:
        """Traces with a span of `service` carrying every attribute (or event field) given, newest first."""
        answer = self._get(
            "/api/traces",
            {
                "service": service,
                "tags": json.dumps(attributes),
                "limit": str(MAX_TRACES),
                "start": str(int(start.timestamp() * 1_000_000)),
                "end": str(int(end.timestamp() * 1_000_000)),
            },
        )
        traces = [trace_from_json(data) for data in (answer or {}).get("data") or [] if data.get("spans")]
        return sorted(traces, key=lambda found: found.start_us, reverse=True)


def find_traces(
    jaeger: Jaeger, identifier: str, service: str, start: datetime, end: datetime
) -> tuple[str, list[Trace]]:
    """(what the identifier was taken for, the traces found, newest first). A trace id is fetched as such; a UUID
    is looked up as a message_id, then as a trade_id; anything else as a trade_id."""
    identifier = identifier.strip()
    if TRACE_ID.match(identifier.lower()):
        found = jaeger.trace(identifier.lower())
        if found is not None:
            return "trace id", [found]
    keys = ([MESSAGE_ID] if UUID.match(identifier.lower()) else []) + [TRADE_ID]
    for key in keys:
        traces = jaeger.search(
            service, {key: identifier.lower() if key == MESSAGE_ID else identifier}, start, end
        )
        if traces:
            return key, traces
    return keys[-1], []


def _milliseconds(microseconds: int) -> str:
    return f"{microseconds / 1000:,.3f}"


def _bar(start: int, duration: int, total: int, width: int, style: str) -> Text:
    """The span's place in the trace: `width` columns for the whole trace, at least one for a span."""
    scale = width / max(total, 1)
    left = min(width - 1, int(start * scale))
    length = max(1, min(width - left, round(duration * scale)))
    return Text(" " * left) + Text("█" * length, style=style)


def _details(span: TraceSpan, marked: tuple[str, str] | None) -> str:
    details = [f"{label} {span.attributes[key]}" for key, label in DETAILS if key in span.attributes]
    if span.links:
        details.append(f"links {span.links}")
    if span.attributes.get("error") is True or span.attributes.get("otel.status_code") == "ERROR":
        details.append(f"ERROR {span.attributes.get('otel.status_description', '')}".rstrip())
    if marked is not None and span.names(*marked):
        details.insert(0, "◀ this message")
    return ", ".join(details)


def waterfall(found: Trace, marked: tuple[str, str] | None = None, width: int = 120) -> Group:
    """The trace in lines for a terminal `width` columns wide: a line per span, indented under its parent, with its
    service, start offset and duration in milliseconds and a bar of where it lies in the trace, then a dim line
    of a few of its attributes. `marked` (key, value): the spans naming the message looked up are marked."""
    start, total = found.start_us, found.end_us - found.start_us
    services = sorted({span.service for span in found.spans})
    styles = {service: SERVICE_STYLES[index % len(SERVICE_STYLES)] for index, service in enumerate(services)}
    rows = [(guide + span.operation, below, span) for guide, below, span in found.tree()]
    name_width = max(len("span"), *(len(name) for name, _, _ in rows))
    service_width = max(len("service"), *map(len, services))
    number_width = max(
        len("duration ms"),
        *(
            len(_milliseconds(value))
            for _, _, span in rows
            for value in (span.start_us - start, span.duration_us)
        ),
    )
    # The bar gets what the other columns (each two spaces apart) leave of the terminal.
    bar_width = max(
        MIN_BAR_WIDTH, min(MAX_BAR_WIDTH, width - name_width - service_width - 2 * number_width - 8)
    )
    lines = [
        Text(f"Trace {found.trace_id}: {len(found.spans)} spans, {_milliseconds(total)} ms", style="bold"),
        Text(
            f"{'span':<{name_width}}  {'service':<{service_width}}  {'start ms':>{number_width}}  "
            f"{'duration ms':>{number_width}}",
            style="bold",
        ),
    ]
    for name, below, span in rows:
        style = styles[span.service]
        line = Text(f"{name:<{name_width}}  ")
        line.append(f"{span.service:<{service_width}}", style=style)
        line.append(
            f"  {_milliseconds(span.start_us - start):>{number_width}}  "
            f"{_milliseconds(span.duration_us):>{number_width}}  "
        )
        line.append_text(_bar(span.start_us - start, span.duration_us, total, bar_width, style))
        lines.append(line)
        details = _details(span, marked)
        if details:
            lines.append(Text(below + details, style="dim"))
    return Group(*lines)
