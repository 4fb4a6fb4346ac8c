"""The model pushed to a registry as it streams out of the verified bundle, in one form.

* ``oci``: an OCI artifact (``artifactType: application/vnd.airgap.model.v1``, the empty
  config), one layer per file, each titled with its path under the model directory
  (``org.opencontainers.image.title``, as ``oras pull`` names files). A layer's digest is
  the file's signed sha256, so the manifest is known before a byte is sent.
* ``modelcar``: an image whose last layer is one uncompressed tar of
  ``/models/<name>/…`` (directories 0755, files 0644, owner 0, the bundle's time), on top
  of the vLLM image's layers. Those are already in the registry (mounted, not sent
  again; the node shares them with the vLLM container), and they are what makes the
  modelcar runnable: the init container copies the model with the vLLM image's own
  Python, since a layer of model files alone has no program to run. As an image volume
  the model is at ``models/<name>`` in it. The layer's digest is computed as it streams
  (a chunked upload: ``POST``, one streamed ``PATCH``, then ``PUT ?digest=``).

Bytes reach a feed only after their chunk matched its signed hash (the sink asks for
``verified_only``); manifests go last, from :meth:`finish`, after the whole bundle
verified. Nothing is written to local disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin

from bundler.bundle.index import FileEntry, ImageEntry
from bundler.errors import InstallError
from bundler.oci.media import LAYER_TAR, OCI_CONFIG, OCI_MANIFEST
from bundler.oci.ref import ImageRef
from bundler.oci.registry import Registry

MODEL_ARTIFACT_TYPE = "application/vnd.airgap.model.v1"
MODEL_FILE_MEDIA_TYPE = "application/vnd.airgap.model.file.v1"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
TITLE = "org.opencontainers.image.title"
_DOCKER_LAYERS = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": LAYER_TAR + "+gzip",
    "application/vnd.docker.image.rootfs.diff.tar": LAYER_TAR,
}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class _Stream:
    """One upload in a thread, fed through a bounded queue (the reader waits for it)."""

    _END = object()
    _ABORT = object()

    def __init__(self, send: Callable[[Iterator[bytes]], None], name: str) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), name=name, daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        while (item := self._q.get()) is not self._END:
            if item is self._ABORT:
                raise InstallError("model upload aborted: the bundle failed verification")
            yield item

    def _run(self, send: Callable[[Iterator[bytes]], None]) -> None:
        try:
            send(self._chunks())
        except BaseException as e:
            self._error = e
            with contextlib.suppress(queue.Empty):
                while True:  # unblock the producer
                    self._q.get_nowait()

    def put(self, data: object) -> None:
        while self._error is None:
            try:
                self._q.put(data, timeout=0.5)
                return
            except queue.Full:
                continue
        raise self._error

    def close(self) -> None:
        if self._error is None:
            self.put(self._END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._q.put(self._ABORT, timeout=5)
            self._thread.join(timeout=60)


class ModelFeed:
    """Common to both forms: which bundle files are the model, where it goes."""

    form = ""

    def __init__(
        self, registry: Registry, repository: str, tag: str, files: list[FileEntry], root: str
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.root = root  # models/<served_name>/
        self.files = [f for f in files if f.path.startswith(root)]
        self.size = sum(f.size for f in self.files)
        self.replace_tags = False

    def wants(self, entry: FileEntry) -> bool:
        return entry.path.startswith(self.root)

    @property
    def ref(self) -> str:
        return f"{self.registry.host}/{self.repository}:{self.tag}"

    def _put_small_blob(self, digest: str, data: bytes) -> None:
        if not self.registry.has_blob(self.repository, digest):
            self.registry.upload(self.repository, digest, iter([data]))

    def _put_manifest(self, manifest: bytes) -> str:
        digest = _sha(manifest)
        have = self.registry.manifest_digest(self.repository, self.tag, OCI_MANIFEST)
        if have is not None and have != digest and not self.replace_tags:
            raise InstallError(
                f"{self.ref} names another manifest ({have}) than this bundle's model "
                f"({digest}); airgap does not overwrite it",
                hint="Remove that tag in the registry, or pass --replace-tags.",
            )
        got = self.registry.put_manifest(self.repository, self.tag, OCI_MANIFEST, manifest)
        if got and got != digest:
            raise InstallError(
                f"{self.ref}: the registry stored {got} for the model's manifest {digest}"
            )
        return digest

    def open_file(self, entry: FileEntry) -> None:
        raise NotImplementedError

    def write(self, data: memoryview) -> None:
        raise NotImplementedError

    def close_file(self, entry: FileEntry) -> None:
        raise NotImplementedError

    def finish(self) -> str:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class ArtifactFeed(ModelFeed):
    """``--model-artifact oci``: one blob per file, uploaded with its signed digest."""

    form = "oci"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._stream: _Stream | None = None

    def manifest(self) -> bytes:
        layers = [
            {
                "mediaType": MODEL_FILE_MEDIA_TYPE,
                "digest": "sha256:" + f.sha256,
                "size": f.size,
                "annotations": {TITLE: f.path[len(self.root) :]},
            }
            for f in self.files
        ]
        return canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": MODEL_ARTIFACT_TYPE,
                "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": _sha(EMPTY_CONFIG), "size": 2},
                "layers": layers,
                "annotations": {"org.airgap.model.root": self.root.rstrip("/")},
            }
        )

    def open_file(self, entry: FileEntry) -> None:
        digest = "sha256:" + entry.sha256
        self._stream = None
        if self.registry.has_blob(self.repository, digest):
            return  # verified all the same; not sent again

        def send(chunks: Iterator[bytes]) -> None:
            self.registry.upload(self.repository, digest, chunks)

        self._stream = _Stream(send, "model-push")

    def write(self, data: memoryview) -> None:
        if self._stream is not None:
            self._stream.put(bytes(data))

    def close_file(self, entry: FileEntry) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()

    def finish(self) -> str:
        self._put_small_blob(_sha(EMPTY_CONFIG), EMPTY_CONFIG)
        for f in self.files:  # each verified and pushed (or already there) during the pass
            if not self.registry.has_blob(self.repository, "sha256:" + f.sha256):
                raise InstallError(f"{self.ref}: blob of {f.path} missing after the upload")
        return self._put_manifest(self.manifest())

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.abort()


class ModelcarFeed(ModelFeed):
    """``--model-artifact modelcar``: the model as one uncompressed tar layer, streamed."""

    form = "modelcar"

    def __init__(
        self,
        registry: Registry,
        repository: str,
        tag: str,
        files: list[FileEntry],
        root: str,
        *,
        layer_root: str,
        base: ImageEntry,
        base_repository: str,
        mtime: int,
    ) -> None:
        super().__init__(registry, repository, tag, files, root)
        self.layer_root = layer_root  # models/<slug>
        self.base = base
        self.base_repository = base_repository
        self.mtime = mtime
        self._stream: _Stream | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._dirs: set[str] = set()
        self._location: str | None = None

    def _send(self, chunks: Iterator[bytes]) -> None:
        r = self.registry.request("POST", self.registry._url(self.repository, "blobs", "uploads/"))
        self.registry._check(r, 202)
        location = urljoin(self.registry.base, r.headers["Location"])
        r = self.registry.request(
            "PATCH",
            location,
            data=chunks,
            headers={"Content-Type": "application/octet-stream"},
            timeout=3600,
        )
        self.registry._check(r, 202)
        self._location = urljoin(self.registry.base, r.headers["Location"])

    def _emit(self, data: bytes) -> None:
        assert self._stream is not None
        self._hash.update(data)
        self._size += len(data)
        self._stream.put(data)

    def _header(self, name: str, size: int, directory: bool) -> bytes:
        info = tarfile.TarInfo(name)
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if directory:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size, info.mode = size, 0o644
        return info.tobuf(tarfile.PAX_FORMAT)

    def open_file(self, entry: FileEntry) -> None:
        if self._stream is None:
            self._stream = _Stream(self._send, "modelcar-push")
        rel = entry.path[len(self.root) :]
        name = f"{self.layer_root}/{rel}"
        parts = name.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i]) + "/"
            if d not in self._dirs:
                self._dirs.add(d)
                self._emit(self._header(d, 0, True))
        self._emit(self._header(name, entry.size, False))

    def write(self, data: memoryview) -> None:
        self._emit(bytes(data))

    def close_file(self, entry: FileEntry) -> None:
        pad = -entry.size % 512
        if pad:
            self._emit(b"\0" * pad)

    def finish(self) -> str:
        if self._stream is None:
            raise InstallError(f"{self.ref}: the bundle carried no model file under {self.root}")
        self._emit(b"\0" * 1024)
        self._stream.close()
        layer = "sha256:" + self._hash.hexdigest()
        assert self._location is not None
        sep = "&" if "?" in self._location else "?"
        self.registry._check(
            self.registry.request("PUT", f"{self._location}{sep}digest={layer}"), 201
        )
        # the base's layers (pushed with the images, or there already) into this repository
        for la in self.base.layers:
            if not self.registry.has_blob(self.repository, la.digest) and not self.registry.mount(
                self.repository, la.digest, self.base_repository
            ):
                raise InstallError(
                    f"{self.ref}: cannot mount {la.digest} from {self.base_repository}"
                )
        base_ref = ImageRef(self.registry.host, self.base_repository, None, None)
        cfg = json.loads(self.registry.blob_bytes(base_ref, self.base.config_digest))
        cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(layer)
        if isinstance(cfg.get("history"), list):
            cfg["history"].append({"created_by": f"airgap modelcar: /{self.layer_root}"})
        labels = cfg.setdefault("config", {}).get("Labels") or {}
        cfg["config"]["Labels"] = {**labels, "org.airgap.model": self.layer_root}
        config = canonical(cfg)
        self._put_small_blob(_sha(config), config)
        layers = [
            {
                "mediaType": _DOCKER_LAYERS.get(la.media_type, la.media_type),
                "digest": la.digest,
                "size": la.size,
            }
            for la in self.base.layers
        ]
        layers.append({"mediaType": LAYER_TAR, "digest": layer, "size": self._size})
        manifest = canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": _sha(config), "size": len(config)},
                "layers": layers,
                "annotations": {
                    "org.opencontainers.image.base.digest": self.base.manifest_digest,
                    "org.airgap.model.root": self.layer_root,
                },
            }
        )
        return self._put_manifest(manifest)

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.abort()
