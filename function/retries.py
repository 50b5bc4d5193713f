"""Which client failures go away on their own, how long to retry them, and what the rest become
(`TransientError`, `PermanentError`): shared by the BigQuery and Cloud Storage adapters."""

from __future__ import annotations

import concurrent.futures

import requests.exceptions
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions

from .errors import PermanentError, TransientError

_TRANSIENT_TYPES = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    ConnectionError,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    auth_exceptions.TransportError,
)
# The reasons BigQuery gives to errors that go away on their own (403 rateLimitExceeded among them).
_TRANSIENT_REASONS = {"rateLimitExceeded", "backendError", "internalError", "badGateway"}


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: 5xx, 429, rateLimitExceeded/backendError, lost connections."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    errors = getattr(exc, "errors", None) or []
    return any(isinstance(e, dict) and e.get("reason") in _TRANSIENT_REASONS for e in errors)


def make_retry(deadline: float) -> Retry:
    """Exponential backoff (0.25 s doubling to 8 s) on transient errors, for `deadline` seconds."""
    return Retry(predicate=is_transient, initial=0.25, maximum=8.0, multiplier=2.0, timeout=deadline)


def storage_retry(deadline: float) -> Retry:
    """Cloud Storage's own retry policy (transient errors; conditional writes only), bounded
    by our deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline)


def translate(exc: Exception, what: str, deadline: float) -> Exception:
    """A client exception as the project's own: TransientError when waiting or delivering again
    may help, else PermanentError with the API's message. (An exception that is not the
    client's is a bug: it is not reported as the API's answer, and not retried forever.)"""
    if isinstance(exc, gexc.RetryError):
        return TransientError(f"{what} kept failing for {deadline:g} s: {exc.cause}")
    if isinstance(exc, concurrent.futures.TimeoutError):
        return TransientError(f"{what} did not finish within {deadline:g} s")
    if is_transient(exc):
        return TransientError(f"{what} failed: {exc}")
    if isinstance(exc, gexc.GoogleAPICallError):
        return PermanentError(f"{what} was refused: {exc.message}")
    return PermanentError(f"{what} failed unexpectedly: {type(exc).__name__}: {exc}")
