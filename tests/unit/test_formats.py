"""A document of a newer format is refused with "needs airgap >= X", never as damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_malicious
from test_malicious import craft

from bundler import canonical
from bundler.bundle.index import parse_index
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle
from bundler.errors import BundleError, ManifestError
from bundler.formats import newer_format
from bundler.lock import load_lock

from conftest import Keys


def test_newer_format_names_the_release_that_reads_it() -> None:
    assert newer_format("airgap-bundle/1", "airgap-bundle/1") is None
    assert newer_format("something/9", "airgap-bundle/1") is None  # another family
    msg = newer_format("airgap-bundle/2", "airgap-bundle/1", tool="airgap 0.3.1")
    assert msg is not None and "needs airgap >= 0.3.1" in msg and "not damaged" in msg
    msg = newer_format(
        "airgap-bundle/3", "airgap-bundle/1", requires="airgap>=0.5", tool="airgap 0.6.0"
    )
    assert msg is not None and "needs airgap >= 0.5" in msg


def test_index_of_a_newer_format() -> None:
    data = canonical.dumps({"format": "airgap-bundle/3", "tool": "airgap 0.4.0", "name": "x"})
    with pytest.raises(BundleError) as e:
        parse_index(data)
    assert "needs airgap >= 0.4.0" in e.value.message and "damaged" not in (e.value.hint or "")
    # this release reads both formats, and says so
    assert "which reads airgap-bundle/1 and airgap-bundle/2" in e.value.message
    data = canonical.dumps({"format": "airgap-bundle/3", "requires": "airgap>=0.7", "tool": "x"})
    with pytest.raises(BundleError, match=r"needs airgap >= 0\.7 "):
        parse_index(data)
    with pytest.raises(BundleError, match="unsupported bundle format"):
        parse_index(canonical.dumps({"format": "zip/1"}))


def test_signed_bundle_of_a_newer_format_is_refused_as_newer(
    tmp_path: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the whole reader: signature good, format newer."""
    original = test_malicious.index_bytes

    def v2(files: list[dict[str, object]]) -> bytes:
        doc = json.loads(original(files))
        doc["format"], doc["tool"] = "airgap-bundle/3", "airgap 0.4.0"
        return canonical.dumps(doc)

    monkeypatch.setattr(test_malicious, "index_bytes", v2)
    bundle = craft(tmp_path / "b.tar", key, [], b"")
    with pytest.raises(BundleError) as e:
        read_bundle(str(bundle), TrustPolicy(key.trust()))
    assert "needs airgap >= 0.4.0" in e.value.message
    assert e.value.exit_code == 3


def test_lock_of_a_newer_format(tmp_path: Path) -> None:
    path = tmp_path / "m.lock.json"
    path.write_text(json.dumps({"format": "airgap-lock/2", "requires": "airgap>=0.3"}))
    with pytest.raises(ManifestError, match=r"needs airgap >= 0\.3"):
        load_lock(path)
    path.write_text(json.dumps({"format": "airgap-lock/1", "name": "x", "platform": "linux/amd64"}))
    assert load_lock(path) is not None
