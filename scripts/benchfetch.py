"""Fetch benchmarks: `airgap fetch` side by side with the tools users would pick instead.

    python scripts/benchfetch.py --download-gib 1 --hub-gib 1 [--runs 3] [--out report.md]

(``scripts/bench.py --download-gib N --hub-gib N`` runs the same sections in its report.)

* registry (a private CNCF registry on loopback): ``curl`` of the blob, ``skopeo copy
  docker://… dir:`` and ``airgap fetch`` with ``--jobs 1`` and the default jobs, for an
  image of one big layer and for one of four layers of a quarter each (``curl -Z``
  fetches those four in parallel);
* hub (olah serving a git repo with one LFS file, as the tests start it): ``hf
  download`` of the file (``HF_ENDPOINT`` at the hub), ``curl -L`` of its resolve URL,
  and ``airgap fetch`` of the same file.

Every command starts from an empty cache or target directory; the first run warms the
page cache and is dropped, the median of ``--runs`` is reported. Each row has the wall
time, the CPU seconds (user + system, from ``wait4``) per GiB, and the peak RSS. The
SHA-256 1-thread ceiling gives the CPU cost of one hash pass per GiB: airgap's CPU per
GiB minus a peer's is what verification costs us, to compare with that pass.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
GiB = 1024 * MiB

# Forks the command (so its peak RSS is its own), waits for it with wait4 and writes
# "wall_seconds maxrss_kib cpu_seconds" to argv[1].
LAUNCH = r"""
import os, sys, time
report, cmd = sys.argv[1], sys.argv[2:]
started = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, u = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{time.monotonic() - started} {u.ru_maxrss} {u.ru_utime + u.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status) & 255)
"""

SHA1 = r"""
import hashlib, os, sys, time
buf, n = memoryview(os.urandom(1 << 20)), int(sys.argv[1])
h, t = hashlib.sha256(), time.perf_counter()
for _ in range(n):
    h.update(buf)
print(n * len(buf) / (time.perf_counter() - t))
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes, CPU seconds). Fails loudly."""
    # Like an installed package, with its bytecode written once (the warm-up run).
    full = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.NamedTemporaryFile("r") as report, tempfile.TemporaryFile() as err:
        proc = subprocess.run(
            [sys.executable, "-S", "-I", "-c", LAUNCH, report.name, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**full, **(env or {})},
            check=False,
        )
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(
                f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n"
                f"{err.read().decode(errors='replace')[-4000:]}"
            )
        wall, rss_kib, cpu = report.read().split()
        return float(wall), int(rss_kib) * 1024, float(cpu)


def measure(
    name: str,
    cmd: list[str],
    runs: int,
    nbytes: int,
    reset: Callable[[], None],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Median wall and CPU of ``runs`` runs after one warm-up, each after ``reset()``."""
    got = []
    for i in range(runs + 1):
        reset()
        r = run(cmd, env)
        if i:
            got.append(r)
    reset()
    wall = statistics.median(r[0] for r in got)
    cpu = statistics.median(r[2] for r in got)
    print(f"  {name}: {wall:.2f} s, {cpu:.2f} CPU s", file=sys.stderr, flush=True)
    return {
        "name": name,
        "seconds": wall,
        "all": [r[0] for r in got],
        "cpu": cpu,
        "cpu_all": [r[2] for r in got],
        "cpu_per_gib": cpu / (nbytes / GiB),
        "rss": max(r[1] for r in got),
        "bytes": nbytes,
    }


def sha256_ceiling(runs: int) -> float:
    """SHA-256 bytes/s with one thread (best of ``runs``)."""
    cmd = [sys.executable, "-c", SHA1, "256"]
    return max(
        float(subprocess.run(cmd, capture_output=True, check=True).stdout) for _ in range(runs)
    )


