"""Where the trust step's defaults come from, and what ``status`` checks about it later.

* :func:`installed_ca`: the CA of the install under ``--prefix`` (``airgap
  elastic-truststore``'s default ``--ca``); none for a site-PKI certificate.
* :func:`record_node` / :func:`check_nodes`: ``airgap elastic-truststore`` run on a host
  with an install records the node's paths in ``state/es-truststores.json``; ``airgap
  status`` then notices a store that is older than the node's ``cacerts`` (the stamp in
  the options file no longer matches it: an Elasticsearch upgrade replaced it), gone, or
  changed since it was written.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bundler.errors import UsageError
from bundler.fsutil import atomic_write_bytes
from bundler.install.elastic.cacert import cksum
from bundler.install.elastic.truststore import (
    STAMP,
    EsNode,
    TrustStoreResult,
    read_options,
)
from bundler.install.layout import Layout
from bundler.install.state import ReceiptFile

FORMAT = "airgap-es-truststores/1"


def installed_ca(prefix: Path) -> Path:
    """The CA of the install under ``prefix``.

    Raises:
        UsageError: the endpoint uses the site's own certificate (no trust step is needed),
            or there is no CA under ``prefix``.
    """
    layout = Layout(prefix)
    store = ReceiptFile.load(layout.state)
    current = store.receipt.releases.get(store.receipt.current or "") if store.exists else None
    serve = current.serve if current else None
    if serve and serve.options and serve.options.tls_cert:
        raise UsageError(
            f"{prefix}: the endpoint serves --tls-cert {serve.options.tls_cert} from the "
            "site's own PKI; Elasticsearch needs no trust step if its JVM trusts that PKI",
            hint="Pass --ca with the site's CA to add it to the node's trust store anyway.",
        )
    ca = layout.tls_dir / "ca.crt"
    if not ca.is_file():
        raise UsageError(
            f"{ca}: no CA installed under {prefix}",
            hint="Pass --ca with the CA file (secrets/tls/ca.crt under the airgap host's "
            "prefix), or the right --prefix.",
        )
    return ca


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return [{"es_home": "?", "es_path_conf": "?", "unreadable": str(path)}]
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return [{"es_home": "?", "es_path_conf": "?", "unreadable": str(path)}]
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        return []
    keys = ("es_home", "es_path_conf")
    return [
        n for n in nodes if isinstance(n, dict) and all(isinstance(n.get(k), str) for k in keys)
    ]


def record_node(prefix: Path, es_home: Path, result: TrustStoreResult) -> Path | None:
    """Remember the node for ``status``, when ``prefix`` holds an install (else None)."""
    layout = Layout(prefix)
    if not layout.state.is_dir():
        return None
    conf = str(result.store.parent)
    nodes = [n for n in _load(layout.es_truststores) if n.get("es_path_conf") != conf]
    nodes.append(
        {
            "es_home": os.path.abspath(es_home),
            "es_path_conf": conf,
            "alias": result.alias,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    doc = {"format": FORMAT, "nodes": nodes}
    atomic_write_bytes(layout.es_truststores, (json.dumps(doc, indent=2) + "\n").encode())
    return layout.es_truststores


def check_nodes(prefix: Path) -> list[dict[str, Any]]:
    """Each recorded node's store: ``current``, ``stale`` (the node's cacerts changed since
    it was built), ``missing``, ``modified`` (the store changed), ``unreadable`` (the
    record) or ``unknown`` (the node's JDK is gone: not counted as a fault)."""
    rows = []
    for n in _load(Layout(prefix).es_truststores):
        node = EsNode(Path(n["es_home"]), Path(n["es_path_conf"]))
        row = {"es_home": n["es_home"], "es_path_conf": n["es_path_conf"], "store": str(node.store)}
        stamps = [line for line in read_options(node.options_file) if line.startswith(STAMP)]
        fields = dict(f.split("=", 1) for f in stamps[0].split()[2:] if "=" in f) if stamps else {}
        if "unreadable" in n:
            state, detail = "unreadable", f"{n['unreadable']}: unreadable"
        elif not fields or not node.store.is_file():
            state, detail = "missing", f"{node.options_file} or the store is gone"
        elif not node.cacerts.is_file():
            state, detail = "unknown", f"{node.cacerts} is gone (Elasticsearch moved?)"
        elif fields.get("cacerts") != cksum(node.cacerts):
            state = "stale"
            detail = (
                f"{node.cacerts} changed since the store was built (an Elasticsearch "
                "upgrade?): rerun `airgap elastic-truststore` on that node and restart it"
            )
        elif fields.get("store") != cksum(node.store):
            state, detail = "modified", f"{node.store} changed since airgap wrote it"
        else:
            state, detail = "current", ""
        rows.append(
            {**row, "state": state, "detail": detail, "ok": state in ("current", "unknown")}
        )
    return rows
