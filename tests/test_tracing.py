"""End-to-end tracing against a real Jaeger v2 (scripts/jaeger.sh, built from source by scripts/tools.sh): the three
services run as processes (each its own TracerProvider and service.name) exporting OTLP to it with every trace
sampled, and the trace of one published batch is read back through Jaeger's HTTP API.

Asserted, by walking the spans' CHILD_OF references: client context → ingest publish (SERVER) → Kafka send
(PRODUCER, naming each message in an event) → writer process (CONSUMER) → Iceberg commit, and send → query deliver
(CONSUMER), with the messaging semantic-convention attributes; the commit's links (FOLLOWS_FROM) lead to the
producer; two trades committed together each have the commit in their own trace; the records' headers carry the W3C
traceparent and baggage; a LoadFiles call's sends are its children; the Binance feed (against the replay exchange)
starts a trace per batch that the writer continues. `k2 trace` finds a trade's trace by its ids and draws it,
`k2 status` shows where each service's traces go, and scripts/jaeger.sh serves a UI build it is given."""

import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from conftest import ROOT, free_port
from test_grpcurl import TOKEN, Platform, platform_processes
from test_ingest_support import read_topic_now
from typer.testing import CliRunner, Result

from k2.clients.cli import app
from k2.core.config import KafkaSettings
from k2.core.kafka import TRADES, topic_name
from k2.core.telemetry import configured_sampler
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.marketdata.v1.marketdata_pb2 import AssetClass, Side, Trade
from k2.query.v1 import query_pb2, query_pb2_grpc
from k2.services.ingest.ids import batch_message_ids
from k2.writer.v1 import writer_pb2, writer_pb2_grpc

JAEGER_SCRIPT = ROOT / "scripts" / "jaeger.sh"
# A cold build of Jaeger from source takes minutes (cached in ~/.cache/k2 afterwards).
JAEGER_UP_TIMEOUT_SECONDS = 1500
TRACE_TIMEOUT_SECONDS = 60.0
SYMBOL = "TRACEUSDT"
FEED_SYMBOL = "SOLUSDT"  # one the replay exchange simulates
WRITE = ("authorization", f"Bearer {TOKEN}")


@dataclass
class Jaeger:
    otlp_endpoint: str
    query_url: str

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.query_url}{path}" + (f"?{urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)


@contextmanager
def running_jaeger(run_dir: Path, **env: str) -> Iterator[Jaeger]:
    """scripts/jaeger.sh up, on free ports and its own run folder, then down."""
    otlp, otlp_http, query, query_grpc = free_port(), free_port(), free_port(), free_port()
    environment = (
        os.environ
        | env
        | {
            "K2_RUN_DIR": str(run_dir),
            "K2_JAEGER_OTLP_PORT": str(otlp),
            "K2_JAEGER_OTLP_HTTP_PORT": str(otlp_http),
            "K2_JAEGER_QUERY_PORT": str(query),
            "K2_JAEGER_QUERY_GRPC_PORT": str(query_grpc),
        }
    )
    subprocess.run(
        [JAEGER_SCRIPT, "up"],
        env=environment,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=JAEGER_UP_TIMEOUT_SECONDS,
    )
    try:
        yield Jaeger(f"http://127.0.0.1:{otlp}", f"http://127.0.0.1:{query}")
    finally:
        subprocess.run(
            [JAEGER_SCRIPT, "down"], env=environment, check=False, stdout=subprocess.DEVNULL, timeout=60
        )


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    with running_jaeger(tmp_path_factory.mktemp("jaeger-run")) as running:
        yield running


