"""The GPU rows of the install preflight: before any payload byte is read, decide from the
signed index and the host whether vLLM can start here.

Rows, in order (a failed row refuses the install; ``None`` is a warning):

* ``gpu runtime``: the engine can give a container GPUs — Docker's ``nvidia`` runtime,
  or ``nvidia-container-runtime-hook`` (what Docker's ``--gpus`` calls), or a CDI spec
  for ``nvidia.com/gpu`` in ``/etc/cdi`` / ``/var/run/cdi`` (Podman; Docker when it
  reports CDI spec dirs). Files are looked for on this host: run install where the
  engine runs.
* ``gpus``: ``nvidia-smi`` answers, and ``--gpus`` (or ``CUDA_VISIBLE_DEVICES``) names
  GPUs it lists; ``mig``: a warning when MIG is on (the query reports the whole GPU).
* ``driver``: the vLLM image's signed CUDA requirement holds for this driver
  (:mod:`bundler.gpu.cuda`); ``--skip-driver-check`` makes a refusal a warning.
* ``tensor parallel``: TP x PP GPUs chosen, and TP divides the heads as vLLM requires.
* ``gpu memory``: each chosen GPU has ``total x gpu_memory_utilization`` free, or vLLM
  refuses to start; ``fit``: weights + overhead + one full-length sequence's KV cache
  fit in that budget (:mod:`bundler.gpu.fit`). ``--skip-fit-check`` makes both warnings.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bundler.bundle.index import PREVIOUS_FORMAT, Index
from bundler.errors import AirgapError, InstallError
from bundler.facts import ImageCuda, ModelFacts
from bundler.gpu import cuda, fit
from bundler.gpu.smi import Gpu, HostGpus, Runner, read_host, select
from bundler.install.options import Check, InstallOptions
from bundler.manifest import Serve, parse_manifest

if TYPE_CHECKING:  # only the type: scripts/device-gpu-check runs this where docker-py is not
    from bundler.oci.engine import RuntimeInfo

CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
HOOK = "nvidia-container-runtime-hook"
MAX_CDI_SPEC = 4 * 1024 * 1024
_CDI_KIND = re.compile(r"""^\s*"?kind"?\s*:\s*"?nvidia\.com/gpu"?\s*,?\s*$""", re.MULTILINE)

RUNTIME_HINT = (
    "Install the NVIDIA Container Toolkit and configure the engine (`nvidia-ctk runtime "
    "configure --runtime=docker`, or `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` "
    "for CDI/Podman), or pass --no-gpu for a CPU image."
)


def cdi_specs(dirs: tuple[str, ...]) -> list[str]:
    """CDI spec files that declare ``kind: nvidia.com/gpu``."""
    found = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            p = Path(d) / name
            if not name.endswith((".yaml", ".yml", ".json")) or not p.is_file():
                continue
            try:
                if p.stat().st_size <= MAX_CDI_SPEC and _CDI_KIND.search(p.read_text("utf-8")):
                    found.append(str(p))
            except (OSError, UnicodeDecodeError):
                continue
    return found


def runtime_row(info: RuntimeInfo, cdi_dirs: tuple[str, ...] = CDI_DIRS) -> Check:
    """Can the engine give a container GPUs?"""
    ways = []
    if "nvidia" in info.runtimes:
        ways.append("nvidia runtime")
    if info.kind == "docker":
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"])
        if hook := shutil.which(HOOK, path=path):
            ways.append(f"{hook} (Docker --gpus)")
    if info.kind == "podman" or info.cdi_dirs:
        specs = cdi_specs(tuple(dict.fromkeys((*info.cdi_dirs, *cdi_dirs))))
        if specs:
            ways.append("CDI nvidia.com/gpu in " + ", ".join(specs))
    if ways:
        return Check("gpu runtime", True, f"{info.kind}: " + "; ".join(ways))
    where = ", ".join(dict.fromkeys((*info.cdi_dirs, *cdi_dirs)))
    return Check(
        "gpu runtime",
        False,
        f"{info.kind} cannot give containers GPUs: no nvidia runtime, no {HOOK}, "
        f"no CDI spec for nvidia.com/gpu in {where}",
    )


@dataclass(frozen=True)
class Subject:
    """What the GPU rows judge: the signed facts, serve settings and image requirement."""

    label: str  # "<name> v<version>"
    serve: Serve
    facts: ModelFacts | str  # a string: why there are none
    image: ImageCuda | None  # the vLLM image's CUDA requirement
    image_note: str = ""  # set when the requirement is not known (format 1)

    @classmethod
    def of(cls, index: Index) -> Subject:
        m = parse_manifest(index.manifest, source="signed manifest")
        vllm = next((i for i in index.images if i.role == "vllm"), None)
        if index.format == PREVIOUS_FORMAT:
            facts: ModelFacts | str = (
                f"not checked: {PREVIOUS_FORMAT} carries no model facts (rebuild to get them)"
            )
            note = f"not checked: {PREVIOUS_FORMAT} does not record the image's CUDA requirement"
        else:
            facts = index.model_facts or "not checked: the bundle carries no model"
            note = ""
        return cls(
            f"{index.name} v{index.version}", m.serve, facts, vllm.cuda if vllm else None, note
        )


def _host_props(host: HostGpus, g: Gpu) -> cuda.HostProps:
    return cuda.HostProps(
        cuda=host.cuda or cuda.cuda_of_driver(host.driver),
        driver=host.driver,
        arch=g.compute_cap,
        brand=cuda.brand_name(g.brand),
    )


def driver_row(s: Subject, host: HostGpus, chosen: tuple[Gpu, ...], skip: bool) -> Check:
    if s.image_note:
        return Check("driver", None, f"driver {host.driver}; {s.image_note}")
    verdicts = [cuda.judge(s.image, _host_props(host, g)) for g in chosen]
    worst = next((v for v in verdicts if v.ok is False), verdicts[0])
    if worst.ok is False and skip:
        return Check("driver", None, worst.detail + " (--skip-driver-check)")
    return Check("driver", worst.ok, worst.detail)


def fit_rows(
    s: Subject, opts: InstallOptions, chosen: tuple[Gpu, ...], errors: dict[str, AirgapError]
) -> Iterator[Check]:
    """``tensor parallel``, ``gpu memory`` and ``fit``."""
    assert opts.serve is not None
    shape = fit.shape_of(s.serve, opts.serve.extra_vllm_args)
    facts = s.facts
    skip = " (--skip-fit-check)" if opts.skip_fit_check else ""
    problem = fit.parallel_problem(facts, shape) if isinstance(facts, ModelFacts) else ""
    if shape.gpus > len(chosen):
        problem = (
            f"tensor_parallel_size {shape.tp} x pipeline_parallel_size {shape.pp} needs "
            f"{shape.gpus} GPUs; {len(chosen)} chosen"
        )
    if problem:
        errors["tensor parallel"] = InstallError(
            problem,
            hint="Give more GPUs (--gpus), or build the bundle with a tensor_parallel_size "
            "that divides the model's attention heads and fits the GPUs here.",
        )
    yield Check("tensor parallel", not problem, problem or f"{shape.tp} x {shape.pp} GPUs")
    used = chosen[: shape.gpus]
    short = [g for g in used if g.free < g.total * shape.util]
    detail = ", ".join(
        f"{g}: {fit.gib(g.free)} free of {fit.gib(g.total)}, "
        f"vLLM asks {fit.gib(g.total * shape.util)} (total x {shape.util:g})"
        for g in (short or used[:1])
    )
    if short and not skip:
        errors["gpu memory"] = InstallError(
            "not enough free GPU memory: " + detail,
            hint="Stop what uses those GPUs (`nvidia-smi` lists the processes), choose others "
            "with --gpus, or lower --vllm-arg --gpu-memory-utilization=<fraction>.",
        )
    ok = None if short and skip else not short
    yield Check("gpu memory", ok, detail + (skip if short else ""))
    if isinstance(facts, str):
        yield Check("fit", None, facts)
        return
    result = fit.estimate(facts, shape, min(g.total for g in used))
    if isinstance(result, str):
        yield Check("fit", None, f"cannot estimate: {result}")
        return
    line = fit.describe(result)
    if result.fits is False:
        line = f"does not fit: {line}"
        if not skip:
            errors["fit"] = InstallError(
                f"{s.label} on {len(used)} x {used[0].name}: {line}",
                hint="Ways out: " + fit.ways_out(result, len(chosen)) + "; or --skip-fit-check "
                "to try anyway (vLLM then decides, after loading the weights).",
            )
        yield Check("fit", None if skip else False, line + skip)
        return
    yield Check("fit", result.fits, line)


def gpu_preflight(
    subject: Index | Subject,
    opts: InstallOptions,
    info: RuntimeInfo | None,
    errors: dict[str, AirgapError],
    runner: Runner | None = None,
    cdi_dirs: tuple[str, ...] = CDI_DIRS,
) -> list[Check]:
    """The GPU rows for a run that serves on an engine with GPUs (see the module doc);
    ``info`` None: no engine to ask (the device check script).

    Failed rows put the error to raise into ``errors`` under the row's name.
    """
    assert opts.serve is not None
    s = subject if isinstance(subject, Subject) else Subject.of(subject)
    rows = []
    if info is not None:
        rows.append(runtime_row(info, cdi_dirs))
        if rows[0].ok is False:
            errors["gpu runtime"] = InstallError(rows[0].detail, hint=RUNTIME_HINT)
    try:
        host = read_host(runner)
        chosen = select(host.gpus, opts.serve.gpus)
    except InstallError as e:
        errors["gpus"] = e
        return [*rows, Check("gpus", False, e.message)]
    names = sorted({g.name for g in chosen})
    rows.append(
        Check(
            "gpus",
            True,
            f"{len(chosen)} x {', '.join(names)} (GPU {','.join(str(g.index) for g in chosen)}), "
            f"driver {host.driver}" + (f", CUDA {host.cuda}" if host.cuda else ""),
        )
    )
    if mig := [str(g.index) for g in chosen if g.mig]:
        rows.append(
            Check(
                "mig",
                None,
                f"MIG mode is on for GPU {','.join(mig)}: nvidia-smi reports the whole GPU, "
                "a MIG instance has less memory than the fit below assumes",
            )
        )
    rows.append(driver_row(s, host, chosen, opts.skip_driver_check))
    if rows[-1].ok is False:
        errors["driver"] = InstallError(
            rows[-1].detail,
            hint=(
                f"Install NVIDIA driver >= {needed} (NVIDIA's CUDA/driver table)"
                if (needed := _needed(s, host, chosen))
                else "Install a newer NVIDIA driver"
            )
            + ", or --skip-driver-check if the image carries CUDA forward-compatibility "
            "libraries for this driver.",
        )
    rows.extend(fit_rows(s, opts, chosen, errors))
    return rows


def _needed(s: Subject, host: HostGpus, chosen: tuple[Gpu, ...]) -> str | None:
    for g in chosen:
        v = cuda.judge(s.image, _host_props(host, g))
        if v.needed_driver:
            return v.needed_driver
    return None
