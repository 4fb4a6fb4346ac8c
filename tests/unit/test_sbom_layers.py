"""Package databases read from image layers: streaming, whiteouts, bounds, real files."""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from bundler.errors import SourceError
from bundler.hashing import FileRange
from bundler.sbom.layers import MAX_DB_FILE, scan_image, scan_layer
from bundler.sbom.packages import parse_apk, parse_dpkg
from devkit.demo_data import tar_bytes

SITE = "usr/lib/python3/dist-packages"


def dpkg(*pkgs: tuple[str, str, str]) -> bytes:
    return "".join(
        f"Package: {n}\nStatus: {s}\nPriority: optional\nArchitecture: amd64\nVersion: {v}\n"
        "Description: x\n continued line\n\n"
        for n, v, s in pkgs
    ).encode()


def metadata(name: str, version: str, licence: str = "MIT") -> bytes:
    return (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: {licence}\n\nbody\n"
    ).encode()


def names(layers: list[bytes]) -> set[tuple[str, str, str]]:
    facts = scan_image([(f"l{i}", blob) for i, blob in enumerate(layers)])
    return {(p.kind, p.name, p.version) for p in facts.packages}


def test_a_whiteout_hides_what_it_deletes() -> None:
    base = tar_bytes(
        {
            "var/lib/dpkg/status": dpkg(("curl", "7.88", "install ok installed")),
            f"{SITE}/foo-1.0.dist-info/METADATA": metadata("foo", "1.0"),
            f"{SITE}/bar-2.0.dist-info/METADATA": metadata("bar", "2.0"),
            "opt/app/lib/baz-3.0.dist-info/METADATA": metadata("baz", "3.0"),
        }
    )
    assert names([base]) == {
        ("deb", "curl", "7.88"),
        ("pypi", "foo", "1.0"),
        ("pypi", "bar", "2.0"),
        ("pypi", "baz", "3.0"),
    }
    # `pip uninstall foo` in a later layer: a whiteout for its dist-info directory;
    # `rm -rf /opt/app/lib && mkdir` with new content: an opaque directory.
    upper = tar_bytes(
        {
            f"{SITE}/.wh.foo-1.0.dist-info": b"",
            "opt/app/lib/.wh..wh..opq": b"",
            "opt/app/lib/qux-4.0.dist-info/METADATA": metadata("qux", "4.0"),
        }
    )
    assert names([base, upper]) == {
        ("deb", "curl", "7.88"),
        ("pypi", "bar", "2.0"),
        ("pypi", "qux", "4.0"),
    }
    # A whiteout hides only what is below it: the same layers in the other order keep foo.
    assert ("pypi", "foo", "1.0") in names([upper, base])


def test_a_later_layer_replaces_the_dpkg_status_and_whiteouts_of_the_file_itself() -> None:
    old = tar_bytes({"var/lib/dpkg/status": dpkg(("a", "1", "install ok installed"))})
    new = tar_bytes(
        {
            "var/lib/dpkg/status": dpkg(
                ("a", "2", "install ok installed"), ("b", "1", "deinstall ok config-files")
            )
        }
    )
    gone = tar_bytes({"var/lib/dpkg/.wh.status": b""})
    assert names([old, new]) == {("deb", "a", "2")}  # config-files: nothing on disk
    assert names([old, gone]) == set()


def test_gzip_and_zstd_layers_read_the_same(tmp_path: Path) -> None:
    layer = tar_bytes({f"{SITE}/foo-1.0.dist-info/METADATA": metadata("foo", "1.0")})
    gz = tmp_path / "gz"
    gz.write_bytes(b"junk" + gzip.compress(layer, mtime=0))  # read from an offset in a file
    zst = zstandard.ZstdCompressor().compress(layer)
    in_file = FileRange(gz, 4, gz.stat().st_size - 4)
    assert names([layer]) == names([zst]) == {("pypi", "foo", "1.0")}
    facts = scan_image([("gz", in_file)])
    assert [(p.name, p.licence, p.found_in) for p in facts.packages] == [
        ("foo", "MIT", f"/{SITE}/foo-1.0.dist-info/METADATA")
    ]


