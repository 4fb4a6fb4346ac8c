"""Kibana's default model for its AI features, in one space.

* ``GET [/s/<space>]/api/kibana/settings``: each setting's ``userValue``, and
  ``isOverridden`` when kibana.yml's ``uiSettings.overrides`` fixes it (read-only then).
* ``POST [/s/<space>]/api/kibana/settings {"changes": {...}}`` sets
  ``genAiSettings:defaultAIConnector`` to the endpoint id (and, with
  ``--kibana-default-only``, ``genAiSettings:defaultAIConnectorOnly: true``); Kibana
  answers a read-only one with 400 ``Unable to update "<key>" because it is overridden``.
* From 9.4, per-feature model lists (Stack Management > Model management > Feature
  settings, ``GET /internal/search_inference_endpoints/settings``) take precedence
  over the default: they are reported, never changed.
* Uninstall puts the values from before back, but only while the default still names
  this tool's endpoint: a site that chose another model since keeps its choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bundler.errors import InstallError
from bundler.install.elastic.api import ApiClient, json_object
from bundler.install.elastic.records import JsonScalar

DEFAULT = "genAiSettings:defaultAIConnector"
DEFAULT_ONLY = "genAiSettings:defaultAIConnectorOnly"
FEATURES = "/internal/search_inference_endpoints/settings"


@dataclass
class Change:
    """What :func:`set_default` did: the values before, and the settings it wrote."""

    previous: dict[str, JsonScalar]
    written: list[str] = field(default_factory=list)


def read(api: ApiClient, prefix: str) -> dict[str, tuple[Any, bool]]:
    """Every user-provided setting of the space: name -> (value, fixed by kibana.yml)."""
    r = api.request("GET", f"{prefix}/api/kibana/settings", what="reading Kibana's settings")
    settings = json_object(r, "Check --kibana-url.").get("settings") or {}
    return {
        str(k): (v.get("userValue"), bool(v.get("isOverridden")))
        for k, v in settings.items()
        if isinstance(v, dict)
    }


def set_default(
    api: ApiClient, prefix: str, ident: str, only: bool, before: dict[str, JsonScalar] | None
) -> Change:
    """Make ``ident`` the space's default model.

    ``before``: the values recorded when this tool first changed them (a rerun must not
    record its own values as the site's).

    Raises:
        InstallError: a setting to change is fixed by ``uiSettings.overrides`` to
            another value, or Kibana refused.
    """
    now = read(api, prefix)
    wanted: dict[str, JsonScalar] = {DEFAULT: ident}
    if only:
        wanted[DEFAULT_ONLY] = True
    previous = dict(before or {})
    changes: dict[str, JsonScalar] = {}
    for key, value in wanted.items():
        have, fixed = now.get(key, (None, False))
        if fixed and have != value:
            raise InstallError(
                f"Kibana setting {key} is fixed to {have!r} by uiSettings.overrides in "
                "kibana.yml, so airgap cannot set it to " + repr(value),
                hint=f"Set `uiSettings.overrides: {{'{key}': {value!r}}}` in kibana.yml (or "
                "remove the override) and restart Kibana, then run the same install again.",
            )
        previous.setdefault(key, have)
        if not fixed and have != value:
            changes[key] = value
    if changes:
        r = api.request(
            "POST",
            f"{prefix}/api/kibana/settings",
            json={"changes": changes},
            allow=(400,),
            what="setting the default AI model",
        )
        if r.status_code == 400:
            said = json_object(r, "Check --kibana-url.").get("message", r.text[:200])
            raise InstallError(
                f"Kibana refused to set {', '.join(changes)}: {said}",
                hint="A setting fixed by uiSettings.overrides in kibana.yml cannot be changed "
                "through the API: set it there to the endpoint id, restart Kibana, and run "
                "the same install again.",
            )
    return Change(previous, sorted(changes))


def feature_overrides(api: ApiClient, prefix: str, ident: str) -> list[str]:
    """Features whose own model list (9.4+ Feature settings) does not start with ``ident``."""
    r = api.request(
        "GET",
        prefix + FEATURES,
        headers={"x-elastic-internal-origin": "Kibana", "elastic-api-version": "1"},
        allow=(400, 403, 404),
        what="reading Kibana's Feature settings",
    )
    if r.status_code != 200:
        return []
    data = json_object(r, "Check --kibana-url.").get("data") or {}
    out = []
    for feature in data.get("features") or []:
        ids = [e.get("id") for e in feature.get("endpoints") or [] if isinstance(e, dict)]
        ids = ids or list(feature.get("endpoint_ids") or [])  # the first 9.4 shape
        if ids and ids[0] != ident:
            out.append(f"{feature.get('feature_id')} uses {', '.join(map(str, ids))}")
    return out


def restore(api: ApiClient, prefix: str, ident: str, previous: dict[str, JsonScalar]) -> str:
    """Put the recorded values back if the default still names ``ident``; what happened."""
    now = read(api, prefix)
    have, fixed = now.get(DEFAULT, (None, False))
    if have != ident or fixed:
        return f"left alone: {DEFAULT} is {have!r} now, not airgap's {ident}"
    changes = {
        k: (None if v == ident else v)
        for k, v in previous.items()
        if not now.get(k, (None, False))[1]
    }
    if changes:
        api.request(
            "POST",
            f"{prefix}/api/kibana/settings",
            json={"changes": changes},
            what="restoring Kibana's settings",
        )
    return "restored " + ", ".join(f"{k}={v!r}" for k, v in changes.items())
