"""Image references: one grammar, one parser, Docker's defaults."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# docker reference grammar, simplified: [registry[:port]/]path[:tag][@sha256:hex]
IMAGE_REF_RE = re.compile(
    r"^(?:(?P<registry>[a-zA-Z0-9.-]+(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
DOCKER_HUB = "registry-1.docker.io"


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port] as addressed
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    @property
    def endpoint(self) -> str:
        """The host that serves ``registry``'s API (Docker Hub's differs from its name)."""
        return DOCKER_HUB if self.registry == "docker.io" else self.registry

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def check_image_ref(ref: str) -> str:
    """Raises:
    ValueError: ``ref`` is not an image reference."""
    if not IMAGE_REF_RE.fullmatch(ref):
        raise ValueError(
            f"{ref!r} is not an image reference like docker.io/vllm/vllm-openai:v0.9.1"
        )
    return ref


def parse_ref(ref: str) -> ImageRef:
    """``[registry/]repo[:tag][@digest]`` with Docker's defaults (docker.io, library/).

    The first component names a registry only when it looks like a host (has a ``.`` or
    a ``:``, or is ``localhost``), as Docker decides.

    Raises:
        ValueError: ``ref`` breaks the reference grammar.
    """
    check_image_ref(ref)
    rest, _, digest = ref.partition("@")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = "docker.io", rest
    tag = None
    if ":" in path.rsplit("/", 1)[-1]:
        path, _, tag = path.rpartition(":")
    if registry in ("docker.io", "index.docker.io"):
        registry = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    if not tag and not digest:
        tag = "latest"
    return ImageRef(registry, path, tag, digest or None)


def is_loopback(host: str) -> bool:
    """``host[:port]`` is this machine (plain HTTP is allowed there by default)."""
    name = host
    if name.startswith("["):
        name = name[1 : name.index("]")]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
