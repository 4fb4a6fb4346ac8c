"""Links and modes planted where airgap writes: the install prefix (StrictModes rule, then
nothing under it but what airgap creates) and Elasticsearch's/Kibana's own directories
(never written through a link). Each test checks that the file a link points at keeps its
bytes and mode, and that a refusal changes nothing in the prefix either.

Files "owned by another user" are made with ``chown`` to nobody (65534): these tests run as
root, like the rest of the suite (``scripts/setup`` installs packages).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from bundler.bundle.index import FileEntry, Index
from bundler.errors import HostStateError, UsageError
from bundler.install.elastic import artifacts
from bundler.install.layout import Layout
from bundler.install.manage import rollback, status, uninstall
from bundler.install.state import InstallLock

from conftest import tree_snapshot as snapshot

NOBODY = 65534
ELSER = "elser_model_2_linux-x86_64"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A private file elsewhere that a planted link points at."""
    v = tmp_path / "elsewhere" / "victim"
    v.parent.mkdir()
    v.write_bytes(b"not yours\n")
    v.chmod(0o600)
    return v


def untouched(victim: Path) -> bool:
    st = victim.lstat()
    return victim.read_bytes() == b"not yours\n" and stat.S_IMODE(st.st_mode) == 0o600


# --- Elasticsearch's and Kibana's directories -------------------------------------------


def release_with(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Index]:
    """A release directory holding ``files`` and an index that signs them."""
    release = tmp_path / "release"
    entries = []
    for rel, data in files.items():
        (release / rel).parent.mkdir(parents=True, exist_ok=True)
        (release / rel).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        entries.append(FileEntry(path=rel, size=len(data), sha256=sha, chunks=[sha]))
    return release, Index.model_construct(files=entries)


ELSER_FILES = {
    f"elastic/elser/{ELSER}.metadata.json": b'{"sha256": "x"}\n',
    f"elastic/elser/{ELSER}.pt": b"weights" * 1000,
    f"elastic/elser/{ELSER}.vocab.json": b'{"vocabulary": []}\n',
}
DOCS_FILES = {"elastic/product-docs/kb-product-doc-kibana-9.2.zip": b"PK\x05\x06" + bytes(18)}


@pytest.mark.parametrize(
    ("copy", "files"),
    [(artifacts.copy_elser, ELSER_FILES), (artifacts.copy_product_docs, DOCS_FILES)],
    ids=["elser-dir", "product-docs-dir"],
)
def test_links_planted_in_an_elastic_dir_are_never_written_through(
    tmp_path: Path, victim: Path, copy: object, files: dict[str, bytes]
) -> None:
    release, index = release_with(tmp_path, files)
    dest = tmp_path / "es-config" / "models"
    dest.mkdir(parents=True)
    names = [rel.rsplit("/", 1)[1] for rel in files]
    # what the service account could plant: the old fixed partial name, the final name
    for name in names:
        (dest / f".{name}.airgap-partial").symlink_to(victim)
    (dest / names[0]).symlink_to(victim)
    assert callable(copy)
    copied = copy(release, index, dest)
    assert untouched(victim)
    for rel, data in files.items():
        target = dest / rel.rsplit("/", 1)[1]
        assert target in copied
        assert not target.is_symlink() and target.read_bytes() == data
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    # nothing else left behind; the links it did not make are not its to remove
    left = {p.name for p in dest.iterdir()} - {p.name for p in copied}
    assert left == {f".{n}.airgap-partial" for n in names}


def test_an_elastic_dir_reached_through_another_users_link_is_refused(
    tmp_path: Path, victim: Path
) -> None:
    release, index = release_with(tmp_path, ELSER_FILES)
    config = tmp_path / "es-config"
    config.mkdir()
    (config / "models").symlink_to(victim.parent)
    os.lchown(config / "models", NOBODY, NOBODY)
    before = snapshot(victim.parent)
    with pytest.raises(UsageError) as e:
        artifacts.copy_elser(release, index, config / "models")
    assert e.value.message.startswith(f"{config / 'models'}: a symbolic link owned by uid 65534")
    assert e.value.exit_code == 2
    assert snapshot(victim.parent) == before
    # a link root or we own (an operator's own) is followed
    (config / "mine").symlink_to(tmp_path / "real-models")
    (tmp_path / "real-models").mkdir()
    artifacts.copy_elser(release, index, config / "mine")
    assert (tmp_path / "real-models" / f"{ELSER}.pt").read_bytes() == b"weights" * 1000


