"""The image's CUDA requirement against the host's driver, as the NVIDIA Container Toolkit
judges it when the container starts.

``NVIDIA_REQUIRE_CUDA`` is a logical expression: constraints separated by spaces are
ORed, those joined by commas are ANDed, each is ``PROPERTY OP VALUE`` with OP one of
``= != < <= > >=`` and PROPERTY one of ``cuda`` (the CUDA version the driver supports),
``driver``, ``arch`` (compute capability) and ``brand``; unknown properties are skipped.
CUDA's own images use it for forward compatibility, e.g. ``cuda>=12.8
brand=tesla,driver>=535,driver<536``: either a driver that supports 12.8, or a 535
datacenter driver (with the image's compat libraries). An image with ``CUDA_VERSION``
and no ``NVIDIA_REQUIRE_CUDA`` requires ``cuda>=<major.minor>``; a true
``NVIDIA_DISABLE_REQUIRE`` turns the check off (the toolkit's ``cuda_image.go``).

:data:`MIN_DRIVER` is NVIDIA's table of the minimum Linux x86_64 driver for each CUDA
toolkit release (CUDA Toolkit Release Notes, "CUDA Toolkit and Corresponding Driver
Versions", GA releases), used to name the driver a refusal needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bundler.facts import ImageCuda

# CUDA major.minor -> the minimum Linux x86_64 driver of its GA release.
MIN_DRIVER: dict[str, str] = {
    "13.1": "590.44.01",
    "13.0": "580.65.06",
    "12.9": "575.51.03",
    "12.8": "570.26",
    "12.6": "560.28.03",
    "12.5": "555.42.02",
    "12.4": "550.54.14",
    "12.3": "545.23.06",
    "12.2": "535.54.03",
    "12.1": "530.30.02",
    "12.0": "525.60.13",
    "11.8": "520.61.05",
    "11.7": "515.43.04",
    "11.6": "510.39.01",
    "11.5": "495.29.05",
    "11.4": "470.42.01",
    "11.3": "465.19.01",
    "11.2": "460.27.03",
    "11.1": "455.23",
    "11.0": "450.36.06",
    "10.2": "440.33",
    "10.1": "418.39",
    "10.0": "410.48",
}

_OPS = ("!=", "<=", ">=", "=", "<", ">")  # longest first, as the toolkit tries them
_VERSION = re.compile(r"^v?[0-9]+(\.[0-9]+){0,3}$")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go's strconv.ParseBool


class RequirementError(ValueError):
    """An ``NVIDIA_REQUIRE_CUDA`` the toolkit itself would refuse to parse."""


def version_key(v: str) -> tuple[int, ...]:
    """``"580.159.04"`` -> ``(580, 159, 4)``: versions compare by their numbers."""
    if not _VERSION.match(v):
        raise RequirementError(f"{v!r} is not a version")
    return tuple(int(p) for p in v.removeprefix("v").split("."))


def _compare(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


@dataclass(frozen=True)
class Constraint:
    prop: str  # cuda, driver, arch, brand
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.prop}{self.op}{self.value}"

    def holds(self, host: HostProps) -> bool:
        have = {"cuda": host.cuda, "driver": host.driver, "arch": host.arch, "brand": host.brand}
        mine = have[self.prop]
        if mine is None:
            return False
        if self.prop == "brand":
            c = (mine > self.value) - (mine < self.value)
        else:
            c = _compare(version_key(mine), version_key(self.value))
        return {
            "=": c == 0,
            "!=": c != 0,
            "<": c < 0,
            "<=": c <= 0,
            ">": c > 0,
            ">=": c >= 0,
        }[self.op]


@dataclass(frozen=True)
class HostProps:
    """What the toolkit compares with: the driver's CUDA version, the driver, the GPU."""

    cuda: str | None
    driver: str | None
    arch: str | None = None  # compute capability, "9.0"
    brand: str | None = None  # lower case without spaces: nvidia, tesla, nvidiartx, ...


