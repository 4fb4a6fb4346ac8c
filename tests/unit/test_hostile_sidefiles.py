"""Files beside a bundle are read bounded, once, and only when they are regular files.

Detached ``*.sig`` files, ``*.parts.json`` and key files are read before anything about
them is proven: a FIFO, a device behind a link, a sparse giant or a file swapped between
two reads must each be refused by name, at once, at no memory cost. The index member is
bounded by its tar header before it is read, and by its number of JSON values before it
is parsed. ``sign`` signs exactly the bytes it verified and re-hashes every part first.
"""

from __future__ import annotations

import os
import resource
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundler import canonical
from bundler.boundedio import (
    MAX_INDEX_SIZE,
    MAX_INDEX_VALUES,
    MAX_PARTS,
    MAX_PARTS_LIST_SIZE,
    MAX_SIGNATURE_FILE,
    MAX_SIGNATURES,
    RefusedFile,
    StallGuard,
    read_bounded,
)
from bundler.bundle import tarfmt
from bundler.bundle.cosign import cosign, read_unverified
from bundler.bundle.detached import collect_signatures
from bundler.bundle.index import parse_index
from bundler.bundle.parts import locate_bundle, parts_list_path
from bundler.bundle.plan import Payload, check_limits
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle, read_head
from bundler.bundle.signing import check_signatures, load_signing_key, load_trusted_key
from bundler.errors import BundleError, InputStalledError, KeyFileError, UsageError
from bundler.hashing import FileRange

from conftest import Keys, build_bundle, make_key


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it takes longer."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # handed to the test below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def split(tmp_path: Path, demo_manifest: Path, key: Keys) -> Path:
    out = tmp_path / "out" / "demo.tar"
    out.parent.mkdir()
    build_bundle(demo_manifest, out, key, split_size=64 * 1024)
    return out


# -- the bounded reader itself ----------------------------------------------------------------


def _plant(kind: str, path: Path, tmp_path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "link to a regular file":
        (tmp_path / "real").write_bytes(b"x" * 64)
        path.symlink_to(tmp_path / "real")
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("fifo", "is a FIFO"),
        ("link to /dev/zero", "is a symbolic link (to /dev/zero)"),
        ("link to a regular file", "is a symbolic link"),
        ("directory", "is a directory"),
        ("socket", "is a socket"),
    ],
)
def test_only_regular_files_are_read(tmp_path: Path, kind: str, says: str) -> None:
    path = tmp_path / "x.sig"
    _plant(kind, path, tmp_path)
    with pytest.raises(RefusedFile) as e:
        within(10, lambda: read_bounded(path, MAX_SIGNATURE_FILE))
    assert says in str(e.value.strerror)
    assert e.value.filename == str(path)


def test_a_device_is_refused_even_where_links_are_followed(tmp_path: Path) -> None:
    link = tmp_path / "k.pub"
    link.symlink_to("/dev/zero")
    with pytest.raises(RefusedFile, match="character device"):
        within(10, lambda: read_bounded(link, 100, follow_symlinks=True))
    real = tmp_path / "real.pub"
    real.write_bytes(b"key")
    (tmp_path / "ok.pub").symlink_to(real)
    assert read_bounded(tmp_path / "ok.pub", 100, follow_symlinks=True) == b"key"


