"""The real `airgap` command as an operator runs it: exit codes, stdin, messages."""

from __future__ import annotations

import hashlib
import json
import stat
import tarfile
from pathlib import Path

import pytest

from conftest import Keys, airgap

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    r = airgap("keygen", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    return tmp_path / "k"


def test_keygen_prints_keyid_and_protects_the_key(tmp_path: Path) -> None:
    r = airgap("keygen", str(tmp_path / "k"))
    assert r.returncode == 0
    keyid = r.stdout.decode().strip()
    assert len(keyid) == 64
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    r = airgap("keygen", str(tmp_path / "k"))
    assert r.returncode == 2 and b"already exists" in r.stderr


def test_passphrase_from_file_or_env_never_argv(tmp_path: Path, demo_manifest: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert airgap("keygen", str(tmp_path / "k"), "--passphrase-file", str(pw)).returncode == 0
    out = tmp_path / "b.tar"
    r = airgap("build", str(demo_manifest), "-o", str(out), "--key", str(tmp_path / "k"))
    assert r.returncode == 2 and b"hint: Give its passphrase" in r.stderr
    assert not out.exists()
    r = airgap(
        "build",
        str(demo_manifest),
        "-o",
        str(out),
        "--key",
        str(tmp_path / "k"),
        env={"AIRGAP_KEY_PASSPHRASE": "s3cret"},
    )
    assert r.returncode == 0, r.stderr
    r = airgap("--help")
    assert b"--passphrase " not in r.stdout


def test_build_verify_inspect_sign_round_trip(
    tmp_path: Path, demo_manifest: Path, keys: Path
) -> None:
    out = tmp_path / "b.tar"
    r = airgap(
        "build",
        str(demo_manifest),
        "-o",
        str(out),
        "--key",
        str(keys),
        "--json",
        "--chunk-size",
        "64K",
    )
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    assert built["outputs"] == [str(out)] and built["files"] == 18  # with the card and the SBOM

    r = airgap("verify", str(out), "--trusted-key", f"{keys}.pub", "--json")
    assert r.returncode == 0, r.stderr
    verified = json.loads(r.stdout)
    assert verified["index_sha256"] == built["index_sha256"]
    assert verified["bytes"] == out.stat().st_size

    r = airgap("verify", "-", "--trusted-key", f"{keys}.pub", input=out.read_bytes())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"OK demo v1")

    r = airgap("inspect", str(out), "--json")
    info = json.loads(r.stdout)
    assert info["name"] == "demo" and info["model"]["files"] == 5  # README.md (the card) too
    assert {i["role"] for i in info["images"]} == {"vllm", "nginx"}
    assert len(info["elastic"]) == 4
    with tarfile.open(out) as tf:
        sbom_size = tf.getmember("sbom/cyclonedx.json").size
    assert info["total_bytes"] == sum(
        f.stat().st_size for f in (demo_manifest.parent / "weights").rglob("*") if f.is_file()
    ) + sum(e["bytes"] for e in info["elastic"]) + sum(i["bytes"] for i in info["images"]) + (
        sbom_size
    )
    assert info["sbom"]["model_files"] == 5 and info["license"]["spdx"] == "Apache-2.0"

    # a co-signer adds a detached signature; verify then meets a threshold of 2
    assert airgap("keygen", str(tmp_path / "k2")).returncode == 0
    r = airgap(
        "verify",
        str(out),
        "--trusted-key",
        f"{keys}.pub",
        "--trusted-key",
        f"{tmp_path / 'k2'}.pub",
        "--require-signatures",
        "2",
    )
    assert r.returncode == 3 and b"1 valid signature(s) from trusted keys, 2 required" in r.stderr
    # the co-signer verifies first: without the first signer's key, nothing is signed
    r = airgap("sign", str(out), "--key", str(tmp_path / "k2"))
    assert r.returncode == 2 and b"--trusted-key" in r.stderr
    assert not list(tmp_path.glob("b.tar.*.sig"))
    damaged = tmp_path / "damaged.tar"
    data = bytearray(out.read_bytes())
    data[-20000] ^= 1  # inside the payload
    damaged.write_bytes(bytes(data))
    r = airgap("sign", str(damaged), "--key", str(tmp_path / "k2"), "--trusted-key", f"{keys}.pub")
    assert r.returncode == 3, r.stderr
    assert not list(tmp_path.glob("damaged.tar.*.sig"))
    r = airgap("sign", str(out), "--key", str(tmp_path / "k2"), "--trusted-key", f"{keys}.pub")
    assert r.returncode == 0, r.stderr
    assert b"verified" in r.stderr
    r = airgap(
        "verify",
        str(out),
        "--trusted-key",
        f"{keys}.pub",
        "--trusted-key",
        f"{tmp_path / 'k2'}.pub",
        "--require-signatures",
        "2",
    )
    assert r.returncode == 0, r.stderr
    # over stdin, the detached signature is passed explicitly
    sig = next(tmp_path.glob("b.tar.*.sig"))
    r = airgap(
        "verify",
        "-",
        "--trust-dir",
        str(tmp_path),
        "--require-signatures",
        "2",
        "--signature",
        str(sig),
        input=out.read_bytes(),
    )
    assert r.returncode == 0, r.stderr


def test_split_parts_through_stdin(tmp_path: Path, demo_manifest: Path, keys: Path) -> None:
    out = tmp_path / "s.tar"
    r = airgap(
        "build", str(demo_manifest), "-o", str(out), "--key", str(keys), "--split-size", "100K"
    )
    assert r.returncode == 0, r.stderr
    parts = sorted(tmp_path.glob("s.tar.part-*"))
    assert len(parts) == 4
    r = airgap("verify", str(parts[0]), "--trusted-key", f"{keys}.pub")
    assert r.returncode == 0, r.stderr
    joined = b"".join(p.read_bytes() for p in parts)
    r = airgap("verify", "-", "--trusted-key", f"{keys}.pub", input=joined)
    assert r.returncode == 0, r.stderr
    r = airgap("verify", "-", "--trusted-key", f"{keys}.pub", input=joined[:-3000])
    assert r.returncode == 3 and b"ends early" in r.stderr


def test_errors_are_one_line_plus_hint_with_the_documented_exit_codes(
    tmp_path: Path, demo_manifest: Path, keys: Path
) -> None:
    out = tmp_path / "b.tar"
    assert airgap("build", str(demo_manifest), "-o", str(out), "--key", str(keys)).returncode == 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    r = airgap("verify", str(bad), "--trusted-key", f"{keys}.pub")
    assert r.returncode == 3
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert "member " in lines[0]

    r = airgap("verify", str(out))  # no trusted key
    assert r.returncode == 2 and b"no trusted key given" in r.stderr
    r = airgap("verify", str(tmp_path / "nope.tar"), "--trusted-key", f"{keys}.pub")
    assert r.returncode == 2 and b"no such bundle" in r.stderr
    r = airgap("verify", str(demo_manifest), "--trusted-key", f"{keys}.pub")
    assert r.returncode == 3 and b"not an airgap bundle" in r.stderr
    r = airgap(
        "build", str(demo_manifest), "-o", str(out), "--key", str(keys), "--split-size", "lots"
    )
    assert r.returncode == 2
    r = airgap("frobnicate")
    assert r.returncode == 2
    r = airgap("--version")
    assert r.returncode == 0 and r.stdout.startswith(b"airgap, version")

    bad_manifest = tmp_path / "m.yaml"
    bad_manifest.write_text(demo_manifest.read_text().replace("max_model_len", "max_model_length"))
    r = airgap("validate", str(bad_manifest))
    assert r.returncode == 2
    assert b"serve.max_model_length: unknown key" in r.stderr


def test_interrupted_or_failed_build_leaves_no_bundle(
    tmp_path: Path, demo_manifest: Path, keys: Path
) -> None:
    (demo_manifest.parent / "vllm.tar").write_bytes(b"garbage")
    out = tmp_path / "b.tar"
    r = airgap("build", str(demo_manifest), "-o", str(out), "--key", str(keys))
    assert r.returncode == 1 and b"vllm.tar" in r.stderr
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("b.tar", ".b.tar"))) == []
    )


