"""Delta bundles without an engine: what the build carries, the signed base reference,
verify, the base bundle's layout, and the verified copy that install uses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from test_index import _entry, _index

from bundler import canonical
from bundler.build import BuildOptions, build
from bundler.bundle.delta import BaseIndex, load_base, member_offsets
from bundler.bundle.index import FileEntry, Index, parse_index
from bundler.bundle.plan import BuildResult
from bundler.bundle.signing import load_signing_key
from bundler.errors import BundleError, VerificationError
from bundler.install.reuse import Reuse, Source
from bundler.install.reusecopy import put_files, verified
from bundler.manifest import load_manifest
from devkit.demo_data import safetensors_bytes

from conftest import Keys, airgap, build_bundle

DOCS = "elastic/product-docs/kb-product-doc-kibana-9.2.zip"
SBOM = "sbom/cyclonedx.json"


def change_docs(manifest: Path, version: int) -> None:
    text = manifest.read_text().replace("version: 1", f"version: {version}")
    manifest.write_text(text)
    with open(manifest.parent / "elastic" / "kb-product-doc-kibana-9.2.zip", "ab") as f:
        f.write(b"v%d" % version)


def build_delta(
    manifest: Path, out: Path, key: Keys, base: Path, split_size: int | None = None
) -> BuildResult:
    opts = BuildOptions(
        output=out,
        keys=(load_signing_key(key.private),),
        chunk_size=64 * 1024,
        base=str(base),
        split_size=split_size,
    )
    return build(load_manifest(manifest), opts)


@pytest.fixture
def pair(tmp_path: Path, demo_manifest: Path, key: Keys) -> tuple[Path, Path, BuildResult]:
    v1, v2 = tmp_path / "v1.tar", tmp_path / "v2.tar"
    build_bundle(demo_manifest, v1, key)
    change_docs(demo_manifest, 2)
    return v1, v2, build_delta(demo_manifest, v2, key, v1)


def test_delta_lists_every_file_and_carries_only_the_changed_one(
    tmp_path: Path, demo_manifest: Path, key: Keys, pair: tuple[Path, Path, BuildResult]
) -> None:
    v1, v2, result = pair
    full = build_bundle(demo_manifest, tmp_path / "full.tar", key)  # the negative control
    index = result.index
    assert [f.model_dump() for f in index.files] == [f.model_dump() for f in full.index.files]
    assert index.base is not None and index.base.name == "demo" and index.base.version == 1
    assert index.base.index_sha256 == hashlib.sha256(load_base(str(v1)).index_bytes).hexdigest()
    # the SBOM is made at write time and names every file's hash: always carried
    assert [f.path for f in index.carried] == [DOCS, SBOM]
    assert [f.path for f in full.index.carried] == [f.path for f in full.index.files]
    # the signed index (base reference included) round-trips byte for byte
    data = index.to_bytes()
    assert parse_index(data).to_bytes() == data and b'"base":{' in data
    # the tar holds only the carried file; stock tools check it
    with tarfile.open(v2) as tf:
        payload = [n for n in tf.getnames() if not n.startswith("airgap/")]
    assert payload == [DOCS, SBOM]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(v2), "-C", str(out)], check=True)
    r = subprocess.run(
        ["sha256sum", "-c", "--strict", "airgap/SHA256SUMS"], cwd=out, capture_output=True
    )
    assert r.returncode == 0 and r.stdout.decode().split("\n")[:2] == [f"{DOCS}: OK", f"{SBOM}: OK"]
    assert v2.stat().st_size < (tmp_path / "full.tar").stat().st_size


def test_base_given_as_its_signed_index_names_the_same_release(
    tmp_path: Path, pair: tuple[Path, Path, BuildResult]
) -> None:
    v1, _, _ = pair
    r = airgap("inspect", "--index", str(v1))
    index_file = tmp_path / "v1-index.json"
    index_file.write_bytes(r.stdout)
    assert load_base(str(index_file)).sha256 == load_base(str(v1)).sha256
    # an index that is not the signed bytes (a newline added) names no release: refused
    index_file.write_bytes(r.stdout + b"\n")
    with pytest.raises(BundleError):
        load_base(str(index_file))


def test_nothing_in_common_writes_a_full_bundle(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    other = tmp_path / "other.json"
    doc = _index([_entry("models/other/x", 10)])
    doc.update(format="airgap-bundle/2", requires="airgap>=0.2.0", name="other")
    other.write_bytes(canonical.dumps(doc))
    result = build_delta(demo_manifest, tmp_path / "d.tar", key, other)
    assert result.index.base is None
    assert [f.path for f in result.index.carried] == [f.path for f in result.index.files]
    r = airgap(
        "build",
        str(demo_manifest),
        "-o",
        str(tmp_path / "d2.tar"),
        "--key",
        str(key.private),
        "--base",
        str(other),
    )
    assert r.returncode == 0 and b"nothing in common with the base" in r.stderr


def v2_doc(**base: Any) -> dict[str, Any]:
    files = [_entry("models/m/a", 10), _entry("models/m/b", 10), _entry("models/m/c", 10)]
    doc = {**_index(files), "format": "airgap-bundle/2", "requires": "airgap>=0.2.0"}
    ref = {"index_sha256": "a" * 64, "name": "demo", "version": 1, "reused": ["models/m/a"]}
    return {**doc, "base": {**ref, **base}}


def test_a_valid_base_reference_parses() -> None:
    index = parse_index(canonical.dumps(v2_doc(reused=["models/m/a", "models/m/c"])))
    assert [f.path for f in index.carried] == ["models/m/b"]
    assert [f.path for f in index.reused] == ["models/m/a", "models/m/c"]


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ({"reused": ["models/m/zz"]}, "'models/m/zz' is not in files"),
        ({"reused": ["models/m/c", "models/m/a"]}, "out of order or duplicated"),
        ({"reused": ["models/m/a", "models/m/a"]}, "out of order or duplicated"),
        ({"reused": []}, "base.reused"),
        ({"reused": ["../x"]}, "base.reused"),
        ({"layers": {"sha256:" + "1" * 64: "sha256:" + "2" * 64}}, "not a reused image layer"),
        ({"index_sha256": "xyz"}, "base.index_sha256"),
        ({"files": {"models/m/a": "reused"}}, "base.files"),  # the never-written 0.2.0 schema
    ],
)
def test_base_reference_rules(base: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        parse_index(canonical.dumps(v2_doc(**base)))


def test_a_format_1_index_has_no_base() -> None:
    doc = v2_doc()
    doc.update(format="airgap-bundle/1")
    doc.pop("requires")
    with pytest.raises(BundleError, match="base: not part of airgap-bundle/1"):
        parse_index(canonical.dumps(doc))


def test_verify_checks_the_carried_bytes_and_names_the_base(
    tmp_path: Path, key: Keys, pair: tuple[Path, Path, BuildResult]
) -> None:
    v1, v2, _ = pair
    r = airgap("verify", str(v2), "--trusted-key", str(key.public), "--json")
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert doc["base"]["index_sha256"] == load_base(str(v1)).sha256
    assert doc["base"]["carried_files"] == 2 and doc["base"]["reused_files"] == 16  # + the SBOM, carried
    r = airgap("verify", str(v2), "--trusted-key", str(key.public))
    assert b"2 files" in r.stdout and b"delta of demo v1 (index sha256 " in r.stdout
    assert b"come from that base at install" in r.stdout
    r = airgap("inspect", str(v2))
    assert b"delta of demo v1" in r.stdout
    # the signature covers the base reference: naming another base breaks it
    other = bytearray(v2.read_bytes())
    at = other.find(load_base(str(v1)).sha256.encode())
    other[at] = ord("0") if other[at] != ord("0") else ord("1")
    (tmp_path / "rebased.tar").write_bytes(bytes(other))
    r = airgap("verify", str(tmp_path / "rebased.tar"), "--trusted-key", str(key.public))
    assert r.returncode == 3 and b"signature" in r.stderr
    # a flipped carried byte is refused, named
    with tarfile.open(v2) as tf:
        m = tf.getmember(DOCS)
    bad = bytearray(v2.read_bytes())
    bad[m.offset_data + 2] ^= 1
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    r = airgap("verify", str(tmp_path / "bad.tar"), "--trusted-key", str(key.public))
    assert r.returncode == 3 and f"member {DOCS}".encode() in r.stderr


def test_a_delta_splits_into_parts_like_any_bundle(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    v1 = tmp_path / "v1.tar"
    build_bundle(demo_manifest, v1, key)
    (demo_manifest.parent / "weights" / "model.safetensors").write_bytes(
        safetensors_bytes(300_000 // 256 * 256, fill=b"\x07" * 5)
    )
    change_docs(demo_manifest, 2)
    result = build_delta(demo_manifest, tmp_path / "v2.tar", key, v1, split_size=64 * 1024)
    assert len(result.outputs) > 2 and result.index.base is not None
    r = airgap("verify", str(result.outputs[0]), "--trusted-key", str(key.public))
    assert r.returncode == 0, r.stderr.decode()


def test_dry_run_lists_what_is_carried_and_reused_and_writes_nothing(
    tmp_path: Path, demo_manifest: Path, key: Keys, pair: tuple[Path, Path, BuildResult]
) -> None:
    v1, _, result = pair
    out = tmp_path / "never.tar"
    args = ["build", str(demo_manifest), "-o", str(out), "--key", str(key.private)]
    r = airgap(*args, "--base", str(v1), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    # the dry run lists the sources; the SBOM is made (and carried) only when writing
    carried = [f.path for f in result.index.carried if f.path != SBOM]
    assert [c["path"] for c in doc["carried"]] == carried
    assert [c["path"] for c in doc["reused"]] == [f.path for f in result.index.reused]
    assert doc["reused_bytes"] == sum(f.size for f in result.index.reused)
    assert not out.exists()
    r = airgap(*args, "--base", str(v1), "--dry-run")
    assert f"carry        24 B  {DOCS}".encode() in r.stdout and b"would carry 1 files" in r.stdout


def test_member_offsets_are_where_the_base_bundle_holds_each_file(
    pair: tuple[Path, Path, BuildResult], tmp_path: Path
) -> None:
    v1, v2, _ = pair
    for bundle in (v1, v2):  # a full bundle and a delta (whose SHA256SUMS is shorter)
        offsets = member_offsets(load_base(str(bundle)))
        with tarfile.open(bundle) as tf:
            members = {m.name: m.offset_data for m in tf.getmembers()}
        assert offsets and all(members[p] == at for p, at in offsets.items())


def _entry_of(data: bytes, chunk: int) -> FileEntry:
    chunks = [hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]
    return FileEntry(
        path="models/m/x",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunks=chunks or [hashlib.sha256(b"").hexdigest()],
    )


def fail(why: str) -> VerificationError:
    return VerificationError(why)


def test_verified_hands_on_no_byte_of_a_bad_chunk() -> None:
    good = os.urandom(3 * 1024)
    entry = _entry_of(good, 1024)
    blocks = [good[:700], good[700:2500], good[2500:]]
    assert b"".join(verified(iter(blocks), entry, 1024, fail, hold=True)) == good
    bad = bytearray(good)
    bad[1500] ^= 1  # in chunk 1
    got: list[bytes] = []
    with pytest.raises(VerificationError, match="chunk 1 "):
        for piece in verified(iter([bytes(bad)]), entry, 1024, fail, hold=True):
            got.append(bytes(piece))
    assert b"".join(got) == good[:1024]  # chunk 0 only
    with pytest.raises(VerificationError, match="more than the signed"):
        list(verified(iter([good + b"x"]), entry, 1024, fail, hold=False))
    with pytest.raises(VerificationError, match="ends after"):
        list(verified(iter([good[:-1]]), entry, 1024, fail, hold=False))
    assert list(verified(iter([]), _entry_of(b"", 1024), 1024, fail, hold=True)) == []


def test_a_link_is_made_only_to_the_file_that_was_checked(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    src = base / "x"
    src.write_bytes(b"weights")
    st = src.stat()
    entry = _entry_of(b"weights", 1024)
    reuse = Reuse(
        BaseIndex(Index.model_construct(name="demo", version=1), b"", "demo-1"),
        str(base),
        files=[Source(entry, path=src)],
        link=True,
        checked={src: (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)},
    )
    put_files(reuse, tmp_path / "new", 1024)
    assert (tmp_path / "new" / entry.path).stat().st_ino == st.st_ino
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # touched after its check
    with pytest.raises(VerificationError, match="changed after the preflight hashed it"):
        put_files(reuse, tmp_path / "new2", 1024)
    reuse.link = False  # a copy re-hashes what it copies
    src.write_bytes(b"Weights")
    with pytest.raises(VerificationError, match="chunk 0 "):
        put_files(reuse, tmp_path / "new3", 1024)
