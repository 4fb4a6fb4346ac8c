"""The CA a node is to trust, and the checksum both trust-step paths compute.

* :func:`read_ca`: exactly one CA certificate (BasicConstraints CA), with the alias it
  gets in the store, ``airgap-<first 16 hex of its SHA-256>``: the same CA always gets the
  same alias, so a rerun replaces it and never adds a second copy.
* :func:`cksum`: POSIX ``cksum`` (CRC-32 and length), because it is the one checksum tool
  every node has, Python or not: ``es-truststore.sh`` uses the tool and this computes the
  same value. It detects change (an upgraded ``cacerts``), not tampering: the store's own
  MAC (its password) covers integrity.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bundler.errors import UsageError


@dataclass(frozen=True)
class CaCert:
    pem: bytes
    fingerprint: str  # SHA-256 of the DER, lowercase hex

    @property
    def alias(self) -> str:
        """The store alias: the same for the same CA, so a rerun replaces, never adds."""
        return f"airgap-{self.fingerprint[:16]}"


def read_ca(path: Path) -> CaCert:
    """The one CA certificate in the PEM file ``path``.

    Raises:
        UsageError: unreadable, not exactly one certificate, or not a CA certificate.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}", hint="Check --ca.") from e
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise UsageError(f"{path}: not a PEM certificate ({e})", hint="Check --ca.") from e
    if len(certs) != 1:
        raise UsageError(
            f"{path}: holds {len(certs)} certificates, not one",
            hint="Pass the one CA certificate that signed the endpoint's server certificate.",
        )
    try:
        is_ca = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise UsageError(
            f"{path}: not a CA certificate",
            hint="Pass the CA that signed the server certificate (secrets/tls/ca.crt under "
            "the airgap prefix), not the server certificate itself.",
        )
    der = certs[0].public_bytes(serialization.Encoding.DER)
    pem = certs[0].public_bytes(serialization.Encoding.PEM)
    return CaCert(pem, hashlib.sha256(der).hexdigest())


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
        table.append(c & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def cksum(path: Path) -> str:
    """``CRC:LENGTH`` as POSIX ``cksum`` prints them (the sh script uses that tool)."""
    crc, length = 0, 0
    with open(path, "rb") as f:
        while block := f.read(1 << 16):
            length += len(block)
            for b in block:
                crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ b]
    n = length
    while n:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ (n & 0xFF)]
        n >>= 8
    return f"{~crc & 0xFFFFFFFF}:{length}"
