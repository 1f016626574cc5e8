"""Wait until the local Kafka broker answers a metadata request listing itself, or fail.

Usage: wait_ready.py HOST:PORT BROKER_PID TIMEOUT_SECONDS [NODE_ID]
Exit 0 when ready, 1 on timeout, 2 when the broker process exited.
"""

import socket
import sys
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def main() -> int:
    bootstrap, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    node_id = int(sys.argv[4]) if len(sys.argv) > 4 else None
    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    admin = None
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return 2
        # The client port opens only late in start-up; connecting earlier would just log refused connections.
        if admin is None and port_open(host, int(port)):
            admin = AdminClient({"bootstrap.servers": bootstrap})
        if admin is not None:
            try:
                # A KRaft broker is only listed once it has caught up with the metadata log and is unfenced.
                brokers = admin.list_topics(timeout=2).brokers
                if brokers and (node_id is None or node_id in brokers):
                    return 0
            except KafkaException:
                pass
        time.sleep(0.2)
    return 1


if __name__ == "__main__":
    sys.exit(main())