def test_size_is_refused_before_reading_and_growth_while_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = tmp_path / "exact"
    exact.write_bytes(b"s" * 100)
    assert read_bounded(exact, 100) == b"s" * 100
    exact.write_bytes(b"s" * 101)
    with pytest.raises(RefusedFile, match="101 bytes, more than the 100"):
        read_bounded(exact, 100)
    # An 800 MB sparse file: refused by its size alone, nothing of it is read.
    sparse = tmp_path / "sparse.sig"
    with open(sparse, "wb") as f:
        f.truncate(800 * 1024 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(RefusedFile, match="838860800 bytes"):
        read_bounded(sparse, MAX_SIGNATURE_FILE)
    assert time.monotonic() - started < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB
    # A file that grows after fstat: at most limit + 1 bytes are read, then it is refused.
    real_fstat = os.fstat

    class Shrunk:
        def __init__(self, st: os.stat_result) -> None:
            self.st_mode, self.st_size = st.st_mode, 10

    monkeypatch.setattr("bundler.boundedio.os.fstat", lambda fd: Shrunk(real_fstat(fd)))
    with pytest.raises(RefusedFile, match="grew past the 100 bytes"):
        read_bounded(exact, 100)


# -- detached signatures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("fifo", "is a FIFO"),
        ("link to /dev/zero", "symbolic link (to /dev/zero)"),
        ("sparse", "838860800 bytes, more than the 4096"),
    ],
)
def test_hostile_detached_signature_is_refused_by_name(
    tmp_path: Path, bundle: Path, key: Keys, kind: str, says: str
) -> None:
    sig = bundle.with_name(f"{bundle.name}.{key.keyid}.sig")
    if kind == "sparse":
        with open(sig, "wb") as f:
            f.truncate(800 * 1024 * 1024)
    else:
        _plant(kind, sig, tmp_path)
    with pytest.raises(BundleError) as e:
        within(10, lambda: collect_signatures(locate_bundle(str(bundle))))
    assert str(sig) in str(e.value) and says in str(e.value)
    assert e.value.exit_code == 3


def test_too_many_detached_signatures(bundle: Path) -> None:
    for i in range(MAX_SIGNATURES + 1):
        bundle.with_name(f"{bundle.name}.{i:064x}.sig").write_bytes(bytes(64))
    with pytest.raises(BundleError, match=f"{MAX_SIGNATURES + 1} detached signatures"):
        collect_signatures(locate_bundle(str(bundle)))


def test_signature_option_fifo_is_refused(tmp_path: Path, bundle: Path, key: Keys) -> None:
    named = tmp_path / f"x.{key.keyid}.sig"
    os.mkfifo(named)
    loc = locate_bundle("-")
    with pytest.raises(BundleError, match="is a FIFO"):
        within(10, lambda: collect_signatures(loc, [named]))


def test_key_file_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "release.pub"
    os.mkfifo(fifo)
    with pytest.raises(KeyFileError, match="is a FIFO"):
        within(10, lambda: load_trusted_key(fifo))


# -- the parts list ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "says"),
    [("fifo", "is a FIFO"), ("link to /dev/zero", "symbolic link"), ("sparse", "more than the")],
)
def test_hostile_parts_list_is_refused_by_name(
    tmp_path: Path, split: Path, kind: str, says: str
) -> None:
    plist = parts_list_path(split)
    plist.unlink()
    if kind == "sparse":
        with open(plist, "wb") as f:
            f.truncate(MAX_PARTS_LIST_SIZE + 1)
    else:
        _plant(kind, plist, tmp_path)
    with pytest.raises(BundleError) as e:
        within(10, lambda: locate_bundle(str(split)))
    assert str(plist) in str(e.value) and says in str(e.value)


def test_dangling_parts_list_link_is_not_taken_for_no_list(tmp_path: Path, split: Path) -> None:
    plist = parts_list_path(split)
    plist.unlink()
    plist.symlink_to(tmp_path / "gone")
    with pytest.raises(BundleError, match="symbolic link"):
        locate_bundle(str(split))


def test_parts_list_with_too_many_parts(split: Path, key: Keys) -> None:
    signed = {
        "format": "airgap-parts/1",
        "bundle": split.name,
        "name": "demo",
        "version": 1,
        "index_sha256": "0" * 64,
        "total_size": 1,
        "part_size": 1,
        "parts": [
            {"name": f"{split.name}.part-{i:05d}", "size": 1, "sha256": "0" * 64}
            for i in range(MAX_PARTS + 1)
        ],
    }
    signer = load_signing_key(key.private)
    body = canonical.dumps(signed)
    doc = {"signed": signed, "signatures": {signer.keyid: signer.sign(body).hex()}}
    parts_list_path(split).write_bytes(canonical.dumps(doc) + b"\n")
    with pytest.raises(BundleError, match=f"{MAX_PARTS + 1} parts, more than the {MAX_PARTS}"):
        locate_bundle(str(split))


