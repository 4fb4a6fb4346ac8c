"""Benchmark airgap build/verify against stock tools on the same files, in one run.

    .venv/bin/python scripts/bench.py --size-gib 4 [--runs 3] [--out docs/benchmarks.md]

Generates a bundle source tree (a few multi-GiB weight files, many small files,
two image archives), then times, as child processes with their peak RSS:

* ``airgap build`` from local sources   vs  ``tar cf`` of the same files
* ``airgap verify`` of the bundle       vs  ``openssl dgst -sha256`` of the same files

Every command runs ``--runs`` times after one warm-up; the median is reported.
The page cache is warm for all of them alike (24 GiB RAM holds the data set), so
the figures compare CPU and copy efficiency, not the disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devkit.demo_data import Image, make_demo_sources  # noqa: E402

COLD = "airgap build, cold (hashes every file)"
WARM = "airgap build, warm (digests remembered)"
OPENSSL = "openssl dgst -sha256 (same files)"
MiB = 1024 * 1024
GiB = 1024 * MiB


def write_random(path: Path, size: int) -> None:
    block = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            n = min(len(block), left)
            # vary each block cheaply so no two blocks are equal
            f.write(i.to_bytes(8, "little") + block[8:n] if n > 8 else block[:n])
            left -= n
            i += 1


def make_dataset(root: Path, size: int) -> Path:
    manifest = make_demo_sources(root)
    weights = root / "weights"
    big = [int(size * f) for f in (0.42, 0.30, 0.18)]
    for i, n in enumerate(big):
        write_random(weights / f"model-{i + 1:05d}-of-00003.safetensors", n)
    rnd = random.Random(7)
    small_dir = weights / "extra"
    small_dir.mkdir()
    budget = size - sum(big) - 80 * MiB
    i = 0
    while budget > 0:
        n = min(budget, rnd.randint(1024, 4 * MiB))
        write_random(small_dir / f"shard-{i:04d}.bin", n)
        budget -= n
        i += 1
    # an image with a real-sized layer (64 MiB), saved as a docker-archive
    layer = {"opt/blob.bin": os.urandom(64 * MiB)}
    Image([layer], compress=False).docker_archive(root / "vllm-big.tar", "example.org/vllm:bench")
    text = manifest.read_text().replace("./vllm.tar", "./vllm-big.tar")
    manifest.write_text(text)
    return manifest


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run ``cmd`` under GNU time; return (seconds, peak RSS in bytes) of that command alone."""
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.monotonic()
        proc = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", report.name, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            check=False,
        )
        took = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr.decode()}")
        return took, int(report.read().split()[-1]) * 1024


