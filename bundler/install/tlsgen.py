"""Secrets and TLS material for the serving endpoint, kept under ``<prefix>/secrets``.

* ``bearer-token``: what Kibana sends (``Authorization: Bearer …``) to Nginx.
* ``vllm-api-key``: what Nginx sends on to vLLM; vLLM is never reachable with the
  bearer token itself.
* ``tls/ca.crt``: the private root CA made here (ECDSA P-256, :data:`CA_DAYS`) that Kibana
  and every Elasticsearch node trust. Its key is never written anywhere: it signs one
  intermediate and is dropped.
* ``tls/issuer.crt`` + ``issuer.key``: that intermediate, the key kept here that signs the
  server certificate, so the CA trusted elsewhere stays the same when it is renewed.
* ``tls/server.crt`` + ``server.key``: signed by the intermediate for the ``--server-name``
  and ``--ip`` names (127.0.0.1 and localhost always), 825 days (never past the CA's
  end); ``server.crt`` carries the intermediate after it, so clients can build the path.
  Renewed when the names change, when it expires within 30 days, or when the CA changed.

**What the CA can vouch for.** Elasticsearch's trust is node-wide (the JVM's default trust
store serves snapshots, webhooks and every other outbound call), and a key sits on the GPU
host, so both CA certificates carry a critical X.509 NameConstraints extension that
permits only the endpoint's own names: the ``--server-name`` DNS names (and their
subdomains, as RFC 5280 defines a DNS subtree) and the ``--ip`` addresses as one-address
networks, plus localhost/127.0.0.1. Two tiers because the JVM ignores the constraints of a
*trust anchor* (it makes its anchors from the certificate's name and key only), while it
enforces them in an intermediate; OpenSSL, Node and Go enforce them on the root as well.
The root's key is gone, so it can never sign an intermediate without them: a certificate
made with the key kept here for any other name fails path validation everywhere.

The CA is made again (and every trust step must then be rerun: Kibana's
``customHostSettings``, ``airgap elastic-truststore`` on each Elasticsearch node) when the
names change, or when it expires within 30 days. A CA made by an airgap before the name
constraints (``ca.key`` beside ``ca.crt``: one tier, 10 years, unconstrained) is kept as
long as the names stay the same, so upgrading airgap never breaks a site's trust on its
own; when it is replaced its key is deleted.

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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bundler.errors import UsageError
from bundler.fsutil import atomic_write_bytes

# The CA's lifetime, down from 10 years. Three years because (1) it must outlive a whole
# server certificate (825 days) with room to spare, so a routine renewal never changes
# the CA; (2) every new CA means the trust step and a rolling restart on every
# Elasticsearch node plus a Kibana restart, which regulated sites schedule through change
# control: about once per Elastic major version is bearable, more often invites people
# to switch verification off; (3) a key copied off the GPU host stops being useful
# within three years instead of ten (the name constraints already limit what it can sign
# for in the meantime).
CA_DAYS = 1095
SERVER_DAYS = 825
RENEW_DAYS = 30  # a certificate (CA or server) this close to its end is made again


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
    generated: bool  # the server certificate was (re)made by this call
    ca_renewed: bool = False  # the CA was (re)made: every trust step must be rerun


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


def _name_constraints(wanted: list[x509.GeneralName]) -> x509.NameConstraints:
    """Permit exactly the endpoint's names: each DNS name (with its subdomains) and each
    IP address as a one-address network (/32 or /128)."""
    permitted: list[x509.GeneralName] = []
    for name in wanted:
        if isinstance(name, x509.DNSName):
            # a wildcard server name is a subtree constraint on its parent domain
            permitted.append(x509.DNSName(name.value.removeprefix("*.")))
        elif isinstance(name, x509.IPAddress):
            permitted.append(x509.IPAddress(ipaddress.ip_network(name.value)))
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _sans_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _constraints_of(cert: x509.Certificate) -> set[str] | None:
    """The permitted names of a CA (as strings), or None for an unconstrained (older) CA."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return set(map(str, ext.permitted_subtrees or ()))


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _new_ca(
    constraints: x509.NameConstraints,
    now: datetime,
    name: str,
    signer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA certificate: the self-signed root (``signer`` None, one tier below it allowed),
    or the intermediate ``signer`` signs (none below it but server certificates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    sign_key, issuer = (key, subject) if signer is None else (signer[0], signer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=1 if signer is None else 0), critical=True
        )
        .add_extension(constraints, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_CA_USAGE, critical=True)
    )
    if signer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer[0].public_key()),
            critical=False,
        )
    return key, builder.sign(sign_key, hashes.SHA256())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def snapshot(directory: Path) -> dict[str, bytes]:
    """The TLS files as they are now, for :func:`restore`."""
    if not directory.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def restore(directory: Path, before: dict[str, bytes]) -> None:
    """Put the TLS files back as :func:`snapshot` found them.

    A start that failed after :func:`ensure_tls` made a new CA (the names changed) must
    leave the CA on record the one the containers that serve again chain to.
    """
    for p in directory.iterdir() if directory.is_dir() else []:
        if p.is_file() and p.name not in before:
            p.unlink()
    for name, data in before.items():
        path = directory / name
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data, mode=0o600 if name.endswith(".key") else 0o644)


