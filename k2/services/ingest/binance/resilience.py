"""Reconnect discipline: jittered exponential backoff, a circuit breaker over connection attempts, and the
rate limits Binance enforces (connection attempts per IP, control messages per connection)."""

import asyncio
import logging
import random
import time
from collections import deque

from k2.ingest.v1.ingest_pb2 import CircuitState

log = logging.getLogger(__name__)


class Backoff:
    """Capped exponential backoff with jitter: attempt n waits a random time in [d/2, d], d = min(cap, base·2^n).
    Never zero (no reconnect storm), never above the cap, and spread so many clients do not retry in step."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 62))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


class CircuitBreaker:
    """Counts consecutive failed connection attempts over all endpoints. After `threshold` of them the circuit
    opens: no attempt for `cooldown` seconds. Then it is half-open: one trial attempt; success closes the circuit,
    failure opens it again for another cooldown."""

    def __init__(self, threshold: int, cooldown: float):
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = CircuitState.CIRCUIT_STATE_CLOSED
        self.failures = 0
        self.opened = 0  # times the circuit opened
        self._opened_at = 0.0
        self._trial_running = False
        self._changed = asyncio.Event()

    async def admit(self) -> None:
        """Waits until an attempt may be made; the caller then reports succeeded(), failed() or abandoned()."""
        while True:
            if self.state == CircuitState.CIRCUIT_STATE_CLOSED:
                return
            if self.state == CircuitState.CIRCUIT_STATE_OPEN:
                remaining = self._opened_at + self.cooldown - time.monotonic()
                if remaining > 0:
                    await self._wait(remaining)
                    continue
                self.state = CircuitState.CIRCUIT_STATE_HALF_OPEN
                log.info("binance circuit half-open: one trial connection")
            if not self._trial_running:
                self._trial_running = True
                return
            await self._wait(None)

    async def _wait(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def succeeded(self) -> None:
        if self.state != CircuitState.CIRCUIT_STATE_CLOSED:
            log.info("binance circuit closed: connected again")
        self.state = CircuitState.CIRCUIT_STATE_CLOSED
        self.failures = 0
        self._trial_running = False
        self._notify()

    def failed(self) -> None:
        self.failures += 1
        half_open = self.state == CircuitState.CIRCUIT_STATE_HALF_OPEN
        if half_open or (self.state == CircuitState.CIRCUIT_STATE_CLOSED and self.failures >= self.threshold):
            self.state = CircuitState.CIRCUIT_STATE_OPEN
            self._opened_at = time.monotonic()
            self.opened += 1
            log.error(
                "binance circuit open after %d consecutive failed connection attempts; next trial in %.1fs",
                self.failures,
                self.cooldown,
            )
        self._trial_running = False
        self._notify()

    def abandoned(self) -> None:
        """An admitted attempt that was cancelled before it could succeed or fail."""
        self._trial_running = False
        self._notify()


class SlidingWindowLimiter:
    """At most `limit` acquisitions per `window` seconds; acquire() waits for a free slot."""

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._times and now - self._times[0] >= self.window:
                    self._times.popleft()
                if len(self._times) < self.limit:
                    self._times.append(now)
                    return
                await asyncio.sleep(self._times[0] + self.window - now)
