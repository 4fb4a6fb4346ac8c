"""Co-signing: a second signer adds ``<bundle>.<keyid>.sig`` without rewriting the bundle."""

from __future__ import annotations

from pathlib import Path

from bundler import canonical
from bundler.bundle.parts import locate_bundle, parts_list_path
from bundler.bundle.reader import read_head
from bundler.bundle.signing import SigningKey
from bundler.errors import BundleError, UsageError
from bundler.fsutil import atomic_output, atomic_write_bytes


def cosign(spec: str, key: SigningKey, expect_index_sha256: str | None = None) -> list[Path]:
    """Sign the bundle's index with ``key``; for split bundles, the parts list too.

    Returns:
        The files written.

    Raises:
        UsageError: the bundle is read from stdin (a detached signature needs a place).
        BundleError: the bundle's first members are not an airgap index.
    """
    if spec == "-":
        raise UsageError("`airgap sign` needs the bundle file, not stdin")
    loc = locate_bundle(spec)
    head = read_head(loc)
    if expect_index_sha256 is not None and head.index_sha256 != expect_index_sha256:
        raise BundleError(
            f"the index changed while it was being verified (sha256 {head.index_sha256}, "
            f"verified {expect_index_sha256}); nothing was signed",
            bundle=spec,
            hint="Make sure nothing writes to the bundle, then sign again.",
        )
    assert loc.base is not None
    sig_path = loc.base.with_name(f"{loc.base.name}.{key.keyid}.sig")
    atomic_write_bytes(sig_path, key.sign(head.index_bytes))
    written = [sig_path]
    if loc.parts_list is not None:
        list_path = parts_list_path(loc.base)
        doc = canonical.loads(list_path.read_bytes().rstrip(b"\n"))
        doc["signatures"][key.keyid] = key.sign(canonical.dumps(loc.parts_list)).hex()
        with atomic_output(list_path) as f:
            f.write(canonical.dumps(doc) + b"\n")
        written.append(list_path)
    return written