def measure(
    name: str,
    cmd: list[str],
    runs: int,
    before: list[Path] | None = None,
    reset: Callable[[], None] | None = None,
) -> dict:
    results = []
    for i in range(runs + 1):
        for p in before or []:
            if p.exists():
                p.unlink()
        if reset:
            reset()
        t, rss = run(cmd)
        if i:  # the first run warms caches
            results.append((t, rss))
    times = [t for t, _ in results]
    return {
        "name": name,
        "seconds": statistics.median(times),
        "all": times,
        "rss": max(r for _, r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument(
        "--download-gib",
        type=float,
        default=0.0,
        help="also benchmark downloading an image layer of this size from a local registry: "
        "`airgap fetch` against `curl` (starts a private registry)",
    )
    ap.add_argument(
        "--install-gib",
        type=float,
        default=0.0,
        help="also benchmark `airgap install` on a bundle of this size against "
        "`tar xf` + `docker load` (starts a private dockerd)",
    )
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="airgap-bench-", dir=args.dir))
    py = sys.executable
    try:
        src = work / "src"
        src.mkdir()
        print(f"generating {args.size_gib} GiB in {work} …", file=sys.stderr)
        manifest = make_dataset(src, int(args.size_gib * GiB))
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != "manifest.yaml")
        total = sum(p.stat().st_size for p in files)
        subprocess.run(
            [py, "-m", "bundler", "keygen", str(work / "k")], check=True, capture_output=True
        )
        bundle = work / "bundle.tar"
        tarball = work / "plain.tar"
        rel = [str(p.relative_to(src)) for p in files]

        def airgap(*a: str) -> list[str]:
            return [py, "-m", "bundler", "-q", *a]

        build = ["build", str(manifest), "-o", str(bundle), "--key", str(work / "k")]
        rows = [
            measure(
                "tar cf (same files)",
                ["tar", "cf", str(tarball), "-C", str(src), *rel],
                args.runs,
                [tarball],
            ),
            measure(COLD, airgap(*build, "--no-hash-cache"), args.runs, [bundle]),
            measure(WARM, airgap(*build, "--cache-dir", str(work / "cache")), args.runs, [bundle]),
            measure(OPENSSL, ["openssl", "dgst", "-sha256", *map(str, files)], args.runs),
            measure(
                "airgap verify",
                airgap("verify", str(bundle), "--trusted-key", str(work / "k.pub")),
                args.runs,
            ),
        ]
        report = render(rows, total, bundle.stat().st_size, len(files), args)
        for p in (bundle, tarball):
            p.unlink(missing_ok=True)
        if args.download_gib:
            report += bench_download(work, args, py)
        if args.install_gib:
            report += bench_install(work, args, py)
        print(report)
        if args.out:
            args.out.write_text(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_download(work: Path, args: argparse.Namespace, py: str) -> str:
    """`airgap fetch` of a big layer from a loopback registry vs `curl` of the same blob."""
    import hashlib
    import json

    from devkit.services import registry

    layout = work / "dl-oci"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    size = int(args.download_gib * GiB)
    tmp = work / "layer.bin"
    write_random(tmp, size)
    h = hashlib.sha256()
    with open(tmp, "rb") as f:
        while block := f.read(16 * MiB):
            h.update(block)
    layer = h.hexdigest()
    tmp.rename(blobs / layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]},
        }
    ).encode()
    cfg = hashlib.sha256(config).hexdigest()
    (blobs / cfg).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{cfg}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer}",
                    "size": size,
                }
            ],
        }
    ).encode()
    man = hashlib.sha256(manifest).hexdigest()
    (blobs / man).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{man}",
                        "size": len(manifest),
                    }
                ],
            }
        )
    )
    src = work / "dsrc"
    src.mkdir()
    demo = make_demo_sources(src)
    cache = work / "dl-cache"
    with registry() as reg:
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--dest-tls-verify=false",
                "--preserve-digests",
                f"oci:{layout}",
                f"docker://{reg.url}/bench/big:1",
            ],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(layout)
        import yaml

        doc = yaml.safe_load(demo.read_text())
        doc["images"]["vllm"] = f"{reg.url}/bench/big:1"
        demo.write_text(yaml.safe_dump(doc))
        out = work / "curl.out"

        def reset() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            out.unlink(missing_ok=True)

        rows = [
            measure(
                "curl (same blob)",
                [
                    "curl",
                    "-sf",
                    "-o",
                    str(out),
                    f"http://{reg.url}/v2/bench/big/blobs/sha256:{layer}",
                ],
                args.runs,
                reset=reset,
            ),
            measure(
                "airgap fetch (verified, chunk digests)",
                [py, "-m", "bundler", "-q", "fetch", str(demo), "--cache-dir", str(cache)],
                args.runs,
                reset=reset,
            ),
        ]
        reset()
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    return "\n".join(
        [
            "",
            f"## Download ({size / GiB:.2f} GiB image layer from a loopback registry)",
            "",
            *table(rows, size),
            "",
            f"- airgap fetch throughput / curl: **{ratio:.2f}x** (target >= 0.8x); curl verifies "
            "nothing, airgap checks the sha256 and computes the bundle's chunk digests.",
            "",
        ]
    )


