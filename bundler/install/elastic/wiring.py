"""How the served model is wired into Elastic, chosen before any payload is read.

Two wirings (the contract is the project's ``ELASTIC-9X.md``):

* ``connector``: a Kibana ``.gen-ai`` connector; Kibana calls the model. The only way
  before Kibana 9.4; deprecated in 9.5 and gone from the connector picker in 9.6 (the
  API still creates it, and existing ones keep working).
* ``inference-endpoint``: an Elasticsearch ``chat_completion`` inference endpoint
  (``openai`` service, Elasticsearch 8.18+, Enterprise or trial license);
  Elasticsearch calls the model, and Kibana 9.4+ lists the endpoint as a model.

``auto`` (the default) takes ``inference-endpoint`` when Kibana is 9.4 or later and
``--es-url`` is given (or, without Kibana, when Elasticsearch is 9.4 or later), and the
connector otherwise. Pure functions; the versions are read by :mod:`.checks`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from bundler.errors import InstallError, UsageError
from bundler.install.elastic.connector import Version, version_text

Requested = Literal["auto", "inference-endpoint", "connector"]
Wiring = Literal["inference-endpoint", "connector", "none"]
ENDPOINT_ES: Version = (8, 18, 0)  # chat_completion task type and its _stream API
KIBANA_LISTS_ENDPOINTS: Version = (9, 4, 0)  # kibana PR #256071
CONNECTOR_DEPRECATED: Version = (9, 5, 0)  # kibana PR #261591; hidden from the picker in 9.6
LICENSES = ("enterprise", "trial")  # the inference API feature (InferenceLicenceCheck)
# Elasticsearch's id grammar for inference endpoints (MlStrings.isValidId).
ENDPOINT_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_\-.]{0,62}[a-z0-9])?$")


@dataclass(frozen=True)
class LlmOptions:
    """``--elastic-wiring``, ``--llm-endpoint-id``, ``--kibana-default-only``,
    ``--keep-connector``."""

    wiring: Requested = "auto"
    endpoint_id: str | None = None  # default: airgap-<bundle name>
    default_only: bool = False  # also set genAiSettings:defaultAIConnectorOnly
    keep_connector: bool = False  # migration: leave our .gen-ai connector in place


@dataclass(frozen=True)
class Plan:
    """The wiring chosen, and why (the preflight's ``wiring`` row)."""

    wiring: Wiring
    reason: str
    kibana: Version | None = None
    es: Version | None = None
    warning: str | None = None

    @property
    def kibana_lists_endpoints(self) -> bool:
        return self.kibana is not None and self.kibana >= KIBANA_LISTS_ENDPOINTS

    def detail(self) -> str:
        return f"{self.wiring}: {self.reason}" + (f"; {self.warning}" if self.warning else "")

    def to_json(self) -> dict[str, Any]:
        return {"wiring": self.wiring, "reason": self.reason, "warning": self.warning}


def check_endpoint_id(ident: str) -> str:
    """Raises: UsageError: ``ident`` is not an inference endpoint id Elasticsearch takes."""
    if not ENDPOINT_ID_RE.match(ident):
        raise UsageError(
            f"--llm-endpoint-id {ident!r} is not an Elasticsearch inference endpoint id",
            hint="Use 1-64 lower-case letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit (ids starting with '.' are Elastic's own).",
        )
    return ident


def endpoint_id(llm: LlmOptions, bundle_name: str) -> str:
    """``--llm-endpoint-id``, or ``airgap-<bundle name>`` (the same on every run)."""
    if llm.endpoint_id:
        return check_endpoint_id(llm.endpoint_id)
    return check_endpoint_id(f"airgap-{bundle_name}"[:64].rstrip("._-"))


def check_request(
    llm: LlmOptions, *, es_url: str | None, kibana_url: str | None, kibana_mode: str
) -> None:
    """What the options alone can rule out, before anything is read.

    Raises:
        UsageError: the inference-endpoint wiring without ``--es-url`` or with a
            preconfigured (kibana.yml) connector; the connector wiring without Kibana.
    """
    if llm.endpoint_id:
        check_endpoint_id(llm.endpoint_id)
    if llm.wiring == "inference-endpoint" and not es_url:
        raise UsageError(
            "--elastic-wiring inference-endpoint needs --es-url: Elasticsearch holds the "
            "endpoint and calls the model",
            hint="Add --es-url https://<elasticsearch>:9200 (credentials in AIRGAP_ES_API_KEY "
            "or --es-api-key-file), or use --elastic-wiring connector.",
        )
    if llm.wiring == "inference-endpoint" and kibana_mode == "preconfigured":
        raise UsageError(
            "--kibana-mode preconfigured writes a connector into kibana.yml; it cannot be "
            "combined with --elastic-wiring inference-endpoint",
            hint="Drop --kibana-mode preconfigured (the endpoint needs no kibana.yml entry), "
            "or use --elastic-wiring connector.",
        )
    if llm.wiring == "connector" and not kibana_url and kibana_mode != "preconfigured":
        raise UsageError(
            "--elastic-wiring connector needs --kibana-url (or --kibana-mode preconfigured)",
            hint="Give Kibana's URL, or drop --elastic-wiring.",
        )


def choose(
    llm: LlmOptions, kibana: Version | None, es: Version | None, *, serving: bool = True
) -> Plan:
    """The wiring for these versions (None: that product was not given); ``serving``:
    this run serves the model (not ``--no-serve`` or ``--registry``).

    Raises:
        UsageError: ``inference-endpoint`` was asked for and Elasticsearch is older
            than 8.18, or nothing is served here.
    """
    if not serving:
        if llm.wiring == "inference-endpoint":
            raise UsageError(
                "--elastic-wiring inference-endpoint needs the model served here",
                hint="Drop --no-serve/--registry.",
            )
        return Plan("none", "nothing is served here (--no-serve or --registry)", kibana, es)
    kv = f"Kibana {version_text(kibana)}" if kibana else ""
    ev = f"Elasticsearch {version_text(es)}" if es else ""
    deprecated = None
    if kibana and kibana >= CONNECTOR_DEPRECATED:
        deprecated = (
            f"{kv} deprecated the .gen-ai connector (hidden from the connector picker in 9.6)"
        )
    if llm.wiring == "inference-endpoint":
        if es is None or es < ENDPOINT_ES:
            raise UsageError(
                f"--elastic-wiring inference-endpoint needs Elasticsearch 8.18 or later "
                f"(chat_completion endpoints); this is {ev or 'no Elasticsearch'}",
                hint="Upgrade Elasticsearch, or use --elastic-wiring connector (Kibana).",
            )
        warning = None
        if kibana and not kibana >= KIBANA_LISTS_ENDPOINTS:
            warning = (
                f"{kv} does not list inference endpoints (9.4+): the endpoint is created "
                "and proven, but Kibana's AI features see it only after an upgrade"
            )
        return Plan(
            "inference-endpoint", "--elastic-wiring inference-endpoint", kibana, es, warning
        )
    if llm.wiring == "connector":
        reason = "--elastic-wiring connector"
        return Plan("connector", reason, kibana, es, deprecated and deprecated + " (as asked)")
    # auto
    if kibana is not None:
        if kibana < KIBANA_LISTS_ENDPOINTS:
            return Plan(
                "connector", f"{kv} lists only stack connectors (endpoints: 9.4+)", kibana, es
            )
        if es is None:
            warning = (deprecated + "; " if deprecated else "") + (
                "add --es-url to wire the model as an Elasticsearch inference endpoint"
            )
            return Plan("connector", f"{kv} but no --es-url", kibana, es, warning)
        if es < ENDPOINT_ES:
            return Plan(
                "connector",
                f"{ev} has no chat_completion endpoints (8.18+)",
                kibana,
                es,
                deprecated,
            )
        return Plan(
            "inference-endpoint",
            f"{kv} lists Elasticsearch inference endpoints as models (9.4+) and --es-url is given",
            kibana,
            es,
        )
    if es is not None and es >= KIBANA_LISTS_ENDPOINTS:
        return Plan("inference-endpoint", f"no --kibana-url; {ev} is 9.4 or later", kibana, es)
    if es is not None:
        reason = f"no --kibana-url, and {ev} is older than 9.4: only ELSER is set up"
        return Plan("none", reason, kibana, es)
    return Plan("connector", "no Elasticsearch given", kibana, es)


def check_license(doc: dict[str, Any], base: str) -> str:
    """``GET _license``'s answer, judged for the ``openai`` inference service.

    Raises:
        InstallError: not an active Enterprise or trial license.
    """
    lic = doc.get("license") if isinstance(doc.get("license"), dict) else {}
    kind = str((lic or {}).get("type", "unknown"))
    state = str((lic or {}).get("status", "unknown"))
    if kind in LICENSES and state == "active":
        return f"{kind} license"
    raise InstallError(
        f"Elasticsearch at {base} has a {kind} license ({state}); the openai inference "
        "service that wires the model needs an active Enterprise or trial license",
        hint="Install an Enterprise license or start a trial (POST _license/start_trial?"
        "acknowledge=true), or use --elastic-wiring connector (Kibana calls the model "
        "instead; deprecated from Kibana 9.5).",
    )
