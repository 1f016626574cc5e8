"""Measure how fast an exchange delivers events to one client.

A plain socket performs the WebSocket handshake and then only counts events in the received bytes
(the payload marker per stream kind), so the client costs far less than the server it measures.

    python -m k2.services.replay_exchange.throughput ws://127.0.0.1:9443 --path /ws/btcusdt@trade --seconds 5
"""

import argparse
import base64
import os
import socket
import time
from urllib.parse import urlsplit

_MARKERS = {"trade": b'"e":"trade"', "aggTrade": b'"e":"aggTrade"', "bookTicker": b'{"u":'}


def measure_send_rate(
    base_url: str, path: str = "/ws/btcusdt@trade", seconds: float = 5.0, warmup: float = 0.5
) -> dict[str, float]:
    """Events/s and MB/s received on `path` over `seconds` (after `warmup`)."""
    url = urlsplit(base_url)
    kinds = {
        name.split("@", 1)[1] for name in path.replace("/stream?streams=", "/").split("/") if "@" in name
    }
    markers = [_MARKERS[kind.split("?")[0]] for kind in kinds]
    with socket.create_connection((url.hostname, url.port or 80), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            response += chunk
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(response.split(b"\r\n", 1)[0].decode(errors="replace"))
        buffer = bytearray(4 * 2**20)
        view = memoryview(buffer)
        overlap = max(len(m) for m in markers) - 1
        tail = b""
        warm_until = time.monotonic() + warmup
        while time.monotonic() < warm_until:
            sock.recv_into(buffer)
        events = received = 0
        started = time.monotonic()
        deadline = started + seconds
        while (now := time.monotonic()) < deadline:
            size = sock.recv_into(buffer)
            if not size:
                break
            received += size
            chunk = tail + bytes(view[:size])
            events += sum(chunk.count(marker) for marker in markers)
            tail = chunk[-overlap:]
        elapsed = now - started
    return {
        "events_per_second": events / elapsed,
        "mb_per_second": received / elapsed / 1e6,
        "events": events,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m k2.services.replay_exchange.throughput")
    parser.add_argument("url", help="exchange base URL, e.g. ws://127.0.0.1:9443")
    parser.add_argument("--path", default="/ws/btcusdt@trade")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    result = measure_send_rate(args.url, args.path, args.seconds)
    print(
        f"{result['events_per_second']:,.0f} events/s, {result['mb_per_second']:.1f} MB/s "
        f"({result['events']:,} events in {result['seconds']:.1f} s)"
    )


if __name__ == "__main__":
    main()
