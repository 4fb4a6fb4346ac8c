"""Elastic artifacts on the air-gapped side: ELSER for Elasticsearch, product docs for Kibana.

Served by the endpoint's Nginx (see :mod:`bundler.install.serve`) or copied into a
directory (``--elser-dir`` into Elasticsearch's ``config/models``, ``--product-docs-dir``
for a ``file://`` repository), every byte checked against the signed index on the
way; and the settings an operator adds to name those repositories. The Elasticsearch
API side (the inference endpoint) is :mod:`.elasticsearch`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from bundler.bundle.index import Index
from bundler.errors import AirgapError, InstallError, UsageError
from bundler.install.hostfs import DirHandle
from bundler.install.serveconf import product_docs_listing

ELSER_DIR = "elastic/elser"
DOCS_DIR = "elastic/product-docs"


def elser_ids(index: Index) -> list[str]:
    """ELSER model ids the bundle carries (``elser_model_2_linux-x86_64`` first)."""
    ids = sorted(
        f.path.rsplit("/", 1)[1].removesuffix(".metadata.json")
        for f in index.files
        if f.path.startswith(ELSER_DIR + "/") and f.path.endswith(".metadata.json")
    )
    return sorted((i for i in ids if i.startswith("elser")), key=lambda i: "linux" not in i) + [
        i for i in ids if not i.startswith("elser")
    ]


def _copy_verified(release: Path, index: Index, prefix: str, dest: Path) -> list[Path]:
    """Copy the signed files under ``prefix`` into ``dest``, hashing as they are read.

    ``dest`` belongs to Elasticsearch or Kibana, whose accounts may write there, so it is
    opened once (:class:`~bundler.install.hostfs.DirHandle`) and every file is created in it
    under a fresh name with ``O_EXCL|O_NOFOLLOW``, made 0644 through its descriptor and
    renamed relative to the directory: a link planted there is never written through. All
    files are first written and checked; only when every one matched are they renamed
    into place, so a failure leaves ``dest`` as it was.

    Raises:
        UsageError: ``dest`` is reached through a link another user owns.
        InstallError: a file differs from the signed index, or cannot be written.
    """
    entries = [f for f in index.files if f.path.startswith(prefix + "/")]
    staged: list[tuple[str, str]] = []
    try:
        with DirHandle(dest, create=True, what=f"the directory for {prefix}/") as d:
            try:
                for f in entries:
                    name = f.path.rsplit("/", 1)[1]
                    fd, tmp = d.new_temp(name)
                    staged.append((tmp, name))
                    with os.fdopen(fd, "wb") as dst:
                        _copy_checked(release, f.path, f.sha256, dst)
                        os.fchmod(dst.fileno(), 0o644)
                for tmp, name in staged:
                    d.replace(tmp, name)
                d.fsync()
            finally:
                for tmp, _ in staged:
                    d.unlink(tmp)  # gone already when renamed
    except OSError as e:
        raise InstallError(
            f"cannot copy {prefix}/ into {dest}: {e}",
            hint="Check the directory is writable and has space.",
        ) from e
    return [dest / name for _, name in staged]


def _copy_checked(release: Path, rel: str, sha256: str, dst: BinaryIO) -> None:
    """Copy ``release/rel`` into ``dst``, fsynced, and check it against the signed sha256."""
    h = hashlib.sha256()
    with open(release / rel, "rb") as src:
        while block := src.read(8 << 20):
            h.update(block)
            dst.write(block)
    dst.flush()
    os.fsync(dst.fileno())
    if h.hexdigest() != sha256:
        raise InstallError(
            f"{release / rel}: content differs from the signed index "
            f"(sha256 {h.hexdigest()}, signed {sha256})",
            hint="The installed release was changed on disk: `airgap status --deep`, "
            "then install the bundle again.",
        )


def copy_elser(release: Path, index: Index, dest: Path) -> list[Path]:
    if not elser_ids(index):
        raise UsageError("--elser-dir: this bundle carries no ELSER model")
    return _copy_verified(release, index, ELSER_DIR, dest)


def copy_product_docs(release: Path, index: Index, dest: Path) -> list[Path]:
    files = _copy_verified(release, index, DOCS_DIR, dest)
    if not files:
        raise UsageError("--product-docs-dir: this bundle carries no product documentation")
    listing = dest / "index.xml"
    try:
        with (
            DirHandle(dest, create=False, what="--product-docs-dir") as d,
            d.atomic_output(listing.name, mode=0o644) as f,
        ):
            f.write(product_docs_listing(sorted(files)).encode())
    except OSError as e:
        raise InstallError(f"cannot write {listing}: {e}") from e
    return [*files, listing]


def settings_lines(elser_repo: str | None, docs_repo: str | None) -> list[tuple[str, str]]:
    """(file, line) pairs an operator adds to elasticsearch.yml / kibana.yml."""
    out = []
    if elser_repo:
        out.append(("elasticsearch.yml", f"xpack.ml.model_repository: {elser_repo}"))
    if docs_repo:
        out.append(("kibana.yml", f"xpack.productDocBase.artifactRepositoryUrl: {docs_repo}"))
    return out


def settings_text(settings: list[tuple[str, str]]) -> str:
    """The settings file an install leaves for the operator, grouped by target file."""
    out = ["# Generated by airgap: add these to the named files, then restart that service."]
    for target in ("elasticsearch.yml", "kibana.yml"):
        lines = [line for f, line in settings if f == target]
        if lines:
            out.append(f"\n# --- {target} ---")
            out += [line.rstrip("\n") for line in lines]
    return "\n".join(out) + "\n"


def remove_dir_files(files: list[str]) -> list[str]:
    """Remove files this tool copied (``--elser-dir``/``--product-docs-dir``): regular files
    only, relative to their directory opened without following a link another user owns."""
    removed = []
    for f in files:
        p = Path(f)
        try:
            with DirHandle(p.parent, create=False, what="a copied file's directory") as d:
                if d.remove_file(p.name):
                    removed.append(f"file {p}")
        except FileNotFoundError:
            continue
        except (AirgapError, OSError) as e:
            removed.append(f"kept file {p}: {e}")
    return removed
