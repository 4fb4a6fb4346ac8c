"""Odd but well-formed input must give a clean error, never a crash (issue: hostile input,
class 2). Each case here made a parser raise RecursionError, UnicodeEncodeError, a bare
ValueError, AttributeError, KeyError or a pydantic ValidationError before."""

from __future__ import annotations

import json
import re
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundler import canonical, safejson
from bundler.build import BuildOptions, build, validity
from bundler.bundle import tarfmt
from bundler.bundle.index import INDEX_MEMBER, parse_index
from bundler.bundle.parts import locate_bundle, parts_list_path
from bundler.bundle.policy import TrustPolicy
from bundler.bundle.reader import read_bundle, read_head
from bundler.bundle.signing import load_signing_key
from bundler.errors import BundleError, ManifestError, SourceError, UsageError
from bundler.images import load_image_archive
from bundler.install.contents import check_signed_names
from bundler.install.layout import Layout
from bundler.install.serve import serve_release
from bundler.lock import load_lock
from bundler.manifest import MAX_MANIFEST_BYTES, load_manifest
from devkit.demo_data import Image, tar_bytes

from conftest import Keys, build_bundle

# -- one JSON parser for untrusted input ---------------------------------------------------


def nested(depth: int, inner: str = "0") -> bytes:
    """``depth`` levels, alternating arrays and objects."""
    text = inner
    for i in range(depth):
        text = f"[{text}]" if i % 2 else f'{{"k":{text}}}'
    return text.encode()


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def test_nesting_up_to_the_limit_is_read_and_one_more_is_refused() -> None:
    assert depth_of(safejson.loads(nested(64))) == 64
    with pytest.raises(safejson.JSONInputError, match="nested deeper than 64 levels"):
        safejson.loads(nested(65))
    # the deepest point need not follow a run of opening brackets
    assert depth_of(safejson.loads(b"[[]," * 63 + b"0" + b"]" * 63)) == 64
    with pytest.raises(safejson.JSONInputError, match="nested deeper"):
        safejson.loads(b"[[]," * 64 + b"0" + b"]" * 64)
    with pytest.raises(safejson.JSONInputError, match="nested deeper"):
        safejson.loads(b"[0," * 64 + b"[]" + b"]" * 64)


def test_a_hundred_thousand_levels_are_refused_before_the_parser_recurses() -> None:
    started = time.monotonic()
    for doc in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"0" + b"}" * 100_000):
        with pytest.raises(safejson.JSONInputError, match="nested deeper than 64"):
            safejson.loads(doc)
    assert time.monotonic() - started < 5


def test_brackets_quotes_and_backslashes_inside_strings_do_not_count() -> None:
    deep_text = json.dumps("[" * 200 + '\\"{' * 50 + "\\\\").encode()
    assert safejson.loads(b"[" + deep_text + b"]") == ["[" * 200 + '\\"{' * 50 + "\\\\"]
    # an escaped backslash before a quote ends the string: the brackets after it count
    trick = b'["\\\\",' + nested(64) + b"]"
    with pytest.raises(safejson.JSONInputError, match="nested deeper"):
        safejson.loads(trick)
    # an escaped quote does not end it: the brackets inside stay text
    assert safejson.loads(b'["\\"' + b"[" * 100 + b'"]') == ['"' + "[" * 100]


_text = st.text(alphabet='[]{}"\\ab,:', max_size=8)
_leaf = st.none() | st.integers(-(10**6), 10**6) | _text
_tree = st.recursive(
    _leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_text, kids, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_tree, st.integers(min_value=50, max_value=70), st.booleans())
def test_the_depth_scan_agrees_with_the_real_depth(value: Any, wrap: int, objects: bool) -> None:
    for _ in range(wrap):
        value = {"k": value} if objects else [value]
    data = json.dumps(value).encode()
    if depth_of(value) <= safejson.MAX_DEPTH:
        assert safejson.loads(data) == value
    else:
        with pytest.raises(safejson.JSONInputError, match="nested deeper"):
            safejson.loads(data)


