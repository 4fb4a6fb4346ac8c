"""Bundles crafted and signed with the TRUSTED key that carry hostile tar members.

A signature proves who made a bundle, not that it is harmless; the reader must
refuse these by name and write nothing outside its staging directory.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from bundler import canonical
from bundler.bundle import tarfmt
from bundler.bundle.extract import StagingExtractor
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.bundle.signing import load_signing_key
from bundler.errors import BundleError

from conftest import Keys

CREATED = "2026-11-01T00:00:00Z"
MTIME = 1793491200  # CREATED as epoch


def entry(path: str, data: bytes) -> dict[str, object]:
    sha = hashlib.sha256(data).hexdigest()
    return {"path": path, "size": len(data), "sha256": sha, "chunks": [sha]}


def index_bytes(files: list[dict[str, object]]) -> bytes:
    return canonical.dumps(
        {
            "format": "airgap-bundle/1",
            "tool": "evil",
            "name": "demo",
            "version": 1,
            "created": CREATED,
            "expires": "2099-01-01T00:00:00Z",
            "chunk_size": 65536,
            "manifest": {},
            "lock": {},
            "files": files,
            "images": [],
        }
    )


def member(
    name: str,
    data: bytes = b"",
    type: bytes = tarfile.REGTYPE,
    linkname: str = "",
    size: int | None = None,
) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    info.type = type
    info.linkname = linkname
    info.mtime = MTIME
    info.mode = 0o644
    info.uname = info.gname = ""
    if type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    if type not in (tarfile.REGTYPE,):
        info.size = 0 if size is None else size
        data = b""
    return (
        info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        + data
        + b"\0" * tarfmt.padding(len(data))
    )


def craft(path: Path, key: Keys, files: list[dict[str, object]], payload: bytes) -> Path:
    """Signed index + signature + SHA256SUMS, then arbitrary payload bytes."""
    idx = index_bytes(files)
    signer = load_signing_key(key.private)
    sums = "".join(f"{f['sha256']}  {f['path']}\n" for f in files).encode()
    body = (
        member("airgap/index.json", idx)
        + member(f"airgap/signatures/{signer.keyid}.sig", signer.sign(idx))
        + member("airgap/SHA256SUMS", sums)
        + payload
        + tarfmt.END_OF_ARCHIVE
    )
    path.write_bytes(body)
    return path


A, B = b"alpha", b"bravo"
CASES = {
    "symlink": (
        [entry("models/m/a", A)],
        member("models/m/a", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "symbolic link",
    ),
    "hardlink": (
        [entry("models/m/a", A)],
        member("models/m/a", type=tarfile.LNKTYPE, linkname="/etc/shadow"),
        "hard link",
    ),
    "char device": (
        [entry("models/m/a", A)],
        member("models/m/a", type=tarfile.CHRTYPE),
        "character device",
    ),
    "block device": (
        [entry("models/m/a", A)],
        member("models/m/a", type=tarfile.BLKTYPE),
        "block device",
    ),
    "fifo": ([entry("models/m/a", A)], member("models/m/a", type=tarfile.FIFOTYPE), "FIFO"),
    "directory": (
        [entry("models/m/a", A)],
        member("models/m/a", type=tarfile.DIRTYPE),
        "directory",
    ),
    "traversal member": ([entry("models/m/a", A)], member("../../evil", A), "unsafe member path"),
    "absolute member": (
        [entry("models/m/a", A)],
        member("/tmp/evil-airgap", A),
        "unsafe member path",
    ),
    "duplicate": (
        [entry("models/m/a", A), entry("models/m/b", B)],
        member("models/m/a", A) + member("models/m/a", A),
        "duplicate member",
    ),
    "unlisted": (
        [entry("models/m/a", A), entry("models/m/b", B)],
        member("models/m/a", A) + member("models/m/evil", A),
        "not listed",
    ),
    "reordered": (
        [entry("models/m/a", A), entry("models/m/b", B)],
        member("models/m/b", B) + member("models/m/a", A),
        "out of order",
    ),
    "size mismatch": ([entry("models/m/a", A)], member("models/m/a", A + b"!"), "bytes but"),
    "extra after last": (
        [entry("models/m/a", A)],
        member("models/m/a", A) + member("evil", A),
        "after the last listed member",
    ),
    "missing member": (
        [entry("models/m/a", A), entry("models/m/b", B)],
        member("models/m/a", A),
        "missing member",
    ),
    "gnu long name": (
        [entry("models/m/a", A)],
        member("././@LongLink", b"../../evil\0", type=tarfile.GNUTYPE_LONGNAME, size=11)
        + b"../../evil\0".ljust(512, b"\0"),
        "GNU long-name",
    ),
    "global pax header": (
        [entry("models/m/a", A)],
        member("pax_global_header", type=tarfile.XGLTYPE, size=0),
        "global pax header",
    ),
    "traversal in signed index": (
        [entry("models/../../evil", A)],
        member("models/../../evil", A),
        "invalid index",
    ),
    "absolute in signed index": (
        [entry("/tmp/evil-airgap", A)],
        member("/tmp/evil-airgap", A),
        "invalid index",
    ),
    "content differs": ([entry("models/m/a", A)], member("models/m/a", B), "differs from the"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_bundle_is_refused_and_nothing_escapes(
    tmp_path: Path, key: Keys, case: str
) -> None:
    files, payload, reason = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    bad = craft(work / "evil.tar", key, files, payload)
    staging = work / "deep" / "stage"
    staging.parent.mkdir()
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(work))
    with pytest.raises(BundleError, match=reason) as e:
        read_bundle(str(bad), TrustPolicy(key.trust()), StagingExtractor(staging))
    assert "evil.tar" in str(e.value)
    assert not staging.exists()
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(work))) == before
    assert not Path("/tmp/evil-airgap").exists()
    assert not (tmp_path / "evil").exists()


def test_the_crafting_helper_makes_bundles_the_reader_accepts(tmp_path: Path, key: Keys) -> None:
    """Guard against a test suite that passes because the helper is broken."""
    good = craft(
        tmp_path / "good.tar",
        key,
        [entry("models/m/a", A), entry("models/m/b", B)],
        member("models/m/a", A) + member("models/m/b", B),
    )
    staging = tmp_path / "stage"
    read_bundle(str(good), TrustPolicy(key.trust()), StagingExtractor(staging))
    assert (staging / "models/m/b").read_bytes() == B


def test_unsigned_bundle_is_refused(tmp_path: Path, key: Keys) -> None:
    from bundler.errors import TrustError

    idx = index_bytes([entry("models/m/a", A)])
    sums = f"{entry('models/m/a', A)['sha256']}  models/m/a\n".encode()
    body = (
        member("airgap/index.json", idx)
        + member("airgap/SHA256SUMS", sums)
        + member("models/m/a", A)
        + tarfmt.END_OF_ARCHIVE
    )
    (tmp_path / "unsigned.tar").write_bytes(body)
    staging = tmp_path / "stage"
    with pytest.raises(TrustError, match="it is not signed"):
        read_bundle(
            str(tmp_path / "unsigned.tar"), TrustPolicy(key.trust()), StagingExtractor(staging)
        )
    assert not staging.exists()
