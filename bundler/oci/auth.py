"""Registry credentials from Docker's own configuration (``docker login``)."""

from __future__ import annotations

import base64
from pathlib import Path

from bundler import env, safejson


def docker_config_auth(registry: str, config: Path | None = None) -> tuple[str, str] | None:
    """Basic credentials for ``registry`` from Docker's config.json (``auths``)."""
    path = config or env.docker_config_dir() / "config.json"
    try:
        doc = safejson.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for k in keys:
        entry = auths.get(k)
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user, password
    return None