# -- the index member -------------------------------------------------------------------------


def test_index_member_is_bounded_by_its_header(tmp_path: Path) -> None:
    """Refused before a byte is read: the data is not even there."""
    too_big = MAX_INDEX_SIZE + 1
    path = tmp_path / "big.tar"
    path.write_bytes(tarfmt.member_header("airgap/index.json", too_big, 0) + b"{")
    with pytest.raises(BundleError, match=f"index is {too_big} bytes, more than the"):
        read_head(str(path))


def _index(manifest: dict[str, Any]) -> bytes:
    return canonical.dumps(
        {
            "format": "airgap-bundle/1",
            "tool": "evil",
            "name": "demo",
            "version": 1,
            "created": "2026-11-01T00:00:00Z",
            "expires": "2099-01-01T00:00:00Z",
            "chunk_size": 65536,
            "manifest": manifest,
            "lock": {},
            "files": [],
            "images": [],
        }
    )


def test_index_values_are_counted_before_parsing() -> None:
    # 3 bytes a value: well under the size limit, ~150 bytes each once parsed.
    crafted = _index({"a": [{}] * MAX_INDEX_VALUES})
    assert len(crafted) < MAX_INDEX_SIZE
    with pytest.raises(BundleError, match="too large to parse"):
        parse_index(crafted)
    fine = _index({"a": [{}] * 1000})
    assert parse_index(fine).manifest["a"] == [{}] * 1000


def test_build_refuses_an_index_or_parts_readers_would_refuse(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="readers accept at most") as e:
        check_limits(_index({"a": [0] * MAX_INDEX_VALUES}), 4096, [], None, 0)
    assert "--chunk-size" in e.value.hint
    big = Payload("models/m/w", FileRange(tmp_path / "never-read", 0, 700 * 1024 * 1024))
    with pytest.raises(UsageError, match=f"parts; readers accept at most {MAX_PARTS}"):
        check_limits(_index({}), 4096, [big], 64 * 1024, 0)
    check_limits(_index({}), 4096, [big], 1024 * 1024, 0)  # 700 parts: fine


# -- sign: one read, verified bytes signed, every part re-hashed ----------------------------


def test_sign_signs_the_verified_bytes_even_if_the_files_change(
    tmp_path: Path, split: Path, key: Keys
) -> None:
    second = make_key(tmp_path / "k2", "second")
    plist = parts_list_path(split)
    genuine = plist.read_bytes()
    result = read_bundle(str(split), TrustPolicy(key.trust()))
    # Between the check and the signature, the parts list is replaced by a forged one
    # that is otherwise valid (its own signatures, its own canonical form).
    doc = canonical.loads(genuine.rstrip(b"\n"))
    doc["signed"]["parts"][1]["sha256"] = "f" * 64
    plist.write_bytes(canonical.dumps(doc) + b"\n")
    cosign(result.location, result.index_bytes, load_signing_key(second.private))
    after = canonical.loads(plist.read_bytes().rstrip(b"\n"))
    assert after["signed"] == canonical.loads(genuine.rstrip(b"\n"))["signed"]
    body = canonical.dumps(after["signed"])
    sigs = [(k, bytes.fromhex(v)) for k, v in after["signatures"].items()]
    check = check_signatures(body, sigs, {**key.trust(), **second.trust()})
    assert set(check.valid) == {key.keyid, second.keyid}
    index_sig = split.with_name(f"{split.name}.{second.keyid}.sig").read_bytes()
    check = check_signatures(result.index_bytes, [(second.keyid, index_sig)], second.trust())
    assert check.valid == (second.keyid,)


