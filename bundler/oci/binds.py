"""The bind mounts a container gets: checked before the engine sees them."""

from __future__ import annotations

import os

from bundler.errors import InstallError


def check_binds(binds: dict[str, dict[str, str]]) -> None:
    """Every bind source is an absolute path that exists (the engine would create a
    missing one on the host), and no path holds the ``:`` that separates a bind's fields.
    Sources are the release's proven model directory (``contained``) or paths the
    layout names; none is spelled from index content.

    Raises:
        InstallError: a bind breaks either rule.
    """
    for source, spec in binds.items():
        problem = None
        if ":" in source or ":" in spec["bind"]:
            problem = "holds ':'"
        elif not os.path.isabs(source) or not os.path.lexists(source):
            problem = "does not exist"
        if problem:
            raise InstallError(
                f"bind mount {source} -> {spec['bind']} {problem}; refusing to start a container",
                hint="Use an install --prefix without ':' or links in its path.",
            )
