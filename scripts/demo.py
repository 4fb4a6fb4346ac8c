"""The built-in demo: the connected side, the transfer, and the air-gapped install.

Runs with no network: makes a tiny model, two images and Elastic artifacts, signs a
bundle into split parts, co-signs it, verifies it from the parts and from stdin,
installs it into a private Docker engine (started here, stopped after), shows a
damaged part being refused by name, and uninstalls. Everything happens in a temp
dir that is removed after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bundler.demo import make_demo_sources

STEPS: list[tuple[str, float]] = []


def airgap(*args: str, stdin: bytes | None = None, expect: int = 0, quiet: bool = False) -> str:
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "bundler", *args], input=stdin, capture_output=True, check=False
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
    STEPS.append((args[0], took))
    return r.stdout.decode()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="airgap-demo-"))
    os.environ.setdefault("SOURCE_DATE_EPOCH", str(int(time.time())))
    try:
        src = work / "connected"
        src.mkdir()
        manifest = make_demo_sources(src, big=64 * 1024 * 1024, real_images=True)
        keys = work / "keys"
        keys.mkdir()
        print("== connected side ==")
        airgap("keygen", str(keys / "release"))
        airgap("keygen", str(keys / "auditor"))
        airgap("validate", str(manifest))
        usb = work / "usb"
        usb.mkdir()
        bundle = usb / "demo.tar"
        airgap(
            "-q",
            "build",
            str(manifest),
            "-o",
            str(bundle),
            "--key",
            str(keys / "release"),
            "--split-size",
            "40M",
        )
        airgap("sign", str(bundle), "--key", str(keys / "auditor"))
        print("\n== air-gapped side ==")
        trust = [
            "--trusted-key",
            str(keys / "release.pub"),
            "--trusted-key",
            str(keys / "auditor.pub"),
            "--require-signatures",
            "2",
        ]
        airgap("inspect", str(bundle) + ".part-000")
        airgap("-q", "verify", str(bundle) + ".part-000", *trust)
        parts = sorted(usb.glob("demo.tar.part-*"))
        joined = b"".join(p.read_bytes() for p in parts)
        sigs = [a for s in usb.glob("demo.tar.*.sig") for a in ("--signature", str(s))]
        airgap("-q", "verify", "-", *trust, *sigs, stdin=joined)
        print("\n== install into a private Docker engine (started for the demo) ==")
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from services import dockerd, free_port

        prefix = work / "opt"
        with dockerd() as engine:
            port = free_port()
            target = [
                "--prefix",
                str(prefix),
                "--no-gpu",
                "--runtime-url",
                engine.url,
                "--port",
                str(port),
                "--internal-port",
                str(free_port()),
                "--artifacts-port",
                str(free_port()),
                "--server-name",
                "llm.demo.internal",
                "--health-timeout",
                "120",
            ]
            airgap("install", str(bundle) + ".part-000", *trust, *target)
            airgap("status", "--prefix", str(prefix), "--runtime-url", engine.url)
            token = airgap(
                "status",
                "--prefix",
                str(prefix),
                "--runtime-url",
                engine.url,
                "--show-token",
                quiet=True,
            ).strip()
            ca = prefix / "secrets" / "tls" / "ca.crt"
            print("\n== what Kibana's connector will do: a chat completion through Nginx ==")
            import requests

            session = requests.Session()
            session.trust_env = False
            url = f"https://127.0.0.1:{port}/v1/chat/completions"
            started = time.monotonic()
            r = session.post(
                url,
                verify=str(ca),
                timeout=60,
                headers={"Authorization": f"Bearer {token}"},
                json={"model": "tiny", "messages": [{"role": "user", "content": "Hello?"}]},
            )
            took = time.monotonic() - started
            answer = r.json()["choices"][0]["message"]["content"]
            print(
                f"POST {url} (TLS checked against {ca.name}, bearer token) -> "
                f"{r.status_code} in {took * 1000:.0f} ms: {answer!r}"
            )
            r = session.post(url, verify=str(ca), timeout=60, json={"model": "tiny"})
            print(f"the same without the token -> {r.status_code}")
            STEPS.append(("chat", took))
            airgap("-q", "install", str(bundle) + ".part-000", *trust, *target)

            print("\n== a damaged transfer is named precisely, and changes nothing ==")
            victim = parts[1]
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0x01
            victim.write_bytes(bytes(data))
            airgap("-q", "verify", str(bundle), *trust, expect=3)
            print(
                f"  (sha256 of {victim.name} is now {hashlib.sha256(data).hexdigest()[:16]}…; "
                "the signed parts list says otherwise: only this part needs carrying again)"
            )
            airgap("status", "--prefix", str(prefix), "--runtime-url", engine.url)
            airgap("uninstall", "--prefix", str(prefix), "--runtime-url", engine.url)
        total = sum(t for _, t in STEPS)
        print(
            f"\ndemo finished: {len(STEPS)} commands in {total:.1f}s, "
            f"{len(joined) / 2**20:.0f} MiB bundle in {len(parts)} parts"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