@pytest.mark.parametrize("verified", [True, False])
def test_sign_rehashes_every_part_and_names_the_damaged_one(
    tmp_path: Path, split: Path, key: Keys, verified: bool
) -> None:
    second = make_key(tmp_path / "k2", "second")
    plist = parts_list_path(split)
    before = plist.read_bytes()
    if verified:
        result = read_bundle(str(split), TrustPolicy(key.trust()))
        loc, index_bytes = result.location, result.index_bytes
    else:
        loc, index_bytes = read_unverified(str(split))
    part = split.with_name(f"{split.name}.part-002")
    data = bytearray(part.read_bytes())
    data[100] ^= 1  # same size: only hashing finds it
    part.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        cosign(loc, index_bytes, load_signing_key(second.private))
    assert e.value.part == part.name and e.value.exit_code == 3
    assert plist.read_bytes() == before
    assert not split.with_name(f"{split.name}.{second.keyid}.sig").exists()


# -- a stalled stream -------------------------------------------------------------------------


def test_stall_guard_waits_without_spinning_and_names_the_option() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"0123456789")
        guard = StallGuard(r, 0.5)
        buf = bytearray(100)
        assert guard.readinto(memoryview(buf)) == 10
        cpu, started = time.process_time(), time.monotonic()
        with pytest.raises(InputStalledError) as e:
            guard.readinto(memoryview(buf))
        assert 0.4 < time.monotonic() - started < 5
        assert time.process_time() - cpu < 0.2  # poll() sleeps; a busy loop would burn 0.5 s
        assert "--stall-timeout" in str(e.value) + e.value.hint
        assert e.value.exit_code == 1
        os.close(w)
        w = -1
        assert guard.readinto(memoryview(buf)) == 0  # the writer closed: end of stream
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_stall_guard_gives_a_stream_that_has_not_started_its_start_timeout() -> None:
    r, w = os.pipe()
    try:
        guard = StallGuard(r, 0.2, start_timeout=30)
        buf = bytearray(100)
        writer = threading.Timer(1.0, lambda: os.write(w, b"late"))
        writer.start()
        started = time.monotonic()
        assert guard.readinto(memoryview(buf)) == 4  # 1 s before the first byte: waited for it
        assert 0.8 < time.monotonic() - started < 10
        with pytest.raises(InputStalledError) as e:  # once started, the stall timeout rules
            guard.readinto(memoryview(buf))
        assert "--stall-timeout" in str(e.value) and "0.2 s" in str(e.value)
        # no first byte within the start timeout names that option, also when it is the
        # shorter of the two (it is not raised to the stall timeout)
        quiet = StallGuard(r, 30, start_timeout=0.3)
        with pytest.raises(InputStalledError) as e:
            quiet.readinto(memoryview(buf))
        assert "first 0.3 s" in str(e.value) and "--start-timeout" in str(e.value) + e.value.hint
        writer.join()
    finally:
        os.close(r)
        os.close(w)


def test_fat32_split_size_round_trips_with_odd_part_sizes(
    tmp_path: Path, demo_manifest: Path, key: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    from bundler.cli.build import FAT32_MAX_FILE, split_size_of

    assert split_size_of("fat32") == FAT32_MAX_FILE == 4 * 1024**3 - 1
    assert split_size_of("FAT32") == FAT32_MAX_FILE
    assert split_size_of("4095M") == 4095 * 1024**2
    assert capsys.readouterr().err == ""
    assert split_size_of("4G") == 4 * 1024**3
    err = capsys.readouterr().err
    assert err.startswith("warning: --split-size 4G") and "fat32" in err
    # A split size that is not a multiple of anything still makes a bundle that verifies.
    out = tmp_path / "odd.tar"
    build_bundle(demo_manifest, out, key, split_size=64 * 1024 + 1)
    sizes = {p.stat().st_size for p in tmp_path.glob("odd.tar.part-*")}
    assert 64 * 1024 + 1 in sizes
    assert read_bundle(str(out), TrustPolicy(key.trust())).signers == (key.keyid,)


def test_parts_are_opened_only_as_regular_files(split: Path, key: Keys) -> None:
    loc = locate_bundle(str(split))
    part = split.with_name(f"{split.name}.part-001")
    part.unlink()
    os.mkfifo(part)  # swapped after the parts were found and measured
    assert stat.S_ISFIFO(part.lstat().st_mode)
    with pytest.raises(BundleError, match="part-001"):
        within(20, lambda: read_bundle(loc, TrustPolicy(key.trust())))
