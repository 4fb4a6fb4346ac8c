"""Register the served model in Kibana as an OpenAI connector ("Other (OpenAI Compatible)").

Two ways, as Elastic's guides describe:

* API (default): detect Kibana's version (``GET /api/status``), create or update the
  ``.gen-ai`` connector under a deterministic id (a rerun updates, never duplicates),
  sending only the config keys that version accepts, then run the connector's own
  ``_execute`` test, which makes Kibana call the model through Nginx.
* ``preconfigured``: write the ``kibana.yml`` snippet (``xpack.actions.preconfigured``
  and ``xpack.actions.customHostSettings`` trusting the CA) to a 0600 file.

The config keys per Kibana version are :mod:`.connector`'s.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from bundler.errors import InstallError, UsageError
from bundler.fsutil import atomic_write_bytes
from bundler.install.elastic.api import ApiClient, Credentials, json_object
from bundler.install.elastic.connector import (
    MIN_VERSION,
    OTHER_PROVIDER,
    Verification,
    Version,
    connector_config,
    connector_id,
    connector_name,
    has_verification_mode,
    parse_version,
    preconfigured_snippet,
    version_text,
)
from bundler.manifest import Manifest

logger = logging.getLogger(__name__)
SPACE_RE = re.compile(r"^[a-z0-9_-]{1,100}$")


def _json(r: Any) -> dict[str, Any]:
    return json_object(r, "Check --kibana-url: it must be Kibana itself, not a proxy login page.")


@dataclass(frozen=True)
class KibanaOptions:
    url: str | None = None  # API mode needs it; preconfigured mode does not
    credentials: Credentials | None = None
    space: str = "default"
    ca: Path | None = None
    insecure: bool = False
    mode: Literal["api", "preconfigured"] = "api"
    version: str | None = None  # preconfigured mode: the Kibana version to write keys for
    verification: Verification = "full"
    test: bool = True  # run the connector's _execute test after creating it
    attempts: int = 6


@dataclass
class Registration:
    mode: str
    connector_id: str
    name: str
    api_url: str
    kibana_version: str
    created: bool = False
    url: str | None = None
    space: str = "default"
    test_reply: str | None = None
    snippet: str | None = None  # preconfigured mode: the file written
    action: str | None = None  # what this run did: "created" or "updated"
    test_error: InstallError | None = None  # the connector exists, its test failed

    def record(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "mode": self.mode,
                "connector_id": self.connector_id,
                "name": self.name,
                "api_url": self.api_url,
                "kibana_version": self.kibana_version,
                "created_by_us": self.created,
                "url": self.url,
                "space": self.space,
                "snippet": self.snippet,
                "action": self.action,
            }.items()
            if v is not None
        }


class Kibana:
    """Kibana's connectors API in one space."""

    def __init__(self, opts: KibanaOptions) -> None:
        if not opts.url:
            raise UsageError("--kibana-url is needed to register the connector over the API")
        if opts.credentials is None:
            raise UsageError(
                f"no credentials for Kibana at {opts.url}",
                hint="Set AIRGAP_KIBANA_API_KEY, or give --kibana-api-key-file or "
                "--kibana-credentials-file (user:password). Never on the command line.",
            )
        self.opts = opts
        self.api = ApiClient(
            "Kibana",
            opts.url,
            opts.credentials,
            ca=opts.ca,
            insecure=opts.insecure,
            attempts=opts.attempts,
            headers={"kbn-xsrf": "airgap", "Content-Type": "application/json"},
        )
        space = opts.space or "default"
        if not SPACE_RE.match(space):
            raise UsageError(
                f"--kibana-space {space!r} is not a Kibana space id",
                hint="Space ids are lower-case letters, digits, '_' and '-' (see the space's "
                "URL: /s/<id>/app/...).",
            )
        self.space = space
        self.prefix = "" if space == "default" else f"/s/{quote(space, safe='')}"

    def close(self) -> None:
        self.api.close()

    def version(self) -> Version:
        """``GET /api/status``; refuses a Kibana older than :data:`MIN_VERSION`."""
        r = self.api.request("GET", "/api/status", what="reading Kibana's version")
        try:
            text = str(_json(r)["version"]["number"])
        except (ValueError, KeyError, TypeError) as e:
            raise InstallError(
                f"{self.api.base}/api/status does not look like Kibana's status API",
                hint="Check --kibana-url: it must be Kibana's base URL, not Elasticsearch's.",
            ) from e
        v = parse_version(text)
        if v < MIN_VERSION:
            raise InstallError(
                f"Kibana {text} at {self.api.base} is older than "
                f"{version_text(MIN_VERSION)}, which airgap needs for the OpenAI connector",
                hint="Upgrade Kibana, or add the connector by hand as Elastic's guide describes.",
            )
        return v

    def _path(self, tail: str) -> str:
        return f"{self.prefix}/api/actions/{tail}"

    def get(self, ident: str) -> dict[str, Any] | None:
        r = self.api.request(
            "GET", self._path(f"connector/{ident}"), allow=(404,), what="looking for the connector"
        )
        if r.status_code == 404:
            return None
        return _json(r)

    def upsert(
        self, ident: str, name: str, config: dict[str, Any], token: str
    ) -> tuple[dict[str, Any], bool]:
        """Create the connector, or update it in place; returns (connector, created)."""
        existing = self.get(ident)
        body = {"name": name, "config": config, "secrets": {"apiKey": token}}
        if existing is None:
            r = self.api.request(
                "POST",
                self._path(f"connector/{ident}"),
                json={**body, "connector_type_id": ".gen-ai"},
                allow=(409,),
                what="creating the connector",
            )
            if r.status_code != 409:
                return _json(r), True
            # It was absent a moment ago: our own earlier attempt made it. Update it.
            r = self.api.request(
                "PUT", self._path(f"connector/{ident}"), json=body, what="updating the connector"
            )
            return _json(r), True
        if existing.get("connector_type_id") != ".gen-ai" or existing.get("is_preconfigured"):
            raise InstallError(
                f"connector {ident} in Kibana is a {existing.get('connector_type_id')} "
                f"connector{' (preconfigured)' if existing.get('is_preconfigured') else ''} "
                "that airgap did not create",
                hint="Delete it in Stack Management > Connectors, then run again.",
            )
        r = self.api.request(
            "PUT", self._path(f"connector/{ident}"), json=body, what="updating the connector"
        )
        return _json(r), False

    def test(self, ident: str, model: str) -> str:
        """The connector's ``_execute`` test: Kibana itself calls the model through Nginx.

        Raises:
            InstallError: Kibana reports an error (with Kibana's message and why).
        """
        prompt = {
            "model": model,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello."}],
        }
        r = self.api.request(
            "POST",
            self._path(f"connector/{ident}/_execute"),
            json={"params": {"subAction": "test", "subActionParams": {"body": json.dumps(prompt)}}},
            what="testing the connector",
        )
        result = _json(r)
        if result.get("status") != "ok":
            detail = result.get("service_message") or result.get("message") or str(result)
            tls = any(
                w in str(detail).lower() for w in ("certificate", "self-signed", "self signed")
            )
            raise InstallError(
                f"Kibana's test of connector {ident} failed: {result.get('message', '')} "
                f"({detail})",
                hint=(
                    "Kibana does not trust the endpoint's CA yet: add the "
                    "xpack.actions.customHostSettings entry from the settings file named "
                    "below to kibana.yml and restart Kibana."
                    if tls
                    else "Kibana reached the connector but the call failed: check that Kibana "
                    "can reach the URL (name resolution, firewall) and see `airgap status`."
                ),
            )
        data = result.get("data") or {}
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            return json.dumps(data)[:200]

    def delete(self, ident: str) -> bool:
        r = self.api.request(
            "DELETE",
            self._path(f"connector/{ident}"),
            ok=(200, 204),
            allow=(404,),
            what="deleting the connector",
        )
        return r.status_code != 404


