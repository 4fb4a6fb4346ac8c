"""Kibana's knowledge base (Observability AI Assistant) and product documentation
(``product_doc_base``) internal APIs, mounted on :class:`.kibana.KibanaStandIn`.

Enforced (contract ``ELASTIC-9X.md`` §4-§5 and §7 B.7-8; Kibana's
``observability_ai_assistant/server/routes/knowledge_base``, ``product_doc_base/server/
routes/installation.ts``, ``@kbn/product-doc-common``):

* every route is internal: ``x-elastic-internal-origin: Kibana`` from 9.0, ``kbn-xsrf`` on
  a POST, credentials (:meth:`.kibana.KibanaStandIn.check_auth`);
* **kb/setup** (``POST /internal/observability_ai_assistant/kb/setup``): from 9.0 the
  ``inference_id`` query parameter is required (400 without it); before 9.0 the route
  has no such parameter (400 with it: the stand-in's wording); E5
  (``.multilingual-e5-small-elasticsearch``) only from 9.1 (400); the endpoint must exist
  in Elasticsearch (read as the caller; 404 otherwise). The state then moves
  ``NOT_INSTALLED`` → ``DEPLOYING_MODEL`` → ``READY`` once Elasticsearch's inference call
  (which deploys the model) answers, or ``ERROR`` with Elasticsearch's reason. A setup on
  another endpoint than the current one re-indexes the entries, never drops them.
* **kb/status**: ``{enabled, kbState, currentInferenceId, concreteWriteIndex,
  isReIndexing[, errorMessage]}``.
* **product_doc_base** (from 8.16; 404 before): ``POST .../install`` validates its body
  from 9.1 (``inferenceId``, ``resourceType``; another key is 400), ignores it before
  (ELSER only). Installing first makes Elasticsearch deploy the endpoint's model, then
  reads ``<artifactRepositoryUrl>?max-keys=1000`` (an S3 listing) and, for each product,
  ``kb-product-doc-<product>-<Kibana's major.minor>[--<non-ELSER id>].zip`` (a ZIP), and
  the ``openapi`` one from 9.5 when listed. The status moves ``uninstalled`` →
  ``installing`` → ``installed``, or ``error`` with each product's ``failureReason``
  (no repository in kibana.yml means Elastic's, which cannot be reached from here).
  The POST answers once done (``{installed, failureReason}``), or, when that takes longer
  than ``install_wait``, while still ``installing``. ``POST .../uninstall`` removes them.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import requests

from devkit.standins._http import Request, Response

if TYPE_CHECKING:
    from devkit.standins.kibana import KibanaStandIn

KB = r"/internal/observability_ai_assistant/kb"
DOCS = r"/internal/product_doc_base"
ELSER = ".elser-2-elasticsearch"
E5 = ".multilingual-e5-small-elasticsearch"
PRODUCTS = ("elasticsearch", "kibana", "observability", "security")
CDN = "https://kibana-knowledge-base-artifacts.elastic.co"
S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _bad(message: str) -> Response:
    return Response(400, {"statusCode": 400, "error": "Bad Request", "message": message})


def suffix(ident: str) -> str:
    return "" if "elser" in ident.lower() else f"--{ident}"


class KibanaKb:
    def __init__(self, kibana: KibanaStandIn) -> None:
        self.k = kibana
        self.artifact_repository: str | None = None  # xpack.productDocBase.artifactRepositoryUrl
        self.install_wait = 30.0  # how long an install POST waits for the install to finish
        self.kb_state = "NOT_INSTALLED"
        self.kb_inference: str | None = None
        self.kb_error: str | None = None
        self.entries: list[dict[str, Any]] = []  # the users' own knowledge-base entries
        self.docs: dict[str, dict[str, Any]] = {}  # inference id -> status document
        self.downloads: list[str] = []  # artifact URLs read
        sp = r"(?:/s/(?P<space>[a-z0-9_-]+))?"
        kibana.route("GET", sp + KB + r"/status", self._kb_status)
        kibana.route("POST", sp + KB + r"/setup", self._kb_setup)
        kibana.route("GET", sp + DOCS + r"/status", self._docs_status)
        kibana.route("POST", sp + DOCS + r"/install", self._docs_install)
        kibana.route("POST", sp + DOCS + r"/uninstall", self._docs_uninstall)

    @property
    def version(self) -> tuple[int, int, int]:
        return self.k.ai.version

    def _es(self, req: Request, method: str, path: str, **kw: Any) -> requests.Response:
        return self.k.ai._es(req, method, path, **kw)

    # -- the knowledge base -------------------------------------------------------------

    def _kb_status(self, req: Request) -> Response:
        body: dict[str, Any] = {
            "enabled": True,
            "kbState": self.kb_state,
            "currentInferenceId": self.kb_inference,
            "concreteWriteIndex": ".kibana-observability-ai-assistant-kb-000001"
            if self.kb_inference
            else None,
            "isReIndexing": False,
        }
        if self.kb_error:
            body["errorMessage"] = self.kb_error
        return Response(200, body)

    def _kb_setup(self, req: Request) -> Response:
        ident = (req.query.get("inference_id") or [None])[0]
        if self.version < (9, 0, 0):
            if ident is not None:
                return _bad("[request query]: inference_id is not a parameter before 9.0")
            ident = ELSER
        elif not ident:
            return _bad(
                "Failed to validate: in /query/inference_id: undefined does not match "
                "expected type string"
            )
        if ident == E5 and self.version < (9, 1, 0):
            return _bad(f"Inference endpoint {E5} is not supported before 9.1")
        r = self._es(req, "GET", f"/_inference/{ident}")
        if r.status_code != 200:
            return Response(
                404,
                {
                    "statusCode": 404,
                    "error": "Not Found",
                    "message": f"Inference endpoint not found [{ident}]",
                },
            )
        previous = self.kb_inference
        self.kb_state, self.kb_inference, self.kb_error = "DEPLOYING_MODEL", ident, None
        auth = dict(req.headers)
        threading.Thread(target=self._warm_up, args=(auth, ident), daemon=True).start()
        return Response(
            200,
            {
                "reindex": bool(previous and previous != ident and self.entries),
                "currentInferenceId": previous,
                "nextInferenceId": ident,
            },
        )

    def _warm_up(self, headers: dict[str, str], ident: str) -> None:
        req = Request("POST", "", {}, headers, b"")
        for _ in range(20):
            try:
                r = self._es(req, "POST", f"/_inference/{ident}?timeout=30s", json={"input": "x"})
            except requests.RequestException as e:
                self.kb_state, self.kb_error = "ERROR", str(e)
                return
            if r.status_code == 200:
                self.kb_state = "READY"
                return
            if r.status_code != 408:
                self.kb_state = "ERROR"
                self.kb_error = str((r.json().get("error") or {}).get("reason") or r.text[:200])
                return
        self.kb_state, self.kb_error = "ERROR", "the model did not start"

    # -- product documentation ----------------------------------------------------------

    def _doc_id(self, ident: str | None) -> str:
        return (ident or ELSER) if self.version >= (9, 1, 0) else ELSER

    def status_doc(self, ident: str) -> dict[str, Any]:
        return self.docs.setdefault(
            ident,
            {
                "inferenceId": ident,
                "overall": "uninstalled",
                "perProducts": {p: {"status": "uninstalled"} for p in PRODUCTS},
            },
        )

    def _docs_status(self, req: Request) -> Response:
        if self.version < (8, 16, 0):
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        return Response(200, self.status_doc(self._doc_id(req.query.get("inferenceId", [None])[0])))

    def _docs_install(self, req: Request) -> Response:
        if self.version < (8, 16, 0):
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        body = req.json() or {}
        ident = ELSER
        if self.version >= (9, 1, 0):
            if not isinstance(body, dict):
                return _bad("[request body]: expected a plain object value")
            for key in body:
                if key not in ("inferenceId", "resourceType"):
                    return _bad(f"[request body.{key}]: definition for this key is missing")
            ident = str(body.get("inferenceId") or ELSER)
        doc = self.status_doc(ident)
        doc["overall"] = "installing"
        for p in PRODUCTS:
            doc["perProducts"][p] = {"status": "installing"}
        done = threading.Event()
        auth = dict(req.headers)
        threading.Thread(target=self._install, args=(auth, ident, doc, done), daemon=True).start()
        done.wait(self.install_wait)
        failure = next(
            (s.get("failureReason") for s in doc["perProducts"].values() if s.get("failureReason")),
            None,
        )
        out: dict[str, Any] = {"installed": doc["overall"] == "installed"}
        if failure:
            out["failureReason"] = failure
        return Response(200, out)

    def _install(
        self, headers: dict[str, str], ident: str, doc: dict[str, Any], done: threading.Event
    ) -> None:
        try:
            self._install_all(Request("POST", "", {}, headers, b""), ident, doc)
        finally:
            done.set()

    def _install_all(self, req: Request, ident: str, doc: dict[str, Any]) -> None:
        def fail(reason: str) -> None:
            for p in PRODUCTS:
                doc["perProducts"][p] = {"status": "error", "failureReason": reason}
            doc["overall"] = "error"

        r = self._es(req, "POST", f"/_inference/{ident}?timeout=5m", json={"input": "x"})
        if r.status_code != 200:
            return fail(f"Inference endpoint [{ident}] could not be deployed: {r.text[:200]}")
        if self.artifact_repository is None:  # Elastic's, never reached from here
            return fail(f"getaddrinfo ENOTFOUND {CDN.split('://', 1)[1]}")
        repo = self.artifact_repository.rstrip("/")
        try:
            with requests.Session() as s:
                s.trust_env = False
                listing = s.get(f"{repo}?max-keys=1000", timeout=30)
                self.downloads.append(f"{repo}?max-keys=1000")
                keys = {
                    c.findtext(f"{S3}Key")
                    for c in ET.fromstring(listing.content).iter(f"{S3}Contents")
                }
                version = f"{self.version[0]}.{self.version[1]}"
                products = [*PRODUCTS, *(["openapi"] if self.version >= (9, 5, 0) else [])]
                installed = []
                for p in products:
                    name = f"kb-product-doc-{p}-{version}{suffix(ident)}.zip"
                    if name not in keys:
                        continue
                    got = s.get(f"{repo}/{name}", timeout=30)
                    self.downloads.append(f"{repo}/{name}")
                    if got.status_code != 200 or not got.content.startswith(b"PK"):
                        return fail(f"{name}: not a ZIP archive ({got.status_code})")
                    installed.append(p)
        except (requests.RequestException, ET.ParseError) as e:
            return fail(f"{repo}: {e}")
        if not [p for p in installed if p in PRODUCTS]:
            return fail(f"no artifact for version {version}{suffix(ident)} in {repo}")
        for p in installed:
            if p in PRODUCTS:
                doc["perProducts"][p] = {"status": "installed", "version": version}
            else:
                doc["openApiStatus"] = {"status": "installed", "version": version}
        for p in PRODUCTS:
            if p not in installed:
                doc["perProducts"][p] = {"status": "uninstalled"}
        doc["overall"] = "installed"

    def _docs_uninstall(self, req: Request) -> Response:
        if self.version < (8, 16, 0):
            return Response(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        body = req.json() or {}
        ident = self._doc_id(body.get("inferenceId") if isinstance(body, dict) else None)
        self.docs.pop(ident, None)
        return Response(200, {"success": True})
