"""End-to-end tracing against a real Jaeger v2 (scripts/jaeger.sh, built from source by scripts/tools.sh): the three
services run as processes (each its own TracerProvider and service.name) exporting OTLP to it with every trace
sampled, and the trace of one published batch is read back through Jaeger's HTTP API.

Asserted, by walking the spans' CHILD_OF references: client context → ingest publish (SERVER) → Kafka send
(PRODUCER) → writer process (CONSUMER) → Iceberg commit, and send → query deliver (CONSUMER), with the messaging
semantic-convention attributes; the commit's links (FOLLOWS_FROM) lead to the producer; the records' headers carry
the W3C traceparent and baggage; a LoadFiles call's sends are its children; the Binance feed (against the replay
exchange) starts a trace per batch that the writer continues."""

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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from conftest import ROOT, free_port
from test_grpcurl import TOKEN, Platform, platform_processes
from test_ingest_support import read_topic_now

from k2.core.config import KafkaSettings
from k2.core.kafka import TRADES, topic_name
from k2.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from k2.marketdata.v1.marketdata_pb2 import AssetClass, Side, Trade
from k2.query.v1 import query_pb2, query_pb2_grpc
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


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    run_dir = tmp_path_factory.mktemp("jaeger-run")
    otlp, otlp_http, query, query_grpc = free_port(), free_port(), free_port(), free_port()
    env = os.environ | {"K2_RUN_DIR": str(run_dir), "K2_JAEGER_OTLP_PORT": str(otlp),
                        "K2_JAEGER_OTLP_HTTP_PORT": str(otlp_http), "K2_JAEGER_QUERY_PORT": str(query),
                        "K2_JAEGER_QUERY_GRPC_PORT": str(query_grpc)}
    subprocess.run([JAEGER_SCRIPT, "up"], env=env, check=True, stdout=subprocess.DEVNULL,
                   timeout=JAEGER_UP_TIMEOUT_SECONDS)
    try:
        yield Jaeger(f"http://127.0.0.1:{otlp}", f"http://127.0.0.1:{query}")
    finally:
        subprocess.run([JAEGER_SCRIPT, "down"], env=env, check=False, stdout=subprocess.DEVNULL, timeout=60)


