"""The real `airgap` command against hostile files beside a bundle and a stalled stdin.

Each command runs in its own process group under GNU time (peak RSS) with a deadline, so
a command that hangs or balloons fails the test instead of the machine: no traceback,
the documented exit code, the file named, at once, in little memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundler import canonical
from bundler.bundle import tarfmt
from bundler.bundle.signing import load_signing_key
from devkit import services

from conftest import Keys, build_bundle

pytestmark = pytest.mark.integration

MAX_RSS_MB = 200  # the bound for anything read before the signature check
SPARSE = 800 * 1024 * 1024


@dataclass
class Ran:
    rc: int
    err: str
    seconds: float
    rss_mb: float


def cli(
    tmp: Path,
    *args: str,
    stdin: int | None = None,
    input: bytes | None = None,
    timeout: float = 60,
    max_vm: int | None = 3 * 1024**3,
) -> Ran:
    """``airgap ARGS`` in a new process group, killed whole if it outlives ``timeout``.

    ``max_vm`` caps its address space, so a reader that would swallow /dev/zero stops at
    a MemoryError here rather than taking the machine's memory with it.
    """
    rss = tmp / f"rss-{time.monotonic_ns()}"
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss), sys.executable, "-m", "bundler", *args]

    def limit() -> None:
        if max_vm:
            resource.setrlimit(resource.RLIMIT_AS, (max_vm, max_vm))

    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if input is not None else stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=limit,
        cwd=tmp,  # the airgap on the path, not whatever `-m` would find in the cwd
    )
    try:
        _, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, by its id
        proc.communicate()
        pytest.fail(f"airgap {' '.join(args[:1])} still running after {timeout} s (hangs)")
    seconds = time.monotonic() - started
    rss_kb = int(rss.read_text().split()[-1]) if rss.exists() else 0
    return Ran(proc.returncode, err.decode(errors="replace"), seconds, rss_kb / 1024)


def assert_clean_refusal(ran: Ran, code: int, *words: str) -> None:
    assert "Traceback" not in ran.err, ran.err
    assert ran.rc == code, ran.err
    assert "\nerror: " in "\n" + ran.err, ran.err
    for w in words:
        assert w in ran.err, ran.err


def plant(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse 800 MB":
        with open(path, "wb") as f:
            f.truncate(SPARSE)


SAYS = {
    "fifo": "is a FIFO",
    "link to /dev/zero": "is a symbolic link (to /dev/zero)",
    "sparse 800 MB": f"is {SPARSE} bytes",
}


@pytest.fixture
def split(tmp_path: Path, demo_manifest: Path, key: Keys) -> Path:
    out = tmp_path / "out" / "demo.tar"
    out.parent.mkdir()
    build_bundle(demo_manifest, out, key, split_size=64 * 1024)
    return out


# -- detached signatures, parts lists, --signature --------------------------------------------


@pytest.mark.parametrize("command", ["verify", "install"])
@pytest.mark.parametrize("kind", sorted(SAYS))
def test_hostile_signature_file_is_refused_at_once(
    tmp_path: Path, bundle: Path, key: Keys, kind: str, command: str
) -> None:
    sig = bundle.with_name(f"{bundle.name}.{key.keyid}.sig")
    plant(kind, sig)
    args = [command, str(bundle), "--trusted-key", str(key.public)]
    if command == "install":  # refused before any engine is asked: none is running here
        opt = tmp_path / "opt"
        args += ["--prefix", str(opt), "--no-gpu", "--no-serve", "--runtime-url", "unix:///no"]
    ran = cli(tmp_path, *args, timeout=60)
    assert_clean_refusal(ran, 3, str(sig), SAYS[kind])
    assert ran.seconds < 30 and ran.rss_mb < MAX_RSS_MB, ran
    if command == "install":
        assert not (tmp_path / "opt").exists()


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_hostile_parts_list_is_refused_at_once(
    tmp_path: Path, split: Path, key: Keys, kind: str
) -> None:
    plist = split.with_name(f"{split.name}.parts.json")
    plist.unlink()
    plant(kind, plist)
    ran = cli(tmp_path, "verify", f"{split}.part-000", "--trusted-key", str(key.public))
    assert_clean_refusal(ran, 3, str(plist), SAYS[kind])
    assert ran.seconds < 30 and ran.rss_mb < MAX_RSS_MB, ran


def test_signature_option_naming_a_fifo_is_refused(tmp_path: Path, bundle: Path, key: Keys) -> None:
    named = tmp_path / f"extra.{key.keyid}.sig"
    os.mkfifo(named)
    ran = cli(
        tmp_path,
        "verify",
        "-",
        "--trusted-key",
        str(key.public),
        "--signature",
        str(named),
        input=bundle.read_bytes(),
    )
    assert_clean_refusal(ran, 3, str(named), "is a FIFO")


# -- the index member ---------------------------------------------------------------------------


CREATED, MTIME = "2026-11-01T00:00:00Z", 1793491200


def crafted(path: Path, index: bytes, key: Keys | None) -> Path:
    """A complete bundle with no payload: the index, a signature by ``key`` (if any), an
    empty SHA256SUMS, canonical headers. Signed, it verifies, whatever the index holds."""
    head = [tarfmt.member_header("airgap/index.json", len(index), MTIME), index]
    head.append(b"\0" * tarfmt.padding(len(index)))
    if key is not None:
        signer = load_signing_key(key.private)
        head += [
            tarfmt.member_header(f"airgap/signatures/{signer.keyid}.sig", 64, MTIME),
            signer.sign(index),
            b"\0" * tarfmt.padding(64),
        ]
    head += [tarfmt.member_header("airgap/SHA256SUMS", 0, MTIME), tarfmt.END_OF_ARCHIVE]
    path.write_bytes(b"".join(head))
    return path


def index_with(manifest: dict[str, object]) -> bytes:
    return canonical.dumps(
        {
            "format": "airgap-bundle/1",
            "tool": "crafted",
            "name": "demo",
            "version": 1,
            "created": CREATED,
            "expires": "2099-01-01T00:00:00Z",
            "chunk_size": 65536,
            "manifest": manifest,
            "lock": {},
            "files": [],
            "images": [],
        }
    )


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_60_mb_index_is_refused_by_its_header(tmp_path: Path, key: Keys, command: str) -> None:
    """Unsigned for inspect (nothing is checked there), validly signed for verify."""
    index = index_with({"pad": "x" * (60 * 1000 * 1000)})
    bundle = crafted(tmp_path / "big.tar", index, key if command == "verify" else None)
    args = [command, str(bundle)]
    if command == "verify":
        args += ["--trusted-key", str(key.public)]
    ran = cli(tmp_path, *args)
    assert_clean_refusal(ran, 3, "airgap/index.json", f"index is {len(index)} bytes, more than")
    assert ran.rss_mb < MAX_RSS_MB, ran


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_an_index_just_inside_the_limits_parses_in_bounded_memory(
    tmp_path: Path, key: Keys, command: str
) -> None:
    """The costliest index the limits let through: the most values each cheapest to write
    and dearest to parse (empty objects), padded to the size limit. Signed, so verify
    parses it too (and accepts it: it is a valid bundle with no payload)."""
    from bundler.boundedio import MAX_INDEX_SIZE, MAX_INDEX_VALUES

    values = MAX_INDEX_VALUES - 100
    pad = MAX_INDEX_SIZE - 3 * values - 1024
    index = index_with({"a": [{}] * values, "b": "x" * pad})
    bundle = crafted(tmp_path / "near.tar", index, key)
    args = [command, str(bundle)] + (
        ["--trusted-key", str(key.public)] if command == "verify" else []
    )
    ran = cli(tmp_path, *args)
    assert "Traceback" not in ran.err
    assert ran.rc == 0, ran.err
    assert ran.rss_mb < MAX_RSS_MB, ran


# -- sign ---------------------------------------------------------------------------------------


def serve_through_fifo(path: Path, contents: list[bytes], stop: threading.Event) -> None:
    """Whoever opens ``path`` next gets the next of ``contents`` (the last one again after)."""
    served = 0
    while not stop.is_set():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                return
            time.sleep(0.005)
            continue
        try:
            os.set_blocking(fd, True)
            os.write(fd, contents[min(served, len(contents) - 1)])
        except OSError:
            pass  # the reader went away without reading
        finally:
            os.close(fd)
        served += 1
        time.sleep(0.05)  # let this reader see the end before the next one opens


def test_sign_refuses_a_fifo_that_serves_a_genuine_then_a_forged_parts_list(
    tmp_path: Path, split: Path, key: Keys
) -> None:
    co = tmp_path / "co"
    subprocess.run(
        [sys.executable, "-m", "bundler", "keygen", str(co)], check=True, capture_output=True
    )
    plist = split.with_name(f"{split.name}.parts.json")
    genuine = plist.read_bytes()
    doc = canonical.loads(genuine.rstrip(b"\n"))
    doc["signed"]["parts"][1]["sha256"] = "f" * 64  # a different part 001, unsigned
    forged = canonical.dumps(doc) + b"\n"
    plist.unlink()
    os.mkfifo(plist)
    stop = threading.Event()
    writer = threading.Thread(
        target=serve_through_fifo, args=(plist, [genuine, forged], stop), daemon=True
    )
    writer.start()
    try:
        ran = cli(
            tmp_path,
            "sign",
            f"{split}.part-000",
            "--key",
            str(co),
            "--trusted-key",
            str(key.public),
        )
    finally:
        stop.set()
        writer.join(5)
    assert_clean_refusal(ran, 3, str(plist), "is a FIFO")
    assert not list(split.parent.glob("*.sig"))
    assert plist.is_fifo()  # not replaced by a signed copy of anything


@pytest.mark.parametrize("how", ["--no-verify", "wrong hash in a trusted parts list"])
def test_sign_rehashes_the_parts_and_names_the_damaged_one(
    tmp_path: Path, split: Path, key: Keys, how: str
) -> None:
    co = tmp_path / "co"
    subprocess.run(
        [sys.executable, "-m", "bundler", "keygen", str(co)], check=True, capture_output=True
    )
    plist = split.with_name(f"{split.name}.parts.json")
    args = ["sign", f"{split}.part-000", "--key", str(co)]
    if how == "--no-verify":
        part = split.with_name(f"{split.name}.part-002")
        data = bytearray(part.read_bytes())
        data[7] ^= 1  # same size: only hashing it finds this
        part.write_bytes(bytes(data))
        args.append("--no-verify")
    else:
        # Every byte verifies against the signed index, but the (trusted) parts list
        # says part 001 has another sha256: a co-signer must not vouch for that list.
        doc = canonical.loads(plist.read_bytes().rstrip(b"\n"))
        doc["signed"]["parts"][1]["sha256"] = "e" * 64
        signer = load_signing_key(key.private)
        doc["signatures"] = {signer.keyid: signer.sign(canonical.dumps(doc["signed"])).hex()}
        plist.write_bytes(canonical.dumps(doc) + b"\n")
        part = split.with_name(f"{split.name}.part-001")
        args += ["--trusted-key", str(key.public)]
    before = plist.read_bytes()
    ran = cli(tmp_path, *args)
    assert_clean_refusal(ran, 3, f"part {part.name}", "nothing was signed")
    assert plist.read_bytes() == before
    assert not list(split.parent.glob("*.sig"))


# -- a stalled standard input -------------------------------------------------------------------


@contextmanager
def writer_process(data: bytes, script: str) -> Iterator[int]:
    """A process that gets ``data`` on its stdin and runs ``script`` (``d`` holds the data,
    ``out`` its stdout); yields the reading end of its stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; d = sys.stdin.buffer.read(); "
         f"out = sys.stdout.buffer; {script}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    feeder = threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.close()))
    feeder.start()
    try:
        yield proc.stdout.fileno()
    finally:
        proc.kill()  # by its id: the writer this test started
        proc.wait()
        feeder.join(5)
        proc.stdout.close()


