"""The retry policy of the services' background work, on tenacity: capped, jittered exponential backoff
(tenacity's "full jitter": a random wait up to min(cap, initial·2^n)), sleeping on the service's stop event so a
stop is never held up by a backoff, and ending quietly (None) once the service stops.

Bounded retries of one operation (a commit that lost a race, a publish) build their own `Retrying` where they are
used; the SDK's policies are in k2/clients/retrying.py."""

import logging
import threading
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

log = logging.getLogger(__name__)


def until_stopped(
    stopping: threading.Event,
    what: str,
    *,
    initial: float = 0.5,
    cap: float = 10.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    deadline: float | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
) -> Retrying:
    """Retries `what` after each failure of the kinds `retry_on` until it returns, `stopping` is set (then the
    call returns None) or the monotonic `deadline` passes (then the last error is raised). Each failure is
    logged with the wait before the next attempt and handed to `on_failure`."""

    def stop(state: RetryCallState) -> bool:
        return stopping.is_set() or (deadline is not None and time.monotonic() >= deadline)

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert error is not None
        log.warning(
            "%s failed (%s: %s); retrying in %.1fs", what, type(error).__name__, error, state.upcoming_sleep
        )
        if on_failure is not None:
            on_failure(error)

    def pause(seconds: float) -> None:
        stopping.wait(seconds)

    def after_stop(state: RetryCallState) -> None:
        if not stopping.is_set() and state.outcome is not None:
            state.outcome.result()  # the deadline passed: raise the last error

    return Retrying(
        stop=stop,
        wait=wait_random_exponential(multiplier=initial, max=cap),
        retry=retry_if_exception_type(retry_on),
        sleep=pause,
        before_sleep=before_sleep,
        retry_error_callback=after_stop,
    )
