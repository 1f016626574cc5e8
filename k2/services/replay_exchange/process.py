"""Run the exchange in another process and drive it over its HTTP control endpoint."""

import json
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any, Self

_BANNER_URL = re.compile(r"on (ws://\S+)")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def http_control(base_url: str, fault: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
    """POST /control/<fault>?params to an exchange (base_url: ws://host:port or http://host:port).

    Raises RuntimeError with the server's message on a non-2xx answer. Blocking: from a coroutine
    running in the exchange's own event loop, call the in-process methods instead.
    """
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = f"{_http_base(base_url)}/control/{fault}" + (f"?{query}" if query else "")
    return _request(urllib.request.Request(url, data=b"", method="POST"), timeout)


def http_stats(base_url: str, timeout: float = 10.0) -> dict[str, Any]:
    return _request(urllib.request.Request(f"{_http_base(base_url)}/stats"), timeout)


def _http_base(base_url: str) -> str:
    return re.sub(r"^ws", "http", base_url.rstrip("/"))


def _request(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(
            f"{request.full_url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        ) from None


class ReplayExchangeProcess:
    """`python -m k2.services.replay_exchange --port 0 <args>` as a child process.

        with ReplayExchangeProcess("--rate", "1000", "--ping-interval", "1") as exchange:
            connect(exchange.url + "/ws/btcusdt@trade"); exchange.control("drop")

    stop() sends SIGTERM and returns the exit code (0 on a clean shutdown). The child's stderr goes
    to `stderr` (a file object), else it is inherited.
    """

    def __init__(self, *args: str, startup_timeout: float = 20.0, stderr: IO[Any] | None = None) -> None:
        self.args = ["--port", "0", *args]
        self.startup_timeout = startup_timeout
        self.stderr = stderr
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "k2.services.replay_exchange", *self.args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=_REPO_ROOT,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        ready, _, _ = select.select([self.process.stdout], [], [], self.startup_timeout)
        line = self.process.stdout.readline() if ready else ""
        match = _BANNER_URL.search(line)
        if match is None:
            self.stop(timeout=max(1.0, deadline - time.monotonic()))
            raise RuntimeError(
                f"replay exchange did not start (exit code {self.process.returncode}, first line {line!r})"
            )
        self.url = match.group(1)
        return self.url

    def stop(self, timeout: float = 10.0) -> int:
        process = self.process
        if process is None:
            raise RuntimeError("not started")
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def control(self, fault: str, **params: Any) -> dict[str, Any]:
        return http_control(self.url, fault, **params)

    def stats(self) -> dict[str, Any]:
        return http_stats(self.url)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
