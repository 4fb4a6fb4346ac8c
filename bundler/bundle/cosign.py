"""Co-signing: a second signer adds ``<bundle>.<keyid>.sig`` without rewriting the bundle.

Every file is read once: the index and the parts list are signed as the very bytes
that were read (and verified, unless the signer chose not to), never read again from
disk, so a file swapped between the check and the signature cannot be signed.
"""

from __future__ import annotations

from pathlib import Path

from bundler import canonical
from bundler.bundle.parts import BundleLocation, damaged_parts, locate_bundle, parts_list_path
from bundler.bundle.reader import read_head
from bundler.bundle.signing import SigningKey
from bundler.errors import BundleError, UsageError
from bundler.fsutil import atomic_output, atomic_write_bytes
from bundler.hashing import ProgressFn


def read_unverified(spec: str) -> tuple[BundleLocation, bytes]:
    """The bundle's location and index bytes, read once without verifying (``--no-verify``).

    Raises:
        UsageError: the bundle is read from stdin (a detached signature needs a place).
        BundleError: the bundle's first members are not an airgap index.
    """
    if spec == "-":
        raise UsageError("`airgap sign` needs the bundle file, not stdin")
    head = read_head(locate_bundle(spec))
    return head.location, head.index_bytes


def cosign(
    loc: BundleLocation, index_bytes: bytes, key: SigningKey, progress: ProgressFn | None = None
) -> list[Path]:
    """Sign ``index_bytes`` with ``key``; for split bundles, the parts list too.

    ``loc`` and ``index_bytes`` are what was read (and verified) before: nothing is read
    again except the parts themselves, which are hashed against the parts list first.

    Returns:
        The files written.

    Raises:
        UsageError: the bundle is read from stdin (a detached signature needs a place).
        BundleError: a part differs from the parts list (nothing is signed then).
    """
    if loc.base is None:
        raise UsageError("`airgap sign` needs the bundle file, not stdin")
    if loc.parts_list_bytes is not None:
        damaged = damaged_parts(loc.parts, progress)
        if damaged:
            raise BundleError(
                "differs from the sha256 in the signed parts list; nothing was signed",
                part=", ".join(damaged),
                hint=f"Copy {', '.join(damaged)} again from the build machine, then sign again.",
            )
    sig_path = loc.base.with_name(f"{loc.base.name}.{key.keyid}.sig")
    atomic_write_bytes(sig_path, key.sign(index_bytes))
    written = [sig_path]
    if loc.parts_list is not None and loc.parts_list_bytes is not None:
        signatures = {k: sig.hex() for k, sig in loc.parts_list_signatures}
        signatures[key.keyid] = key.sign(loc.parts_list_bytes).hex()
        doc = {"signed": loc.parts_list, "signatures": signatures}
        list_path = parts_list_path(loc.base)
        with atomic_output(list_path) as f:
            f.write(canonical.dumps(doc) + b"\n")
        written.append(list_path)
    return written
