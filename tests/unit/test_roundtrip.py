"""Build from local sources, verify, extract: single file, split parts, determinism."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bundler.bundle.cosign import cosign, read_unverified
from bundler.bundle.detached import find_detached_signatures, read_detached
from bundler.bundle.extract import StagingExtractor
from bundler.bundle.parts import locate_bundle, parts_list_path
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle, read_head
from bundler.bundle.signing import load_signing_key, load_trust
from bundler.errors import BundleError, ExpiredError, TrustError, UsageError

from conftest import Keys, build_bundle, make_key


def file_sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_extract_puts_every_file_in_place(tmp_path: Path, bundle: Path, key: Keys) -> None:
    staging = tmp_path / "stage"
    result = read_bundle(str(bundle), TrustPolicy(key.trust()), StagingExtractor(staging))
    src = tmp_path / "src"
    assert result.signers == (key.keyid,)
    # model files: identical bytes to the sources
    for rel in ("config.json", "tokenizer/tokenizer.json", "model.safetensors", "empty.txt"):
        assert (staging / "models/tiny" / rel).read_bytes() == (src / "weights" / rel).read_bytes()
    # every file the index lists exists with its sha256; nothing else under the payload roots
    listed = {f.path: f.sha256 for f in result.index.files}
    on_disk = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    extra = {
        "airgap/index.json",
        "airgap/SHA256SUMS",
        f"airgap/signatures/{key.keyid}.sig",
        "images/index.json",
        "images/oci-layout",
    }
    assert on_disk == set(listed) | extra
    for path, sha in listed.items():
        assert file_sha(staging / path) == sha
    # blobs are content addressed: the name is the sha256
    for path in listed:
        if path.startswith("images/blobs/sha256/"):
            assert file_sha(staging / path) == path.rsplit("/", 1)[1]


def test_shared_layer_is_stored_once(bundle: Path) -> None:
    index = read_head(str(bundle)).index
    nginx, vllm = (next(i for i in index.images if i.role == r) for r in ("nginx", "vllm"))
    # both images start with the same busybox layer (uncompressed in nginx, gzip in vllm: so
    # their blobs differ); the nginx layer appears once even though the archive is re-read
    blob_paths = [f.path for f in index.files if f.path.startswith("images/")]
    assert len(blob_paths) == len(set(blob_paths))
    assert len(blob_paths) == len({*nginx.blob_digests, *vllm.blob_digests})


def test_same_inputs_give_identical_bytes(
    tmp_path: Path, demo_manifest: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    build_bundle(demo_manifest, a, key)
    os.utime(tmp_path / "src" / "weights" / "config.json", (1, 1))  # mtimes do not matter
    build_bundle(demo_manifest, b, key)
    assert file_sha(a) == file_sha(b)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000001")
    c = tmp_path / "c.tar"
    build_bundle(demo_manifest, c, key)
    assert file_sha(a) != file_sha(c)


def test_split_parts_round_trip_and_name_a_missing_part(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    out = tmp_path / "s.tar"
    single = tmp_path / "single.tar"
    build_bundle(demo_manifest, single, key)
    result = build_bundle(demo_manifest, out, key, split_size=64 * 1024)
    parts = sorted(tmp_path.glob("s.tar.part-*"))
    assert len(parts) == 6  # 350 KiB in 64 KiB parts
    assert result.outputs[-1] == parts_list_path(out)
    # the parts, concatenated, are the single-file bundle byte for byte
    assert hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest() == file_sha(single)
    doc = json.loads(parts_list_path(out).read_text())
    assert [p["sha256"] for p in doc["signed"]["parts"]] == [file_sha(p) for p in parts]
    sums = (tmp_path / "s.tar.parts.sha256").read_text().splitlines()
    assert sums[0] == f"{file_sha(parts[0])}  s.tar.part-000"
    for spec in (str(parts[0]), str(out)):
        r = read_bundle(spec, TrustPolicy(key.trust()))
        assert r.bytes_read == sum(p.stat().st_size for p in parts)

    parts[3].rename(tmp_path / "moved")
    with pytest.raises(BundleError) as e:
        read_bundle(str(parts[0]), TrustPolicy(key.trust()))
    assert "s.tar.part-003" in str(e.value) and "missing" in str(e.value)


def test_damage_in_a_part_names_that_part(tmp_path: Path, demo_manifest: Path, key: Keys) -> None:
    out = tmp_path / "s.tar"
    build_bundle(demo_manifest, out, key, split_size=64 * 1024)
    part = tmp_path / "s.tar.part-004"
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        read_bundle(str(out), TrustPolicy(key.trust()))
    assert e.value.part == "s.tar.part-004"
    assert e.value.member is not None


def test_rebuilt_part_can_replace_a_damaged_one(
    tmp_path: Path, demo_manifest: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    build_bundle(demo_manifest, a / "s.tar", key, split_size=64 * 1024)
    build_bundle(demo_manifest, b / "s.tar", key, split_size=64 * 1024)
    policy = TrustPolicy(key.trust(), now=datetime(2026, 9, 1, tzinfo=UTC))
    damaged = bytearray((a / "s.tar.part-002").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # same length: only reading the bytes can find it
    (a / "s.tar.part-002").write_bytes(bytes(damaged))
    with pytest.raises(BundleError) as e:
        read_bundle(str(a / "s.tar"), policy)
    assert e.value.part == "s.tar.part-002"
    (a / "s.tar.part-002").write_bytes((b / "s.tar.part-002").read_bytes())
    result = read_bundle(str(a / "s.tar"), policy)
    assert result.signers == (key.keyid,)


def test_trust_threshold_and_cosigning(tmp_path: Path, bundle: Path, key: Keys) -> None:
    second = make_key(tmp_path / "keys2", "second")
    stranger = make_key(tmp_path / "keys3", "stranger")
    both = load_trust([key.public, second.public], None)
    with pytest.raises(TrustError, match="1 valid signature"):
        read_bundle(str(bundle), TrustPolicy(both, threshold=2))
    written = cosign(*read_unverified(str(bundle)), load_signing_key(second.private))
    assert written == [bundle.with_name(f"demo.tar.{second.keyid}.sig")]
    detached = read_detached(find_detached_signatures(locate_bundle(str(bundle))))
    r = read_bundle(str(bundle), TrustPolicy(both, threshold=2), detached=detached)
    assert set(r.signers) == {key.keyid, second.keyid}
    # a key we do not trust proves nothing, whoever it is
    with pytest.raises(TrustError, match="untrusted"):
        read_bundle(str(bundle), TrustPolicy(stranger.trust()))
    # a forged detached signature claiming the second key does not count
    forged = bundle.with_name(f"demo.tar.{second.keyid}.sig")
    forged.write_bytes(bytes(64))
    detached = read_detached(find_detached_signatures(locate_bundle(str(bundle))))
    with pytest.raises(TrustError, match="BAD signature"):
        read_bundle(str(bundle), TrustPolicy(both, threshold=2), detached=detached)


def test_expired_bundle_is_refused(bundle: Path, key: Keys) -> None:
    later = datetime.now(UTC) + timedelta(days=181)
    with pytest.raises(ExpiredError):
        read_bundle(str(bundle), TrustPolicy(key.trust(), now=later))


def test_rollback_hook_runs_before_payload(tmp_path: Path, bundle: Path, key: Keys) -> None:
    from bundler.errors import RollbackError
    from bundler.install.state import VersionRegistry

    reg = VersionRegistry(tmp_path / "state")
    reg.record("demo", 5)
    staging = tmp_path / "stage"

    def check(result):  # type: ignore[no-untyped-def]
        reg.check(result.index.name, result.index.version)

    with pytest.raises(RollbackError):
        read_bundle(
            str(bundle), TrustPolicy(key.trust(), before_payload=check), StagingExtractor(staging)
        )
    assert not staging.exists()


def test_existing_staging_dir_is_not_reused(tmp_path: Path, bundle: Path, key: Keys) -> None:
    staging = tmp_path / "stage"
    staging.mkdir()
    (staging / "keep").write_text("x")
    with pytest.raises(UsageError):
        read_bundle(str(bundle), TrustPolicy(key.trust()), StagingExtractor(staging))
    assert (staging / "keep").read_text() == "x"


def test_big_multichunk_file_round_trips(tmp_path: Path, key: Keys) -> None:
    from devkit.demo_data import make_demo_sources

    src = tmp_path / "big"
    src.mkdir()
    manifest = make_demo_sources(src, big=20 * 1024 * 1024)
    out = tmp_path / "big.tar"
    result = build_bundle(manifest, out, key, chunk_size=1024 * 1024)
    entry = next(f for f in result.index.files if f.path.endswith("model-big.safetensors"))
    assert len(entry.chunks) == 20
    assert entry.sha256 == file_sha(src / "weights" / "model-big.safetensors")
    staging = tmp_path / "stage"
    read_bundle(str(out), TrustPolicy(key.trust()), StagingExtractor(staging), workers=3)
    assert file_sha(staging / entry.path) == entry.sha256


def test_hash_cache_reuses_digests_but_never_hides_a_change(
    tmp_path: Path, demo_manifest: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    import stat

    from bundler.build import BuildOptions, build
    from bundler.manifest import load_manifest

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    cache = tmp_path / "cache"
    m = load_manifest(demo_manifest)
    signer = (load_signing_key(key.private),)

    def run(name: str) -> Path:
        out = tmp_path / name
        build(m, BuildOptions(output=out, keys=signer, chunk_size=65536, cache_dir=cache))
        return out

    first, second = run("a.tar"), run("b.tar")
    assert file_sha(first) == file_sha(second)
    db = cache / "hashes.sqlite3"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    rows = sqlite3.connect(db).execute("SELECT count(*) FROM digests").fetchone()[0]
    assert rows >= 5  # model files and elastic files are remembered

    # same size, new content: the cache must not be trusted
    weights = tmp_path / "src" / "weights" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    third = run("c.tar")
    r = read_bundle(str(third), TrustPolicy(key.trust(), now=datetime(2026, 9, 1, tzinfo=UTC)))
    entry = next(f for f in r.index.files if f.path == "models/tiny/model.safetensors")
    assert entry.sha256 == hashlib.sha256(bytes(data)).hexdigest()

    # a poisoned cache cannot make a wrong bundle verify: it can only make one that fails
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "UPDATE digests SET sha256=?, chunks=? WHERE path LIKE '%config.json'",
            ("0" * 64, "0" * 64),
        )
    fourth = run("d.tar")
    with pytest.raises(BundleError, match="models/tiny/config.json"):
        read_bundle(str(fourth), TrustPolicy(key.trust(), now=datetime(2026, 9, 1, tzinfo=UTC)))