def write_random(path: Path, size: int) -> str:
    """``size`` bytes of incompressible data (no two 16 MiB blocks equal); returns the sha256."""
    block = os.urandom(16 * MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left, i = size, 0
        while left:
            n = min(len(block), left)
            data = i.to_bytes(8, "little") + block[8:n] if n > 8 else block[:n]
            f.write(data)
            h.update(data)
            left -= n
            i += 1
    return h.hexdigest()


# -- registry ----------------------------------------------------------------------------


def push_image(work: Path, registry: str, ref: str, sizes: list[int]) -> list[str]:
    """Push an image of random layers of ``sizes`` to ``registry/ref``; returns the layer
    digests (hex). The layers are streamed to disk, never held in memory."""
    layout = work / "oci-layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = []
    for i, size in enumerate(sizes):
        tmp = layout / f"layer-{i}"
        digest = write_random(tmp, size)
        tmp.rename(blobs / digest)
        layers.append(digest)

    def blob(doc: dict[str, Any]) -> tuple[str, int]:
        data = json.dumps(doc).encode()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return digest, len(data)

    cfg, cfg_size = blob(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in layers]},
        }
    )
    man, man_size = blob(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{cfg}",
                "size": cfg_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{d}",
                    "size": s,
                }
                for d, s in zip(layers, sizes, strict=True)
            ],
        }
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{man}",
                        "size": man_size,
                    }
                ],
            }
        )
    )
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--preserve-digests",
            f"oci:{layout}",
            f"docker://{registry}/{ref}",
        ],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(layout)
    return layers


def fetch_manifest(path: Path, images: dict[str, str] | None = None, model: Any = None) -> Path:
    """A manifest whose remote sources are ``images`` (role -> ref) and/or ``model``; the
    rest are small local sources (nothing to fetch)."""
    import yaml

    from devkit.demo_data import make_demo_sources

    path.mkdir(parents=True)
    manifest = make_demo_sources(path)
    doc = yaml.safe_load(manifest.read_text())
    for role, ref in (images or {}).items():
        doc["images"][role] = ref
    if model is not None:
        doc["model"] = model
    manifest.write_text(yaml.safe_dump(doc))
    return manifest


def airgap_fetch(py: str, manifest: Path, cache: Path, *extra: str) -> list[str]:
    return [py, "-m", "bundler", "-q", "fetch", str(manifest), "--cache-dir", str(cache), *extra]


CACHED = "airgap fetch, all cached (start-up + resolve)"


