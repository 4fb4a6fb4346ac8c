"""What keeps a build near the speed of ``tar cf``: start-up, and work that overlaps."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bundler.build import BuildOptions, build
from bundler.bundle.index import ImageEntry
from bundler.bundle.plan import BuildPlan
from bundler.bundle.signing import load_signing_key
from bundler.errors import SourceError, UsageError
from bundler.hashing import Cancelled, FileRange, hash_sources
from bundler.manifest import load_manifest
from bundler.progress import NullReporter, Reporter
from bundler.sbom import generate
from bundler.sbom.layers import ImageFacts
from tests.conftest import Keys, airgap

# Runs the real CLI in a fresh interpreter, then says which heavy modules it loaded.
_BUILD_AND_LIST_MODULES = """
import json, sys
from bundler.cli.main import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    loaded = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps(loaded), file=sys.stderr)
"""


def test_a_local_build_does_not_import_the_fetch_clients(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    """Local sources need no HTTP or hub client: importing them was a third of start-up."""
    out = tmp_path / "demo.tar"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _BUILD_AND_LIST_MODULES,
            "-q",
            "build",
            str(demo_manifest),
            "-o",
            str(out),
            "--key",
            str(key.private),
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.stat().st_size > 0
    loaded = set(json.loads(proc.stderr.decode().strip().splitlines()[-1]))
    assert "bundler" in loaded  # the listing is real
    assert not loaded & {"requests", "huggingface_hub", "urllib3"}, loaded & {
        "requests",
        "huggingface_hub",
        "urllib3",
    }


def _build(manifest: Path, out: Path, key: Keys, reporter: Reporter | None = None) -> None:
    opts = BuildOptions(output=out, keys=(load_signing_key(key.private),), chunk_size=64 * 1024)
    build(load_manifest(manifest), opts, reporter)


class _Progress(NullReporter):
    def __init__(self) -> None:
        self.moved = threading.Event()

    def advance(self, n: int) -> None:
        self.moved.set()


def test_the_sbom_layers_are_read_while_the_payload_is_hashed(
    tmp_path: Path, demo_manifest: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading (gunzipping) image layers for the SBOM no longer waits for, or delays,
    the hashing: the scan starts with hashing already under way, and the bundle verifies."""
    progress = _Progress()
    seen: list[bool] = []
    real = generate.scan_images

    def scan(plan: BuildPlan) -> tuple[tuple[tuple[ImageEntry, ImageFacts], ...], int]:
        seen.append(progress.moved.wait(timeout=10))  # bytes hashed before the scan ends?
        return real(plan)

    monkeypatch.setattr(generate, "scan_images", scan)
    out = tmp_path / "demo.tar"
    _build(demo_manifest, out, key, progress)
    assert seen == [True]
    proc = airgap("verify", str(out), "--trusted-key", str(key.public))
    assert proc.returncode == 0, proc.stderr.decode()


def test_a_failed_sbom_scan_stops_the_hashing_and_leaves_nothing(
    tmp_path: Path, demo_manifest: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's error is the build's error; the hashing started beside it is stopped
    (no hashing thread outlives the build) and no bundle or temp file is left."""
    big = demo_manifest.parent / "weights" / "model-00002-of-00002.safetensors"
    with open(big, "wb") as f:
        f.truncate(512 * 1024 * 1024)  # sparse: seconds of hashing, no disk
    progress = _Progress()

    def scan(plan: BuildPlan) -> tuple[tuple[tuple[ImageEntry, ImageFacts], ...], int]:
        assert progress.moved.wait(timeout=10)
        raise SourceError("layer sha256:00: cannot read it as a tar stream: damaged")

    monkeypatch.setattr(generate, "scan_images", scan)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(SourceError, match="cannot read it as a tar stream"):
        _build(demo_manifest, out_dir / "demo.tar", key, progress)
    busy = [t.name for t in threading.enumerate() if t.name.startswith(("hash-all", "sha256"))]
    assert busy == []
    assert list(out_dir.iterdir()) == []


def test_hashing_stops_when_asked(tmp_path: Path) -> None:
    """``stop`` ends every hashing thread within a read block, with ``Cancelled``."""
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        hash_sources([FileRange(src, 0, 256 * 1024 * 1024)], 1024 * 1024, stop=stop)


def test_build_json_reports_the_sbom_layer_reading(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    """``build --json`` says how many layer bytes the SBOM read and how long it took,
    so a benchmark can show that cost on its own row."""
    out = tmp_path / "demo.tar"
    proc = airgap(
        "-q", "build", str(demo_manifest), "-o", str(out), "--key", str(key.private), "--json"
    )
    assert proc.returncode == 0, proc.stderr.decode()
    sbom = json.loads(proc.stdout)["sbom"]
    index = json.loads(airgap("inspect", str(out), "--index").stdout)
    read = sum(la["size"] for img in index["images"] for la in img["layers"])
    assert sbom["layer_bytes"] == read > 0
    assert 0 <= sbom["layer_seconds"] < 60


def test_a_missing_output_directory_is_refused_before_any_hashing_or_scan(
    tmp_path: Path, demo_manifest: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing and the SBOM scan start early now; a build that cannot be written must
    still say so before spending either."""
    progress = _Progress()
    scanned: list[BuildPlan] = []
    monkeypatch.setattr(generate, "scan_images", lambda plan: scanned.append(plan) or ((), 0))
    with pytest.raises(UsageError, match="output directory does not exist"):
        _build(demo_manifest, tmp_path / "missing" / "demo.tar", key, progress)
    assert scanned == [] and not progress.moved.is_set()
