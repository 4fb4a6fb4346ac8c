"""Kibana and Elasticsearch before an install: reachable, credentials accepted, ES ready
for ELSER, checked before a byte of payload is read (the preflight's Elastic rows)."""

from __future__ import annotations

from bundler.bundle.index import Index
from bundler.errors import AirgapError, InstallError
from bundler.install.elastic.artifacts import elser_ids
from bundler.install.elastic.elasticsearch import Elasticsearch
from bundler.install.elastic.kibana import Kibana
from bundler.install.options import Check, InstallOptions
from bundler.install.records import ServeRecord


def elastic_preflight(
    opts: InstallOptions, index: Index, errors: dict[str, AirgapError], will_serve: bool
) -> list[Check]:
    """The Elastic rows of the preflight table; a failed row's error goes into ``errors``
    under the row's name, so the caller raises the error itself (with its hint)."""
    checks = []
    serve = opts.serve
    if opts.kibana is not None and opts.kibana.mode == "api":
        try:
            kibana = Kibana(opts.kibana)
            try:
                v = kibana.version()
                kibana.api.request(
                    "GET", kibana._path("connectors"), what=f"listing space {kibana.space}"
                )
            finally:
                kibana.close()
            detail = f"{'.'.join(map(str, v))} at {kibana.api.base}, space {kibana.space}"
            checks.append(Check("kibana", True, detail))
        except AirgapError as e:
            errors["kibana"] = e
            checks.append(Check("kibana", False, e.message))
        if serve is not None and not (serve.server_names or serve.ips):
            checks.append(
                Check(
                    "kibana calls",
                    None,
                    f"https://localhost:{serve.port}: right only when Kibana runs on this "
                    "host; else give --server-name",
                )
            )
    elser = elser_ids(index)
    if opts.elasticsearch is not None:
        try:
            if not elser:
                raise InstallError(
                    "--es-url: this bundle carries no ELSER model to deploy",
                    hint="Drop --es-url, or build a bundle with elastic.elser in its manifest.",
                )
            expected = elser_repository(opts, will_serve=will_serve)
            if expected is None:
                raise InstallError(
                    "--es-url: nothing will serve ELSER to Elasticsearch (--no-serve or "
                    "--registry)",
                    hint="Give --elser-dir with Elasticsearch's config/models directory, or "
                    "let airgap serve the release.",
                )
            es = Elasticsearch(opts.elasticsearch)
            try:
                version = es.version()
                repo = es.check_repository(expected)
            finally:
                es.close()
            checks.append(Check("elasticsearch", True, f"{version}, model repository {repo}"))
        except AirgapError as e:
            errors["elasticsearch"] = e
            checks.append(Check("elasticsearch", False, e.message))
    return checks


def elser_repository(
    opts: InstallOptions, served: ServeRecord | None = None, *, will_serve: bool = False
) -> str | None:
    """Where Elasticsearch reads ELSER from: ``--elser-dir`` or the Nginx artifact server
    (the one that serves, or, before serving, the one this run will start)."""
    if opts.elser_dir is not None:
        return f"file://{opts.elser_dir.resolve()}"
    if served is not None:
        return served.artifacts.get("elser") or None
    if opts.serve is None or not will_serve:
        return None
    return f"{opts.serve.artifacts_base}/elser"
