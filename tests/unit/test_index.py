from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundler import canonical
from bundler.bundle.index import Index, chunk_count, parse_index, path_problem
from bundler.errors import BundleError

CHUNK = 64 * 1024
segment = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


def _entry(path: str, size: int) -> dict[str, object]:
    n = chunk_count(size, CHUNK)
    chunks = [hashlib.sha256(f"{path}{i}".encode()).hexdigest() for i in range(n)]
    sha = chunks[0] if n == 1 else hashlib.sha256(path.encode()).hexdigest()
    return {"path": path, "size": size, "sha256": sha, "chunks": chunks}


def _index(files: list[dict[str, object]]) -> dict[str, object]:
    return {
        "format": "airgap-bundle/1",
        "tool": "airgap test",
        "name": "demo",
        "version": 3,
        "created": "2026-01-01T00:00:00Z",
        "expires": "2026-07-01T00:00:00Z",
        "chunk_size": CHUNK,
        "manifest": {"name": "demo", "ratio": 0.9},
        "lock": {},
        "files": files,
        "images": [],
    }


@settings(max_examples=60)
@given(
    st.dictionaries(
        st.lists(segment, min_size=1, max_size=3).map("/".join),
        st.integers(0, 5 * CHUNK),
        min_size=1,
        max_size=8,
    )
)
def test_index_round_trips_byte_for_byte(files: dict[str, int]) -> None:
    paths = sorted(f"models/m/{p}" for p in files)
    # drop paths that would sit inside another file's path
    kept = [p for i, p in enumerate(paths) if not any(p.startswith(q + "/") for q in paths[:i])]
    doc = _index([_entry(p, files[p.removeprefix("models/m/")]) for p in kept])
    index = Index.model_validate(doc)
    data = index.to_bytes()
    assert parse_index(data).to_bytes() == data


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "/etc/passwd",
        "models/../../x",
        "models//x",
        "models/./x",
        "models/a\\b",
        "models/a\x00b",
        "models/a\nb",
        "airgap/index.json",
        "other/x",
        "images/blobs/sha256/notahash",
    ],
)
def test_unsafe_or_foreign_paths_are_refused_even_when_signed(path: str) -> None:
    doc = _index([_entry(path, 10)])
    with pytest.raises(BundleError) as e:
        parse_index(canonical.dumps(doc))
    assert "airgap/index.json" in str(e.value)


def test_path_rules() -> None:
    assert path_problem("models/tiny/config.json") is None
    assert path_problem("models/tiny/ünïcode name.json") is None
    assert path_problem("..") is not None
    assert path_problem("a" * 300) is not None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["files"].reverse(),  # out of order
        lambda d: d["files"].append(dict(d["files"][0])),  # duplicate
        lambda d: d["files"][0]["chunks"].append("0" * 64),  # chunk count wrong
        lambda d: d.update(chunk_size=100_000),  # not a power of two
        lambda d: d.update(expires="2025-01-01T00:00:00Z"),  # before created
        lambda d: d.update(surprise=1),  # unknown key
        lambda d: d.update(format="airgap-bundle/9"),
    ],
)
def test_inconsistent_indexes_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    doc = _index([_entry("models/m/a", 10), _entry("models/m/b", 3 * CHUNK)])
    parse_index(canonical.dumps(doc))
    mutate(doc)
    with pytest.raises(BundleError):
        parse_index(canonical.dumps(doc))
