"""Files written by released code (tests/fixtures/golden, made at a468d8d) stay readable.

Hosts keep receipts, and operators keep bundles and locks, across airgap upgrades: a
change to a reader that no longer accepts them fails here. See the README there.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from bundler.bundle.index import parse_index
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.bundle.signing import load_trust
from bundler.errors import BundleError, ManifestError
from bundler.install.records import EngineSpec, Receipt
from bundler.install.state import ReceiptFile, VersionRegistry
from bundler.lock import load_lock, save_lock

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def receipt(tmp_path: Path, name: str) -> Receipt:
    """The golden receipt read through the typed records (format 1, migrated)."""
    state = tmp_path / "opt" / "state"
    state.mkdir(parents=True)
    shutil.copy(GOLDEN / name, state / "receipt.json")
    loaded = ReceiptFile.load(state)
    assert loaded.exists
    # written again and read back, every value of the old receipt is kept
    before = json.loads((GOLDEN / name).read_text())
    loaded.save()
    after = json.loads(loaded.path.read_text())
    assert after.pop("format") == "airgap-receipt/2" and before.pop("format") == "airgap-receipt/1"
    assert after == before
    return ReceiptFile.load(state).receipt


def test_installed_receipt_loads_with_its_served_release(tmp_path: Path) -> None:
    r = receipt(tmp_path, "receipt-installed.json")
    assert r.current == "demo-1"
    assert list(r.releases) == ["demo-1"]
    assert r.history == ["demo-1"] and r.pending is None
    release = r.releases["demo-1"]
    assert release.name == "demo" and release.version == 1
    assert release.path == "/opt/airgap/releases/demo-1"
    assert release.target == EngineSpec(
        kind="engine",
        runtime="docker",
        url="unix:///var/run/docker.sock",
    )
    serve = release.serve
    assert serve is not None and serve.options is not None
    assert sorted(serve.containers) == ["nginx", "vllm"]
    assert serve.containers["vllm"].name == "airgap-demo-vllm"
    assert serve.options.server_names == ("llm.example.internal",)
    assert serve.options.no_gpu is True
    ids = {i.id for i in release.images}
    assert len(ids) == 2 and r.our_images() == ids == r.images_in_use()
    assert r.our_images(exclude="demo-1") == set()

    state = tmp_path / "opt" / "state"
    shutil.copy(GOLDEN / "versions.json", state / "versions.json")
    versions = VersionRegistry(state)
    assert versions.load() == {"demo": 1}
    versions.check("demo", 1)


def test_rolled_back_receipt_loads_with_both_releases(tmp_path: Path) -> None:
    r = receipt(tmp_path, "receipt-rollback.json")
    assert r.current == "demo-1"
    assert r.history == ["demo-1", "demo-2", "demo-1"]
    assert sorted(r.releases) == ["demo-1", "demo-2"]
    assert r.pending is None
    assert r.releases["demo-2"].version == 2
    # rollback served demo-1 again: its record names the containers it started
    serve = r.releases["demo-1"].serve
    assert serve is not None and sorted(serve.containers) == ["nginx", "vllm"]
    # v2 came with the same images, already loaded by v1: only v1's record owns them
    ours = r.our_images()
    assert len(ours) == 2 and r.our_images(exclude="demo-1") == set()
    assert r.images_in_use(exclude="demo-1") == ours == r.images_in_use(exclude="demo-2")


def test_receipt_of_an_interrupted_run_loads_with_its_pending_record(tmp_path: Path) -> None:
    r = receipt(tmp_path, "receipt-pending.json")
    assert r.current == "demo-1" and list(r.releases) == ["demo-1"]
    pending = r.pending
    assert pending is not None
    assert pending.staging.startswith("/opt/airgap/releases/.staging-demo-2-")
    assert pending.target.kind == "engine"
    (image,) = pending.images
    assert image.role == "vllm" and image.created_by_us is True
    assert image.id not in r.images_in_use()


def test_receipt_reader_refuses_what_is_not_a_receipt(tmp_path: Path) -> None:
    """The check above can fail: a receipt in another format is refused."""
    doc = json.loads((GOLDEN / "receipt-installed.json").read_text())
    doc["format"] = "airgap-receipt/0"
    state = tmp_path / "state"
    state.mkdir()
    (state / "receipt.json").write_text(json.dumps(doc))
    with pytest.raises(Exception, match="not an airgap receipt"):
        ReceiptFile.load(state)


def test_signed_bundle_verifies_with_its_key() -> None:
    trust = load_trust([GOLDEN / "signer.pub"], None)
    result = read_bundle(str(GOLDEN / "bundle.tar"), TrustPolicy(trust, threshold=1))
    assert result.signers == tuple(trust)
    index = result.index
    assert (index.name, index.version, index.chunk_size) == ("golden", 1, 64 * 1024)
    assert sorted(i.role for i in index.images) == ["nginx", "vllm"]
    assert "models/tiny/model.safetensors" in {f.path for f in index.files}
    assert (GOLDEN / "bundle.tar").stat().st_size < 1024 * 1024
    with tarfile.open(GOLDEN / "bundle.tar") as tf:
        raw = tf.extractfile("airgap/index.json").read()  # type: ignore[union-attr]
    assert parse_index(raw) == index


def test_damaged_copy_of_the_golden_bundle_is_refused(tmp_path: Path) -> None:
    """The verification above reads every byte: one changed byte is found."""
    bad = tmp_path / "bundle.tar"
    shutil.copy(GOLDEN / "bundle.tar", bad)
    with tarfile.open(bad) as tf:
        member = tf.getmember("models/tiny/model.safetensors")
    with open(bad, "r+b") as f:
        f.seek(member.offset_data + 70_000)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    trust = load_trust([GOLDEN / "signer.pub"], None)
    with pytest.raises(BundleError, match=r"models/tiny/model\.safetensors"):
        read_bundle(str(bad), TrustPolicy(trust, threshold=1))


def test_lock_loads_and_is_the_one_the_bundle_was_built_from() -> None:
    lock = load_lock(GOLDEN / "golden.lock.json")
    assert lock is not None
    assert lock.name == "golden" and lock.platform == "linux/amd64"
    assert lock.hf_model is not None and lock.hf_model.repo == "golden/tiny"
    assert sorted(lock.images or {}) == ["nginx", "vllm"]
    trust = load_trust([GOLDEN / "signer.pub"], None)
    index = read_bundle(str(GOLDEN / "bundle.tar"), TrustPolicy(trust)).index
    assert index.lock == lock.pins


def test_lock_rewrites_to_the_same_bytes(tmp_path: Path) -> None:
    """A lock read and written again is byte-identical: the typed model loses nothing."""
    lock = load_lock(GOLDEN / "golden.lock.json")
    assert lock is not None
    out = tmp_path / "again.lock.json"
    save_lock(out, lock.pins, name=lock.name, platform=lock.platform)
    assert out.read_bytes() == (GOLDEN / "golden.lock.json").read_bytes()


def test_lock_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    doc = json.loads((GOLDEN / "golden.lock.json").read_text())
    doc["images"]["nginx"]["surprise"] = 1
    bad = tmp_path / "bad.lock.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"invalid lock: images\.nginx\..*surprise"):
        load_lock(bad)
