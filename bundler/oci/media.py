"""OCI and Docker media types, and image platforms."""

from __future__ import annotations

from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
IMAGE_INDEXES = (OCI_INDEX, DOCKER_LIST)
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def sniff_layer_media_type(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return LAYER_TAR + "+gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return LAYER_TAR + "+zstd"
    return LAYER_TAR


def platform_of(config: dict[str, Any]) -> str:
    plat = f"{config.get('os', '?')}/{config.get('architecture', '?')}"
    if config.get("variant"):
        plat += f"/{config['variant']}"
    return plat


def platform_matches(have: str, want: str) -> bool:
    if have == want:
        return True
    # linux/arm64 and linux/arm64/v8 name the same platform.
    h, w = have.split("/"), want.split("/")
    return h[:2] == w[:2] and (len(h) == 2 or len(w) == 2) and "arm64" in h[1]
