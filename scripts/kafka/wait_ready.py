"""Wait until the local Kafka broker answers a metadata request listing itself, or fail.

Usage: wait_ready.py HOST:PORT BROKER_PID TIMEOUT_SECONDS
Exit 0 when ready, 1 on timeout, 2 when the broker process exited.
"""

import logging
import os
import socket
import sys
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    bootstrap, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    quiet = logging.getLogger("kafka-wait-ready")
    quiet.setLevel(logging.CRITICAL)
    admin = None
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return 2
        if admin is None and port_open(host, int(port)):
            admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet})
        if admin is not None:
            try:
                # A KRaft broker only lists itself once it has caught up with the metadata log and is unfenced.
                if admin.list_topics(timeout=2).brokers:
                    return 0
            except KafkaException:
                pass
        time.sleep(0.2)
    return 1


if __name__ == "__main__":
    sys.exit(main())
