"""Real services for integration tests: Docker engine, Podman, an OCI registry.

Each is started on a unix socket or a loopback port with all state in a temp dir,
and stopped by the PID we started. A service that does not come up is an error
(never a skip): CI must have installed it (scripts/setup).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass
class Service:
    url: str
    root: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]


def _wait(check, what: str, log: Path, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start within {timeout}s\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _ping_unix(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        return b"200 OK" in s.recv(1024)
    finally:
        s.close()


def _rmtree(path: Path) -> None:
    # overlay/vfs layer dirs can hold read-only dirs: make them writable first
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def dockerd() -> Iterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="ag-dk-", dir="/tmp"))
    sock = root / "docker.sock"
    log = root / "dockerd.log"
    cmd = [
        "dockerd",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "pid"),
        "-H",
        f"unix://{sock}",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _ping_unix(sock), "dockerd", log)
        yield Service(f"unix://{sock}", root, proc, {"DOCKER_HOST": f"unix://{sock}"})
    finally:
        _stop(proc)
        _rmtree(root)


@contextlib.contextmanager
def podman() -> Iterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="ag-pm-", dir="/tmp"))
    sock = root / "podman.sock"
    log = root / "podman.log"
    conf = root / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=4096:4096","nproc=4096:4096"]\n'
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    base = [
        "podman",
        "--root",
        str(root / "storage"),
        "--runroot",
        str(root / "run"),
        "--storage-driver",
        "vfs",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*base, "system", "service", "--time=0", f"unix://{sock}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait(lambda: _ping_unix(sock), "podman service", log)
        yield Service(
            f"unix://{sock}",
            root,
            proc,
            {"CONTAINER_HOST": f"unix://{sock}", "PODMAN_BASE": " ".join(base)},
        )
    finally:
        _stop(proc)
        _rmtree(root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def registry(htpasswd: Path | None = None) -> Iterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="ag-reg-", dir="/tmp"))
    port = free_port()
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: airgap-test\n    path: {htpasswd}\n"
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = root / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(root / "config.yml")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"127.0.0.1:{port}"
    try:
        _wait(
            lambda: requests.get(f"http://{url}/v2/", timeout=2).status_code in (200, 401),
            "docker-registry",
            log,
        )
        yield Service(url, root, proc, {})
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)
