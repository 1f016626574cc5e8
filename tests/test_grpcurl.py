"""The grpcurl recipes of docs/operations.md, run as written against the three services started as processes
(`python -m k2.services.<name>`), with the session's real Kafka broker and an Iceberg catalog of this module's own.

The command lines come from the doc's ```sh blocks marked <!-- recipe: NAME -->, so the doc cannot rot: the test
only swaps the default addresses (127.0.0.1:50051...) for the test services' and runs each block with bash in a
folder whose .run/token holds the services' write token, with the grpcurl that scripts/tools.sh builds first on
PATH. Also: the platform harness the tracing and fuzz tests share (platform_processes)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ASX_DATA, ROOT, free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_tls import Pki, pki  # noqa: F401 - the module's throwaway CA fixture

TOKEN = "operations-test-write-token"
SERVICES = ("ingest", "writer", "query")
DEFAULT_PORTS = {"ingest": 50051, "writer": 50052, "query": 50053}
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 60.0
DOC = ROOT / "docs" / "operations.md"


# ---- the platform as processes (shared with test_tracing.py and test_fuzz.py) --------------------------------


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        return "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    def serving(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_serving(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not self.serving():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} during start-up:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not SERVING within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed if it does not exit within the timeout)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class Platform:
    run_dir: Path
    env: dict[str, str] = field(repr=False)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return self.services[name].address

    def assert_serving(self, name: str) -> None:
        assert self.services[name].serving(), self.services[name].log_tail()


def platform_env(kafka_bootstrap: str, run_dir: Path) -> dict[str, str]:
    """Environment of the services: the test broker with topics of their own, a catalog in run_dir, the test
    token, short commit interval and grace period, no tracing export unless the caller adds one."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "K2_"))}
    return env | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "K2_KAFKA_TOPIC_PREFIX": f"test-{uuid.uuid4().hex[:10]}.",
        "K2_ICEBERG_CATALOG_URI": f"sqlite:///{run_dir / 'catalog.db'}",
        "K2_ICEBERG_WAREHOUSE": f"file://{run_dir / 'warehouse'}",
        "K2_AUTH_WRITE_TOKENS": json.dumps([TOKEN]),
        "K2_WRITER_COMMIT_INTERVAL_MS": "200",
        "K2_QUERY_HEARTBEAT_SECONDS": "0.5",
        "K2_LOG_LEVEL": "INFO",
    }


