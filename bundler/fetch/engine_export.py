"""``--images-from docker``: images a local engine already pulled, exported for the build."""

from __future__ import annotations

from pathlib import Path

from bundler.errors import AirgapError, FetchError
from bundler.fetch.cache import Cache
from bundler.fsutil import atomic_output
from bundler.manifest import ImageArchive, Manifest


def export_from_docker(m: Manifest, docker_url: str | None, cache: Cache) -> dict[str, Path]:
    """``--images-from docker``: ``docker save`` each referenced image into the cache.

    For sites whose registries need a daemon login: the engine pulled the image, we
    stream its export (never into memory) and then read it like any saved archive.

    Raises:
        FetchError: the engine is unreachable or does not have the image.
    """
    from bundler.oci.engine import Runtime

    out: dict[str, Path] = {}
    refs = [(role, src) for role, src in m.images.items() if not isinstance(src, ImageArchive)]
    if not refs:
        return out
    try:
        runtime = Runtime("docker", docker_url)
    except AirgapError as e:
        raise FetchError(str(e), hint="Start Docker, or use --images-from registry.") from e
    try:
        exports = cache.root / "exports"
        exports.mkdir(parents=True, exist_ok=True)
        for role, ref in refs:
            image_id = runtime.image_id(ref)
            if image_id is None:
                raise FetchError(
                    f"images.{role}: {ref} is not in the local Docker engine",
                    hint=f"`docker pull {ref}` first (with your registry login).",
                )
            target = exports / f"{image_id.removeprefix('sha256:')}.tar"
            if not target.exists():
                with atomic_output(target) as f:
                    for block in runtime.api.get_image(ref):
                        f.write(block)
            out[role] = target
    finally:
        runtime.close()
    return out
