"""Detached co-signatures: ``<bundle>.<keyid>.sig`` files beside a bundle or named on
the command line."""

from __future__ import annotations

from pathlib import Path

from bundler.boundedio import MAX_SIGNATURE_FILE, MAX_SIGNATURES, RefusedFile, read_bounded
from bundler.bundle.parts import BundleLocation
from bundler.bundle.signing import KEYID_RE
from bundler.errors import BundleError, UsageError


def find_detached_signatures(loc: BundleLocation) -> list[Path]:
    """Co-signatures beside the bundle: ``<bundle>.<keyid>.sig``."""
    if loc.base is None:
        return []
    found = []
    for p in sorted(loc.base.parent.glob(f"{loc.base.name}.*.sig")):
        keyid = p.name[len(loc.base.name) + 1 : -len(".sig")]
        if KEYID_RE.match(keyid):
            found.append(p)
    return found


def read_detached(paths: list[Path]) -> list[tuple[str, bytes]]:
    """Read ``<anything>.<keyid>.sig`` files as (keyid, signature) pairs.

    Each is read bounded (:func:`~bundler.boundedio.read_bounded`): a regular file of at
    most :data:`~bundler.boundedio.MAX_SIGNATURE_FILE` bytes, not through a link.

    Raises:
        UsageError: a file is unreadable or its name does not end in ``.<keyid>.sig``.
        BundleError: a file is not a regular file, or too large to be a signature; or
            more than :data:`~bundler.boundedio.MAX_SIGNATURES` files.
    """
    if len(paths) > MAX_SIGNATURES:
        raise BundleError(
            f"{len(paths)} detached signatures, more than the {MAX_SIGNATURES} allowed",
            bundle=str(paths[0].parent),
            hint="Keep only the .sig files of the bundle's signers beside it.",
        )
    out = []
    for p in paths:
        parts = p.name.rsplit(".", 2)
        if len(parts) != 3 or parts[2] != "sig" or not KEYID_RE.match(parts[1]):
            raise UsageError(f"{p}: a detached signature must be named <bundle>.<keyid>.sig")
        try:
            data = read_bounded(p, MAX_SIGNATURE_FILE)
        except RefusedFile as e:
            raise BundleError(
                f"detached signature {e.strerror}",
                bundle=str(p),
                hint="A signature is the small regular file `airgap sign` wrote; remove this "
                "one or copy the real one again.",
            ) from e
        except OSError as e:
            raise UsageError(f"{p}: cannot read signature: {e.strerror}") from e
        out.append((parts[1], data))
    return out


def collect_signatures(
    loc: BundleLocation, extra: list[Path] | tuple[Path, ...] = ()
) -> list[tuple[str, bytes]]:
    """Every detached signature for ``loc``: those beside the bundle, then ``extra``.

    Raises:
        UsageError: a signature file is unreadable or misnamed.
        BundleError: a signature file is not a regular file, or too large.
    """
    return read_detached(find_detached_signatures(loc) + list(extra))
