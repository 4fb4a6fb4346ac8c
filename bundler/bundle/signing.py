"""Ed25519 keys and raw signatures over the exact bytes of ``airgap/index.json``.

A key's id is the sha256 (hex) of its raw 32-byte public key. Signatures are the
raw 64 bytes, so ``openssl pkeyutl -verify -pubin -inkey KEY.pub -rawin`` checks
them with no airgap code at all.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bundler import env
from bundler.boundedio import MAX_KEY_FILE, read_bounded
from bundler.errors import KeyFileError, TrustError, UsageError
from bundler.fsutil import atomic_write_bytes

KEYID_RE = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_SIZE = 64


def keyid_of(public_key: Ed25519PublicKey) -> str:
    """Return the key id: sha256 hex of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    """A private key loaded for signing."""

    key: Ed25519PrivateKey
    keyid: str
    path: str

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


@dataclass(frozen=True)
class TrustedKey:
    """A public key the operator trusts, and where it came from."""

    key: Ed25519PublicKey
    keyid: str
    path: str


def generate_keypair(path: Path, passphrase: bytes | None = None) -> str:
    """Write a new Ed25519 private key (PEM PKCS8, mode 0600) and ``path.pub``.

    Returns:
        The new key's id.

    Raises:
        UsageError: if either file exists already (keys are never overwritten).
    """
    pub_path = path.with_name(path.name + ".pub")
    for p in (path, pub_path):
        if p.exists():
            raise UsageError(
                f"{p}: already exists", hint="Choose another file name; keys are never overwritten."
            )
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(path, private_pem, mode=0o600)
    atomic_write_bytes(pub_path, public_pem, mode=0o644)
    return keyid_of(key.public_key())


def load_signing_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    """Load an Ed25519 private key from a PEM file.

    Raises:
        KeyFileError: unreadable file, wrong passphrase, or not an Ed25519 key.
    """
    try:
        data = read_bounded(path, MAX_KEY_FILE, follow_symlinks=True)
    except OSError as e:
        raise KeyFileError(f"cannot read private key: {e.strerror}", path=str(path)) from e
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as e:
        if passphrase:
            raise KeyFileError(
                "key is not encrypted but a passphrase was given",
                path=str(path),
                hint="Unset AIRGAP_KEY_PASSPHRASE.",
            ) from e
        raise KeyFileError(
            "key is encrypted",
            path=str(path),
            hint="Give its passphrase in AIRGAP_KEY_PASSPHRASE or with --passphrase-file.",
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            "not a PEM private key, or wrong passphrase",
            path=str(path),
            hint="Use the KEYFILE written by `airgap keygen` and its passphrase.",
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            "not an Ed25519 key", path=str(path), hint="Create one with `airgap keygen KEYFILE`."
        )
    return SigningKey(key=key, keyid=keyid_of(key.public_key()), path=str(path))


def load_trusted_key(path: Path) -> TrustedKey:
    """Load an Ed25519 public key (PEM SubjectPublicKeyInfo).

    Raises:
        KeyFileError: unreadable file or not an Ed25519 public key.
    """
    try:
        data = read_bounded(path, MAX_KEY_FILE, follow_symlinks=True)
    except OSError as e:
        raise KeyFileError(f"cannot read public key: {e.strerror}", path=str(path)) from e
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            "not a PEM public key",
            path=str(path),
            hint="Pass the KEYFILE.pub written by `airgap keygen`, not the private key.",
        ) from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key", path=str(path))
    return TrustedKey(key=key, keyid=keyid_of(key), path=str(path))


def load_trust(key_paths: Iterable[Path], trust_dir: Path | None) -> dict[str, TrustedKey]:
    """Collect trusted keys from files and a directory of ``*.pub`` files, by key id.

    Raises:
        KeyFileError: a key file cannot be used.
        UsageError: no trusted key at all (an install never runs on trust-on-first-use).
    """
    keys: dict[str, TrustedKey] = {}
    paths = list(key_paths)
    if trust_dir is not None:
        if not trust_dir.is_dir():
            raise UsageError(f"{trust_dir}: trust directory does not exist")
        paths.extend(sorted(trust_dir.glob("*.pub")))
    for p in paths:
        tk = load_trusted_key(p)
        keys.setdefault(tk.keyid, tk)
    if not keys:
        raise UsageError(
            "no trusted key given",
            hint="Pass --trusted-key KEY.pub (the signer's public key) or --trust-dir DIR.",
        )
    return keys


@dataclass(frozen=True)
class SignatureCheck:
    """What the signatures on one index proved."""

    valid: tuple[str, ...]  # trusted key ids whose signature verified
    invalid: tuple[str, ...]  # trusted key ids whose signature did NOT verify
    unknown: tuple[str, ...]  # key ids we do not trust (ignored)


def check_signatures(
    data: bytes, signatures: Iterable[tuple[str, bytes]], trusted: Mapping[str, TrustedKey]
) -> SignatureCheck:
    """Check every ``(keyid, signature)`` over ``data``; report which trusted keys signed it.

    A key counts once however many of its signatures are present (embedded and
    detached), and it counts as valid if any of them verifies.
    """
    valid: set[str] = set()
    seen_trusted: set[str] = set()
    unknown: set[str] = set()
    for keyid, sig in signatures:
        tk = trusted.get(keyid)
        if tk is None:
            unknown.add(keyid)
            continue
        seen_trusted.add(keyid)
        if len(sig) != SIGNATURE_SIZE:
            continue
        try:
            tk.key.verify(sig, data)
        except InvalidSignature:
            continue
        valid.add(keyid)
    return SignatureCheck(
        tuple(sorted(valid)), tuple(sorted(seen_trusted - valid)), tuple(sorted(unknown))
    )


def verify_threshold(
    data: bytes,
    signatures: Sequence[tuple[str, bytes]],
    trusted: Mapping[str, TrustedKey],
    threshold: int,
    what: str,
) -> SignatureCheck:
    """Require at least ``threshold`` distinct trusted keys with a valid signature.

    Raises:
        TrustError: fewer than ``threshold`` valid signatures from trusted keys.
    """
    if threshold < 1:
        raise UsageError("--require-signatures must be at least 1")
    result = check_signatures(data, signatures, trusted)
    if len(result.valid) >= threshold:
        return result
    parts = [f"{len(result.valid)} valid signature(s) from trusted keys, {threshold} required"]
    if not signatures:
        parts = ["it is not signed"]
    if result.invalid:
        parts.append("BAD signature from " + ", ".join(k[:16] for k in result.invalid))
    if result.unknown:
        parts.append("signed by untrusted key(s) " + ", ".join(k[:16] for k in result.unknown))
    raise TrustError(f"{what}: " + "; ".join(parts))


def read_passphrase(passphrase_file: Path | None) -> bytes | None:
    """The key passphrase: from a file, else ``AIRGAP_KEY_PASSPHRASE``; never from argv."""
    if passphrase_file is not None:
        try:
            return passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"{passphrase_file}: cannot read passphrase file: {e.strerror}") from e
    return env.key_passphrase()
