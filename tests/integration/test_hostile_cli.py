"""Every command, fed crafted input or pointed at a server that is not there, answers with
one ``error:`` line, a hint and the exit code from the table, never a Python traceback
(issue: hostile input, class 2). Real CLI in a subprocess; real dockerd and registry
where install needs them."""

from __future__ import annotations

import functools
import json
import socket
import tarfile
import threading
from collections.abc import Callable
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bundler import canonical
from bundler.build import BuildOptions, plan_build
from bundler.bundle import tarfmt
from bundler.bundle.parts import parts_list_path
from bundler.bundle.signing import load_signing_key
from bundler.bundle.writer import write_bundle
from bundler.manifest import load_manifest
from devkit import services

from conftest import Keys, airgap, build_bundle

pytestmark = pytest.mark.integration


def clean(r: object, code: int, *words: str) -> str:
    """The run exited with ``code``, printed no traceback, and its error names ``words``."""
    err = r.stderr.decode(errors="replace")  # type: ignore[attr-defined]
    assert r.returncode == code, err  # type: ignore[attr-defined]
    assert "Traceback" not in err and 'File "' not in err, err
    assert err.startswith("error: ") and "\nhint: " in err, err
    for word in words:
        assert word in err, err
    return err


def member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1793491200
    info.mode = 0o644
    info.uname = info.gname = ""
    return (
        info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        + data
        + (b"\0" * tarfmt.padding(len(data)))
    )


def signed_with_index(path: Path, key: Keys, index: bytes) -> Path:
    """A bundle whose index is ``index`` (any bytes), validly signed by ``key``."""
    signer = load_signing_key(key.private)
    path.write_bytes(
        member("airgap/index.json", index)
        + member(f"airgap/signatures/{signer.keyid}.sig", signer.sign(index))
        + member("airgap/SHA256SUMS", b"")
        + tarfmt.END_OF_ARCHIVE
    )
    return path


def index_text(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "chunk_size": 65536,
        "created": "2026-11-01T00:00:00Z",
        "expires": "2099-01-01T00:00:00Z",
        "files": [],
        "format": "airgap-bundle/1",
        "images": [],
        "lock": {},
        "manifest": {},
        "name": "demo",
        "tool": "airgap 0.1.0",
        "version": 1,
    }
    doc.update(changes)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


HOSTILE_INDEXES: dict[str, Callable[[], bytes]] = {
    "100k-deep index": lambda: index_text(manifest="@").replace(
        b'"@"', b"[" * 100_000 + b"]" * 100_000
    ),
    "lone surrogate in a path": lambda: index_text(files="@").replace(
        b'"@"', b'[{"chunks":[],"path":"models/\\ud800","sha256":"x","size":0}]'
    ),
    "5000-digit integer": lambda: index_text(version=1).replace(
        b'"version":1', b'"version":' + b"9" * 5000
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_INDEXES))
def test_a_signed_hostile_index_is_refused_by_verify_inspect_sign_and_install(
    tmp_path: Path, key: Keys, case: str, oci_registry: services.Service
) -> None:
    bad = signed_with_index(tmp_path / "bad.tar", key, HOSTILE_INDEXES[case]())
    trust = ["--trusted-key", str(key.public)]
    clean(airgap("verify", str(bad), *trust), 3, "bad.tar", "airgap/index.json")
    clean(airgap("inspect", str(bad)), 3, "bad.tar", "airgap/index.json")
    signer = tmp_path / "auditor"
    airgap("keygen", str(signer))
    clean(airgap("sign", str(bad), "--key", str(signer), *trust), 3, "airgap/index.json")
    prefix = tmp_path / "opt"
    r = airgap("install", str(bad), *trust, "--prefix", str(prefix), "--registry", oci_registry.url)
    clean(r, 3, "airgap/index.json")
    assert not (prefix / "releases").exists() or not any((prefix / "releases").iterdir())


