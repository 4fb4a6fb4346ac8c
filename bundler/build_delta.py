"""``airgap build --dry-run --base``: what a delta would carry and reuse, with sizes."""

from __future__ import annotations

from bundler.build import BuildOptions, has_remote, plan_fetch, planned
from bundler.bundle.delta import DeltaPreview, load_base, make_delta, preview
from bundler.errors import UsageError
from bundler.manifest import Manifest
from bundler.progress import NullReporter, Reporter


def preview_delta(
    m: Manifest, opts: BuildOptions, reporter: Reporter | None = None
) -> DeltaPreview:
    """``build --dry-run --base``: hash every source and compare with the base; write nothing.

    Raises:
        UsageError: remote sources are not in the cache yet (a dry run downloads nothing).
        FetchError, SourceError, BundleError: as :func:`build`.
    """
    assert opts.base is not None
    reporter = reporter or NullReporter()
    base = load_base(opts.base)
    if has_remote(m) and (missing := plan_fetch(m, opts).to_fetch):
        raise UsageError(
            f"{len(missing)} remote files ({sum(n for _, n in missing)} bytes) are not in the "
            "cache yet, so they cannot be compared with the base",
            hint="Run `airgap fetch MANIFEST` first (a dry run downloads nothing).",
        )
    with planned(m, opts, reporter) as (plan, hashes):
        reporter.stage("hashing", sum(p.size for p in plan.payloads))
        return preview(make_delta(plan, base, hashes, reporter.advance), base)
