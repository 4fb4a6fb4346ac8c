"""``airgap tool-bundle``: airgap's wheelhouse and ``install.sh`` as a signed bundle.

The bundle is written by the same writer as every bundle (index, signatures,
SHA256SUMS, payload), so it verifies with ``airgap verify`` and with the stock tools
(``openssl pkeyutl -verify`` and ``sha256sum -c``), which is what ``install.sh`` uses.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from bundler import env
from bundler.bundle.plan import BuildPlan, BuildResult, Payload
from bundler.bundle.reader import read_head
from bundler.bundle.signing import SigningKey
from bundler.bundle.writer import write_bundle
from bundler.errors import UsageError
from bundler.hashing import FileRange
from bundler.pins import Pins
from bundler.progress import NullReporter, Reporter
from bundler.toolbundle import (
    INSTALL_SH,
    KIND,
    NAME,
    README,
    WHEELS,
    arch_of,
    is_tool_bundle,
    tool_version,
    version_number,
)
from bundler.toolbundle.wheelhouse import (
    WheelhouseOptions,
    build_own_wheel,
    default_source,
    download,
    own_version,
)

DEFAULT_EXPIRES_DAYS = 365


@dataclass(frozen=True)
class ToolBundleOptions:
    output: Path
    keys: tuple[SigningKey, ...]
    wheelhouse: WheelhouseOptions
    source: Path | None = None  # a source tree or a built airgap wheel; None: this checkout
    expires_days: int = DEFAULT_EXPIRES_DAYS


def _template(name: str, values: dict[str, str]) -> bytes:
    text = resources.files("bundler.toolbundle").joinpath(name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text.encode("utf-8")


def render_files(
    version: str, pythons: tuple[str, ...], arches: tuple[str, ...]
) -> dict[str, bytes]:
    """``tool/install.sh`` and ``tool/README.txt`` for this version, Pythons and machines."""
    values = {
        "AIRGAP_VERSION": version,
        "PYTHONS": " ".join(sorted(pythons, key=lambda v: tuple(map(int, v.split("."))))),
        "ARCHES": " ".join(arches),
    }
    return {INSTALL_SH: _template("install.sh", values), README: _template("README.txt", values)}


def tool_manifest(
    version: str, pythons: tuple[str, ...], platforms: tuple[str, ...]
) -> dict[str, object]:
    """A tool bundle's signed manifest: what it carries (for ``inspect`` and ``self-update``)."""
    return {
        "apiVersion": "airgap/v1",
        "kind": KIND,
        "name": NAME,
        "version": version_number(version),
        "airgap": version,
        "python": list(pythons),
        "platforms": list(platforms),
    }


def build_tool_bundle(opts: ToolBundleOptions, reporter: Reporter | None = None) -> BuildResult:
    """Build airgap's wheel, download its dependencies, and write the signed tool bundle.

    Raises:
        UsageError: no source tree to build from, or bad options.
        SourceError: the wheel build failed.
        FetchError: a wheel for one of the Pythons or platforms is missing upstream.
    """
    reporter = reporter or NullReporter()
    source = opts.source or default_source()
    if source is None:
        raise UsageError(
            "this airgap was not installed from a source tree: nothing to build its wheel from",
            hint="Pass --source with airgap's checkout, or an airgap_bundler-*.whl.",
        )
    wh = opts.wheelhouse
    arches = tuple(dict.fromkeys(arch_of(p) for p in wh.platforms))
    output = Path(opts.output)
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent}: output directory does not exist")
    created = env.source_date_epoch() or datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        work = Path(tmp)
        wheels_dir = work / "wheels"
        wheels_dir.mkdir()
        reporter.stage("building airgap's wheel")
        own = build_own_wheel(Path(source), wheels_dir, work)
        version = own_version(own)
        version_number(version)  # refuses a version that cannot name a bundle, before downloads
        reporter.stage("downloading wheels")
        wheels = download(own, wh, wheels_dir, work)
        files = render_files(version, wh.pythons, arches)
        payloads = [Payload(path, data) for path, data in files.items()]
        payloads += [
            Payload(f"{WHEELS}{w.name}", FileRange(w, 0, w.stat().st_size), origin=str(w))
            for w in wheels
        ]
        plan = BuildPlan(
            name=NAME,
            version=version_number(version),
            created=created,
            expires=created + timedelta(days=opts.expires_days),
            manifest=tool_manifest(version, wh.pythons, wh.platforms),
            lock=Pins(),
            payloads=payloads,
        )
        reporter.stage("hashing and writing", 2 * sum(p.size for p in payloads))
        return write_bundle(
            plan, output, opts.keys, progress=reporter.advance, hash_progress=reporter.advance
        )


def embedded_payload(tool_bundle: Path) -> Payload:
    """The tool bundle as a member of a release bundle: ``tool/airgap-tool-X.Y.Z.tar``.

    Only its head is read here (it is signed on its own; ``install.sh`` checks it on the
    air-gapped side); the release bundle's signature then covers its every byte.

    Raises:
        UsageError: not a single-file tool bundle.
        BundleError: not a bundle at all.
    """
    head = read_head(str(tool_bundle))
    if head.location.split or not is_tool_bundle(head.index):
        raise UsageError(
            f"--with-tool {tool_bundle}: not a tool bundle written by `airgap tool-bundle`",
            hint="Pass the airgap-tool-X.Y.Z.tar file (one file, not split).",
        )
    size = tool_bundle.stat().st_size
    return Payload(
        f"tool/{NAME}-{tool_version(head.index)}.tar",
        FileRange(tool_bundle.resolve(), 0, size),
        origin=str(tool_bundle),
    )