def test_integers_of_more_than_twenty_digits_are_refused_by_us_not_by_the_stdlib() -> None:
    assert safejson.loads(b"[99999999999999999999,-99999999999999999999]")[0] == 10**20 - 1
    with pytest.raises(safejson.JSONInputError, match="integer with 21 digits"):
        safejson.loads(b"100000000000000000000")
    with pytest.raises(safejson.JSONInputError, match="integer with 5000 digits"):
        safejson.loads(b'{"size":' + b"7" * 5000 + b"}")


@pytest.mark.parametrize("doc", [b"NaN", b"[Infinity]", b"-Infinity", b"[1e999]"])
def test_non_finite_numbers_are_refused(doc: bytes) -> None:
    with pytest.raises(safejson.JSONInputError):
        safejson.loads(doc)


@pytest.mark.parametrize(
    "doc, where",
    [
        (b'"\\ud800"', "$"),
        (b'{"files":[{"path":"models/\\udfff"}]}', "$.files[0].path"),
        (b'{"\\ud800x":1}', "(a key)"),
        (b'["\\ude00\\ud83d"]', "$[0]"),  # the pair in the wrong order is two lone ones
    ],
)
def test_lone_surrogate_escapes_are_refused_where_they_are(doc: bytes, where: str) -> None:
    with pytest.raises(safejson.JSONInputError, match="lone surrogate") as e:
        safejson.loads(doc)
    assert where in str(e.value)


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    assert safejson.loads(b'"\\ud83d\\ude00"') == "\U0001f600"
    assert safejson.loads(b'"\\\\ud800"') == "\\ud800"


def test_canonical_json_never_writes_what_it_would_not_read() -> None:
    for value, message in (
        ({"n": 10**20}, "at most 20 digits"),
        ({"p": "\ud800"}, "lone surrogate"),
        (json.loads(nested(65)), "nested deeper than 64"),
    ):
        with pytest.raises(canonical.CanonicalJSONError, match=message):
            canonical.dumps(value)
    assert canonical.loads(canonical.dumps(json.loads(nested(64))))


def test_typed_fields_name_the_path_and_the_type() -> None:
    doc = {"parts": "nope", "size": True}
    with pytest.raises(
        safejson.JSONInputError, match=r"\$\.parts: expected an array, got a string"
    ):
        safejson.field(doc, "parts", list, "$")
    with pytest.raises(safejson.JSONInputError, match="expected an integer, got true or false"):
        safejson.field(doc, "size", int, "$")
    with pytest.raises(safejson.JSONInputError, match=r"\$\.missing: missing"):
        safejson.field(doc, "missing", str, "$")
    with pytest.raises(safejson.JSONInputError, match="non-negative"):
        safejson.count(-5, "size")


# -- the index: parsed only through safejson -------------------------------------------------


def index_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "airgap-bundle/1",
        "tool": "airgap 0.1.0",
        "name": "demo",
        "version": 1,
        "created": "2026-11-01T00:00:00Z",
        "expires": "2099-01-01T00:00:00Z",
        "chunk_size": 65536,
        "manifest": {},
        "lock": {},
        "files": [],
        "images": [],
    }
    doc.update(changes)
    return doc


def raw_index(doc: dict[str, Any]) -> bytes:
    """Canonical text, written by hand where canonical.dumps would refuse the value."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


@pytest.mark.parametrize(
    "data, message",
    [
        (raw_index(index_doc(manifest=json.loads(nested(100)))), "nested deeper than 64"),
        (raw_index(index_doc(lock={"x": "\ud800"})).replace(b"\xed\xa0\x80", b"\\ud800"), "lone"),
        (
            raw_index(index_doc(version=1)).replace(b'"version":1', b'"version":' + b"1" * 5000),
            "5000 digits",
        ),
        (
            b'{"chunk_size":65536,"files":[{"path":"models/\\ud800"}]}',
            "lone surrogate",
        ),
    ],
)
def test_index_limits_are_bundle_errors_naming_the_index(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message) as e:
        parse_index(data, bundle="b.tar")
    assert e.value.exit_code == 3 and INDEX_MEMBER in str(e.value)


# -- tar headers: sizes no member can have ----------------------------------------------------


def with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def base256_size(header: bytes, size: int) -> bytes:
    """``header``'s first block with its size field in base-256 (negative allowed)."""
    block = bytearray(header[:512])
    block[124:136] = (
        b"\xff" + (256**11 + size).to_bytes(11, "big")
        if size < 0
        else (b"\x80" + size.to_bytes(11, "big"))
    )
    return with_checksum(block) + header[512:]


