"""The K2 services as real processes (`python -m <module>`), for tests that kill, stop and restart them. No tests
here. Each process has its own ports and log file; its environment names the test's Kafka, topics and catalog."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from conftest import ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc

from k2.core.config import IcebergSettings, KafkaSettings

# Where each service's `python -m` entry point lives.
SERVICE_MODULES = {
    "ingest": "k2.services.ingest",
    "writer": "k2.services.writer",
    "query": "k2.services.query",
}


_handed_out: set[int] = set()


def restartable_port() -> int:
    """A free port for a server that is stopped and started again on it, outside the kernel's ephemeral range:
    an ephemeral port (conftest.free_port) can go to another process's socket while the server is down."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(20_000, ephemeral_low)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def platform_env(kafka: KafkaSettings, iceberg: IcebergSettings) -> dict[str, str]:
    """What every service of one test platform shares: the Kafka cluster and topics, the Iceberg catalog."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "K2_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "K2_ICEBERG_CATALOG_NAME": iceberg.catalog_name,
        "K2_ICEBERG_CATALOG_URI": iceberg.catalog_uri,
        "K2_ICEBERG_WAREHOUSE": iceberg.warehouse,
    }


class ServiceProcess:
    """One service; `start()` again after `kill()` restarts it on the same ports, appending to the same log."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path):
        self.name = name
        self.port, self.metrics_port = restartable_port(), restartable_port()
        prefix = f"K2_{name.upper()}_"
        self.env = (
            os.environ
            | env
            | {f"{prefix}PORT": str(self.port), f"{prefix}METRICS_PORT": str(self.metrics_port)}
        )
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running(), f"{self.name} already runs"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", SERVICE_MODULES[self.name]],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def wait_serving(self, timeout: float = 120.0) -> float:
        """Until its gRPC health says SERVING; returns the seconds waited."""
        started = time.monotonic()
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.running(), f"{self.name} exited: {self.log_tail()}"
                try:
                    if (
                        health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        return time.monotonic() - started
                except grpc.RpcError:
                    pass
                assert time.monotonic() - started < timeout, f"{self.name} not serving: {self.log_tail()}"
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM: the graceful stop; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.running():
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the Prometheus metric's samples whose labels include `labels`."""
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        )
        wanted = {f'{key}="{value}"' for key, value in labels.items()}
        total = 0.0
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            metric, _, label_text = sample.partition("{")
            if metric == name and wanted <= set(label_text.rstrip("}").split(",")):
                total += float(value)
        return total

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]
