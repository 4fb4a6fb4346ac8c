"""``airgap build -o -`` as an operator pipes it: the same bytes as the file build, refused
to a terminal or with ``--split-size``, and one clear error when the reader goes away."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Keys, build_bundle

pytestmark = pytest.mark.integration


def _build_cmd(manifest: Path, key: Keys, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bundler",
        "build",
        str(manifest),
        "-o",
        "-",
        "--key",
        str(key.private),
        "--chunk-size",
        "64K",
        *extra,
    ]


def test_stream_is_byte_identical_to_the_file_build_and_verifies_from_a_pipe(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    (tmp_path / "out").mkdir()
    build_bundle(demo_manifest, tmp_path / "out" / "demo.tar", key)
    # through a pipe (sendfile into a pipe), read by `airgap verify -`
    build = subprocess.Popen(
        _build_cmd(demo_manifest, key), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert build.stdout is not None
    verify = subprocess.run(
        [sys.executable, "-m", "bundler", "verify", "-", "--trusted-key", str(key.public)],
        stdin=build.stdout,
        capture_output=True,
        timeout=300,
        check=False,
    )
    build.stdout.close()
    err = build.stderr.read().decode() if build.stderr else ""
    assert build.wait(300) == 0, err
    assert verify.returncode == 0, verify.stderr.decode()
    assert verify.stdout.decode().startswith("OK demo v1")
    assert "built demo v1" in err  # the summary goes to stderr: stdout is the bundle
    # redirected to a file: the same bytes as the file build
    with open(tmp_path / "stream.tar", "wb") as f:
        r = subprocess.run(
            _build_cmd(demo_manifest, key), stdout=f, capture_output=False, check=False
        )
    assert r.returncode == 0
    assert (tmp_path / "stream.tar").read_bytes() == (tmp_path / "out" / "demo.tar").read_bytes()


def test_stream_refuses_a_terminal_and_split_size(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    leader, follower = pty.openpty()
    try:
        r = subprocess.run(
            _build_cmd(demo_manifest, key),
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=300,
            check=False,
        )
        os.set_blocking(leader, False)
        try:
            written = os.read(leader, 1 << 16)
        except BlockingIOError:
            written = b""
    finally:
        os.close(leader)
        os.close(follower)
    assert r.returncode == 2, r.stderr.decode()
    assert b"standard output, which is a terminal" in r.stderr
    assert b"Traceback" not in r.stderr and written == b""
    with open(tmp_path / "s.tar", "wb") as f:
        r = subprocess.run(
            _build_cmd(demo_manifest, key, "--split-size", "1M"),
            stdout=f,
            stderr=subprocess.PIPE,
            check=False,
        )
    assert r.returncode == 2 and b"--split-size cannot be used with -o -" in r.stderr
    assert (tmp_path / "s.tar").stat().st_size == 0


def test_stream_whose_reader_goes_away_is_one_clear_error(demo_manifest: Path, key: Keys) -> None:
    build = subprocess.Popen(
        _build_cmd(demo_manifest, key), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert build.stdout is not None and build.stderr is not None
    build.stdout.read(1000)
    build.stdout.close()  # the reader is gone after 1000 bytes
    err = build.stderr.read().decode()
    assert build.wait(300) == 1, err
    assert "standard output was closed by the program reading the bundle" in err
    assert "hint: " in err and "Traceback" not in err
