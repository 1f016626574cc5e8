"""How the SDK retries after UNAVAILABLE (and DEADLINE_EXCEEDED on streams):

- unary calls: gRPC's own retry policy, in each channel's service config, a bounded number of attempts within
  the call's deadline;
- publish streams: reopened after a capped, jittered backoff, at most `retry_attempts` times in a row (a batch
  acknowledged in between starts the count afresh);
- subscriptions: reconnected until the caller stops them, after the same backoff (a batch received in between
  starts it afresh), each reconnect reported to the caller's `on_reconnect`.
"""

import json
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_never
from tenacity import wait_random_exponential as backoff

from k2.clients.errors import K2Error
from k2.clients.models import Reconnect
from k2.clients.settings import ClientSettings
from k2.ingest.v1 import ingest_pb2
from k2.query.v1 import query_pb2
from k2.writer.v1 import writer_pb2

# gRPC refuses a retry policy of more attempts than this (grpc/proposal A6).
GRPC_MAX_ATTEMPTS = 5
SERVICE_DESCRIPTORS = {
    "ingest": ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
    "writer": writer_pb2.DESCRIPTOR.services_by_name["WriterService"],
    "query": query_pb2.DESCRIPTOR.services_by_name["QueryService"],
}
OnReconnect = Callable[[Reconnect], None]


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def service_config(service: str, settings: ClientSettings) -> str | None:
    """The channel's service config: a retry policy for the service's unary methods, or None when
    `retry_attempts` is 0. Streams are left out (the SDK resumes them itself), and so is the health check,
    which reports the service's state as it is."""
    attempts = min(settings.retry_attempts + 1, GRPC_MAX_ATTEMPTS)
    if attempts < 2:
        return None
    descriptor = SERVICE_DESCRIPTORS[service]
    names = [
        {"service": descriptor.full_name, "method": method.name}
        for method in descriptor.methods
        if not method.client_streaming and not method.server_streaming
    ]
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": _seconds(settings.retry_initial_backoff_seconds),
        "maxBackoff": _seconds(settings.retry_max_backoff_seconds),
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


def _retryable(error: BaseException) -> bool:
    return isinstance(error, K2Error) and error.retryable


def stream_retrying(
    settings: ClientSettings,
    *,
    bounded: bool,
    progress: Callable[[], int],
    on_retry: OnReconnect | None = None,
    failures_before: int = 0,
) -> AsyncRetrying:
    """Retries of one run of failures in a row: a retryable K2Error is retried after a capped, jittered
    exponential backoff (at most `retry_attempts` times when `bounded`), unless `progress()` (a count of what
    the stream delivered) has moved since the run began: then the error is raised, for the caller to start a
    new run. `failures_before`: failures of the run counted before it began (the stream's loss)."""
    start = progress()

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            assert isinstance(error, K2Error)
            on_retry(Reconnect(error, failures_before + state.attempt_number, state.upcoming_sleep))

    stop: Any = stop_after_attempt(settings.retry_attempts + 1) if bounded else stop_never
    return AsyncRetrying(
        stop=stop,
        reraise=True,
        before_sleep=before_sleep,
        wait=backoff(
            multiplier=settings.retry_initial_backoff_seconds, max=settings.retry_max_backoff_seconds
        ),
        retry=retry_if_exception(lambda error: _retryable(error) and progress() == start),
    )
