"""The test proxy (tests/support/proxy.py) against a tiny local upstream: forwarding, counting,
latency, rate limits and faults, all deterministic (fake clock and sleep, seeded faults).

Over 400 lines: one test per behaviour of the proxy, all against the same tiny upstream.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.support import proxy as proxy_module
from tests.support.proxy import (
    BIGQUERY_RATE_LIMITS,
    FaultPlan,
    Proxy,
    RateLimit,
    Recorded,
    Timed,
    round_trip_chain,
    round_trip_depth,
)
from tests.support.waiting import wait_until

TABLES = "/bigquery/v2/projects/p/datasets/d/tables"


class Upstream(ThreadingHTTPServer):
    """Echoes each request as JSON; a few paths answer in other framings."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.hits: list[dict] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for a delayed ACK
    server: Upstream

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {
            "method": self.command,
            "path": self.path,
            "body": body.decode(),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "client_port": self.client_address[1],
        }
        self.server.hits.append(seen)
        payload = json.dumps(seen).encode()
        path = self.path.split("?")[0]
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/until-close":  # no length, no chunks: the body ends when the socket does
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"read until close")
            self.close_connection = True
        elif path == "/location":
            self.send_response(308)
            self.send_header("Location", f"{self.server.url}/upload?upload_id=1")
            self.send_header("Range", "bytes=0-9")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Upstream", "echo")
            self.send_header("Keep-Alive", "timeout=5")  # hop-by-hop: must not pass
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _echo


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_forwards_method_path_query_headers_and_body(upstream, session):
    with Proxy(upstream.url) as proxy:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            body = "" if method in ("GET", "DELETE") else f"body of {method}"
            r = session.request(
                method,
                f"{proxy.url}/a/b%2Fc?x=1&y=2",
                data=body or None,
                headers={"X-Custom": "kept", "Connection": "keep-alive, X-Hop", "X-Hop": "no"},
            )
            assert r.status_code == 200
            assert r.headers["X-Upstream"] == "echo"
            assert "Keep-Alive" not in r.headers
            seen = r.json()
            assert (seen["method"], seen["path"], seen["body"]) == (
                method,
                "/a/b%2Fc?x=1&y=2",
                body,
            )
            assert seen["headers"]["host"] == upstream.url.removeprefix("http://")
            assert seen["headers"]["x-custom"] == "kept"
            assert "x-hop" not in seen["headers"]
        head = session.head(f"{proxy.url}/h")
        assert head.status_code == 200
        assert int(head.headers["Content-Length"]) > 0  # the upstream's length, no body
        assert session.get(f"{proxy.url}/status/404").status_code == 404


def test_chunked_request_body_is_forwarded_with_a_length(upstream, session):
    with Proxy(upstream.url) as proxy:
        r = session.post(f"{proxy.url}/upload", data=iter([b"part one, ", b"part two"]))
        seen = r.json()
        assert seen["body"] == "part one, part two"
        assert seen["headers"]["content-length"] == str(len("part one, part two"))
        assert "transfer-encoding" not in seen["headers"]


@pytest.mark.parametrize("path", ["/chunked", "/until-close"])
def test_responses_without_length_are_rechunked(upstream, path):
    with Proxy(upstream.url) as proxy:
        conn = http.client.HTTPConnection(proxy.url.removeprefix("http://"))
        for _ in range(2):  # the client connection stays usable after each
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.getheader("Transfer-Encoding") == "chunked"
            expected = b"hello chunked world" if path == "/chunked" else b"read until close"
            assert resp.read() == expected
        conn.close()


def test_client_and_upstream_connections_are_kept_alive(upstream):
    with Proxy(upstream.url) as proxy:
        conn = http.client.HTTPConnection(proxy.url.removeprefix("http://"))
        sockets = set()
        for i in range(3):
            conn.request("POST", "/k", body=f"n{i}")
            assert conn.getresponse().read()
            sockets.add(id(conn.sock))
        conn.close()
    assert len(sockets) == 1
    assert len({hit["client_port"] for hit in upstream.hits}) == 1  # pooled upstream side


