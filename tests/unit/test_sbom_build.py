"""The SBOM a build signs into the bundle, and the licence rule that comes with it."""

from __future__ import annotations

import json
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from bundler.bundle.reader import read_head
from bundler.errors import LicenseError
from bundler.install.contents import check_signed_names
from bundler.sbom.card import MAX_CARD, front_matter, model_facts
from bundler.sbom.generate import sbom_reference
from bundler.sbom.licences import CardLicence, model_licence, to_spdx
from bundler.sbom.model import SBOM_PATH, summarize
from bundler.sbom.spdx import to_spdx as spdx_document
from devkit.demo_data import LLAMA_CARD, set_card

from conftest import Keys, build_bundle


def member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


def test_licence_ids_map_to_spdx_offline() -> None:
    assert to_spdx("apache-2.0") == "Apache-2.0"
    assert to_spdx("MIT") == "MIT"
    assert to_spdx("gpl-3.0") == "GPL-3.0-only"  # not the deprecated "GPL-3.0"
    assert to_spdx("llama3.3") == "LicenseRef-llama3.3"
    apache = model_licence(CardLicence(license=("apache-2.0",)), None)
    assert (apache.osi_approved, apache.needs_acceptance) == (True, False)
    gated = model_licence(CardLicence(license=("apache-2.0",)), "manual")  # the hub said so
    assert gated.gated and gated.needs_acceptance
    nc = model_licence(CardLicence(license=("cc-by-nc-4.0",)), None)
    assert nc.spdx == "CC-BY-NC-4.0" and not nc.osi_approved and nc.needs_acceptance
    qwen = model_licence(CardLicence(license=("other",), name="qwen"), None)
    assert (qwen.id, qwen.spdx, qwen.needs_acceptance) == ("qwen", "LicenseRef-qwen", True)
    missing = model_licence(None, None)
    assert (missing.id, missing.needs_acceptance) == ("unknown", True)


