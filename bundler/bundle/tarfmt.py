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
    """A header that cannot be parsed (the caller turns it into a BundleError)."""


def parse_ustar(block: bytes) -> tarfile.TarInfo:
    """Parse one 512-byte header block, checksum included."""
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise HeaderError(f"corrupt tar header ({e})") from e


def parse_pax_records(data: bytes) -> dict[str, str]:
    """Parse pax extended-header records (``"%d %s=%s\\n"``) strictly."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
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