def test_stale_pooled_upstream_connection_is_retried_once(upstream, session, monkeypatch):
    # Hide the idle-connection check so that the proxy sends on a connection the upstream
    # has closed, as happens when the close races with a new request.
    monkeypatch.setattr(proxy_module, "select", types.SimpleNamespace(select=lambda *a: ([], [], [])))
    with Proxy(upstream.url) as proxy:
        assert session.post(f"{proxy.url}/a", data=b"1").status_code == 200

        def pooled_connection() -> Any:
            with proxy._lock:
                return proxy._pool[0] if proxy._pool else None

        # The connection goes back to the pool just after the answer.
        pooled = wait_until(
            pooled_connection, "the upstream connection back in the pool", timeout=2, interval=0.01
        )
        pooled.sock.shutdown(socket.SHUT_RDWR)  # the upstream sees EOF and ends its side
        assert session.post(f"{proxy.url}/b", data=b"2").status_code == 200
        assert [hit["path"] for hit in upstream.hits] == ["/a", "/b"]  # sent once each
        assert proxy.requests() == [("POST", "/a", 200), ("POST", "/b", 200)]


def test_concurrent_clients(upstream):
    with Proxy(upstream.url) as proxy:
        statuses: list[int] = []

        def client(n: int) -> None:
            with requests.Session() as s:
                for i in range(20):
                    r = s.post(f"{proxy.url}/c/{n}", data=f"{n}-{i}".encode())
                    assert r.json()["body"] == f"{n}-{i}"
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 160
        assert proxy.count(reads=False) == 160
        assert sorted(r.path for r in proxy.requests()) == sorted(
            f"/c/{n}" for n in range(8) for _ in range(20)
        )


def test_location_pointing_at_the_upstream_is_rewritten(upstream, session):
    with Proxy(upstream.url) as proxy:
        r = session.put(f"{proxy.url}/location", data=b"0123456789", allow_redirects=False)
        assert r.status_code == 308
        assert r.headers["Location"] == f"{proxy.url}/upload?upload_id=1"
        assert r.headers["Range"] == "bytes=0-9"


def test_counts_reads_and_writes(upstream, session):
    with Proxy(upstream.url) as proxy:
        session.get(f"{proxy.url}/r?q=1")
        session.head(f"{proxy.url}/r")
        session.post(f"{proxy.url}/w", data=b"x")
        session.patch(f"{proxy.url}/w", data=b"x")
        session.get(f"{proxy.url}/status/404")
        assert proxy.requests() == [
            ("GET", "/r", 200),
            ("HEAD", "/r", 200),
            ("POST", "/w", 200),
            ("PATCH", "/w", 200),
            ("GET", "/status/404", 404),
        ]
        assert proxy.requests()[0] == Recorded(method="GET", path="/r", status=200)
        assert (proxy.count(), proxy.count(reads=True), proxy.count(reads=False)) == (5, 3, 2)
        assert [r.method for r in proxy.writes()] == ["POST", "PATCH"]
        assert len(proxy.reads()) == 3
        proxy.reset()
        assert proxy.requests() == []
        assert proxy.count(reads=False) == 0


def test_latency_sleeps_before_every_request(upstream, session):
    sleep = FakeSleep()
    with Proxy(upstream.url, latency=0.25, sleep=sleep) as proxy:
        session.get(f"{proxy.url}/a")
        session.post(f"{proxy.url}/b", data=b"x")
        assert sleep.calls == [0.25, 0.25]
        proxy.latency = 0.0
        session.get(f"{proxy.url}/c")
        assert sleep.calls == [0.25, 0.25]


def test_each_request_is_timed_from_its_arrival_to_its_answer(upstream, session):
    clock = FakeClock()

    def sleep(seconds: float) -> None:  # the injected latency, on the fake clock
        clock.now += seconds

    with Proxy(upstream.url, latency=0.25, clock=clock, sleep=sleep) as proxy:
        session.get(f"{proxy.url}/a")
        session.post(f"{proxy.url}/b", data=b"x")
        assert proxy.timed() == [
            Timed("GET", "/a", 200, 1000.0, 1000.25),
            Timed("POST", "/b", 200, 1000.25, 1000.5),
        ]
        assert round_trip_depth(proxy.timed()) == 2
        proxy.reset()
        assert proxy.timed() == []


