from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bundler.bundle.signing import generate_keypair, keyid_of, load_signing_key, load_trust
from bundler.errors import KeyFileError, RollbackError, UsageError
from bundler.install.state import VersionRegistry


def test_keygen_writes_0600_private_and_public_and_refuses_overwrite(tmp_path: Path) -> None:
    keyid = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = load_signing_key(tmp_path / "k")
    assert key.keyid == keyid == keyid_of(key.key.public_key())
    assert list(load_trust([tmp_path / "k.pub"], None)) == [keyid]
    with pytest.raises(UsageError, match="already exists"):
        generate_keypair(tmp_path / "k")


def test_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k", b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "k").read_bytes()
    with pytest.raises(KeyFileError, match="encrypted"):
        load_signing_key(tmp_path / "k")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_signing_key(tmp_path / "k", b"wrong")
    assert load_signing_key(tmp_path / "k", b"correct horse").keyid


def test_wrong_key_files_are_named(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_trust([tmp_path / "k"], None)  # private key given as trusted key
    with pytest.raises(KeyFileError, match="k.pub: not a PEM private key"):
        load_signing_key(tmp_path / "k.pub")
    with pytest.raises(UsageError, match="no trusted key"):
        load_trust([], None)


def test_trust_dir_collects_pub_files(tmp_path: Path) -> None:
    d = tmp_path / "trust"
    d.mkdir()
    ids = {generate_keypair(d / "a"), generate_keypair(d / "b")}
    assert set(load_trust([], d)) == ids


def test_rollback_protection(tmp_path: Path) -> None:
    reg = VersionRegistry(tmp_path / "state")
    reg.check("demo", 1)
    reg.record("demo", 3)
    reg.check("demo", 3)
    reg.check("demo", 4)
    with pytest.raises(RollbackError, match="v2 is older than the installed v3"):
        reg.check("demo", 2)
    reg.check("demo", 2, allow_downgrade=True)
    reg.record("demo", 2)
    assert reg.installed("demo") == 3
    reg.check("other", 1)


def test_install_lock_admits_one_run_at_a_time(tmp_path: Path) -> None:
    import os

    from bundler.errors import InstallError
    from bundler.install.state import InstallLock

    holder = InstallLock(tmp_path / "opt").__enter__()
    try:
        with (
            pytest.raises(InstallError, match=f"holds the lock \\(pid {os.getpid()}\\)"),
            InstallLock(tmp_path / "opt"),
        ):
            pass
    finally:
        holder.__exit__(None, None, None)
    with InstallLock(tmp_path / "opt"):  # released when the holder is done
        pass


def test_receipt_round_trip_is_private(tmp_path: Path) -> None:
    from bundler.errors import InstallError
    from bundler.install.records import EngineSpec, ImageRecord, Release
    from bundler.install.state import ReceiptFile

    r = ReceiptFile.load(tmp_path / "state")
    assert not r.exists and r.receipt.current is None
    release = Release(
        name="demo",
        version=1,
        index_sha256="0" * 64,
        signers=[],
        installed_at="2026-01-01T00:00:00Z",
        path=str(tmp_path / "releases/demo-1"),
        target=EngineSpec(url="unix:///var/run/docker.sock"),
        images=[
            ImageRecord(role="vllm", ref="r:1", id="sha256:a", created_by_us=True),
            ImageRecord(role="nginx", ref="r:2", id="sha256:b", created_by_us=False),
        ],
    )
    r.save(r.receipt.with_release("demo-1", release).model_copy(update={"current": "demo-1"}))
    assert stat.S_IMODE(r.path.stat().st_mode) == 0o600
    again = ReceiptFile.load(tmp_path / "state").receipt
    assert again.current == "demo-1"
    assert again.our_images() == {"sha256:a"}
    assert again.images_in_use() == {"sha256:a", "sha256:b"}
    r.path.write_text("{not json")
    with pytest.raises(InstallError, match="unreadable receipt"):
        ReceiptFile.load(tmp_path / "state")
