"""Package databases found in image layers, parsed: dpkg, apk, Python ``METADATA``, os-release.

Each parser takes the bytes of one file (already bounded by the layer reader) and
returns plain records; purls follow the purl spec (``pkg:deb/debian/…``,
``pkg:apk/alpine/…``, ``pkg:pypi/…``) and are made with ``packageurl-python``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from packageurl import PackageURL

# dpkg states in which the package's files are on disk (``config-files`` and
# ``not-installed`` leave none).
DPKG_PRESENT = frozenset(
    {
        "installed",
        "half-configured",
        "unpacked",
        "half-installed",
        "triggers-awaited",
        "triggers-pending",
    }
)
_PEP503 = re.compile(r"[-_.]+")


@dataclass(frozen=True)
class OsRelease:
    id: str
    version_id: str | None
    pretty_name: str | None

    @property
    def distro(self) -> str:
        return f"{self.id}-{self.version_id}" if self.version_id else self.id


@dataclass(frozen=True)
class Package:
    """One installed package as its database states it."""

    kind: str  # "deb", "apk", "pypi"
    name: str
    version: str
    arch: str | None = None
    source: str | None = None  # dpkg ``Source`` / apk ``o:`` (origin), when it differs
    licence: str | None = None  # apk ``L:``, METADATA ``License-Expression``/``License``
    found_in: str = ""  # the database file (path in the image)

    def purl(self, os_release: OsRelease | None) -> str:
        qualifiers: dict[str, str] = {}
        if self.kind == "pypi":
            return PackageURL(
                type="pypi", name=_PEP503.sub("-", self.name).lower(), version=self.version
            ).to_string()
        default = "debian" if self.kind == "deb" else "alpine"
        namespace = os_release.id if os_release else default
        if self.arch:
            qualifiers["arch"] = self.arch
        if os_release:
            qualifiers["distro"] = os_release.distro
        if self.source and self.source != self.name:
            qualifiers["upstream"] = self.source
        return PackageURL(
            type=self.kind,
            namespace=namespace,
            name=self.name,
            version=self.version,
            qualifiers=qualifiers,
        ).to_string()


def _stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs: ``Field: value`` lines, continuation lines start with a blank."""
    out: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                out.append(current)
            current, last = {}, ""
        elif line[0] in " \t":
            if last:
                current[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            current[last] = value.strip()
    if current:
        out.append(current)
    return out


def parse_dpkg(data: bytes, found_in: str) -> list[Package]:
    """Packages of a dpkg ``status`` file (or one distroless ``status.d`` file)."""
    found = []
    for st in _stanzas(data.decode("utf-8", "replace")):
        name, version = st.get("package"), st.get("version")
        if not name or not version:
            continue
        status = st.get("status", "install ok installed").split()
        if not status or status[-1] not in DPKG_PRESENT:
            continue
        source = st.get("source", "").split(" ")[0] or None
        found.append(Package("deb", name, version, st.get("architecture"), source, None, found_in))
    return found


def parse_apk(data: bytes, found_in: str) -> list[Package]:
    """Packages of an apk database (``lib/apk/db/installed``): ``P:``, ``V:``, ``A:``, ``L:``."""
    found = []
    for block in re.split(r"\n\s*\n", data.decode("utf-8", "replace")):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) > 2 and line[1] == ":" and line[0] not in fields:
                fields[line[0]] = line[2:].strip()
        if fields.get("P") and fields.get("V"):
            found.append(
                Package(
                    "apk",
                    fields["P"],
                    fields["V"],
                    fields.get("A"),
                    fields.get("o"),
                    fields.get("L") or None,
                    found_in,
                )
            )
    return found


def parse_metadata(data: bytes, found_in: str) -> list[Package]:
    """A Python distribution's ``*.dist-info/METADATA`` (core metadata headers)."""
    msg = BytesHeaderParser(policy=compat32).parsebytes(data)
    name, version = msg.get("Name"), msg.get("Version")
    if not name or not version:
        return []
    licence = msg.get("License-Expression")
    if not licence:
        text = (msg.get("License") or "").strip()
        if text and "\n" not in text and len(text) <= 100 and text.upper() != "UNKNOWN":
            licence = text
    if not licence:
        classifiers = [
            c.rsplit("::", 1)[-1].strip()
            for c in msg.get_all("Classifier") or []
            if str(c).startswith("License ::") and str(c).count("::") >= 2
        ]
        licence = " AND ".join(classifiers) or None
    return [Package("pypi", str(name).strip(), str(version).strip(), None, None, licence, found_in)]


def parse_os_release(data: bytes) -> OsRelease | None:
    values: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            values[key.strip()] = value.strip().strip("\"'")
    if not values.get("ID"):
        return None
    return OsRelease(values["ID"], values.get("VERSION_ID"), values.get("PRETTY_NAME"))