def test_llama_card_with_a_gate_needs_the_acceptance(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    set_card(demo_manifest, LLAMA_CARD)
    with pytest.raises(LicenseError) as e:
        build_bundle(demo_manifest, tmp_path / "b.tar", key)
    assert "llama3.3" in e.value.message and "gated" in e.value.message
    assert "license_accepted: llama3.3" in e.value.hint
    assert not (tmp_path / "b.tar").exists()
    set_card(demo_manifest, LLAMA_CARD, accepted="mit")  # accepting another licence: refused
    with pytest.raises(LicenseError, match="'mit'"):
        build_bundle(demo_manifest, tmp_path / "b.tar", key)
    demo_manifest.write_text(demo_manifest.read_text().replace("mit", "llama3.3"))
    result = build_bundle(demo_manifest, tmp_path / "b.tar", key)
    lic = result.index.lock.license
    assert lic is not None and (lic.id, lic.gated, lic.needs_acceptance) == ("llama3.3", True, True)
    doc = json.loads(member(tmp_path / "b.tar", SBOM_PATH))
    (model,) = [c for c in doc["components"] if c["bom-ref"] == "model"]
    assert model["licenses"] == [{"license": {"name": "LicenseRef-llama3.3"}}]
    card = {p["name"]: p["value"] for p in model["modelCard"]["properties"]}
    assert card["airgap:gated"] == "true" and card["airgap:card.license"] == "llama3.3"
    assert model["pedigree"]["ancestors"][0]["purl"] == "pkg:huggingface/meta-llama/Llama-3.1-70B"


def test_sbom_names_every_file_with_the_index_hash_and_validates(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    out = tmp_path / "b.tar"
    build_bundle(demo_manifest, out, key)
    index = read_head(str(out)).index
    data = member(out, SBOM_PATH)
    ref = sbom_reference(index)
    assert ref is not None and ref[0] == SBOM_PATH
    assert ref[1] == __import__("hashlib").sha256(data).hexdigest()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None
    doc = json.loads(data)
    assert doc["specVersion"] == "1.6" and doc["metadata"]["timestamp"].startswith(index.created[:19])
    by_path = {f.path: f.sha256 for f in index.files}
    stated: dict[str, str] = {}

    def walk(components: list[dict[str, object]]) -> None:
        for c in components:
            props = {p["name"]: p["value"] for p in c.get("properties", [])}  # type: ignore[union-attr]
            if "airgap:bundle_path" in props:
                stated[props["airgap:bundle_path"]] = c["hashes"][0]["content"]  # type: ignore[index]
            walk(c.get("components", []))  # type: ignore[arg-type]

    walk(doc["components"])
    non_blob = {p for p in by_path if not p.startswith("images/") and p != SBOM_PATH}
    assert set(stated) == non_blob and all(stated[p] == by_path[p] for p in stated)
    images = {c["bom-ref"]: c for c in doc["components"] if c["type"] == "container"}
    for img in index.images:
        c = images[f"image:{img.role}"]
        assert c["version"] == img.manifest_digest
        layers = [p["value"].split()[0] for p in c["properties"] if "layer." in p["name"]]
        assert layers == [la.digest for la in img.layers]
        assert f"images/blobs/sha256/{c['hashes'][0]['content']}" in by_path
    elastic = [c for c in doc["components"] if c.get("group") == "elastic"]
    assert {c["name"] for c in elastic} == {
        "elser_model_2_linux-x86_64",
        "kb-product-doc-kibana",
    }
    # SPDX 2.3 from the same document, accepted by spdx-tools' own validator
    spdx = json.loads(spdx_document(doc))
    parsed = JsonLikeDictParser().parse(spdx)
    assert validate_full_spdx_document(parsed) == []
    checksums = {
        c["checksumValue"] for p in spdx["packages"] for c in p.get("checksums", [])
    }
    assert set(stated.values()) <= checksums
    assert summarize(doc).model_files == sum(1 for p in by_path if p.startswith("models/"))


def test_sbom_and_bundle_are_reproducible(
    tmp_path: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devkit.demo_data import make_demo_sources

    # midnight today: fixed for both builds, and recent enough that the bundle is not
    # already expired (build refuses that)
    epoch = int(time.time()) // 86400 * 86400
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
    outs = []
    for n in (1, 2):
        src = tmp_path / f"src{n}"
        src.mkdir()
        out = tmp_path / f"b{n}.tar"
        build_bundle(make_demo_sources(src), out, key)
        outs.append(out)
    assert member(outs[0], SBOM_PATH) == member(outs[1], SBOM_PATH)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    doc = json.loads(member(outs[0], SBOM_PATH))
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat()
    assert doc["metadata"]["timestamp"] == stamp


def test_card_is_read_bounded(tmp_path: Path) -> None:
    from bundler.bundle.plan import Payload

    assert front_matter("---\nlicense: mit\n---\nx") == {"license": "mit"}
    assert front_matter("no front matter") is None
    assert front_matter("---\n: [unclosed\n---\n") is None
    big = ("---\nlicense: mit\n---\n" + "x" * MAX_CARD).encode()
    facts = model_facts([Payload("models/m/README.md", big)], "models/m/")
    assert facts.licence is None and "larger than" in facts.notes[0]


def test_a_signed_index_may_carry_only_the_one_sbom_member(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    from bundler.bundle.index import FileEntry, Index
    from bundler.errors import BundleError

    out = tmp_path / "b.tar"
    build_bundle(demo_manifest, out, key)
    index = read_head(str(out)).index
    check_signed_names(index)
    extra = FileEntry(path="sbom/other.json", size=0, sha256="0" * 64, chunks=["0" * 64])
    doc = index.model_dump(mode="json")
    doc["files"] = sorted([*doc["files"], extra.model_dump()], key=lambda f: f["path"])
    with pytest.raises(BundleError, match="sbom/other.json"):
        check_signed_names(Index.model_validate(doc))