@pytest.fixture(scope="module")
def traced_platform(jaeger: Jaeger, kafka_bootstrap: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, "OTEL_TRACES_SAMPLER": "always_on",
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
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

    @property
    def kind(self) -> str:
        return str(self.tags.get("span.kind", "internal"))


def spans_of(trace: dict[str, Any]) -> list[Span]:
    services = {key: process["serviceName"] for key, process in trace["processes"].items()}
    return [Span(span["spanID"], span["operationName"], services[span["processID"]],
                 {tag["key"]: tag["value"] for tag in span.get("tags", [])},
                 [ref["spanID"] for ref in span.get("references", []) if ref["refType"] == "CHILD_OF"],
                 [(ref["traceID"], ref["spanID"]) for ref in span.get("references", [])
                  if ref["refType"] == "FOLLOWS_FROM"])
            for span in trace["spans"]]


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
    raise AssertionError(f"trace {trace_id} incomplete after {TRACE_TIMEOUT_SECONDS} s: "
                         f"{sorted((s.service, s.name) for s in spans)}")


def named(spans: list[Span], service: str, prefix: str) -> list[Span]:
    return [span for span in spans if span.service == service and span.name.startswith(prefix)]


def only(spans: list[Span]) -> Span:
    assert len(spans) == 1, spans
    return spans[0]


# ---- the platform's side -------------------------------------------------------------------------------------

def traceparent() -> tuple[str, str, str]:
    """A sampled W3C context as a client would send it: (header value, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def trades(count: int) -> list[Trade]:
    made = []
    for n in range(count):
        trade = Trade(trade_id=f"TRACE-{secrets.token_hex(4)}-{n}", symbol=SYMBOL, exchange="BINANCE",
                      asset_class=AssetClass.ASSET_CLASS_CRYPTO, price=f"97123.4{n}", quantity="0.5",
                      currency="USDT", side=Side.SIDE_BUY)
        trade.timestamp.GetCurrentTime()
        made.append(trade)
    return made


class Subscriber:
    """A live SubscribeTrades stream read on a thread: each response goes to `responses`."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.call = query_pb2_grpc.QueryServiceStub(self.channel).SubscribeTrades(
            query_pb2.SubscribeTradesRequest(symbols=[SYMBOL]), timeout=120)
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
        traced_platform: Platform, jaeger: Jaeger) -> None:
    subscriber = Subscriber(traced_platform.address("query"))
    try:
        subscriber.next()  # the first heartbeat: the subscription is live
        header, trace_id, client_span_id = traceparent()
        sent = trades(3)
        with grpc.insecure_channel(traced_platform.address("ingest")) as channel:
            [answer] = ingest_pb2_grpc.IngestServiceStub(channel).PublishTrades(
                iter([ingest_pb2.PublishTradesRequest(batch_id=f"trace-{trace_id}", trades=sent)]),
                metadata=(WRITE, ("traceparent", header), ("baggage", "k2.test=tracing")), timeout=30)
        assert answer.accepted == 3
        delivered: list[str] = []
        while len(delivered) < 3:
            delivered += [trade.trade_id for trade in subscriber.next().trades]
        assert delivered == [trade.trade_id for trade in sent]
    finally:
        subscriber.close()
    with grpc.insecure_channel(traced_platform.address("writer")) as channel:
        writer_pb2_grpc.WriterServiceStub(channel).Flush(writer_pb2.FlushRequest(), metadata=(WRITE,), timeout=60)

    def complete(spans: list[Span]) -> bool:
        return all(named(spans, service, name) for service, name in (
            ("ingest", "/k2.ingest.v1.IngestService/PublishTrades"), ("ingest", "send "),
            ("writer", "process "), ("writer", "market_data.trades commit"), ("query", "deliver ")))

    spans = wait_for_trace(jaeger, trace_id, complete)
    topic = topic_name(KafkaSettings(bootstrap_servers="unused",
                                     topic_prefix=traced_platform.env["K2_KAFKA_TOPIC_PREFIX"]), TRADES)

    publish = only(named(spans, "ingest", "/k2.ingest.v1.IngestService/PublishTrades"))
    assert publish.kind == "server" and publish.parents == [client_span_id]
    assert publish.tags["rpc.method"] == "PublishTrades" and publish.tags["k2.batch.items"] == 3
    assert publish.tags["k2.batch.accepted"] == 3 and publish.tags["k2.batch.id"] == f"trace-{trace_id}"

    send = only(named(spans, "ingest", f"send {topic}"))
    assert send.kind == "producer" and send.parents == [publish.span_id]
    assert send.tags["messaging.system"] == "kafka" and send.tags["messaging.destination.name"] == topic
    assert send.tags["messaging.operation.type"] == "send" and send.tags["messaging.batch.message_count"] == 3

    processes = named(spans, "writer", f"process {topic}")
    assert processes and all(span.kind == "consumer" and span.parents == [send.span_id] for span in processes)
    for span in processes:
        assert {key: span.tags[key] for key in ("messaging.system", "messaging.destination.name",
                                                "messaging.operation.type", "messaging.consumer.group.name")} == {
            "messaging.system": "kafka", "messaging.destination.name": topic, "messaging.operation.type": "process",
            "messaging.consumer.group.name": "k2-writer"}
        assert span.tags["messaging.kafka.destination.partition"] >= 0 and span.tags["messaging.kafka.offset"] >= 0
    assert sum(span.tags["messaging.batch.message_count"] for span in processes) == 3

    commit = only(named(spans, "writer", "market_data.trades commit"))
    assert commit.parents[0] in {span.span_id for span in processes}
    assert (trace_id, send.span_id) in commit.links  # the link to every covered producer trace
    assert commit.tags["db.system"] == "iceberg" and commit.tags["k2.rows"] >= 3

    deliveries = named(spans, "query", f"deliver {topic}")
    assert deliveries and all(span.kind == "consumer" and span.parents == [send.span_id] for span in deliveries)
    assert all(span.tags["k2.subscribers"] >= 1 for span in deliveries)
    assert sum(span.tags["messaging.batch.message_count"] for span in deliveries) == 3

    # the search API finds it by service and operation
    found = jaeger.get("/api/traces", service="ingest", operation="/k2.ingest.v1.IngestService/PublishTrades",
                       lookback="1h", limit="100")
    assert trace_id in {trace["traceID"] for trace in found["data"]}

    # the records carry the send span's context and the caller's baggage
    messages = read_topic_now(KafkaSettings(bootstrap_servers=traced_platform.env["KAFKA_BOOTSTRAP_SERVERS"],
                                            topic_prefix=traced_platform.env["K2_KAFKA_TOPIC_PREFIX"]), topic)
    headers = [dict(message.headers() or []) for message in messages]
    ours = [h for h in headers if h.get("traceparent", b"").decode().split("-")[1:3] == [trace_id, send.span_id]]
    assert len(ours) == 3 and all(h["baggage"] == b"k2.test=tracing" for h in ours)