@pytest.fixture(scope="module")
def traced_platform(
    jaeger: Jaeger, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    tracing = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with platform_processes(kafka_bootstrap, tmp_path_factory.mktemp("traced"), extra_env=tracing) as running:
        yield running


# ---- reading a trace back from Jaeger ------------------------------------------------------------------------


@dataclass
class Span:
    span_id: str
    name: str
    service: str
    tags: dict[str, Any]
    parents: list[str]  # CHILD_OF span ids
    links: list[tuple[str, str]]  # FOLLOWS_FROM (trace id, span id)
    events: list[dict[str, Any]]  # each event's (Jaeger: log's) fields

    @property
    def kind(self) -> str:
        return str(self.tags.get("span.kind", "internal"))


def spans_of(trace: dict[str, Any]) -> list[Span]:
    services = {key: process["serviceName"] for key, process in trace["processes"].items()}
    return [
        Span(
            span["spanID"],
            span["operationName"],
            services[span["processID"]],
            {tag["key"]: tag["value"] for tag in span.get("tags", [])},
            [ref["spanID"] for ref in span.get("references", []) if ref["refType"] == "CHILD_OF"],
            [
                (ref["traceID"], ref["spanID"])
                for ref in span.get("references", [])
                if ref["refType"] == "FOLLOWS_FROM"
            ],
            [{field["key"]: field["value"] for field in log["fields"]} for log in span.get("logs", [])],
        )
        for span in trace["spans"]
    ]


def wait_for_trace(jaeger: Jaeger, trace_id: str, complete: Any) -> list[Span]:
    """The trace's spans once `complete(spans)` holds (spans arrive in export batches), bounded."""
    deadline = time.monotonic() + TRACE_TIMEOUT_SECONDS
    spans: list[Span] = []
    while time.monotonic() < deadline:
        try:
            spans = spans_of(jaeger.get(f"/api/traces/{trace_id}")["data"][0])
        except urllib.error.HTTPError as error:
            if error.code != 404:  # not there yet
                raise
        if complete(spans):
            return spans
        time.sleep(0.5)
    raise AssertionError(
        f"trace {trace_id} incomplete after {TRACE_TIMEOUT_SECONDS} s: "
        f"{sorted((s.service, s.name) for s in spans)}"
    )


def named(spans: list[Span], service: str, prefix: str) -> list[Span]:
    return [span for span in spans if span.service == service and span.name.startswith(prefix)]


def only(spans: list[Span]) -> Span:
    assert len(spans) == 1, spans
    return spans[0]


runner = CliRunner()


def k2(*args: str, **env: str) -> Result:
    """Runs `k2 ARGS` in a wide terminal."""
    return runner.invoke(app, list(args), env={"COLUMNS": "250", **env})


def k2_trace(jaeger: Jaeger, identifier: str) -> Result:
    return k2("trace", identifier, "--jaeger", jaeger.query_url)


def assert_hops_in_order(output: str, *operations: str) -> None:
    """The waterfall shows each operation, in this order (a parent before its children, siblings by start)."""
    positions = [output.find(operation) for operation in operations]
    assert -1 not in positions and positions == sorted(positions), (operations, output)


# ---- the platform's side -------------------------------------------------------------------------------------


def traceparent() -> tuple[str, str, str]:
    """A sampled W3C context as a client would send it: (header value, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def trades(count: int) -> list[Trade]:
    made = []
    for n in range(count):
        trade = Trade(
            trade_id=f"TRACE-{secrets.token_hex(4)}-{n}",
            symbol=SYMBOL,
            exchange="BINANCE",
            asset_class=AssetClass.ASSET_CLASS_CRYPTO,
            price=f"97123.4{n}",
            quantity="0.5",
            currency="USDT",
            side=Side.SIDE_BUY,
        )
        trade.timestamp.GetCurrentTime()
        made.append(trade)
    return made


class Subscriber:
    """A live SubscribeTrades stream read on a thread: each response goes to `responses`."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.call = query_pb2_grpc.QueryServiceStub(self.channel).SubscribeTrades(
            query_pb2.SubscribeTradesRequest(symbols=[SYMBOL]), timeout=120
        )
        self.responses: queue.Queue[query_pb2.SubscribeTradesResponse] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError:
            pass  # cancelled at close()

    def next(self, timeout: float = 30.0) -> query_pb2.SubscribeTradesResponse:
        return self.responses.get(timeout=timeout)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)
        self.channel.close()


