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

Request bodies are buffered (tests send small ones); responses are streamed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import random
import re
import select
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "BIGQUERY_RATE_LIMITS",
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

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
NO_BODY_STATUSES = frozenset({204, 304})
UPSTREAM_TIMEOUT = 300.0  # seconds; a hung emulator should not hang a proxy thread forever
POOL_SIZE = 8  # idle upstream connections kept for reuse
CHUNK = 64 * 1024
UPSTREAM_ERRORS = (OSError, http.client.HTTPException)  # refused, reset, timeout, bad framing


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
        return _matches(self.method, self.path_regex, method, path)


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
            _check_kind(kind)


@dataclass
class _NextFaults:
    remaining: int
    kind: FaultKind
    method: str | None
    path_regex: str | None
    delay: float


@dataclass
class _BeforeNext:
    callback: Callable[[], None]
    method: str | None
    path_regex: str | None


def _check_kind(kind: str) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")


def _matches(method_re: str | None, path_re: str | None, method: str, path: str) -> bool:
    if method_re is not None and not re.fullmatch(method_re, method):
        return False
    return path_re is None or re.search(path_re, path) is not None


def _error_body(code: int, status: str, reason: str, domain: str, message: str) -> bytes:
    """An error body shaped like Google's JSON APIs, so clients parse the reason and retry."""
    error = {"message": message, "domain": domain, "reason": reason}
    body = {"error": {"code": code, "message": message, "errors": [error], "status": status}}
    return json.dumps(body).encode()