def pax_member(name: str, pax_size: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.pax_headers = {"size": pax_size}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def first_member_end(data: bytes) -> int:
    size = tarfile.TarInfo.frombuf(data[:512], "utf-8", "surrogateescape").size
    return 512 + size + tarfmt.padding(size)


@pytest.mark.parametrize(
    "case, message",
    [
        ("index base-256 -5", "negative member size -5 in the tar header's size field"),
        ("index pax -5", "pax size record '-5' is not a member size"),
        ("index pax +5", "pax size record '+5' is not a member size"),
        ("index pax huge", "is not a member size"),
        ("index base-256 huge", "beyond the limit of 9223372036854775807 bytes"),
        ("payload base-256 -5", "negative member size -5"),
    ],
)
def test_negative_or_overflowing_member_sizes_are_refused_by_name(
    tmp_path: Path, bundle: Path, key: Keys, case: str, message: str
) -> None:
    data = bundle.read_bytes()
    index_end = first_member_end(data)
    header = data[:512]
    if case == "index base-256 -5":
        bad = base256_size(header, -5) + data[512:]
    elif case == "index base-256 huge":
        bad = base256_size(header, 2**80) + data[512:]
    elif case.startswith("index pax"):
        value = {"-5": "-5", "+5": "+5", "huge": "9" * 40}[case.split()[-1]]
        bad = pax_member(INDEX_MEMBER, value) + data[512:]
    else:  # the first payload member's header (after index, signature, SHA256SUMS)
        pos = index_end
        for _ in range(2):
            size = tarfile.TarInfo.frombuf(data[pos : pos + 512], "utf-8", "surrogateescape").size
            pos += 512 + size + tarfmt.padding(size)
        if data[pos + 156 : pos + 157] == b"x":  # a pax header first: edit the member's own
            size = tarfile.TarInfo.frombuf(data[pos : pos + 512], "utf-8", "surrogateescape").size
            pos += 512 + size + tarfmt.padding(size)
        bad = data[:pos] + base256_size(data[pos : pos + 512], -5) + data[pos + 512 :]
    path = tmp_path / "bad.tar"
    path.write_bytes(bad)
    calls = [lambda: read_bundle(str(path), TrustPolicy(key.trust()))]
    if case.startswith("index"):
        calls.append(lambda: read_head(str(path)))
    for call in calls:
        with pytest.raises(BundleError, match=re.escape(message)) as e:
            call()
        assert e.value.exit_code == 3
        assert "member" in str(e.value) and "bad.tar" in str(e.value)


# -- the parts list: every field's type checked ----------------------------------------------


@pytest.fixture
def split_bundle(tmp_path: Path, demo_manifest: Path, key: Keys) -> Path:
    out = tmp_path / "split" / "demo.tar"
    out.parent.mkdir()
    build_bundle(demo_manifest, out, key, split_size=128 * 1024)
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(signed=[d["signed"]]), r"\$\.signed: expected an object, got an array"),
        (
            lambda d: d.update(signatures=["ab"]),
            r"\$\.signatures: expected an object, got an array",
        ),
        (lambda d: d.update(signatures="ab"), "expected an object, got a string"),
        (lambda d: d.update(signatures={"k": 5}), r"\$\.signatures\.k: expected a string"),
        (lambda d: d["signed"].update(parts="x"), r"\$\.signed\.parts: expected an array"),
        (lambda d: d["signed"]["parts"].__setitem__(0, "x"), r"parts\[0\]: expected an object"),
        (
            lambda d: d["signed"]["parts"][0].update(size="5"),
            r"parts\[0\]\.size: expected an integer",
        ),
        (lambda d: d["signed"]["parts"][0].update(size=-5), "non-negative"),
        (lambda d: d["signed"]["parts"][0].update(name=7), r"parts\[0\]\.name: expected a string"),
        (lambda d: d["signed"]["parts"][0].pop("sha256"), r"parts\[0\]\.sha256: missing"),
        (lambda d: d.clear() or d.update(x=1) or None, r"\$\.signed: missing"),
    ],
)
def test_a_parts_list_with_wrong_json_types_is_refused_cleanly(
    split_bundle: Path, change: Any, message: str
) -> None:
    path = parts_list_path(split_bundle)
    doc = json.loads(path.read_bytes())
    change(doc)
    path.write_bytes(canonical.dumps(doc) + b"\n")
    with pytest.raises(BundleError, match="unreadable parts list: ") as e:
        locate_bundle(str(split_bundle) + ".part-000")
    assert re.search(message, str(e.value)), str(e.value)
    assert e.value.exit_code == 3 and "parts.json" in str(e.value)


