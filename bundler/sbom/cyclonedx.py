"""The bundle's SBOM as CycloneDX 1.6 JSON, made with ``cyclonedx-python-lib``.

Byte for byte reproducible: every ``bom-ref`` is named (never a random UUID), the
serial number is derived from the bundle's name, version, creation time and every
file's sha256, the timestamp is the bundle's ``created`` (``SOURCE_DATE_EPOCH``), and
the library sorts every set it writes. The file hashes have a fixed length, so the
document's size is known before they are: the writer reserves it, then calls
:func:`render` with the real entries (see ``bundler.bundle.plan.LateBytes``).

The library has no model card type yet, so ``modelCard`` (CycloneDX 1.6) is added to
the model component's JSON after serialisation; the schema validation in the tests
covers it.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from cyclonedx.model import (
    AttachedText,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType, Pedigree
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from bundler.bundle.index import BLOB_PREFIX, FileEntry, ImageEntry
from bundler.names import DOC_FILE_RE, ELSER_FILE_RE
from bundler.oci.ref import parse_ref
from bundler.sbom.layers import ImageFacts
from bundler.sbom.licences import describe, licence_list_version, spdx_licence
from bundler.sbom.model import PROP, SbomInput

_ELSER_VERSION = re.compile(r"_model_(\d+)")
License = DisjunctiveLicense | LicenseExpression


def _prop(name: str, value: object) -> Property:
    return Property(name=PROP + name, value=str(value))


def _sha(hexdigest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)


def licence_of(text: str | None) -> list[License]:
    """A package's licence string as CycloneDX: an SPDX id, an expression, or a name."""
    if not text:
        return []
    if spdx_licence(text) is not None:
        return [DisjunctiveLicense(id=text)]
    words = re.split(r"\s+(?:AND|OR|WITH)\s+|[()]", text)
    if len(words) > 1 and all(spdx_licence(w.strip()) for w in words if w.strip()):
        return [LicenseExpression(text)]
    return [DisjunctiveLicense(name=text[:200])]


def _model_component(inp: SbomInput, hashes: dict[str, str]) -> Component:
    lic, facts = inp.licence, inp.facts
    card_lic = facts.licence
    text = next(iter(facts.licence_texts.values()), None)
    url = XsUri(card_lic.link) if card_lic and card_lic.link else None
    if spdx_licence(lic.spdx) is not None:
        licences: list[License] = [DisjunctiveLicense(id=lic.spdx, url=url)]
    elif " AND " in lic.spdx:
        licences = [LicenseExpression(lic.spdx)]
    else:
        attached = AttachedText(content=text) if text else None
        licences = [DisjunctiveLicense(name=lic.spdx, url=url, text=attached)]
    files = [
        Component(
            type=ComponentType.FILE,
            name=path[len(inp.model_prefix) :],
            bom_ref=f"model-file:{path}",
            hashes=[_sha(hashes[path])],
            properties=[_prop("bundle_path", path)],
        )
        for path in inp.model_files
    ]
    props = [
        _prop("served_name", inp.served_name),
        _prop("license", describe(lic)),
        _prop("license.id", lic.id),
        _prop("license.osi_approved", str(lic.osi_approved).lower()),
        _prop("license.gated", str(lic.gated).lower()),
    ]
    if inp.accepted:
        props.append(_prop("license.accepted_by_builder", inp.accepted))
    purl = None
    if inp.repo:
        purl = PackageURL(type="huggingface", name=inp.repo, version=inp.commit)
        props.append(_prop("source", f"huggingface:{inp.repo}@{inp.commit}"))
    else:
        props.append(_prop("source", "local directory (model.path)"))
    bases = facts.card.get("base_model")
    ancestors = [
        Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            name=b,
            bom_ref=f"base-model:{b}",
            purl=PackageURL(type="huggingface", name=b) if "/" in b else None,
        )
        for b in ([bases] if isinstance(bases, str) else bases or [])
    ]
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=inp.repo or inp.served_name,
        version=inp.commit,
        bom_ref="model",
        purl=purl,
        licenses=licences,
        properties=props,
        components=files,
        pedigree=Pedigree(ancestors=ancestors) if ancestors else None,
    )


def _image_component(img: ImageEntry, facts: ImageFacts) -> Component:
    try:
        ref = parse_ref(img.ref)
    except ValueError:
        ref = None
    name = ref.repository.rsplit("/", 1)[-1] if ref else img.role
    arch = img.platform.split("/")[1] if img.platform.count("/") >= 1 else None
    qualifiers = {"arch": arch} if arch else {}
    if ref:
        qualifiers["repository_url"] = f"{ref.registry}/{ref.repository}"
    purl = PackageURL(type="oci", name=name, version=img.manifest_digest, qualifiers=qualifiers)
    props = [
        _prop("role", img.role),
        _prop("ref", img.ref),
        _prop("platform", img.platform),
        _prop("config_digest", img.config_digest),
        _prop("manifest_media_type", img.manifest_media_type),
    ]
    for i, la in enumerate(img.layers):
        props.append(_prop(f"layer.{i:03d}", f"{la.digest} {la.size} {la.media_type}"))
    inner: list[Component] = []
    osr = facts.os_release
    if osr:
        inner.append(
            Component(
                type=ComponentType.OPERATING_SYSTEM,
                name=osr.id,
                version=osr.version_id,
                description=osr.pretty_name,
                bom_ref=f"image:{img.role}:os",
            )
        )
    for n, pkg in enumerate(facts.packages):
        inner.append(
            Component(
                type=ComponentType.LIBRARY,
                name=pkg.name,
                version=pkg.version,
                purl=PackageURL.from_string(pkg.purl(osr)),
                bom_ref=f"image:{img.role}:pkg:{n:05d}",
                licenses=licence_of(pkg.licence),
                properties=[_prop("found_in", pkg.found_in)],
            )
        )
    return Component(
        type=ComponentType.CONTAINER,
        name=name,
        version=img.manifest_digest,
        bom_ref=f"image:{img.role}",
        purl=purl,
        hashes=[_sha(img.manifest_digest.removeprefix("sha256:"))],
        properties=props,
        components=inner,
    )


