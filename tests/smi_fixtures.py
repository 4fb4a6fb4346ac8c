"""nvidia-smi output for the tests: the real H200 capture in ``fixtures/nvidia-smi`` (kept as
captured), and hosts derived from it by editing copies (2 x A100 80 GB, a busy GPU, an
old driver, MIG), plus a fake ``nvidia-smi`` program that prints them.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bundler.gpu.smi import QUERY

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia-smi"
H200_UUID = "GPU-d5e58f1f-6a11-b609-17fa-42c3aef1a398"


def real_xml() -> str:
    return (FIXTURES / "nvidia-smi-q.xml").read_text()


def real_query() -> str:
    """The capture's first --query-gpu row (csv with units and pci.bus_id) in the form the
    installer asks for: ``noheader,nounits`` with the eight fields of ``smi.QUERY``."""
    header, row = (FIXTURES / "nvidia-smi-query.txt").read_text().splitlines()[:2]
    names = [h.split(" [")[0].strip() for h in header.split(",")]
    values = dict(zip(names, (v.strip().removesuffix(" MiB") for v in row.split(",")), strict=True))
    return ", ".join(values[f] for f in QUERY.split(",")) + "\n"


@dataclass(frozen=True)
class FakeGpu:
    index: int
    name: str = "NVIDIA A100-SXM4-80GB"
    total: int = 81920  # MiB
    reserved: int = 565
    used: int = 0
    cap: str = "8.0"
    brand: str = "NVIDIA"
    mig: bool = False

    @property
    def uuid(self) -> str:
        return f"GPU-{self.index:08x}-1111-2222-3333-{self.total:012x}"

    @property
    def free(self) -> int:
        return self.total - self.reserved - self.used


@dataclass(frozen=True)
class FakeHost:
    gpus: tuple[FakeGpu, ...]
    driver: str = "580.159.04"
    cuda: str | None = "13.0"
    extra: dict[str, str] = field(default_factory=dict)

    def query(self) -> str:
        return "".join(
            f"{g.index}, {g.name}, {g.uuid}, {g.total}, {g.used}, {g.free}, {self.driver}, {g.cap}\n"
            for g in self.gpus
        )

    def xml(self) -> str:
        """The real -q -x document with its <gpu> block repeated and edited per GPU."""
        text = real_xml()
        block = re.search(r"\t<gpu id=.*?\n\t</gpu>\n", text, re.S)
        assert block is not None
        blocks = []
        for g in self.gpus:
            b = block.group()
            b = b.replace(H200_UUID, g.uuid).replace("NVIDIA H200", g.name)
            b = re.sub(r"<minor_number>\d+<", f"<minor_number>{g.index}<", b)
            b = re.sub(r"<product_brand>[^<]*<", f"<product_brand>{g.brand}<", b)
            mig = "Enabled" if g.mig else "Disabled"
            b = re.sub(r"<current_mig>[^<]*<", f"<current_mig>{mig}<", b)
            fb = (
                f"<fb_memory_usage>\n\t\t\t<total>{g.total} MiB</total>\n\t\t\t"
                f"<reserved>{g.reserved} MiB</reserved>\n\t\t\t<used>{g.used} MiB</used>\n"
                f"\t\t\t<free>{g.free} MiB</free>\n\t\t</fb_memory_usage>"
            )
            b = re.sub(r"<fb_memory_usage>.*?</fb_memory_usage>", fb, b, flags=re.S)
            blocks.append(b)
        text = text[: block.start()] + "".join(blocks) + text[block.end() :]
        text = re.sub(r"<driver_version>[^<]*<", f"<driver_version>{self.driver}<", text)
        cuda = self.cuda or "N/A"
        text = re.sub(r"<cuda_version>[^<]*<", f"<cuda_version>{cuda}<", text)
        return re.sub(r"<attached_gpus>\d+<", f"<attached_gpus>{len(self.gpus)}<", text)

    def runner(self, calls: list[list[str]] | None = None) -> Callable[[list[str]], str]:
        """A stand-in for :func:`bundler.gpu.smi.run_smi` (records the arguments)."""

        def run(args: list[str]) -> str:
            if calls is not None:
                calls.append(args)
            return self.xml() if args == ["-q", "-x"] else self.query()

        return run

    def install(self, bin_dir: Path) -> Path:
        """A fake ``nvidia-smi`` program in ``bin_dir`` that prints this host, and only for
        the two command lines the installer uses (anything else exits 9)."""
        bin_dir.mkdir(parents=True, exist_ok=True)
        (bin_dir / "smi-query.txt").write_text(self.query())
        (bin_dir / "smi-q.xml").write_text(self.xml())
        prog = bin_dir / "nvidia-smi"
        prog.write_text(
            "#!/bin/sh\n"
            f'd="{bin_dir}"\n'
            'if [ "$*" = "-q -x" ]; then exec cat "$d/smi-q.xml"; fi\n'
            f'if [ "$*" = "--query-gpu={QUERY} --format=csv,noheader,nounits" ]; then\n'
            '  exec cat "$d/smi-query.txt"\nfi\n'
            'echo "fake nvidia-smi: unexpected arguments: $*" >&2\nexit 9\n'
        )
        prog.chmod(prog.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return prog


H200 = FakeHost((FakeGpu(0, "NVIDIA H200", 143771, 616, 0, "9.0"),))
TWO_A100_80 = FakeHost((FakeGpu(0), FakeGpu(1)), driver="570.124.06", cuda="12.8")
OLD_DRIVER = FakeHost((FakeGpu(0, "NVIDIA H200", 143771, 616, 0, "9.0"),), "535.104.05", "12.2")
BUSY = FakeHost((FakeGpu(0, "NVIDIA H200", 143771, 616, 90_000, "9.0"),))
MIG = FakeHost((FakeGpu(0, "NVIDIA H200", 143771, 616, 0, "9.0", mig=True),))
