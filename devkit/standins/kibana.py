"""A Kibana stand-in: the connectors API as Kibana enforces it, for ``.gen-ai`` connectors
(advanced settings, the inference plugin's routes and Feature settings are
:mod:`.kibana_ai`'s, the knowledge base and product docs :mod:`.kibana_kb`'s).

Enforced (from Kibana's behaviour and pull requests, see the module docs of
:mod:`bundler.install.elastic.connector`):

* every ``/api`` request needs ``Authorization`` (ApiKey or Basic), else 401;
  ``POST``/``PUT``/``DELETE`` need ``kbn-xsrf``, else 400;
* spaces: ``/s/<space>/api/...``; an unknown space is 404; connectors live in a space;
* ``POST /api/actions/connector/{id}`` (409 if the id exists), ``PUT`` (body
  ``name, config, secrets`` only: ``connector_type_id`` there is a 400),
  ``GET``, ``GET /api/actions/connectors``, ``DELETE`` (204);
* ``.gen-ai`` config validated per version: ``apiProvider: Other`` only from 8.16;
  ``verificationMode`` only 8.19+/9.1+; ``contextWindowLength``/``temperature`` only
  9.2+; an unknown key is ``400 ... [key]: definition for this key is missing``;
  ``Other`` requires ``apiUrl`` and ``defaultModel``; secrets are ``{apiKey}``;
* ``_execute`` with ``subAction: test`` really POSTs the body to ``apiUrl`` with
  ``Authorization: Bearer <apiKey>``, verifying TLS against the CA that
  ``xpack.actions.customHostSettings`` would configure (``trusted_ca``), unless the
  connector says ``verificationMode: none``. Errors come back as HTTP 200 with
  ``status: error``, as Kibana does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import requests

from devkit.standins._http import JsonServer, Request, Response, basic_or_api_key
from devkit.standins.kibana_ai import KibanaAi
from devkit.standins.kibana_kb import KibanaKb


def _v(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def gen_ai_keys(version: str, provider: str) -> set[str]:
    """The config keys Kibana ``version`` accepts for ``apiProvider: provider``."""
    v = _v(version)
    if provider == "Other":
        keys = {"apiProvider", "apiUrl", "defaultModel", "headers"}
        if (8, 19) <= v < (9, 0) or v >= (9, 1):
            keys.add("verificationMode")
        if v >= (9, 2):
            keys |= {"contextWindowLength", "temperature", "enableNativeFunctionCalling"}
        return keys
    if provider == "OpenAI":
        return {"apiProvider", "apiUrl", "defaultModel", "headers", "organizationId", "projectId"}
    return {"apiProvider", "apiUrl", "headers"}  # Azure OpenAI


def _bad(message: str) -> Response:
    return Response(400, {"statusCode": 400, "error": "Bad Request", "message": message})


def _not_found(ident: str) -> Response:
    return Response(
        404,
        {
            "statusCode": 404,
            "error": "Not Found",
            "message": f"Saved object [action/{ident}] not found",
        },
    )


class KibanaStandIn(JsonServer):
    def __init__(
        self,
        version: str = "9.2.0",
        *,
        api_keys: set[str] | None = None,
        users: dict[str, str] | None = None,
        spaces: tuple[str, ...] = ("default",),
        trusted_ca: Path | None = None,
        elasticsearch: str | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        """``elasticsearch``: the cluster's URL (Kibana calls it as the calling user);
        ``overrides``: kibana.yml's ``uiSettings.overrides``."""
        super().__init__()
        self.version = version
        self.api_keys = api_keys or set()
        self.users = users or {}
        self.spaces = set(spaces)
        self.trusted_ca = trusted_ca
        self.overrides = dict(overrides or {})
        self.connectors: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in spaces}
        sp = r"(?:/s/(?P<space>[a-z0-9_-]+))?"
        self.route("GET", r"/api/status", self._status)
        self.route("GET", sp + r"/api/actions/connectors", self._list)
        self.route("GET", sp + r"/api/actions/connector/(?P<id>[^/]+)", self._get)
        self.route("POST", sp + r"/api/actions/connector/(?P<id>[^/]+)", self._create)
        self.route("PUT", sp + r"/api/actions/connector/(?P<id>[^/]+)", self._update)
        self.route("DELETE", sp + r"/api/actions/connector/(?P<id>[^/]+)", self._delete)
        self.route("POST", sp + r"/api/actions/connector/(?P<id>[^/]+)/_execute", self._execute)
        self.ai = KibanaAi(self, elasticsearch)
        self.kb = KibanaKb(self)  # the knowledge base and product docs

    # -- the rules every request meets -------------------------------------------------

    def check_auth(self, req: Request) -> Response | None:
        if not basic_or_api_key(req, self.api_keys, self.users):
            return Response(
                401,
                {
                    "statusCode": 401,
                    "error": "Unauthorized",
                    "message": "[security_exception]: unable to authenticate user",
                },
            )
        if req.method in ("POST", "PUT", "DELETE") and "kbn-xsrf" not in req.headers:
            return _bad("Request must contain a kbn-xsrf header.")
        return self.ai.internal_denied(req)

    def _space(self, req: Request) -> dict[str, dict[str, Any]] | None:
        space = req.params.get("space") or "default"
        return self.connectors.get(space) if space in self.spaces else None

    @staticmethod
    def _public(ident: str, c: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": ident,
            "name": c["name"],
            "connector_type_id": c["connector_type_id"],
            "config": c["config"],
            "is_preconfigured": False,
            "is_deprecated": False,
            "is_system_action": False,
            "is_missing_secrets": False,
        }

    def _validate(self, body: Any, *, with_type: bool) -> Response | None:
        if not isinstance(body, dict):
            return _bad("[request body]: expected a plain object value, but found [null] instead.")
        allowed = {"name", "config", "secrets"} | ({"connector_type_id"} if with_type else set())
        for key in body:
            if key not in allowed:
                return _bad(f"[request body.{key}]: definition for this key is missing")
        if with_type and body.get("connector_type_id") != ".gen-ai":
            return _bad(f'action type "{body.get("connector_type_id")}" is not registered.')
        if not isinstance(body.get("name"), str) or not body["name"]:
            return _bad("[request body.name]: expected value of type [string]")
        config = body.get("config")
        if not isinstance(config, dict):
            return _bad("error validating action type config: expected an object")
        provider = config.get("apiProvider")
        providers = ["Azure OpenAI", "OpenAI"] + (["Other"] if _v(self.version) >= (8, 16) else [])
        # config-schema's oneOf: one line per branch that failed, as Kibana words it.
        if provider not in providers:
            lines = [
                f"- [{i}.apiProvider]: expected value to equal [{p}]"
                for i, p in enumerate(providers)
            ]
            return _bad(
                "error validating action type config: types that failed validation:\n"
                + "\n".join(lines)
            )
        branch = providers.index(str(provider))
        others = [
            f"- [{i}.apiProvider]: expected value to equal [{p}]"
            for i, p in enumerate(providers)
            if i != branch
        ]
        keys = gen_ai_keys(self.version, str(provider))
        required = ("apiUrl", "defaultModel") if provider == "Other" else ("apiUrl",)
        problem = next(
            (
                f"[{branch}.{k}]: definition for this key is missing"
                for k in config
                if k not in keys
            ),
            None,
        )
        problem = problem or next(
            (
                f"[{branch}.{k}]: expected value of type [string] but got [undefined]"
                for k in required
                if not isinstance(config.get(k), str) or not config[k]
            ),
            None,
        )
        if problem:
            lines = sorted([*others, f"- {problem}"], key=lambda x: x[3])
            return _bad(
                "error validating action type config: types that failed validation:\n"
                + "\n".join(lines)
            )
        mode = config.get("verificationMode")
        if mode is not None and mode not in ("full", "certificate", "none"):
            return _bad("error validating action type config: [verificationMode]: invalid value")
        secrets = body.get("secrets")
        if not isinstance(secrets, dict) or set(secrets) != {"apiKey"}:
            return _bad(
                "error validating action type secrets: [apiKey]: expected value of type [string]"
            )
        return None

    # -- routes ------------------------------------------------------------------------

    def _status(self, req: Request) -> Response:
        return Response(
            200,
            {
                "name": "kibana-standin",
                "version": {"number": self.version, "build_flavor": "default"},
                "status": {"overall": {"level": "available"}},
            },
        )

    def _list(self, req: Request) -> Response:
        space = self._space(req)
        if space is None:
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        return Response(200, [self._public(i, c) for i, c in space.items()])

    def _get(self, req: Request) -> Response:
        space = self._space(req)
        ident = req.params["id"]
        if space is None or ident not in space:
            return _not_found(ident)
        return Response(200, self._public(ident, space[ident]))

    def _create(self, req: Request) -> Response:
        space = self._space(req)
        ident = req.params["id"]
        if space is None:
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        body = req.json()
        bad = self._validate(body, with_type=True)
        if bad:
            return bad
        if ident in space:
            return Response(
                409,
                {
                    "statusCode": 409,
                    "error": "Conflict",
                    "message": f"Saved object [action/{ident}] conflict",
                },
            )
        space[ident] = copy.deepcopy(body)
        return Response(200, self._public(ident, space[ident]))

    def _update(self, req: Request) -> Response:
        space = self._space(req)
        ident = req.params["id"]
        if space is None or ident not in space:
            return _not_found(ident)
        body = req.json()
        bad = self._validate(body, with_type=False)
        if bad:
            return bad
        space[ident] = {
            **copy.deepcopy(body),
            "connector_type_id": space[ident]["connector_type_id"],
        }
        return Response(200, self._public(ident, space[ident]))

    def _delete(self, req: Request) -> Response:
        space = self._space(req)
        ident = req.params["id"]
        if space is None or ident not in space:
            return _not_found(ident)
        del space[ident]
        return Response(204)

    def _execute(self, req: Request) -> Response:
        space = self._space(req)
        ident = req.params["id"]
        if space is None or ident not in space:
            return _not_found(ident)
        c = space[ident]
        params = (req.json() or {}).get("params") or {}
        if params.get("subAction") != "test":
            return _bad("[params.subAction]: this stand-in answers only subAction 'test'")
        try:
            body = json.loads(params["subActionParams"]["body"])
        except (KeyError, TypeError, ValueError):
            return _bad("[params.subActionParams.body]: expected a JSON string")
        body.setdefault("model", c["config"].get("defaultModel"))
        verify: bool | str = (
            False
            if c["config"].get("verificationMode") == "none"
            else (str(self.trusted_ca) if self.trusted_ca else True)
        )
        try:
            with requests.Session() as s:
                s.trust_env = False
                r = s.post(
                    c["config"]["apiUrl"],
                    json=body,
                    headers={"Authorization": f"Bearer {c['secrets']['apiKey']}"},
                    timeout=120,
                    verify=verify,
                )
        except requests.RequestException as e:
            return Response(
                200,
                {
                    "status": "error",
                    "connector_id": ident,
                    "message": "an error occurred while running the action",
                    "service_message": str(e),
                    "retry": True,
                },
            )
        if r.status_code != 200:
            return Response(
                200,
                {
                    "status": "error",
                    "connector_id": ident,
                    "message": "an error occurred while running the action",
                    "service_message": f"Status code: {r.status_code}. Message: {r.text[:200]}",
                    "retry": False,
                },
            )
        data = r.json()
        if not isinstance(data, dict) or "choices" not in data or "usage" not in data:
            return Response(
                200,
                {
                    "status": "error",
                    "connector_id": ident,
                    "message": "an error occurred while running the action",
                    "service_message": "Response validation failed (choices and usage required)",
                },
            )
        return Response(200, {"status": "ok", "connector_id": ident, "data": data})
