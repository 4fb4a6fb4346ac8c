"""Free disk checked before anything is written: a build whose bundle (one file or split
parts) cannot fit in the output directory is refused at once, naming the directory, the
bundle's size and the free space; nothing is left there, and nothing was hashed (the
source is a sparse file far larger than the disk). The same command passes once the
bundle fits (the negative control)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.demo_data import make_demo_sources
from faults.hostkit import airgap, assert_clean_error, assert_ok, tmpfs, tree

from conftest import Keys

pytestmark = pytest.mark.integration


@pytest.mark.fault("disk full: build refused before writing")
@pytest.mark.parametrize("split", [False, True], ids=["one file", "split parts"])
def test_build_that_cannot_fit_is_refused_before_writing(
    fault_key: Keys, tmp_path: Path, split: bool
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    manifest = make_demo_sources(src)
    huge = src / "weights" / "original" / "consolidated.00.pth"
    huge.parent.mkdir()
    with open(huge, "wb") as f:
        f.truncate(64 << 30)  # 64 GiB, sparse: hashing it alone would take minutes
    out = tmp_path / "out"
    args = ["build", str(manifest), "-o", str(out / "demo.tar"), "--key", str(fault_key.private)]
    args += ["--split-size", "64M"] if split else []
    with tmpfs(out, "8M"):
        r = airgap(*args, timeout=60)
        what = (
            "the bundle demo.tar (its parts, parts list and sums)"
            if split
            else "the bundle demo.tar"
        )
        err = assert_clean_error(r, f"{out}: not enough free space: {what} needs")
        assert "64.0 GiB" in err and "8.0 MiB" in err and "free" in err, err
        assert tree(out) == {}  # no bundle, no part, no temp file
        huge.unlink()
        assert_ok(airgap(*args))
        names = sorted(tree(out))
        assert names == (
            ["demo.tar.part-000", "demo.tar.parts.json", "demo.tar.parts.sha256"]
            if split
            else ["demo.tar"]
        ), names


@pytest.mark.fault("disk full: build refused before writing")
def test_split_parts_count_their_parts_list_and_whole_blocks(
    fault_key: Keys, tmp_path: Path
) -> None:
    """A disk that holds the bundle's bytes as one file, but not as 64 KiB parts plus the
    parts list and its sums: the split build is refused before the first part is written
    (it used to fill the disk and fail at the parts list, after renaming every part)."""
    src = tmp_path / "src"
    src.mkdir()
    manifest = make_demo_sources(src, model_bytes=2_000_000)
    key = ["--key", str(fault_key.private)]
    probe = tmp_path / "probe"
    probe.mkdir()
    assert_ok(airgap("build", str(manifest), "-o", str(probe / "demo.tar"), *key))
    size = (probe / "demo.tar").stat().st_size
    out = tmp_path / "out"
    with tmpfs(out, str(-(-size // 4096) * 4096 + 16384)):
        split = ["build", str(manifest), "-o", str(out / "demo.tar"), *key, "--split-size", "64K"]
        r = airgap(*split, timeout=60)
        assert_clean_error(r, f"{out}: not enough free space: the bundle demo.tar (its parts")
        assert tree(out) == {}  # no part, no parts list, no temp file
        # the negative control: the same bytes as one file fit
        assert_ok(airgap("build", str(manifest), "-o", str(out / "demo.tar"), *key))
        assert sorted(tree(out)) == ["demo.tar"]