def negative_sizes(bundle: bytes) -> dict[str, bytes]:
    pax = tarfile.TarInfo("airgap/index.json")
    pax.pax_headers = {"size": "-5"}
    base256 = bytearray(bundle[:512])
    base256[124:136] = b"\xff" + (256**11 - 5).to_bytes(11, "big")
    base256[148:156] = b" " * 8
    base256[148:156] = b"%06o\0 " % sum(base256)
    return {
        "pax size=-5": pax.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + bundle[512:],
        "base-256 -5": bytes(base256) + bundle[512:],
    }


def test_negative_tar_member_sizes_are_refused_by_verify_inspect_and_install(
    tmp_path: Path, bundle: Path, key: Keys, oci_registry: services.Service
) -> None:
    trust = ["--trusted-key", str(key.public)]
    for name, data in negative_sizes(bundle.read_bytes()).items():
        bad = tmp_path / f"{name.replace(' ', '_')}.tar"
        bad.write_bytes(data)
        for args in (
            ("verify", str(bad), *trust),
            ("inspect", str(bad)),
            ("install", str(bad), *trust, "--prefix", str(tmp_path / "opt"), "--registry",
             oci_registry.url),
        ):  # fmt: skip
            err = clean(airgap(*args), 3, "member airgap/index.json")
            assert "negative member size" in err or "pax size record '-5'" in err, (name, err)
        # stdin goes through the same reader
        clean(airgap("verify", "-", *trust, input=data), 3, "member airgap/index.json")


def test_a_parts_list_with_wrong_types_is_refused(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    out = tmp_path / "split" / "demo.tar"
    out.parent.mkdir()
    build_bundle(demo_manifest, out, key, split_size=128 * 1024)
    path = parts_list_path(out)
    good = json.loads(path.read_bytes())
    for signed, signatures in (([good["signed"]], good["signatures"]), (good["signed"], "x")):
        path.write_bytes(canonical.dumps({"signatures": signatures, "signed": signed}) + b"\n")
        r = airgap("verify", f"{out}.part-000", "--trusted-key", str(key.public))
        clean(r, 3, "parts.json", "unreadable parts list")


def test_a_signed_index_without_nginx_is_refused_before_serving(
    tmp_path: Path, demo_manifest: Path, key: Keys, docker_engine: services.Service
) -> None:
    m = load_manifest(demo_manifest)
    plan = plan_build(m, BuildOptions(output=tmp_path / "x", keys=(), chunk_size=65536))
    plan = replace(plan, images=[i for i in plan.images if i.role != "nginx"])
    bad = tmp_path / "no-nginx.tar"
    write_bundle(plan, bad, (load_signing_key(key.private),))
    prefix = tmp_path / "opt"
    r = airgap(
        "install", str(bad), "--trusted-key", str(key.public), "--prefix", str(prefix),
        "--runtime-url", docker_engine.url, "--no-gpu",
    )  # fmt: skip
    clean(r, 3, "image roles ['vllm']")
    assert not (prefix / "releases").exists() or not any((prefix / "releases").iterdir())


# -- the connected side ------------------------------------------------------------------------


def manifest_with(demo_manifest: Path, old: str, new: str) -> Path:
    text = demo_manifest.read_text()
    assert old in text
    demo_manifest.write_text(text.replace(old, new))
    return demo_manifest


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("served_name: tiny", 'served_name: "bad name!"', ["model.served_name", "is not a served"]),
        ("served_name: tiny", 'served_name: "\\ud800"', ["model.served_name: lone surrogate"]),
        ("version: 1", "version: " + "9" * 5000, ["integer of 5000 characters"]),
        ("version: 1", "version: 1\nx: " + "[" * 50_000 + "]" * 50_000, ["nested deeper than 64"]),
    ],
)
def test_hostile_manifests_are_usage_errors_for_validate_and_build(
    tmp_path: Path, demo_manifest: Path, key: Keys, old: str, new: str, words: list[str]
) -> None:
    manifest = manifest_with(demo_manifest, old, new)
    clean(airgap("validate", str(manifest)), 2, *words)
    out = tmp_path / "out.tar"
    clean(airgap("build", str(manifest), "-o", str(out), "--key", str(key.private)), 2, *words)
    assert not out.exists()


