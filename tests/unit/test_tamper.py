"""Every byte of a bundle is covered: flips anywhere, truncation anywhere, are refused."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from bundler.bundle.extract import StagingExtractor
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.errors import BundleError, VerificationError

from conftest import Keys


def flip_positions(bundle: Path) -> dict[str, int]:
    """Named byte positions over index, signatures, SHA256SUMS, headers, payload, padding, end."""
    positions: dict[str, int] = {}
    size = bundle.stat().st_size
    with tarfile.open(bundle) as tf:
        members = tf.getmembers()
    for m in members:
        ustar = m.offset_data - 512  # the ustar block (after any pax record)
        positions[f"{m.name}: header first byte"] = m.offset
        positions[f"{m.name}: header name field"] = ustar + 5
        positions[f"{m.name}: header size field"] = ustar + 130
        positions[f"{m.name}: header mtime field"] = ustar + 140
        positions[f"{m.name}: header checksum field"] = ustar + 150
        positions[f"{m.name}: header last byte"] = ustar + 511
        if m.size:
            positions[f"{m.name}: first data byte"] = m.offset_data
            positions[f"{m.name}: middle data byte"] = m.offset_data + m.size // 2
            positions[f"{m.name}: last data byte"] = m.offset_data + m.size - 1
        if m.size % 512:
            positions[f"{m.name}: padding"] = m.offset_data + m.size
    positions["end of archive, first byte"] = size - 1024
    positions["end of archive, last byte"] = size - 1
    return positions


def test_one_flipped_byte_anywhere_is_refused(tmp_path: Path, bundle: Path, key: Keys) -> None:
    original = bundle.read_bytes()
    positions = flip_positions(bundle)
    assert len(positions) >= 50
    kinds = {name.split(":")[0] for name in positions}
    assert {"airgap/index.json", "airgap/SHA256SUMS"} <= kinds
    assert any(k.startswith("airgap/signatures/") for k in kinds)
    assert any(k.startswith("models/") for k in kinds)
    assert any(k.startswith("images/") for k in kinds)
    assert any(k.startswith("elastic/") for k in kinds)
    bad = tmp_path / "bad.tar"
    accepted = []
    for i, (name, pos) in enumerate(sorted(positions.items())):
        data = bytearray(original)
        data[pos] ^= 0xFF
        bad.write_bytes(bytes(data))
        staging = tmp_path / f"stage-{i}"
        try:
            read_bundle(str(bad), TrustPolicy(key.trust()), StagingExtractor(staging))
        except (BundleError, VerificationError):
            assert not staging.exists(), f"{name}: staging left behind"
        else:
            accepted.append(name)
    assert accepted == []


def test_payload_damage_is_named_precisely(tmp_path: Path, bundle: Path, key: Keys) -> None:
    with tarfile.open(bundle) as tf:
        m = tf.getmember("models/tiny/model.safetensors")
    data = bytearray(bundle.read_bytes())
    data[m.offset_data + 200_000] ^= 0x01  # a single bit, in chunk 3 (64 KiB chunks)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        read_bundle(str(bad), TrustPolicy(key.trust()))
    assert e.value.member == "models/tiny/model.safetensors"
    assert "chunk 3" in str(e.value)
    assert e.value.offset == m.offset_data + 3 * 65536


@pytest.mark.parametrize(
    "where",
    [
        "start",
        "in header",
        "in index",
        "after signatures",
        "mid payload",
        "before end marker",
        "last byte",
    ],
)
def test_truncation_is_refused(tmp_path: Path, bundle: Path, key: Keys, where: str) -> None:
    original = bundle.read_bytes()
    with tarfile.open(bundle) as tf:
        members = {m.name: m for m in tf.getmembers()}
    sums = members["airgap/SHA256SUMS"]
    model = members["models/tiny/model.safetensors"]
    cut = {
        "start": 0,
        "in header": 100,
        "in index": members["airgap/index.json"].offset_data + 50,
        "after signatures": sums.offset,
        "mid payload": model.offset_data + model.size // 2,
        "before end marker": len(original) - 1024,
        "last byte": len(original) - 1,
    }[where]
    bad = tmp_path / "cut.tar"
    bad.write_bytes(original[:cut])
    staging = tmp_path / "stage"
    with pytest.raises(BundleError, match="ends early|missing|ends where|damaged at its start"):
        read_bundle(str(bad), TrustPolicy(key.trust()), StagingExtractor(staging))
    assert not staging.exists()


def test_appended_data_is_refused(tmp_path: Path, bundle: Path, key: Keys) -> None:
    bad = tmp_path / "long.tar"
    bad.write_bytes(bundle.read_bytes() + b"\0" * 512)
    with pytest.raises(BundleError, match="trailing"):
        read_bundle(str(bad), TrustPolicy(key.trust()))
    extra = tarfile.TarInfo("models/tiny/extra")
    extra.size = 3
    bad.write_bytes(
        bundle.read_bytes()[:-1024]
        + extra.tobuf(tarfile.PAX_FORMAT)
        + b"abc".ljust(512, b"\0")
        + b"\0" * 1024
    )
    with pytest.raises(BundleError, match="after the last listed member"):
        read_bundle(str(bad), TrustPolicy(key.trust()))