def test_uninstall_removes_copied_files_only_where_they_were_copied(
    tmp_path: Path, victim: Path
) -> None:
    models = tmp_path / "es-config" / "models"
    models.mkdir(parents=True)
    (models / f"{ELSER}.pt").write_bytes(b"ours")
    # the service account swaps the directory for a link to another with that file name
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / f"{ELSER}.pt").write_bytes(b"someone else's")
    models.rename(tmp_path / "es-config" / "old")
    models.symlink_to(tmp_path / "keep")
    os.lchown(models, NOBODY, NOBODY)
    removed = artifacts.remove_dir_files([str(models / f"{ELSER}.pt")])
    assert (tmp_path / "keep" / f"{ELSER}.pt").read_bytes() == b"someone else's"
    assert removed[0].startswith(f"kept file {models / ELSER}.pt: ")
    # a link in place of the copied file: left alone, and so is what it points at
    os.unlink(models)
    models.mkdir()
    (models / f"{ELSER}.pt").symlink_to(victim)
    assert artifacts.remove_dir_files([str(models / f"{ELSER}.pt")]) == []
    assert untouched(victim) and (models / f"{ELSER}.pt").is_symlink()


# --- the install prefix: StrictModes on the way there ------------------------------------


def test_prefix_path_follows_the_strictmodes_rule(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    prefix = base / "a" / "opt"
    # missing components are created 0755, never group/world-writable
    assert Layout(prefix).verify(create=True)
    assert stat.S_IMODE((base / "a").stat().st_mode) == 0o755

    base.chmod(0o775)  # an ancestor writable by the group
    with pytest.raises(UsageError) as e:
        Layout(prefix).verify()
    assert e.value.message.startswith(f"{base}: writable by group or others (mode 0775)")
    assert e.value.exit_code == 2 and "StrictModes" in e.value.hint

    base.chmod(0o1777)  # sticky, as /tmp: others cannot move what is ours
    assert Layout(prefix).verify()
    prefix.chmod(0o1777)  # but the prefix itself must be ours alone
    with pytest.raises(UsageError, match=f"^{prefix}: writable by group or others"):
        Layout(prefix).verify()
    prefix.chmod(0o755)

    os.chown(base / "a", NOBODY, NOBODY)  # an ancestor another user owns
    with pytest.raises(UsageError, match=f"^{base / 'a'}: owned by uid 65534"):
        Layout(prefix).verify()


def test_prefix_links_are_followed_only_when_root_or_we_own_them(tmp_path: Path) -> None:
    real = tmp_path / "data" / "airgap"
    real.mkdir(parents=True)
    link = tmp_path / "opt"
    link.symlink_to(real)
    assert Layout(link / "x").verify(create=True)  # like /var/run -> /run
    assert (real / "x").is_dir()
    (real).chmod(0o777)  # the link's target is held to the rule too
    with pytest.raises(UsageError, match=f"^{real}: writable by group or others"):
        Layout(link / "x").verify()
    real.chmod(0o755)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UsageError, match=f"^{link}: a symbolic link owned by uid 65534"):
        Layout(link / "x").verify()
    assert sorted(p.name for p in real.iterdir()) == ["x"]


def test_dotdot_after_a_link_is_checked_where_the_kernel_goes(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "x" / "y")
    prefix = tmp_path / "link" / ".." / "opt"  # the kernel: x/opt, not tmp_path/opt
    assert Layout(prefix).verify(create=True)
    assert (tmp_path / "x" / "opt").is_dir() and not (tmp_path / "opt").exists()
    (tmp_path / "x").chmod(0o777)
    with pytest.raises(UsageError, match=f"^{tmp_path / 'x'}: writable by group or others"):
        Layout(prefix).verify()


def test_nothing_is_created_when_the_prefix_path_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UsageError):
        Layout(shared / "opt" / "airgap").verify(create=True)
    with pytest.raises(UsageError):
        InstallLock(shared / "opt").__enter__()
    assert list(shared.iterdir()) == []


# --- the install prefix: nothing planted inside --------------------------------------------


