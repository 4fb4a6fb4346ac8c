"""Failures to reach a server at all, for every HTTP client airgap uses, named alike.

requests (downloads, registries, Kibana and Elasticsearch), huggingface_hub (httpx2 in
2.x, httpx in 1.x, requests before) and docker-py (requests over the engine's socket)
each raise their own exception types for the same few events: the host name does not
resolve, nothing listens, the TLS certificate is not trusted, no answer in time, the
connection dropped. :func:`describe` walks an exception's causes down to the
operating system's and names the event, so every client's error reads the same and
carries a hint that fits it.
"""

from __future__ import annotations

import importlib
import socket
import ssl
from collections.abc import Iterator
from functools import cache
from typing import Literal

import requests

Kind = Literal["dns", "refused", "tls", "timeout", "reset", "other"]

PROXY_HINT = (
    "if this machine reaches the internet through a proxy, set HTTPS_PROXY (and NO_PROXY "
    "for hosts that must be reached directly)"
)


@cache
def transport_errors() -> tuple[type[BaseException], ...]:
    """The exception types every HTTP client raises when no answer came at all.

    ``OSError`` covers sockets (and ``requests``' own errors derive from it); the
    httpx families are those huggingface_hub speaks, when installed.
    """
    found: list[type[BaseException]] = [requests.RequestException, OSError]
    for module in ("httpx2", "httpx"):
        try:
            error = getattr(importlib.import_module(module), "TransportError", None)
        except ImportError:
            continue
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def from_http_client(e: BaseException) -> bool:
    """``e`` is an HTTP client's own transport error (not a bare OS error such as a
    missing file, which :func:`transport_errors` also admits)."""
    return isinstance(e, transport_errors()) and type(e).__module__.split(".")[0] != "builtins"


def causes(e: BaseException) -> Iterator[BaseException]:
    """``e`` and everything it wraps: causes, contexts, urllib3's ``reason``, arguments."""
    seen: set[int] = set()
    todo: list[object] = [e]
    while todo:
        cur = todo.pop(0)
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo += [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args]


def kind_of(e: BaseException) -> Kind:
    """Which of the transport events ``e`` is (``other`` when none is recognized)."""
    chain = list(causes(e))
    names = " ".join(type(c).__name__ for c in chain)
    if any(isinstance(c, socket.gaierror) for c in chain) or "NameResolution" in names:
        return "dns"
    if any(isinstance(c, ssl.SSLError) for c in chain) or "SSLError" in names:
        return "tls"
    if any(isinstance(c, (ConnectionRefusedError, FileNotFoundError)) for c in chain):
        return "refused"  # a unix socket that is not there is refused the same way
    if any(isinstance(c, TimeoutError) for c in chain) or "Timeout" in names:
        return "timeout"
    if any(isinstance(c, (ConnectionResetError, ConnectionAbortedError)) for c in chain) or (
        "RemoteDisconnected" in names or "RemoteProtocolError" in names
    ):
        return "reset"
    return "other"


def _tls_reason(e: BaseException) -> str:
    for c in causes(e):
        if isinstance(c, ssl.SSLCertVerificationError) and c.verify_message:
            return f"certificate not trusted ({c.verify_message})"
        if isinstance(c, ssl.SSLError) and c.reason:
            return str(c.reason).lower().replace("_", " ")
    return "handshake failed"


def describe(e: BaseException, timeout: float | None = None) -> str:
    """What happened, in words (``e``'s own first line when it is not a known event)."""
    kind = kind_of(e)
    if kind == "dns":
        return "the host name does not resolve (DNS lookup failed)"
    if kind == "refused":
        return "connection refused (nothing listens there)"
    if kind == "tls":
        return f"TLS failed: {_tls_reason(e)}"
    if kind == "timeout":
        return f"no answer within {timeout:g} s" if timeout else "timed out"
    if kind == "reset":
        return "the connection was dropped by the server or a proxy"
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def hint_for(kind: Kind, *, endpoint: str, tls: str, timeout: str) -> str:
    """A hint for ``kind``: ``endpoint`` says how to change the address, ``tls`` how to
    trust a private CA, ``timeout`` how to wait longer."""
    if kind == "dns":
        return f"Check the host name ({endpoint}); {PROXY_HINT}."
    if kind == "refused":
        return f"Start the server or fix the address or port ({endpoint}); {PROXY_HINT}."
    if kind == "tls":
        return f"{tls}; a TLS-intercepting proxy needs its CA trusted too."
    if kind == "timeout":
        return f"{timeout}; {PROXY_HINT}."
    return f"Check the address ({endpoint}) and the network; {PROXY_HINT}."
