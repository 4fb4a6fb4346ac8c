"""Make an Elasticsearch node's JVM trust our CA, for the inference endpoint's calls to vLLM.

Elasticsearch calls external inference services through the JVM's default trust store
only: there are no per-endpoint TLS settings and no way to skip verification. So, on
each node, :func:`build_truststore`:

* copies the node's bundled JDK ``cacerts`` (``<es-home>/jdk/lib/security/cacerts``, never
  changed) into ``<es-path-conf>/inference-truststore.p12`` and adds our CA, using that
  node's own ``keytool``, so the store is one the node's JVM reads and keeps every public
  root (snapshots and other outbound TLS go on working);
* writes ``<es-path-conf>/jvm.options.d/airgap-inference-truststore.options`` with the
  ``javax.net.ssl.trustStore*`` flags, mode 0640 with the config directory's group (the
  JVM of the ``elasticsearch`` user reads the password there), never world-readable.

The password protects the store's integrity, not a secret: it is random, reused on
reruns (a running JVM keeps the one it started with), and reaches keytool only through
``-storepass:file``. A stamp line in the options file records the CA's alias and the POSIX
``cksum`` of the ``cacerts`` it was built from and of the store, so a rerun with nothing
changed runs no JVM and rewrites nothing, and a changed ``cacerts`` (an Elasticsearch
upgrade) is noticed. ``es-truststore.sh`` (:mod:`.truststore_script`) does the same in
POSIX sh and writes the same files, stamp included.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bundler.errors import InstallError, UsageError
from bundler.fsutil import atomic_output, fsync_dir
from bundler.install.elastic.cacert import cksum, read_ca

STORE_NAME = "inference-truststore.p12"
OPTIONS_DIR = "jvm.options.d"
OPTIONS_NAME = "airgap-inference-truststore.options"
STAMP = "# airgap-truststore:"
HEADER = (
    "# Written by airgap (elastic-truststore or es-truststore.sh): the JVM trust store for\n"
    "# Elasticsearch's calls to inference services. Rerun it after every Elasticsearch\n"
    "# upgrade. The password protects the store's integrity; it is not a secret.\n"
)
_PASSWORD_RE = re.compile(r"^-Djavax\.net\.ssl\.trustStorePassword=([A-Za-z0-9]{16,})$")
KEYTOOL_TIMEOUT = 300


@dataclass(frozen=True)
class EsNode:
    """The paths of one Elasticsearch node that the trust step reads and writes."""

    home: Path
    path_conf: Path

    @property
    def keytool(self) -> Path:
        return self.home / "jdk" / "bin" / "keytool"

    @property
    def cacerts(self) -> Path:
        return self.home / "jdk" / "lib" / "security" / "cacerts"

    @property
    def store(self) -> Path:
        return self.path_conf / STORE_NAME

    @property
    def options_file(self) -> Path:
        return self.path_conf / OPTIONS_DIR / OPTIONS_NAME

    @classmethod
    def at(cls, es_home: Path, es_path_conf: Path) -> EsNode:
        """The node at ``es_home``/``es_path_conf`` (absolute), checked.

        Raises:
            UsageError: no bundled JDK under ``es_home``, or no config directory.
        """
        node = cls(Path(os.path.abspath(es_home)), Path(os.path.abspath(es_path_conf)))
        if not (node.keytool.is_file() and os.access(node.keytool, os.X_OK)):
            raise UsageError(
                f"{node.keytool}: no keytool (--es-home must hold the bundled JDK)",
                hint="--es-home is the Elasticsearch home with jdk/ in it "
                "(package installs: /usr/share/elasticsearch).",
            )
        if not node.cacerts.is_file():
            raise UsageError(
                f"{node.cacerts}: no cacerts in the bundled JDK",
                hint="--es-home is the Elasticsearch home with jdk/ in it "
                "(package installs: /usr/share/elasticsearch).",
            )
        if not node.path_conf.is_dir():
            raise UsageError(
                f"{node.path_conf}: not a directory",
                hint="--es-path-conf is the node's config directory, the one that holds "
                "elasticsearch.yml (package installs: /etc/elasticsearch).",
            )
        for own in (node.store, node.options_file):
            if own.is_dir() and not own.is_symlink():
                raise UsageError(
                    f"{own}: is a directory", hint="Move it away: the trust step owns that name."
                )
        return node


def stamp(alias: str, cacerts_sum: str, store_sum: str) -> str:
    return f"{STAMP} alias={alias} cacerts={cacerts_sum} store={store_sum}"


def options_text(node: EsNode, stamp_line: str, password: str) -> str:
    """The jvm.options.d file; ``es-truststore.sh`` writes the same bytes."""
    return (
        HEADER
        + stamp_line
        + "\n"
        + f"-Djavax.net.ssl.trustStore={node.store}\n"
        + "-Djavax.net.ssl.trustStoreType=PKCS12\n"
        + f"-Djavax.net.ssl.trustStorePassword={password}\n"
    )


def read_options(path: Path) -> list[str]:
    """The lines of our options file (not followed if it is a link), or [] if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # absent, or a link (ELOOP)
        return []
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        return f.read(64 * 1024).splitlines()


@dataclass(frozen=True)
class TrustStoreResult:
    store: Path
    options_file: Path
    alias: str
    fingerprint: str
    action: str  # "created", "updated" or "unchanged"
    notes: tuple[str, ...] = ()

    @property
    def restart_step(self) -> str:
        """What the operator does next on this node."""
        return UNCHANGED_STEP if self.action == "unchanged" else RESTART_STEP