_FAULT_RESPONSES: dict[str | None, tuple[int, str, str, str, str]] = {
    "503": (
        503,
        "UNAVAILABLE",
        "backendError",
        "global",
        "Error encountered during execution. Retrying may solve the problem.",
    ),
    "429": (429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", "usageLimits", RATE_LIMIT_MESSAGE),
}


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
        self._next_faults: list[_NextFaults] = []
        self._before_next: list[_BeforeNext] = []
        self._sent: list[Sent] = []
        self._faults: FaultPlan | None = None
        self._rng = random.Random(0)
        self.faults = faults

        self._pool: list[http.client.HTTPConnection] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("proxy already started")
        server = _Server((self._host, self._port), self)
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

    def requests(self) -> list[Recorded]:
        """A snapshot of every request so far, in arrival order of their answers."""
        with self._lock:
            return list(self._records)

    def timed(self) -> list[Timed]:
        """Every request so far with its start and end on the proxy's clock (`round_trip_depth`
        turns them into the round trips a client made one after another)."""
        with self._lock:
            return list(self._timed)

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
        _check_kind(kind)
        if n <= 0:
            return
        with self._lock:
            self._next_faults.append(_NextFaults(n, kind, method, path_regex, delay))

    def before_next(
        self, callback: Callable[[], None], *, method: str | None = None, path_regex: str | None = None
    ) -> None:
        """Run `callback()` once, in the proxy's handler thread, right before the next request
        matching method (a fullmatched regex) and path_regex (re.search) is forwarded: the
        client has sent it and waits, the upstream has not seen it. A test's second writer acts
        there, between a client's read and its write. An exception in the callback answers
        that request 502; the callback's own requests should go straight to the upstream."""
        with self._lock:
            self._before_next.append(_BeforeNext(callback, method, path_regex))

    # -- internals, called from handler threads ----------------------------------------

    def _callback_for(self, method: str, path: str) -> Callable[[], None] | None:
        with self._lock:
            for hook in self._before_next:
                if _matches(hook.method, hook.path_regex, method, path):
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
                if _matches(rule.method, rule.path_regex, method, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._next_faults.remove(rule)
                    self._injected += 1
                    return rule.kind, rule.delay
            plan = self._faults
            if plan is None or not plan.kinds:
                return None
            if not _matches(plan.method, plan.path_regex, method, path):
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops connections under concurrency

    def __init__(self, address: tuple[str, int], proxy: Proxy) -> None:
        self.proxy = proxy
        self._open: set[socket.socket] = set()  # client connections, closed by stop()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            open_sockets, self._open = list(self._open), set()
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that go away mid-request are normal here (faults, stop()): stay quiet.
        # Anything else is a proxy bug and should be seen.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as google clients expect
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server
    _started: float  # the current request's arrival, on the proxy's clock

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: no per-request stderr lines

    def _handle(self) -> None:
        proxy = self.server.proxy
        self._started = proxy._clock()
        method = self.command
        target = self.path
        if "://" in target.split("?", 1)[0]:  # absolute-form request target
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        path = target.split("?", 1)[0]

        body = self._read_body()
        if body is None:
            return

        if proxy.latency > 0:
            proxy._sleep(proxy.latency)

        limit = proxy._admit(method, path)
        if limit is not None:
            error = (403, "PERMISSION_DENIED", "rateLimitExceeded", "usageLimits", limit.message)
            self._answer(method, path, error)
            return

        kind, delay = proxy._fault_for(method, path) or (None, 0.0)
        if kind == "delay":
            proxy._sleep(delay)
        elif kind == "drop":
            self._drop(method, path)
            return
        elif kind in _FAULT_RESPONSES:
            self._answer(method, path, _FAULT_RESPONSES[kind])
            return
        callback = proxy._callback_for(method, path)
        if callback is not None:
            try:
                callback()
            except Exception:
                self._answer(
                    method, path, (502, "UNAVAILABLE", "badGateway", "global", "proxy: callback failed")
                )
                raise
        self._forward(method, path, target, body, drop_response=kind == "drop_after")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    def _read_body(self) -> bytes | None:
        """The whole request body (Content-Length or chunked), b"" if none, None if the
        request is malformed (already answered)."""
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        try:
            if "chunked" in encoding:
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""
        except ValueError:
            self.send_error(400, "bad request body framing")
            self.close_connection = True
            return None

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after the chunk
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailers: dropped
        return b"".join(parts)

    def _answer(self, method: str, path: str, error: tuple[int, str, str, str, str]) -> None:
        """The proxy's own JSON error answer (rate limit, fault, bad gateway)."""
        status = error[0]
        payload = _error_body(*error)
        # Record before answering: a client that has its answer must find it recorded.
        self.server.proxy._record(method, path, status, self._started)
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _drop(self, method: str, path: str) -> None:
        self.server.proxy._record(method, path, None, self._started)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _forward(self, method: str, path: str, target: str, body: bytes, *, drop_response: bool) -> None:
        proxy = self.server.proxy
        has_body = bool(body) or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
        hop = HOP_BY_HOP | _connection_tokens(self.headers.get_all("Connection") or [])
        # Host names the upstream; framing is ours (the body is buffered); Expect was
        # already answered by the handler.
        skip = hop | {"host", "content-length", "expect"}
        if proxy.rewrite_urls:
            skip |= {"accept-encoding"}  # a compressed answer could not be rewritten
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in skip]
        headers.append(("Host", proxy._upstream_netloc))
        if has_body:
            headers.append(("Content-Length", str(len(body))))
        proxy._record_sent(method, path, headers, body)

        conn, reused = proxy._take_connection()
        try:
            response = self._exchange(conn, method, target, headers, body)
        except (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine):
            # A reused connection the upstream closed as we sent: the request never reached
            # it, so one retry on a new connection is safe.
            conn.close()
            if not reused:
                self._bad_gateway(method, path)
                return
            conn, _ = proxy._take_connection()
            try:
                response = self._exchange(conn, method, target, headers, body)
            except UPSTREAM_ERRORS:
                conn.close()
                self._bad_gateway(method, path)
                return
        except UPSTREAM_ERRORS:
            conn.close()
            self._bad_gateway(method, path)
            return

        if drop_response:
            with contextlib.suppress(*UPSTREAM_ERRORS):
                response.read()
            conn.close()
            self._drop(method, path)
            return

        try:
            self._relay(method, path, response)
        except UPSTREAM_ERRORS:
            # The client went away (or the upstream did mid-body): neither connection is
            # reusable.
            conn.close()
            self.close_connection = True
            return
        self._release(conn, response)

    @staticmethod
    def _exchange(
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> http.client.HTTPResponse:
        if conn.sock is None:
            conn.connect()
            # http.client sends headers and body in separate writes: without this, a small
            # body can wait for the upstream's delayed ACK (~40 ms).
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body or None)
        return conn.getresponse()

    def _relay(self, method: str, path: str, response: http.client.HTTPResponse) -> None:
        """Stream the upstream's answer back, re-framing the body for this connection."""
        proxy = self.server.proxy
        status = response.status
        no_body = method == "HEAD" or status in NO_BODY_STATUSES or 100 <= status < 200
        known_length = response.length is not None and not response.chunked
        hop = HOP_BY_HOP | _connection_tokens(response.headers.get_all("Connection") or [])
        if proxy.rewrite_urls and not no_body and "json" in (response.getheader("Content-Type") or ""):
            self._relay_rewritten(method, path, response, hop)
            return
        proxy._record(method, path, status, self._started)

        self.send_response_only(status, response.reason)
        for name, value in response.getheaders():
            lname = name.lower()
            if lname in hop or (lname == "content-length" and not (known_length or no_body)):
                continue
            if lname == "location" and value.startswith(proxy.upstream):
                # Resumable upload sessions point at the upstream: keep them on the proxy.
                value = proxy.url + value[len(proxy.upstream) :]
            self.send_header(name, value)
        if no_body:
            self.end_headers()
            response.read()  # lets http.client mark the response done, for reuse
            return
        chunked = not known_length and self.request_version != "HTTP/1.0"
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif not known_length:
            self.close_connection = True  # HTTP/1.0 client: the body ends at close
        self.end_headers()
        while data := response.read1(CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        response.read()  # read1 never marks a Content-Length body done; read() does
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _relay_rewritten(
        self, method: str, path: str, response: http.client.HTTPResponse, hop: set[str]
    ) -> None:
        """A JSON answer with the upstream's URL replaced by the proxy's (buffered)."""
        proxy = self.server.proxy
        body = response.read().replace(proxy.upstream.encode(), proxy.url.encode())
        proxy._record(method, path, response.status, self._started)
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in hop and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _release(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close or not response.isclosed():
            conn.close()
        else:
            self.server.proxy._give_back(conn)

    def _bad_gateway(self, method: str, path: str) -> None:
        message = f"proxy: upstream {self.server.proxy.upstream} unreachable"
        self._answer(method, path, (502, "UNAVAILABLE", "badGateway", "global", message))


def _connection_tokens(values: list[str]) -> set[str]:
    """Headers named in Connection are hop-by-hop too."""
    return {token.strip().lower() for value in values for token in value.split(",")}
