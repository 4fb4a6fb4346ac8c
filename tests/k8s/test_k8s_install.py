"""``airgap install --target kubernetes`` against the real registry (docker-registry), the
real ``skopeo`` pulling back by digest, and a ``kubectl`` stub on PATH (no API server
runs here): the model in both forms, the base, the commands, status/rollback/uninstall.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from bundler.bundle.index import parse_index
from devkit import services
from devkit.demo_data import make_demo_sources

from conftest import Keys, airgap, build_bundle

HERE = Path(__file__).resolve().parent


def make_bundle(tmp: Path, key: Keys, version: int = 1, **kw: Any) -> Path:
    src = tmp / f"src{version}"
    src.mkdir()
    manifest = make_demo_sources(src, **kw)
    doc = yaml.safe_load(manifest.read_text())
    doc["version"] = version
    manifest.write_text(yaml.safe_dump(doc))
    out = tmp / f"demo-{version}.tar"
    build_bundle(manifest, out, key)
    return out


def install(
    bundle: Path,
    key: Keys,
    tmp: Path,
    registry: str,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return airgap(
        "install", str(bundle), "--trusted-key", str(key.public), "--prefix", str(tmp / "opt"),
        "--target", "kubernetes", "--registry", f"{registry}/{repo_prefix(tmp)}", "-o", str(tmp / "base"),
        "--no-gpu", *extra, env=env,
    )  # fmt: skip


def repo_prefix(tmp: Path) -> str:
    """A registry prefix of this test's own (the registry is shared by the session)."""
    return "t" + hashlib.sha256(str(tmp).encode()).hexdigest()[:12]


def receipt(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "opt" / "state" / "receipt.json").read_text())


def model_files(tmp: Path, release: str = "demo-1") -> dict[str, str]:
    """The model's files and signed sha256s, from the index the release kept."""
    index = parse_index((tmp / "opt" / "releases" / release / "airgap" / "index.json").read_bytes())
    return {
        f.path.removeprefix("models/tiny/"): f.sha256
        for f in index.files
        if f.path.startswith("models/")
    }


def by_digest(record: dict[str, Any]) -> str:
    return record["ref"].rsplit(":", 1)[0] + "@" + record["id"]


def skopeo_copy(ref: str, dest: str) -> None:
    done = subprocess.run(
        ["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", f"docker://{ref}", dest],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def stub(tmp_path: Path) -> dict[str, str]:
    """PATH with the kubectl stub first, and where it logs."""
    bindir = tmp_path / "stubbin"
    bindir.mkdir()
    exe = bindir / "kubectl"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "kubectl_stub.py"}" "$@"\n')
    exe.chmod(0o755)
    return {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "KUBECTL_STUB_LOG": str(tmp_path / "kubectl.log"),
    }


