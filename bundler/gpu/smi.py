"""The host's GPUs, from ``nvidia-smi``: a bounded subprocess and two strict parsers.

* ``--query-gpu=index,name,uuid,memory.total,memory.used,memory.free,driver_version,
  compute_cap --format=csv,noheader,nounits``: one line per GPU;
* ``-q -x``: the CUDA version the driver supports, each GPU's MIG mode, brand and the
  memory the driver reserves (what CUDA's own ``total`` leaves out). Real output starts
  with ``<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_vNN.dtd">``; the DTD is never
  fetched, and a document that declares entities or an internal subset is refused (no
  entity expansion), as are documents over :data:`MAX_OUTPUT` or nested too deep.

Device selection follows Docker's ``--gpus``: ``all``, or indices / ``GPU-`` UUIDs as
``nvidia-smi`` lists them (``CUDA_VISIBLE_DEVICES`` is read by the CLI into the same list).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Protocol
from xml.parsers import expat

from bundler.errors import InstallError

SMI = "nvidia-smi"
QUERY = "index,name,uuid,memory.total,memory.used,memory.free,driver_version,compute_cap"
TIMEOUT = 20.0  # seconds; a wedged driver makes nvidia-smi hang
MAX_OUTPUT = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_ELEMENTS = 500_000
MIB = 1024 * 1024

MISSING_HINT = (
    "Install the NVIDIA driver (it brings nvidia-smi) and put it on PATH, or pass --no-gpu "
    "for a CPU image."
)


class Runner(Protocol):
    def __call__(self, args: list[str]) -> str: ...


def run_smi(args: list[str], *, timeout: float = TIMEOUT) -> str:
    """``nvidia-smi ARGS``'s standard output (at most :data:`MAX_OUTPUT` bytes).

    Raises:
        InstallError: nvidia-smi is missing, hangs, fails or prints too much.
    """
    exe = shutil.which(SMI)
    if exe is None:
        raise InstallError(f"{SMI} is not on PATH: cannot see this host's GPUs", hint=MISSING_HINT)
    try:
        r = subprocess.run(
            [exe, *args],
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise InstallError(
            f"{exe} {' '.join(args)} did not answer within {timeout:g} s",
            hint="The driver may be wedged: check `nvidia-smi` and the kernel log, then retry.",
        ) from e
    except OSError as e:
        raise InstallError(f"{exe}: cannot run: {e}", hint=MISSING_HINT) from e
    if r.returncode != 0:
        said = (r.stdout + r.stderr).decode("utf-8", "replace").strip().splitlines()
        raise InstallError(
            f"{exe} failed (exit {r.returncode}): {said[0][:200] if said else 'no output'}",
            hint="Fix the driver until `nvidia-smi` works, or pass --no-gpu for a CPU image.",
        )
    if len(r.stdout) > MAX_OUTPUT:
        raise InstallError(f"{exe} printed more than {MAX_OUTPUT} bytes")
    return r.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    total_mib: int
    used_mib: int
    free_mib: int
    driver: str
    compute_cap: str | None
    reserved_mib: int = 0  # from -q -x; CUDA's total is nvidia-smi's total less this
    mig: bool = False
    brand: str | None = None

    @property
    def total(self) -> int:
        """Bytes CUDA (and so vLLM) counts as the GPU's total memory."""
        return (self.total_mib - self.reserved_mib) * MIB

    @property
    def free(self) -> int:
        return self.free_mib * MIB

    def __str__(self) -> str:
        return f"GPU {self.index} ({self.name})"


@dataclass(frozen=True)
class HostGpus:
    driver: str
    cuda: str | None  # the CUDA version the driver supports (-q -x)
    gpus: tuple[Gpu, ...]
    problems: tuple[str, ...] = field(default=())  # what -q -x could not tell