def stalling_writer(data: bytes) -> contextlib.AbstractContextManager[int]:
    """A process that writes ``data`` to a pipe, then sends nothing for two minutes."""
    return writer_process(data, "out.write(d); out.flush(); time.sleep(120)")


def late_writer(data: bytes, delay: float) -> contextlib.AbstractContextManager[int]:
    """A process that sends nothing for ``delay`` seconds, then ``data`` (like a cold
    ``airgap build -o -``, which hashes every source before its first byte)."""
    return writer_process(data, f"time.sleep({delay}); out.write(d); out.flush()")


def test_verify_stdin_that_stalls_fails_naming_the_option(
    tmp_path: Path, bundle: Path, key: Keys
) -> None:
    data = bundle.read_bytes()
    with stalling_writer(data[: len(data) // 2]) as fd:
        ran = cli(
            tmp_path,
            "verify",
            "-",
            "--trusted-key",
            str(key.public),
            "--stall-timeout",
            "2",
            stdin=fd,
            timeout=60,
        )
    assert_clean_refusal(ran, 1, "<stdin>", "no data arrived for 2 s", "--stall-timeout")
    assert ran.seconds < 20, ran
    # Pauses shorter than the timeout are only pauses.
    ran = cli(
        tmp_path,
        "verify",
        "-",
        "--trusted-key",
        str(key.public),
        "--stall-timeout",
        "30",
        input=data,
    )
    assert ran.rc == 0, ran.err


def test_verify_stdin_waits_for_a_late_first_byte_up_to_the_start_timeout(
    tmp_path: Path, bundle: Path, key: Keys
) -> None:
    data = bundle.read_bytes()
    trust = ["--trusted-key", str(key.public), "--stall-timeout", "1"]
    with late_writer(data, 3) as fd:  # 3 s of silence before the first byte: not a stall
        ran = cli(tmp_path, "verify", "-", *trust, stdin=fd, timeout=60)
    assert ran.rc == 0, ran.err
    with late_writer(data, 30) as fd:  # negative control: a start timeout shorter than that
        ran = cli(tmp_path, "verify", "-", *trust, "--start-timeout", "2", stdin=fd, timeout=60)
    assert_clean_refusal(ran, 1, "<stdin>", "nothing arrived in the first 2 s", "--start-timeout")
    assert ran.seconds < 20, ran


def engine_images(svc: services.Service) -> set[str]:
    out = subprocess.run(
        ["docker", "-H", svc.url, "image", "ls", "-q", "--no-trunc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_install_stdin_that_stalls_fails_and_leaves_nothing(
    tmp_path: Path, bundle: Path, key: Keys, docker_engine: services.Service
) -> None:
    data = bundle.read_bytes()
    before = engine_images(docker_engine)
    prefix = tmp_path / "opt"
    with stalling_writer(data[: len(data) * 2 // 3]) as fd:
        ran = cli(
            tmp_path,
            "install",
            "-",
            "--trusted-key",
            str(key.public),
            "--prefix",
            str(prefix),
            "--no-gpu",
            "--no-serve",
            "--runtime-url",
            docker_engine.url,
            "--stall-timeout",
            "2",
            stdin=fd,
            timeout=120,
            max_vm=None,
        )
    assert_clean_refusal(ran, 1, "<stdin>", "--stall-timeout")
    assert not (prefix / "current").exists()
    assert not list((prefix / "releases").glob("*"))  # no release, no staging left behind
    assert engine_images(docker_engine) == before


# -- --split-size fat32 -------------------------------------------------------------------------


def test_split_size_fat32_and_the_warning_above_it(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    out = tmp_path / "b.tar"
    base = ["build", str(demo_manifest), "-o", str(out), "--key", str(key.private)]
    ran = cli(tmp_path, *base, "--split-size", "4G", max_vm=None)
    assert ran.rc == 0, ran.err
    assert "warning: --split-size 4G makes parts of 4294967296 bytes" in ran.err
    assert "--split-size fat32" in ran.err
    ran = cli(tmp_path, *base, "--split-size", "fat32", max_vm=None)
    assert ran.rc == 0, ran.err
    assert "warning" not in ran.err
    assert (tmp_path / "b.tar.part-000").is_file()
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "--split-size 4G" not in readme and "--split-size fat32" in readme
