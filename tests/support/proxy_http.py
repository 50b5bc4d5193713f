"""The test proxy's HTTP side: a threaded server whose handler applies the proxy's rules to each
request (proxy.py, proxy_rules.py) and forwards the rest upstream, streaming the answer back.

Split from proxy.py along its seam: the proxy decides and records, this moves the bytes.
Request bodies are buffered (tests send small ones); responses are streamed.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.support.proxy_rules import FAULT_RESPONSES, error_body

if TYPE_CHECKING:
    from tests.support.proxy import Proxy

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
CHUNK = 64 * 1024
UPSTREAM_ERRORS = (OSError, http.client.HTTPException)  # refused, reset, timeout, bad framing


class Server(ThreadingHTTPServer):
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
    server: Server
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
        elif kind in FAULT_RESPONSES:
            self._answer(method, path, FAULT_RESPONSES[kind])
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
        payload = error_body(*error)
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
