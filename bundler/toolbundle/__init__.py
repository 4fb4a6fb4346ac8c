"""The tool bundle: airgap itself, carried across the gap as a signed bundle.

A tool bundle is an ordinary bundle (same format, same reader, same stock-tool check)
whose signed manifest says ``kind: Tool`` and whose payload lives under ``tool/``:
``tool/install.sh`` (POSIX sh: checks the bundle with ``openssl`` and ``sha256sum``,
then installs the wheels into a virtualenv), ``tool/README.txt`` and ``tool/wheels/``
(airgap's wheel and every dependency, per platform and Python). The bundle's name is
``airgap-tool`` and its integer version is derived from airgap's release version, so
the index's ordinary rules (names, versions, expiry) hold unchanged.

Connected side: :mod:`bundler.toolbundle.build`. Air-gapped side:
:mod:`bundler.toolbundle.update` (``airgap self-update``).
"""

from __future__ import annotations

import re

from bundler.bundle.index import Index
from bundler.errors import UsageError

KIND = "Tool"
NAME = "airgap-tool"
ROOT = "tool/"
INSTALL_SH = "tool/install.sh"
README = "tool/README.txt"
WHEELS = "tool/wheels/"
DEFAULT_PYTHONS = ("3.11", "3.12", "3.13")
DEFAULT_PLATFORMS = ("manylinux2014_x86_64",)
# A tool bundle carried inside a release bundle (``airgap build --with-tool``).
EMBEDDED_RE = re.compile(r"^tool/airgap-tool-(\d{1,3}\.\d{1,3}\.\d{1,3})\.tar$")
_RELEASE_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?$")


def version_tuple(version: str) -> tuple[int, int, int]:
    """``0.1.0`` -> ``(0, 1, 0)``; only release versions name a tool bundle.

    Raises:
        UsageError: not ``X.Y`` or ``X.Y.Z`` with parts below 1000.
    """
    m = _RELEASE_RE.match(version)
    if not m:
        raise UsageError(
            f"airgap version {version!r} cannot name a tool bundle: release versions "
            "(X.Y.Z, each part below 1000) only",
            hint="Build the tool bundle from a released source tree.",
        )
    return int(m[1]), int(m[2]), int(m[3] or 0)


def version_number(version: str) -> int:
    """The bundle's integer version: X.Y.Z -> X*10^6 + Y*10^3 + Z (at least 1)."""
    major, minor, patch = version_tuple(version)
    return max(1, major * 1_000_000 + minor * 1_000 + patch)


def is_tool_bundle(index: Index) -> bool:
    """Whether the signed index is a tool bundle's (its manifest's ``kind``)."""
    return index.manifest.get("kind") == KIND


def tool_version(index: Index) -> str:
    """The airgap release a tool bundle carries (its signed manifest's ``airgap``)."""
    return str(index.manifest.get("airgap", ""))


def arch_of(platform: str) -> str:
    """``manylinux2014_x86_64`` -> ``x86_64`` (what ``uname -m`` prints on such a host)."""
    for arch in ("x86_64", "aarch64", "ppc64le", "s390x", "armv7l", "i686"):
        if platform.endswith("_" + arch):
            return arch
    raise UsageError(
        f"--platform {platform}: not a Linux wheel platform such as manylinux2014_x86_64",
        hint="Use a manylinux tag: manylinux2014_x86_64, manylinux2014_aarch64, "
        "manylinux_2_28_x86_64.",
    )
