"""A small reverse HTTP proxy for tests and benchmarks, placed in front of a local emulator.

It records every request (to assert, say, that a no-op run sends no writes), with when it
arrived and when its answer was ready (`timed()`, `round_trip_depth`), and, when asked,
the bodies of the requests it forwards (to check what a client sent), adds latency, enforces
BigQuery-like rate limits (answering 403 rateLimitExceeded like the real service), injects
faults (503, 429, dropped connections, lost responses, extra delay) and runs a test's callback
just before it forwards a given request (a second writer acting between a client's read and its
write). Standard library only, so that it runs wherever the tests run.

    with Proxy("http://127.0.0.1:9050", rate_limits=BIGQUERY_RATE_LIMITS) as proxy:
        client = bigquery.Client(..., client_options={"api_endpoint": proxy.url})
        ...
        assert proxy.count(reads=False) == 0

Request bodies are buffered (tests send small ones); responses are streamed. What the proxy does
to a request (rate limits, faults) is in proxy_rules.py, the HTTP server in proxy_http.py.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from tests.support.proxy_http import Server
from tests.support.proxy_rules import (
    BIGQUERY_RATE_LIMITS,
    FAULT_KINDS,
    BeforeNext,
    FaultKind,
    FaultPlan,
    NextFaults,
    RateLimit,
    check_kind,
    matches,
)

__all__ = [
    "BIGQUERY_RATE_LIMITS",
    "FAULT_KINDS",
    "FaultKind",
    "FaultPlan",
    "Proxy",
    "RateLimit",
    "Recorded",
    "Sent",
    "Timed",
    "round_trip_chain",
    "round_trip_depth",
]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD"})
UPSTREAM_TIMEOUT = 300.0  # seconds; a hung emulator should not hang a proxy thread forever
POOL_SIZE = 8  # idle upstream connections kept for reuse


class Recorded(NamedTuple):
    """One request as the proxy saw it. A plain 3-tuple, so tests can compare to literals."""

    method: str
    path: str  # without the query, percent-encoding as sent
    status: int | None  # what the client received; None: the connection was dropped


class Timed(NamedTuple):
    """One request with when the proxy had it (`started`: its headers read) and when its answer
    was ready (`ended`: the upstream answered, or the proxy's own answer or drop), on the proxy's
    clock. The injected latency falls inside; the client's own time before and after does not."""

    method: str
    path: str
    status: int | None
    started: float
    ended: float


def round_trip_chain(requests: Iterable[Timed]) -> list[Timed]:
    """The longest chain of requests each started no earlier than the previous one ended: the
    round trips a client made one after another, whatever each one's own duration (a slow
    upstream stretches the wall time, not this). Greedy by end time, which gives the largest set
    of pairwise non-overlapping intervals; sorted by start, such a set is a chain. Requests of
    several proxies count together when they share a clock (the default, time.monotonic)."""
    chain: list[Timed] = []
    free = -math.inf
    for request in sorted(requests, key=lambda r: r.ended):
        if request.started >= free:
            chain.append(request)
            free = request.ended
    return chain


def round_trip_depth(requests: Iterable[Timed | tuple[float, float]]) -> int:
    """The length of `round_trip_chain` (of Timed requests, or of (start, end) pairs)."""
    timed = (r if isinstance(r, Timed) else Timed("", "", None, *r) for r in requests)
    return len(round_trip_chain(timed))


class Sent(NamedTuple):
    """A request the proxy forwarded, with its body (recorded with record_bodies=True)."""

    method: str
    path: str  # without the query
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Proxy:
    """A reverse proxy to `upstream` ("http://host:port"), as a context manager.

    latency, rate limits and faults apply in that order to every request: sleep `latency`,
    answer 403 if over a rate limit (not forwarded; counted in `rejected`), inject a fault if
    one is due (counted in `injected`), else run the callback due before it (`before_next`)
    and forward. `clock` and `sleep` are injectable so tests are deterministic. `latency` and
    `faults` may be changed while running. With `record_bodies`, `sent()` holds every
    forwarded request with its headers and body.
    """

    def __init__(
        self,
        upstream: str,
        *,
        latency: float = 0.0,
        rate_limits: Sequence[RateLimit] = (),
        faults: FaultPlan | None = None,
        rewrite_urls: bool = False,
        record_bodies: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host[:port], got {upstream!r}")
        self.upstream = f"http://{parts.netloc}"
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._upstream_netloc = parts.netloc
        self.latency = latency
        self.rate_limits = tuple(rate_limits)
        # Also rewrite the upstream's own URL in JSON answers (fake-gcs-server's mediaLink and
        # selfLink name it), so that clients following them stay on the proxy.
        self.rewrite_urls = rewrite_urls
        self.record_bodies = record_bodies
        self._clock = clock
        self._sleep = sleep
        self._host = host
        self._port = port
        self.url = ""  # set by start()

        self._lock = threading.Lock()
        self._records: list[Recorded] = []
        self._timed: list[Timed] = []
        self._rejected = 0
        self._injected = 0
        self._windows: dict[tuple[int, str], deque[float]] = {}
        self._next_faults: list[NextFaults] = []
        self._before_next: list[BeforeNext] = []
        self._sent: list[Sent] = []
        self._faults: FaultPlan | None = None
        self._rng = random.Random(0)
        self.faults = faults

        self._pool: list[http.client.HTTPConnection] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("proxy already started")
        server = Server((self._host, self._port), self)
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        # A short poll interval so that stop() returns quickly.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"proxy:{port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Handler threads may be parked on idle keep-alive connections: closing the sockets
        # ends them, and tells the clients that the proxy is gone.
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    def __enter__(self) -> Proxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what was seen ------------------------------------------------------------------

    def timed(self) -> list[Timed]:
        """Every request so far with its start and end on the proxy's clock (`round_trip_depth`
        turns them into the round trips a client made one after another)."""
        with self._lock:
            return list(self._timed)

    def requests(self) -> list[Recorded]:
        """A snapshot of every request so far, in arrival order of their answers."""
        with self._lock:
            return list(self._records)

    def reads(self) -> list[Recorded]:
        return [r for r in self.requests() if r.method in READ_METHODS]

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests() if r.method in WRITE_METHODS]

    def sent(self) -> list[Sent]:
        """Every forwarded request with its body, in the order they were forwarded (needs
        record_bodies=True; rejected requests and injected faults were not forwarded)."""
        with self._lock:
            return list(self._sent)

    def count(self, reads: bool | None = None) -> int:
        """All requests (None), reads only (True: GET, HEAD) or writes only (False)."""
        if reads is None:
            return len(self.requests())
        return len(self.reads() if reads else self.writes())

    @property
    def rejected(self) -> int:
        """Requests answered 403 by a rate limit (not forwarded)."""
        with self._lock:
            return self._rejected

    @property
    def injected(self) -> int:
        """Faults injected, of every kind."""
        with self._lock:
            return self._injected

    def reset(self) -> None:
        """Forget recorded requests and counters. Rate-limit windows and pending faults stay:
        they model the server's state, not the test's bookkeeping."""
        with self._lock:
            self._records.clear()
            self._timed.clear()
            self._sent.clear()
            self._rejected = 0
            self._injected = 0

    # -- faults -------------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan | None:
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan | None) -> None:
        with self._lock:
            self._faults = plan
            self._rng = random.Random(plan.seed if plan else 0)

    def fail_next(
        self,
        n: int,
        kind: FaultKind,
        *,
        method: str | None = None,
        path_regex: str | None = None,
        delay: float = 1.0,
    ) -> None:
        """Inject `kind` into the next n requests matching method (a fullmatched regex) and
        path_regex (re.search). Checked before the random plan, oldest rule first."""
        check_kind(kind)
        if n <= 0:
            return
        with self._lock:
            self._next_faults.append(NextFaults(n, kind, method, path_regex, delay))

    def before_next(
        self, callback: Callable[[], None], *, method: str | None = None, path_regex: str | None = None
    ) -> None:
        """Run `callback()` once, in the proxy's handler thread, right before the next request
        matching method (a fullmatched regex) and path_regex (re.search) is forwarded: the
        client has sent it and waits, the upstream has not seen it. A test's second writer acts
        there, between a client's read and its write. An exception in the callback answers
        that request 502; the callback's own requests should go straight to the upstream."""
        with self._lock:
            self._before_next.append(BeforeNext(callback, method, path_regex))

    # -- internals, called from handler threads ----------------------------------------

    def _callback_for(self, method: str, path: str) -> Callable[[], None] | None:
        with self._lock:
            for hook in self._before_next:
                if matches(hook.method, hook.path_regex, method, path):
                    self._before_next.remove(hook)
                    return hook.callback
        return None

    def _record_sent(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.record_bodies:
            sent = Sent(method, path, {k.lower(): v for k, v in headers}, body)
            with self._lock:
                self._sent.append(sent)

    def _record(self, method: str, path: str, status: int | None, started: float) -> None:
        ended = self._clock()
        with self._lock:
            self._records.append(Recorded(method, path, status))
            self._timed.append(Timed(method, path, status, started, ended))

    def _admit(self, method: str, path: str) -> RateLimit | None:
        """The first limit the request would exceed, or None after counting it in all."""
        now = self._clock()
        with self._lock:
            windows = []
            for index, limit in enumerate(self.rate_limits):
                if not limit.matches(method, path):
                    continue
                key = (index, path if limit.per_path else "")
                window = self._windows.setdefault(key, deque())
                while window and window[0] <= now - limit.window:
                    window.popleft()
                if len(window) >= limit.allowed:
                    self._rejected += 1
                    return limit
                windows.append(window)
            for window in windows:
                window.append(now)
        return None

    def _fault_for(self, method: str, path: str) -> tuple[FaultKind, float] | None:
        with self._lock:
            for rule in self._next_faults:
                if matches(rule.method, rule.path_regex, method, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._next_faults.remove(rule)
                    self._injected += 1
                    return rule.kind, rule.delay
            plan = self._faults
            if plan is None or not plan.kinds:
                return None
            if not matches(plan.method, plan.path_regex, method, path):
                return None
            if self._rng.random() >= plan.probability:
                return None
            self._injected += 1
            return self._rng.choice(list(plan.kinds)), plan.delay

    def _take_connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle pooled upstream connection (reused=True) or a new one."""
        while True:
            with self._lock:
                conn = self._pool.pop() if self._pool else None
            if conn is None:
                conn = http.client.HTTPConnection(
                    self._upstream_host, self._upstream_port, timeout=UPSTREAM_TIMEOUT
                )
                return conn, False
            # An idle connection that is readable has been closed by the upstream (or holds
            # garbage): drop it rather than lose a request on it.
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn, True
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._server is not None and len(self._pool) < POOL_SIZE:
                self._pool.append(conn)
                return
        conn.close()