def plant(prefix: Path, what: str, victim: Path) -> Path:
    """Plant ``what`` under ``prefix``; returns the planted path."""
    outside = victim.parent
    if what == "lock -> victim":
        p = prefix / ".airgap.lock"
        p.symlink_to(victim)
    elif what == "lock hard link":
        p = prefix / ".airgap.lock"
        os.link(victim, p)
    elif what in ("releases", "state", "secrets", "serve"):
        p = prefix / what
        p.symlink_to(outside)
    elif what == "state/receipt.json":
        (prefix / "state").mkdir()
        p = prefix / what
        p.symlink_to(victim)
    elif what == "releases/demo-1":
        (prefix / "releases").mkdir()
        p = prefix / what
        p.symlink_to(outside)
    elif what == "secrets/bearer-token":
        (prefix / "secrets").mkdir(mode=0o700)
        p = prefix / what
        p.symlink_to(victim)
    elif what == "serve/demo/fifo":
        (prefix / "serve" / "demo").mkdir(parents=True)
        p = prefix / what
        os.mkfifo(p)
    elif what == "current is a directory":
        p = prefix / "current"
        p.mkdir()
    elif what == "state owned by nobody":
        p = prefix / "state"
        p.mkdir()
        os.chown(p, NOBODY, NOBODY)
    else:
        raise AssertionError(what)
    return p


PLANTED = [
    "lock -> victim",
    "lock hard link",
    "releases",
    "state",
    "secrets",
    "serve",
    "state/receipt.json",
    "releases/demo-1",
    "secrets/bearer-token",
    "serve/demo/fifo",
    "current is a directory",
    "state owned by nobody",
]


@pytest.mark.parametrize("what", PLANTED)
def test_anything_planted_under_the_prefix_is_refused_before_use(
    tmp_path: Path, victim: Path, what: str
) -> None:
    prefix = tmp_path / "opt"
    prefix.mkdir()
    planted = plant(prefix, what, victim)
    before, outside = snapshot(prefix), snapshot(victim.parent)
    if what == "lock hard link":  # a regular file: only the lock's own fstat can tell
        with pytest.raises(HostStateError) as e:
            InstallLock(prefix).__enter__()
    else:
        with pytest.raises(HostStateError) as e:
            Layout(prefix).verify(create=True)
    assert e.value.message.startswith(f"{planted}: "), e.value.message
    assert e.value.exit_code == 3 and "remove that entry by hand" in e.value.hint
    assert snapshot(prefix) == before and snapshot(victim.parent) == outside
    assert untouched(victim)


def test_the_lock_never_truncates_or_writes_through_a_link(tmp_path: Path, victim: Path) -> None:
    prefix = tmp_path / "opt"
    prefix.mkdir()
    (prefix / ".airgap.lock").symlink_to(victim)
    with pytest.raises(HostStateError, match="a symbolic link where airgap keeps its lock"):
        InstallLock(prefix).__enter__()
    assert untouched(victim)
    os.unlink(prefix / ".airgap.lock")
    with InstallLock(prefix):  # its own lock file: 0600, ours, holds our pid
        st = (prefix / ".airgap.lock").lstat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)
        assert (prefix / ".airgap.lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("command", ["status", "uninstall", "rollback"])
@pytest.mark.parametrize("what", ["lock -> victim", "state", "releases/demo-1"])
def test_status_uninstall_and_rollback_refuse_a_planted_prefix(
    tmp_path: Path, victim: Path, command: str, what: str
) -> None:
    prefix = tmp_path / "opt"
    prefix.mkdir()
    planted = plant(prefix, what, victim)
    # what a planted state/ would make airgap believe: a receipt naming the outside dir
    (victim.parent / "receipt.json").write_text(
        '{"format": "airgap-receipt/2", "current": null, "releases": {}}\n'
    )
    before, outside = snapshot(prefix), snapshot(victim.parent)
    run = {"status": status, "uninstall": uninstall, "rollback": rollback}[command]
    with pytest.raises(HostStateError, match=f"^{planted}: "):
        run(prefix)
    assert snapshot(prefix) == before and snapshot(victim.parent) == outside


def test_a_release_dir_that_became_a_link_is_never_removed_through(
    tmp_path: Path, victim: Path
) -> None:
    layout = Layout(tmp_path / "opt")
    layout.releases.mkdir(parents=True)
    layout.release("demo-1").symlink_to(victim.parent)
    with pytest.raises(HostStateError, match="a symbolic link where airgap keeps a release"):
        layout.remove_release_dir("demo-1")
    assert untouched(victim)
    layout.release("demo-1").unlink()
    (layout.release("demo-1") / "models").mkdir(parents=True)
    layout.remove_release_dir("demo-1")  # its own directory: removed
    assert not layout.release("demo-1").exists()
