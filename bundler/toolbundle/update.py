"""``airgap self-update``: a newer airgap from a tool bundle, beside the running one.

The layout ``tool/install.sh`` makes under its prefix::

    PREFIX/versions/X.Y.Z/    one virtualenv per version (``.airgap-tool`` marks it complete)
    PREFIX/current            -> versions/X.Y.Z  (switched with one rename)
    PREFIX/previous           -> the version current named before the last switch
    PREFIX/bin/airgap         -> ../current/bin/airgap

Self-update verifies the tool bundle with airgap's own reader (trusted signatures and
their threshold, expiry, every byte) while extracting it into a private directory under
the prefix, refuses an older version unless asked, and then runs that bundle's own
``install.sh``, which checks the copy again with openssl and sha256sum, installs into
``versions/`` beside the running version and switches ``current``. Releases that the
old version installed stay as they are: receipts and bundles follow the compatibility
rule, so the new version reads them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bundler.bundle.extract import StagingExtractor
from bundler.bundle.parts import locate_bundle
from bundler.bundle.policy import TrustPolicy, VerifyResult
from bundler.bundle.reader import read_bundle
from bundler.bundle.signing import TrustedKey
from bundler.errors import (
    AirgapError,
    BundleError,
    InstallError,
    RollbackError,
    UsageError,
    VerificationError,
)
from bundler.toolbundle import INSTALL_SH, is_tool_bundle, tool_version, version_tuple

MARKER = ".airgap-tool"


@dataclass(frozen=True)
class ToolLayout:
    prefix: Path

    @property
    def versions(self) -> Path:
        return self.prefix / "versions"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def previous(self) -> Path:
        return self.prefix / "previous"

    @classmethod
    def running(cls) -> ToolLayout | None:
        """The layout this airgap runs from, when ``install.sh`` installed it."""
        venv = Path(sys.prefix).resolve()
        if venv.parent.name == "versions" and (venv / MARKER).is_file():
            return cls(venv.parent.parent)
        return None

    def version(self, link: Path) -> str | None:
        """The version ``current`` or ``previous`` names (None: no such link)."""
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        head, _, version = target.partition("/")
        if head != "versions" or not version or "/" in version:
            raise VerificationError(
                f"{link} -> {target}: not a version this tool installed",
                hint=f"Point it at versions/<X.Y.Z> by hand, or reinstall with install.sh "
                f"--prefix {self.prefix}.",
            )
        return version

    def installed(self, version: str) -> bool:
        return (self.versions / version / MARKER).is_file()

    def python_of(self, version: str | None) -> str | None:
        """The system Python ``install.sh`` built that version's virtualenv with."""
        marker = self.versions / str(version) / MARKER
        if version is None or not marker.is_file():
            return None
        for line in marker.read_text().splitlines():
            if line.startswith("python="):
                return line.removeprefix("python=") or None
        return None


@dataclass(frozen=True)
class UpdateResult:
    status: Literal["updated", "unchanged", "rolled back"]
    prefix: Path
    before: str | None
    after: str | None
    log: str = ""  # what install.sh printed

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "prefix": str(self.prefix),
            "before": self.before,
            "after": self.after,
        }


def resolve_layout(prefix: Path | None) -> ToolLayout:
    """``--prefix``, else the prefix this airgap was installed into.

    Raises:
        UsageError: no prefix given and this airgap was not installed by ``install.sh``.
    """
    if prefix is not None:
        return ToolLayout(Path(prefix).absolute())
    running = ToolLayout.running()
    if running is None:
        raise UsageError(
            f"this airgap ({sys.prefix}) was not installed from a tool bundle",
            hint="Pass --prefix with the directory install.sh installed into.",
        )
    return running


