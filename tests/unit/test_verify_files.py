"""`verify` of a bundle file: chunks are read in parallel from the file, never mapped.

The tamper tests cover the path that hands bytes to a sink; these cover the path
that only verifies (no sink), which reads each chunk with ``pread`` on every core.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from test_tamper import flip_positions

from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.errors import EXIT_VERIFICATION, BundleError, VerificationError
from devkit.demo_data import make_demo_sources

from conftest import Keys, build_bundle

MiB = 1024 * 1024


@pytest.mark.parametrize("workers", [1, 3])
def test_one_flipped_byte_anywhere_is_refused_without_a_sink(
    tmp_path: Path, bundle: Path, key: Keys, workers: int
) -> None:
    original = bundle.read_bytes()
    bad = tmp_path / "bad.tar"
    accepted = []
    for name, pos in sorted(flip_positions(bundle).items()):
        data = bytearray(original)
        data[pos] ^= 0xFF
        bad.write_bytes(bytes(data))
        try:
            read_bundle(str(bad), TrustPolicy(key.trust()), workers=workers)
        except (BundleError, VerificationError):
            pass
        else:
            accepted.append(name)
    assert accepted == []


def test_truncation_anywhere_is_refused_without_a_sink(
    tmp_path: Path, bundle: Path, key: Keys
) -> None:
    original = bundle.read_bytes()
    bad = tmp_path / "cut.tar"
    with tarfile.open(bundle) as tf:
        model = tf.getmember("models/tiny/model.safetensors")
    for cut in (0, 100, model.offset_data + 70_000, len(original) - 1024, len(original) - 1):
        bad.write_bytes(original[:cut])
        with pytest.raises(BundleError, match="ends early|ends where|damaged at its start"):
            read_bundle(str(bad), TrustPolicy(key.trust()), workers=2)
    bad.write_bytes(original[: model.offset_data + 70_000])
    with pytest.raises(BundleError, match="ends early inside this member: truncated") as e:
        read_bundle(str(bad), TrustPolicy(key.trust()))
    assert e.value.member == "models/tiny/model.safetensors"


def test_of_two_damaged_chunks_the_first_is_named(tmp_path: Path, bundle: Path, key: Keys) -> None:
    with tarfile.open(bundle) as tf:
        model = tf.getmember("models/tiny/model.safetensors")
        last = max(tf.getmembers(), key=lambda m: m.offset)
    data = bytearray(bundle.read_bytes())
    data[last.offset_data] ^= 0x01  # a later member, likely hashed first by another worker
    data[model.offset_data + 2 * 65536 + 5] ^= 0x01  # chunk 2 of the model
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    for workers in (1, 2, 8):
        with pytest.raises(BundleError) as e:
            read_bundle(str(bad), TrustPolicy(key.trust()), workers=workers)
        assert e.value.member == "models/tiny/model.safetensors"
        assert "chunk 2 " in str(e.value)
        assert e.value.offset == model.offset_data + 2 * 65536


def test_split_bundle_verifies_with_chunks_across_parts(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    out = tmp_path / "s.tar"
    build_bundle(demo_manifest, out, key, split_size=100_000)  # not a multiple of a chunk
    for workers in (1, 4):
        r = read_bundle(str(out), TrustPolicy(key.trust()), workers=workers)
        assert r.bytes_read == sum(p.stat().st_size for p in tmp_path.glob("s.tar.part-*"))


SHRINK = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from bundler.bundle.policy import TrustPolicy
    from bundler.bundle.reader import read_bundle
    from bundler.bundle.signing import load_trust
    from bundler.errors import BundleError

    path, pub, cut = sys.argv[1], sys.argv[2], int(sys.argv[3])
    shrunk = []

    def progress(n):
        # Once a block of the big member has gone to the hashers, something else
        # truncates the file under them.
        if n >= 1024 * 1024 and not shrunk:
            os.truncate(path, cut)
            shrunk.append(cut)

    try:
        read_bundle(path, TrustPolicy(load_trust([Path(pub)], None)), workers=2, progress=progress)
    except BundleError as e:
        print(e.exit_code, e)
        sys.exit(0)
    print("accepted" if shrunk else "never shrunk")
    sys.exit(1)
    """
)


