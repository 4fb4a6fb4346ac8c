"""Secrets and TLS material for the serving endpoint, kept under ``<prefix>/secrets``.

* ``bearer-token``: what Kibana sends (``Authorization: Bearer …``) to Nginx.
* ``vllm-api-key``: what Nginx sends on to vLLM; vLLM is never reachable with the
  bearer token itself.
* ``tls/ca.crt`` + ``ca.key``: a private CA made here (ECDSA P-256, 10 years), so
  Kibana trusts one stable certificate even when the server certificate is renewed.
* ``tls/server.crt`` + ``server.key``: signed by that CA for the ``--server-name`` and
  ``--ip`` names (127.0.0.1 and localhost always), 825 days; renewed when the names
  change or it expires within 30 days.

Every secret file is mode 0600 and written atomically; tokens are reused on
reinstall and only replaced with ``--rotate-token``, and a new token is kept only once
the containers using it proved healthy (see :mod:`bundler.install.serve`).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bundler.errors import UsageError
from bundler.fsutil import atomic_write_bytes


def new_secret() -> str:
    """A random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def current_secret(path: Path) -> str | None:
    """The token kept at ``path`` (0600), or None if there is none (or a short one)."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    return value if len(value) >= 32 else None


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path
    generated: bool


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _sans(names: tuple[str, ...], ips: tuple[str, ...]) -> list[x509.GeneralName]:
    dns = sorted({"localhost", *names})
    try:
        addrs = sorted(
            {ipaddress.ip_address("127.0.0.1"), *map(ipaddress.ip_address, ips)}, key=str
        )
    except ValueError as e:
        raise UsageError(f"--ip: {e}") from e
    return [*(x509.DNSName(n) for n in dns), *(x509.IPAddress(a) for a in addrs)]


def ensure_tls(
    directory: Path, names: tuple[str, ...], ips: tuple[str, ...], now: datetime | None = None
) -> TlsFiles:
    """CA and server certificate for ``names``/``ips`` (made or renewed as needed)."""
    now = now or datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key_p, ca_crt_p = directory / "ca.key", directory / "ca.crt"
    key_p, crt_p = directory / "server.key", directory / "server.crt"
    if ca_key_p.exists() and ca_crt_p.exists():
        ca_key = serialization.load_pem_private_key(ca_key_p.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(ca_crt_p.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap local CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        atomic_write_bytes(ca_key_p, _key_pem(ca_key), mode=0o600)
        atomic_write_bytes(ca_crt_p, ca_cert.public_bytes(serialization.Encoding.PEM))
    wanted = _sans(names, ips)
    if key_p.exists() and crt_p.exists():
        cert = x509.load_pem_x509_certificate(crt_p.read_bytes())
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if (
            set(map(str, have)) == set(map(str, wanted))
            and cert.not_valid_after_utc - now > timedelta(days=30)
            and cert.issuer == ca_cert.subject
        ):
            return TlsFiles(ca_crt_p, crt_p, key_p, False)
    key = ec.generate_private_key(ec.SECP256R1())
    cn = names[0] if names else "localhost"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write_bytes(key_p, _key_pem(key), mode=0o600)
    atomic_write_bytes(
        crt_p,
        cert.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM),
    )
    return TlsFiles(ca_crt_p, crt_p, key_p, True)
