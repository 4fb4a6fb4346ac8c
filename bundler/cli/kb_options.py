"""The ``install`` options for Kibana's knowledge base and product docs (``kb`` group)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

from bundler.cli.options import option_group

if TYPE_CHECKING:
    from bundler.install.elastic.kbroutes import KbOptions

# Elasticsearch's id grammar; Elastic's own (built-in) endpoints start with '.'
INFERENCE_ID_RE = re.compile(r"^\.?[a-z0-9](?:[a-z0-9_.-]{0,62}[a-z0-9])?$")


def _kb_options(kw: dict[str, Any]) -> KbOptions:
    from bundler.install.elastic.kbroutes import KbOptions

    ident = kw.pop("kb_inference_id")
    if not INFERENCE_ID_RE.match(ident):
        raise click.BadParameter(
            f"{ident!r} is not an Elasticsearch inference endpoint id",
            param_hint="--kb-inference-id",
        )
    return KbOptions(enabled=not kw.pop("no_kb"), inference_id=ident, timeout=kw.pop("kb_timeout"))


kb_options = option_group(
    "kb",
    _kb_options,
    click.option(
        "--kb-inference-id",
        default=".elser-2-elasticsearch",
        show_default=True,
        help="Embedding endpoint for the knowledge base and product docs: Elasticsearch's "
        "built-in ELSER, or .multilingual-e5-small-elasticsearch (E5, Kibana 9.1+).",
    ),
    click.option(
        "--kb-timeout",
        type=click.FloatRange(min=1),
        default=1200.0,
        show_default=True,
        help="Seconds to wait for the knowledge base to be READY, and again for the "
        "product docs to be installed.",
    ),
    click.option(
        "--no-kb",
        is_flag=True,
        help="Set up neither the knowledge base nor the product docs in Kibana.",
    ),
)
