"""The Kibana connector contract: which ``.gen-ai`` config keys each Kibana accepts.

Pure functions, no I/O (the client that sends them is :mod:`.kibana`). Which config
keys exist in which Kibana (from Kibana's pull requests): ``apiProvider: Other`` since
8.16 (before it the guides used ``OpenAI`` with the local URL); ``verificationMode``
since 8.19 and 9.1; ``contextWindowLength`` and ``temperature`` since 9.2;
``enableNativeFunctionCalling`` in recent 9.x. Older Kibana answers an unknown key with
``400 [key]: definition for this key is missing``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import yaml

from bundler.errors import UsageError
from bundler.manifest import Manifest

if TYPE_CHECKING:
    from bundler.install.elastic.kibana import KibanaOptions

Version = tuple[int, int, int]
MIN_VERSION: Version = (8, 12, 0)  # the OpenAI connector with a custom URL, AI Assistant GA
OTHER_PROVIDER: Version = (8, 16, 0)
VERIFICATION_MODE_8: Version = (8, 19, 0)  # verificationMode in the 8.x line ...
VERIFICATION_MODE_9: Version = (9, 1, 0)  # ... and again from 9.1 (9.0 lacks it)
CONTEXT_WINDOW: Version = (9, 2, 0)
NATIVE_FUNCTION_CALLING: Version = (9, 2, 0)
Verification = Literal["full", "certificate", "none"]


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
    return VERIFICATION_MODE_8 <= v < (9, 0, 0) or v >= VERIFICATION_MODE_9


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
