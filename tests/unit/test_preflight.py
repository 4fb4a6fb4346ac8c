"""Preflight as a table: facts about a host -> the checks the operator sees -> the decision.

No engine, no bundle: :class:`Facts` are what ``gather`` would have found, so every row
and every way to refuse or end early is exercised on its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bundler.errors import AirgapError, InstallError, RollbackError, VerificationError
from bundler.install.options import Check, InstallOptions
from bundler.install.preflight import Decision, Facts, decide, evaluate, wanted_ports
from bundler.install.records import EngineSpec, Release, ServeOptions

SHA = "a" * 64


def release(sha: str = SHA) -> Release:
    return Release(
        name="demo",
        version=2,
        index_sha256=sha,
        signers=["k" * 64],
        installed_at="2026-01-01T00:00:00Z",
        path="/opt/airgap/releases/demo-2",
        target=EngineSpec(url="unix:///var/run/docker.sock"),
    )


def facts(**kw: Any) -> Facts:
    base = Facts(
        name="demo",
        version=2,
        index_sha256=SHA,
        signers=("k" * 64,),
        expires="2036-01-01T00:00:00Z",
        installed=None,
        known=None,
        reusable=False,
        is_current=False,
        where="docker 27.0 at unix:///var/run/docker.sock",
        tags_taken=(),
        tag_names=("localhost/airgap/demo/vllm:2",),
        files_bytes=10 << 20,
        image_bytes=100 << 20,
        free=1 << 30,
        prefix=Path("/opt/airgap"),
        engine_free=1 << 30,
        root_dir="/var/lib/docker",
        gpu=True,
        gpu_detail="nvidia runtime",
        ports={8443: "free"},
    )
    return dataclasses.replace(base, **kw)


def opts(**kw: Any) -> InstallOptions:
    return InstallOptions(bundle="b.tar", trusted={}, **kw)


def row(checks: list[Check], name: str) -> Check:
    (found,) = [c for c in checks if c.name == name]
    return found


def run(f: Facts, o: InstallOptions) -> tuple[list[Check], Decision]:
    checks = evaluate(f, o)
    return checks, decide(f, checks, o)


@pytest.mark.parametrize(
    ("fact", "option", "decision", "version_detail"),
    [
        ({}, {}, Decision.PROCEED, "v2 (first install)"),
        ({"installed": 1}, {}, Decision.PROCEED, "v2 (installed: v1)"),
        ({"installed": 3}, {"allow_downgrade": True}, Decision.PROCEED, "v2 (installed: v3)"),
        ({"installed": 2, "known": release()}, {}, Decision.PROCEED, "v2 (installed: v2)"),
        ({}, {"dry_run": True}, Decision.DRY_RUN, "v2 (first install)"),
        ({"installed": 1}, {"dry_run": True}, Decision.DRY_RUN, "v2 (installed: v1)"),
        (
            {"installed": 2, "known": release(), "reusable": True, "is_current": True},
            {},
            Decision.UNCHANGED,
            "v2 (installed: v2)",
        ),
        (
            {"installed": 3, "known": release(), "reusable": True, "is_current": False},
            {"allow_downgrade": True},
            Decision.REACTIVATE,
            "v2 (installed: v3)",
        ),
        (
            {"installed": 2, "known": release(), "reusable": True},
            {"dry_run": True},
            Decision.DRY_RUN,
            "v2 (installed: v2)",
        ),
    ],
)
def test_decision(
    fact: dict[str, Any], option: dict[str, Any], decision: Decision, version_detail: str
) -> None:
    checks, got = run(facts(**fact), opts(**option))
    assert got is decision
    assert row(checks, "version") == Check("version", True, version_detail)
    assert [c.name for c in checks][:4] == ["signatures", "expiry", "version", "images to"]
    assert not [c for c in checks if c.ok is False]


def test_older_version_is_a_rollback_error() -> None:
    f = facts(installed=3)
    checks = evaluate(f, opts())
    assert row(checks, "version").detail == "v2 is older than installed v3 (--allow-downgrade)"
    with pytest.raises(RollbackError, match="bundle demo v2 is older than installed v3"):
        decide(f, checks, opts(dry_run=True))  # refused even for a dry run


def test_same_version_with_other_content_is_refused() -> None:
    f = facts(installed=2, known=release("b" * 64), reusable=True)
    checks = evaluate(f, opts(allow_downgrade=True))
    assert row(checks, "version") == Check(
        "version", False, "demo-2 is installed with other content"
    )
    # exit 3 like a rollback, naming both indexes, never the generic "preflight failed"
    with pytest.raises(VerificationError) as e:
        decide(f, checks, opts(allow_downgrade=True))
    assert e.value.exit_code == 3 and not isinstance(e.value, InstallError)
    assert e.value.message == (
        f"bundle demo v2 is installed with other content: installed index sha256 {'b' * 64}, "
        f"this bundle's {SHA}"
    )
    assert "higher version" in e.value.hint and "airgap uninstall --prefix /opt/airgap" in (
        e.value.hint
    )


@pytest.mark.parametrize(
    ("fact", "failed", "message"),
    [
        ({"free": 1 << 20}, "disk", r"disk: 10\.0 MiB needed under /opt/airgap, 1\.0 MiB free"),
        ({"engine_free": 1 << 20}, "image storage", "image storage: 100.0 MiB of images"),
        ({"ports": {8443: "busy"}}, "port 8443", "port 8443: in use"),
        (
            {"tags_taken": ("localhost/airgap/demo/vllm:2 is sha256:0123456789ab",)},
            "tags",
            r"tags: already name other images: .* \(--replace-tags\)",
        ),
    ],
)
def test_failed_row_refuses_with_every_failure_named(
    fact: dict[str, Any], failed: str, message: str
) -> None:
    f = facts(**fact)
    checks = evaluate(f, opts())
    assert row(checks, failed).ok is False
    with pytest.raises(InstallError, match=message) as e:
        decide(f, checks, opts(dry_run=True))
    assert e.value.hint == "Fix what the preflight table marks as failed, then run again."
    assert not isinstance(e.value, RollbackError)


def test_replace_tags_turns_a_clash_into_a_warning() -> None:
    taken = ("localhost/airgap/demo/vllm:2 is sha256:0123456789ab",)
    checks, got = run(facts(tags_taken=taken), opts(replace_tags=True))
    assert row(checks, "tags").ok is None
    assert row(checks, "tags").detail.endswith("; moving " + taken[0])
    assert got is Decision.PROCEED


def test_ports_airgap_serves_now_count_as_free() -> None:
    checks, got = run(facts(ports={8443: "ours", 8000: "free"}), opts())
    assert row(checks, "port 8443").ok is True
    assert "replaced only after the new one proves healthy" in row(checks, "port 8443").detail
    assert row(checks, "port 8000") == Check("port 8000", True, "free")
    assert got is Decision.PROCEED


def test_gpu_rows() -> None:
    assert row(evaluate(facts(), opts(no_gpu=True)), "gpu") == Check(
        "gpu", None, "skipped (--no-gpu)"
    )
    none = row(evaluate(facts(gpu=False, gpu_detail="no nvidia runtime"), opts()), "gpu")
    assert none == Check("gpu", None, "no nvidia runtime; use --no-gpu for CPU images")
    registry = facts(gpu=None, engine_free=None)
    checks = evaluate(registry, opts())
    assert row(checks, "gpu").detail == "not checked: images go to a registry"
    assert "image storage" not in [c.name for c in checks]


def test_a_failed_elastic_row_raises_its_own_error() -> None:
    err = InstallError("Kibana at http://k refused the API key", hint="Check the key.")
    f = facts(elastic=(Check("kibana", False, err.message),), elastic_errors={"kibana": err})
    checks = evaluate(f, opts())
    assert checks[-1] == Check("kibana", False, err.message)
    with pytest.raises(AirgapError) as e:
        decide(f, checks, opts())
    assert e.value is err


def test_wanted_ports() -> None:
    serve = ServeOptions(port=8443, internal_port=8000, artifacts_port=8081)
    o = opts(serve=serve, ports=(8443,))
    assert wanted_ports(o, has_elastic=True, will_serve=True) == [8443, 8081, 8000]
    assert wanted_ports(o, has_elastic=False, will_serve=True) == [8443, 8000]
    assert wanted_ports(o, has_elastic=True, will_serve=False) == [8443]
    bridged = opts(serve=serve.model_copy(update={"network": "airgap"}), ports=(8443,))
    assert wanted_ports(bridged, has_elastic=False, will_serve=True) == [8443]
