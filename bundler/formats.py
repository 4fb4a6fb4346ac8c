"""Document formats and the compatibility rule every reader keeps.

Each persisted document names its format as ``<family>/<N>`` (``airgap-bundle/1``,
``airgap-lock/1``, ``airgap-parts/1``, the receipt's ``format``). A reader accepts the
current and the previous N (new fields are optional within a format). A document of a
*newer* N is refused with "needs airgap >= X", never as damaged: X comes from the
document's ``requires`` (``airgap>=X``, which formats after the first carry) or, failing
that, from the version of the ``tool`` that wrote it — that release reads it.
"""

from __future__ import annotations

import re

from bundler import __version__

_FORMAT_RE = re.compile(r"^(?P<family>[a-z-]+)/(?P<n>[0-9]{1,4})$")
_TOOL_RE = re.compile(r"^airgap (?P<v>[0-9]+(?:\.[0-9]+){1,2}\S*)$")
_REQUIRES_RE = re.compile(r"^airgap>=(?P<v>[0-9]+(?:\.[0-9]+){1,2})$")


def newer_format(
    found: object,
    current: str,
    *,
    requires: object = None,
    tool: object = None,
    reads: tuple[str, ...] = (),
) -> str | None:
    """The refusal message if ``found`` is a later format of ``current``'s family, else None.

    ``reads``: every format of the family this release reads (default: ``current`` alone).
    """
    have, want = _FORMAT_RE.match(str(found)), _FORMAT_RE.match(current)
    if not (have and want) or have["family"] != want["family"] or int(have["n"]) <= int(want["n"]):
        return None
    m = _REQUIRES_RE.match(str(requires)) or _TOOL_RE.match(str(tool))
    needed = m["v"] if m else None
    return (
        f"format {found} needs airgap >= {needed or 'the release that wrote it'} "
        f"(this is airgap {__version__}, which reads {' and '.join(reads or (current,))}); "
        "it is not damaged"
    )


UPGRADE_HINT = (
    "Bring the newer airgap across (its signed tool bundle) and use it for this file, or "
    "have it made with the airgap release this host runs."
)