def test_requests_in_flight_together_are_one_round_trip(upstream, session):
    with Proxy(upstream.url, latency=0.2) as proxy:
        barrier = threading.Barrier(3)

        def get(path: str) -> None:
            with requests.Session() as own:
                barrier.wait()
                own.get(f"{proxy.url}{path}")

        threads = [threading.Thread(target=get, args=(f"/{n}",)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        session.get(f"{proxy.url}/after")  # after all three answered: a second round trip

        assert len(proxy.timed()) == 4
        assert round_trip_depth(proxy.timed()) == 2


@pytest.mark.parametrize(
    ("spans", "depth"),
    [
        ([], 0),
        ([(0, 1)], 1),
        ([(0, 1), (1, 2), (2, 3)], 3),  # one after another (started as the previous ended)
        ([(0, 1), (0.1, 1.1), (0.2, 0.9)], 1),  # in flight together
        # a list, then the downloads and reads together, then a write: 3, however slow each is
        ([(0, 1), (1.1, 5.0), (1.1, 1.4), (1.2, 1.3), (5.1, 9.0)], 3),
        # a long request beside a chain of short ones: the chain counts, not the long one
        ([(0, 10), (0, 1), (1, 2), (2, 3), (3, 4)], 4),
        # overlapping neighbours: greedy by end picks (0,2), (2,3), (3.5,6)
        ([(0, 2), (1, 3), (2, 3), (2.5, 5), (3.5, 6)], 3),
        ([(5, 6), (0, 1)], 2),  # order of arrival does not matter
    ],
)
def test_round_trip_depth_is_the_longest_chain_of_requests_one_after_another(spans, depth):
    assert round_trip_depth(spans) == depth
    timed = [Timed("GET", f"/{n}", 200, started, ended) for n, (started, ended) in enumerate(spans)]
    assert round_trip_depth(timed) == depth


def test_the_round_trip_chain_names_the_requests_made_one_after_another():
    listing = Timed("GET", "/b/o", 200, 0.0, 1.0)
    dataset = Timed("GET", "/datasets/d", 200, 0.0, 1.5)  # beside the listing
    downloads = [Timed("GET", f"/download/o/{n}", 200, 1.1, 1.3 + n) for n in range(3)]
    patch = Timed("PATCH", "/tables/t", 200, 3.5, 4.0)

    chain = round_trip_chain([patch, *downloads, dataset, listing])

    assert chain == [listing, downloads[0], patch]


def test_rate_limits_answer_bigquery_403_without_forwarding(upstream, session):
    clock = FakeClock()
    limits = [
        RateLimit(name="api", per_second=4),
        RateLimit(name="tables.insert", method="POST", path_regex=TABLES + "$", per_second=2),
    ]
    with Proxy(upstream.url, rate_limits=limits, clock=clock) as proxy:
        assert [session.post(f"{proxy.url}{TABLES}", data=b"{}").status_code for _ in range(3)] == [
            200,
            200,
            403,
        ]
        assert len(upstream.hits) == 2
        r = session.post(f"{proxy.url}{TABLES}", data=b"{}")
        assert r.headers["Content-Type"] == "application/json; charset=UTF-8"
        message = (
            "Exceeded rate limits: too many api requests per user per method for this "
            "user_method. For more information, see "
            "https://cloud.google.com/bigquery/docs/troubleshoot-quotas"
        )
        assert r.json() == {
            "error": {
                "code": 403,
                "message": message,
                "errors": [{"message": message, "domain": "usageLimits", "reason": "rateLimitExceeded"}],
                "status": "PERMISSION_DENIED",
            }
        }
        # Other methods still pass until the all-methods limit (rejections do not count).
        assert session.get(f"{proxy.url}{TABLES}").status_code == 200
        assert session.get(f"{proxy.url}{TABLES}").status_code == 200
        assert session.get(f"{proxy.url}{TABLES}").status_code == 403
        assert proxy.rejected == 3
        assert proxy.count() == 7  # rejected requests are recorded too
        assert proxy.requests()[2] == ("POST", TABLES, 403)

        clock.now += 0.999  # still inside the sliding window
        assert session.get(f"{proxy.url}/x").status_code == 403
        clock.now += 0.002
        assert session.post(f"{proxy.url}{TABLES}", data=b"{}").status_code == 200
        assert len(upstream.hits) == 5
        proxy.reset()
        assert proxy.rejected == 0


def test_rate_limit_windows_per_path(upstream, session):
    clock = FakeClock()
    limit = RateLimit(name="tables.update", method="PATCH", per_second=0.5, window=10, per_path=True)
    assert limit.allowed == 5
    with Proxy(upstream.url, rate_limits=[limit], clock=clock) as proxy:
        codes = [session.patch(f"{proxy.url}/t1", data=b"{}").status_code for _ in range(6)]
        assert codes == [200] * 5 + [403]
        assert session.patch(f"{proxy.url}/t2", data=b"{}").status_code == 200
        assert session.get(f"{proxy.url}/t1").status_code == 200  # method does not match
        clock.now += 10
        assert session.patch(f"{proxy.url}/t1", data=b"{}").status_code == 200


def test_bigquery_rate_limit_presets_match_real_paths():
    by_name = {limit.name: limit for limit in BIGQUERY_RATE_LIMITS}
    assert by_name["tables.insert"].matches("POST", TABLES)
    assert not by_name["tables.insert"].matches("POST", TABLES + "/t")
    assert by_name["tables.update"].matches("PATCH", TABLES + "/t")
    assert by_name["datasets.update"].matches("PUT", "/bigquery/v2/projects/p/datasets/d")
    assert by_name["api"].matches("GET", "/anything")


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [("503", 503, "backendError"), ("429", 429, "rateLimitExceeded")],
)
def test_error_faults_answer_without_forwarding(upstream, session, kind, status, reason):
    with Proxy(upstream.url) as proxy:
        proxy.fail_next(1, kind)
        r = session.post(f"{proxy.url}/w", data=b"x")
        assert r.status_code == status
        assert r.json()["error"]["errors"][0]["reason"] == reason
        assert r.json()["error"]["code"] == status
        assert upstream.hits == []
        assert session.post(f"{proxy.url}/w", data=b"x").status_code == 200
        assert proxy.injected == 1
        assert proxy.requests() == [("POST", "/w", status), ("POST", "/w", 200)]


def test_drop_closes_the_connection_without_forwarding(upstream):
    with Proxy(upstream.url) as proxy:
        proxy.fail_next(1, "drop")
        conn = http.client.HTTPConnection(proxy.url.removeprefix("http://"))
        conn.request("POST", "/w", body=b"x")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
        conn.close()
        assert upstream.hits == []
        assert proxy.requests() == [("POST", "/w", None)]
        assert proxy.injected == 1


def test_drop_after_forwards_then_loses_the_response(upstream, session):
    with Proxy(upstream.url) as proxy:
        proxy.fail_next(1, "drop_after")
        with pytest.raises(requests.ConnectionError):
            session.post(f"{proxy.url}/w", data=b"x")
        assert [hit["path"] for hit in upstream.hits] == ["/w"]  # the work was done
        assert session.post(f"{proxy.url}/w", data=b"x").status_code == 200
        assert proxy.requests() == [("POST", "/w", None), ("POST", "/w", 200)]


def test_delay_fault_sleeps_then_forwards(upstream, session):
    sleep = FakeSleep()
    with Proxy(upstream.url, latency=0.1, sleep=sleep) as proxy:
        proxy.fail_next(1, "delay", delay=3.0)
        assert session.get(f"{proxy.url}/a").status_code == 200
        assert session.get(f"{proxy.url}/a").status_code == 200
        assert sleep.calls == [0.1, 3.0, 0.1]
        assert proxy.injected == 1


def test_fail_next_only_hits_matching_requests(upstream, session):
    with Proxy(upstream.url) as proxy:
        proxy.fail_next(2, "503", method="POST", path_regex=r"/tables$")
        assert session.get(f"{proxy.url}/x/tables").status_code == 200
        assert session.post(f"{proxy.url}/x/tables/t", data=b"").status_code == 200
        codes = [session.post(f"{proxy.url}/x/tables", data=b"").status_code for _ in range(3)]
        assert codes == [503, 503, 200]
        assert proxy.injected == 2
    with pytest.raises(ValueError):
        proxy.fail_next(1, "teapot")  # type: ignore[arg-type]


def test_forwarded_bodies_are_recorded_when_asked(upstream, session):
    with Proxy(upstream.url, record_bodies=True) as proxy:
        session.patch(
            f"{proxy.url}{TABLES}/t?fields=x", json={"labels": {"a": "b"}}, headers={"If-Match": "e1"}
        )
        session.get(f"{proxy.url}{TABLES}/t")
        proxy.fail_next(1, "503")
        session.post(f"{proxy.url}{TABLES}", data=b"never forwarded")
        [patch, get] = proxy.sent()
        assert (patch.method, patch.path, patch.json()) == ("PATCH", f"{TABLES}/t", {"labels": {"a": "b"}})
        assert patch.headers["if-match"] == "e1"
        assert (get.method, get.body) == ("GET", b"")
        proxy.reset()
        assert proxy.sent() == []
    with Proxy(upstream.url) as proxy:
        session.post(f"{proxy.url}/x", data=b"body")
        assert proxy.sent() == []  # off by default


def test_before_next_runs_once_before_the_matching_request_is_forwarded(upstream, session):
    seen_by_upstream: list[int] = []
    with Proxy(upstream.url) as proxy:
        proxy.before_next(
            lambda: seen_by_upstream.append(len(upstream.hits)), method="PATCH", path_regex=r"/t$"
        )
        session.get(f"{proxy.url}{TABLES}/t")
        session.patch(f"{proxy.url}{TABLES}/other", data=b"{}")
        assert seen_by_upstream == []
        session.patch(f"{proxy.url}{TABLES}/t", data=b"{}")
        assert seen_by_upstream == [2]  # ran after the GET and the other PATCH, before this one
        session.patch(f"{proxy.url}{TABLES}/t", data=b"{}")
        assert seen_by_upstream == [2]  # once
        assert [h["method"] for h in upstream.hits] == ["GET", "PATCH", "PATCH", "PATCH"]


def _statuses(upstream_url: str, plan: FaultPlan, paths: list[str]) -> tuple[list, int]:
    with Proxy(upstream_url, faults=plan) as proxy, requests.Session() as s:
        for path in paths:
            s.get(f"{proxy.url}{path}")
        return [r.status for r in proxy.requests()], proxy.injected


def test_random_faults_are_seeded_and_filtered(upstream):
    paths = ["/data/x", "/meta/y"] * 20
    plan = FaultPlan(probability=0.5, kinds=("503", "429"), path_regex="^/data/", seed=7)
    first, injected = _statuses(upstream.url, plan, paths)
    again, _ = _statuses(upstream.url, plan, paths)
    assert first == again
    assert set(first[1::2]) == {200}  # the filter spares /meta/
    assert set(first[0::2]) == {200, 503, 429}
    assert injected == sum(status != 200 for status in first)
    other, _ = _statuses(upstream.url, FaultPlan(probability=0.5, seed=8), paths)
    assert other != first


def test_random_faults_can_be_changed_while_running(upstream, session):
    with Proxy(upstream.url, faults=FaultPlan(probability=1.0)) as proxy:
        assert session.get(f"{proxy.url}/a").status_code == 503
        proxy.faults = None
        assert session.get(f"{proxy.url}/a").status_code == 200


def test_unreachable_upstream_answers_502(session):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Proxy(f"http://127.0.0.1:{port}") as proxy:
        r = session.get(f"{proxy.url}/a")
        assert r.status_code == 502
        assert proxy.requests() == [("GET", "/a", 502)]


def test_stop_closes_idle_client_connections_quietly(upstream, capfd):
    proxy = Proxy(upstream.url)
    proxy.start()
    conn = http.client.HTTPConnection(proxy.url.removeprefix("http://"))
    conn.request("GET", "/a")
    conn.getresponse().read()
    proxy.fail_next(1, "drop")
    conn.request("GET", "/a")
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()
    conn.close()
    idle = socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])))
    idle.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    idle.settimeout(5)
    assert idle.recv(12) == b"HTTP/1.1 200"
    proxy.stop()
    # The proxy closed the idle keep-alive connection (the rest of the answer, then EOF).
    while idle.recv(65536):
        pass
    idle.close()
    proxy.stop()  # idempotent
    assert capfd.readouterr().err == ""
