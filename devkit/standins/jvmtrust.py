"""Elasticsearch's outbound TLS to inference services, as its JVM does it.

Elasticsearch calls an external inference service through Apache HttpAsyncClient with
the default strategy: the JVM's default ``SSLContext`` and a hostname verifier over the
certificate's subject alternative names. There are no per-endpoint TLS settings and no
way to turn verification off (docs-content ``external-inference-private-ca.md``; ES
``InferencePlugin``/``HttpClientManager``). The JVM trusts the JDK's bundled
``cacerts``, unless ``-Djavax.net.ssl.trustStore`` names another store, which then
*replaces* it (so a store holding only a private CA would break every public TLS call).
The store is read once, when the JVM starts: a new store needs a restart.

Here the bundled ``cacerts`` is certifi's public CA list (no private CA is in it), and a
PKCS12 store is read with ``cryptography`` (``load_pkcs12``: certificate entries, as
``keytool -importcert`` writes them). Failures raise :class:`JavaError` with the
exception name (in Elasticsearch's snake case) and the text Elasticsearch reports.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

PKIX = (
    "PKIX path building failed: sun.security.provider.certpath.SunCertPathBuilderException: "
    "unable to find valid certification path to requested target"
)
_OPTION = re.compile(r"^(?:\d+-?\d*:)?-D(?P<key>[^=]+)=(?P<value>.*)$")


class JavaError(Exception):
    """What the JVM threw: ``kind`` as Elasticsearch names it, ``reason`` its message."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


def jvm_trust_options(path_conf: Path) -> dict[str, str]:
    """The ``-Djavax.net.ssl.*`` properties set in ``<path.conf>/jvm.options.d/*.options``."""
    props: dict[str, str] = {}
    for f in sorted((path_conf / "jvm.options.d").glob("*.options")):
        for line in f.read_text().splitlines():
            m = _OPTION.match(line.strip())
            if m and m["key"].startswith("javax.net.ssl."):
                props[m["key"]] = m["value"]
    return props


class JvmTrust:
    """The trust of one JVM start: the bundled CAs, or the PKCS12 store it was given."""

    def __init__(self, store: Path | None = None, password: str | None = None) -> None:
        self.store = store
        if store is None:
            self.cadata = Path(certifi.where()).read_text()
            return
        data = store.read_bytes()  # a missing or unreadable store stops the JVM
        loaded = pkcs12.load_pkcs12(data, password.encode() if password is not None else None)
        certs = [c.certificate for c in loaded.additional_certs]
        if loaded.cert is not None:
            certs.append(loaded.cert.certificate)
        if not certs:
            raise ValueError(f"{store}: the trust store holds no certificate")
        self.cadata = "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)

    @classmethod
    def from_path_conf(cls, path_conf: Path) -> JvmTrust:
        """What a node started with ``ES_PATH_CONF=path_conf`` trusts."""
        props = jvm_trust_options(path_conf)
        store = props.get("javax.net.ssl.trustStore")
        kind = props.get("javax.net.ssl.trustStoreType", "PKCS12")
        if store is not None and kind.upper() != "PKCS12":
            raise ValueError(f"trust store type {kind}: this stand-in reads PKCS12 only")
        return cls(Path(store) if store else None, props.get("javax.net.ssl.trustStorePassword"))

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.cadata)
        ctx.check_hostname = True
        return ctx

    def connect(self, url: str, timeout: float) -> http.client.HTTPConnection:
        """A connection to ``url``'s host, TLS verified as the JVM would.

        Raises:
            JavaError: the handshake, the name check or the connection failed.
        """
        u = urlsplit(url)
        host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
        conn: http.client.HTTPConnection
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as e:
            conn.close()
            if e.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
                names = ", ".join(_san_names(host, port))
                raise JavaError(
                    "s_s_l_peer_unverified_exception",
                    f"Certificate for <{host}> doesn't match any of the subject alternative "
                    f"names: [{names}]",
                ) from None
            raise JavaError("s_s_l_handshake_exception", PKIX) from None
        except ConnectionRefusedError:
            conn.close()
            raise JavaError("connect_exception", "Connection refused") from None
        except socket.gaierror:
            conn.close()
            raise JavaError(
                "unknown_host_exception", f"{host}: Name or service not known"
            ) from None
        except (TimeoutError, OSError) as e:
            conn.close()
            raise JavaError("socket_timeout_exception", str(e) or "connect timed out") from None
        return conn


def _san_names(host: str, port: int) -> list[str]:
    pem = ssl.get_server_certificate((host, port))
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ipaddress.ip_address(i)) for i in san.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def write_truststore(ca_pem: bytes, out: Path, password: str) -> Path:
    """A PKCS12 trust store holding ``ca_pem``'s certificates only, as a stand-in for the
    one ``airgap elastic-truststore`` makes with ``keytool`` (which also copies the
    node's bundled ``cacerts``)."""
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption

    cas = x509.load_pem_x509_certificates(ca_pem)
    data = pkcs12.serialize_key_and_certificates(
        None, None, None, cas, BestAvailableEncryption(password.encode())
    )
    out.write_bytes(data)
    return out
