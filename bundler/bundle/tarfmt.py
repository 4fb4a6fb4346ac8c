"""The tar layer of the bundle: exact header bytes for writing, strict parsing for reading.

Headers are produced by the standard library's ``tarfile`` (POSIX pax format, so
members may exceed 8 GiB and names 100 bytes). Reading is done here by hand and not
with ``tarfile.open``: the bundle is untrusted input, and the reader must (a) know
the byte offset of every member so an error can name the split part, (b) read
payload straight into reusable buffers without copies, and (c) accept only the
exact header bytes our writer produces for the signed index entry. Anything else
— links, devices, GNU long names, global pax headers — is refused by name.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
MAX_PAX_HEADER = 64 * 1024
# No file can be larger than off_t allows; a header that says more (base-256 and pax
# sizes are unbounded) or less than zero was crafted.
MAX_MEMBER_SIZE = 2**63 - 1
_PAX_SIZE_DIGITS = 19  # len(str(MAX_MEMBER_SIZE))

_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_LONGNAME: "a GNU long-name record",
    tarfile.GNUTYPE_LONGLINK: "a GNU long-link record",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
    tarfile.XGLTYPE: "a global pax header",
}


def member_header(path: str, size: int, mtime: int) -> bytes:
    """The exact header bytes (pax record if needed + ustar block) of a regular member."""
    info = tarfile.TarInfo(path)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> int:
    """Zero bytes that follow ``size`` bytes of member data."""
    return -size % BLOCK


@dataclass(frozen=True)
class RawHeader:
    """A parsed member header, before it is checked against the index."""

    name: str
    size: int
    type: bytes
    raw: bytes  # every header byte, pax record included
    linkname: str = ""

    @property
    def kind(self) -> str | None:
        """Human name of a refused member type, or None for a regular file."""
        if self.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            return None
        return _TYPE_NAMES.get(self.type, f"an unknown member type {self.type!r}")


class HeaderError(Exception):
    """A header that cannot be parsed (the caller turns it into a BundleError).

    ``member`` is the member's name when the header got far enough to give one.
    """

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        # shown in an error line: quoted when it holds control or non-printable characters
        self.member = member if member is None or member.isprintable() else repr(member)


def check_size(size: int, field: str, member: str) -> int:
    """``size`` if a member can have it: not negative, not beyond ``off_t``.

    Raises:
        HeaderError: naming the member, the header field and the limit.
    """
    if size < 0:
        raise HeaderError(f"negative member size {size} in the {field}", member)
    if size > MAX_MEMBER_SIZE:
        raise HeaderError(
            f"member size in the {field} is beyond the limit of {MAX_MEMBER_SIZE} bytes", member
        )
    return size


def parse_ustar(block: bytes) -> tarfile.TarInfo:
    """Parse one 512-byte header block, checksum included, and check its size field."""
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise HeaderError(f"corrupt tar header ({e})") from e
    check_size(info.size, "tar header's size field", info.name)
    return info


def pax_size(records: dict[str, str], fallback: int, member: str) -> int:
    """The member size: the pax ``size`` record (plain decimal digits only), else ``fallback``.

    Raises:
        HeaderError: a ``size`` record that is not a plain non-negative decimal number
            (``-5``, ``+5``, `` 5``, ``5_0``) or is beyond the limit.
    """
    if "size" not in records:
        return fallback
    value = records["size"]
    if not (value.isascii() and value.isdigit()) or len(value) > _PAX_SIZE_DIGITS:
        shown = value if len(value) <= 24 else value[:24] + "…"
        raise HeaderError(
            f"pax size record {shown!r} is not a member size (0..{MAX_MEMBER_SIZE})", member
        )
    return check_size(int(value), "pax size record", member)


def parse_pax_records(data: bytes) -> dict[str, str]:
    """Parse pax extended-header records (``"%d %s=%s\\n"``) strictly."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit() or space - pos > len(str(MAX_PAX_HEADER)):
            raise HeaderError("malformed pax record length")
        length = int(data[pos:space])
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise HeaderError("malformed pax record")
        keyval = data[space + 1 : end - 1]
        key, sep, value = keyval.partition(b"=")
        if not sep:
            raise HeaderError("pax record without '='")
        k = key.decode("utf-8", "surrogateescape")
        if k in records:
            raise HeaderError(f"duplicate pax record {k!r}")
        records[k] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records
