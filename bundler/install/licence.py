"""The model's licence at install time: the preflight's row and the receipt's record.

The signed index records the licence the build read from the model card
(``Index.lock.model.license``). A licence that needs acceptance (gated, not
OSI-approved, unknown, ``other``, missing) is installed only with
``--accept-license <id>``; the acceptance is recorded in the receipt with the time and
the operator's user name.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bundler import env
from bundler.bundle.index import Index
from bundler.install.options import Check, InstallOptions
from bundler.install.records import LicenseAcceptance
from bundler.sbom.licences import accepts, describe, why_acceptance


def license_check(index: Index | None, opts: InstallOptions) -> Check:
    """The preflight's licence row: shown always, failed when an acceptance is missing."""
    pin = index.lock.license if index is not None else None
    if pin is None:
        return Check("licence", None, "not recorded (bundle built before airgap recorded it)")
    if not pin.needs_acceptance:
        return Check("licence", True, describe(pin))
    if accepts(pin, opts.accept_license):
        return Check("licence", True, f"{describe(pin)}; accepted (--accept-license)")
    given = ""
    if opts.accept_license:
        given = f" (--accept-license {opts.accept_license} names another)"
    return Check(
        "licence",
        False,
        f"{describe(pin)}: {why_acceptance(pin)}; needs --accept-license {pin.id}{given}",
    )


def license_acceptance(index: Index, opts: InstallOptions) -> LicenseAcceptance | None:
    """The receipt's record of the operator's acceptance (None: none was needed or given)."""
    pin = index.lock.license
    if pin is None or not pin.needs_acceptance or not accepts(pin, opts.accept_license):
        return None
    assert opts.accept_license is not None
    return LicenseAcceptance(
        license=opts.accept_license,
        spdx=pin.spdx,
        accepted_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        operator=env.operator_name(),
    )
