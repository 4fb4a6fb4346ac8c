"""The tool bundle's wheelhouse: airgap's own wheel and every dependency, as wheels.

airgap's wheel is built from a source tree (a copy of it, so a stale in-tree ``build/``
can never leak into the wheel) with ``pip wheel``. Its dependencies come from the
package index with pip's own cross-platform options (``pip download --platform
--python-version --implementation cp --only-binary=:all:``), one run per platform and
Python, since one run picks one wheel per package. pip keeps its HTTP cache under the
airgap cache directory, so a second build downloads nothing again; ``--find-links`` and
``--no-index`` build from wheels already on disk, with no network at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bundler.errors import FetchError, SourceError, UsageError

OWN_WHEEL_RE = re.compile(r"^airgap_bundler-([^-]+)-py3-none-any\.whl$")
_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
# What a source tree needs for a wheel (pyproject's readme is README.md).
_SOURCE_FILES = ("pyproject.toml", "README.md", "setup.cfg", "setup.py", "MANIFEST.in", "LICENSE")
_NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


@dataclass(frozen=True)
class WheelhouseOptions:
    pythons: tuple[str, ...]
    platforms: tuple[str, ...]
    find_links: tuple[Path, ...] = ()
    no_index: bool = False
    pip_cache: Path | None = None  # pip's HTTP cache (None: pip's own default)
    extra: tuple[str, ...] = field(default=("pip",))  # also carried: pip runs install.sh's install

    def __post_init__(self) -> None:
        for py in self.pythons:
            if not _PYTHON_RE.match(py):
                raise UsageError(f"--python {py}: give a CPython version such as 3.12")
        if not self.pythons or not self.platforms:
            raise UsageError("a tool bundle needs at least one --python and one --platform")


def default_source() -> Path | None:
    """The source tree this airgap runs from, when it runs from a checkout."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "airgap-bundler"' in pyproject.read_text():
        return root
    return None


def _pip(args: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("pip") is None:
        raise UsageError(
            f"{what} needs pip in the Python that runs airgap ({sys.executable})",
            hint=f"{sys.executable} -m ensurepip, or install airgap into a venv with pip.",
        )
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _pip_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or [f"exit {r.returncode}"])[0][:400]


def build_own_wheel(source: Path, out_dir: Path, work: Path) -> Path:
    """airgap's wheel from ``source`` (a source tree, or a ready ``.whl``) in ``out_dir``.

    Raises:
        SourceError: not an airgap source tree or wheel, or the build failed.
    """
    if source.is_file():
        if not OWN_WHEEL_RE.match(source.name):
            raise SourceError(
                "not an airgap wheel (airgap_bundler-<version>-py3-none-any.whl)",
                path=str(source),
            )
        target = out_dir / source.name
        shutil.copyfile(source, target)
        return target
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file() or 'name = "airgap-bundler"' not in pyproject.read_text():
        raise SourceError(
            "not an airgap source tree (no pyproject.toml naming airgap-bundler)",
            path=str(source),
            hint="Pass --source with airgap's checkout, or a built airgap wheel.",
        )
    copy = work / "source"
    copy.mkdir()
    for name in _SOURCE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, copy / name)
    shutil.copytree(source / "bundler", copy / "bundler", ignore=_NOT_SOURCE)
    built = work / "built"
    args = ["wheel", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "-q"]
    args += ["-w", str(built)]
    # Without build isolation when setuptools is here: no download, so it works offline.
    if importlib.util.find_spec("setuptools") is not None:
        args.append("--no-build-isolation")
    r = _pip([*args, str(copy)], "building airgap's wheel")
    if r.returncode != 0:
        raise SourceError(
            f"building airgap's wheel failed: {_pip_error(r)}",
            path=str(source),
            hint="Run `pip wheel --no-deps .` in the source tree to see the whole error.",
        )
    (wheel,) = built.glob("airgap_bundler-*.whl")
    target = out_dir / wheel.name
    shutil.move(wheel, target)
    return target


def own_version(wheel: Path) -> str:
    m = OWN_WHEEL_RE.match(wheel.name)
    assert m is not None
    return m[1]


def download(own_wheel: Path, opts: WheelhouseOptions, out_dir: Path, work: Path) -> list[Path]:
    """Every dependency of ``own_wheel`` (and pip) for each Python and platform, in ``out_dir``.

    Returns the wheels in ``out_dir``, airgap's own among them, sorted by name.

    Raises:
        FetchError: pip could not find a wheel for one of the Pythons or platforms.
        SourceError: two runs brought different files under the same name.
    """
    for platform in opts.platforms:
        for py in opts.pythons:
            dest = work / f"cp{py.replace('.', '')}-{platform}"
            args = [
                "download",
                "--dest",
                str(dest),
                "--only-binary=:all:",
                "--platform",
                platform,
                "--python-version",
                py,
                "--implementation",
                "cp",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ]
            if opts.pip_cache is not None:
                args += ["--cache-dir", str(opts.pip_cache)]
            if opts.no_index:
                args.append("--no-index")
            for link in opts.find_links:
                args += ["--find-links", str(link)]
            r = _pip([*args, str(own_wheel), *opts.extra], "downloading the wheelhouse")
            if r.returncode != 0:
                raise FetchError(
                    f"no complete set of wheels for CPython {py} on {platform}: {_pip_error(r)}",
                    hint="Check the index is reachable (or --find-links holds every wheel); "
                    "a dependency without a wheel for that platform and Python cannot be "
                    "carried: drop that --python or --platform.",
                )
            _merge(dest, out_dir)
    return sorted(out_dir.glob("*.whl"))


def _merge(src: Path, out_dir: Path) -> None:
    for wheel in sorted(src.glob("*.whl")):
        target = out_dir / wheel.name
        if not target.exists():
            shutil.move(wheel, target)
        elif _sha256(target) != _sha256(wheel):
            raise SourceError(
                "two downloads of the same wheel differ",
                path=wheel.name,
                hint="The index served different bytes under one name; build again.",
            )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
