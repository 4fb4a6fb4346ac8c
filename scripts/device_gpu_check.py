"""Run the real ``nvidia-smi`` of this host through airgap's parser and GPU checks; write
Markdown. Called by ``scripts/device-gpu-check.sh`` (no Docker, no network, < 2 minutes).

For each shipped manifest (facts from ``manifests/model-facts.json``): the install
preflight's GPU rows as they would be on this host with all its GPUs, and the fit of the
same model at TP 1 on one of these GPUs. Also: NVIDIA's CUDA image requirements for
12.8 ... 13.1 against this driver, and the raw outputs the parser read.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fit_table import shipped  # noqa: E402

from bundler import __version__  # noqa: E402
from bundler.errors import AirgapError  # noqa: E402
from bundler.facts import ImageCuda  # noqa: E402
from bundler.gpu import cuda, fit, smi  # noqa: E402
from bundler.install.fit import Subject, gpu_preflight  # noqa: E402
from bundler.install.options import InstallOptions  # noqa: E402
from bundler.install.records import ServeOptions  # noqa: E402

# What NVIDIA's CUDA base images set (first alternatives), by CUDA release.
IMAGE_REQUIREMENTS = {
    "12.8": "cuda>=12.8 brand=unknown,driver>=470,driver<471 brand=tesla,driver>=535,driver<536",
    "12.9": "cuda>=12.9 brand=unknown,driver>=535,driver<536 brand=tesla,driver>=535,driver<536",
    "13.0": "cuda>=13.0 brand=unknown,driver>=535,driver<536 brand=tesla,driver>=535,driver<536",
    "13.1": "cuda>=13.1",
}


def raw(args: list[str]) -> str:
    try:
        r = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"
    return (r.stdout + r.stderr).strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, required=True)
    out_path = ap.parse_args().out
    md: list[str] = [
        "# airgap GPU check on a real host",
        "",
        f"airgap {__version__}, Python {platform.python_version()}, {platform.platform()}",
        "",
    ]
    started = time.monotonic()
    try:
        host = smi.read_host()
    except AirgapError as e:
        md += [f"**nvidia-smi could not be read**: {e.message}", "", f"hint: {e.hint}"]
        out_path.write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return 1
    took = time.monotonic() - started
    md += [
        f"## What the parser read ({took:.2f} s for both nvidia-smi calls)",
        "",
        f"driver {host.driver}, CUDA {host.cuda}, problems: {list(host.problems) or 'none'}",
        "",
        "| index | name | uuid | total MiB | reserved MiB | used MiB | free MiB | CUDA total GiB |"
        " compute cap | MIG | brand |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in host.gpus:
        md.append(
            f"| {g.index} | {g.name} | {g.uuid} | {g.total_mib} | {g.reserved_mib} | "
            f"{g.used_mib} | {g.free_mib} | {g.total / fit.GiB:.2f} | {g.compute_cap} | "
            f"{g.mig} | {g.brand} |"
        )
    md += ["", "## NVIDIA CUDA image requirements against this driver", ""]
    for version, text in IMAGE_REQUIREMENTS.items():
        g = host.gpus[0]
        props = cuda.HostProps(host.cuda, host.driver, g.compute_cap, cuda.brand_name(g.brand))
        v = cuda.judge(ImageCuda(require=text), props)
        md.append(f"- CUDA {version}: {'ok' if v.ok else 'REFUSED'}: {v.detail}")
    md += ["", "## The install preflight's GPU rows, per shipped manifest (all GPUs)", ""]
    opts = InstallOptions(bundle="-", trusted={}, serve=ServeOptions(gpus="all"))
    for path, m, facts in shipped():
        subject = Subject(f"{m.name} v{m.version}", m.serve, facts or "no facts", None)
        errors: dict[str, AirgapError] = {}
        rows = gpu_preflight(subject, opts, None, errors)
        md += [f"### {path.name}", "", "| check | ok | detail |", "|---|---|---|"]
        md += [f"| {c.name} | {c.ok} | {c.detail} |" for c in rows]
        if facts is not None:
            one = dataclasses.replace(fit.shape_of(m.serve), tp=1, pp=1)
            f = fit.estimate(facts, one, host.gpus[0].total)
            line = f if isinstance(f, str) else fit.describe(f)
            verdict = "" if isinstance(f, str) else f"fits: {f.fits}; "
            md += ["", f"At TP 1 on GPU 0: {verdict}{line}"]
        md.append("")
    md.append(f"total {time.monotonic() - started:.2f} s")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(md) + "\n")
    md_raw = [
        "",
        "## Raw output",
        "",
        "```",
        raw([f"--query-gpu={smi.QUERY}", "--format=csv,noheader,nounits"]),
        raw(["-L"]),
        "```",
    ]
    with out_path.open("a") as f:
        f.write("\n".join(md_raw) + "\n")
    print(out_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