def test_schema_is_json(tmp_path: Path) -> None:
    r = airgap("schema")
    assert r.returncode == 0
    assert json.loads(r.stdout)["title"].startswith("airgap manifest")


def test_inspect_index_prints_the_exact_signed_index(
    tmp_path: Path, demo_manifest: Path, keys: Path
) -> None:
    out = tmp_path / "b.tar"
    r = airgap("build", str(demo_manifest), "-o", str(out), "--key", str(keys), "--json")
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    r = airgap("verify", str(out), "--trusted-key", f"{keys}.pub", "--json")
    assert r.returncode == 0, r.stderr
    verified = json.loads(r.stdout)
    with tarfile.open(out) as tar:
        member = tar.extractfile("airgap/index.json")
        assert member is not None
        signed = member.read()

    r = airgap("inspect", str(out), "--index")
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout == signed
    assert hashlib.sha256(r.stdout).hexdigest() == verified["index_sha256"]
    assert verified["index_sha256"] == built["index_sha256"]
    r = airgap("inspect", "-", "--index", input=out.read_bytes())
    assert r.returncode == 0 and r.stdout == signed

    # a split bundle, read from its first part
    split = tmp_path / "s.tar"
    r = airgap(
        "build", str(demo_manifest), "-o", str(split), "--key", str(keys), "--split-size", "100K"
    )
    assert r.returncode == 0, r.stderr
    r = airgap("inspect", f"{split}.part-000", "--index")
    assert r.returncode == 0 and r.stdout == signed  # same sources, same build time

    # it does not verify: damaged payload, the index still prints; verify refuses
    damaged = tmp_path / "damaged.tar"
    data = bytearray(out.read_bytes())
    data[-20000] ^= 1
    damaged.write_bytes(bytes(data))
    r = airgap("inspect", str(damaged), "--index")
    assert r.returncode == 0 and r.stdout == signed
    assert airgap("verify", str(damaged), "--trusted-key", f"{keys}.pub").returncode == 3

    r = airgap("inspect", str(out), "--index", "--json")
    assert r.returncode == 2 and b"drop --json" in r.stderr and r.stdout == b""