def _num(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise InstallError(f"{SMI} --query-gpu: {what} is {value!r}, not a number") from e


def parse_query(text: str) -> list[Gpu]:
    """Rows of ``--query-gpu={QUERY} --format=csv,noheader,nounits``.

    Raises:
        InstallError: a row without the eight fields, or memory that is not a number.
    """
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != 8:
            raise InstallError(f"{SMI} --query-gpu: expected 8 fields, got {len(row)}: {row!r}")
        index, name, uuid, total, used, free, driver, cap = (c.strip() for c in row)
        gpus.append(
            Gpu(
                index=_num(index, "index"),
                name=name,
                uuid=uuid,
                total_mib=_num(total, f"GPU {index} memory.total"),
                used_mib=_num(used, f"GPU {index} memory.used"),
                free_mib=_num(free, f"GPU {index} memory.free"),
                driver=driver,
                compute_cap=None if "N/A" in cap or not cap else cap,
            )
        )
    if not gpus:
        raise InstallError(f"{SMI} lists no GPU", hint=MISSING_HINT)
    return gpus


@dataclass
class XmlFacts:
    driver: str | None = None
    cuda: str | None = None
    gpus: dict[str, dict[str, str]] = field(default_factory=dict)  # uuid -> field -> text


# The leaves read from -q -x, by their path under <gpu>.
_GPU_LEAVES = {
    ("uuid",): "uuid",
    ("product_brand",): "brand",
    ("mig_mode", "current_mig"): "mig",
    ("fb_memory_usage", "reserved"): "reserved",
}


def parse_xml(text: str) -> XmlFacts:
    """The few fields of ``nvidia-smi -q -x`` the checks need.

    Raises:
        InstallError: not well-formed, too big or deep, or declaring entities.
    """
    data = text.encode("utf-8")
    if len(data) > MAX_OUTPUT:
        raise InstallError(f"{SMI} -q -x: more than {MAX_OUTPUT} bytes")
    out = XmlFacts()
    path: list[str] = []
    buf: list[str] = []
    gpu: dict[str, str] = {}
    count = 0
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*_: object) -> None:
        raise InstallError(f"{SMI} -q -x: declares entities or an internal DTD; refused")

    def refuse_ref(*_: object) -> int:
        refuse()
        return 0

    def doctype(_name: str, _sys: str | None, _pub: str | None, internal: int) -> None:
        if internal:
            refuse()

    def start(name: str, _attrs: dict[str, str]) -> None:
        nonlocal gpu, count
        count += 1
        if len(path) >= MAX_DEPTH or count > MAX_ELEMENTS:
            raise InstallError(f"{SMI} -q -x: nested too deep or too many elements")
        path.append(name)
        buf.clear()
        if path == ["nvidia_smi_log", "gpu"]:
            gpu = {}

    def end(name: str) -> None:
        nonlocal gpu
        value = "".join(buf).strip()
        buf.clear()
        if path[:1] == ["nvidia_smi_log"] and len(path) == 2:
            if name == "driver_version":
                out.driver = value
            elif name == "cuda_version":
                out.cuda = value
            elif name == "gpu" and "uuid" in gpu:
                out.gpus[gpu["uuid"]] = gpu
        elif path[:2] == ["nvidia_smi_log", "gpu"]:
            key = _GPU_LEAVES.get(tuple(path[2:]))
            if key:
                gpu[key] = value
        path.pop()

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse_ref
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = buf.append
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise InstallError(f"{SMI} -q -x: not well-formed XML: {e}") from e
    return out


def _mib(text: str | None) -> int:
    if text and text.endswith(" MiB") and text[:-4].strip().isdigit():
        return int(text[:-4])
    return 0


def read_host(runner: Runner | None = None) -> HostGpus:
    """The GPUs, driver and CUDA version, from two nvidia-smi calls.

    Raises:
        InstallError: nvidia-smi is missing or fails, or its output cannot be read.
    """
    call: Runner = runner or (lambda args: run_smi(args))
    gpus = parse_query(call([f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]))
    problems: list[str] = []
    try:
        xml = parse_xml(call(["-q", "-x"]))
    except InstallError as e:
        xml, problems = XmlFacts(), [f"-q -x: {e.message}"]
    merged = []
    for g in gpus:
        extra = xml.gpus.get(g.uuid, {})
        merged.append(
            dataclasses.replace(
                g,
                reserved_mib=_mib(extra.get("reserved")),
                mig=extra.get("mig", "").lower() == "enabled",
                brand=extra.get("brand") or None,
            )
        )
    return HostGpus(
        driver=xml.driver or gpus[0].driver,
        cuda=xml.cuda if xml.cuda and xml.cuda != "N/A" else None,
        gpus=tuple(merged),
        problems=tuple(problems),
    )


def select(gpus: tuple[Gpu, ...], spec: str) -> tuple[Gpu, ...]:
    """The GPUs ``--gpus`` names: ``all``, or indices and ``GPU-`` UUIDs (unique prefixes).

    Raises:
        InstallError: an index or UUID this host does not have, or one named twice.
    """
    spec = spec.strip()
    if spec in ("all", ""):
        return gpus
    chosen: list[Gpu] = []
    for item in (s.strip() for s in spec.split(",")):
        if item.isdigit():
            found = [g for g in gpus if g.index == int(item)]
        else:
            found = [g for g in gpus if g.uuid.startswith(item) and item.startswith("GPU-")]
        if len(found) != 1:
            listed = ", ".join(f"{g.index} ({g.uuid})" for g in gpus)
            raise InstallError(
                f"--gpus/CUDA_VISIBLE_DEVICES names {item!r}, which is not one GPU of this "
                f"host (it has {listed})",
                hint="Name GPUs by the index or UUID `nvidia-smi -L` shows.",
            )
        if found[0] in chosen:
            raise InstallError(f"--gpus/CUDA_VISIBLE_DEVICES names GPU {item!r} twice")
        chosen.append(found[0])
    return tuple(chosen)
