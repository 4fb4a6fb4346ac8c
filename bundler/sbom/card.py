"""What a model says about itself: the card's YAML front matter, config.json, LICENSE files.

Everything here is read with a bound before its first byte (a card, a config or a
licence file larger than its cap is treated as absent and named in ``notes``), parsed
with ``yaml.safe_load``/``json.loads``, and reduced to strings and lists of strings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from bundler.bundle.plan import LateBytes, Payload
from bundler.hashing import FileRange
from bundler.sbom.licences import CardLicence

MAX_CARD = 4 * 1024 * 1024
MAX_CONFIG = 16 * 1024 * 1024
MAX_LICENCE_TEXT = 1024 * 1024
LICENCE_PREFIXES = ("LICENSE", "LICENCE", "USE_POLICY")
# Front-matter keys that go into the SBOM's modelCard (strings or lists of strings).
CARD_KEYS = (
    "base_model",
    "pipeline_tag",
    "library_name",
    "language",
    "datasets",
    "tags",
    "license",
    "license_name",
    "license_link",
    "model_name",
)
_MAX_ITEMS = 200
_MAX_TEXT = 1000


@dataclass(frozen=True)
class ModelFacts:
    card: dict[str, str | list[str]] = field(default_factory=dict)
    licence: CardLicence | None = None  # None: no card, or a card without front matter
    architecture: str | None = None  # config.json ``architectures[0]``
    model_type: str | None = None  # config.json ``model_type``
    licence_texts: dict[str, str] = field(default_factory=dict)  # LICENSE* name -> text
    notes: tuple[str, ...] = ()


def read_bounded(source: FileRange | bytes | LateBytes, cap: int) -> bytes | None:
    """The bytes of ``source`` if it holds at most ``cap`` of them, else None."""
    if isinstance(source, bytes):
        return source if len(source) <= cap else None
    if isinstance(source, LateBytes) or source.size > cap:
        return None
    with open(source.path, "rb") as f:
        data = os.pread(f.fileno(), source.size, source.offset)
    return data if len(data) == source.size else None


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML mapping between a card's leading ``---`` lines, or None."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for end in range(1, len(lines)):
        if lines[end].strip() == "---":
            try:
                doc = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def _clean(value: Any) -> str | list[str] | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, list):
        items = [str(v)[:_MAX_TEXT] for v in value[:_MAX_ITEMS] if isinstance(v, str | int | float)]
        return items or None
    return None


def card_facts(
    doc: dict[str, Any], files: Sequence[str]
) -> tuple[dict[str, str | list[str]], CardLicence]:
    """The modelCard values and the licence statement of a card's front matter."""
    card = {k: v for k in CARD_KEYS if (v := _clean(doc.get(k))) is not None}
    lic = card.get("license")
    ids = tuple([lic] if isinstance(lic, str) else (lic or []))
    name, link = card.get("license_name"), card.get("license_link")
    return card, CardLicence(
        license=tuple(i.strip() for i in ids if i.strip()),
        name=name if isinstance(name, str) else None,
        link=link if isinstance(link, str) else None,
        gated_prompt=any(k in doc for k in ("extra_gated_prompt", "extra_gated_fields")),
        files=tuple(files),
    )


def model_facts(payloads: Sequence[Payload], prefix: str) -> ModelFacts:
    """Read the card, config.json and LICENSE* files among ``payloads`` under ``prefix``.

    ``prefix`` is the model's directory in the bundle (``models/<served_name>/``).
    """
    top = {p.path[len(prefix) :]: p for p in payloads if p.path.startswith(prefix)}
    top = {k: v for k, v in top.items() if "/" not in k}
    notes: list[str] = []
    licence_files = sorted(k for k in top if k.upper().startswith(LICENCE_PREFIXES))
    texts: dict[str, str] = {}
    for name in licence_files:
        data = read_bounded(top[name].source, MAX_LICENCE_TEXT)
        if data is None:
            notes.append(f"{name}: larger than {MAX_LICENCE_TEXT} bytes, not read")
        else:
            texts[name] = data.decode("utf-8", "replace")
    card: dict[str, str | list[str]] = {}
    licence = CardLicence(files=tuple(licence_files)) if licence_files else None
    if "README.md" in top:
        data = read_bounded(top["README.md"].source, MAX_CARD)
        doc = front_matter(data.decode("utf-8", "replace")) if data is not None else None
        if data is None:
            notes.append(f"README.md: larger than {MAX_CARD} bytes, not read")
        elif doc is None:
            notes.append("README.md: no YAML front matter")
        else:
            card, licence = card_facts(doc, licence_files)
    architecture = model_type = None
    if "config.json" in top:
        data = read_bounded(top["config.json"].source, MAX_CONFIG)
        try:
            config = json.loads(data) if data is not None else None
        except ValueError:
            config = None
        if isinstance(config, dict):
            archs = config.get("architectures")
            if isinstance(archs, list) and archs and isinstance(archs[0], str):
                architecture = archs[0]
            if isinstance(config.get("model_type"), str):
                model_type = config["model_type"]
        else:
            notes.append("config.json: not a JSON object (or too large), not read")
    return ModelFacts(card, licence, architecture, model_type, texts, tuple(notes))
