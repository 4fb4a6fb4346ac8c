"""What install and status print about Kibana and Elasticsearch: the wiring chosen, the
connector or the inference endpoint, the proof hop by hop, the default model, ELSER."""

from __future__ import annotations

from typing import Any

import click


def show_elastic(el: dict[str, Any]) -> None:
    """The Elastic part of ``install``'s report (its ``--json`` ``elastic`` object)."""
    plan = el.get("plan")
    if plan and plan.get("wiring") != "none":
        click.echo(f"wiring: {plan['wiring']} ({plan['reason']})")
    k = el.get("kibana")
    if k and k.get("mode") == "api":
        verb = k.get("action", "updated")
        click.echo(
            f"kibana: connector {k['name']!r} ({k['connector_id']}) {verb} in "
            f"{k['url']} space {k['space']} (Kibana {k['kibana_version']})"
        )
        if "test_reply" in k:
            click.echo(f"  Kibana's own test call answered: {k['test_reply']!r}")
    elif k:
        click.echo(f"kibana: preconfigured connector written to {k['snippet']} (0600)")
        click.echo("  add it to kibana.yml and restart Kibana")
    i = el.get("inference")
    if i:
        click.echo(
            f"elasticsearch: chat_completion endpoint {i['endpoint_id']} {i['action']} in "
            f"{i['url']} (calls {i['service_url']}, model {i['model_id']})"
        )
    s = el.get("kibana_settings")
    if s:
        click.echo(
            f"kibana: default AI model of space {s['space']} is {s['endpoint_id']} "
            f"({s['url']}; the earlier value is kept for uninstall)"
        )
    for hop in el.get("proof") or []:
        click.echo(
            f"  proven {hop['hop']}: {hop['call']} in {hop['seconds']:.2f}s: {hop['detail']}"
        )
    for line in el.get("migrated") or []:
        click.echo(f"  migrated: {line}")
    for line in el.get("warnings") or []:
        click.echo(f"  warning: {line}")
    e = el.get("elasticsearch")
    if e:
        click.echo(
            f"elasticsearch: inference endpoint {e['endpoint_id']} ({e['model_id']}) "
            f"{e.get('action', 'kept')}, deployment {e['state']}, in {e['url']}"
        )
    kb = el.get("knowledge_base")
    if kb:
        click.echo(
            f"kibana: knowledge base {kb['state']} on {kb['inference_id']} ({kb['action']}; "
            f"was {kb.get('state_before')}) in {kb['url']}"
        )
    docs = el.get("product_docs")
    if docs:
        click.echo(
            f"kibana: product docs {docs['state']} for {docs['inference_id']} "
            f"({docs['action']}, from {len(docs['artifacts'])} artifact(s)) in {docs['url']}"
        )
    for line in el.get("notes") or []:
        click.echo(f"  note: {line}")
    for key in ("elser_dir", "product_docs_dir"):
        if el.get(key):
            click.echo(f"copied {len(el[key]['files'])} verified file(s) into {el[key]['path']}")
    if el.get("settings"):
        click.echo("settings for Elastic (also in " + str(el.get("settings_file")) + "):")
        for target, line in el["settings"]:
            first = line.splitlines()[0]
            more = " ..." if "\n" in line.rstrip("\n") else ""
            click.echo(f"  {target}: {first}{more}")
    if el.get("trust_step"):
        click.echo(
            "Elasticsearch trust step (on each node; again on a new node and after every "
            f"Elasticsearch upgrade): {el['trust_step']}"
        )


def show_release_elastic(el: dict[str, Any], live: dict[str, Any] | None = None) -> None:
    """One release's Elastic records in ``status``, with their live check when made."""
    live = live or {}

    def mark(kind: str) -> str:
        got = live.get(kind)
        if not got:
            return ""
        word = {True: "ok", False: "FAILED", None: "note"}[got["ok"]]
        return f" [{word}: {got['detail']}]"

    k = el.get("kibana") or {}
    if k.get("mode") == "api":
        click.echo(
            f"      kibana connector {k['connector_id']} in {k['url']} "
            f"space {k.get('space', 'default')}{mark('kibana')}"
        )
    elif k:
        click.echo(f"      kibana preconfigured snippet {k['snippet']}")
    i = el.get("inference") or {}
    if i:
        click.echo(
            f"      chat_completion endpoint {i['endpoint_id']} in {i['url']}{mark('inference')}"
        )
    s = el.get("kibana_settings") or {}
    if s:
        click.echo(
            f"      Kibana default AI model in {s['url']} space {s['space']}: "
            f"{s['endpoint_id']}{mark('kibana_settings')}"
        )
    e = el.get("elasticsearch") or {}
    if e:
        click.echo(f"      inference endpoint {e['endpoint_id']} in {e['url']}")
    kb = el.get("knowledge_base") or {}
    if kb:
        click.echo(
            f"      knowledge base on {kb['inference_id']} in {kb['url']}{mark('knowledge_base')}"
        )
    docs = el.get("product_docs") or {}
    if docs:
        click.echo(
            f"      product docs for {docs['inference_id']} in {docs['url']}{mark('product_docs')}"
        )
    if el.get("settings_file"):
        click.echo(f"      Elastic settings to add: {el['settings_file']}")


def show_kubernetes(k: dict[str, Any]) -> None:
    """The base written for a cluster, and the commands (run, or to run)."""
    click.echo(
        f"kubernetes {k['k8s_version']}: base in {k['base']} (namespace {k['namespace']}), "
        f"model {k['model_artifact']} as {k['model_volume']}: {k['model']}"
    )
    if k.get("applied"):
        click.echo("  applied and rolled out:")
    else:
        click.echo("  to deploy (or commit the directory for GitOps), run:")
    for line in k["commands"]:
        click.echo(f"    {line}")
