"""The SBOM end to end: real dpkg data, `airgap sbom`, `inspect`, the licence at install."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from bundler.sbom.model import SBOM_PATH
from devkit import services
from devkit.demo_data import LLAMA_CARD, make_demo_sources, set_card

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration


def dpkg_query(admindir: Path) -> set[tuple[str, str, str]]:
    out = subprocess.run(
        [
            "dpkg-query",
            "-W",
            f"--admindir={admindir}",
            "-f",
            "${Package}\t${Version}\t${Architecture}\t${db:Status-Status}\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    return {(n, v, a) for n, v, a, status in rows if status == "installed"}


def extract_status(image_archive: Path, into: Path) -> Path:
    """The layer's var/lib/dpkg, extracted (only here, in the test) for dpkg-query."""
    with tarfile.open(image_archive) as outer:
        layer = outer.extractfile("layer.tar")
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            inner.extract("var/lib/dpkg/status", into, filter="data")
    return into / "var/lib/dpkg"


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Keys]:
    from conftest import make_key

    root = tmp_path_factory.mktemp("sbom")
    src = root / "src"
    src.mkdir()
    manifest = make_demo_sources(src, real_images=True)
    key = make_key(root / "keys")
    out = root / "demo.tar"
    build_bundle(manifest, out, key)
    return out, src, key


def test_sbom_packages_equal_dpkg_query_on_the_extracted_layer(
    tmp_path: Path, real_bundle: tuple[Path, Path, Keys]
) -> None:
    bundle, src, key = real_bundle
    out = tmp_path / "sbom.json"
    r = airgap("sbom", str(bundle), "--trusted-key", str(key.public), "-o", str(out))
    assert r.returncode == 0, r.stderr.decode()
    assert b"verified demo v1" in r.stderr and b"deb" in r.stderr
    with tarfile.open(bundle) as tf:
        signed = tf.extractfile(SBOM_PATH)
        assert signed is not None and out.read_bytes() == signed.read()  # byte for byte
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(out.read_text()) is None
    doc = json.loads(out.read_text())
    images = {c["bom-ref"]: c for c in doc["components"] if c["type"] == "container"}
    for role, archive in (("nginx", src / "nginx.tar"), ("vllm", src / "vllm.tar")):
        want = dpkg_query(extract_status(archive, tmp_path / role))
        inner = images[f"image:{role}"]["components"]
        got = {
            (c["name"], c["version"], c["purl"].split("arch=")[1].split("&")[0])
            for c in inner
            if c["type"] == "library"
        }
        assert got == want and len(want) >= 5, role
        (os_component,) = [c for c in inner if c["type"] == "operating-system"]
        assert os_component["name"] == "debian"
        assert all("distro=debian-" in c["purl"] for c in inner if c["type"] == "library")
    assert any(c["name"] == "nginx" for c in images["image:nginx"]["components"])


def test_spdx_and_inspect(tmp_path: Path, real_bundle: tuple[Path, Path, Keys]) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    bundle, _, key = real_bundle
    out = tmp_path / "sbom.spdx.json"
    r = airgap(
        "sbom", str(bundle), "--trusted-key", str(key.public), "--format", "spdx-json", "-o",
        str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert validate_full_spdx_document(parse_file(str(out))) == []
    doc = json.loads(out.read_text())
    assert doc["spdxVersion"] == "SPDX-2.3"
    purls = {
        ref["referenceLocator"]
        for p in doc["packages"]
        for ref in p.get("externalRefs", [])
    }
    assert any(p.startswith("pkg:deb/debian/nginx@") for p in purls)
    r = airgap("inspect", str(bundle))
    assert r.returncode == 0
    text = r.stdout.decode()
    assert "model licence: apache-2.0 (Apache-2.0; OSI-approved)" in text
    assert "SBOM:" in text and "deb" in text
    info = json.loads(airgap("inspect", str(bundle), "--json").stdout)
    assert info["license"]["spdx"] == "Apache-2.0" and info["sbom"]["packages"] > 10


def test_sbom_of_a_damaged_bundle_writes_nothing(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    bundle = tmp_path / "b.tar"
    build_bundle(demo_manifest, bundle, key)
    with tarfile.open(bundle) as tf:
        offset = tf.getmember(SBOM_PATH).offset_data
    data = bytearray(bundle.read_bytes())
    data[offset + 10] ^= 0x01
    bundle.write_bytes(bytes(data))
    out = tmp_path / "sbom.json"
    r = airgap("sbom", str(bundle), "--trusted-key", str(key.public), "-o", str(out))
    assert r.returncode == 3 and SBOM_PATH.encode() in r.stderr
    assert not out.exists() and list(tmp_path.glob("*.partial")) == []
    info = json.loads(airgap("inspect", str(bundle), "--json").stdout)
    assert info["sbom"] is None  # inspect shows nothing it cannot match to the index


@pytest.fixture
def engine(docker_engine: services.Service) -> Iterator[services.Service]:
    from test_install import docker_ids, remove_images

    before = set(docker_ids(docker_engine))
    yield docker_engine
    remove_images(docker_engine, sorted(set(docker_ids(docker_engine)) - before))


def test_install_needs_accept_license_for_a_gated_licence(
    tmp_path: Path, demo_manifest: Path, key: Keys, engine: services.Service
) -> None:
    set_card(demo_manifest, LLAMA_CARD, accepted="llama3.3")
    bundle = tmp_path / "b.tar"
    build_bundle(demo_manifest, bundle, key)
    prefix = tmp_path / "opt"
    base = [
        "install", str(bundle), "--trusted-key", str(key.public), "--prefix", str(prefix),
        "--no-gpu", "--runtime-url", engine.url, "--no-serve",
    ]  # fmt: skip
    r = airgap(*base)
    assert r.returncode == 2, r.stderr.decode()
    err = r.stderr.decode()
    assert "llama3.3 (LicenseRef-llama3.3; not OSI-approved; gated)" in err
    assert "--accept-license" in err
    assert "needs --accept-license llama3.3" in err  # the preflight's licence row
    assert not (prefix / "releases" / "demo-1").exists()
    r = airgap(*base, "--accept-license", "llama3.1")
    assert r.returncode == 2 and b"names another" in r.stderr
    r = airgap(*base, "--accept-license", "llama3.3", "--json")
    assert r.returncode == 0, r.stderr.decode()
    receipt = json.loads((prefix / "state" / "receipt.json").read_text())
    acceptance = receipt["releases"]["demo-1"]["license_acceptance"]
    assert acceptance["license"] == "llama3.3" and acceptance["spdx"] == "LicenseRef-llama3.3"
    assert acceptance["operator"].startswith(pwd.getpwuid(os.getuid()).pw_name) or (
        "sudo as" in acceptance["operator"]
    )
    assert acceptance["accepted_at"].endswith("Z")
    rows = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert rows["licence"]["ok"] is True and "accepted" in rows["licence"]["detail"]