def self_update(
    bundle: str,
    trusted: dict[str, TrustedKey],
    key_files: Sequence[Path],
    *,
    threshold: int = 1,
    prefix: Path | None = None,
    python: str | None = None,
    allow_downgrade: bool = False,
) -> UpdateResult:
    """Verify ``bundle``, then install the airgap it carries beside the current one.

    Raises:
        TrustError, ExpiredError, BundleError: the tool bundle is not acceptable.
        UsageError: not a tool bundle, or no prefix.
        RollbackError: older than the current version (without ``allow_downgrade``).
        InstallError: ``install.sh`` failed; ``current`` was not switched.
    """
    layout = resolve_layout(prefix)
    before = layout.version(layout.current)
    if bundle == "-":
        raise UsageError("self-update needs the tool bundle file, not - (stdin)")
    layout.versions.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".update-", dir=layout.versions))
    try:

        def gate(result: VerifyResult) -> bool:
            index = result.index
            if not is_tool_bundle(index):
                raise UsageError(
                    f"{bundle} is a release bundle ({index.name} v{index.version}), not a tool "
                    "bundle",
                    hint="`airgap install` installs releases; self-update takes the file "
                    "`airgap tool-bundle` wrote.",
                )
            new = tool_version(index)
            older = before is not None and version_tuple(new) < version_tuple(before)
            if older and not allow_downgrade:
                raise RollbackError(
                    f"{bundle} carries airgap {new}, older than the current {before}",
                    hint="`airgap self-update --rollback` returns to the previous version; "
                    "pass --allow-downgrade to install an older one on purpose.",
                )
            return new == before and layout.installed(new)

        policy = TrustPolicy(trusted, threshold, before_payload=gate)
        staged = work / "bundle"
        try:
            result = read_bundle(
                locate_bundle(bundle), policy, StagingExtractor(staged, fsync=False)
            )
        except BundleError as e:
            if "needs airgap >=" not in e.message:
                raise
            # A format this version cannot read: its install.sh needs only openssl.
            raise BundleError(
                e.message,
                hint="Extract the tool bundle, check it with openssl and sha256sum (its "
                f"tool/README.txt), then run `sh tool/install.sh --prefix {layout.prefix} "
                "--trusted-key KEY.pub`: it installs beside this version the same way.",
            ) from e
        if result.ended_early:
            return UpdateResult("unchanged", layout.prefix, before, before)
        python = python or layout.python_of(before)
        log = _run_install_sh(staged, layout, key_files, threshold, python)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return UpdateResult("updated", layout.prefix, before, layout.version(layout.current), log)


def _run_install_sh(
    staged: Path,
    layout: ToolLayout,
    key_files: Sequence[Path],
    threshold: int,
    python: str | None,
) -> str:
    cmd = ["sh", str(staged / INSTALL_SH), "--prefix", str(layout.prefix)]
    for key in key_files:
        cmd += ["--trusted-key", str(Path(key).absolute())]
    cmd += ["--require-signatures", str(threshold)]
    # The Python the running version was installed with, unless told otherwise.
    base = python or getattr(sys, "_base_executable", None) or sys.executable
    cmd += ["--python", str(base)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=env, stdin=subprocess.DEVNULL
    )
    log = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        errors = [ln for ln in log.splitlines() if ": error: " in ln]
        message = (errors[-1].split(": error: ", 1)[1] if errors else log[-400:]) or "no output"
        hints = [ln.split(": hint: ", 1)[1] for ln in log.splitlines() if ": hint: " in ln]
        cls: type[AirgapError] = {3: VerificationError, 2: UsageError}.get(
            r.returncode, InstallError
        )
        raise cls(
            f"install.sh of the new version failed (exit {r.returncode}): {message}",
            hint=" ".join([*hints[-1:], "The current version is unchanged."]),
        )
    return log


def rollback(prefix: Path | None = None) -> UpdateResult:
    """Make ``previous`` current again (and the current one ``previous``).

    Raises:
        UsageError: no previous version, or it is not completely installed.
    """
    layout = resolve_layout(prefix)
    before = layout.version(layout.current)
    back = layout.version(layout.previous)
    if back is None or not layout.installed(back):
        raise UsageError(
            f"{layout.previous}: no previous version to roll back to",
            hint="Rollback returns to the version before the last self-update.",
        )
    _link(layout.prefix, f"versions/{back}", "current")
    if before is not None:
        _link(layout.prefix, f"versions/{before}", "previous")
    return UpdateResult("rolled back", layout.prefix, before, back)


def _link(prefix: Path, target: str, name: str) -> None:
    """Point ``prefix/name`` at ``target`` with one rename (never a moment without it)."""
    tmp = prefix / f".{name}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, prefix / name)
    fd = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