def start_service(
    name: str, env: dict[str, str], run_dir: Path, python: Path | str = sys.executable, cwd: Path = ROOT
) -> ServiceProcess:
    port = free_port()
    prefix = f"K2_{name.upper()}_"
    service_env = env | {
        f"{prefix}PORT": str(port),
        f"{prefix}METRICS_PORT": "0",
        f"{prefix}GRACE_SECONDS": "2",
        "OTEL_SERVICE_NAME": name,
    }
    log = run_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        process = subprocess.Popen(
            [python, "-m", f"k2.services.{name}"],
            cwd=cwd,
            env=service_env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(name, port, process, log)


@contextmanager
def platform_processes(
    kafka_bootstrap: str,
    run_dir: Path,
    names: Sequence[str] = SERVICES,
    extra_env: dict[str, str] | None = None,
    python: Path | str = sys.executable,
    cwd: Path = ROOT,
) -> Iterator[Platform]:
    """The named services as processes of `python` in `cwd`, each SERVING before this yields (the query service
    after the writer, whose tables it reads); on exit each gets SIGTERM and must exit 0 (graceful shutdown)."""
    platform = Platform(run_dir, platform_env(kafka_bootstrap, run_dir) | (extra_env or {}))
    with ExitStack() as stack:
        exit_codes: dict[str, int] = {}

        def stop_all() -> None:
            for name in reversed(list(platform.services)):
                exit_codes[name] = platform.services[name].stop()

        stack.callback(stop_all)
        for name in [n for n in names if n != "query"]:
            platform.services[name] = start_service(name, platform.env, run_dir, python, cwd)
        for service in list(platform.services.values()):
            service.wait_serving()
        if "query" in names:
            platform.services["query"] = start_service("query", platform.env, run_dir, python, cwd)
            platform.services["query"].wait_serving()
        yield platform
    failed = {name: code for name, code in exit_codes.items() if code != 0}
    assert not failed, {name: platform.services[name].log_tail() for name in failed}


# ---- the recipes -----------------------------------------------------------------------------------------------

RECIPE = re.compile(r"<!-- recipe: (?P<name>[\w-]+) -->\n```sh\n(?P<script>.*?)```", re.DOTALL)
ADDRESS = re.compile(r"\b(127\.0\.0\.1|localhost):(5005[123])\b")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
DEADLINE_EXCEEDED_EXIT = 64 + grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
UNAUTHENTICATED_EXIT = 64 + grpc.StatusCode.UNAUTHENTICATED.value[0]


def doc_recipes() -> dict[str, str]:
    recipes = {match["name"]: match["script"] for match in RECIPE.finditer(DOC.read_text())}
    assert recipes, f"no <!-- recipe: NAME --> blocks in {DOC}"
    return recipes


def json_documents(text: str) -> list[Any]:
    """grpcurl's output: one pretty-printed JSON object per response message."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents


@dataclass
class Operator:
    """Runs the doc's recipes with bash, as an operator would, against test addresses."""

    grpcurl_dir: Path
    workdir: Path
    ports: dict[int, int]  # documented default port → the test service's port
    recipes: dict[str, str] = field(default_factory=doc_recipes)

    def run(self, name: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        script = ADDRESS.sub(lambda m: f"{m[1]}:{self.ports[int(m[2])]}", self.recipes[name])
        env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
        env["PATH"] = f"{self.grpcurl_dir}{os.pathsep}{env['PATH']}"
        return subprocess.run(
            ["bash", "-e", "-c", script],
            check=False,
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, name: str) -> list[Any]:
        result = self.run(name)
        assert result.returncode == 0, f"{name}: exit {result.returncode}\n{result.stderr}"
        return json_documents(result.stdout)

    def until(self, name: str, condition: Any, timeout: float = 30.0) -> list[Any]:
        """The recipe's answer once `condition(answer)` holds (data reaches Iceberg and the fan-out
        asynchronously), polled with a bounded deadline."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.ok(name)
            if condition(answer):
                return answer
            assert time.monotonic() < deadline, f"{name}: condition not met within {timeout} s: {answer}"
            time.sleep(0.3)


@pytest.fixture(scope="module")
def grpcurl_dir() -> Path:
    built = subprocess.run(
        [ROOT / "scripts" / "tools.sh", "grpcurl"], check=True, capture_output=True, text=True
    )
    return Path(built.stdout.strip()).parent


@pytest.fixture(scope="module")
def platform(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with platform_processes(kafka_bootstrap, tmp_path_factory.mktemp("operations")) as running:
        yield running


def operator_folder(base: Path, token: str) -> Path:
    (base / ".run").mkdir(parents=True)
    (base / ".run" / "token").write_text(token + "\n")
    return base


@pytest.fixture(scope="module")
def operator(platform: Platform, grpcurl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Operator:
    ports = {DEFAULT_PORTS[name]: service.port for name, service in platform.services.items()}
    return Operator(grpcurl_dir, operator_folder(tmp_path_factory.mktemp("operator"), TOKEN), ports)


@pytest.fixture(scope="module")
def published(operator: Operator) -> dict[str, list[Any]]:
    """The doc's publish and load recipes, run once: what the query and writer recipes then read."""
    return {"publish": operator.ok("publish-trades"), "load": operator.ok("load-files")}


def test_list_names_every_service(operator: Operator) -> None:
    output = operator.run("list")
    assert output.returncode == 0, output.stderr
    listed = set(output.stdout.split())
    assert {
        "k2.ingest.v1.IngestService",
        "k2.writer.v1.WriterService",
        "k2.query.v1.QueryService",
        "k2.telemetry.v1.TelemetryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= listed


def test_each_service_says_where_its_traces_go(operator: Operator) -> None:
    # The test services export no traces (no OTLP endpoint, so grpcurl leaves the empty field out) and sample
    # by the default.
    assert operator.ok("tracing-setup") == [
        {"service_name": name, "sampler": "parentbased_traceidratio", "sample_ratio": 0.01}
        for name in ("ingest", "writer", "query")
    ]


def test_describe_shows_the_contracts(operator: Operator) -> None:
    output = operator.run("describe")
    assert output.returncode == 0, output.stderr
    assert (
        "rpc PublishTrades ( stream .k2.ingest.v1.PublishTradesRequest ) returns "
        "( stream .k2.ingest.v1.PublishTradesResponse ) {\n    option (.k2.auth.v1.scope) = SCOPE_WRITE;\n  }"
    ) in output.stdout  # the scope a token needs, as the proto declares it
    assert "message Trade {" in output.stdout and "string price = 7;" in output.stdout
    assert "message SubscribeTradesRequest {" in output.stdout and "string resume_token = 4;" in output.stdout


def test_health_check_and_watch(operator: Operator) -> None:
    assert operator.ok("health-check") == [{"status": "SERVING"}] * 3
    watch = operator.run("health-watch")
    assert watch.returncode == DEADLINE_EXCEEDED_EXIT, watch.stderr  # -max-time ended the stream
    assert json_documents(watch.stdout) == [{"status": "SERVING"}]


def test_publish_answers_each_batch_and_a_resend_is_a_duplicate(
    operator: Operator, published: dict[str, list[Any]]
) -> None:
    assert published["publish"] == [
        {"batch_id": "ops-example-1", "accepted": 2},
        {
            "batch_id": "ops-example-2",
            "rejections": [
                {
                    "field": "price",
                    "reason": "not a decimal number: 'not a price' (digits with an "
                    "optional '-', '.' and exponent, e.g. 97123.45 or 1E-8)",
                }
            ],
        },
    ]
    again = operator.ok("publish-trades")
    assert [answer.get("duplicate") for answer in again] == [True, True]
    assert [answer.get("accepted", 0) for answer in again] == [2, 0]


def test_publish_without_a_valid_token_is_unauthenticated(operator: Operator, tmp_path: Path) -> None:
    stranger = Operator(operator.grpcurl_dir, operator_folder(tmp_path, "not-a-token"), operator.ports)
    result = stranger.run("publish-trades")
    assert result.returncode == UNAUTHENTICATED_EXIT and "Unauthenticated" in result.stderr


def test_load_files_streams_progress_and_a_summary(published: dict[str, list[Any]]) -> None:
    *progress, last = published["load"]
    rows = len((ASX_DATA / "trades" / "3153.csv").read_text().splitlines())
    assert progress and all("progress" in event for event in progress)
    summary = last["summary"]
    assert summary["rows_read"] == str(rows) and summary["rows_accepted"] == str(rows)  # uint64: a string
    assert [file["path"] for file in summary["files"]] == ["trades/3153.csv"]


def test_feed_status_without_feeds_is_empty(operator: Operator) -> None:
    assert operator.ok("feed-status") == [{}]


def _trades(answers: list[Any]) -> list[dict[str, Any]]:
    return [trade for answer in answers for trade in answer.get("trades", [])]


def test_query_trades_returns_exact_decimals_and_rfc3339_times(
    operator: Operator, published: dict[str, list[Any]]
) -> None:
    trades = _trades(operator.until("query-trades", lambda answers: len(_trades(answers)) == 2))
    first, second = trades
    assert {
        key: first[key]
        for key in (
            "trade_id",
            "symbol",
            "exchange",
            "asset_class",
            "timestamp",
            "price",
            "quantity",
            "currency",
            "side",
            "source_sequence",
        )
    } == {
        "trade_id": "OPS-1",
        "symbol": "OPSUSDT",
        "exchange": "BINANCE",
        "asset_class": "ASSET_CLASS_CRYPTO",
        "timestamp": "2025-11-24T15:00:00.123456Z",
        "price": "97123.45",
        "quantity": "0.015",
        "currency": "USDT",
        "side": "SIDE_BUY",
        "source_sequence": "4000000001",
    }
    assert (second["trade_id"], second["price"], second["quantity"], second["timestamp"]) == (
        "OPS-2",
        "97124.5",
        "0.25",
        "2025-11-24T15:00:01Z",
    )
    assert all(RFC3339_UTC.match(trade["ingestion_timestamp"]) for trade in trades)


def _expected_daily_bars() -> list[dict[str, Any]]:
    """The MWR trades of the sample, as the doc's recipe loads them, in UTC days (exact arithmetic)."""
    from datetime import UTC, datetime
    from decimal import ROUND_HALF_EVEN, Context, Decimal

    from k2.core.protos import decimal_text
    from k2.services.ingest.asx import AsxTradeParser

    lines = (ASX_DATA / "trades" / "3153.csv").read_bytes().splitlines()
    records = (
        AsxTradeParser("3153", "MWR", datetime.now(UTC))
        .parse([(n, line) for n, line in enumerate(lines, 1)])
        .records
    )
    days: dict[Any, list[dict[str, Any]]] = {}
    for record in records:
        days.setdefault(record["timestamp"].date(), []).append(record)
    exact = Context(prec=80, rounding=ROUND_HALF_EVEN)
    bars = []
    for day, rows in sorted(days.items()):
        volume = sum(r["quantity"] for r in rows)
        notional = sum(r["price"] * r["quantity"] for r in rows)
        vwap = exact.divide(notional, volume).quantize(Decimal("1E-18"), context=exact)
        bars.append(
            {
                "start": f"{day.isoformat()}T00:00:00Z",
                "open": decimal_text(rows[0]["price"]),
                "high": decimal_text(max(r["price"] for r in rows)),
                "low": decimal_text(min(r["price"] for r in rows)),
                "close": decimal_text(rows[-1]["price"]),
                "volume": decimal_text(volume),
                "vwap": decimal_text(vwap),
                "trade_count": str(len(rows)),
            }
        )
    return bars


def test_bars_are_exact(operator: Operator, published: dict[str, list[Any]]) -> None:
    expected = _expected_daily_bars()
    [answer] = operator.until(
        "bars",
        lambda answers: (
            sum(int(b["trade_count"]) for b in answers[0].get("bars", []))
            == sum(int(b["trade_count"]) for b in expected)
        ),
    )
    assert answer["bars"] == expected


def test_latest_has_the_last_trade_of_each_symbol(
    operator: Operator, published: dict[str, list[Any]]
) -> None:
    [answer] = operator.until(
        "latest", lambda answers: all("trade" in latest for latest in answers[0].get("latest", []))
    )
    latest = {entry["symbol"]: entry for entry in answer["latest"]}
    assert (latest["OPSUSDT"]["trade"]["trade_id"], latest["OPSUSDT"]["trade"]["price"]) == (
        "OPS-2",
        "97124.5",
    )
    assert latest["MWR"]["trade"]["price"] == "1.2" and latest["MWR"]["trade"]["exchange"] == "ASX"


def test_subscribe_replays_history_then_heartbeats_until_max_time(
    operator: Operator, published: dict[str, list[Any]]
) -> None:
    result = operator.run("subscribe", timeout=30)
    assert result.returncode == DEADLINE_EXCEEDED_EXIT, result.stderr
    responses = json_documents(result.stdout)
    assert [t["trade_id"] for t in _trades(responses)] == ["OPS-1", "OPS-2"]
    assert any(response.get("replay") for response in responses if response.get("trades"))
    assert all(
        response["resume_token"] and RFC3339_UTC.match(response["server_time"]) for response in responses
    )
    assert any(not response.get("trades") for response in responses)  # heartbeats (every 0.5 s here)


def test_writer_flush_status_and_compact(operator: Operator, published: dict[str, list[Any]]) -> None:
    [flushed] = operator.ok("writer-flush")
    assert all(
        commit["table"] in ("market_data.trades", "market_data.quotes")
        for commit in flushed.get("commits", [])
    )
    [status] = operator.until(
        "writer-status",
        lambda answers: any(
            t["table"] == "market_data.trades" and int(t.get("rows", 0)) == 13
            for t in answers[0].get("tables", [])
        ),
    )
    assert {p["topic"].rpartition(".")[2] for p in status["partitions"]} >= {"trades"}
    assert RFC3339_UTC.match(status["last_commit_time"])
    events = operator.ok("writer-compact")
    assert "result" in events[-1] and all("progress" in event for event in events[:-1])


def test_tls_recipe_against_an_mtls_service(
    kafka_bootstrap: str,
    grpcurl_dir: Path,
    pki: Pki,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run_dir = tmp_path_factory.mktemp("tls")
    tls = {
        "K2_INGEST_TLS_CERT_FILE": str(pki.server_cert),
        "K2_INGEST_TLS_KEY_FILE": str(pki.server_key),
        "K2_INGEST_TLS_CLIENT_CA_FILE": str(pki.ca_cert),
    }
    workdir = operator_folder(tmp_path_factory.mktemp("tls-operator"), TOKEN)
    (workdir / "certs").mkdir()
    for name, source in (
        ("ca.crt", pki.ca_cert),
        ("client.crt", pki.client_cert),
        ("client.key", pki.client_key),
    ):
        (workdir / "certs" / name).write_bytes(source.read_bytes())
    service = start_service("ingest", platform_env(kafka_bootstrap, run_dir) | tls, run_dir)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        operator = Operator(grpcurl_dir, workdir, {50051: service.port})
        while (result := operator.run("tls-list")).returncode != 0:
            assert service.process.poll() is None, service.log_tail()
            assert time.monotonic() < deadline, result.stderr
            time.sleep(0.3)
        assert "k2.ingest.v1.IngestService" in result.stdout.split()
        without_client_certificate = subprocess.run(
            [grpcurl_dir / "grpcurl", "-cacert", "certs/ca.crt", f"localhost:{service.port}", "list"],
            check=False,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert without_client_certificate.returncode != 0
    finally:
        assert service.stop() == 0, service.log_tail()
