"""The ``chat_completion`` inference endpoint that wires the model into Elasticsearch.

``PUT _inference/chat_completion/<id>`` with the ``openai`` service, ``url`` = Nginx's
``/v1/chat/completions``, ``model_id`` = the served name, ``api_key`` = the bearer
token. Elasticsearch answers a PUT of an existing id with 400
``resource_already_exists_exception`` and cannot change ``url`` or ``model_id`` through
``_update``, so :func:`ensure` looks first:

* missing: PUT;
* same service, url and model: ``_update`` with only the key when the token changed
  (the receipt keeps a fingerprint of the token the endpoint holds), else nothing;
* different: refused, unless the receipt says this tool created it: then DELETE and PUT.

Elasticsearch makes a live call to the model during the PUT (and the ``_update``), so
its 400 carries the reason the call failed; :func:`explain` names it with the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bundler.errors import InstallError
from bundler.install.elastic.api import ApiClient, json_object
from bundler.install.elastic.truststore_script import node_command


@dataclass(frozen=True)
class Wanted:
    """What the endpoint must hold."""

    url: str  # Nginx's /v1/chat/completions
    model: str  # vLLM's served name
    token: str  # the bearer token (never recorded; its fingerprint is)

    def body(self) -> dict[str, Any]:
        return {
            "service": "openai",
            "service_settings": {"api_key": self.token, "model_id": self.model, "url": self.url},
        }


def fingerprint(token: str) -> str:
    """Which token an endpoint holds, without the token (a salted sha256 prefix)."""
    return "sha256:" + hashlib.sha256(b"airgap endpoint key\0" + token.encode()).hexdigest()[:16]


def causes(r: requests.Response) -> str:
    """Elasticsearch's reason and every nested cause, in one line."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:300]
    out: list[str] = []

    def walk(err: Any) -> None:
        if isinstance(err, dict):
            for key in ("reason", "message"):
                if isinstance(err.get(key), str) and err[key] not in out:
                    out.append(str(err[key]))
            walk(err.get("caused_by"))
            for rc in err.get("root_cause") or []:
                walk(rc)
        elif isinstance(err, str) and err not in out:
            out.append(err)

    walk(body.get("error") if isinstance(body, dict) else body)
    return ": ".join(x.rstrip(".") for x in out) or json.dumps(body)[:300]


@dataclass(frozen=True)
class TrustHint:
    """How to make Elasticsearch trust the endpoint's CA, for the PKIX failure's hint."""

    script: str  # the installed es-truststore.sh
    own_cert: bool = False  # --tls-cert/--tls-key from the site's PKI

    def text(self) -> str:
        if self.own_cert:
            return (
                "The certificate came from --tls-cert: its CA must be in the JVM trust store "
                "of every Elasticsearch node (or in the node's bundled cacerts)."
            )
        return (
            f"Elasticsearch does not trust the endpoint's CA: {node_command(Path(self.script))}"
            "; then run the same install again (the paths are a package install's: give the "
            "node's own Elasticsearch home and config directory otherwise)."
        )


def explain(r: requests.Response, where: str, w: Wanted, trust: TrustHint) -> InstallError:
    """Elasticsearch's call to the model failed: which of the known causes, and its fix.

    ``where`` opens the message (what Elasticsearch was doing).
    """
    text = causes(r)
    low = text.lower()
    where = f"{where} ({r.status_code})"
    if "pkix path building failed" in low or "unable to find valid certification path" in low:
        return InstallError(
            f"{where}: it does not trust the CA of {w.url}: {text}", hint=trust.text()
        )
    if "doesn't match any of the subject alternative names" in low or (
        "no subject alternative" in low
    ):
        return InstallError(
            f"{where}: the certificate of {w.url} does not name its host: {text}",
            hint="Elasticsearch checks the host name: install with --server-name (or --ip) "
            "set to the name Elasticsearch uses for this host, so the URL and the "
            "certificate agree.",
        )
    if "authentication error status code" in low:
        return InstallError(
            f"{where}: {w.url} refused the bearer token (401 from Nginx): {text}",
            hint="The token Elasticsearch sent is not the one Nginx expects: run the same "
            "install again (it sends the current token); `airgap status --show-token` prints "
            "it.",
        )
    if "non-compliant for [inference]" in low:
        return InstallError(
            f"{where}: the license does not allow the openai inference service: {text}",
            hint="Install an Enterprise license or start a trial, or use --elastic-wiring "
            "connector.",
        )
    if "unknown to the [openai] service" in low or "unknown settings" in low:
        return InstallError(
            f"{where}: it does not know a setting airgap sent: {text}",
            hint="This Elasticsearch version takes other settings than airgap expects: "
            "report it with the version from `GET /`; meanwhile use --elastic-wiring "
            "connector.",
        )
    if "connection refused" in low or "unknown_host" in low or "name or service not known" in low:
        return InstallError(
            f"{where}: it cannot reach {w.url}: {text}",
            hint="The Elasticsearch nodes must reach this host: check DNS for --server-name, "
            "the firewall, and the port (--port).",
        )
    return InstallError(
        f"{where}: {text}",
        hint="Elasticsearch's message above says why; the model itself answered airgap's "
        "own test, so look at what lies between Elasticsearch and this host.",
    )


