"""A local HTTP server with canned answers, for tests that need an API in one exact state (a 403,
a 503 that never ends, a table of another type) without an emulator. Standard library only.

    with Canned() as api:
        api.on("GET", r"/datasets/tenants$", Answer(403, error(403, "accessDenied", "denied")))
        ... point the client at api.url ...
        assert api.requests[0].method == "GET"

Routes are matched in the order they were added (method fullmatched, path re.search'ed against
the path without its query); each route's answers are used in turn, the last one repeating. A
request no route matches is answered 404, as an API answers for what does not exist.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)


Responder = Answer | Callable[[Request], Answer]


def error(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Google API error body."""
    return {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}}


class Canned:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._routes: list[tuple[str, re.Pattern[str], list[Responder]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def on(self, method: str, path: str, *answers: Responder) -> None:
        with self._lock:
            self._routes.append((method, re.compile(path), list(answers)))

    def __enter__(self) -> Canned:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, request: Request) -> Answer:
        path = request.path.split("?", 1)[0]
        with self._lock:
            self.requests.append(request)
            for method, pattern, answers in self._routes:
                if re.fullmatch(method, request.method) and pattern.search(path):
                    responder = answers.pop(0) if len(answers) > 1 else answers[0]
                    break
            else:
                return Answer(404, error(404, "notFound", f"Not found: {path}"))
        return responder(request) if callable(responder) else responder


def _handler(canned: Canned) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            answer = canned._answer(Request(self.command, self.path, body))
            data = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body or {}).encode()
            self.send_response(answer.status)
            headers = {"Content-Type": "application/json", **answer.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler
