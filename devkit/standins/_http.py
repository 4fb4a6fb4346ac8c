"""A small threaded JSON HTTP server with routes, on loopback (HTTPS when given a
context; a response may stream, as Server-Sent Events do)."""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None  # sent chunked, as produced (SSE)
    raw: bytes | None = None  # sent as is (a non-JSON body, like Nginx's error pages)


Handler = Callable[[Request], Response]


class JsonServer:
    """Routes ``(METHOD, regex)`` to handlers; answers JSON; records every request."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.tls = tls
        self.host = host
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.log: list[tuple[str, str, int]] = []
        self.fail_next: list[int] = []  # statuses to answer before handling (retry tests)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def check_auth(self, req: Request) -> Response | None:  # overridden
        return None

    def handle(self, req: Request) -> Response:
        with self.lock:
            if self.fail_next:
                status = self.fail_next.pop(0)
                return Response(status, {"statusCode": status, "message": "injected failure"})
        denied = self.check_auth(req)
        if denied is not None:
            return denied
        for method, pattern, handler in self.routes:
            m = pattern.match(req.path)
            if m and method == req.method:
                req.params = m.groupdict()
                return handler(req)
        return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @contextmanager
    def running(self, port: int = 0) -> Iterator[JsonServer]:
        """Serve on ``port`` (0: any free one) until the block ends; a stand-in can be
        stopped and started again on the port it had, keeping what it holds."""
        outer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                u = urlsplit(self.path)
                req = Request(
                    self.command,
                    u.path,
                    parse_qs(u.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                try:
                    resp = outer.handle(req)
                except Exception as e:  # a stand-in bug must show, not hang the client
                    resp = Response(500, {"statusCode": 500, "message": f"stand-in error: {e}"})
                outer.log.append((req.method, self.path, resp.status))
                self.send_response(resp.status)
                headers = {"Content-Type": "application/json; charset=utf-8", **resp.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                if resp.stream is not None:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for piece in resp.stream:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                            self.wfile.flush()
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:  # the client went away mid-stream
                        self.close_connection = True
                    return
                if resp.raw is not None:
                    data = resp.raw
                else:
                    data = b"" if resp.body is None else json.dumps(resp.body).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class _Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away (or failed the TLS handshake) is no news

        self._server = _Server((self.host, port), _H)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(5)


def basic_or_api_key(req: Request, api_keys: set[str], users: dict[str, str]) -> bool:
    """``Authorization: ApiKey <key>`` or ``Basic base64(user:password)``."""
    auth = req.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme == "ApiKey":
        return value in api_keys
    if scheme == "Basic":
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return users.get(user) == password and password != ""
    return False