def test_a_parts_list_that_is_not_an_object_is_refused(split_bundle: Path) -> None:
    path = parts_list_path(split_bundle)
    for body in (b"[]", b'"x"', b"[" * 1000 + b"]" * 1000):
        path.write_bytes(body)
        with pytest.raises(BundleError, match="unreadable parts list"):
            locate_bundle(str(split_bundle))


# -- image archives: manifest.json, configs, OCI layouts ---------------------------------------


def docker_archive(tmp_path: Path, manifest: bytes, config: bytes | None = None) -> Path:
    image = Image([{"bin/sh": b"#!shell"}])
    files = {"manifest.json": manifest, "c.json": config or image.config}
    files.update({f"{i}/layer.tar": b for i, b in enumerate(image.blobs)})
    path = tmp_path / "img.tar"
    path.write_bytes(tar_bytes(files))
    return path


def load(path: Path) -> Any:
    return load_image_archive(
        path, role="vllm", platform="linux/amd64", default_ref="x/y:1", chunk_size=65536
    )


@pytest.mark.parametrize(
    "manifest, message",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),
        (
            b'[{"Config":"c.json","Layers":["0/layer.tar"],"RepoTags":["\\ud800"]}]',
            "lone surrogate",
        ),
        (
            b'[{"Config":"c.json","Layers":"0/layer.tar"}]',
            r"Layers: expected an array, got a string",
        ),
        (b'[{"Config":7,"Layers":["0/layer.tar"]}]', r"Config: expected a string, got an integer"),
        (b'[{"Config":"c.json","Layers":[{}]}]', r"Layers\[0\]: expected a string"),
        (
            b'[{"Config":"c.json","Layers":["0/layer.tar"],"RepoTags":"a"}]',
            "RepoTags: expected an array",
        ),
        (b'[{"Layers":["0/layer.tar"]}]', "Config: missing"),
        (b'[{"Config":"c.json","Layers":[],"x":' + b"1" * 5000 + b"}]", "integer with 5000 digits"),
    ],
)
def test_docker_archive_manifest_json_is_schema_checked(
    tmp_path: Path, manifest: bytes, message: str
) -> None:
    with pytest.raises(SourceError, match=message) as e:
        load(docker_archive(tmp_path, manifest))
    assert "manifest.json" in str(e.value) and "img.tar" in str(e.value)


@pytest.mark.parametrize(
    "config, message",
    [
        (b'{"rootfs":{"diff_ids":"sha256:x"}}', "diff_ids: expected an array"),
        (b'{"rootfs":[]}', "rootfs: expected an object"),
        (b"[]", "expected an object, got an array"),
        (b'{"rootfs":' * 70 + b"0" + b"}" * 70, "nested deeper"),
    ],
)
def test_docker_archive_config_is_schema_checked(
    tmp_path: Path, config: bytes, message: str
) -> None:
    manifest = b'[{"Config":"c.json","Layers":["0/layer.tar"]}]'
    with pytest.raises(SourceError, match=message) as e:
        load(docker_archive(tmp_path, manifest, config))
    assert "c.json" in str(e.value)


