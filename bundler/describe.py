"""What a bundle holds, as plain data (rendered by ``airgap inspect``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bundler.bundle.index import BLOB_PREFIX, Index


@dataclass(frozen=True)
class BundleInfo:
    """A summary of a bundle's signed index (nothing in it is verified)."""

    format: str
    name: str
    version: int
    created: str
    expires: str
    tool: str
    index_sha256: str
    signers: list[str]
    chunk_size: int
    model: dict[str, Any]  # the manifest's model section, with files, bytes, commit
    images: list[dict[str, Any]]  # role, ref, digest, config_digest, platform, layers, bytes
    elastic: list[dict[str, Any]]  # path, bytes, sha256
    files: int
    total_bytes: int

    def to_json(self) -> dict[str, Any]:
        """What ``airgap inspect --json`` prints (keys in this order)."""
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "expires": self.expires,
            "tool": self.tool,
            "index_sha256": self.index_sha256,
            "signers": self.signers,
            "chunk_size": self.chunk_size,
            "model": self.model,
            "images": self.images,
            "elastic": self.elastic,
            "files": self.files,
            "total_bytes": self.total_bytes,
        }


def describe(index: Index, index_sha256: str, signers: list[str]) -> BundleInfo:
    """A JSON-able summary of a bundle's signed index."""
    by_path = {f.path: f for f in index.files}
    model_files = [f for f in index.files if f.path.startswith("models/")]
    model = dict(index.manifest.get("model", {}))
    if index.lock.commit is not None:
        model["commit"] = index.lock.commit
    model["files"] = len(model_files)
    model["bytes"] = sum(f.size for f in model_files)
    images = []
    for img in index.images:
        blobs = {img.manifest_digest, img.config_digest, *(la.digest for la in img.layers)}
        images.append(
            {
                "role": img.role,
                "ref": img.ref,
                "digest": img.manifest_digest,
                "config_digest": img.config_digest,
                "platform": img.platform,
                "layers": len(img.layers),
                "bytes": sum(by_path[BLOB_PREFIX + d.removeprefix("sha256:")].size for d in blobs),
            }
        )
    elastic = [
        {"path": f.path, "bytes": f.size, "sha256": f.sha256}
        for f in index.files
        if f.path.startswith("elastic/")
    ]
    return BundleInfo(
        format=index.format,
        name=index.name,
        version=index.version,
        created=index.created,
        expires=index.expires,
        tool=index.tool,
        index_sha256=index_sha256,
        signers=signers,
        chunk_size=index.chunk_size,
        model=model,
        images=images,
        elastic=elastic,
        files=len(index.files),
        total_bytes=index.payload_bytes,
    )