@pytest.mark.timeout(JAEGER_UP_TIMEOUT_SECONDS + 300)
def test_a_published_batch_is_one_trace_from_publish_to_commit_and_delivery(
    traced_platform: Platform, jaeger: Jaeger
) -> None:
    subscriber = Subscriber(traced_platform.address("query"))
    try:
        subscriber.next()  # the first heartbeat: the subscription is live
        header, trace_id, client_span_id = traceparent()
        sent = trades(3)
        with grpc.insecure_channel(traced_platform.address("ingest")) as channel:
            [answer] = ingest_pb2_grpc.IngestServiceStub(channel).PublishTrades(
                iter([ingest_pb2.PublishTradesRequest(batch_id=f"trace-{trace_id}", trades=sent)]),
                metadata=(WRITE, ("traceparent", header), ("baggage", "k2.test=tracing")),
                timeout=30,
            )
        assert answer.accepted == 3
        delivered: list[str] = []
        while len(delivered) < 3:
            delivered += [trade.trade_id for trade in subscriber.next().trades]
        assert delivered == [trade.trade_id for trade in sent]
    finally:
        subscriber.close()
    with grpc.insecure_channel(traced_platform.address("writer")) as channel:
        writer_pb2_grpc.WriterServiceStub(channel).Flush(
            writer_pb2.FlushRequest(), metadata=(WRITE,), timeout=60
        )

    def complete(spans: list[Span]) -> bool:
        return all(
            named(spans, service, name)
            for service, name in (
                ("ingest", "/k2.ingest.v1.IngestService/PublishTrades"),
                ("ingest", "send "),
                ("writer", "process "),
                ("writer", "market_data.trades commit"),
                ("query", "deliver "),
            )
        )

    spans = wait_for_trace(jaeger, trace_id, complete)
    topic = topic_name(
        KafkaSettings(bootstrap_servers="unused", topic_prefix=traced_platform.env["K2_KAFKA_TOPIC_PREFIX"]),
        TRADES,
    )

    publish = only(named(spans, "ingest", "/k2.ingest.v1.IngestService/PublishTrades"))
    assert publish.kind == "server" and publish.parents == [client_span_id]
    assert publish.tags["rpc.method"] == "PublishTrades" and publish.tags["k2.batch.items"] == 3
    assert publish.tags["k2.batch.accepted"] == 3 and publish.tags["k2.batch.id"] == f"trace-{trace_id}"

    send = only(named(spans, "ingest", f"send {topic}"))
    assert send.kind == "producer" and send.parents == [publish.span_id]
    assert send.tags["messaging.system"] == "kafka" and send.tags["messaging.destination.name"] == topic
    assert send.tags["messaging.operation.type"] == "send" and send.tags["messaging.batch.message_count"] == 3
    # each message named in an event, by the ids the records carry (message ids from the batch id here)
    message_ids = batch_message_ids("trade", f"trace-{trace_id}")
    assert [
        (event["event"], event["messaging.message.id"], event["k2.trade_id"]) for event in send.events
    ] == [("message", message_ids(index), trade.trade_id) for index, trade in enumerate(sent)]
    assert send.tags["k2.message_events"] == 3

    processes = named(spans, "writer", f"process {topic}")
    assert processes and all(span.kind == "consumer" and span.parents == [send.span_id] for span in processes)
    for span in processes:
        assert {
            key: span.tags[key]
            for key in (
                "messaging.system",
                "messaging.destination.name",
                "messaging.operation.type",
                "messaging.consumer.group.name",
            )
        } == {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": "k2-writer",
        }
        assert (
            span.tags["messaging.kafka.destination.partition"] >= 0
            and span.tags["messaging.kafka.offset"] >= 0
        )
    assert sum(span.tags["messaging.batch.message_count"] for span in processes) == 3

    commit = only(named(spans, "writer", "market_data.trades commit"))
    assert commit.parents[0] in {span.span_id for span in processes}
    assert (trace_id, send.span_id) in commit.links  # the link to every covered producer trace
    assert commit.tags["db.system"] == "iceberg" and commit.tags["k2.rows"] >= 3

    deliveries = named(spans, "query", f"deliver {topic}")
    assert deliveries and all(
        span.kind == "consumer" and span.parents == [send.span_id] for span in deliveries
    )
    assert all(span.tags["k2.subscribers"] >= 1 for span in deliveries)
    assert sum(span.tags["messaging.batch.message_count"] for span in deliveries) == 3

    # the search API finds it by service and operation
    found = jaeger.get(
        "/api/traces",
        service="ingest",
        operation="/k2.ingest.v1.IngestService/PublishTrades",
        lookback="1h",
        limit="100",
    )
    assert trace_id in {trace["traceID"] for trace in found["data"]}

    # the records carry the send span's context and the caller's baggage
    messages = read_topic_now(
        KafkaSettings(
            bootstrap_servers=traced_platform.env["KAFKA_BOOTSTRAP_SERVERS"],
            topic_prefix=traced_platform.env["K2_KAFKA_TOPIC_PREFIX"],
        ),
        topic,
    )
    headers = [dict(message.headers() or []) for message in messages]
    ours = [
        h for h in headers if h.get("traceparent", b"").decode().split("-")[1:3] == [trace_id, send.span_id]
    ]
    assert len(ours) == 3 and all(h["baggage"] == b"k2.test=tracing" for h in ours)

    # `k2 trace` finds it by a trade id or a message id, and draws every hop under its parent
    for identifier in (sent[1].trade_id, message_ids(1), trace_id):
        shown = k2_trace(jaeger, identifier)
        assert shown.exit_code == 0, shown.output
        assert f"Trace {trace_id}: " in shown.stdout
        assert_hops_in_order(
            shown.stdout,
            "/k2.ingest.v1.IngestService/PublishTrades",
            f"send {topic}",
            f"process {topic}",
            "market_data.trades commit",
        )
        assert_hops_in_order(shown.stdout, f"send {topic}", f"deliver {topic}")
        assert ("◀ this message" in shown.stdout) is (identifier != trace_id)


