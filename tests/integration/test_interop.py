"""Stock tools agree with us: GNU tar, sha256sum -c, openssl pkeyutl, skopeo."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from bundler.bundle.extract import StagingExtractor
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle

from conftest import Keys, build_bundle

pytestmark = pytest.mark.integration


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_gnu_tar_extracts_it_and_sha256sum_checks_every_file(tmp_path: Path, bundle: Path) -> None:
    out = tmp_path / "x"
    out.mkdir()
    r = run("tar", "-xf", str(bundle), "-C", str(out))
    assert r.returncode == 0, r.stderr
    r = run("sha256sum", "-c", "--strict", "airgap/SHA256SUMS", cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": OK") == 18  # the model card and the SBOM included
    # and it would catch a damaged file
    victim = out / "models/tiny/config.json"
    victim.write_bytes(victim.read_bytes() + b" ")
    r = run("sha256sum", "-c", "--quiet", "airgap/SHA256SUMS", cwd=out)
    assert r.returncode == 1 and "models/tiny/config.json: FAILED" in r.stdout


# The README's stock-tool check that SHA256SUMS is what the signed index says.
SUMS_FROM_INDEX = (
    "tr '{' '\\n' < airgap/index.json | sed -n "
    "'s/^\"chunks\":\\[[^]]*\\],\"path\":\"\\([^\"]*\\)\",\"sha256\":\"\\([0-9a-f]*\\)\".*/\\2  \\1/p'"
    " | cmp - airgap/SHA256SUMS"
)


def test_sha256sums_is_bound_to_the_signed_index_with_stock_tools(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    out = tmp_path / "x"
    out.mkdir()
    bundle = tmp_path / "b.tar"
    build_bundle(demo_manifest, bundle, key, chunk_size=64 * 1024)  # multi-chunk files too
    assert run("tar", "-xf", str(bundle), "-C", str(out)).returncode == 0
    r = run("sh", "-c", SUMS_FROM_INDEX, cwd=out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "airgap/SHA256SUMS").read_text().count("\n") == 18  # card and SBOM too
    # a SHA256SUMS rewritten to match a replaced file is caught
    sums = out / "airgap/SHA256SUMS"
    sums.write_text(sums.read_text().replace(sums.read_text()[:64], "0" * 64, 1))
    assert run("sh", "-c", SUMS_FROM_INDEX, cwd=out).returncode == 1


def test_signature_verifies_with_openssl(tmp_path: Path, bundle: Path, key: Keys) -> None:
    out = tmp_path / "x"
    out.mkdir()
    assert run("tar", "-xf", str(bundle), "-C", str(out)).returncode == 0
    sig = out / f"airgap/signatures/{key.keyid}.sig"
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(key.public),
        "-rawin",
        "-in",
        str(out / "airgap/index.json"),
        "-sigfile",
        str(sig),
    ]
    r = run(*cmd)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr
    index = out / "airgap/index.json"
    index.write_bytes(index.read_bytes().replace(b'"version":1', b'"version":9'))
    r = run(*cmd)
    assert r.returncode != 0


def test_keyid_is_sha256_of_raw_public_key_per_openssl(key: Keys) -> None:
    raw = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(key.public), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout[-32:]
    assert hashlib.sha256(raw).hexdigest() == key.keyid


def test_images_reassembled_from_the_bundle_are_valid_for_skopeo(
    tmp_path: Path, bundle: Path, key: Keys
) -> None:
    staging = tmp_path / "stage"
    result = read_bundle(str(bundle), TrustPolicy(key.trust()), StagingExtractor(staging))
    layout = staging / "images"
    for img in result.index.images:
        r = run("skopeo", "inspect", "--raw", f"oci:{layout}:{img.role}")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["config"]["digest"] == img.config_digest
        r = run("skopeo", "inspect", f"oci:{layout}:{img.role}")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["Architecture"] == "amd64" and info["Os"] == "linux"
        assert info["Layers"] == [la.digest for la in img.layers]
        # a full copy makes skopeo read and check every blob against its digest
        dest = tmp_path / f"{img.role}-copy"
        r = run("skopeo", "copy", f"oci:{layout}:{img.role}", f"dir:{dest}")
        assert r.returncode == 0, r.stderr


def test_skopeo_made_archives_are_accepted_as_sources(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    """An OCI archive written by skopeo (not by our helper) builds and verifies."""
    src = demo_manifest.parent
    r = run(
        "skopeo",
        "copy",
        f"docker-archive:{src / 'nginx.tar'}",
        f"oci-archive:{src / 'nginx-oci.tar'}:example.org/nginx:test",
    )
    assert r.returncode == 0, r.stderr
    text = demo_manifest.read_text().replace("./nginx.tar", "./nginx-oci.tar")
    demo_manifest.write_text(text)
    out = tmp_path / "b.tar"
    result = build_bundle(demo_manifest, out, key)
    nginx = next(i for i in result.index.images if i.role == "nginx")
    assert nginx.ref == "example.org/nginx:test"
    read_bundle(str(out), TrustPolicy(key.trust()))