@pytest.mark.timeout(JAEGER_UP_TIMEOUT_SECONDS + 300)
def test_a_file_load_is_the_parent_of_its_sends(traced_platform: Platform, jaeger: Jaeger) -> None:
    header, trace_id, client_span_id = traceparent()
    with grpc.insecure_channel(traced_platform.address("ingest")) as channel:
        events = list(ingest_pb2_grpc.IngestServiceStub(channel).LoadFiles(
            ingest_pb2.LoadFilesRequest(paths=["trades/3153.csv"], format=ingest_pb2.FILE_FORMAT_ASX_TRADES),
            metadata=(WRITE, ("traceparent", header)), timeout=60))
    assert events[-1].summary.rows_accepted == 11
    spans = wait_for_trace(jaeger, trace_id, lambda spans: all(named(spans, service, name) for service, name in (
        ("ingest", "/k2.ingest.v1.IngestService/LoadFiles"), ("ingest", "send "), ("writer", "process "))))
    load = only(named(spans, "ingest", "/k2.ingest.v1.IngestService/LoadFiles"))
    assert load.kind == "server" and load.parents == [client_span_id]
    sends = named(spans, "ingest", "send ")
    assert all(span.kind == "producer" and span.parents == [load.span_id] for span in sends)
    assert {parent for span in named(spans, "writer", "process ") for parent in span.parents} <= {
        span.span_id for span in sends}


@pytest.fixture(scope="module")
def replay_exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local exchange speaking Binance's stream protocol, as a process: its ws:// URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("replay") / "replay_exchange.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "k2.services.replay_exchange", "--host", "127.0.0.1",
                                    "--port", str(port), "--symbols", FEED_SYMBOL, "--rate", "100"],
                                   cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
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
def test_the_binance_feed_starts_a_trace_per_batch(jaeger: Jaeger, replay_exchange: str, kafka_bootstrap: str,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    feed = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "200", "K2_INGEST_BINANCE_ENABLED": "true",
            "K2_INGEST_BINANCE_SYMBOLS": FEED_SYMBOL, "K2_INGEST_BINANCE_STREAM_TYPES": "trade",
            "K2_INGEST_BINANCE_ENDPOINTS": json.dumps([replay_exchange])}
    with platform_processes(kafka_bootstrap, tmp_path_factory.mktemp("feed"), ("ingest", "writer"),
                            extra_env=feed):
        deadline = time.monotonic() + TRACE_TIMEOUT_SECONDS
        while True:  # a feed batch whose records the writer consumed
            found = jaeger.get("/api/traces", service="ingest", operation="receive binance trades",
                               lookback="1h", limit="20")["data"]
            traces = [spans_of(trace) for trace in found]
            done = [spans for spans in traces if named(spans, "writer", "process ")]
            if done:
                break
            assert time.monotonic() < deadline, [sorted((s.service, s.name) for s in spans) for spans in traces]
            time.sleep(0.5)
    spans = done[0]
    receive = only(named(spans, "ingest", "receive binance trades"))
    assert receive.kind == "consumer" and receive.parents == [] and receive.tags["k2.feed"] == "binance"
    sends = named(spans, "ingest", "send ")
    assert sends and all(span.kind == "producer" and span.parents == [receive.span_id] for span in sends)
    assert {parent for span in named(spans, "writer", "process ") for parent in span.parents} <= {
        span.span_id for span in sends}
