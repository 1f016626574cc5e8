"""Tracing's cost on the hot path: PublishTrades throughput of the ingest service (its own process, batches of 500,
16 outstanding, as bench/ingest_publish.py measures it) in three set-ups, interleaved over ROUNDS rounds (one
8-second run of each is within this machine's noise, and whichever ran first had an edge):

- off: no exporter and the always_off sampler (no span is recorded at all);
- default: the services' default sampling (parent-based, 1 % of new traces), exporting over OTLP;
- full: every trace sampled (always_on), exporting over OTLP.

The OTLP endpoint is a real Jaeger (scripts/jaeger.sh, on ports of its own) when it has been built
(scripts/tools.sh jaeger), else an in-process OTLP gRPC collector that accepts and discards. Reported per set-up:
the median trades/s and service CPU per trade; and the loss of each traced set-up against `off` (target: at most
10 % at default sampling). Prints one JSON object."""

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from _kafka import ROOT, free_port, kafka_bootstrap
from ingest_publish import ingest_server, publish_for
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from k2.core.config import KafkaSettings
from k2.core.kafka import provision_topics

WARMUP_SECONDS = 2.0
MEASURE_SECONDS = 8.0
ROUNDS = 3
JAEGER_BINARY = Path(os.environ.get("K2_CACHE", Path.home() / ".cache" / "k2")) / "bin" / "jaeger"


class DiscardingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that counts the spans it is sent and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.spans += sum(
            len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def otlp_sink() -> Iterator[tuple[str, str, DiscardingCollector | None]]:
    """(kind, OTLP endpoint, the in-process collector if that is what runs)."""
    if JAEGER_BINARY.exists():
        run_dir = tempfile.mkdtemp(prefix="k2-bench-jaeger-")
        otlp = free_port()
        env = os.environ | {
            "K2_RUN_DIR": run_dir,
            "K2_JAEGER_OTLP_PORT": str(otlp),
            "K2_JAEGER_OTLP_HTTP_PORT": str(free_port()),
            "K2_JAEGER_QUERY_PORT": str(free_port()),
            "K2_JAEGER_QUERY_GRPC_PORT": str(free_port()),
        }
        script = ROOT / "scripts" / "jaeger.sh"
        subprocess.run([script, "up"], env=env, check=True, stdout=sys.stderr)
        try:
            yield "jaeger", f"http://127.0.0.1:{otlp}", None
        finally:
            subprocess.run([script, "down"], env=env, check=False, stdout=sys.stderr)
            shutil.rmtree(run_dir, ignore_errors=True)
        return
    collector = DiscardingCollector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield "in-process OTLP collector (discards)", f"http://127.0.0.1:{port}", collector
    finally:
        server.stop(grace=None)


@contextmanager
def tracing_environment(variables: dict[str, str]) -> Iterator[None]:
    """The OTEL_* variables the ingest process is started with (ingest_server passes os.environ on)."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("OTEL_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(variables | {"OTEL_SERVICE_NAME": "ingest"})
    try:
        yield
    finally:
        for key in [key for key in os.environ if key.startswith("OTEL_")]:
            del os.environ[key]
        os.environ.update(saved)


def measure(bootstrap: str, topic_prefix: str, variables: dict[str, str]) -> dict[str, float]:
    with tracing_environment(variables), ingest_server(bootstrap, topic_prefix) as (port, server):
        asyncio.run(publish_for(port, 1.0))  # connect, warm the producer
        cpu_before = sum(server.cpu_times()[:2])
        answers = asyncio.run(publish_for(port, WARMUP_SECONDS + MEASURE_SECONDS))
        cpu = sum(server.cpu_times()[:2]) - cpu_before
    start = answers[0][0] + WARMUP_SECONDS
    measured = [answer for answer in answers if answer[0] > start]
    elapsed = measured[-1][0] - start
    return {
        "trades_per_s": round(sum(accepted for _, accepted, _ in measured) / elapsed),
        "server_cpu_us_per_trade": round(cpu / sum(accepted for _, accepted, _ in answers) * 1e6, 1),
    }


def loss(traced: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Fraction of throughput lost and of CPU per trade added, against the baseline."""
    return {
        "throughput_loss": round(1 - traced["trades_per_s"] / baseline["trades_per_s"], 3),
        "cpu_per_trade_increase": round(
            traced["server_cpu_us_per_trade"] / baseline["server_cpu_us_per_trade"] - 1, 3
        ),
    }


def main() -> None:
    with kafka_bootstrap() as bootstrap, otlp_sink() as (sink, endpoint, collector):
        settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.")
        provision_topics(settings)
        exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "1000"}
        setups = {
            "off": {"OTEL_TRACES_SAMPLER": "always_off"},
            "default": exporting,
            "full": exporting | {"OTEL_TRACES_SAMPLER": "always_on"},
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
        for _ in range(ROUNDS):
            for name, variables in setups.items():
                runs[name].append(measure(bootstrap, settings.topic_prefix, variables))
        results = {
            name: {figure: statistics.median(run[figure] for run in measured) for figure in measured[0]}
            for name, measured in runs.items()
        }
    print(
        json.dumps(
            {
                "otlp_sink": sink,
                "batch_size": 500,
                "measure_seconds": MEASURE_SECONDS,
                "rounds": ROUNDS,
                "cpus": os.cpu_count(),
                "off_no_exporter_no_sampling": results["off"],
                "default_parentbased_1pct_exporting": results["default"],
                "full_always_on_exporting": results["full"],
                "overhead_default_vs_off": loss(results["default"], results["off"]),
                "overhead_full_vs_off": loss(results["full"], results["off"]),
                "target_default_throughput_loss_at_most": 0.10,
                **({"spans_received_by_collector": collector.spans} if collector is not None else {}),
            }
        )
    )


if __name__ == "__main__":
    main()
