"""SPDX 2.3 JSON from the signed CycloneDX member, with ``spdx-tools`` (and its validator).

The same data, in SPDX's shape: every CycloneDX component becomes a package (SPDX 2.3
files need a SHA-1, which the bundle does not record, so model and artifact files are
packages of purpose FILE with their SHA-256), nesting becomes ``CONTAINS``, base models
``DESCENDANT_OF``, purls external references, and a licence the SPDX list does not name
a ``LicenseRef-`` with its extracted text (the LICENSE file when the card had one).
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Any

from license_expression import ExpressionError, get_spdx_licensing
from spdx_tools.spdx.model.actor import Actor, ActorType
from spdx_tools.spdx.model.checksum import Checksum, ChecksumAlgorithm
from spdx_tools.spdx.model.document import CreationInfo, Document
from spdx_tools.spdx.model.extracted_licensing_info import ExtractedLicensingInfo
from spdx_tools.spdx.model.package import (
    ExternalPackageRef,
    ExternalPackageRefCategory,
    Package,
    PackagePurpose,
)
from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
from spdx_tools.spdx.model.version import Version
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

from bundler.errors import AirgapError
from bundler.sbom.licences import licence_list_version

_PURPOSE = {
    "application": PackagePurpose.APPLICATION,
    "container": PackagePurpose.CONTAINER,
    "library": PackagePurpose.LIBRARY,
    "operating-system": PackagePurpose.OPERATING_SYSTEM,
    "file": PackagePurpose.FILE,
    "framework": PackagePurpose.FRAMEWORK,
}
_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


class _Builder:
    def __init__(self) -> None:
        self.packages: list[Package] = []
        self.relationships: list[Relationship] = []
        self.extracted: dict[str, ExtractedLicensingInfo] = {}
        self.ids: dict[str, str] = {}
        self.licensing = get_spdx_licensing()

    def spdx_id(self, bom_ref: str) -> str:
        if bom_ref not in self.ids:
            base = "SPDXRef-" + (_ID_CHARS.sub("-", bom_ref).strip("-") or "x")
            taken = set(self.ids.values())
            sid, n = base, 1
            while sid in taken:
                n += 1
                sid = f"{base}-{n}"
            self.ids[bom_ref] = sid
        return self.ids[bom_ref]

    def licence_ref(self, name: str, text: str | None) -> str:
        bare = _ID_CHARS.sub("-", name.removeprefix("LicenseRef-")).strip("-")
        ref = "LicenseRef-" + (bare or "x")
        if ref not in self.extracted:
            self.extracted[ref] = ExtractedLicensingInfo(
                license_id=ref,
                extracted_text=text or f"{name} (no licence text in the bundle; see the source)",
                license_name=name,
            )
        return ref

    def declared(self, component: dict[str, Any]) -> Any:
        terms = []
        for lic in component.get("licenses") or []:
            if "expression" in lic:
                terms.append(str(lic["expression"]))
                continue
            inner = lic.get("license") or {}
            if inner.get("id"):
                terms.append(str(inner["id"]))
            elif inner.get("name"):
                text = (inner.get("text") or {}).get("content")
                terms.append(self.licence_ref(str(inner["name"]), text))
        if not terms:
            return SpdxNoAssertion()
        expression = " AND ".join(f"({t})" if " " in t else t for t in terms)
        try:
            return self.licensing.parse(expression, validate=False)
        except ExpressionError:
            return self.licensing.parse(self.licence_ref(expression, None))

    def add(self, component: dict[str, Any], parent: str | None) -> str:
        sid = self.spdx_id(str(component.get("bom-ref") or component.get("name")))
        refs = []
        if component.get("purl"):
            refs.append(
                ExternalPackageRef(
                    ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", str(component["purl"])
                )
            )
        checksums = [
            Checksum(ChecksumAlgorithm.SHA256, str(h["content"]))
            for h in component.get("hashes") or []
            if h.get("alg") == "SHA-256"
        ]
        comment = "; ".join(f"{p['name']}={p['value']}" for p in component.get("properties") or [])
        self.packages.append(
            Package(
                spdx_id=sid,
                name=str(component.get("name")),
                download_location=SpdxNoAssertion(),
                version=component.get("version"),
                supplier=SpdxNoAssertion(),
                files_analyzed=False,
                checksums=checksums,
                license_concluded=SpdxNoAssertion(),
                license_declared=self.declared(component),
                copyright_text=SpdxNoAssertion(),
                description=component.get("description"),
                comment=comment or None,
                external_references=refs,
                primary_package_purpose=_PURPOSE.get(
                    str(component.get("type")), PackagePurpose.OTHER
                ),
            )
        )
        if parent is not None:
            self.relationships.append(Relationship(parent, RelationshipType.CONTAINS, sid))
        for child in component.get("components") or []:
            self.add(child, sid)
        for base in (component.get("pedigree") or {}).get("ancestors") or []:
            bid = self.add(base, None)
            self.relationships.append(Relationship(sid, RelationshipType.DESCENDANT_OF, bid))
        return sid


def to_spdx(cdx: dict[str, Any]) -> bytes:
    """The SPDX 2.3 JSON document for an airgap CycloneDX document, validated.

    Raises:
        AirgapError: spdx-tools' validator refused the result (a bug: report it).
    """
    meta = cdx.get("metadata") or {}
    subject = meta.get("component") or {"name": "bundle", "bom-ref": "bundle"}
    b = _Builder()
    root = b.add({**subject, "components": cdx.get("components") or []}, None)
    serial = str(cdx.get("serialNumber", "")).removeprefix("urn:uuid:")
    tool: dict[str, Any] = next(iter((meta.get("tools") or {}).get("components") or []), {})
    doc = Document(
        CreationInfo(
            spdx_version="SPDX-2.3",
            spdx_id="SPDXRef-DOCUMENT",
            name=f"{subject.get('name')}-{subject.get('version')}",
            document_namespace=f"https://spdx.org/spdxdocs/airgap-{subject.get('name')}-{serial}",
            creators=[Actor(ActorType.TOOL, f"airgap-{tool.get('version', 'unknown')}")],
            created=datetime.fromisoformat(str(meta.get("timestamp"))),
            license_list_version=_version(licence_list_version()),
            document_comment="Made from the bundle's signed CycloneDX SBOM "
            f"{cdx.get('serialNumber')}.",
        ),
        packages=b.packages,
        relationships=[
            Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, root),
            *b.relationships,
        ],
        extracted_licensing_info=list(b.extracted.values()),
    )
    problems = validate_full_spdx_document(doc)
    if problems:
        raise AirgapError(
            f"the SPDX document does not validate: {problems[0].validation_message}",
            hint="This is a bug in airgap's SPDX conversion; the CycloneDX SBOM is unaffected.",
        )
    out = io.StringIO()
    write_document_to_stream(doc, out, validate=False)
    return out.getvalue().encode("utf-8")


def _version(text: str) -> Version:
    major, _, minor = text.partition(".")
    return Version(int(major), int(minor or 0))
