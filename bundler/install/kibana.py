"""Register the served model in Kibana as an OpenAI connector ("Other (OpenAI Compatible)").

Two ways, as Elastic's guides describe:

* API (default): detect Kibana's version (``GET /api/status``), create or update the
  ``.gen-ai`` connector under a deterministic id (a rerun updates, never duplicates),
  sending only the config keys that version accepts, then run the connector's own
  ``_execute`` test, which makes Kibana call the model through Nginx.
* ``preconfigured``: write the ``kibana.yml`` snippet (``xpack.actions.preconfigured``
  and ``xpack.actions.customHostSettings`` trusting the CA) to a 0600 file.

Which config keys exist in which Kibana (from Kibana's pull requests): ``apiProvider:
Other`` since 8.16 (before it the guides used ``OpenAI`` with the local URL);
``verificationMode`` since 8.19 and 9.1; ``contextWindowLength`` and ``temperature``
since 9.2; ``enableNativeFunctionCalling`` in recent 9.x. Older Kibana answers an
unknown key with ``400 [key]: definition for this key is missing``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml

from bundler.errors import InstallError, UsageError
from bundler.fsutil import atomic_write_bytes
from bundler.install.elastic_api import ApiClient, Credentials, json_object
from bundler.manifest import Manifest

logger = logging.getLogger(__name__)

Version = tuple[int, int, int]
MIN_VERSION: Version = (8, 12, 0)  # the OpenAI connector with a custom URL, AI Assistant GA
OTHER_PROVIDER: Version = (8, 16, 0)
CONTEXT_WINDOW: Version = (9, 2, 0)
NATIVE_FUNCTION_CALLING: Version = (9, 2, 0)
Verification = Literal["full", "certificate", "none"]
SPACE_RE = re.compile(r"^[a-z0-9_-]{1,100}$")


def _json(r: Any) -> dict[str, Any]:
    return json_object(r, "Check --kibana-url: it must be Kibana itself, not a proxy login page.")


def parse_version(text: str) -> Version:
    """``9.2.1``, ``8.19.0-SNAPSHOT`` -> (9, 2, 1), (8, 19, 0)."""
    core = text.split("-", 1)[0].split("+", 1)[0]
    parts = core.split(".")
    try:
        nums = [int(p) for p in parts[:3]]
    except ValueError as e:
        raise UsageError(
            f"{text!r} is not a Kibana version",
            hint="Give it as MAJOR.MINOR[.PATCH], e.g. 9.1 or 8.19.2.",
        ) from e
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


def has_verification_mode(v: Version) -> bool:
    return (8, 19, 0) <= v < (9, 0, 0) or v >= (9, 1, 0)


def version_text(v: Version) -> str:
    return ".".join(map(str, v))


def connector_id(name: str, space: str) -> str:
    """The same id for the same bundle name and space, on every run (UUID v4 layout)."""
    digest = hashlib.sha256(f"airgap connector\0{name}\0{space}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def connector_name(m: Manifest) -> str:
    return m.connector.name if m.connector else f"{m.model.served_name} (airgap)"


def connector_config(
    v: Version, m: Manifest, api_url: str, verification: Verification
) -> dict[str, Any]:
    """The ``.gen-ai`` config with only the keys Kibana ``v`` accepts."""
    if v < OTHER_PROVIDER:
        return {"apiProvider": "OpenAI", "apiUrl": api_url, "defaultModel": m.model.served_name}
    config: dict[str, Any] = {
        "apiProvider": "Other",
        "apiUrl": api_url,
        "defaultModel": m.model.served_name,
    }
    if has_verification_mode(v):
        config["verificationMode"] = verification
    if v >= CONTEXT_WINDOW and m.serve.max_model_len:
        config["contextWindowLength"] = m.serve.max_model_len
    if (
        v >= NATIVE_FUNCTION_CALLING
        and m.connector is not None
        and m.connector.native_function_calling is not None
    ):
        config["enableNativeFunctionCalling"] = m.connector.native_function_calling
    return config


def custom_host_settings(api_url: str, ca_pem: str, verification: Verification) -> dict[str, Any]:
    """``xpack.actions.customHostSettings`` entry: Kibana trusts our CA for this host only."""
    u = urlsplit(api_url)
    return {
        "url": f"{u.scheme}://{u.netloc}",
        "ssl": {"verificationMode": verification, "certificateAuthoritiesData": ca_pem},
    }


class _Literal(str):
    """A string PyYAML writes as a ``|`` block (certificates stay readable)."""


def _literal(dumper: yaml.SafeDumper, data: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def to_yaml(data: dict[str, Any]) -> str:
    def wrap(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: wrap(v) for k, v in x.items()}
        if isinstance(x, list):
            return [wrap(v) for v in x]
        if isinstance(x, str) and "\n" in x:
            return _Literal(x)
        return x

    return yaml.dump(wrap(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


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


def preconfigured_snippet(
    v: Version,
    m: Manifest,
    ident: str,
    name: str,
    api_url: str,
    token: str,
    ca_pem: str,
    opts: KibanaOptions,
) -> str:
    doc = {
        "xpack.actions.preconfigured": {
            ident: {
                "name": name,
                "actionTypeId": ".gen-ai",
                "config": connector_config(v, m, api_url, opts.verification),
                "secrets": {"apiKey": token},
            }
        },
        "xpack.actions.customHostSettings": [
            custom_host_settings(api_url, ca_pem, opts.verification)
        ],
    }
    head = (
        "# Generated by airgap for Kibana "
        f"{version_text(v)}+: add to kibana.yml and restart Kibana.\n"
        "# Holds the bearer token: keep this file mode 0600. If kibana.yml already has\n"
        "# xpack.actions.customHostSettings, merge the entry into that list.\n"
    )
    return head + to_yaml(doc)


def trust_snippet(api_url: str, ca_pem: str, verification: Verification) -> str:
    """The kibana.yml lines that make Kibana trust the endpoint's CA (no secret in them)."""
    return to_yaml(
        {"xpack.actions.customHostSettings": [custom_host_settings(api_url, ca_pem, verification)]}
    )


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
