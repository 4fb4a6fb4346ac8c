"""``airgap build -o -`` as an operator pipes it: the same bytes as the file build, refused
to a terminal or with ``--split-size``, and one clear error when the reader goes away."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundler.names import image_tag
from devkit import services
from devkit.demo_data import make_demo_sources

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


# -- found by review: closed or odd standard streams, early readers, Ctrl-C, bad timeouts ---------


def _big_manifest(tmp_path: Path, gib: int) -> Path:
    """The demo plus a sparse weight file of ``gib`` GiB: seconds to minutes of hashing."""
    src = tmp_path / "big"
    src.mkdir()
    manifest = make_demo_sources(src)
    extra = src / "weights" / "original" / "consolidated.00.pth"
    extra.parent.mkdir()
    with open(extra, "wb") as f:
        f.truncate(gib << 30)
    return manifest


def test_closed_standard_streams_are_usage_errors(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    shell = f"exec {shlex.join(_build_cmd(demo_manifest, key))} >&-"
    r = subprocess.run(["sh", "-c", shell], capture_output=True, check=False, timeout=300)
    assert r.returncode == 2, r.stderr.decode()
    assert b"standard output, which is closed" in r.stderr and b"Traceback" not in r.stderr
    for cmd in (["verify", "-", "--trusted-key", str(key.public)], ["inspect", "-"]):
        shell = f"exec {shlex.join([sys.executable, '-m', 'bundler', *cmd])} <&-"
        r = subprocess.run(["sh", "-c", shell], capture_output=True, check=False, timeout=60)
        assert r.returncode == 2, r.stderr.decode()
        assert b"standard input, which is closed" in r.stderr and b"Traceback" not in r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "1e308"])
@pytest.mark.parametrize("option", ["--start-timeout", "--stall-timeout"])
def test_timeouts_that_are_not_a_number_of_seconds_are_usage_errors(
    key: Keys, option: str, value: str
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bundler", "verify", "-", "--trusted-key", str(key.public),
         option, value],
        stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr.decode()
    assert f"Invalid value for '{option}'".encode() in r.stderr and b"Traceback" not in r.stderr


def test_a_full_disk_behind_stdout_is_named_and_an_early_reader_is_counted(
    tmp_path: Path, key: Keys
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    manifest = make_demo_sources(src, model_bytes=2_000_000)
    with open("/dev/full", "wb") as full:  # every write: ENOSPC
        r = subprocess.run(
            _build_cmd(manifest, key), stdout=full, stderr=subprocess.PIPE, check=False
        )
    assert r.returncode == 1, r.stderr.decode()
    assert b"error: standard output: No space left on device" in r.stderr
    shell = f"{shlex.join(_build_cmd(manifest, key))} | head -c 600000 > /dev/null"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, check=False)
    err = r.stderr.decode()
    said = re.search(r"closed by the program reading the bundle after (\d+) bytes", err)
    assert said, err
    assert int(said[1]) >= 600000, err  # what head took, and counted mid-file


def test_a_reader_gone_while_hashing_ends_the_build_before_the_first_byte(
    tmp_path: Path, key: Keys
) -> None:
    manifest = _big_manifest(tmp_path, 64)  # minutes of hashing on two cores
    r, w = os.pipe()
    os.close(r)  # the reader went away before the build sent anything
    build = subprocess.Popen(
        [*_build_cmd(manifest, key), "--no-hash-cache", "--chunk-size", "64M"],
        stdout=w,
        stderr=subprocess.PIPE,
    )
    os.close(w)
    assert build.stderr is not None
    err = build.stderr.read().decode()
    assert build.wait(120) == 1, err  # not after hashing 64 GiB twice
    assert "closed by the program reading the bundle before the first byte" in err, err
    assert "while every source was being hashed" in err and "Traceback" not in err


def test_ctrl_c_while_hashing_stops_the_stream_build_at_once(tmp_path: Path, key: Keys) -> None:
    manifest = _big_manifest(tmp_path, 64)
    with open(tmp_path / "out.tar", "wb") as out:
        build = subprocess.Popen(
            [*_build_cmd(manifest, key), "--no-hash-cache", "--chunk-size", "64M"],
            stdout=out,
            stderr=subprocess.PIPE,
        )
        time.sleep(3)  # hashing by now
        assert build.poll() is None
        build.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert build.wait(60) == 130  # hashing 64 GiB twice would take minutes here
        stopped = time.monotonic() - started
    assert stopped < 30, stopped
    assert (tmp_path / "out.tar").stat().st_size == 0  # nothing sent


def test_a_non_blocking_stdout_still_gets_the_whole_bundle(tmp_path: Path, key: Keys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    manifest = make_demo_sources(src, model_bytes=2_000_000)
    r, w = os.pipe()
    os.set_blocking(w, False)  # as some parents (Node, CI runners) hand stdout over
    build = subprocess.Popen(_build_cmd(manifest, key), stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    time.sleep(2)  # the 64 KiB pipe is full: the build meets EAGAIN and must wait
    verify = subprocess.run(
        [sys.executable, "-m", "bundler", "verify", "-", "--trusted-key", str(key.public)],
        stdin=r, capture_output=True, check=False, timeout=300,
    )  # fmt: skip
    os.close(r)
    assert build.stderr is not None
    err = build.stderr.read().decode()
    assert build.wait(60) == 0, err
    assert verify.returncode == 0, verify.stderr.decode()


def test_stream_piped_into_install_loads_the_release_and_images(
    tmp_path: Path, demo_manifest: Path, key: Keys, docker_engine: services.Service
) -> None:
    """`airgap build -o - | airgap install -`: the operator's no-disk transfer, end to end
    into a real Docker engine (files byte-identical to the sources, images by signed ID)."""
    from test_install import docker_ids, inspect_id, remove_images

    before = set(docker_ids(docker_engine))
    prefix = tmp_path / "opt"
    build = subprocess.Popen(
        _build_cmd(demo_manifest, key), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert build.stdout is not None and build.stderr is not None
    try:
        install = subprocess.run(
            [sys.executable, "-m", "bundler", "install", "-", "--trusted-key", str(key.public),
             "--prefix", str(prefix), "--no-gpu", "--runtime-url", docker_engine.url,
             "--no-serve", "--json"],
            stdin=build.stdout, capture_output=True, check=False, timeout=600,
        )  # fmt: skip
        build.stdout.close()
        err = build.stderr.read().decode()
        assert build.wait(60) == 0, err
        assert install.returncode == 0, install.stderr.decode()
        assert json.loads(install.stdout)["status"] == "installed"
        release = prefix / "releases" / "demo-1"
        src = demo_manifest.parent / "weights" / "model.safetensors"
        assert (release / "models/tiny/model.safetensors").read_bytes() == src.read_bytes()
        receipt = json.loads((prefix / "state/receipt.json").read_text())
        images = receipt["releases"]["demo-1"]["images"]
        tags = {
            i["role"]: inspect_id(docker_engine, image_tag("demo", 1, i["role"])) for i in images
        }
        assert images and tags == {i["role"]: i["id"] for i in images}
    finally:
        remove_images(docker_engine, sorted(set(docker_ids(docker_engine)) - before))