UNCHANGED_STEP = (
    "Nothing changed. Restart this node only if it was not restarted since the store was "
    "written (the JVM reads the trust store when it starts)."
)
RESTART_STEP = (
    "Restart this node so its JVM reads the trust store, one node at a time (a rolling "
    "restart): set cluster.routing.allocation.enable to primaries, restart Elasticsearch "
    "(systemctl restart elasticsearch), wait until the node has rejoined, set the setting "
    "back to null, wait for green, then the next node."
)


def _keytool(node: EsNode, *args: str) -> None:
    """Run the node's keytool (English messages); passwords only ever as ``:file``."""
    cmd = [str(node.keytool), "-J-Duser.language=en", "-J-Duser.country=US", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=KEYTOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"{node.keytool}: {e}", hint="Check the node's bundled JDK.") from e
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
        raise InstallError(
            f"{node.keytool} {args[0]} failed: {' / '.join(out[-3:]) or done.returncode}",
            hint="Check --es-home (the node's bundled JDK) and --ca.",
        )


def _secret_file(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def _chgrp(path: Path, gid: int, fd: int | None = None) -> None:
    try:
        if fd is not None:
            os.fchown(fd, -1, gid)
        elif os.lstat(path).st_gid != gid:
            os.chown(path, -1, gid, follow_symlinks=False)
    except PermissionError as e:
        raise InstallError(
            f"{path}: cannot give it group {gid} (the group of the config directory)",
            hint="Run as root (or as a member of that group) on the Elasticsearch node.",
        ) from e


def _give_group(path: Path, gid: int, mode: int) -> None:
    """``mode`` and the config directory's group: the ES user must read, others never."""
    _chgrp(path, gid)
    os.chmod(path, mode)


def _other_truststores(node: EsNode) -> list[str]:
    """Other JVM option files that set a trust store (the last one read wins)."""
    found = []
    candidates = [node.path_conf / "jvm.options"]
    if node.options_file.parent.is_dir():
        candidates += sorted(node.options_file.parent.glob("*.options"))
    for path in candidates:
        if path == node.options_file or not path.is_file():
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if re.search(r"^[^#]*-Djavax\.net\.ssl\.trustStore=", text, re.MULTILINE):
            found.append(
                f"{path} also sets javax.net.ssl.trustStore; the JVM uses the last one it "
                "reads (jvm.options, then jvm.options.d in name order): keep only one"
            )
    return found


def build_truststore(es_home: Path, es_path_conf: Path, ca_file: Path) -> TrustStoreResult:
    """Build (or leave, if current) the node's inference trust store and its JVM options.

    Raises:
        UsageError: a path or the CA is not what it must be.
        InstallError: keytool failed, or the files cannot get the config dir's group.
    """
    node = EsNode.at(es_home, es_path_conf)
    ca = read_ca(ca_file)
    gid = os.stat(node.path_conf).st_gid
    notes = tuple(_other_truststores(node))
    lines = read_options(node.options_file)
    cacerts_sum = cksum(node.cacerts)
    store_link = node.store.is_symlink()
    if (
        node.store.is_file()
        and not store_link
        and stamp(ca.alias, cacerts_sum, cksum(node.store)) in lines
        and f"-Djavax.net.ssl.trustStore={node.store}" in lines
    ):
        _give_group(node.store, gid, 0o640)
        _give_group(node.options_file, gid, 0o640)
        return TrustStoreResult(
            node.store, node.options_file, ca.alias, ca.fingerprint, "unchanged", notes
        )
    old = [m.group(1) for line in lines if (m := _PASSWORD_RE.match(line))]
    # a JVM already running read the old password: keep it, so a rebuilt store still opens
    password = old[0] if old else secrets.token_hex(24)
    action = "updated" if lines or node.store.exists() or store_link else "created"
    options_dir = node.options_file.parent
    if not options_dir.is_dir():
        options_dir.mkdir(mode=0o750)
        _give_group(options_dir, gid, 0o2750)
    work = Path(tempfile.mkdtemp(prefix=".airgap-truststore.", dir=node.path_conf))
    try:
        pw = _secret_file(work, "store.pw", password)
        src_pw = _secret_file(work, "cacerts.pw", "changeit")  # the JDK's well-known one
        copy, built = work / "cacerts", work / STORE_NAME
        shutil.copyfile(node.cacerts, copy)  # keytool reads a copy; the node's stays as is
        (work / "ca.pem").write_bytes(ca.pem)
        _keytool(
            node, "-importkeystore", "-noprompt", "-srckeystore", str(copy),
            "-srcstorepass:file", str(src_pw), "-destkeystore", str(built),
            "-deststoretype", "PKCS12", "-deststorepass:file", str(pw),
        )  # fmt: skip
        _keytool(
            node, "-importcert", "-noprompt", "-alias", ca.alias, "-file", str(work / "ca.pem"),
            "-keystore", str(built), "-storetype", "PKCS12", "-storepass:file", str(pw),
        )  # fmt: skip
        _give_group(built, gid, 0o640)
        with open(built, "rb+") as f:
            os.fsync(f.fileno())
        text = options_text(node, stamp(ca.alias, cacerts_sum, cksum(built)), password)
        os.rename(built, node.store)  # replaces a link at that name, never follows it
        fsync_dir(node.path_conf)
        with atomic_output(node.options_file, 0o640) as out:
            _chgrp(node.options_file, gid, out.fileno())
            out.write(text.encode())
        fsync_dir(options_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return TrustStoreResult(node.store, node.options_file, ca.alias, ca.fingerprint, action, notes)
