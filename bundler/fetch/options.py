"""How remote sources are fetched: options shared by the CLI, ``build`` and the fetcher.

Kept apart from :mod:`bundler.fetch.remote` so that a build from local sources only
does not import the HTTP and hub clients (a third of its start-up time).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FetchOptions:
    jobs: int = 4
    insecure_registries: frozenset[str] = frozenset()
    registry_ca: Path | None = None
    images_from: str = "registry"  # or "docker": export through the local engine
    docker_url: str | None = None