def test_a_bundle_that_shrinks_while_verified_is_a_clean_error(tmp_path: Path, key: Keys) -> None:
    """A mapped bundle would die of SIGBUS here; a read one reports the truncation."""
    src = tmp_path / "src"
    src.mkdir()
    manifest = make_demo_sources(src, big=48 * MiB)
    out = tmp_path / "big.tar"
    build_bundle(manifest, out, key, chunk_size=8 * MiB)
    with tarfile.open(out) as tf:
        big = next(m for m in tf.getmembers() if m.name.endswith("model-big.safetensors"))
    cut = big.offset_data + MiB  # inside the first chunk of the big member
    r = subprocess.run(
        [sys.executable, "-c", SHRINK, str(out), str(key.public), str(cut)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, f"rc {r.returncode} (-7 is SIGBUS): {r.stdout} {r.stderr}"
    assert out.stat().st_size == cut
    code, message = r.stdout.strip().split(" ", 1)
    assert int(code) == EXIT_VERIFICATION
    assert str(out) in message and "model-big.safetensors" in message
    assert "truncated" in message
    assert "Traceback" not in r.stderr


MEMORY = textwrap.dedent(
    """
    import hashlib, resource, sys, threading, types
    from pathlib import Path
    import bundler.hashing
    from bundler.bundle.policy import TrustPolicy
    from bundler.bundle.reader import read_bundle
    from bundler.bundle.signing import load_trust, load_signing_key
    from bundler.build import BuildOptions, build
    from bundler.manifest import load_manifest

    # A 64-core machine, as far as the hashing code can tell: 64 threads, and each
    # one's first update waits until all 64 are hashing, as they would on 64 busy cores.
    bundler.hashing.default_workers = lambda: 64
    everyone = threading.Barrier(64, timeout=20)
    waited = threading.local()

    class Sha256:
        def __init__(self, data=b""):
            self._h = hashlib.sha256(data)

        def update(self, data):
            self._h.update(data)
            if len(data) >= 1 << 20 and not getattr(waited, "done", False):
                waited.done = True
                try:
                    everyone.wait()
                except threading.BrokenBarrierError:
                    pass

        def hexdigest(self):
            return self._h.hexdigest()

    bundler.hashing.hashlib = types.SimpleNamespace(sha256=Sha256)
    manifest, out, key, pub, what = sys.argv[1:]
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if what == "build":
        m = load_manifest(Path(manifest))
        opts = BuildOptions(output=Path(out), keys=(load_signing_key(Path(key)),),
                            chunk_size=4 << 20, no_hash_cache=True)
        before = peak()
        build(m, opts)
    else:
        before = peak()
        read_bundle(out, TrustPolicy(load_trust([Path(pub)], None)))
    print((peak() - before) // (1 << 20))
    """
)


def test_memory_is_bounded_by_bytes_in_flight_not_by_cores(tmp_path: Path, key: Keys) -> None:
    """64 hashing threads share one buffer budget, in build and in verify."""
    src = tmp_path / "src"
    src.mkdir()
    manifest = make_demo_sources(src)
    with open(src / "weights" / "model-big.safetensors", "wb") as f:
        f.truncate(256 * MiB)  # sparse: 64 chunks of 4 MiB, cheap to make
    out = tmp_path / "big.tar"
    for what in ("build", "verify"):
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                MEMORY,
                str(manifest),
                str(out),
                str(key.private),
                str(key.public),
                what,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        grew = int(r.stdout)
        # 64 MiB of read buffers in all, plus thread stacks; 64 x 4 MiB chunks would be 256.
        assert grew <= 100, f"{what}: peak RSS grew by {grew} MiB with 64 threads"
