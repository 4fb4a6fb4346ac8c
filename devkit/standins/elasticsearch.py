"""An Elasticsearch stand-in: the ELSER model repository download and inference endpoints
(the ``chat_completion`` ones, their license, validation call and streaming are
:mod:`.inference`'s; the JVM's TLS trust they use is :mod:`.jvmtrust`'s).

Enforced, as Elasticsearch does it (``x-pack/plugin/ml-package-loader``):

* auth on every request (ApiKey or Basic), else 401 ``security_exception``;
* ``GET _nodes/settings`` shows ``xpack.ml.model_repository`` (a static node
  setting from elasticsearch.yml; ``None`` here means "not set");
* ``PUT _inference/sparse_embedding/<id>`` with the ``elasticsearch`` service
  downloads ``<repo>/<packaged id>.metadata.json``, then the ``.pt`` with parallel
  ``Range`` requests (1 MiB chunks on 5 connections; redirects are not followed)
  and the vocabulary file the metadata names, checks size and sha256, deploys, and
  answers with the endpoint once deployed (or after waiting, like the real request
  time-out); ``resource_already_exists_exception`` for a second PUT;
* ``GET _ml/trained_models/<id>/_stats`` ``deployment_stats.state`` is ``started``
  (``fully_allocated``) or ``failed`` with the reason;
* ``GET``/``DELETE _inference/sparse_embedding/<id>``;
* from 8.17 the built-in endpoints (:mod:`.embeddings`), deployed on their first use.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from devkit.standins._http import JsonServer, Request, Response, basic_or_api_key
from devkit.standins.embeddings import BuiltinEndpoints
from devkit.standins.inference import ChatInference
from devkit.standins.jvmtrust import JvmTrust

CHUNK = 1 << 20
STREAMS = 5


def _error(status: int, kind: str, reason: str) -> Response:
    return Response(
        status,
        {
            "error": {
                "root_cause": [{"type": kind, "reason": reason}],
                "type": kind,
                "reason": reason,
            },
            "status": status,
        },
    )


class ElasticsearchStandIn(JsonServer):
    def __init__(
        self,
        version: str = "9.2.0",
        *,
        api_keys: set[str] | None = None,
        users: dict[str, str] | None = None,
        model_repository: str | None = None,
        wait: float = 20.0,
        license: str = "basic",
        truststore: Path | None = None,
        truststore_password: str | None = None,
        path_conf: Path | None = None,
    ) -> None:
        """``truststore``/``truststore_password``: the PKCS12 store the JVM was started
        with (``-Djavax.net.ssl.trustStore``); or ``path_conf``, whose
        ``jvm.options.d/*.options`` name it, as on a node. Neither: the bundled CAs."""
        super().__init__()
        self.version = version
        self.license = license  # "basic", "trial", "enterprise", ... (GET _license)
        self.path_conf = path_conf
        self._store = (truststore, truststore_password)
        self.trust = JvmTrust()
        self.restart()
        self.api_keys = api_keys or set()
        self.users = users or {}
        self.model_repository = model_repository
        self.wait = wait
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.range_requests: list[tuple[str, int]] = []  # (Range header, status)
        self.route("GET", r"/", self._root)
        self.route("GET", r"/_nodes/settings", self._nodes)
        self.builtin = BuiltinEndpoints(self)  # its routes (ids with a '.') go first
        self.route("PUT", r"/_inference/sparse_embedding/(?P<id>[^/]+)", self._put)
        self.route("GET", r"/_inference/sparse_embedding/(?P<id>[^/]+)", self._get)
        self.route("DELETE", r"/_inference/sparse_embedding/(?P<id>[^/]+)", self._delete)
        self.route("GET", r"/_ml/trained_models/(?P<id>[^/]+)/_stats", self._stats)
        self.chat = ChatInference(self)

    def restart(self) -> None:
        """A node restart: the JVM reads its trust store again (and only then)."""
        if self.path_conf is not None:
            self.trust = JvmTrust.from_path_conf(self.path_conf)
        else:
            self.trust = JvmTrust(*self._store)

    def use_truststore(self, store: Path | None, password: str | None = None) -> None:
        """Start the JVM with ``-Djavax.net.ssl.trustStore=store`` (a restart)."""
        self._store = (store, password)
        self.restart()

    def check_auth(self, req: Request) -> Response | None:
        if basic_or_api_key(req, self.api_keys, self.users):
            return None
        return _error(401, "security_exception", "unable to authenticate with provided credentials")

    def _root(self, req: Request) -> Response:
        return Response(200, {"name": "es-standin", "version": {"number": self.version}})

    def _nodes(self, req: Request) -> Response:
        flat = req.query.get("flat_settings", ["false"])[0] == "true"
        settings: dict[str, Any] = {"node.name": "es-standin-0"}
        if self.model_repository is not None:
            settings["xpack.ml.model_repository"] = self.model_repository
        if not flat:
            nested: dict[str, Any] = {}
            for k, v in settings.items():
                cur = nested
                *head, last = k.split(".")
                for h in head:
                    cur = cur.setdefault(h, {})
                cur[last] = v
            settings = nested
        node = {"name": "es-standin-0", "roles": ["master", "data", "ml"], "settings": settings}
        return Response(200, {"_nodes": {"total": 1}, "nodes": {"n0": node}})

    # -- the model repository download -------------------------------------------------

    def _download(self, model_id: str) -> None:
        m = self.models[model_id]
        try:
            if self.model_repository is None:
                raise RuntimeError(
                    "Model importing failed due to [java.net.UnknownHostException: "
                    "ml-models.elastic.co]"
                )
            base = self.model_repository.rstrip("/")
            packaged = model_id.removeprefix(".")
            with requests.Session() as s:
                s.trust_env = False
                r = s.get(f"{base}/{packaged}.metadata.json", allow_redirects=False, timeout=30)
                if r.status_code != 200:
                    raise RuntimeError(f"Failed to find package [{packaged}] ({r.status_code})")
                meta = r.json()
                size, sha = int(meta["size"]), str(meta["sha256"])
                ranges = [(a, min(a + CHUNK, size) - 1) for a in range(0, size, CHUNK)]
                url = f"{base}/{packaged}.pt"

                def fetch(rng: tuple[int, int]) -> bytes:
                    header = f"bytes={rng[0]}-{rng[1]}"
                    got = s.get(url, headers={"Range": header}, allow_redirects=False, timeout=60)
                    self.range_requests.append((header, got.status_code))
                    if got.status_code not in (200, 206):
                        raise RuntimeError(f"{url}: {got.status_code} for Range {header}")
                    return got.content

                with ThreadPoolExecutor(STREAMS) as pool:
                    parts = list(pool.map(fetch, ranges))
                h = hashlib.sha256()
                total = 0
                for part in parts:
                    h.update(part)
                    total += len(part)
                if total != size or h.hexdigest() != sha:
                    raise RuntimeError(
                        f"Model importing failed: {packaged}.pt has size {total} and sha256 "
                        f"{h.hexdigest()}; metadata says {size} and {sha}"
                    )
                vocab_name = meta.get("vocabulary_file") or f"{packaged}.vocab.json"
                v = s.get(f"{base}/{vocab_name}", allow_redirects=False, timeout=30)
                if v.status_code != 200 or "vocabulary" not in v.json():
                    raise RuntimeError(f"Failed to load vocabulary {vocab_name} ({v.status_code})")
            m.update(state="started", size=size, sha256=sha)
        except (RuntimeError, requests.RequestException, ValueError, KeyError) as e:
            m.update(state="failed", reason=str(e))
        finally:
            m["done"].set()

    def start_download(self, model_id: str) -> dict[str, Any]:
        """Start downloading and deploying ``model_id`` unless it is (being) deployed."""
        with self.lock:
            if model_id not in self.models or self.models[model_id]["state"] == "failed":
                self.models[model_id] = {"state": "downloading", "done": threading.Event()}
                threading.Thread(target=self._download, args=(model_id,), daemon=True).start()
            return self.models[model_id]

    def _put(self, req: Request) -> Response:
        ident = req.params["id"]
        if ident in self.endpoints or ident in self.chat.endpoints:
            return _error(
                400,
                "resource_already_exists_exception",
                f"Inference endpoint [{ident}] already exists",
            )
        body = req.json() or {}
        settings = body.get("service_settings") or {}
        if body.get("service") != "elasticsearch" or not str(settings.get("model_id", "")):
            return _error(400, "status_exception", "Unknown service or missing model_id")
        m = self.start_download(str(settings["model_id"]))
        m["done"].wait(self.wait)
        if m["state"] == "failed":
            return _error(500, "status_exception", str(m["reason"]))
        self.endpoints[ident] = {
            "inference_id": ident,
            "task_type": "sparse_embedding",
            "service": "elasticsearch",
            "service_settings": settings,
        }
        return Response(200, self.endpoints[ident])

    def _get(self, req: Request) -> Response:
        ident = req.params["id"]
        if ident not in self.endpoints:
            return _error(
                404, "resource_not_found_exception", f"Inference endpoint not found [{ident}]"
            )
        return Response(200, {"endpoints": [self.endpoints[ident]]})

    def _delete(self, req: Request) -> Response:
        ident = req.params["id"]
        if self.endpoints.pop(ident, None) is None:
            return _error(
                404, "resource_not_found_exception", f"Inference endpoint not found [{ident}]"
            )
        return Response(200, {"acknowledged": True, "pipelines": [], "indexes": []})

    def _stats(self, req: Request) -> Response:
        """One entry per deployment; a deployment made for an endpoint bears its id."""
        model_id = req.params["id"]
        m = self.models.get(model_id)
        if m is None:
            return _error(
                404,
                "resource_not_found_exception",
                f"No known trained model with model_id [{model_id}]",
            )
        entries = []
        for ident, ep in sorted({**self.endpoints, **self.builtin.deployments()}.items()):
            if ep["service_settings"].get("model_id") != model_id:
                continue
            dep: dict[str, Any] = {
                "model_id": model_id,
                "deployment_id": ident,
                "state": m["state"],
            }
            if m["state"] == "started":
                dep["allocation_status"] = {
                    "allocation_count": 1,
                    "target_allocation_count": 1,
                    "state": "fully_allocated",
                }
            if m["state"] == "failed":
                dep["reason"] = m["reason"]
            entries.append({"model_id": model_id, "deployment_stats": dep})
        if not entries:
            entries = [{"model_id": model_id}]
        return Response(200, {"count": len(entries), "trained_model_stats": entries})