@pytest.mark.timeout(JAEGER_UP_TIMEOUT_SECONDS + 300)
def test_trades_committed_together_each_have_the_commit_in_their_own_trace(
    jaeger: Jaeger, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tracing = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "K2_WRITER_COMMIT_INTERVAL_MS": "600000",
    }  # only Flush commits
    with platform_processes(
        kafka_bootstrap, tmp_path_factory.mktemp("commit"), ("ingest", "writer"), extra_env=tracing
    ) as platform:
        published: list[tuple[str, Trade]] = []  # two publishes, each its own trace
        with grpc.insecure_channel(platform.address("ingest")) as channel:
            for trade in trades(2):
                header, trace_id, _ = traceparent()
                [answer] = ingest_pb2_grpc.IngestServiceStub(channel).PublishTrades(
                    iter([ingest_pb2.PublishTradesRequest(batch_id=f"commit-{trace_id}", trades=[trade])]),
                    metadata=(WRITE, ("traceparent", header)),
                    timeout=30,
                )
                assert answer.accepted == 1
                published.append((trace_id, trade))
        for trace_id, _ in published:  # both buffered by the writer before the one commit
            wait_for_trace(jaeger, trace_id, lambda spans: bool(named(spans, "writer", "process ")))
        with grpc.insecure_channel(platform.address("writer")) as channel:
            flushed = writer_pb2_grpc.WriterServiceStub(channel).Flush(
                writer_pb2.FlushRequest(), metadata=(WRITE,), timeout=60
            )
    [committed] = [commit for commit in flushed.commits if commit.table == "market_data.trades"]
    assert committed.rows == 2

    commits = []
    for trace_id, trade in published:
        spans = wait_for_trace(
            jaeger, trace_id, lambda spans: bool(named(spans, "writer", "market_data.trades commit"))
        )
        commit = only(named(spans, "writer", "market_data.trades commit"))
        assert commit.parents == [only(named(spans, "writer", "process ")).span_id]
        # (Jaeger writes a 64-bit integer beyond what JSON numbers hold exactly as a string)
        assert int(commit.tags["k2.snapshot_id"]) == committed.snapshot_id and commit.tags["k2.rows"] == 2
        commits.append(commit)
        shown = k2_trace(jaeger, trade.trade_id)
        assert shown.exit_code == 0, shown.output
        assert_hops_in_order(
            shown.stdout,
            "/k2.ingest.v1.IngestService/PublishTrades",
            "send ",
            "process ",
            "market_data.trades commit",
        )
    # The commit's own span is in the first trace and links to both producers; the second trace's commit span
    # links to it.
    first, second = commits
    assert {linked_trace for linked_trace, _ in first.links} == {trace_id for trace_id, _ in published}
    assert second.links == [(published[0][0], first.span_id)]


