"""The refusal when undoing what airgap did in Kibana or Elasticsearch needs credentials
that were not given: raised before anything is removed, so the uninstall changes nothing."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from bundler.errors import InstallError

_HOW = {
    "Kibana": "AIRGAP_KIBANA_API_KEY (or --kibana-api-key-file / --kibana-credentials-file)",
    "Elasticsearch": "AIRGAP_ES_API_KEY (or --es-api-key-file / --es-credentials-file)",
}


def credentials_needed(
    did: str,
    things: Collection[str],
    service: Literal["Kibana", "Elasticsearch"],
    to: str,
    leave: str = "them",
) -> InstallError:
    """``airgap {did} {things} and needs {service} credentials to {to}``, with the fix."""
    return InstallError(
        f"airgap {did} " + ", ".join(things) + f" and needs {service} credentials to {to}",
        hint=f"Set {_HOW[service]}, or pass --keep-elastic to leave {leave}.",
    )