class ChatEndpoints:
    """``_inference/chat_completion`` through one Elasticsearch client."""

    def __init__(self, api: ApiClient, trust: TrustHint) -> None:
        self.api = api
        self.trust = trust

    def get(self, ident: str) -> dict[str, Any] | None:
        """The endpoint with this id, of any task type, or None."""
        r = self.api.request(
            "GET", f"/_inference/{ident}", allow=(404,), what="looking for the endpoint"
        )
        if r.status_code == 404:
            return None
        eps = json_object(r, "Check --es-url.").get("endpoints") or []
        return dict(eps[0]) if eps else None

    def _send(self, method: str, path: str, body: dict[str, Any], ident: str, w: Wanted) -> None:
        r = self.api.request(
            method, path, json=body, allow=(400, 401, 403, 404, 500), what=f"endpoint {ident}"
        )
        if r.status_code == 200:
            return
        kind = ""
        with contextlib.suppress(ValueError, AttributeError):
            kind = str((r.json().get("error") or {}).get("type", ""))
        if r.status_code == 401 or (r.status_code == 403 and "non-compliant" not in r.text):
            raise self.api._refused(method, self.api.base + path, r, f"endpoint {ident}")
        if kind == "resource_already_exists_exception":
            raise InstallError(
                f"inference endpoint {ident} appeared in Elasticsearch while airgap created it",
                hint="Someone else created it at the same moment: run the same install again.",
            )
        raise explain(
            r, f"Elasticsearch could not set up inference endpoint {ident}", w, self.trust
        )

    def put(self, ident: str, w: Wanted) -> None:
        self._send("PUT", f"/_inference/chat_completion/{ident}?timeout=120s", w.body(), ident, w)

    def update_key(self, ident: str, w: Wanted) -> None:
        body = {"service_settings": {"api_key": w.token}}
        self._send("PUT", f"/_inference/chat_completion/{ident}/_update", body, ident, w)

    def delete(self, ident: str, task: str = "chat_completion") -> bool:
        r = self.api.request(
            "DELETE",
            f"/_inference/{task}/{ident}",
            allow=(404,),
            what=f"deleting endpoint {ident}",
        )
        return r.status_code != 404

    def ensure(self, ident: str, w: Wanted, *, ours: bool, held: str | None) -> str:
        """Make endpoint ``ident`` hold ``w``; what was done.

        ``ours``: the receipt says this tool created it; ``held``: the fingerprint of the
        token it was last given (None: not known).

        Raises:
            InstallError: a different endpoint under this id that is not ours, or
                Elasticsearch refused (with the cause named).
        """
        have = self.get(ident)
        if have is None:
            self.put(ident, w)
            return "created"
        settings = have.get("service_settings") or {}
        same = (
            have.get("task_type") == "chat_completion"
            and have.get("service") == "openai"
            and settings.get("url") == w.url
            and settings.get("model_id") == w.model
        )
        if not same:
            if not ours:
                raise InstallError(
                    f"inference endpoint {ident} exists in Elasticsearch "
                    f"({have.get('task_type')}, {have.get('service')}, "
                    f"{settings.get('url', '-')}, model {settings.get('model_id', '-')}) and "
                    "airgap did not create it",
                    hint="Choose another --llm-endpoint-id, or delete that endpoint if it is "
                    "unused (DELETE _inference/<task>/<id>).",
                )
            # url and model_id cannot be updated in place
            self.delete(ident, str(have.get("task_type") or "chat_completion"))
            self.put(ident, w)
            return "replaced"
        if held == fingerprint(w.token):
            return "kept"
        self.update_key(ident, w)
        return "key updated"
