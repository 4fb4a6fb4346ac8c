"""The scale tier (``scripts/test-scale``): ``airgap build -o - | airgap verify -`` over
about 100 GiB of sparse sources, with each side's peak RSS under a fixed bound.

The weights are sparse files (``truncate``: no disk used), the rest is the demo's small
sources, so nothing of that size ever touches the disk: the bundle only exists in the
pipe, and the hash cache (in the test's temp directory) holds a few hundred KB.
``AIRGAP_SCALE_GIB`` sets the size (default 100); ``AIRGAP_SCALE_RSS_MB`` the bound
(default 200). The measured time and peak RSS of each side are printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from devkit.demo_data import make_demo_sources

from conftest import make_key

GIB = 1 << 30
SHARD = 5 * GIB  # a 70B model comes as shards of about 5 GB


def _env_number(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def sparse_sources(root: Path, total: int) -> Path:
    """The demo's sources plus ``total`` bytes of sparse weight shards (vLLM never globs
    ``original/``; the model facts come from the demo's safetensors file)."""
    manifest = make_demo_sources(root)
    shards = root / "weights" / "original"
    shards.mkdir()
    count = -(-total // SHARD)
    for i in range(count):
        with open(shards / f"consolidated.{i:02d}.pth", "wb") as f:
            f.write(b"shard %d\n" % i)  # distinct first bytes: distinct digests
            f.truncate(min(SHARD, total - i * SHARD))
    return manifest


def test_build_to_stdout_piped_into_verify_stays_bounded(tmp_path: Path) -> None:
    total = int(_env_number("AIRGAP_SCALE_GIB", 100) * GIB)
    limit_mb = _env_number("AIRGAP_SCALE_RSS_MB", 200)
    src = tmp_path / "src"
    src.mkdir()
    manifest = sparse_sources(src, total)
    key = make_key(tmp_path / "keys")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(int(time.time()) - 60)}
    airgap = [sys.executable, "-m", "bundler", "-q"]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    # the build hashes every source before its first byte (minutes at this size): verify's
    # default --start-timeout (1 h) covers that, with no option given
    started = time.monotonic()
    with (
        open(tmp_path / "build.err", "wb") as build_err,
        open(tmp_path / "verify.out", "wb") as verify_out,
        open(tmp_path / "verify.err", "wb") as verify_err,
    ):
        build = subprocess.Popen(
            [*airgap, "build", str(manifest), "-o", "-", "--key", str(key.private), *cache],
            stdout=subprocess.PIPE,
            stderr=build_err,
            env=env,
        )
        assert build.stdout is not None
        verify = subprocess.Popen(
            [*airgap, "verify", "-", "--trusted-key", str(key.public)],
            stdin=build.stdout,
            stdout=verify_out,
            stderr=verify_err,
            env=env,
        )
        build.stdout.close()  # verify holds the only reading end
        usage = {}
        for name, proc in (("build", build), ("verify", verify)):
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            usage[name] = (proc.returncode, ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime)
    seconds = time.monotonic() - started
    out = (tmp_path / "verify.out").read_text()
    errors = (tmp_path / "build.err").read_text() + (tmp_path / "verify.err").read_text()
    print(
        f"\nscale: {total / GIB:.1f} GiB through build -o - | verify - in {seconds:.0f} s "
        f"({total / seconds / 1e9:.2f} GB/s); "
        + "; ".join(
            f"{n}: exit {rc}, peak RSS {rss:.0f} MiB, CPU {cpu:.0f} s"
            for n, (rc, rss, cpu) in usage.items()
        )
    )
    assert usage["build"][0] == 0, errors[-3000:]
    assert usage["verify"][0] == 0, errors[-3000:]
    assert out.startswith("OK demo v1: signed by 1 trusted key"), out
    assert "built demo v1" in errors  # the build's summary went to stderr, not the pipe
    for name, (_, rss, _) in usage.items():
        assert rss <= limit_mb, f"{name} peaked at {rss:.0f} MiB, over {limit_mb:.0f} MiB"
