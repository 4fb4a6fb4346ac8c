"""The stream writer (``build -o -``): a source changed between hashing and sending ends
the stream without its end-of-archive, and the reader refuses what was sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.build import BuildOptions, planned
from bundler.bundle import tarfmt
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.bundle.signing import load_signing_key
from bundler.bundle.streamout import stream_bundle
from bundler.errors import BundleError, SourceError
from bundler.manifest import load_manifest
from bundler.progress import NullReporter

from conftest import Keys


def _stream(manifest: Path, key: Keys, out: Path, touch: Path | None) -> None:
    """Stream the bundle into ``out``; after the first member is sent, append a byte
    to ``touch`` (a source not sent yet)."""
    m = load_manifest(manifest)
    opts = BuildOptions(output=Path("-"), keys=(load_signing_key(key.private),))

    def changed(_: int) -> None:
        if touch is not None:
            with open(touch, "ab") as f:
                f.write(b"!")

    with planned(m, opts, NullReporter()) as (plan, hashes), open(out, "wb") as f:
        stream_bundle(plan, f.fileno(), opts.keys, progress=changed, hash_cache=hashes)


def test_a_source_changed_while_streaming_ends_the_stream_unfinished(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    weights = demo_manifest.parent / "weights"
    with pytest.raises(SourceError, match="changed while the bundle was being streamed"):
        _stream(demo_manifest, key, tmp_path / "cut.tar", weights / "tokenizer" / "tokenizer.json")
    data = (tmp_path / "cut.tar").read_bytes()
    assert len(data) > 0 and not data.endswith(tarfmt.END_OF_ARCHIVE)
    with open(tmp_path / "cut.tar", "rb") as f, pytest.raises(BundleError, match="ends early"):
        read_bundle("-", TrustPolicy(key.trust()), stdin=f)


def test_unchanged_sources_stream_a_bundle_the_reader_accepts(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    _stream(demo_manifest, key, tmp_path / "ok.tar", None)
    data = (tmp_path / "ok.tar").read_bytes()
    assert data.endswith(tarfmt.END_OF_ARCHIVE)
    with open(tmp_path / "ok.tar", "rb") as f:
        result = read_bundle("-", TrustPolicy(key.trust()), stdin=f)
    assert result.index.name == "demo"