def brand_name(product_brand: str | None) -> str | None:
    """nvidia-smi's ``product_brand`` ("NVIDIA RTX") as the toolkit names brands."""
    return product_brand.replace(" ", "").lower() if product_brand else None


Requirement = tuple[tuple[Constraint, ...], ...]  # OR of ANDs


def parse_requirement(text: str) -> Requirement:
    """Terms (ORed) of constraints (ANDed); unknown properties are dropped as the toolkit does.

    Raises:
        RequirementError: a constraint without an operator, or a version that is not one.
    """
    terms = []
    for term in text.split(" "):
        factors = []
        for factor in term.split(","):
            if not factor.strip():
                continue
            end = next((i for i, ch in enumerate(factor) if ch in "<>=!"), -1)
            if end < 0:
                raise RequirementError(f"invalid constraint: {factor!r}")
            prop, rest = factor[:end], factor[end:]
            if prop not in ("cuda", "driver", "arch", "brand"):
                continue
            op = next((o for o in _OPS if rest.startswith(o)), "")
            if not op:
                raise RequirementError(f"invalid operator in {factor!r}")
            value = rest[len(op) :]
            if prop != "brand":
                version_key(value)
            factors.append(Constraint(prop, op, value))
        if factors:
            terms.append(tuple(factors))
    return tuple(terms)


def requirement_of(image: ImageCuda) -> str | None:
    """The requirement the toolkit checks for this image, or None when it checks none."""
    if image.disable_require in _TRUE:
        return None
    if image.require:
        return image.require
    if image.version:
        parts = image.version.removeprefix("v").split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]):
            return f"cuda>={parts[0]}.{parts[1]}"
    return None


def satisfied(req: Requirement, host: HostProps) -> bool:
    return not req or any(all(c.holds(host) for c in term) for term in req)


def min_cuda(req: Requirement) -> str | None:
    """The lowest ``cuda>=X`` the requirement names (what a current driver must support)."""
    found = [c.value for term in req for c in term if c.prop == "cuda" and c.op in (">=", ">")]
    return min(found, key=version_key) if found else None


def driver_for(cuda: str) -> str | None:
    """The minimum driver for CUDA ``major.minor`` (None when the table does not know it)."""
    key = ".".join(cuda.removeprefix("v").split(".")[:2])
    return MIN_DRIVER.get(key)


def cuda_of_driver(driver: str) -> str | None:
    """The newest CUDA the table says ``driver`` supports (when nvidia-smi does not say)."""
    have = version_key(driver)
    ok = [c for c, d in MIN_DRIVER.items() if _compare(version_key(d), have) <= 0]
    return max(ok, key=version_key) if ok else None


@dataclass(frozen=True)
class DriverVerdict:
    ok: bool | None  # None: nothing to check
    detail: str
    needed_driver: str | None = None


def judge(image: ImageCuda | None, host: HostProps, role: str = "vllm") -> DriverVerdict:
    """Whether the toolkit will start image ``role`` on a GPU with ``host``'s properties."""
    driver = f"driver {host.driver}" + (f" (CUDA {host.cuda})" if host.cuda else "")
    if image is None:
        return DriverVerdict(None, f"{driver}; image {role} states no CUDA requirement")
    text = requirement_of(image)
    if text is None:
        return DriverVerdict(None, f"{driver}; image {role} disables the requirement check")
    try:
        req = parse_requirement(text)
    except RequirementError as e:
        return DriverVerdict(False, f"image {role}: NVIDIA_REQUIRE_CUDA {text!r}: {e}")
    shown = text if len(text) <= 60 else text.split(" ")[0] + " …"
    if satisfied(req, host):
        return DriverVerdict(True, f"{driver} meets image {role}'s {shown}")
    cuda = min_cuda(req)
    needed = driver_for(cuda) if cuda else None
    if cuda and needed:
        want = f"CUDA {cuda} needs driver >= {needed}"
    elif cuda:
        want = f"CUDA {cuda} needs a driver newer than this airgap's table knows"
    else:
        want = "no alternative in the requirement matches this host"
    return DriverVerdict(False, f"{driver} is too old for image {role} ({shown}): {want}", needed)
