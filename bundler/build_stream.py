"""``airgap build -o -``: the signed bundle written to a stream (standard output).

The same plan as :func:`bundler.build.build`, written by
:func:`bundler.bundle.streamout.stream_bundle` instead of the file writer: every source
is hashed first, then the bundle goes out in one pass. Nothing touches the disk but the
hash cache and, for remote sources, the download cache.
"""

from __future__ import annotations

from dataclasses import replace

from bundler import __version__
from bundler.build import BuildOptions, planned, validity
from bundler.bundle.delta import load_base, make_delta
from bundler.bundle.plan import BuildResult
from bundler.bundle.streamout import stream_bundle
from bundler.errors import UsageError
from bundler.manifest import Manifest
from bundler.progress import NullReporter, Reporter
from bundler.sbom.generate import add_sbom, check_model_licence


def build_to_stream(
    m: Manifest, opts: BuildOptions, fd: int, reporter: Reporter | None = None
) -> BuildResult:
    """Plan, hash, sign and write the bundle to ``fd`` (a pipe or a file opened for writing).

    Raises:
        UsageError: ``opts.split_size`` is set (a stream is one piece), or as
            :func:`bundler.build.build`.
        FetchError, SourceError, BundleError, LicenseError: as :func:`bundler.build.build`.
        StreamClosedError: the reading side closed the stream.
    """
    if opts.split_size is not None:
        raise UsageError(
            "--split-size cannot be used with -o - (standard output is one stream)",
            hint="Write to a file to split it (-o BUNDLE --split-size …), or pipe the "
            "stream through `split -b SIZE`.",
        )
    reporter = reporter or NullReporter()
    validity(m, opts)  # before anything is downloaded
    base = load_base(opts.base) if opts.base else None
    with planned(m, opts, reporter) as (plan, hashes):
        _, sbom_input = check_model_licence(plan, m)
        reporter.stage("reading image layers for the SBOM")
        sbom = add_sbom(plan, sbom_input, f"airgap {__version__}")
        if base is not None:
            reporter.stage("hashing (delta)", sum(p.size for p in plan.payloads))
            plan = make_delta(plan, base, hashes, reporter.advance)
        total = sum(p.size for p in plan.payloads)
        reporter.stage("hashing, then writing to standard output", (1 if base else 2) * total)
        result = stream_bundle(
            plan,
            fd,
            opts.keys,
            progress=reporter.advance,
            hash_progress=reporter.advance,
            hash_cache=hashes,
        )
        return replace(result, sbom=sbom)
