"""k2.core.retry.until_stopped: the background retry policy of the services (fan-out consumer, ingest's
read-back, the writer's loop)."""

import threading
import time

import pytest

from k2.core.retry import until_stopped


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"failure {self.calls}")
        return "done"


def test_retries_until_the_call_succeeds_and_reports_each_failure() -> None:
    seen: list[str] = []
    flaky = Flaky(3)
    result = until_stopped(
        threading.Event(), "flaky", initial=0.001, cap=0.01, on_failure=lambda error: seen.append(str(error))
    )(flaky)
    assert (result, flaky.calls) == ("done", 4)
    assert seen == ["failure 1", "failure 2", "failure 3"]


def test_a_stop_ends_the_retries_quietly_even_mid_backoff() -> None:
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    started = time.monotonic()
    assert until_stopped(stopping, "never", initial=60, cap=60)(Flaky(10**9)) is None
    assert time.monotonic() - started < 30  # the 60 s backoff was cut short by the stop


def test_a_deadline_raises_the_last_error() -> None:
    with pytest.raises(ConnectionError):
        until_stopped(threading.Event(), "never", initial=0.001, cap=0.01, deadline=time.monotonic() + 0.1)(
            Flaky(10**9)
        )


def test_errors_of_other_kinds_are_not_retried() -> None:
    def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        until_stopped(threading.Event(), "broken", retry_on=ConnectionError)(broken)
