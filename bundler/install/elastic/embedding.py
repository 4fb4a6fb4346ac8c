"""The embedding model in Elasticsearch: its built-in endpoint from 8.17, airgap's own before.

Elasticsearch 8.17 brought default inference endpoints, among them
``.elser-2-elasticsearch`` (ELSER v2) and ``.multilingual-e5-small-elasticsearch`` (E5),
each backed by the model variant the cluster's ML nodes ask for
(``.elser_model_2_linux-x86_64`` on Linux x86, else ``.elser_model_2``). Kibana's
knowledge base and product docs use them, so a second ELSER endpoint would deploy ELSER
twice. On 8.17 and later airgap therefore creates no endpoint: it reads the built-in one,
checks that the bundle carries the model it names, makes Elasticsearch deploy it with an
inference call (what Kibana's own ``ensureDefaultElserDeployed`` does) and waits for
the deployment. The built-in endpoint is Elastic's: it is recorded as not created by
airgap, so uninstall never deletes it. Before 8.17 :func:`.elasticsearch.deploy_elser`
creates ``--elser-endpoint-id`` as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bundler.errors import InstallError
from bundler.install.elastic.api import json_object
from bundler.install.elastic.connector import Version, parse_version, version_text
from bundler.install.elastic.elasticsearch import Elasticsearch, EsOptions, deploy_elser

logger = logging.getLogger(__name__)
BUILTIN_SINCE: Version = (8, 17, 0)  # ElasticsearchInternalService's default endpoints
ELSER_ENDPOINT = ".elser-2-elasticsearch"
E5_ENDPOINT = ".multilingual-e5-small-elasticsearch"
# built-in endpoint -> the model family it runs (the bundle's ids start with it)
BUILTINS = {ELSER_ENDPOINT: "elser_model_2", E5_ENDPOINT: "multilingual-e5-small"}
WARM_UP = {"input": "airgap: deploy the model"}


def family(ident: str) -> str | None:
    """The model family of a built-in endpoint id (None: not a built-in one)."""
    return BUILTINS.get(ident)


def carried_for(ident: str, carried: list[str]) -> list[str]:
    """The bundle's model ids that can back built-in endpoint ``ident``."""
    fam = family(ident)
    return [m for m in carried if fam and (m == fam or m.startswith(fam + "_"))]


def deploy_builtin(
    es: Elasticsearch,
    version: str,
    ident: str,
    carried: list[str],
    timeout: float,
    on_known: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Deploy built-in endpoint ``ident`` and wait until it is started; its receipt record.

    Raises:
        InstallError: the endpoint is missing, runs a model the bundle does not carry,
            or its deployment failed or did not start within ``timeout``.
    """
    have = es.api.request(
        "GET", f"/_inference/{ident}", allow=(404,), what=f"reading built-in endpoint {ident}"
    )
    found = json_object(have, "Check --es-url.") if have.status_code == 200 else {}
    eps = found.get("endpoints") or []
    if not eps:
        raise InstallError(
            f"Elasticsearch {version} at {es.api.base} has no built-in endpoint {ident}",
            hint="Elasticsearch 8.17 and later create it themselves (ML nodes needed); check "
            "`GET _inference/_all` and that the cluster has a node with the ml role.",
        )
    ep = dict(eps[0])
    model_id = str((ep.get("service_settings") or {}).get("model_id") or "")
    task = str(ep.get("task_type") or "sparse_embedding")
    if model_id.lstrip(".") not in carried:
        raise InstallError(
            f"Elasticsearch's {ident} runs {model_id or 'an unnamed model'}, which this bundle "
            f"does not carry (it carries {', '.join(carried) or 'no model'})",
            hint=f"Build the bundle with {model_id.lstrip('.')} in elastic.elser (or "
            "elastic.e5): Elasticsearch picks the variant for its ML nodes' architecture.",
        )
    record: dict[str, Any] = {
        "url": es.api.base,
        "version": version,
        "endpoint_id": ident,
        "model_id": model_id,
        "created_by_us": False,  # Elastic's own: never deleted by uninstall
        "action": "built-in",
        "state": "deploying",
    }
    if on_known is not None:
        on_known(dict(record))
    if es.deployment(ident, model_id).get("state") != "started":
        # Elasticsearch starts a built-in endpoint's deployment on its first inference
        # call; one that outlasts the call goes on, and is polled below.
        wait = max(1, min(120, int(timeout)))
        saved, es.api.timeout = es.api.timeout, wait + 30.0
        try:
            r = es.api.request(
                "POST",
                f"/_inference/{task}/{ident}?timeout={wait}s",
                json=WARM_UP,
                allow=(408, 429, 500, 502, 503, 504),
                what=f"deploying {model_id} for {ident}",
            )
        finally:
            es.api.timeout = saved
        if r.status_code != 200:
            logger.info("%s: the first inference call answered %s", ident, r.status_code)
    dep = es.wait_deployed(ident, model_id, timeout)
    record["state"] = dep.get("state")
    return record


def deploy(
    opts: EsOptions,
    carried: list[str],
    wanted: str,
    previous: dict[str, Any] | None,
    on_known: Callable[[dict[str, Any]], None],
    notes: list[str],
) -> dict[str, Any] | None:
    """The embedding step: on 8.17+ the built-in endpoint ``wanted`` (``--kb-inference-id``,
    ELSER by default), before 8.17 airgap's own ELSER endpoint; the record, or None with
    a note in ``notes`` when there is nothing to deploy.

    Raises:
        InstallError: as :func:`deploy_builtin` and :func:`.elasticsearch.deploy_elser`.
    """
    es = Elasticsearch(opts)
    try:
        version = es.version()
        if parse_version(version) >= BUILTIN_SINCE:
            if opts.endpoint_id_given:
                notes.append(
                    f"--elser-endpoint-id {opts.endpoint_id} is not used: Elasticsearch "
                    f"{version} has the built-in {ELSER_ENDPOINT} (one ELSER deployment, "
                    "shared with Kibana)"
                )
            if previous and previous.get("created_by_us") and previous.get("url") == es.api.base:
                notes.append(
                    f"endpoint {previous.get('endpoint_id')}, created by an earlier airgap, is "
                    f"a second ELSER deployment beside {ELSER_ENDPOINT}: uninstall deletes it; "
                    "delete it sooner if nothing uses it"
                )
            if family(wanted) is None or not carried_for(wanted, carried):
                notes.append(
                    f"no model deployed in Elasticsearch: the bundle carries none for {wanted}"
                    + ("" if family(wanted) else " (not a built-in endpoint)")
                )
                return None
            return deploy_builtin(es, version, wanted, carried, opts.timeout, on_known)
    finally:
        es.close()
    elser = [m for m in carried if m.startswith("elser")]
    if not elser:
        notes.append(
            f"Elasticsearch {version} (before {version_text(BUILTIN_SINCE)}): the bundle "
            "carries no ELSER model, so no ELSER endpoint was created"
        )
        return None
    return deploy_elser(opts, elser[0], previous, on_created=on_known)
