"""Every path under an install prefix, named once.

Under ``--prefix`` (default ``/opt/airgap``)::

    .airgap.lock                      one run at a time
    state/receipt.json                what this tool created (0600)
    state/versions.json               highest version installed per name (rollback protection)
    releases/<name>-<version>/        models/, elastic/, airgap/ (signed index), image manifests
    releases/.staging-…               a run in progress (removed on failure, or by the next run)
    current -> releases/<name>-<version>
    secrets/                          bearer-token, vllm-api-key, tls/, tls-user/,
                                      nginx/<name>/ (per-start auth file and TLS copy) (0600)
    serve/<name>/<start>/             per-start nginx.conf and product-docs listing
    serve/elastic-settings.txt        the Elastic settings an operator adds
    elastic/es-truststore.sh          the trust step for each Elasticsearch node (CA inlined)

No other module spells these names; ``tlsgen`` names the files inside ``tls/``.

:meth:`Layout.verify` checks the prefix and everything above and under it
(:mod:`.hostfs`) before a command reads or writes there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from pathlib import Path

from bundler.errors import HostStateError
from bundler.install import hostfs
from bundler.names import slug

DEFAULT_PREFIX = Path("/opt/airgap")
LOCK_FILE = ".airgap.lock"
RECEIPT_FILE = "receipt.json"
VERSIONS_FILE = "versions.json"
STAGING_PREFIX = ".staging-"


class Layout:
    """Paths under an install prefix (nothing is created by naming them)."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = Path(prefix)
        self.releases = self.prefix / "releases"
        self.state = self.prefix / "state"
        self.current = self.prefix / "current"
        self.lock_file = self.prefix / LOCK_FILE
        self.receipt_file = self.state / RECEIPT_FILE
        self.versions_file = self.state / VERSIONS_FILE
        self.secrets = self.prefix / "secrets"
        self.token_file = self.secrets / "bearer-token"  # what Kibana sends to Nginx
        self.api_key_file = self.secrets / "vllm-api-key"  # what Nginx sends to vLLM
        self.tls_dir = self.secrets / "tls"  # the CA and server certificate made here
        self.user_tls_dir = self.secrets / "tls-user"  # a copy of --tls-cert/--tls-key
        self.legacy_auth_file = self.secrets / "nginx-auth.conf"  # older airgap's one file
        self.serve = self.prefix / "serve"
        self.elastic_settings = self.serve / "elastic-settings.txt"
        self.es_truststore_script = self.prefix / "elastic" / "es-truststore.sh"
        self.es_truststores = self.state / "es-truststores.json"  # nodes done from here

    def verify(self, *, create: bool = False) -> bool:
        """Refuse a prefix that another user could change, or one with planted entries.

        The prefix and every directory above it must pass :func:`hostfs.open_dir`'s
        StrictModes rule; under it, ``releases/`` and each release, ``state/`` and its
        files, ``secrets/``, ``serve/`` and everything in them must be real directories
        and regular files that root or we own (``current`` a symbolic link), before any
        of them is read or written. Only the prefix itself is created (``create``).

        Returns:
            Whether the prefix exists (after creating it).

        Raises:
            UsageError: the prefix or a directory above it fails the StrictModes rule.
            HostStateError: something under it that airgap does not create there.
        """
        fd = hostfs.open_dir(self.prefix, create=create, strict=True, what="--prefix")
        if fd is None:
            return False
        try:
            hostfs.check_entry(fd, LOCK_FILE, self.lock_file, "file", private=True)
            hostfs.check_entry(fd, self.current.name, self.current, "link")
            for d in (self.state, self.releases, self.secrets, self.serve):
                if hostfs.check_entry(fd, d.name, d, "dir") is None:
                    continue
                sub = os.open(d.name, hostfs.DIR_FLAGS, dir_fd=fd)
                try:
                    if d == self.state:
                        for f in (self.receipt_file, self.versions_file):
                            hostfs.check_entry(sub, f.name, f, "file", private=True)
                    elif d == self.releases:
                        with os.scandir(sub) as entries:
                            names = sorted(e.name for e in entries)
                        for name in names:
                            hostfs.check_entry(sub, name, d / name, "dir")
                    else:
                        hostfs.check_tree(sub, d)
                finally:
                    os.close(sub)
        finally:
            os.close(fd)
        return True

    def remove_release_dir(self, key: str) -> None:
        """Remove ``releases/<key>`` if it is there (never through a link).

        Raises:
            HostStateError: it is not a directory (a link planted after :meth:`verify`).
        """
        path = self.release(key)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise HostStateError(
                f"{path}: a {hostfs.describe(st.st_mode)} where airgap keeps a release "
                "directory; airgap never creates one there, so the install prefix was "
                "tampered with"
            )
        shutil.rmtree(path)

    def release(self, key: str) -> Path:
        return self.releases / key

    def index_file(self, release_dir: Path) -> Path:
        """The signed index a release keeps."""
        return release_dir / "airgap" / "index.json"

    def staging(self, key: str) -> Path:
        """A fresh staging directory name for a run that installs ``key``."""
        return self.releases / f"{STAGING_PREFIX}{key}-{secrets.token_hex(6)}"

    def stale_staging(self) -> list[Path]:
        """Staging directories left by runs that did not finish."""
        if not self.releases.is_dir():
            return []
        return sorted(self.releases.glob(STAGING_PREFIX + "*"))

    def stale_temps(self) -> list[Path]:
        """Temp files of atomic writes (``.<name>.*.partial``) and of the ``current`` switch
        that a killed run left (only ever called under the prefix lock)."""
        found = [p for p in self.prefix.glob(".current.*") if p.is_symlink()]
        for d in (self.state, self.secrets, self.serve):
            if d.is_dir() and not d.is_symlink():
                found += [p for p in d.rglob(".*.partial") if p.is_file() and not p.is_symlink()]
        return sorted(found)

    def auth_dir(self, name: str) -> Path:
        """Per-start Nginx auth files and TLS copies of bundle ``name``."""
        return self.secrets / "nginx" / slug(name)

    def serve_dir(self, name: str) -> Path:
        """Per-start Nginx configurations of bundle ``name``."""
        return self.serve / slug(name)

    def switch_current(self, key: str | None) -> None:
        """Point ``current`` at ``releases/<key>`` atomically (or remove it)."""
        if key is None:
            with contextlib.suppress(FileNotFoundError):
                self.current.unlink()
            return
        tmp = self.prefix / f".current.{os.getpid()}.{secrets.token_hex(4)}"
        os.symlink(os.path.relpath(self.release(key), self.prefix), tmp)
        os.replace(tmp, self.current)
