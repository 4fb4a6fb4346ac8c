"""What the fault tier needs around the airgap process: an engine it can kill and start
again, the host's state as a comparable value, and runs of the real CLI with a fault
point set.

A host state is everything a run leaves that an operator or a later run could see:
files under the directories airgap writes (relative path, type, mode, sha256), the
receipt, the images (IDs and tags) and containers (names, images, labels, running)
in the private engine, and the objects in the Kibana and Elasticsearch stand-ins. Two
states compare equal when a faulted run, followed by a rerun, left the host as a clean
run does. What may differ between two clean runs is exempt, each for a reason in
``EXEMPT`` (and in the README's fault-injection section).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from devkit import services

# -- running the real CLI --------------------------------------------------------------------


def airgap(
    *args: str,
    env: dict[str, str] | None = None,
    point: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m bundler ARGS`` with ``point`` (``name[:n]``) armed, if given."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_FAULT_")}
    full.update(env or {})
    if point:
        full["AIRGAP_FAULT_POINT"] = point
    return subprocess.run(
        [sys.executable, "-m", "bundler", *args],
        capture_output=True,
        env=full,
        timeout=timeout,
        check=False,
    )


def assert_killed_at(r: subprocess.CompletedProcess[bytes], point: str) -> None:
    """The run died by SIGKILL, at ``point`` and nowhere else."""
    err = r.stderr.decode(errors="replace")
    name, _, nth = point.rpartition(":")
    if not nth.isdigit():
        name, nth = point, "1"
    assert r.returncode == -signal.SIGKILL, (
        f"expected death by SIGKILL at {point}, got exit {r.returncode}:\n{err[-2000:]}"
    )
    assert f"fault point {name}:{nth} reached (kill)" in err, err[-2000:]


def assert_ok(r: subprocess.CompletedProcess[bytes], what: str = "rerun") -> None:
    assert r.returncode == 0, f"{what} exited {r.returncode}:\n{r.stderr.decode()[-3000:]}"


def assert_clean_error(r: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """Exit 1, an ``error:`` line and a ``hint:`` line, no traceback; returns stderr."""
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, f"expected exit 1, got {r.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "error: " in err and "hint: " in err, err[-3000:]
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err[-3000:]}"
    return err


# -- an engine the tests may kill --------------------------------------------------------------


class Engine:
    """A private dockerd whose state outlives the process: it can be killed (SIGKILL,
    as a crash would) and started again on the same data root and socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.log = root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: docker.APIClient | None = None

    def start(self) -> None:
        cmd = [
            "dockerd",
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "pid"),
            "-H",
            self.url,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
        ]
        # After a crash the old containerd's pid file remains, and its PID may live on as
        # a zombie (no init reaps it here): dockerd would wait for that one forever.
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            if not process_alive(int(pidfile.read_text())):
                pidfile.unlink()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        services._wait(lambda: services._ping_unix(self.sock), "dockerd", self.log)

    def processes(self) -> list[int]:
        """Every process this engine started: dockerd, its containerd, the shims (which
        leave the tree: found by the socket path they name) and the containers' own."""
        table: dict[int, tuple[int, str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                table[int(entry)] = (ppid, cmd)
        programs = ("dockerd ", "containerd ", "/usr/bin/containerd-shim")
        ours = {
            pid
            for pid, (_, cmd) in table.items()
            if cmd.startswith(programs) and str(self.root) in cmd
        }
        while True:
            more = {pid for pid, (ppid, _) in table.items() if ppid in ours} - ours
            if not more:
                return sorted(ours)
            ours |= more

    def kill(self) -> None:
        """The engine dies at once (SIGKILL), with everything it runs: dockerd, containerd,
        shims and containers, as when its service crashes or is OOM-killed."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None
        wait_for(lambda: not self.processes(), "the engine's processes to end", 30)
        self.close_client()

    def stop(self) -> None:
        if self.proc is not None:
            services._stop(self.proc)
            self.proc = None
        self.close_client()
        for pid in self.processes():  # anything a killed engine left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @property
    def api(self) -> docker.APIClient:
        if self._client is None:
            self._client = docker.APIClient(base_url=self.url, version="auto", timeout=120)
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def wipe(self) -> None:
        """Every container and image gone: the next scenario starts from nothing."""
        for c in self.api.containers(all=True):
            self.api.remove_container(c["Id"], force=True)
        for img in self.api.images(all=True):
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_image(img["Id"], force=True)

    def state(self) -> dict[str, Any]:
        images = {
            img["Id"]: sorted(t for t in img.get("RepoTags") or [] if t != "<none>:<none>")
            for img in self.api.images()
        }
        containers = sorted(
            (
                re.sub(r"-previous-\d+$", "-previous-<time>", c["Names"][0].lstrip("/")),
                c["ImageID"],
                json.dumps(c.get("Labels") or {}, sort_keys=True),
                c["State"],
            )
            for c in self.api.containers(all=True)
        )
        return {"images": images, "containers": containers}


# -- files ---------------------------------------------------------------------------------------

# What two clean runs write differently, and why that is no loss.
EXEMPT: dict[str, str] = {
    r"^\.airgap\.lock$": "holds the PID of the last run that took the prefix lock",
    r"^secrets/(bearer-token|vllm-api-key)$": "random secrets, new on each first install",
    r"^secrets/tls/": "the CA and server key pair are generated on the host",
    r"^secrets/nginx/": "per-start copies of the token and the TLS pair",
    r"^serve/elastic-settings\.txt$": "quotes the CA generated on the host",
    r"^elastic/es-truststore\.sh$": "inlines the CA generated on the host (the trust step)",
    r"^serve/[^/]+/<start>/product-docs\.xml$": "LastModified is the extracted file's mtime",
    r"^state/receipt\.json$": "compared as normalised JSON (receipt_view), not as bytes",
    r"^hashes\.sqlite3$": "SQLite pages depend on write order; compared by rows (hash_rows)",
}
_START_ID = re.compile(r"(?P<release>[\w.-]+-\d+)-[A-Za-z0-9_-]{8}(?=\.conf$|\.tls$|$)")


def _exempt(rel: str) -> bool:
    return any(re.search(p, rel) for p in EXEMPT)


def _normal(rel: str) -> str:
    """Path parts a clean run names at random (a serving start's id) made comparable."""
    return "/".join(_START_ID.sub(r"<start>", part) for part in rel.split("/"))


def tree(root: Path, skip: Callable[[str], bool] = lambda _: False) -> dict[str, Any]:
    """Every entry under ``root``: type, mode, and sha256 of regular files (unless exempt)."""
    out: dict[str, Any] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if skip(rel):
                continue
            key = _normal(rel)
            st = p.lstat()
            mode = oct(st.st_mode & 0o7777)
            if p.is_symlink():
                out[key] = ("link", os.readlink(p))
            elif p.is_dir():
                out[key] = ("dir", mode)
            elif _exempt(key):
                out[key] = ("file", mode, "<exempt>")
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                out[key] = ("file", mode, h.hexdigest())
    return out


# Receipt fields that two clean runs may fill differently, and why that is no loss.
RECEIPT_EXEMPT: dict[str, str] = {
    "installed_at": "a timestamp",
    "id": "a container ID (image IDs, sha256:..., are compared)",
    "action": "what the last run did to the connector or endpoint (created/updated); a "
    "rerun after a kill rightly says it updated what the killed run created",
}


def receipt_view(path: Path) -> Any:
    """The receipt without the fields in ``RECEIPT_EXEMPT``."""
    if not path.exists():
        return None

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: clean(x)
                for k, x in v.items()
                if not (k in RECEIPT_EXEMPT and isinstance(x, str) and not x.startswith("sha256:"))
            }
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(json.loads(path.read_text()))


def hash_rows(cache: Path) -> list[tuple[Any, ...]]:
    """The chunk digests the cache remembers (not the inode and time stamps)."""
    db = cache / "hashes.sqlite3"
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT path, offset, size, chunk_size, sha256, chunks FROM digests"
        ).fetchall()
    finally:
        con.close()
    return sorted((str(Path(r[0]).relative_to(cache.resolve())), *r[1:]) for r in rows)


def cache_is_trustworthy(cache: Path) -> None:
    """Every blob is what its name says; every alias names a blob; no digest row is
    remembered for bytes that are not in the cache."""
    blobs = cache / "blobs" / "sha256"
    for p in blobs.iterdir() if blobs.is_dir() else []:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        assert h.hexdigest() == p.name, f"cache blob {p.name} holds other bytes"
    for p in (cache / "alias").rglob("*"):
        if p.is_file() and not p.name.endswith(".partial"):
            assert (blobs / p.read_text().strip()).is_file(), f"alias {p} names no blob"
    for row in hash_rows(cache):
        assert (cache / row[0]).is_file(), f"digest row for missing {row[0]}"


# -- the whole host ------------------------------------------------------------------------------


@dataclass
class HostState:
    files: dict[str, Any] = field(default_factory=dict)
    receipt: Any = None
    engine: dict[str, Any] = field(default_factory=dict)
    kibana: Any = None
    elasticsearch: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def differences(clean: HostState, got: HostState) -> list[str]:
    """Human-readable lines, one per difference (empty: the same host)."""
    lines: list[str] = []

    def walk(where: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in b:
                    lines.append(f"{where}/{k}: missing after the fault (clean: {a[k]!r:.200})")
                elif k not in a:
                    lines.append(
                        f"{where}/{k}: left by the fault (clean run has none): {b[k]!r:.200}"
                    )
                else:
                    walk(f"{where}/{k}", a[k], b[k])
        elif a != b:
            lines.append(f"{where}: clean {a!r:.300} != after fault {b!r:.300}")

    for name in ("files", "receipt", "engine", "kibana", "elasticsearch", "extra"):
        walk(name, getattr(clean, name), getattr(got, name))
    return lines


def same_cache(clean: HostState, got: HostState) -> None:
    """The same files; remembered digests may be fewer, never different: a row that could
    not be written (a full disk, or a kill between a blob's rename and its row) is
    recomputed and remembered by the next build that needs it."""
    rows, clean_rows = got.extra["hash rows"], clean.extra["hash rows"]
    assert set(map(tuple, rows)) <= set(map(tuple, clean_rows)), "a digest row differs"
    assert_same_host(HostState(files=clean.files), HostState(files=got.files))


def assert_same_host(clean: HostState, got: HostState) -> None:
    diff = differences(clean, got)
    assert not diff, "the host differs from a clean run's:\n" + "\n".join(diff[:40])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def process_stopped(pid: int) -> bool:
    """Is ``pid`` stopped by a signal (state T)?"""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def airgap_paused(
    *args: str,
    point: str,
    while_stopped: Callable[[], None],
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """Run airgap until it stops itself at ``point`` (SIGSTOP), call ``while_stopped``
    (break something outside: fill the disk, kill the engine), then let it go on."""
    import tempfile

    full = {k: v for k, v in os.environ.items() if not k.startswith("AIRGAP_FAULT_")}
    full.update(env or {})
    full.update(AIRGAP_FAULT_POINT=point, AIRGAP_FAULT_ACTION="stop")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(
            [sys.executable, "-m", "bundler", *args], stdout=out, stderr=err, env=full
        )
        try:
            wait_for(lambda: p.poll() is not None or process_stopped(p.pid), f"{point}", timeout)
            assert p.poll() is None, f"airgap exited ({p.returncode}) before reaching {point}"
            try:
                while_stopped()
            finally:
                os.kill(p.pid, signal.SIGCONT)
            p.wait(timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, p.returncode, out.read(), err.read())


@contextlib.contextmanager
def tmpfs(path: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    """A small file system at ``path`` (root only), unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def remount(path: Path, size: str, inodes: int | None = None) -> None:
    opts = f"remount,size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-o", opts, str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; returns it."""
    filler = directory / "filler"
    block = b"\xa5" * (1 << 16)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                if os.write(fd, block) == 0:
                    break
            except OSError:
                break
        # and the last few bytes a short write left
        with contextlib.suppress(OSError):
            while os.write(fd, b"\xa5" * 512):
                pass
    finally:
        os.close(fd)
    return filler


def process_alive(pid: int) -> bool:
    """Does ``pid`` run (a zombie does not)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