@pytest.mark.parametrize("how", ["pax -5", "pax huge", "base-256 -5"])
def test_an_image_archive_member_with_an_impossible_size_is_a_source_error(
    tmp_path: Path, how: str
) -> None:
    image = Image([{"bin/sh": b"#!shell"}]).docker_archive(tmp_path / "good.tar", "x/y:1")
    data = image.read_bytes()
    if how.startswith("pax"):
        head = pax_member("manifest.json", "-5" if how == "pax -5" else "9" * 30)
    else:
        info = tarfile.TarInfo("manifest.json")
        head = base256_size(info.tobuf(tarfile.USTAR_FORMAT), -5)
    path = tmp_path / "img.tar"
    path.write_bytes(head + data)
    with pytest.raises(SourceError, match="not a readable uncompressed tar") as e:
        load(path)
    assert "img.tar" in str(e.value)
    if how != "pax huge":
        assert "member manifest.json: negative member size -5" in str(e.value)


def test_oci_layout_documents_are_schema_checked(tmp_path: Path) -> None:
    image = Image([{"bin/sh": b"#!shell"}])
    files = image.oci_files("x/y:1")
    cases = [
        (b"[" * 5000 + b"]" * 5000, "nested deeper"),
        (
            b'{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":5}]}',
            "digest: expected a string",
        ),
    ]
    for index, message in cases:
        path = tmp_path / f"oci-{len(message)}.tar"
        path.write_bytes(tar_bytes({**files, "index.json": index}))
        with pytest.raises(SourceError, match=message):
            load(path)


# -- manifests (YAML) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: " + "[" * 50_000 + "]" * 50_000, "nested deeper than 64 levels"),
        ("".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v\n", "nested deeper"),
        ("version: " + "9" * 5000 + "\n", "integer of 5000 characters"),
        ('name: "\\ud800"\n', "name: lone surrogate escape"),
        ('"\\udfff": 1\n', r"\(a key\): lone surrogate"),
        ("a:\n\t- b\n", "line 2, column 1"),
    ],
)
def test_hostile_yaml_is_a_manifest_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ManifestError, match=message) as e:
        load_manifest(path)
    assert e.value.exit_code == 2 and str(path) in str(e.value)
    assert "\n" not in str(e.value)  # one line, with its line and column


def test_an_oversized_manifest_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"# x\n" * (MAX_MANIFEST_BYTES // 4 + 1))
    with pytest.raises(ManifestError, match=f"larger than {MAX_MANIFEST_BYTES} bytes"):
        load_manifest(path)


def test_an_invalid_served_name_names_its_key(demo_manifest: Path) -> None:
    text = demo_manifest.read_text()
    demo_manifest.write_text(text.replace("served_name: tiny", 'served_name: "x/../../etc"'))
    with pytest.raises(
        ManifestError, match=r"model\.served_name: 'x/\.\./\.\./etc' is not a served"
    ):
        load_manifest(demo_manifest)


# -- the lock: a schema before use -------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(images=[]), r"images: Input should be a valid dictionary"),
        (lambda d: d["images"]["vllm"].update(layers="x"), r"images\.vllm\.layers"),
        (lambda d: d["model"]["files"][0].update(size="5"), r"model\.files\.0\.size"),
        (lambda d: d["model"]["files"][0].update(path="../../x"), r"model\.files\.0\.path"),
        (
            lambda d: d["elastic"]["files"][0].update(name="elser/../../x"),
            r"elastic\.files\.0\.name",
        ),
        (lambda d: d["elastic"].update(files={}), r"elastic\.files"),
    ],
)
def test_a_lock_is_schema_checked(tmp_path: Path, change: Any, message: str) -> None:
    golden = Path(__file__).parents[1] / "fixtures" / "golden" / "golden.lock.json"
    doc = json.loads(golden.read_text())
    change(doc)
    path = tmp_path / "x.lock.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="invalid lock: " + message) as e:
        load_lock(path)
    assert e.value.exit_code == 2