def _ends_soon(*certs: x509.Certificate, now: datetime) -> bool:
    return any(c.not_valid_after_utc - now <= timedelta(days=RENEW_DAYS) for c in certs)


def ensure_tls(
    directory: Path, names: tuple[str, ...], ips: tuple[str, ...], now: datetime | None = None
) -> TlsFiles:
    """CA and server certificate for ``names``/``ips`` (made or renewed as needed)."""
    now = now or datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_crt_p, legacy_key_p = directory / "ca.crt", directory / "ca.key"
    issuer_key_p, issuer_crt_p = directory / "issuer.key", directory / "issuer.crt"
    key_p, crt_p = directory / "server.key", directory / "server.crt"
    wanted = _sans(names, ips)
    constraints = _name_constraints(wanted)
    cert: x509.Certificate | None = None
    if key_p.exists() and crt_p.exists():
        cert = x509.load_pem_x509_certificate(crt_p.read_bytes())
    names_changed = cert is not None and set(map(str, _sans_of(cert))) != set(map(str, wanted))
    ca_renewed = True
    if ca_crt_p.exists() and issuer_key_p.exists() and issuer_crt_p.exists():
        root = x509.load_pem_x509_certificate(ca_crt_p.read_bytes())
        issuer_key = _load_key(issuer_key_p)
        issuer = x509.load_pem_x509_certificate(issuer_crt_p.read_bytes())
        permitted = set(map(str, constraints.permitted_subtrees or ()))
        current = _constraints_of(issuer) == permitted and _issued_by(issuer, root)
        ca_renewed = not current or _ends_soon(root, issuer, now=now)
    elif ca_crt_p.exists() and legacy_key_p.exists():
        # an older airgap's one-tier CA (its key beside it): kept until the names change
        root = x509.load_pem_x509_certificate(ca_crt_p.read_bytes())
        issuer_key, issuer = _load_key(legacy_key_p), root
        ca_renewed = names_changed or _ends_soon(root, now=now)
    if ca_renewed:
        root_key, root = _new_ca(constraints, now, "airgap root CA")
        issuer_key, issuer = _new_ca(constraints, now, "airgap endpoint CA", (root_key, root))
        del root_key  # never stored: the root can sign nothing else, ever
        atomic_write_bytes(issuer_key_p, _key_pem(issuer_key), mode=0o600)
        atomic_write_bytes(issuer_crt_p, issuer.public_bytes(serialization.Encoding.PEM))
        atomic_write_bytes(ca_crt_p, root.public_bytes(serialization.Encoding.PEM))  # last
        legacy_key_p.unlink(missing_ok=True)  # the unconstrained key it replaces
    if (
        cert is not None
        and not ca_renewed
        and not names_changed
        and cert.not_valid_after_utc - now > timedelta(days=RENEW_DAYS)
        and _issued_by(cert, issuer)
    ):
        return TlsFiles(ca_crt_p, crt_p, key_p, False)
    key = ec.generate_private_key(ec.SECP256R1())
    cn = names[0] if names else "localhost"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=SERVER_DAYS), issuer.not_valid_after_utc))
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
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    atomic_write_bytes(key_p, _key_pem(key), mode=0o600)
    atomic_write_bytes(
        crt_p,
        cert.public_bytes(serialization.Encoding.PEM)
        + issuer.public_bytes(serialization.Encoding.PEM),
    )
    return TlsFiles(ca_crt_p, crt_p, key_p, True, ca_renewed)