def test_install_target_is_explicit_and_misuse_is_a_usage_error(
    tmp_path: Path, bundle: Path, key: Keys
) -> None:
    prefix = tmp_path / "opt"
    base = (
        "install",
        str(bundle),
        "--trusted-key",
        str(key.public),
        "--prefix",
        str(prefix),
        "--runtime-url",
        f"unix://{tmp_path / 'no-engine.sock'}",
    )
    r = airgap(*base, "--target", "registry")
    assert r.returncode == 2, r.stderr
    assert b"--target registry needs --registry HOST[:PORT][/PREFIX]" in r.stderr
    r = airgap(*base, "--target", "kubernetes")
    assert r.returncode == 2, r.stderr
    assert b"--target kubernetes needs --registry HOST[:PORT][/PREFIX]" in r.stderr
    assert b"Traceback" not in r.stderr
    r = airgap(*base, "--target", "kubernetes", "--registry", "127.0.0.1:5000/x")
    assert r.returncode == 2 and b"--target kubernetes needs -o DIR" in r.stderr
    r = airgap(*base, "--registry", "127.0.0.1:5000/x", "-o", str(tmp_path / "base"))
    assert r.returncode == 2 and b"-o DIR is where --target kubernetes writes" in r.stderr
    r = airgap(*base, "--target", "kubernetes", "--registry", "127.0.0.1:5000/x", "-o", "b",
               "--k8s-version", "1.30", "--model-volume", "image")  # fmt: skip
    assert r.returncode == 2 and b"Kubernetes 1.30 has no image volumes" in r.stderr
    r = airgap(*base, "--target", "engine", "--registry", "127.0.0.1:5000/x")
    assert r.returncode == 2 and b"use --target registry" in r.stderr
    r = airgap(*base, "--target", "cloud")
    assert r.returncode == 2 and b"'cloud' is not one of" in r.stderr
    assert not prefix.exists()
    # the same options without the misuse get past the checks, to the (absent) engine
    r = airgap(*base, "--target", "engine")
    assert r.returncode == 1 and b"cannot reach the docker engine" in r.stderr
