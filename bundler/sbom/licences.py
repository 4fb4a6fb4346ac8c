"""Model licences: a Hugging Face licence id to SPDX, offline, and who must accept what.

The SPDX License List (ids, names, the OSI-approved flag) ships with the code as
``spdx-licenses.json`` (see its ``source``), so the answer never depends on a network.
A Hugging Face id maps to SPDX through :data:`HF_TO_SPDX` or, failing that, a
case-insensitive match of an SPDX id; anything else becomes ``LicenseRef-<id>``.

A licence needs an explicit acceptance (``license_accepted:`` in the manifest at build
time, ``--accept-license`` at install time) when the model is gated, or its licence is
not OSI-approved, unknown, ``other`` or missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from bundler.errors import LicenseError
from bundler.pins import LicensePin

UNKNOWN = "unknown"

# Hugging Face's licence ids whose SPDX id is not the same word (or is deprecated there).
# Ids that are the SPDX id in other case (apache-2.0, mit, bsl-1.0, cc-by-4.0, ...) are
# matched against the SPDX list directly. Unversioned families (gpl, lgpl, bsd, cc, gfdl)
# name no one licence and become LicenseRef-*.
HF_TO_SPDX = {
    "agpl-3.0": "AGPL-3.0-only",
    "gpl-2.0": "GPL-2.0-only",
    "gpl-3.0": "GPL-3.0-only",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-3.0": "LGPL-3.0-only",
    "lgpl-lr": "LGPL-3.0-only",
    "c-uda": "C-UDA-1.0",
    "odbl": "ODbL-1.0",
    "odc-by": "ODC-By-1.0",
    "pddl": "PDDL-1.0",
    "cc0-1.0": "CC0-1.0",
    "bsd-3-clause-clear": "BSD-3-Clause-Clear",
    "ecl-2.0": "ECL-2.0",
    "openmdw-1.0": "OpenMDW-1.0",
}
_REF_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class SpdxLicence:
    id: str
    name: str
    osi_approved: bool
    deprecated: bool


@cache
def _spdx_list() -> tuple[str, dict[str, SpdxLicence]]:
    raw = resources.files("bundler.sbom").joinpath("spdx-licenses.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(raw)
    table = {
        key: SpdxLicence(key, str(v[0]), bool(v[1]), bool(v[2]))
        for key, v in doc["licenses"].items()
    }
    return str(doc["licenseListVersion"]), table


def licence_list_version() -> str:
    return _spdx_list()[0]


def spdx_licence(spdx_id: str) -> SpdxLicence | None:
    """The SPDX list's entry for ``spdx_id`` (exact id), or None."""
    return _spdx_list()[1].get(spdx_id)


@cache
def _lower_ids() -> dict[str, str]:
    return {k.lower(): k for k in _spdx_list()[1]}


def to_spdx(hf_id: str) -> str:
    """The SPDX id for a Hugging Face licence id, else ``LicenseRef-<id>``."""
    key = hf_id.strip().lower()
    found = HF_TO_SPDX.get(key) or _lower_ids().get(key)
    if found and not _spdx_list()[1][found].deprecated:
        return found
    return "LicenseRef-" + (_REF_CHARS.sub("-", hf_id.strip()).strip("-") or UNKNOWN)


@dataclass(frozen=True)
class CardLicence:
    """What the model card's front matter (and the repo's files) say about the licence."""

    license: tuple[str, ...] = ()  # ``license:`` (a string or a list in cards)
    name: str | None = None  # ``license_name:`` (for ``other``)
    link: str | None = None  # ``license_link:``
    gated_prompt: bool = False  # ``extra_gated_prompt`` / ``extra_gated_fields`` present
    files: tuple[str, ...] = ()  # LICENSE* files beside the card


def model_licence(card: CardLicence | None, hub_gated: str | None) -> LicensePin:
    """Decide the model's licence pin from its card and the hub's gated flag."""
    gated = bool(hub_gated) or bool(card and card.gated_prompt)
    ids = list(card.license) if card else []
    if not ids:
        unknown = "LicenseRef-" + UNKNOWN
        return LicensePin(
            id=UNKNOWN, spdx=unknown, osi_approved=False, gated=gated, needs_acceptance=True
        )
    named = [(card.name or i) if i.lower() == "other" and card is not None else i for i in ids]
    spdx = [to_spdx(i) for i in named]
    osi = all((s := spdx_licence(x)) is not None and s.osi_approved for x in spdx)
    vague = any(i.lower() in ("other", UNKNOWN) for i in ids)
    return LicensePin(
        id=" AND ".join(named),
        spdx=" AND ".join(spdx),
        osi_approved=osi,
        gated=gated,
        needs_acceptance=gated or not osi or vague,
    )


def why_acceptance(pin: LicensePin) -> str:
    """Why ``pin`` needs an explicit acceptance, in words (empty when it does not)."""
    if not pin.needs_acceptance:
        return ""
    reasons = []
    if pin.id == UNKNOWN:
        reasons.append("no licence is stated (no model card with `license:`)")
    elif not pin.osi_approved:
        reasons.append("not OSI-approved")
    if pin.gated:
        reasons.append("the model is gated")
    return "; ".join(reasons) or "its licence is not one airgap can name"


def describe(pin: LicensePin) -> str:
    """One line: ``llama3.3 (LicenseRef-llama3.3; not OSI-approved; gated)``."""
    notes = [pin.spdx, "OSI-approved" if pin.osi_approved else "not OSI-approved"]
    if pin.gated:
        notes.append("gated")
    return f"{pin.id} ({'; '.join(notes)})"


def accepts(pin: LicensePin, given: str | None) -> bool:
    """Whether the acceptance ``given`` names this licence (its id or SPDX id, any case)."""
    return given is not None and given.strip().lower() in (pin.id.lower(), pin.spdx.lower())


def check_build_acceptance(pin: LicensePin, accepted: str | None, *, manifest: str) -> None:
    """Refuse a model whose licence needs acceptance the manifest does not give.

    Raises:
        LicenseError: acceptance needed and missing, or given for another licence.
    """
    if accepted is not None and not accepts(pin, accepted):
        raise LicenseError(
            f"{manifest}: model.license_accepted is {accepted!r}, but the model's licence "
            f"is {describe(pin)}",
            hint=f"Read the model's licence; if you accept it, set "
            f"`license_accepted: {pin.id}` under `model:`.",
        )
    if pin.needs_acceptance and accepted is None:
        raise LicenseError(
            f"{manifest}: the model's licence is {describe(pin)}: {why_acceptance(pin)}; "
            "airgap builds it only when the manifest accepts it",
            hint=f"Read the licence (the model card, LICENSE files); if you accept it on "
            f"behalf of your organisation, add `license_accepted: {pin.id}` under `model:`.",
        )
