"""Names that come from a manifest or a signed index, and everything derived from them.

A trusted signature means "from our builder", not "harmless": a careless or compromised
builder can sign ``served_name: x/../../secrets`` or ``images[].ref: victim/app:1``. So
names are checked against their grammar twice (in the manifest, and again on the
signed index at install), and every path, mount, container name and tag on the host
is *derived* here, through :func:`slug` and :func:`contained`, never spelled from a raw
name at the call site.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# ``org/Name`` as on Hugging Face and in Elastic's guides: segments of letters, digits,
# ``.``, ``_`` and ``-`` that start with a letter or digit (so no segment is empty, ``.``
# or ``..``), joined by ``/``. No ``:`` either: the name becomes a host path, and a bind
# mount is written ``source:target:mode``.
SERVED_NAME_RE = re.compile(r"^(?=.{1,128}$)[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)*$", re.ASCII)
BUNDLE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
IMAGE_ROLES = ("nginx", "vllm")
E5_IDS = ("multilingual-e5-small", "multilingual-e5-small_linux-x86_64")
# The model repository's ids (``elastic.elser`` has always taken the E5 ones too).
ELSER_IDS = ("elser_model_2", "elser_model_2_linux-x86_64", *E5_IDS)
# The only file names a bundle carries under elastic/elser/ and elastic/product-docs/
# (the ids go into Elasticsearch API paths, the names into Nginx and a listing).
ELSER_FILE_RE = re.compile(
    r"^(?P<id>" + "|".join(re.escape(i) for i in ELSER_IDS) + r")\.(metadata\.json|pt|vocab\.json)$"
)
# Knowledge-base artifacts Kibana reads from one repository (``@kbn/product-doc-common``):
# ``kb-product-doc-<product>-<maj.min>.zip`` (``openapi`` is a product here too) and
# ``security-labs-<YYYY.MM.DD[-HHMMSS]>.zip``, each built for one embedding endpoint: a
# non-ELSER one (E5) adds ``--<inference id>`` (Kibana's grammar for it), an ELSER one
# adds nothing, so ``--`` followed by an id that names ELSER is no name Kibana asks for.
INFERENCE_SUFFIX_RE = r"\.?[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?"
DOC_FILE_RE = re.compile(
    r"^(?:kb-product-doc-(?P<product>[a-z]+)-(?P<ver>[0-9]+\.[0-9]+)"
    r"|security-labs-(?P<date>[0-9]{4}\.[0-9]{2}\.[0-9]{2}(?:-[0-9]{6})?))"
    r"(?:--(?!\S*elser)(?P<inference>" + INFERENCE_SUFFIX_RE + r"))?\.zip$"
)


def implies_elser(inference_id: str | None) -> bool:
    """Kibana's rule (``isImpliedDefaultElserInferenceId``): no id, or one that names ELSER,
    means the unsuffixed artifacts."""
    return inference_id is None or "elser" in inference_id.lower()


def doc_suffix(inference_id: str | None) -> str:
    """The ``--<inference id>`` part of a knowledge-base artifact's name ('' for ELSER)."""
    return "" if implies_elser(inference_id) else f"--{inference_id}"


# One path component of an image repository (the strictest of the three grammars a slug
# must satisfy: repository component, tag, container name).
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_SLUG_MAX = 63
# The namespace of the tags install creates. ``localhost/`` makes the name the same in
# Docker and Podman (which qualifies short names with it) and never resolvable on a
# public registry.
TAG_NAMESPACE = "localhost/airgap"


def served_name_problem(name: str) -> str | None:
    """Why ``name`` is not an acceptable ``served_name``, or None."""
    if SERVED_NAME_RE.fullmatch(name):
        return None
    if re.search(r"[\x00-\x1f\x7f\\]", name):
        return "no control characters or backslashes"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "no empty, '.' or '..' segment"
    return (
        "1-128 characters: segments of letters, digits, '.', '_' and '-' that start with "
        "a letter or digit, joined by '/' (like mistralai/Mistral-Small-3.2-24B-Instruct-2506)"
    )


def check_served_name(name: str) -> str:
    """Raises:
    ValueError: ``name`` breaks the grammar (the message says which rule)."""
    problem = served_name_problem(name)
    if problem:
        raise ValueError(f"{name!r} is not a served name: {problem}")
    return name


def slug(text: str) -> str:
    """A name safe as a path component, a container name, an image repository component
    and a tag: ``text`` itself when it already is one without ``--`` (so every usual
    bundle name keeps its containers and paths), otherwise a lower-case rendering, ``--``
    and a hash of the original, so two different names never share a slug.
    """
    if _COMPONENT_RE.fullmatch(text) and len(text) <= _SLUG_MAX and "--" not in text:
        return text
    # The derived form always holds "--" and a plain one never does, so the two cannot
    # meet; 64 bits of hash keep a signer from grinding a name onto another's slug.
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[: _SLUG_MAX - 18] or "x"
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{base}--{digest}"


def container_name(bundle: str, role: str) -> str:
    return f"airgap-{slug(bundle)}-{slug(role)}"


def image_tag(bundle: str, version: int, role: str) -> str:
    """The tag install gives a bundle's image in an engine: in airgap's own namespace."""
    return f"{TAG_NAMESPACE}/{slug(bundle)}/{slug(role)}:{int(version)}"


def registry_name(prefix: str, bundle: str, version: int, role: str) -> tuple[str, str]:
    """(repository, tag) for a push under the operator's ``--registry HOST/PREFIX``."""
    repo = f"{prefix.strip('/') or 'airgap'}/{slug(bundle)}/{slug(role)}"
    return repo, str(int(version))


def model_mount(served_name: str) -> str:
    """Where the model directory appears inside the vLLM container."""
    return f"/models/{slug(check_served_name(served_name))}"


def contained(root: Path, relative: str) -> Path:
    """``root/relative``, proven to be an existing directory inside ``root`` reached
    without a symbolic link (the engine creates a missing bind source, so a path that
    does not exist is refused too).

    Raises:
        ValueError: ``relative`` escapes ``root``, passes a link, or is not a directory.
    """
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts) or re.search(r"[\x00-\x1f\x7f\\:]", relative):
        raise ValueError(f"{relative!r} is not a plain relative path")
    base = root.resolve(strict=True)
    path = base
    for part in parts:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            raise ValueError(f"{path} is not a directory inside {base}")
    if not path.resolve(strict=True).is_relative_to(base):
        raise ValueError(f"{path} resolves outside {base}")
    return path