def cached_row(
    py: str,
    manifest: Path,
    cache: Path,
    runs: int,
    nbytes: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The fixed cost of a fetch: start-up and resolving, with everything in the cache."""
    cmd = airgap_fetch(py, manifest, cache)
    run(cmd, env)  # fill the cache
    row = measure(CACHED, cmd, runs, nbytes, lambda: None, env)
    shutil.rmtree(cache, ignore_errors=True)
    return row


def bench_download(work: Path, args: argparse.Namespace, py: str) -> str:
    """Registry rows: one big layer, then four layers of a quarter each."""
    from devkit.services import registry

    size = int(args.download_gib * GiB)
    quarter = size // 4
    work = work / "registry"
    work.mkdir()
    cache, out = work / "cache", work / "out"

    def reset() -> None:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    rows: dict[str, list[dict[str, Any]]] = {}
    print("registry fetch …", file=sys.stderr, flush=True)
    with registry() as reg:
        big = push_image(work, reg.url, "bench/big:1", [size])
        multi = push_image(work, reg.url, "bench/multi:1", [quarter] * 4)
        for label, ref, layers, total in (
            ("one", "bench/big:1", big, size),
            ("four", "bench/multi:1", multi, 4 * quarter),
        ):
            repo = ref.split(":")[0]
            urls = [f"http://{reg.url}/v2/{repo}/blobs/sha256:{d}" for d in layers]
            manifest = fetch_manifest(work / f"m-{label}", {"vllm": f"{reg.url}/{ref}"})
            curl = ["curl", "-sfS"]
            for i, u in enumerate(urls):
                curl += ["-o", str(out / f"b{i}"), u]
            plan = [("curl" + (" (4 blobs, one after another)" if len(urls) > 1 else ""), curl)]
            if len(urls) > 1:
                plan.append(("curl -Z (4 blobs in parallel)", ["curl", "-Z", *curl[1:]]))
            plan += [
                (
                    "skopeo copy docker:// dir:",
                    [
                        "skopeo",
                        "copy",
                        "-q",
                        "--src-tls-verify=false",
                        f"docker://{reg.url}/{ref}",
                        f"dir:{out / 'img'}",
                    ],
                ),
                ("airgap fetch --jobs 1", airgap_fetch(py, manifest, cache, "--jobs", "1")),
                ("airgap fetch (--jobs 4, default)", airgap_fetch(py, manifest, cache)),
            ]
            rows[label] = [
                measure(name, cmd, args.runs, total, reset)
                for name, cmd in plan
                if shutil.which(cmd[0]) or cmd[0] == py
            ]
            rows[label].append(cached_row(py, manifest, cache, args.runs, total))
    results = getattr(args, "results", None)
    if isinstance(results, dict):
        results["download"] = rows
    one, four = rows["one"], rows["four"]
    by = {r["name"]: r for r in one}
    ours = by["airgap fetch (--jobs 4, default)"]
    lines = [
        "",
        f"## Download from a loopback registry ({size / GiB:.2f} GiB)",
        "",
        f"One layer of {size / GiB:.2f} GiB:",
        "",
        *table(one, by.get("curl")),
        "",
        f"Four layers of {quarter / GiB:.2f} GiB:",
        "",
        *table(four, four[0]),
        "",
    ]
    if "curl" in by:
        lines.append(
            f"- airgap fetch / curl, throughput: **{by['curl']['seconds'] / ours['seconds']:.2f}x**"
            " (target >= 0.8x); curl verifies nothing, airgap checks the sha256 and computes"
            " the bundle's chunk digests."
        )
    skopeo = by.get("skopeo copy docker:// dir:")
    if skopeo:
        lines.append(
            f"- airgap fetch vs skopeo copy: **{skopeo['seconds'] / ours['seconds']:.2f}x** "
            "faster (target >= 2x)"
        )
    fb = {r["name"]: r for r in four}
    j1, j4 = fb["airgap fetch --jobs 1"], fb["airgap fetch (--jobs 4, default)"]
    lines.append(
        f"- four layers: --jobs 4 takes {j4['seconds'] / j1['seconds']:.2f}x the time of "
        "--jobs 1 (layers downloaded in parallel; on a loopback link the CPU, not the link, "
        "is the limit)"
    )
    lines += sha_lines(args, ours, [r for r in one if r["name"] == "curl"], by.get(CACHED))
    return "\n".join([*lines, ""])


# -- hub ---------------------------------------------------------------------------------


def hub_repo(mirrors: Path, work: Path, size: int) -> tuple[str, str]:
    """A model repo with one LFS file of ``size`` random bytes, as olah serves it from a
    mirrors directory (the pointer in git, the object under .git/lfs). Returns (repo,
    file)."""
    from devkit.services import git_commit_repo

    repo = mirrors / "models" / "bench" / "big"
    git_commit_repo(repo, {"config.json": b'{"model_type": "llama"}\n'}, set(), "init")
    tmp = work / "lfs.tmp"
    oid = write_random(tmp, size)
    obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    obj.parent.mkdir(parents=True)
    tmp.rename(obj)
    (repo / "model.safetensors").write_text(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
    )
    git_commit_repo(repo, {}, set(), "weights")
    return "bench/big", "model.safetensors"


def bench_hub(work: Path, args: argparse.Namespace, py: str) -> str:
    """Hub rows: `hf download` and `curl -L` against `airgap fetch` of one LFS file."""
    from devkit.services import olah

    size = int(args.hub_gib * GiB)
    work = work / "hub"
    mirrors = work / "mirrors"
    mirrors.mkdir(parents=True)
    cache, out, hf_home = work / "cache", work / "out", work / "hf-home"

    def reset() -> None:
        for d in (cache, out, hf_home):
            shutil.rmtree(d, ignore_errors=True)
        out.mkdir()

    print("hub fetch …", file=sys.stderr, flush=True)
    repo, name = hub_repo(mirrors, work, size)
    with olah(mirrors) as hub:
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        manifest = fetch_manifest(
            work / "m",
            model={
                "repo": repo,
                "revision": "main",
                "served_name": "bench",
                "include": [name],
                "license_accepted": "unknown",
            },
        )
        hf = shutil.which("hf") or str(Path(py).parent / "hf")
        plan = [
            ("hf download", [hf, "download", repo, name, "--local-dir", str(out)]),
            (
                "curl -L (resolve URL)",
                ["curl", "-sfSL", "-o", str(out / name), f"{hub.url}/{repo}/resolve/main/{name}"],
            ),
            ("airgap fetch", airgap_fetch(py, manifest, cache)),
        ]
        rows = [
            measure(n, cmd, args.runs, size, reset, env)
            for n, cmd in plan
            if shutil.which(cmd[0]) or Path(cmd[0]).exists()
        ]
        rows.append(cached_row(py, manifest, cache, args.runs, size, env))
    results = getattr(args, "results", None)
    if isinstance(results, dict):
        results["hub"] = rows
    by = {r["name"]: r for r in rows}
    ours = by["airgap fetch"]
    lines = [
        "",
        f"## Download from a local hub (olah, one {size / GiB:.2f} GiB LFS file)",
        "",
        *table(rows, by.get("hf download")),
        "",
    ]
    if "hf download" in by:
        hf_row = by["hf download"]
        lines.append(
            "- airgap fetch / hf download, wall time: "
            f"**{ours['seconds'] / hf_row['seconds']:.2f}x**"
            " (target <= 1x); hf download from a mirror hashes nothing."
        )
    lines += sha_lines(args, ours, [r for r in rows if r["name"] == "hf download"], by.get(CACHED))
    return "\n".join([*lines, ""])


# -- report ------------------------------------------------------------------------------


def sha_lines(
    args: argparse.Namespace,
    ours: dict[str, Any],
    peers: list[dict[str, Any]],
    fixed: dict[str, Any] | None,
) -> list[str]:
    """CPU per GiB of airgap minus a peer's (what verifying costs us) in SHA-256 passes."""
    if not hasattr(args, "sha_ceiling"):
        args.sha_ceiling = sha256_ceiling(max(1, args.runs))
    one_pass = GiB / args.sha_ceiling
    lines = []
    for p in peers:
        extra = ours["cpu_per_gib"] - p["cpu_per_gib"]
        lines.append(
            f"- CPU per GiB: airgap {ours['cpu_per_gib']:.2f} s, {p['name']} "
            f"{p['cpu_per_gib']:.2f} s: the difference, {extra:.2f} s/GiB, is "
            f"**{extra / one_pass:.2f}** SHA-256 passes (target <= 1; one pass: 1 thread at "
            f"{args.sha_ceiling / 1e9:.2f} GB/s = {one_pass:.2f} s/GiB)"
        )
    if fixed:
        gib = ours["bytes"] / GiB
        lines.append(
            f"- of airgap's {ours['cpu']:.2f} CPU s, {fixed['cpu']:.2f} s are start-up and "
            f"resolving (the all-cached row), a fixed cost: "
            f"{(ours['cpu'] - fixed['cpu']) / gib:.2f} s/GiB for the transfer itself"
        )
    return lines


def table(rows: list[dict[str, Any]], base: dict[str, Any] | None) -> list[str]:
    out = [
        "| command | seconds (median) | GB/s | speed vs first row | CPU s | CPU s/GiB | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fixed = r["name"] == CACHED
        ratio = f"{base['seconds'] / r['seconds']:.2f}x" if base and not fixed else "–"
        rate = "–" if fixed else f"{r['bytes'] / r['seconds'] / 1e9:.2f}"
        per = "–" if fixed else f"{r['cpu_per_gib']:.2f}"
        out.append(
            f"| {r['name']} | {r['seconds']:.2f} | {rate} | {ratio} | {r['cpu']:.2f} | {per} "
            f"| {r['rss'] / MiB:.0f} MiB |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--download-gib", type=float, default=0.0, help="registry rows (GiB)")
    ap.add_argument("--hub-gib", type=float, default=0.0, help="hub rows (GiB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--json", type=Path, default=None, help="write every measurement here")
    args = ap.parse_args()
    args.results = {}
    work = Path(tempfile.mkdtemp(prefix="airgap-benchfetch-", dir=args.dir))
    report = []
    try:
        if args.download_gib:
            report.append(bench_download(work, args, sys.executable))
        if args.hub_gib:
            report.append(bench_hub(work, args, sys.executable))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(report)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(args.results, indent=1) + "\n")


if __name__ == "__main__":
    main()