def calls(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["KUBECTL_STUB_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_modelcar_round_trips_by_digest(
    tmp_path: Path, key: Keys, oci_registry: services.Service
) -> None:
    bundle = make_bundle(tmp_path, key)
    r = install(bundle, key, tmp_path, oci_registry.url, "--k8s-version", "1.34")
    assert r.returncode == 0, r.stderr.decode()
    images = {i["role"]: i for i in receipt(tmp_path)["releases"]["demo-1"]["images"]}
    ref = by_digest(images["model"])
    skopeo_copy(ref, f"oci:{tmp_path / 'pulled'}:model")
    layout = tmp_path / "pulled"
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    assert digest == images["model"]["id"]  # what the registry served is what was recorded

    def blob(d: str) -> Path:
        return layout / "blobs" / "sha256" / d.removeprefix("sha256:")

    manifest = json.loads(blob(digest).read_bytes())
    vllm_manifest = json.loads(skopeo_inspect_raw(by_digest(images["vllm"])))
    # the vLLM image's layers (same blobs), then one uncompressed layer with the model
    assert [la["digest"] for la in manifest["layers"][:-1]] == [
        la["digest"] for la in vllm_manifest["layers"]
    ]
    last = manifest["layers"][-1]
    assert last["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    assert config["rootfs"]["diff_ids"][-1] == last["digest"]  # uncompressed: diff id = digest
    assert sha256_file(blob(last["digest"])) == last["digest"].removeprefix("sha256:")
    got = {}
    with tarfile.open(blob(last["digest"])) as tf:
        for m in tf.getmembers():
            assert (m.name + "/").startswith(("models/", "models/tiny/")) and m.uid == m.gid == 0
            assert m.mode == (0o755 if m.isdir() else 0o644)
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                got[m.name.removeprefix("models/tiny/")] = hashlib.sha256(f.read()).hexdigest()
    assert got == model_files(tmp_path)  # every file, each one's sha256 as signed
    assert not (tmp_path / "opt" / "releases" / "demo-1" / "models").exists()  # never staged


def skopeo_inspect_raw(ref: str) -> str:
    done = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_oci_artifact_round_trips_by_digest(
    tmp_path: Path, key: Keys, oci_registry: services.Service
) -> None:
    bundle = make_bundle(tmp_path, key)
    r = install(
        bundle, key, tmp_path, oci_registry.url, "--model-artifact", "oci", "--k8s-version", "1.35"
    )
    assert r.returncode == 0, r.stderr.decode()
    model = next(
        i for i in receipt(tmp_path)["releases"]["demo-1"]["images"] if i["role"] == "model"
    )
    skopeo_copy(by_digest(model), f"dir:{tmp_path / 'pulled'}")
    manifest = json.loads((tmp_path / "pulled" / "manifest.json").read_text())
    assert hashlib.sha256(
        (tmp_path / "pulled" / "manifest.json").read_bytes()
    ).hexdigest() == model["id"].removeprefix("sha256:")
    assert manifest["artifactType"] == "application/vnd.airgap.model.v1"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    got = {}
    for layer in manifest["layers"]:
        title = layer["annotations"]["org.opencontainers.image.title"]
        got[title] = sha256_file(tmp_path / "pulled" / layer["digest"].removeprefix("sha256:"))
    assert got == model_files(tmp_path)
    deploy = yaml.safe_load((tmp_path / "base" / "deployment.yaml").read_text())
    vol = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
    assert vol["image"]["reference"] == by_digest(model)


def flip_byte(bundle: Path, member: str) -> None:
    with tarfile.open(bundle) as tf:
        offset = tf.getmember(member).offset_data
    with open(bundle, "r+b") as f:
        f.seek(offset + 100)
        b = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("form", ["modelcar", "oci"])
def test_damaged_model_leaves_no_manifest_in_the_registry(
    tmp_path: Path, key: Keys, oci_registry: services.Service, form: str
) -> None:
    """Verify while pushing, manifests last: a damaged model byte fails the install
    (exit 3) and no image or model is tagged in the registry; no base is written."""
    bundle = make_bundle(tmp_path, key)
    flip_byte(bundle, "models/tiny/model.safetensors")
    prefix = f"{oci_registry.url}/dmg-{form}"
    r = airgap(
        "install", str(bundle), "--trusted-key", str(key.public), "--prefix", str(tmp_path / "opt"),
        "--target", "kubernetes", "--registry", prefix, "-o", str(tmp_path / "base"),
        "--model-artifact", form, "--model-volume", "image", "--no-gpu",
    )  # fmt: skip
    assert r.returncode == 3, r.stderr.decode()
    assert "models/tiny/model.safetensors" in r.stderr.decode()
    for role in ("vllm", "nginx", "model"):
        assert services.registry_digest(f"{prefix}/demo/{role}:1") is None
    assert not (tmp_path / "base").exists()


def test_output_dir_with_other_files_is_refused_before_any_push(
    tmp_path: Path, key: Keys, oci_registry: services.Service
) -> None:
    bundle = make_bundle(tmp_path, key)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "README.md").write_text("a GitOps repository's own file\n")
    r = install(bundle, key, tmp_path, f"{oci_registry.url}/refused")
    assert r.returncode == 2, r.stderr.decode()
    assert "holds files airgap did not write" in r.stderr.decode()
    assert (
        services.registry_digest(f"{oci_registry.url}/refused/{repo_prefix(tmp_path)}/demo/vllm:1")
        is None
    )
    assert (tmp_path / "base" / "README.md").read_text() == "a GitOps repository's own file\n"


def test_commands_printed_then_applied_status_rollback_uninstall(
    tmp_path: Path, key: Keys, oci_registry: services.Service, stub: dict[str, str]
) -> None:
    reg = f"{oci_registry.url}/life"
    base = tmp_path / "base"
    v1 = make_bundle(tmp_path, key, 1)
    # 1. without --apply: the exact commands, kubectl never called (though on PATH)
    r = install(v1, key, tmp_path, reg, env=stub)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert f"kubectl apply --server-side --field-manager airgap -k {base}" in out
    assert "kubectl -n airgap-demo rollout status deployment/airgap-demo --timeout=900s" in out
    assert calls(stub) == []
    token = (tmp_path / "opt" / "secrets" / "bearer-token").read_text().strip()
    assert token not in out + err  # no secret value printed
    for name in ("secret-token.yaml", "secret-vllm-key.yaml", "secret-tls.yaml"):
        assert stat.S_IMODE((base / name).stat().st_mode) == 0o600
    rec = receipt(tmp_path)["releases"]["demo-1"]
    assert rec["kubernetes"]["applied"] is False and rec["target"]["kind"] == "kubernetes"
    # 2. the same bundle with --apply: apply -k on the directory written, then the rollout
    r = install(v1, key, tmp_path, reg, "--apply", env=stub)
    assert r.returncode == 0, r.stderr.decode()
    made = calls(stub)
    assert [c["argv"][:2] for c in made] == [["apply", "--server-side"], ["-n", "airgap-demo"]]
    assert made[0]["argv"] == [
        "apply",
        "--server-side",
        "--field-manager",
        "airgap",
        "-k",
        str(base),
    ]
    assert made[0]["dir"] == str(base.resolve())
    assert made[0]["files"] == {
        n: h for n, h in receipt(tmp_path)["releases"]["demo-1"]["kubernetes"]["files"].items()
    }
    assert receipt(tmp_path)["releases"]["demo-1"]["kubernetes"]["applied"] is True
    # 3. status: base as written; with --apply the Deployment's images are the digests
    r = airgap("status", "--prefix", str(tmp_path / "opt"), "--apply", "--json", env=stub)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    k = json.loads(r.stdout)["releases"][0]["kubernetes"]
    assert k["images"] == "as recorded" and k["rollout"] == "1/1 ready, 1 updated"
    r = airgap(
        "status",
        "--prefix",
        str(tmp_path / "opt"),
        "--apply",
        env={**stub, "KUBECTL_STUB_READY": "0"},
    )
    assert r.returncode == 1 and "0/1 ready" in r.stdout.decode()
    # 4. a second release, then rollback --apply puts v1's base back and applies it
    v2 = make_bundle(tmp_path, key, 2, model_bytes=200_000)  # another model: another modelcar
    assert install(v2, key, tmp_path, reg, "--apply", env=stub).returncode == 0
    v2_files = receipt(tmp_path)["releases"]["demo-2"]["kubernetes"]["files"]
    r = airgap("rollback", "--prefix", str(tmp_path / "opt"), "--apply", env=stub)
    assert r.returncode == 0, r.stderr.decode()
    applied = [c for c in calls(stub) if c["argv"][0] == "apply"]
    v1_files = receipt(tmp_path)["releases"]["demo-1"]["kubernetes"]["files"]
    assert applied[-1]["files"] == v1_files != v2_files
    assert receipt(tmp_path)["current"] == "demo-1"
    # 5. status sees a base edited by hand
    with open(base / "deployment.yaml", "a") as f:
        f.write("# edited\n")
    r = airgap("status", "--prefix", str(tmp_path / "opt"))
    assert r.returncode == 1 and "deployment.yaml changed" in r.stdout.decode()
    # 6. uninstall --apply deletes the objects of the base first, then what it pushed
    r = airgap("uninstall", "--prefix", str(tmp_path / "opt"), "--apply", env=stub)
    assert r.returncode == 0, r.stderr.decode()
    assert calls(stub)[-1]["argv"] == ["delete", "-k", str(base), "--ignore-not-found"]
    out = r.stdout.decode()
    model1 = f"{reg}/{repo_prefix(tmp_path)}/demo/model:1"
    assert out.index("kubernetes objects of") < out.index(f"image {model1}")
    assert services.registry_digest(model1) is None
    assert not base.exists() and not (tmp_path / "opt").exists()


def test_uninstall_without_apply_says_the_delete(
    tmp_path: Path, key: Keys, oci_registry: services.Service, stub: dict[str, str]
) -> None:
    v1 = make_bundle(tmp_path, key, 1)
    assert install(v1, key, tmp_path, f"{oci_registry.url}/keep", env=stub).returncode == 0
    r = airgap("uninstall", "--prefix", str(tmp_path / "opt"), env=stub)
    assert r.returncode == 0, r.stderr.decode()
    assert f"kubectl delete -k {tmp_path / 'base'} --ignore-not-found" in r.stdout.decode()
    assert calls(stub) == [] and (tmp_path / "base" / "kustomization.yaml").is_file()


def test_elastic_wiring_uses_the_public_url(
    tmp_path: Path, key: Keys, oci_registry: services.Service
) -> None:
    """The connector is written for --public-url (preconfigured mode: no Kibana call), with
    the CA that signs a certificate naming that host."""
    bundle = make_bundle(tmp_path, key)
    r = install(
        bundle,
        key,
        tmp_path,
        f"{oci_registry.url}/el",
        "--public-url",
        "https://llm.site.example",
        "--kibana-mode",
        "preconfigured",
    )
    assert r.returncode == 0, r.stderr.decode()
    snippet = yaml.safe_load(
        (tmp_path / "opt" / "secrets" / "kibana-preconfigured.yml").read_text()
    )
    connector = next(iter(snippet["xpack.actions.preconfigured"].values()))
    assert connector["config"]["apiUrl"] == "https://llm.site.example/v1/chat/completions"
    host = snippet["xpack.actions.customHostSettings"][0]
    assert host["url"] == "https://llm.site.example"
    cert = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            str(tmp_path / "opt" / "secrets" / "tls" / "server.crt"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:llm.site.example" in cert and "DNS:airgap-demo.airgap-demo.svc" in cert
    r = install(
        bundle, key, tmp_path, f"{oci_registry.url}/el2", "--kibana-url", "https://kibana.site:5601"
    )
    assert r.returncode == 2 and "--public-url" in r.stderr.decode()


def test_model_tag_naming_another_manifest_is_not_moved(
    tmp_path: Path, key: Keys, oci_registry: services.Service
) -> None:
    """The model's tag is refused like an image's: another install (here the other form)
    that would move it fails, the tag keeps its manifest; --replace-tags moves it."""
    bundle = make_bundle(tmp_path, key)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    prefix = f"{oci_registry.url}/tag"
    assert install(bundle, key, first, prefix, "--k8s-version", "1.34").returncode == 0
    ref = f"{prefix}/{repo_prefix(first)}/demo/model:1"
    before = services.registry_digest(ref)
    assert before is not None
    args = ("--model-artifact", "oci", "--model-volume", "image")
    r = airgap(
        "install", str(bundle), "--trusted-key", str(key.public), "--prefix", str(second / "opt"),
        "--target", "kubernetes", "--registry", f"{prefix}/{repo_prefix(first)}",
        "-o", str(second / "base"), "--no-gpu", *args,
    )  # fmt: skip
    assert r.returncode == 1 and "airgap does not overwrite it" in r.stderr.decode()
    assert services.registry_digest(ref) == before
    r = airgap(
        "install", str(bundle), "--trusted-key", str(key.public), "--prefix", str(second / "opt"),
        "--target", "kubernetes", "--registry", f"{prefix}/{repo_prefix(first)}",
        "-o", str(second / "base"), "--no-gpu", "--replace-tags", *args,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    # (skopeo inspect reads an artifact's config as an image's: hash the raw manifest)
    moved = "sha256:" + hashlib.sha256(skopeo_inspect_raw(ref).encode()).hexdigest()
    model = next(i for i in receipt(second)["releases"]["demo-1"]["images"] if i["role"] == "model")
    assert moved == model["id"] != before


def test_kibana_connector_points_at_the_public_url(
    tmp_path: Path, key: Keys, oci_registry: services.Service
) -> None:
    """The connector path through Kibana's API (the stand-in enforces its contract): the
    connector calls --public-url with the bearer token (its test call needs the rollout,
    so it is skipped here)."""
    from devkit.standins.kibana import KibanaStandIn

    api_key = "a2liYW5hOmtleQ=="
    bundle = make_bundle(tmp_path, key)
    kibana = KibanaStandIn("9.2.0", api_keys={api_key})
    with kibana.running():
        r = install(
            bundle, key, tmp_path, f"{oci_registry.url}/kb", "--public-url",
            "https://llm.site.example:8443", "--kibana-url", kibana.url, "--no-kibana-test",
            env={"AIRGAP_KIBANA_API_KEY": api_key},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        (stored,) = kibana.connectors["default"].values()
    token = (tmp_path / "opt" / "secrets" / "bearer-token").read_text().strip()
    assert stored["config"]["apiUrl"] == "https://llm.site.example:8443/v1/chat/completions"
    assert stored["secrets"] == {"apiKey": token}
    assert receipt(tmp_path)["releases"]["demo-1"]["elastic"]["kibana"]["created_by_us"]
