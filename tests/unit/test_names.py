"""Names from manifests and signed indexes, and what is derived from them (issue: a
trusted-signed bundle must not reach outside what it installs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bundler.bundle.reader import read_head
from bundler.errors import BundleError
from bundler.install.contents import check_signed_names
from bundler.names import (
    check_served_name,
    contained,
    container_name,
    image_tag,
    model_mount,
    registry_name,
    slug,
)

GOOD = ["tiny", "mistralai/Mistral-Small-3.2-24B-Instruct-2506", "org/Name_v2.1", "a/b/c"]
BAD = [
    "x/../../../../etc",
    "..",
    "a/..",
    "a/./b",
    "a//b",
    "/abs",
    "trailing/",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a:b",
    ".hidden",
    "",
    "x" * 129,
    "tiny\n",
]


@pytest.mark.parametrize("name", GOOD)
def test_real_served_names_keep_their_grammar(name: str) -> None:
    assert check_served_name(name) == name


@pytest.mark.parametrize("name", BAD)
def test_served_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not a served name"):
        check_served_name(name)


def test_slug_is_identity_for_safe_names_and_injective_otherwise() -> None:
    for name in ("demo", "demo-tiny", "llama-3.3-70b-elastic", "qwen2.5-72b-elastic", "vllm"):
        assert slug(name) == name
    odd = ["Org/Name", "org-name", "org/name", "a..b", "a_", "x" * 80, "../etc", "a--b"]
    odd.append(slug("a..b"))  # a plain name that spells another's derived form
    slugs = [slug(n) for n in odd]
    assert len(set(slugs)) == len(odd)
    for s in slugs:
        assert all(c.isalnum() or c in "-._" for c in s) and s[0].isalnum() and len(s) <= 63
        assert "/" not in s and ".." not in s


def test_derived_names() -> None:
    assert container_name("demo", "vllm") == "airgap-demo-vllm"
    assert image_tag("demo", 3, "nginx") == "localhost/airgap/demo/nginx:3"
    assert registry_name("site/ai", "demo", 3, "vllm") == ("site/ai/demo/vllm", "3")
    assert registry_name("", "demo", 3, "vllm") == ("airgap/demo/vllm", "3")
    assert model_mount("tiny") == "/models/tiny"
    inside = model_mount("mistralai/Mistral-Small-3.2-24B-Instruct-2506")
    assert inside.startswith("/models/mistralai-mistral-small") and inside.count("/") == 2
    with pytest.raises(ValueError):
        model_mount("x/../../secrets")


def test_contained_proves_a_directory_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "release" / "models"
    (root / "org" / "Name").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    assert contained(root, "org/Name") == root.resolve() / "org" / "Name"
    os.symlink(tmp_path / "secrets", root / "link")
    for bad in ("link", "org/../../../secrets", "missing", "org/Name/../../x", "a:b"):
        with pytest.raises(ValueError):
            contained(root, bad)
    assert not (root / "missing").exists()  # refused, never created


def test_signed_index_names_are_checked_again_before_install(bundle: Path) -> None:
    index = read_head(str(bundle)).index
    assert check_signed_names(index).model.served_name == "tiny"
    manifest = dict(index.manifest)
    cases: list[tuple[dict[str, object], str]] = [
        ({"manifest": {**manifest, "model": {"path": "w", "served_name": "x/../../s"}}}, "served"),
        ({"manifest": {**manifest, "name": "other"}}, "the manifest names other"),
        ({"images": [index.images[0], index.images[0]]}, "image roles"),
        (
            {"images": [index.images[0].model_copy(update={"role": "sidecar"}), index.images[1]]},
            "image roles",
        ),
        (
            {"images": [index.images[0].model_copy(update={"ref": "a/../b"}), index.images[1]]},
            "not an image reference",
        ),
        (
            {"images": [index.images[0].model_copy(update={"ref": "x/y:1\n"}), index.images[1]]},
            "not an image reference",
        ),
        (
            {
                "images": [
                    index.images[0].model_copy(update={"ref": "localhost/airgap/prod/nginx:7"}),
                    index.images[1],
                ]
            },
            "in airgap's tag namespace",
        ),
        (
            {
                "files": [
                    f.model_copy(update={"path": f.path.replace("models/tiny/", "models/other/")})
                    for f in index.files
                ]
            },
            "must live under models/tiny/",
        ),
        (
            {
                "files": [
                    f.model_copy(update={"path": f.path.replace("elser_model_2", "x?y")})
                    for f in index.files
                ]
            },
            "not an ELSER or product-doc file name",
        ),
    ]
    for update, message in cases:
        with pytest.raises(BundleError, match=re.escape(message)) as e:
            check_signed_names(index.model_copy(update=update))
        assert e.value.exit_code == 3
