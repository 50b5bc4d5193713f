"""What the test proxy does to a request instead of, or before, forwarding it: BigQuery-like
rate limits (403 rateLimitExceeded), injected faults, and the JSON error answers they give.

Split from proxy.py along its seam: these decide, proxy_http.py moves the bytes. Standard library
only, like the proxy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

RATE_LIMIT_MESSAGE = (
    "Exceeded rate limits: too many api requests per user per method for this user_method. "
    "For more information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas"
)

# "503": backendError, "429": rateLimitExceeded, "drop": close the connection without
# forwarding or answering, "drop_after": forward, then close without answering (the upstream
# did the work but the client never learns it: the case that makes retries non-idempotent),
# "delay": extra latency, then forward.
FaultKind = Literal["503", "429", "drop", "drop_after", "delay"]
FAULT_KINDS: tuple[FaultKind, ...] = ("503", "429", "drop", "drop_after", "delay")


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """A sliding-window limit on the requests matching method and path_regex (re.search on
    the path without query; None matches all). It allows per_second * window requests in any
    `window` seconds: RateLimit(name="tables.insert", method="POST", path_regex=..., per_second=10)
    is 10/s; per_second=0.5, window=10, per_path=True is "5 per table per 10 s".
    Only admitted requests fill a window, so a client that backs off gets through again."""

    name: str
    per_second: float
    method: str | None = None
    path_regex: str | None = None
    window: float = 1.0
    per_path: bool = False  # a separate window for each distinct matching path
    message: str = RATE_LIMIT_MESSAGE

    @property
    def allowed(self) -> int:
        # The epsilon keeps 0.5 * 10 from rounding down to 4.
        return int(self.per_second * self.window + 1e-9)

    def matches(self, method: str, path: str) -> bool:
        return matches(self.method, self.path_regex, method, path)


# The limits the local-stack notes list for real BigQuery (per user; the per-table and
# per-dataset ones are approximated by keying on the resource path).
BIGQUERY_RATE_LIMITS: tuple[RateLimit, ...] = (
    RateLimit(name="api", per_second=100),
    RateLimit(
        name="tables.insert",
        method="POST",
        path_regex=r"/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables$",
        per_second=10,
    ),
    RateLimit(
        name="tables.update",
        method="PATCH|PUT",
        path_regex=r"/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables/[^/]+$",
        per_second=0.5,
        window=10,
        per_path=True,
    ),
    RateLimit(
        name="datasets.update",
        method="PATCH|PUT",
        path_regex=r"/bigquery/v2/projects/[^/]+/datasets/[^/]+$",
        per_second=0.5,
        window=10,
        per_path=True,
    ),
)


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """Random faults: each request matching method/path_regex gets, with `probability`, a
    fault whose kind is drawn from `kinds`. Seeded, so a sequential test replays exactly."""

    probability: float
    kinds: Sequence[FaultKind] = ("503",)
    method: str | None = None  # a regex, fullmatched: "POST", "PATCH|PUT"
    path_regex: str | None = None
    delay: float = 1.0  # the extra latency of a "delay" fault, in seconds
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in self.kinds:
            check_kind(kind)


@dataclass
class NextFaults:
    remaining: int
    kind: FaultKind
    method: str | None
    path_regex: str | None
    delay: float


@dataclass
class BeforeNext:
    callback: Callable[[], None]
    method: str | None
    path_regex: str | None


def check_kind(kind: str) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")


def matches(method_re: str | None, path_re: str | None, method: str, path: str) -> bool:
    if method_re is not None and not re.fullmatch(method_re, method):
        return False
    return path_re is None or re.search(path_re, path) is not None


def error_body(code: int, status: str, reason: str, domain: str, message: str) -> bytes:
    """An error body shaped like Google's JSON APIs, so clients parse the reason and retry."""
    error = {"message": message, "domain": domain, "reason": reason}
    body = {"error": {"code": code, "message": message, "errors": [error], "status": status}}
    return json.dumps(body).encode()


FAULT_RESPONSES: dict[str | None, tuple[int, str, str, str, str]] = {
    "503": (
        503,
        "UNAVAILABLE",
        "backendError",
        "global",
        "Error encountered during execution. Retrying may solve the problem.",
    ),
    "429": (429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", "usageLimits", RATE_LIMIT_MESSAGE),
}