def bench_install(work: Path, args: argparse.Namespace, py: str) -> str:
    """`airgap install` (verify + unpack + docker load, one pass) vs `tar xf` + `docker load`."""
    from devkit.services import dockerd

    src = work / "isrc"
    src.mkdir()
    size = int(args.install_gib * GiB)
    manifest = make_demo_sources(src)
    write_random(src / "weights" / "model-00001-of-00001.safetensors", size // 2)
    layer = src / "layer.bin"
    write_random(layer, size // 2 - 64 * MiB)
    # a docker-archive whose one layer is a real tar holding the big file (streamed, not in RAM)
    archive = src / "vllm-big.tar"
    layer_tar = src / "layer.tar"
    subprocess.run(["tar", "cf", str(layer_tar), "-C", str(src), "layer.bin"], check=True)
    layer.unlink()
    import hashlib
    import json

    h = hashlib.sha256()
    with open(layer_tar, "rb") as f:
        while block := f.read(16 * MiB):
            h.update(block)
    diff_id = "sha256:" + h.hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    (src / cfg_name).write_bytes(config)
    (src / "manifest.json").write_text(
        json.dumps(
            [{"Config": cfg_name, "RepoTags": ["example.org/vllm:bench"], "Layers": ["layer.tar"]}]
        )
    )
    subprocess.run(
        ["tar", "cf", str(archive), "-C", str(src), "manifest.json", cfg_name, "layer.tar"],
        check=True,
    )
    layer_tar.unlink()
    manifest.write_text(manifest.read_text().replace("./vllm.tar", "./vllm-big.tar"))
    bundle = work / "install.tar"
    subprocess.run(
        [
            py,
            "-m",
            "bundler",
            "-q",
            "build",
            str(manifest),
            "-o",
            str(bundle),
            "--key",
            str(work / "k"),
            "--no-hash-cache",
        ],
        check=True,
    )
    nginx = src / "nginx.tar"
    prefix, extracted = work / "opt", work / "x"
    with dockerd() as svc:

        def reset() -> None:
            ids = subprocess.run(
                ["docker", "-H", svc.url, "images", "-q"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if ids:
                subprocess.run(
                    ["docker", "-H", svc.url, "rmi", "-f", *set(ids)],
                    capture_output=True,
                    check=False,
                )
            shutil.rmtree(prefix, ignore_errors=True)
            shutil.rmtree(extracted, ignore_errors=True)
            extracted.mkdir()

        baseline = (
            f"tar xf {bundle} -C {extracted} && docker -H {svc.url} load -q -i {archive}"
            f" && docker -H {svc.url} load -q -i {nginx}"
        )
        rows = [
            measure(
                "tar xf + docker load (same content)",
                ["sh", "-c", baseline],
                args.runs,
                reset=reset,
            ),
            measure(
                "airgap install (verify + unpack + load)",
                [
                    py,
                    "-m",
                    "bundler",
                    "-q",
                    "install",
                    str(bundle),
                    "--trusted-key",
                    str(work / "k.pub"),
                    "--prefix",
                    str(prefix),
                    "--no-gpu",
                    "--runtime-url",
                    svc.url,
                    "--no-serve",  # files and images; serving is not part of this timing
                ],
                args.runs,
                reset=reset,
            ),
        ]
        reset()
    base, ours = rows[0]["seconds"], rows[1]["seconds"]
    total = bundle.stat().st_size
    lines = [
        "",
        f"## Install ({total / GiB:.2f} GiB bundle: half model file, half image layer)",
        "",
        *table(rows, total),
    ]
    lines += [
        "",
        f"- install / (tar xf + docker load): **{ours / base:.2f}x** the time "
        "(target <= 1.3x); the baseline verifies nothing.",
        "",
    ]
    return "\n".join(lines)


def table(rows: list[dict], total: int) -> list[str]:
    """Markdown rows: seconds, throughput over ``total`` bytes, peak RSS."""
    out = ["| command | seconds (median) | GB/s | peak RSS |", "|---|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['seconds']:.2f} | {total / r['seconds'] / 1e9:.2f} | "
            f"{r['rss'] / MiB:.0f} MiB |"
        )
    return out


def render(
    rows: list[dict], total: int, bundle_size: int, nfiles: int, args: argparse.Namespace
) -> str:
    by = {r["name"]: r["seconds"] for r in rows}
    tar = by["tar cf (same files)"]
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# airgap benchmarks",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}.",
        f"Data: {nfiles} files, {total / GiB:.2f} GiB (three multi-GiB weight files, many small "
        f"files, two image archives); bundle {bundle_size / GiB:.2f} GiB. Page cache warm for "
        f"every command; median of {args.runs} runs after one warm-up.",
        "",
        *table(rows, total),
    ]
    lines += [
        "",
        f"- build / tar cf: cold **{by[COLD] / tar:.2f}x**, warm **{by[WARM] / tar:.2f}x** the "
        "time (target <= 1.3x)",
        f"- verify vs openssl dgst: **{by[OPENSSL] / by['airgap verify']:.2f}x** faster "
        "(target >= 1.5x)",
        "",
        f"Reproduce: `.venv/bin/python scripts/bench.py --size-gib {args.size_gib:g} "
        f"--runs {args.runs} --download-gib {args.download_gib:g} "
        f"--install-gib {args.install_gib:g}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
