"""A loopback proxy in front of a real upstream (the registry, the hub, the Elastic file
server) that misbehaves on request, the ways networks and servers do.

Each planned fault names the requests it hits (a regular expression on the path) and
how many of them; every other request is passed through unchanged (redirects are
rewritten to come back through the proxy). Faults:

* ``5xx``: ``503 Service Unavailable``, nothing from upstream;
* ``reset``: the headers and three quarters of the body, then a TCP reset (RST);
* ``short``: the right ``Content-Length``, three quarters of the body, then a clean
  close (FIN);
* ``wrong``: the whole body with the right length, some bytes in the middle changed;
* ``trickle``: the right body, in 4 KiB pieces with a pause between them;
* ``stall``: the headers, then nothing until the client gives up (its read timeout).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

FAULTS = ("5xx", "reset", "short", "wrong", "trickle", "stall")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class Planned:
    pattern: re.Pattern[str]
    fault: str
    times: int


@dataclass
class FaultProxy:
    upstream: str  # http://host:port
    plan: list[Planned] = field(default_factory=list)
    # every request: method, path, the fault it got ("pass": none), its Range header
    served: list[tuple[str, str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def inject(self, path_regex: str, fault: str, times: int = 1) -> None:
        assert fault in FAULTS, fault
        with self.lock:
            self.plan.append(Planned(re.compile(path_regex), fault, times))

    def clear(self) -> None:
        with self.lock:
            self.plan.clear()
            self.served.clear()

    def hits(self, fault: str) -> int:
        return sum(1 for s in self.served if s[2] == fault)

    def _take(self, path: str) -> str:
        with self.lock:
            for p in self.plan:
                if p.times > 0 and p.pattern.search(path):
                    p.times -= 1
                    return p.fault
        return "pass"

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        outer = self
        session = requests.Session()
        session.trust_env = False

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _relay(self, method: str) -> None:
                fault = outer._take(self.path)
                outer.served.append((method, self.path, fault, self.headers.get("Range", "")))
                if fault == "5xx":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                r = session.request(
                    method,
                    outer.upstream + self.path,
                    headers=headers,
                    data=body,
                    stream=True,
                    allow_redirects=False,
                    timeout=60,
                )
                with r:
                    data = r.raw.read(decode_content=False) if method != "HEAD" else b""
                    self.send_response(r.status_code)
                    for k, v in r.raw.headers.items():
                        if k.lower() in _HOP or k.lower() == "content-length":
                            continue
                        if k.lower() == "location":
                            v = v.replace(outer.upstream, outer.url)
                        self.send_header(k, v)
                    size = (
                        len(data) if method != "HEAD" else int(r.headers.get("Content-Length", 0))
                    )
                    self.send_header("Content-Length", str(size))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    if method == "HEAD" or r.status_code >= 300:
                        self.wfile.write(data)
                        return
                    self._body(data, fault)

            def _body(self, data: bytes, fault: str) -> None:
                half = len(data) // 2
                cut = len(data) * 3 // 4
                if fault in ("reset", "short"):
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    time.sleep(0.3)  # let the client take what came before the cut
                if fault == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                elif fault == "short":
                    self.connection.shutdown(socket.SHUT_WR)
                elif fault == "wrong":
                    bad = bytearray(data)
                    for i in range(half, min(len(bad), half + 64)):
                        bad[i] ^= 0xFF
                    self.wfile.write(bytes(bad))
                elif fault == "trickle":
                    for i in range(0, len(data), 4096):
                        self.wfile.write(data[i : i + 4096])
                        self.wfile.flush()
                        time.sleep(0.002)
                elif fault == "stall":
                    self.wfile.flush()
                    time.sleep(8)  # longer than the client's read timeout in the tests
                    self.connection.close()
                else:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._relay("GET")

            def do_HEAD(self) -> None:
                self._relay("HEAD")

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            session.close()