def test_build_refuses_an_unbundleable_file_name_and_an_expired_date(
    tmp_path: Path, demo_manifest: Path, key: Keys
) -> None:
    out = tmp_path / "out.tar"
    args = ("build", str(demo_manifest), "-o", str(out), "--key", str(key.private))
    odd = demo_manifest.parent / "weights" / "a\\b"
    odd.write_bytes(b"x")
    clean(airgap(*args), 1, "this file name cannot go into a bundle", "weights")
    odd.unlink()
    err = clean(airgap(*args, env={"SOURCE_DATE_EPOCH": "1500000000"}), 2, "expired when written")
    assert "--expires-days" in err and "2018-01-10T02:40:00Z" in err
    assert not list(tmp_path.glob("out.tar*"))


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


@pytest.mark.parametrize("endpoint", ["http://hub.airgap-test.invalid", "refused"])
def test_lock_and_dry_run_with_the_hub_unreachable(tmp_path: Path, endpoint: str) -> None:
    if endpoint == "refused":
        endpoint = f"http://127.0.0.1:{closed_port()}"
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: airgap/v1\nkind: Bundle\nname: hub\nversion: 1\n"
        "model: {repo: org/model, served_name: model}\n"
        "images: {vllm: {archive: ./v.tar}, nginx: {archive: ./n.tar}}\n"
    )
    env = {
        "HF_ENDPOINT": endpoint,
        "AIRGAP_NET_TIMEOUT": "5",
        "AIRGAP_CACHE_DIR": str(tmp_path / "c"),
    }
    for args in (("lock", str(manifest)), ("build", str(manifest), "-o", str(tmp_path / "o.tar"),
                                           "--key", "unused", "--dry-run")):  # fmt: skip
        err = clean(airgap(*args, env=env), 1, endpoint, "cannot reach the Hugging Face Hub")
        assert "HF_ENDPOINT" in err and "HTTPS_PROXY" in err
    assert not (tmp_path / "m.lock.json").exists()


def test_fetch_and_build_with_a_hostile_lock(tmp_path: Path, key: Keys) -> None:
    """The lock is read after upstream answered: a real file server holds the product docs."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kb-product-doc-kibana-9.2.zip").write_bytes(b"PK docs")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(docs))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: airgap/v1\nkind: Bundle\nname: docs\nversion: 1\n"
        "model: {path: ./w, served_name: model}\n"
        "images: {vllm: {archive: ./v.tar}, nginx: {archive: ./n.tar}}\n"
        "elastic: {product_docs: {version: '9.2', products: [kibana]}, "
        f"product_docs_url: 'http://127.0.0.1:{httpd.server_port}'}}\n"
    )
    lock = tmp_path / "m.lock.json"
    env = {"AIRGAP_CACHE_DIR": str(tmp_path / "c")}
    try:
        for body, word in (
            (
                b'{"format":"airgap-lock/1","model":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                "nested",
            ),
            (b'{"format":"airgap-lock/1","elastic":{"files":"x"}}', "invalid lock: elastic.files"),
            (
                b'{"format":"airgap-lock/1","images":{"vllm":{"ref":7}}}',
                "invalid lock: images.vllm",
            ),
        ):
            lock.write_bytes(body)
            clean(airgap("fetch", str(manifest), env=env), 2, "m.lock.json", word)
            out = str(tmp_path / "o.tar")
            clean(
                airgap("build", str(manifest), "-o", out, "--key", str(key.private), env=env),
                2,
                word,
            )
            assert lock.read_bytes() == body  # a bad lock is named, never overwritten
    finally:
        httpd.shutdown()


# -- the air-gapped side's own state -------------------------------------------------------------


@pytest.mark.parametrize(
    "body, word",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),
        (b'{"format":"\\ud800"}', "lone surrogate"),
        (b'{"x":' + b"1" * 5000 + b"}", "integer with 5000 digits"),
    ],
)
def test_status_rollback_uninstall_with_a_hostile_receipt(
    tmp_path: Path, body: bytes, word: str
) -> None:
    prefix = tmp_path / "opt"
    (prefix / "state").mkdir(parents=True)
    (prefix / "state" / "receipt.json").write_bytes(body)
    for command in ("status", "rollback", "uninstall"):
        clean(airgap(command, "--prefix", str(prefix)), 1, "receipt.json", word)
