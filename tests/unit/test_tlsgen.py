"""The endpoint's CA: a root whose key is never stored and an intermediate that signs the
server certificate, both name-constrained to the endpoint's own names, three years, kept
while the names stay, made again when they change or run out; an older one-tier
unconstrained CA is kept until the names change. (OpenSSL and the JVM enforcing the constraints:
tests/integration/test_truststore.py.)"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bundler.install.tlsgen import CA_DAYS, SERVER_DAYS, ensure_tls

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def constraints(ca: x509.Certificate) -> x509.Extension[x509.NameConstraints]:
    return ca.extensions.get_extension_for_class(x509.NameConstraints)


def test_the_ca_permits_only_the_endpoint_names(tmp_path: Path) -> None:
    tls = ensure_tls(tmp_path, ("llm.example.internal",), ("10.1.2.3", "fd00::5"), now=NOW)
    ca, issuer = load(tls.ca_cert), load(tmp_path / "issuer.crt")
    for cert in (ca, issuer):
        ext = constraints(cert)
        assert ext.critical
        assert set(ext.value.permitted_subtrees or ()) == {
            x509.DNSName("llm.example.internal"),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")),
            x509.IPAddress(ipaddress.ip_network("10.1.2.3/32")),
            x509.IPAddress(ipaddress.ip_network("fd00::5/128")),
        }
        assert ext.value.excluded_subtrees is None
        # three years, not ten
        assert CA_DAYS == 1095
        assert cert.not_valid_after_utc - NOW == timedelta(days=CA_DAYS)
    # root -> intermediate -> server; the root's key is kept nowhere, the intermediate's is
    issuer.verify_directly_issued_by(ca)
    basic = [
        c.extensions.get_extension_for_class(x509.BasicConstraints).value for c in (ca, issuer)
    ]
    assert [(b.ca, b.path_length) for b in basic] == [(True, 1), (True, 0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.crt", "issuer.crt", "issuer.key", "server.crt", "server.key"
    ]  # fmt: skip
    leaf, chained = x509.load_pem_x509_certificates(tls.cert.read_bytes())
    assert chained == issuer  # Nginx sends the intermediate with the server certificate
    leaf.verify_directly_issued_by(issuer)
    assert leaf.not_valid_after_utc - NOW == timedelta(days=SERVER_DAYS)
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    assert tls.generated and tls.ca_renewed


def test_a_rerun_keeps_the_ca_and_a_name_change_makes_a_new_one(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path, ("llm.example.internal",), (), now=NOW)
    ca_bytes = first.ca_cert.read_bytes()
    again = ensure_tls(tmp_path, ("llm.example.internal",), (), now=NOW + timedelta(days=100))
    assert not again.generated and not again.ca_renewed
    assert first.ca_cert.read_bytes() == ca_bytes
    moved = ensure_tls(tmp_path, ("llm2.example.internal",), (), now=NOW + timedelta(days=101))
    assert moved.generated and moved.ca_renewed
    ca = load(moved.ca_cert)
    assert moved.ca_cert.read_bytes() != ca_bytes
    assert x509.DNSName("llm2.example.internal") in (constraints(ca).value.permitted_subtrees or ())
    assert x509.DNSName("llm.example.internal") not in (
        constraints(ca).value.permitted_subtrees or ()
    )
    # the new server certificate chains to the new root (same names as the old one)
    issuer = load(tmp_path / "issuer.crt")
    issuer.verify_directly_issued_by(ca)
    load(moved.cert).verify_directly_issued_by(issuer)


def test_a_ca_near_its_end_is_made_again_and_never_outlived(tmp_path: Path) -> None:
    first = ensure_tls(tmp_path, ("h",), (), now=NOW)
    ca = load(first.ca_cert)
    # 100 days before the CA's end, the server certificate is renewed (it was 825 days)
    # but must not outlive its CA
    later = ca.not_valid_after_utc - timedelta(days=100)
    renewed = ensure_tls(tmp_path, ("h",), (), now=later)
    assert renewed.generated and not renewed.ca_renewed
    assert load(renewed.cert).not_valid_after_utc == ca.not_valid_after_utc
    # 20 days before its end the CA itself is made again
    end = ensure_tls(tmp_path, ("h",), (), now=ca.not_valid_after_utc - timedelta(days=20))
    assert end.ca_renewed and load(end.ca_cert).serial_number != ca.serial_number


def _legacy(directory: Path, names: tuple[str, ...]) -> None:
    """What airgap wrote before the constraints: a 10-year CA without NameConstraints and
    a server certificate for ``names`` + localhost + 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=400))
        .not_valid_after(NOW + timedelta(days=3250))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in sorted({"localhost", *names})]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=400))
        .not_valid_after(NOW + timedelta(days=425))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    nope = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    (directory / "ca.key").write_bytes(ca_key.private_bytes(pem, pkcs8, nope))
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "server.key").write_bytes(key.private_bytes(pem, pkcs8, nope))
    (directory / "server.crt").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))


def test_an_older_unconstrained_ca_stays_until_the_names_change(tmp_path: Path) -> None:
    _legacy(tmp_path, ("llm.example.internal",))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    same = ensure_tls(tmp_path, ("llm.example.internal",), (), now=NOW)
    assert not same.generated and not same.ca_renewed
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # a site's trust holds
    moved = ensure_tls(tmp_path, ("other.example.internal",), (), now=NOW)
    assert moved.ca_renewed and moved.ca_cert.read_bytes() != before["ca.crt"]
    assert constraints(load(moved.ca_cert)).critical
    assert not (tmp_path / "ca.key").exists()  # the unconstrained key is gone with its CA