def test_a_deeply_nested_lock_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.lock.json"
    path.write_bytes(b'{"format":"airgap-lock/1","model":' + nested(100_000) + b"}")
    with pytest.raises(ManifestError, match="unreadable lock: JSON nested deeper than 64"):
        load_lock(path)


# -- build ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\\b", "tab\there", "new\nline", "bad-\udcff"])
def test_a_weights_file_name_no_bundle_can_carry_is_a_source_error(
    tmp_path: Path, demo_manifest: Path, key: Keys, name: str
) -> None:
    weights = demo_manifest.parent / "weights"
    (weights / name).write_bytes(b"x")
    out = tmp_path / "out.tar"
    with pytest.raises(SourceError, match="this file name cannot go into a bundle") as e:
        build_bundle(demo_manifest, out, key)
    assert "weights" in str(e.value)
    assert not out.exists()


def test_an_old_source_date_epoch_does_not_write_an_expired_bundle(
    tmp_path: Path, demo_manifest: Path, key: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1500000000")  # 2017-07-14
    out = tmp_path / "old.tar"
    m = load_manifest(demo_manifest)
    opts = BuildOptions(output=out, keys=(load_signing_key(key.private),), chunk_size=65536)
    with pytest.raises(UsageError) as e:
        build(m, opts)
    assert e.value.exit_code == 2
    assert "expired when written" in str(e.value) and "2018-01-10T02:40:00Z" in str(e.value)
    days = (datetime.now(UTC) - datetime.fromtimestamp(1500000000, UTC)).days + 1
    assert f"--expires-days {days}" in e.value.hint
    assert not out.exists() and not list(tmp_path.glob("old.tar*"))
    # the suggested validity builds, reproducibly dated
    result = build(m, BuildOptions(output=out, keys=opts.keys, chunk_size=65536, expires_days=days))
    assert result.index.created == "2017-07-14T02:40:00Z"
    assert result.index.expires_at > datetime.now(UTC)


def test_validity_is_refused_only_when_already_past(
    demo_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = load_manifest(demo_manifest)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(now.timestamp()) - 179 * 86400))
    _, expires = validity(m, BuildOptions(output=Path("x"), keys=()), now)
    assert expires > now  # 180 days from 179 days ago: one day left, still written
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")  # no --expires-days (at most 3650) reaches now
    with pytest.raises(UsageError, match="1970-06-30T00:00:01Z, which is past") as e:
        validity(m, BuildOptions(output=Path("x"), keys=()), now)
    assert "set SOURCE_DATE_EPOCH to a recent time" in e.value.hint
    assert "--expires-days" not in e.value.hint


# -- install: a signed index without the images it must carry ---------------------------------


def test_a_signed_index_without_nginx_is_refused_before_install_acts(bundle: Path) -> None:
    index = read_head(str(bundle)).index
    only_vllm = index.model_copy(update={"images": [i for i in index.images if i.role == "vllm"]})
    with pytest.raises(BundleError, match=r"image roles \['vllm'\]: the index must carry") as e:
        check_signed_names(only_vllm)
    assert e.value.exit_code == 3


class _NeverStarts:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def start(self, *args: object) -> object:
        raise AssertionError("must refuse before starting anything")


def test_serving_a_release_whose_index_lacks_nginx_is_a_clean_error(
    tmp_path: Path, bundle: Path
) -> None:
    """A release on disk from before install refused such an index (rollback serves it)."""
    index = read_head(str(bundle)).index
    only_vllm = index.model_copy(update={"images": [i for i in index.images if i.role == "vllm"]})
    layout = Layout(tmp_path / "opt")
    release = tmp_path / "opt" / "releases" / "demo-1"
    layout.index_file(release).parent.mkdir(parents=True)
    layout.index_file(release).write_bytes(only_vllm.to_bytes())
    with pytest.raises(BundleError, match="carries no nginx image") as e:
        serve_release(_NeverStarts(layout), release, "demo-1", None, True)  # type: ignore[arg-type]
    assert e.value.exit_code == 3