def test_real_metadata_files_of_installed_distributions() -> None:
    """The METADATA of distributions installed here, as pip wrote them."""
    files: dict[str, bytes] = {}
    expected = set()
    for dist_name in ("pydantic", "click", "cryptography", "PyYAML", "cyclonedx-python-lib"):
        dist = importlib.metadata.distribution(dist_name)
        text = dist.read_text("METADATA")
        assert text is not None
        folder = f"{dist.metadata['Name']}-{dist.version}.dist-info".replace("-", "_", 1)
        files[f"{SITE}/{folder}/METADATA"] = text.encode()
        expected.add(("pypi", dist.metadata["Name"], dist.version))
    facts = scan_image([("l", gzip.compress(tar_bytes(files)))])
    assert {(p.kind, p.name, p.version) for p in facts.packages} == expected
    purls = {p.purl(None) for p in facts.packages}
    assert f"pkg:pypi/pyyaml@{importlib.metadata.version('PyYAML')}" in purls
    assert any(p.licence for p in facts.packages)  # each states its licence one way or another


def test_apk_database_in_alpine_format() -> None:
    """Alpine's lib/apk/db/installed: one block per package, single-letter keys."""
    db = (
        b"C:Q1abc=\nP:musl\nV:1.2.4_git20230717-r4\nA:x86_64\nS:407765\nI:667648\n"
        b"T:the musl c library (libc) implementation\nU:https://musl.libc.org/\nL:MIT\n"
        b"o:musl\nm:Timo Teras <timo.teras@iki.fi>\nt:1700000000\nc:abc\n"
        b"F:lib\nR:ld-musl-x86_64.so.1\na:0:0:755\nZ:Q1xyz=\n\n"
        b"C:Q1def=\nP:busybox\nV:1.36.1-r15\nA:x86_64\nL:GPL-2.0-only\no:busybox\n\n"
    )
    layer = tar_bytes(
        {
            "lib/apk/db/installed": db,
            "etc/os-release": b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.1\n',
        }
    )
    facts = scan_image([("l", layer)])
    assert [(p.name, p.version, p.licence) for p in facts.packages] == [
        ("busybox", "1.36.1-r15", "GPL-2.0-only"),
        ("musl", "1.2.4_git20230717-r4", "MIT"),
    ]
    assert facts.packages[1].purl(facts.os_release) == (
        "pkg:apk/alpine/musl@1.2.4_git20230717-r4?arch=x86_64&distro=alpine-3.19.1"
    )
    assert len(parse_apk(db, "x")) == 2


def test_distroless_status_d_and_epoch_versions() -> None:
    layer = tar_bytes(
        {
            "var/lib/dpkg/status.d/libssl3": b"Package: libssl3\nVersion: 3.0.11-1~deb12u2\n"
            b"Architecture: amd64\nSource: openssl\n",
            "var/lib/dpkg/status.d/libssl3.md5sums": b"abc  usr/lib/libssl.so.3\n",
            "var/lib/dpkg/status.d/zlib1g": b"Package: zlib1g\nVersion: 1:1.2.13.dfsg-1\n"
            b"Architecture: amd64\nSource: zlib\n",
        }
    )
    facts = scan_image([("l", layer)])
    assert [p.purl(None) for p in facts.packages] == [
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&upstream=openssl",
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&upstream=zlib",
    ]
    assert parse_dpkg(b"Package: x\nStatus: purge ok not-installed\nVersion: 1\n", "s") == []


def test_an_oversized_database_is_refused_not_truncated() -> None:
    big = tar_bytes({"var/lib/dpkg/status": b"#" * (MAX_DB_FILE + 1)})
    with pytest.raises(SourceError) as e:
        scan_layer(big, "sha256:big")
    assert "var/lib/dpkg/status" in e.value.message and "sha256:big" in e.value.message
    # a large file that is not a package database is streamed past, never read
    fine = tar_bytes({"usr/lib/big.so": b"\0" * (MAX_DB_FILE + 1)})
    assert scan_layer(fine, "l").files == {}


def test_not_a_tar_is_named() -> None:
    with pytest.raises(SourceError) as e:
        scan_layer(gzip.compress(b"not a tar at all" * 100), "sha256:bad")
    assert "sha256:bad" in e.value.message


def test_a_link_at_a_database_path_hides_the_lower_file() -> None:
    base = tar_bytes({"var/lib/dpkg/status": dpkg(("a", "1", "install ok installed"))})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("var/lib/dpkg/status")
        info.type, info.linkname = tarfile.SYMTYPE, "/dev/null"
        tf.addfile(info)
    assert names([base, buf.getvalue()]) == set()
