"""The broker a benchmark runs against: KAFKA_BOOTSTRAP_SERVERS if set, else a broker of its own started with
scripts/kafka.sh (own run folder under /tmp, own ports), stopped again when the benchmark ends. Its output
goes to stderr: a benchmark's stdout is its one JSON object."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def kafka_bootstrap() -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    run_dir = tempfile.mkdtemp(prefix="k2-bench-kafka-")
    port, controller_port = free_port(), free_port()
    env = os.environ | {
        "K2_RUN_DIR": run_dir,
        "K2_KAFKA_PORT": str(port),
        "K2_KAFKA_CONTROLLER_PORT": str(controller_port),
    }
    subprocess.run([KAFKA_SCRIPT, "up"], env=env, check=True, stdout=sys.stderr)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([KAFKA_SCRIPT, "down"], env=env, check=False, stdout=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)
