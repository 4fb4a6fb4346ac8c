"""What the SBOM states, gathered at build time, and a summary read back from the document.

:class:`SbomInput` is everything the build knows before the payload is hashed; the
file hashes arrive later (the writer's entries) and are filled in by
:func:`bundler.sbom.cyclonedx.render`. :func:`summarize` reads a CycloneDX document
(the signed member) back into counts and licences for ``build``, ``inspect`` and ``sbom``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bundler.bundle.index import ImageEntry
from bundler.pins import LicensePin
from bundler.sbom.card import ModelFacts
from bundler.sbom.layers import ImageFacts

SBOM_PATH = "sbom/cyclonedx.json"
PROP = "airgap:"  # prefix of our CycloneDX property names


@dataclass(frozen=True)
class SbomInput:
    name: str
    version: int
    created: datetime
    tool: str
    served_name: str
    repo: str | None  # Hugging Face repo, or None for a local ``path:`` model
    commit: str | None
    hub_gated: str | None
    licence: LicensePin
    accepted: str | None  # the manifest's ``license_accepted``
    facts: ModelFacts
    model_files: tuple[str, ...]  # bundle paths under models/<served_name>/
    images: tuple[tuple[ImageEntry, ImageFacts], ...]
    elastic_files: tuple[str, ...]  # bundle paths under elastic/

    @property
    def model_prefix(self) -> str:
        return f"models/{self.served_name}/"


@dataclass(frozen=True)
class SbomSummary:
    """Counts and licences, as ``build``, ``inspect`` and ``sbom`` show them."""

    components: int  # every component, nested ones included
    model_files: int
    images: dict[str, dict[str, int]]  # role -> package kind -> count
    model_licence: str  # one line: id (SPDX; OSI; gated)
    licences: dict[str, int] = field(default_factory=dict)  # package licences, by count

    @property
    def packages(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.images.values())

    def to_json(self) -> dict[str, object]:
        return {
            "components": self.components,
            "model_files": self.model_files,
            "packages": self.packages,
            "images": self.images,
            "model_licence": self.model_licence,
            "package_licences": self.licences,
        }

    def lines(self) -> list[str]:
        """The summary as text lines (the demo and the CLI print these)."""
        per_image = "; ".join(
            f"{role}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            if kinds
            else f"{role}: no package database"
            for role, kinds in sorted(self.images.items())
        )
        top = sorted(self.licences.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
        out = [
            f"SBOM: {self.components} components: model ({self.model_files} files), "
            f"{len(self.images)} images, {self.packages} packages",
            f"  model licence: {self.model_licence}",
        ]
        if per_image:
            out.append(f"  packages: {per_image}")
        if top:
            out.append("  package licences: " + ", ".join(f"{k} ({n})" for k, n in top))
        return out


def _props(c: dict[str, Any]) -> dict[str, str]:
    return {str(p.get("name")): str(p.get("value")) for p in c.get("properties") or []}


def _walk(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in components:
        out.append(c)
        out += _walk(c.get("components") or [])
    return out


def _licence_names(c: dict[str, Any]) -> list[str]:
    names = []
    for lic in c.get("licenses") or []:
        if "expression" in lic:
            names.append(str(lic["expression"]))
        elif isinstance(lic.get("license"), dict):
            inner = lic["license"]
            names.append(str(inner.get("id") or inner.get("name")))
    return names


def summarize(doc: dict[str, Any]) -> SbomSummary:
    """Counts and licences of an airgap CycloneDX document."""
    top = doc.get("components") or []
    model_files = 0
    model_licence = "not recorded"
    images: dict[str, dict[str, int]] = {}
    licences: Counter[str] = Counter()
    for c in top:
        props = _props(c)
        if c.get("type") == "machine-learning-model" and PROP + "served_name" in props:
            model_files = len(c.get("components") or [])
            model_licence = props.get(PROP + "license", model_licence)
        if c.get("type") == "container":
            kinds: Counter[str] = Counter()
            for p in c.get("components") or []:
                if p.get("type") == "library":
                    kinds[str(p.get("purl", "pkg:?/")).split("/", 1)[0].removeprefix("pkg:")] += 1
                    licences.update(_licence_names(p))
            images[props.get(PROP + "role", str(c.get("name")))] = dict(kinds)
    return SbomSummary(len(_walk(top)), model_files, images, model_licence, dict(licences))