def _elastic_components(paths: Sequence[str], hashes: dict[str, str]) -> list[Component]:
    out: list[Component] = []
    elser: dict[str, list[str]] = {}
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if e := ELSER_FILE_RE.match(name):
            elser.setdefault(e["id"], []).append(path)
        elif d := DOC_FILE_RE.match(name):
            out.append(
                Component(
                    type=ComponentType.DATA,
                    name=f"kb-product-doc-{d['product']}",
                    version=d["ver"],
                    group="elastic",
                    bom_ref=f"elastic:{path}",
                    hashes=[_sha(hashes[path])],
                    properties=[_prop("bundle_path", path)],
                )
            )
    for model_id, files in sorted(elser.items()):
        m = _ELSER_VERSION.search(model_id)
        out.append(
            Component(
                type=ComponentType.MACHINE_LEARNING_MODEL,
                name=model_id,
                version=m.group(1) if m else None,
                group="elastic",
                bom_ref=f"elastic:elser:{model_id}",
                components=[
                    Component(
                        type=ComponentType.FILE,
                        name=p.rsplit("/", 1)[-1],
                        bom_ref=f"elastic:{p}",
                        hashes=[_sha(hashes[p])],
                        properties=[_prop("bundle_path", p)],
                    )
                    for p in sorted(files)
                ],
            )
        )
    return out


def model_card(inp: SbomInput) -> dict[str, Any]:
    """CycloneDX ``modelCard``: what the card states, the architecture, the gated flag."""
    facts, card = inp.facts, inp.facts.card
    params: dict[str, Any] = {}
    if isinstance(card.get("pipeline_tag"), str):
        params["task"] = card["pipeline_tag"]
    if facts.model_type:
        params["architectureFamily"] = facts.model_type
    if facts.architecture:
        params["modelArchitecture"] = facts.architecture
    datasets = card.get("datasets")
    if datasets:
        names = [datasets] if isinstance(datasets, str) else datasets
        params["datasets"] = [{"type": "dataset", "name": n} for n in names]
    props = [{"name": PROP + "gated", "value": str(inp.licence.gated).lower()}]
    if inp.hub_gated:
        props.append({"name": PROP + "hub.gated", "value": inp.hub_gated})
    for key, value in sorted(card.items()):
        text = value if isinstance(value, str) else ", ".join(value)
        props.append({"name": f"{PROP}card.{key}", "value": text})
    for note in facts.notes:
        props.append({"name": PROP + "note", "value": note})
    out: dict[str, Any] = {"bom-ref": "model-card"}
    if params:
        out["modelParameters"] = params
    out["properties"] = props
    return out


def serial(inp: SbomInput, entries: Sequence[FileEntry]) -> uuid.UUID:
    """A serial number that names exactly this content (same inputs, same number)."""
    h = hashlib.sha256(f"{inp.name}\0{inp.version}\0{inp.created.isoformat()}".encode())
    for e in entries:
        h.update(f"\0{e.path}\0{e.sha256}".encode())
    return uuid.UUID(bytes=h.digest()[:16], version=5)


def render(inp: SbomInput, entries: Sequence[FileEntry]) -> bytes:
    """The CycloneDX 1.6 JSON document, given every other payload file's entry."""
    hashes = {e.path: e.sha256 for e in entries}
    model = _model_component(inp, hashes)
    images = [_image_component(img, facts) for img, facts in inp.images]
    elastic = _elastic_components(inp.elastic_files, hashes)
    tool_version = inp.tool.split(" ", 1)[-1]
    tools = ToolRepository(
        components=[
            Component(
                type=ComponentType.APPLICATION,
                name="airgap",
                version=tool_version,
                bom_ref="tool:airgap",
            )
        ]
    )
    subject = Component(
        type=ComponentType.APPLICATION,
        name=inp.name,
        version=str(inp.version),
        bom_ref="bundle",
        description="airgap bundle: a model, its serving images and Elastic artifacts",
    )
    bom = Bom(
        serial_number=serial(inp, entries),
        metadata=BomMetaData(
            timestamp=inp.created,
            tools=tools,
            component=subject,
            properties=[
                _prop("spdx_license_list", licence_list_version()),
                _prop("blob_prefix", BLOB_PREFIX),
            ],
        ),
        components=[model, *images, *elastic],
    )
    bom.register_dependency(subject, [model, *images, *elastic])
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    for c in doc.get("components", []):
        if c.get("bom-ref") == "model":
            c["modelCard"] = model_card(inp)
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
