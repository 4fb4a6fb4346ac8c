from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bundler.errors import ManifestError
from bundler.manifest import Manifest, json_schema, load_manifest, parse_manifest

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "apiVersion": "airgap/v1",
    "kind": "Bundle",
    "name": "demo",
    "version": 1,
    "model": {"path": "./weights", "served_name": "tiny"},
    "images": {"vllm": {"archive": "./vllm.tar"}, "nginx": "docker.io/library/nginx:1.27"},
}


def with_(**changes: object) -> dict[str, object]:
    doc = {**BASE}
    doc.update(changes)
    return doc


@pytest.mark.parametrize("path", sorted((REPO / "manifests").glob("*.yaml")))
def test_shipped_manifests_are_valid(path: Path) -> None:
    m = load_manifest(path)
    assert m.images.vllm and m.images.nginx


def test_shipped_manifests_follow_elastics_guidance() -> None:
    llama = load_manifest(REPO / "manifests/llama-3.3-70b-instruct.yaml")
    assert llama.serve.max_model_len is not None and llama.serve.max_model_len >= 64000
    mistral = load_manifest(REPO / "manifests/mistral-small-3.2-24b-instruct.yaml")
    s = mistral.serve
    assert (s.tokenizer_mode, s.config_format, s.load_format, s.tool_call_parser) == (
        "mistral",
        "mistral",
        "mistral",
        "mistral",
    )
    assert s.tensor_parallel_size == 2 and s.enable_auto_tool_choice


def test_unknown_key_is_named_by_its_path() -> None:
    doc = with_(serve={"max_model_len": 100, "max_model_length": 5})
    with pytest.raises(ManifestError) as e:
        parse_manifest(doc, source="m.yaml")
    assert "m.yaml: serve.max_model_length: unknown key" in str(e.value)
    assert "airgap schema" in e.value.hint


@pytest.mark.parametrize(
    "doc, fragment",
    [
        (with_(version=0), "version:"),
        (with_(name="Bad Name"), "name:"),
        (with_(apiVersion="airgap/v2"), "apiVersion:"),
        (with_(model={"served_name": "x"}), "exactly one of `repo`"),
        (with_(model={"repo": "a/b", "path": "./w", "served_name": "x"}), "exactly one of `repo`"),
        (
            with_(model={"path": "./w", "served_name": "x", "include": ["*"]}),
            "apply only to `repo`",
        ),
        (with_(images={"vllm": "not a ref!!", "nginx": "nginx"}), "is not an image reference"),
        (
            with_(images={"vllm": {"archive": "x", "extra": 1}, "nginx": "nginx"}),
            "images.vllm.extra: unknown key",
        ),
        (with_(serve={"enable_auto_tool_choice": True}), "needs tool_call_parser"),
        (with_(serve={"gpu_memory_utilization": 1.5}), "serve.gpu_memory_utilization"),
        (with_(elastic={"elser": ["elser_model_9"]}), "elastic.elser[0]"),
        (with_(platform="amd64"), "platform:"),
    ],
)
def test_invalid_values_are_refused_with_their_path(doc: dict[str, object], fragment: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest(doc)
    assert fragment in str(e.value)


def test_relative_paths_resolve_against_the_manifest_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "m.yaml").write_text(yaml.safe_dump(BASE))
    monkeypatch.chdir(tmp_path)
    m = load_manifest(Path("conf/m.yaml"))
    assert m.model.path is not None
    assert m.resolve(m.model.path) == sub / "weights"
    # the signed form keeps the path as written (no build-machine directories)
    assert m.to_signed_dict()["model"]["path"] == "./weights"


def test_bad_yaml_and_non_mapping(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text("model: [unclosed")
    with pytest.raises(ManifestError, match="invalid YAML"):
        load_manifest(p)
    p.write_text("- a list")
    with pytest.raises(ManifestError, match="must be a YAML mapping"):
        load_manifest(p)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.yaml")


def test_schema_describes_the_manifest() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert {"apiVersion", "model", "images", "serve"} <= set(schema["properties"])
    assert isinstance(Manifest.model_json_schema(), dict)
