"""Real services for integration tests: Docker engine, Podman, an OCI registry.

Each is started on a unix socket or a loopback port with all state in a temp dir,
and stopped by the PID we started. A service that does not come up is an error
(never a skip): CI must have installed it (scripts/setup).
"""

from __future__ import annotations

import contextlib
import json
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


def _mounts_under(path: Path) -> list[str]:
    """Mount points below ``path`` (dockerd leaves an nsfs mount in exec/netns)."""
    root = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(root)), key=len, reverse=True)


def _rmtree(path: Path) -> None:
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
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
        # Pods and containers outlive the service (conmon is not its child): remove them
        # with the daemonless CLI, which works even when the service has died.
        for what in (["pod", "rm"], ["rm"]):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [*base, *what, "--all", "--force", "--time", "0"],
                    env=env,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        _stop(proc)
        kill_leftovers(root)
        _rmtree(root)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(d.name))
    return tree


def kill_leftovers(root: Path) -> list[int]:
    """Kill (SIGKILL) what still runs from a service's private ``root``, and its children.

    conmon and the container processes under it are started with paths below ``root`` on
    their command line; they are ours even when the service that started them is gone.
    Returns the PIDs killed.
    """
    mark = str(root.resolve()).encode() + b"/"
    me = os.getpid()
    roots = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            if mark in (d / "cmdline").read_bytes():
                roots.append(int(d.name))
        except OSError:
            continue
    tree = _children()
    victims: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in victims:
            continue
        victims.append(pid)
        todo += tree.get(pid, [])
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return victims


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


REPO_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def olah(mirrors: Path) -> Iterator[Service]:
    """olah, a self-hosted Hugging Face mirror, serving git repos under ``mirrors``."""
    root = Path(tempfile.mkdtemp(prefix="ag-hf-", dir="/tmp"))
    port = free_port()
    (root / "olah.toml").write_text(
        '[basic]\nhost = "127.0.0.1"\n'
        f'port = {port}\nssl-key = ""\nssl-cert = ""\n'
        f'repos-path = "{root / "repos"}"\ncache-size-limit = ""\n'
        'cache-clean-strategy = "LRU"\nhf-scheme = "https"\nhf-netloc = "huggingface.co"\n'
        'hf-lfs-netloc = "cdn-lfs.huggingface.co"\nmirror-scheme = "http"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f'mirrors-path = ["{mirrors}"]\n\n[accessibility]\noffline = true\n'
    )
    log = root / "olah.log"
    exe = REPO_ROOT / ".venv-olah" / "bin" / "olah-cli"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "-c", str(root / "olah.toml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: (
                requests.get(f"{url}/api/models/none/none/revision/main", timeout=2).status_code
                < 500
            ),
            "olah",
            log,
        )
        yield Service(url, root, proc, {"HF_ENDPOINT": url})
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def nginx_static(docroot: Path) -> Iterator[Service]:
    """Real nginx serving ``docroot`` on loopback (Range requests included)."""
    root = Path(tempfile.mkdtemp(prefix="ag-ngx-", dir="/tmp"))
    port = free_port()
    (root / "nginx.conf").write_text(
        f"daemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\nworker_processes 1;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + "events { worker_connections 64; }\n"
        "http {\n"
        f"  access_log {root}/access.log;\n"
        f"  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n"
        f"  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi;\n"
        f"  scgi_temp_path {root}/scgi;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {docroot}; }}\n"
        "}\n"
    )
    log = root / "stderr.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: requests.get(url, timeout=2).status_code < 500, "nginx", log)
        yield Service(url, root, proc, {})
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def git_commit_repo(
    repo: Path,
    files: dict[str, bytes],
    lfs: set[str],
    message: str,
    *,
    lfs_override: dict[str, bytes] | None = None,
) -> str:
    """Write ``files`` into a git repo olah can serve; LFS files become pointer blobs with
    their content under .git/lfs/objects (what ``git lfs`` would store). Returns the commit."""
    import hashlib

    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    for name, data in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name in lfs:
            oid = hashlib.sha256(data).hexdigest()
            obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes((lfs_override or {}).get(name, data))
            path.write_text(
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
            )
        else:
            path.write_bytes(data)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", message], check=True, env=env)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()


def registry_digest(ref: str, creds: str | None = None) -> str | None:
    """The manifest digest ``ref`` resolves to in a plain-HTTP test registry (asked with
    skopeo, an independent client), or None when it does not resolve."""
    cmd = ["skopeo", "inspect", "--tls-verify=false"]
    if creds:
        cmd += ["--creds", creds]
    r = subprocess.run([*cmd, f"docker://{ref}"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return None
    return str(json.loads(r.stdout)["Digest"])