def test_k2_trace_says_what_is_missing(jaeger: Jaeger) -> None:
    unknown = k2_trace(jaeger, "NO-SUCH-TRADE")
    assert unknown.exit_code == 1
    assert "no trace in Jaeger" in unknown.stderr and "k2.trade_id 'NO-SUCH-TRADE'" in unknown.stderr
    down = k2("trace", "NO-SUCH-TRADE", "--jaeger", f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == 3 and "is not reachable" in down.stderr


@pytest.mark.timeout(JAEGER_UP_TIMEOUT_SECONDS + 300)
def test_status_shows_where_each_service_sends_its_traces(traced_platform: Platform, jaeger: Jaeger) -> None:
    addresses = {
        f"K2_{name.upper()}_ADDRESS": traced_platform.address(name) for name in ("ingest", "writer", "query")
    }
    result = k2("status", K2_TOKEN=TOKEN, **addresses)
    assert result.exit_code == 0, result.output
    for name in ("ingest", "writer", "query"):
        [row] = [line for line in result.stdout.splitlines() if line.split()[:2] == [name, name]]
        assert jaeger.otlp_endpoint in row and "always_on: every new trace" in row, result.stdout


def test_samplers_are_configured_by_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variables, expected in [
        ({}, ("parentbased_traceidratio", 0.01)),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, ("parentbased_traceidratio", 0.01)),
        ({"OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, ("traceidratio", 0.25)),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, ("parentbased_always_on", 1.0)),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, ("always_off", 0.0)),
    ]:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        assert configured_sampler()[:2] == expected
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.5")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    with pytest.raises(ValueError, match="not a ratio between 0 and 1"):
        configured_sampler()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "jaeger_remote")
    with pytest.raises(ValueError, match="unknown sampler 'jaeger_remote'"):
        configured_sampler()


def test_jaeger_serves_a_ui_build_it_is_given(
    jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with urllib.request.urlopen(jaeger.query_url, timeout=10) as page:  # Jaeger's module builds no UI
        assert "This is not the Jaeger UI you are looking for" in page.read().decode()
    assets = tmp_path_factory.mktemp("jaeger-ui")
    (assets / "index.html").write_text('<html><base href="/"><title>a jaeger-ui build</title></html>')
    with running_jaeger(tmp_path_factory.mktemp("jaeger-ui-run"), K2_JAEGER_UI_ASSETS=str(assets)) as with_ui:
        with urllib.request.urlopen(with_ui.query_url, timeout=10) as page:
            assert "a jaeger-ui build" in page.read().decode()
        assert "data" in with_ui.get("/api/services")  # the query API beside it


@pytest.mark.timeout(JAEGER_UP_TIMEOUT_SECONDS + 300)
def test_a_file_load_is_the_parent_of_its_sends(traced_platform: Platform, jaeger: Jaeger) -> None:
    header, trace_id, client_span_id = traceparent()
    with grpc.insecure_channel(traced_platform.address("ingest")) as channel:
        events = list(
            ingest_pb2_grpc.IngestServiceStub(channel).LoadFiles(
                ingest_pb2.LoadFilesRequest(
                    paths=["trades/3153.csv"], format=ingest_pb2.FILE_FORMAT_ASX_TRADES
                ),
                metadata=(WRITE, ("traceparent", header)),
                timeout=60,
            )
        )
    assert events[-1].summary.rows_accepted == 11
    spans = wait_for_trace(
        jaeger,
        trace_id,
        lambda spans: all(
            named(spans, service, name)
            for service, name in (
                ("ingest", "/k2.ingest.v1.IngestService/LoadFiles"),
                ("ingest", "send "),
                ("writer", "process "),
            )
        ),
    )
    load = only(named(spans, "ingest", "/k2.ingest.v1.IngestService/LoadFiles"))
    assert load.kind == "server" and load.parents == [client_span_id]
    sends = named(spans, "ingest", "send ")
    assert all(span.kind == "producer" and span.parents == [load.span_id] for span in sends)
    assert {parent for span in named(spans, "writer", "process ") for parent in span.parents} <= {
        span.span_id for span in sends
    }


@pytest.fixture(scope="module")
def replay_exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local exchange speaking Binance's stream protocol, as a process: its ws:// URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("replay") / "replay_exchange.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "k2.services.replay_exchange",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--symbols",
                FEED_SYMBOL,
                "--rate",
                "100",
            ],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not port_listens(port):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


def port_listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(JAEGER_UP_TIMEOUT_SECONDS + 300)
def test_the_binance_feed_starts_a_trace_per_batch(
    jaeger: Jaeger, replay_exchange: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    feed = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "K2_INGEST_BINANCE_ENABLED": "true",
        "K2_INGEST_BINANCE_SYMBOLS": FEED_SYMBOL,
        "K2_INGEST_BINANCE_STREAM_TYPES": "trade",
        "K2_INGEST_BINANCE_ENDPOINTS": json.dumps([replay_exchange]),
    }
    with platform_processes(
        kafka_bootstrap, tmp_path_factory.mktemp("feed"), ("ingest", "writer"), extra_env=feed
    ):
        deadline = time.monotonic() + TRACE_TIMEOUT_SECONDS
        while True:  # a feed batch whose records the writer consumed
            found = jaeger.get(
                "/api/traces", service="ingest", operation="receive binance trades", lookback="1h", limit="20"
            )["data"]
            traces = [spans_of(trace) for trace in found]
            done = [spans for spans in traces if named(spans, "writer", "process ")]
            if done:
                break
            assert time.monotonic() < deadline, [
                sorted((s.service, s.name) for s in spans) for spans in traces
            ]
            time.sleep(0.5)
    spans = done[0]
    receive = only(named(spans, "ingest", "receive binance trades"))
    assert receive.kind == "consumer" and receive.parents == [] and receive.tags["k2.feed"] == "binance"
    sends = named(spans, "ingest", "send ")
    assert sends and all(span.kind == "producer" and span.parents == [receive.span_id] for span in sends)
    assert {parent for span in named(spans, "writer", "process ") for parent in span.parents} <= {
        span.span_id for span in sends
    }
