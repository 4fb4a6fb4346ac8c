"""The ``install`` options that say how the model is wired into Elastic (``llm`` group):
a Kibana connector, or an Elasticsearch inference endpoint (Kibana 9.4+)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from bundler.cli.options import option_group

if TYPE_CHECKING:
    from bundler.install.elastic.wiring import LlmOptions


def _llm_options(kw: dict[str, Any]) -> LlmOptions:
    from bundler.install.elastic.wiring import LlmOptions

    return LlmOptions(
        wiring=kw.pop("elastic_wiring"),
        endpoint_id=kw.pop("llm_endpoint_id"),
        default_only=kw.pop("kibana_default_only"),
        keep_connector=kw.pop("keep_connector"),
    )


llm_options = option_group(
    "llm",
    _llm_options,
    click.option(
        "--elastic-wiring",
        type=click.Choice(["auto", "inference-endpoint", "connector"]),
        default="auto",
        show_default=True,
        help="How Kibana reaches the model: an Elasticsearch inference endpoint (Kibana "
        "9.4+, needs --es-url), or a Kibana connector. auto: the endpoint when Kibana is "
        "9.4+ and --es-url is given, else the connector.",
    ),
    click.option(
        "--llm-endpoint-id",
        default=None,
        help="Id of the chat_completion inference endpoint (default: airgap-<bundle name>).",
    ),
    click.option(
        "--kibana-default-only",
        is_flag=True,
        help="Also set genAiSettings:defaultAIConnectorOnly: AI features use only this model.",
    ),
    click.option(
        "--keep-connector",
        is_flag=True,
        help="When the endpoint replaces airgap's Kibana connector, keep the connector.",
    ),
)
