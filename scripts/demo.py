"""The built-in demo: the whole product on one machine, with no internet.

1. Stand-ins for the internet, all real programs on loopback: an OCI registry
   (docker-registry) holding two images assembled offline (Nginx from Debian's binary
   and an OpenAI-compatible stand-in for vLLM), a Hugging Face-compatible hub (olah)
   holding a tiny model, and an Nginx serving Elastic's ELSER and product-doc files.
2. The connected side: ``airgap lock`` and ``airgap build`` on
   ``manifests/demo-tiny.yaml`` (only its host:port values are rewritten to this run's
   services) through the real fetch path; split parts; a second signer co-signs.
   The bundle carries airgap itself: a tool bundle (`airgap tool-bundle`, built from
   the wheels scripts/setup cached in .cache/wheelhouse, so no internet) travels inside
   it (`build --with-tool`). Without that cache the step is skipped, and says so.
3. The transfer: the connected-side services are stopped. On the air-gapped side,
   airgap is taken out of the bundle with one `tar -xOf`, checked with openssl and
   sha256sum and installed by its install.sh with the system Python; that airgap then
   verifies the bundle from its parts and from stdin and does the rest.
4. The air-gapped side, Elastic 9.5: install into a private Docker engine, serve
   through Nginx (TLS + bearer token); the model wired as an Elasticsearch
   ``chat_completion`` inference endpoint, which fails first as a real cluster would
   (its JVM does not trust the new CA) and names the trust-store step; the step done on
   the stand-in's node (a PKCS12 store in ``jvm.options.d``, restart); the same command
   again proves Elasticsearch → model and Kibana → Elasticsearch → model and makes the
   endpoint Kibana's default model; ELSER deployed by the Elasticsearch stand-in from
   Nginx behind its built-in ``.elser-2-elasticsearch`` endpoint, Kibana's knowledge base
   set up on it and the product docs installed from the same Nginx. Then the connector
   path for an older Kibana (9.2); the same bundle for a Kubernetes cluster (``--target
   kubernetes``: images and the model pushed to a site registry while verified, a
   kustomize base written, the kubectl commands printed, not applied: no cluster runs
   here); a damaged part named; an update to v2 by a delta bundle (built on the connected
   side against v1's signed index; only the changed product docs carried, the rest taken
   from the installed v1); and an uninstall that removes both, uninstalls the product
   docs, keeps the knowledge base and puts Kibana's setting back.

Everything it starts is stopped and every file it writes is removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # devkit/ is not installed: this checkout's kit and bundler

import requests  # noqa: E402

from devkit import services  # noqa: E402
from devkit.demo_data import (  # noqa: E402
    DEMO_CARD,
    TINY_CONFIG,
    nginx_image,
    openai_stub_image,
    safetensors_bytes,
)
from devkit.standins.elasticsearch import ElasticsearchStandIn  # noqa: E402
from devkit.standins.jvmtrust import write_truststore  # noqa: E402
from devkit.standins.kibana import KibanaStandIn  # noqa: E402
from devkit.wheelhouse import cached, pythons_here  # noqa: E402

STEPS: list[tuple[str, float]] = []
ENV: dict[str, str] = {}
# The airgap the demo runs: this checkout's, until the air-gapped side installs its own.
AIRGAP = [sys.executable, "-m", "bundler"]
TOOL_PY = "3.11"  # Debian 12's python3, which install.sh uses on the air-gapped side
KIBANA_KEY = "ZGVtby1raWJhbmE6a2V5"  # the stand-ins' API keys (demo only)
ES_KEY = "ZGVtby1lczprZXk="
ELSER = "elser_model_2_linux-x86_64"


def airgap(
    *args: str, stdin: bytes | None = None, expect: int = 0, quiet: bool = False, label: str = ""
) -> str:
    started = time.monotonic()
    env = {**os.environ, **ENV}
    if AIRGAP[0] != sys.executable:
        env.pop("PYTHONPATH", None)  # the installed airgap runs its own code only
    r = subprocess.run(
        [*AIRGAP, *args],
        input=stdin,
        capture_output=True,
        check=False,
        env=env,
    )
    took = time.monotonic() - started
    shown = " ".join(a if len(a) < 60 else "…" + a[-40:] for a in args)
    print(f"$ airgap {shown}{'  < stdin' if stdin else ''}   [{took:.2f}s]")
    out = (r.stdout + r.stderr).decode().rstrip()
    if quiet:
        out = "(printed the bearer token; not shown here)"
    if out:
        print("  " + out.replace("\n", "\n  "))
    if r.returncode != expect:
        raise SystemExit(f"demo failed: exit {r.returncode}, expected {expect}")
    STEPS.append((label or args[0] if args[0] != "-q" else label or args[1], took))
    return r.stdout.decode()


def timed(label: str, started: float) -> None:
    STEPS.append((label, time.monotonic() - started))


def connected_world(work: Path, stack: contextlib.ExitStack) -> Path:
    """Registry, hub and Elastic file server on loopback; returns this run's manifest."""
    started = time.monotonic()
    reg = stack.enter_context(services.registry())
    mirrors = work / "hub"
    hub = stack.enter_context(services.olah(mirrors))
    www = work / "www"
    (www / "elser").mkdir(parents=True)
    (www / "product-docs").mkdir()
    elastic = stack.enter_context(services.nginx_static(www))
    print(f"  OCI registry      {reg.url} (docker-registry)")
    print(f"  Hugging Face hub  {hub.url} (olah)")
    print(f"  Elastic files     {elastic.url} (nginx)")

    images = work / "images"
    images.mkdir()
    for name, make in (("nginx", nginx_image), ("openai-stub", openai_stub_image)):
        archive = make(images / f"{name}.tar", tag=f"airgap-demo/{name}:1")
        subprocess.run(
            [
                "skopeo",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                f"docker-archive:{archive}",
                f"docker://{reg.url}/airgap-demo/{name}:1",
            ],
            check=True,
        )
    print("  pushed airgap-demo/nginx:1 and airgap-demo/openai-stub:1 (assembled offline)")

    weights = {
        "config.json": json.dumps(TINY_CONFIG).encode(),
        "generation_config.json": b'{"max_new_tokens": 16}\n',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
        "model.safetensors": safetensors_bytes(1_600_000, hashlib.sha256(b"tiny").digest()),
        "README.md": DEMO_CARD.encode(),
    }
    commit = services.git_commit_repo(
        mirrors / "models" / "airgap-demo" / "tiny-llama",
        weights,
        {"model.safetensors"},
        "tiny model for the demo",
    )
    print(f"  committed airgap-demo/tiny-llama @ {commit[:12]} (safetensors as an LFS object)")

    pt = hashlib.sha256(b"elser").digest() * (3 * 2**20 // 32)
    (www / "elser" / f"{ELSER}.pt").write_bytes(pt)
    (www / "elser" / f"{ELSER}.vocab.json").write_text('{"vocabulary": ["[PAD]", "a"]}')
    (www / "elser" / f"{ELSER}.metadata.json").write_text(
        json.dumps(
            {
                "packaged_model_id": ELSER,
                "sha256": hashlib.sha256(pt).hexdigest(),
                "size": len(pt),
                "vocabulary_file": f"{ELSER}.vocab.json",
            }
        )
    )
    for name in ("kb-product-doc-kibana-9.5.zip", "kb-product-doc-openapi-9.5.zip"):
        (www / "product-docs" / name).write_bytes(b"PK\x05\x06" + bytes(18))

    text = (REPO / "manifests" / "demo-tiny.yaml").read_text()
    text = text.replace("127.0.0.1:5000", reg.url)
    text = text.replace("http://127.0.0.1:8089", elastic.url)
    manifest = work / "connected" / "demo-tiny.yaml"
    manifest.parent.mkdir()
    manifest.write_text(text)
    ENV["HF_ENDPOINT"] = hub.url
    timed("local services", started)
    return manifest


def tool_bundle(work: Path, keys: Path) -> Path | None:
    """airgap itself as a tool bundle, from the cached wheelhouse (no network)."""
    wheelhouse = cached()
    system = pythons_here((TOOL_PY,)).get(TOOL_PY)
    if wheelhouse is None or system is None:
        why = "no cached wheelhouse (.cache/wheelhouse)" if system else f"no python{TOOL_PY}"
        print(
            f"  tool bundle: skipped, {why}; scripts/setup fills the wheelhouse when it is "
            "online. The air-gapped side then uses this checkout's airgap."
        )
        return None
    out = work / f"airgap-tool-{version()}.tar"
    airgap(
        "-q",
        "tool-bundle",
        "-o",
        str(out),
        "--key",
        str(keys / "release"),
        "--python",
        TOOL_PY,
        "--no-index",
        "--find-links",
        str(wheelhouse),
        label="tool-bundle",
    )
    print(f"  (wheels from {wheelhouse.relative_to(REPO)}; the bundle below carries it)")
    return out


def version() -> str:
    from bundler import __version__

    return __version__


def shell(command: str, label: str, cwd: Path) -> None:
    """A step the operator types on the air-gapped host (stock tools only)."""
    started = time.monotonic()
    r = subprocess.run(
        ["sh", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    took = time.monotonic() - started
    print(f"$ {command}   [{took:.2f}s]")
    if out := (r.stdout + r.stderr).rstrip():
        print("  " + out.replace("\n", "\n  "))
    if r.returncode != 0:
        raise SystemExit(f"demo failed: exit {r.returncode}")
    STEPS.append((label, took))


def install_tool(work: Path, usb: Path, parts: list[Path], name: str, keys: Path) -> None:
    """Getting airgap onto the air-gapped host: out of the bundle, checked, installed."""
    print("\n== getting airgap onto the air-gapped host (openssl, sha256sum, python3) ==")
    host = work / "airgap-host"
    host.mkdir()
    system = pythons_here((TOOL_PY,))[TOOL_PY]
    shell(f"cat {usb}/demo.tar.part-* | tar -xOf - tool/{name} > {name}", "tar -xOf tool", host)
    shell(f"mkdir airgap-tool && tar -xf {name} -C airgap-tool", "tar -xf tool", host)
    shell(
        f"sh airgap-tool/tool/install.sh --prefix {host / 'opt-airgap'} "
        f"--trusted-key {keys / 'release.pub'} --python {system}",
        "install.sh",
        host,
    )
    AIRGAP[:] = [str(host / "opt-airgap" / "bin" / "airgap")]
    airgap("--version", label="airgap --version")
    print(f"  (from here on: {AIRGAP[0]}, installed from the bundle)")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="airgap-demo-"))
    os.environ.setdefault("SOURCE_DATE_EPOCH", str(int(time.time())))
    ENV["AIRGAP_CACHE_DIR"] = str(work / "cache")
    begun = time.monotonic()
    try:
        with contextlib.ExitStack() as connected:
            print("== stand-ins for the internet (loopback only) ==")
            manifest = connected_world(work, connected)
            keys = work / "keys"
            keys.mkdir()
            print("\n== connected side ==")
            airgap("keygen", str(keys / "release"))
            airgap("keygen", str(keys / "auditor"))
            airgap("validate", str(manifest))
            airgap("lock", str(manifest))
            usb = work / "usb"
            usb.mkdir()
            bundle = usb / "demo.tar"
            tool = tool_bundle(work, keys)
            airgap(
                "-q",
                "build",
                str(manifest),
                "-o",
                str(bundle),
                "--key",
                str(keys / "release"),
                "--split-size",
                "8M",
                *(["--with-tool", str(tool)] if tool else []),
                label="build",
            )
            airgap(
                "sign",
                str(bundle),
                "--key",
                str(keys / "auditor"),
                "--trusted-key",
                str(keys / "release.pub"),
            )
            delta = next_release_as_delta(work, manifest, bundle, keys, usb)
        print("\n(registry, hub and file server stopped: the rest needs none of them)")
        print("\n== the transfer: what goes on the USB stick, checked on arrival ==")
        for p in sorted(usb.iterdir()):
            print(f"  {p.name:32} {p.stat().st_size:>12,} bytes")
        trust = [
            "--trusted-key",
            str(keys / "release.pub"),
            "--trusted-key",
            str(keys / "auditor.pub"),
            "--require-signatures",
            "2",
        ]
        parts = sorted(usb.glob("demo.tar.part-*"))
        if tool is not None:
            install_tool(work, usb, parts, tool.name, keys)
        airgap("inspect", str(bundle) + ".part-000")
        airgap("-q", "verify", str(bundle) + ".part-000", *trust, label="verify")
        joined = b"".join(p.read_bytes() for p in parts)
        sigs = [a for s in usb.glob("demo.tar.*.sig") for a in ("--signature", str(s))]
        airgap("-q", "verify", "-", *trust, *sigs, stdin=joined, label="verify stdin")
        print("\n== the SBOM, for the site's scanner (verified first, then written) ==")
        sbom = work / "demo.cdx.json"
        airgap("-q", "sbom", str(bundle) + ".part-000", *trust, "-o", str(sbom), label="sbom")
        spdx = work / "demo.spdx.json"
        part0 = str(bundle) + ".part-000"
        airgap("-q", "sbom", part0, *trust, "--format", "spdx-json", "-o", str(spdx), label="spdx")
        print(f"  {sbom.name} {sbom.stat().st_size:,} bytes, {spdx.name} {spdx.stat().st_size:,}")

        print("\n== air-gapped side: a private Docker engine, Kibana and ES 9.5 stand-ins ==")
        ca = work / "opt" / "secrets" / "tls" / "ca.crt"
        es_conf = work / "es-node" / "config"  # the stand-in node's ES_PATH_CONF
        (es_conf / "jvm.options.d").mkdir(parents=True)
        es = ElasticsearchStandIn(
            "9.5.0", api_keys={ES_KEY, KIBANA_KEY}, license="trial", path_conf=es_conf
        )
        with services.dockerd() as engine, es.running():
            kibana = KibanaStandIn("9.5.0", api_keys={KIBANA_KEY}, elasticsearch=es.url)
            old_kibana = KibanaStandIn("9.2.0", api_keys={KIBANA_KEY}, trusted_ca=ca)
            with kibana.running(), old_kibana.running():
                run_air_gapped(
                    work, bundle, parts, delta, trust, engine, es, es_conf, kibana, old_kibana
                )
        total = time.monotonic() - begun
        print("\n== summary ==")
        for label, took in STEPS:
            print(f"  {label:20} {took:6.2f}s")
        print(
            f"demo finished in {total:.1f}s: a {len(joined) / 2**20:.0f} MiB bundle in "
            f"{len(parts)} parts, built from a registry and a hub, signed twice, verified, "
            "installed, served, wired into Elastic 9.5 and 9.2, pushed with a Kubernetes base, "
            "removed"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def next_release_as_delta(work: Path, manifest: Path, bundle: Path, keys: Path, usb: Path) -> Path:
    """v2 changes only the product docs: build it as a delta against v1's signed index
    (all the connected side needs to keep of v1), and a full v2 to compare."""
    print("\n== the next release as a delta: only what changed is carried ==")
    index_v1 = work / "connected" / "demo-v1-index.json"
    got = subprocess.run(
        [sys.executable, "-m", "bundler", "inspect", "--index", str(bundle) + ".part-000"],
        capture_output=True,
        check=True,
        env={**os.environ, **ENV},
    )
    index_v1.write_bytes(got.stdout)
    print(f"$ airgap inspect --index {bundle.name}.part-000 > {index_v1.name}")
    docs = work / "www" / "product-docs" / "kb-product-doc-kibana-9.5.zip"
    docs.write_bytes(docs.read_bytes() + b"v2")  # upstream published new docs
    manifest.write_text(manifest.read_text().replace("version: 1\n", "version: 2\n"))
    delta = usb / "demo-v2.tar"
    full = work / "connected" / "demo-v2-full.tar"
    key = ["--key", str(keys / "release")]
    airgap("-q", "build", str(manifest), "-o", str(full), *key, "--update-lock", label="build v2")
    airgap(
        "-q",
        "build",
        str(manifest),
        "-o",
        str(delta),
        *key,
        "--base",
        str(index_v1),
        label="build delta",
    )
    airgap(
        "sign",
        str(delta),
        "--key",
        str(keys / "auditor"),
        "--trusted-key",
        str(keys / "release.pub"),
    )
    saved = full.stat().st_size - delta.stat().st_size
    print(
        f"  full v2: {full.stat().st_size:,} bytes; the delta: {delta.stat().st_size:,} bytes "
        f"({saved:,} bytes, {saved / full.stat().st_size:.1%}, not carried)"
    )
    return delta


def run_air_gapped(
    work: Path,
    bundle: Path,
    parts: list[Path],
    delta: Path,
    trust: list[str],
    engine: services.Service,
    es: ElasticsearchStandIn,
    es_conf: Path,
    kibana: KibanaStandIn,
    old_kibana: KibanaStandIn,
) -> None:
    prefix = work / "opt"
    ca = prefix / "secrets" / "tls" / "ca.crt"
    kibana.ai.settings["default"]["genAiSettings:defaultAIConnector"] = "their-model"
    port, artifacts = services.free_port(), services.free_port()
    es.model_repository = f"http://127.0.0.1:{artifacts}/elser"
    kibana.kb.artifact_repository = f"http://127.0.0.1:{artifacts}/product-docs"
    print(f"  Kibana 9.5 stand-in {kibana.url} (default AI model: their-model;")
    print(f"  xpack.productDocBase.artifactRepositoryUrl: {kibana.kb.artifact_repository})")
    print(f"  ES 9.5 stand-in {es.url} (trial license; ES_PATH_CONF {es_conf.name}/;")
    print(f"  xpack.ml.model_repository: {es.model_repository})")
    print(f"  Kibana 9.2 stand-in {old_kibana.url} (trusts the CA airgap makes, as the")
    print("  printed customHostSettings would make a real Kibana do)")
    ENV.update(AIRGAP_KIBANA_API_KEY=KIBANA_KEY, AIRGAP_ES_API_KEY=ES_KEY)
    target = [
        "--prefix",
        str(prefix),
        "--no-gpu",
        "--runtime-url",
        engine.url,
        "--port",
        str(port),
        "--internal-port",
        str(services.free_port()),
        "--artifacts-port",
        str(artifacts),
        "--ip",
        "127.0.0.1",
        "--health-timeout",
        "120",
    ]
    elastic = ["--kibana-url", kibana.url, "--es-url", es.url]
    part0 = str(bundle) + ".part-000"
    airgap("install", part0, *trust, *target, *elastic, expect=1, label="install (PKIX)")

    print("\n== the trust step on the Elasticsearch node, then the same command again ==")
    started = time.monotonic()
    store = write_truststore(ca.read_bytes(), es_conf / "inference-truststore.p12", "demo-pw")
    (es_conf / "jvm.options.d" / "airgap-inference-truststore.options").write_text(
        f"-Djavax.net.ssl.trustStore={store}\n-Djavax.net.ssl.trustStorePassword=demo-pw\n"
        "-Djavax.net.ssl.trustStoreType=PKCS12\n"
    )
    es.restart()
    print(
        f"  wrote {store.name} (our CA; es-truststore.sh also copies the node's cacerts) and "
        "jvm.options.d/airgap-inference-truststore.options, restarted the node"
    )
    timed("trust step", started)
    airgap("install", part0, *trust, *target, *elastic, label="install (9.5)")
    airgap("status", "--prefix", str(prefix), "--runtime-url", engine.url)
    token = airgap(
        "status",
        "--prefix",
        str(prefix),
        "--runtime-url",
        engine.url,
        "--show-token",
        quiet=True,
        label="status",
    ).strip()

    print("\n== what Elasticsearch's endpoint does: a chat completion through Nginx ==")
    session = requests.Session()
    session.trust_env = False
    url = f"https://127.0.0.1:{port}/v1/chat/completions"
    started = time.monotonic()
    r = session.post(
        url,
        verify=str(ca),
        timeout=60,
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello?"}]},
    )
    took = time.monotonic() - started
    if r.status_code != 200:
        raise SystemExit(f"demo failed: chat completion answered {r.status_code}")
    answer = r.json()["choices"][0]["message"]["content"]
    print(
        f"POST {url} (TLS checked against {ca.name}, bearer token) -> "
        f"{r.status_code} in {took * 1000:.0f} ms: {answer!r}"
    )
    r = session.post(url, verify=str(ca), timeout=60, json={"model": "tiny-llama"})
    print(f"the same without the token -> {r.status_code}")
    if r.status_code != 401:
        raise SystemExit("demo failed: the endpoint answered without the token")
    STEPS.append(("chat completion", took))
    print(
        f"ES stand-in holds endpoint(s) {sorted(es.chat.endpoints)}; Kibana's default AI "
        f"model is {kibana.ai.settings['default']['genAiSettings:defaultAIConnector']}; "
        f"ES fetched ELSER in {len(es.range_requests)} Range requests "
        f"({', '.join(sorted({str(s) for _, s in es.range_requests}))})"
    )
    print(
        f"Kibana 9.5's knowledge base is {kibana.kb.kb_state} on {kibana.kb.kb_inference} "
        f"(ES's built-in endpoint; ES holds {len(es.endpoints)} endpoint(s) of airgap's own); "
        f"product docs {kibana.kb.status_doc('.elser-2-elasticsearch')['overall']} from "
        f"{sum(u.endswith('.zip') for u in kibana.kb.downloads)} ZIPs read through Nginx"
    )
    airgap("-q", "install", part0, *trust, *target, *elastic, label="rerun")
    n = len(kibana.connectors["default"])
    print(f"after a rerun: still {len(es.chat.endpoints)} endpoint, {n} connectors in Kibana 9.5")

    print("\n== the same release wired into an older Kibana (9.2): the connector path ==")
    airgap("install", part0, *trust, *target, "--kibana-url", old_kibana.url, label="install (9.2)")

    print("\n== the same bundle for a Kubernetes cluster: the site's registry and a base ==")
    with services.registry() as site:  # the site's internal registry (Harbor, Quay, ...)
        base = work / "k8s-base"
        airgap(
            "-q",
            "install",
            part0,
            *trust,
            "--prefix",
            str(work / "opt-k8s"),
            "--target",
            "kubernetes",
            "--registry",
            f"{site.url}/ai",
            "-o",
            str(base),
            "--k8s-version",
            "1.34",
            "--no-gpu",
            label="install (k8s)",
        )
        print(f"  {base.name}/: {', '.join(sorted(p.name for p in base.glob('*.yaml')))}")
        print("  (not applied: no cluster here; the commands above are what --apply runs)")

    print("\n== a damaged transfer is named precisely, and changes nothing ==")
    victim = parts[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    airgap("-q", "verify", str(bundle), *trust, expect=3, label="damaged part")
    print(
        f"  (sha256 of {victim.name} is now {hashlib.sha256(data).hexdigest()[:16]}…; "
        "the signed parts list says otherwise: only this part needs carrying again)"
    )

    print("\n== the update by delta: the rest of v2 comes from the installed v1, re-hashed ==")
    old = ["--kibana-url", old_kibana.url]
    airgap("install", str(delta), *trust, *target, *old, label="install delta")
    airgap("status", "--prefix", str(prefix), "--runtime-url", engine.url, label="status")
    airgap("uninstall", "--prefix", str(prefix), "--runtime-url", engine.url)
    if old_kibana.connectors["default"] or es.endpoints or es.chat.endpoints:
        raise SystemExit("demo failed: uninstall left the connector or an endpoint")
    if kibana.ai.settings["default"].get("genAiSettings:defaultAIConnector") != "their-model":
        raise SystemExit("demo failed: uninstall did not put Kibana's default model back")
    if kibana.kb.docs or kibana.kb.kb_state != "READY":
        raise SystemExit("demo failed: uninstall left the product docs or removed the KB")


if __name__ == "__main__":
    main()