def register(
    opts: KibanaOptions,
    m: Manifest,
    bundle_name: str,
    api_url: str,
    token: str,
    ca_pem: str,
    out_dir: Path,
    previous: dict[str, Any] | None = None,
    on_created: Callable[[Registration], None] | None = None,
) -> Registration:
    """Create/update and test the connector, or write the preconfigured snippet.

    ``previous`` is the receipt's record of the last registration, so that a connector
    this tool created stays marked as created by it when a rerun only updates it.
    """
    name = connector_name(m)
    if opts.mode == "preconfigured":
        v = parse_version(opts.version) if opts.version else OTHER_PROVIDER
        ident = f"airgap-{bundle_name}"
        snippet = preconfigured_snippet(v, m, ident, name, api_url, token, ca_pem, opts)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = out_dir / "kibana-preconfigured.yml"
        atomic_write_bytes(path, snippet.encode(), mode=0o600)
        return Registration(
            "preconfigured", ident, name, api_url, version_text(v), snippet=str(path)
        )
    kibana = Kibana(opts)
    try:
        v = kibana.version()
        ident = connector_id(bundle_name, kibana.space)
        config = connector_config(v, m, api_url, opts.verification)
        if opts.verification != "full" and not has_verification_mode(v):
            logger.warning(
                "Kibana %s has no per-connector verificationMode; kibana.yml decides",
                version_text(v),
            )
        _, created = kibana.upsert(ident, name, config, token)
        was_ours = bool(
            previous
            and previous.get("connector_id") == ident
            and previous.get("url") == kibana.api.base
            and previous.get("created_by_us")
        )
        reg = Registration(
            "api",
            ident,
            name,
            api_url,
            version_text(v),
            created=created or was_ours,
            url=kibana.api.base,
            space=kibana.space,
            action="created" if created else "updated",
        )
        if on_created is not None:
            on_created(reg)  # recorded before the (slow) test, so nothing goes unrecorded
        if opts.test:
            try:
                reg.test_reply = kibana.test(ident, m.model.served_name)
            except InstallError as e:
                reg.test_error = e
        return reg
    finally:
        kibana.close()


def unregister(record: dict[str, Any], opts: KibanaOptions) -> str | None:
    """Delete the connector this tool created (API mode); None when there is nothing to do."""
    if record.get("mode") != "api" or not record.get("created_by_us"):
        return None
    kibana = Kibana(opts)
    try:
        gone = kibana.delete(str(record["connector_id"]))
    finally:
        kibana.close()
    where = f"{record.get('url')} space {record.get('space', 'default')}"
    return (
        f"Kibana connector {record['connector_id']} ({where})"
        if gone
        else f"Kibana connector {record['connector_id']} was already gone ({where})"
    )
