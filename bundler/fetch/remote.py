"""Remote sources: resolve them to pins (the lock), then fetch exactly those pins.

``resolve`` asks each upstream what the manifest's names mean today (a commit, a
manifest digest, published file digests) without downloading weights or layers.
``fetch`` downloads what the lock names into the cache, in parallel, verified, and
returns bundle payloads that point at the cached files (their chunk digests are
already known, so writing the bundle is a plain copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from bundler import env
from bundler.bundle.index import BLOB_PREFIX, ImageEntry, Layer
from bundler.bundle.plan import Payload
from bundler.errors import FetchError
from bundler.fetch.cache import Cache
from bundler.fetch.http import Downloader, Expect
from bundler.fetch.huggingface import auth_headers, resolve_repo
from bundler.fmt import human
from bundler.fsutil import free_space, naming
from bundler.hashing import FileRange, hash_sources
from bundler.manifest import ImageArchive, Manifest
from bundler.oci.ref import ImageRef, parse_ref
from bundler.oci.registry import RegistryClient

logger = logging.getLogger(__name__)
ELSER_URL = "https://ml-models.elastic.co"
PRODUCT_DOCS_URL = "https://kibana-knowledge-base-artifacts.elastic.co"


@dataclass(frozen=True)
class FetchOptions:
    jobs: int = 4
    insecure_registries: frozenset[str] = frozenset()
    registry_ca: Path | None = None
    images_from: str = "registry"  # or "docker": export through the local engine
    docker_url: str | None = None


@dataclass
class Download:
    what: str
    url: str
    expect: Expect
    key: str
    headers: dict[str, str] = field(default_factory=dict)
    session: requests.Session | None = None


class Fetcher:
    def __init__(
        self,
        cache: Cache,
        chunk_size: int,
        opts: FetchOptions,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.cache = cache
        self.opts = opts
        self.downloader = Downloader(
            cache,
            chunk_size,
            retries=env.fetch_retries(),
            backoff=env.fetch_backoff(),
            read_timeout=env.fetch_read_timeout(),
            progress=progress,
        )
        self._clients: dict[str, RegistryClient] = {}

    def _client(self, ref: str) -> tuple[RegistryClient, ImageRef]:
        parsed = parse_ref(ref)
        if ref not in self._clients:
            self._clients[ref] = RegistryClient(
                parsed.registry,
                insecure=parsed.endpoint in self.opts.insecure_registries,
                ca=self.opts.registry_ca,
            )
        return self._clients[ref], parsed

    # -- resolve ---------------------------------------------------------------------

    def resolve(self, m: Manifest) -> dict[str, Any]:
        """The lock sections of every remote source of ``m`` (pins, no big downloads).

        Raises:
            FetchError: an upstream cannot be reached or does not have what is named.
        """
        lock: dict[str, Any] = {}
        if m.model.repo is not None:
            repo = resolve_repo(m.model.repo, m.model.revision, m.model.include, m.model.exclude)
            lock["model"] = {
                "source": "huggingface",
                "repo": repo.repo,
                "revision": repo.revision,
                "commit": repo.commit,
                "files": [
                    {
                        "path": f.path,
                        "size": f.size,
                        "blob_id": f.blob_id,
                        **({"sha256": f.sha256} if f.sha256 else {}),
                    }
                    for f in repo.files
                ],
            }
        images = {}
        for role, source in m.images.items():
            if isinstance(source, ImageArchive) or self.opts.images_from == "docker":
                continue
            client, ref = self._client(source)
            img = client.resolve(ref, m.platform)
            # keep the small documents: the build needs them and they are pinned now
            for data in (img.manifest, client.blob_bytes(ref, img.config_digest)):
                self._keep(data)
            images[role] = {
                "source": "registry",
                "ref": source,
                "manifest_digest": img.manifest_digest,
                "media_type": img.manifest_media_type,
                "config_digest": img.config_digest,
                "config_size": img.config_size,
                "platform": img.platform,
                "layers": img.layers,
            }
        if images:
            lock["images"] = images
        elastic = self._resolve_elastic(m)
        if elastic:
            lock["elastic"] = {"files": elastic}
        return lock

    def _keep(self, data: bytes) -> None:
        """Put small, already verified documents (manifests, configs) into the cache."""
        sha = hashlib.sha256(data).hexdigest()
        with self.cache.locked(sha):
            if self.cache.has(sha, len(data)):
                return
            partial = self.cache.partial(sha)
            with naming(partial):
                partial.write_bytes(data)
            digests = hash_sources([data], self.downloader.chunk_size)[0]
            self.cache.commit(partial, sha, digests, self.downloader.chunk_size)

    def _resolve_elastic(self, m: Manifest) -> list[dict[str, Any]]:
        e = m.elastic
        if e is None or e.source_dir is not None:
            return []
        out = []
        elser_base = (e.elser_url or ELSER_URL).rstrip("/")
        for model_id in e.elser:
            meta_url = f"{elser_base}/{model_id}.metadata.json"
            meta_file = self.downloader.fetch(
                meta_url, Expect(), key=f"url-{meta_url}", what=f"ELSER {model_id} metadata"
            )
            try:
                meta = json.loads(meta_file.path.read_text())
                pt_sha, pt_size = str(meta["sha256"]), int(meta["size"])
            except (ValueError, KeyError, TypeError) as err:
                raise FetchError(
                    f"ELSER {model_id}: metadata lacks sha256/size ({err})", url=meta_url
                ) from err
            vocab_url = f"{elser_base}/{model_id}.vocab.json"
            vocab = self.downloader.fetch(
                vocab_url, Expect(), key=f"url-{vocab_url}", what=f"ELSER {model_id} vocabulary"
            )
            out += [
                {
                    "name": f"elser/{model_id}.metadata.json",
                    "url": meta_url,
                    "size": meta_file.size,
                    "sha256": meta_file.sha256,
                },
                {
                    "name": f"elser/{model_id}.pt",
                    "url": f"{elser_base}/{model_id}.pt",
                    "size": pt_size,
                    "sha256": pt_sha,
                },
                {
                    "name": f"elser/{model_id}.vocab.json",
                    "url": vocab_url,
                    "size": vocab.size,
                    "sha256": vocab.sha256,
                },
            ]
        if e.product_docs is not None:
            docs_base = (e.product_docs_url or PRODUCT_DOCS_URL).rstrip("/")
            for product in e.product_docs.products:
                name = f"kb-product-doc-{product}-{e.product_docs.version}.zip"
                url = f"{docs_base}/{quote(name)}"
                got = self.downloader.fetch(
                    url, Expect(), key=f"url-{url}", what=f"product docs {product}"
                )
                out.append(
                    {
                        "name": f"product-docs/{name}",
                        "url": url,
                        "size": got.size,
                        "sha256": got.sha256,
                    }
                )
        return out

    # -- fetch -----------------------------------------------------------------------

    def downloads(self, m: Manifest, lock: dict[str, Any]) -> list[Download]:
        """Everything the lock names, as downloads (cached ones included)."""
        out: list[Download] = []
        model = lock.get("model")
        if model and model.get("source") == "huggingface":
            from bundler.fetch.huggingface import ResolvedRepo

            repo = ResolvedRepo(
                model["repo"], model["revision"], model["commit"], [], env.hf_endpoint()
            )
            for f in model["files"]:
                expect = (
                    Expect(size=f["size"], sha256=f["sha256"])
                    if f.get("sha256")
                    else Expect(size=f["size"], git_blob=f["blob_id"])
                )
                out.append(
                    Download(
                        f"{model['repo']}/{f['path']}",
                        repo.url(f["path"]),
                        expect,
                        f.get("sha256") or f"gitblob-{f['blob_id']}",
                        auth_headers(),
                    )
                )
        for role, img in (lock.get("images") or {}).items():
            client, ref = self._client(img["ref"])
            for layer in img["layers"]:
                digest = layer["digest"]
                out.append(
                    Download(
                        f"{role} layer {digest[:19]}",
                        client.blob_url(ref.repository, digest),
                        Expect(size=layer["size"], sha256=digest[7:]),
                        digest[7:],
                        session=client.session,
                    )
                )
        for f in (lock.get("elastic") or {}).get("files", []):
            out.append(
                Download(
                    f["name"], f["url"], Expect(size=f["size"], sha256=f["sha256"]), f["sha256"]
                )
            )
        return out

    def missing(self, downloads: list[Download]) -> list[Download]:
        return [d for d in downloads if self.downloader.cached(d.expect) is None]

    def fetch_all(self, downloads: list[Download]) -> int:
        """Download what is missing, ``jobs`` at a time; returns bytes transferred.

        Raises:
            FetchError: a download failed (the others that finished stay cached).
        """
        todo = self.missing(downloads)
        need = sum(d.expect.size or 0 for d in todo)
        free = free_space(self.cache.root)
        if need > free:
            raise FetchError(
                f"{self.cache.root}: no space left for the downloads: {human(need)} to "
                f"download, {human(free)} free",
                hint="Free space, or point --cache-dir at a larger disk.",
            )

        def one(d: Download) -> int:
            client = None
            if d.session is not None:
                client = next((c for c in self._clients.values() if c.session is d.session), None)

            def attempt() -> int:
                headers = dict(d.headers)
                verify: str | bool = True
                if client is not None:
                    headers.update(client.auth_headers())
                    verify = client.verify
                return self.downloader.fetch(
                    d.url,
                    d.expect,
                    key=d.key,
                    what=d.what,
                    headers=headers,
                    session=d.session,
                    verify=verify,
                ).downloaded

            try:
                return attempt()
            except FetchError as e:
                if client is None or e.status != 401:
                    raise
                client.refresh_auth(d.url)  # bearer tokens are short-lived: renew, retry once
                return attempt()

        with ThreadPoolExecutor(max_workers=max(1, self.opts.jobs)) as pool:
            return sum(pool.map(one, todo))

    def payloads(self, m: Manifest, lock: dict[str, Any]) -> tuple[list[Payload], list[ImageEntry]]:
        """Bundle payloads pointing at cached, verified files (call after fetch_all)."""
        payloads: list[Payload] = []
        images: list[ImageEntry] = []
        model = lock.get("model")
        if model and model.get("source") == "huggingface":
            for f in model["files"]:
                expect = (
                    Expect(size=f["size"], sha256=f["sha256"])
                    if f.get("sha256")
                    else Expect(size=f["size"], git_blob=f["blob_id"])
                )
                path = self._cached(expect, f["path"])
                payloads.append(
                    Payload(
                        f"models/{m.model.served_name}/{f['path']}",
                        FileRange(path, 0, f["size"]),
                        expected_sha256=f.get("sha256"),
                        origin=str(path),
                    )
                )
        for role, img in (lock.get("images") or {}).items():
            blobs = [(img["manifest_digest"], None), (img["config_digest"], None)]
            blobs += [(la["digest"], la["size"]) for la in img["layers"]]
            for digest, size in blobs:
                path = self._cached(Expect(size=size, sha256=digest[7:]), digest)
                payloads.append(
                    Payload(
                        BLOB_PREFIX + digest[7:],
                        FileRange(path, 0, path.stat().st_size),
                        expected_sha256=digest[7:],
                        origin=img["ref"],
                    )
                )
            ref = parse_ref(img["ref"])
            images.append(
                ImageEntry(
                    role=role,
                    ref=img["ref"] if ref.tag else f"{ref.registry}/{ref.repository}",
                    tags=[],
                    platform=img["platform"],
                    manifest_digest=img["manifest_digest"],
                    manifest_media_type=img["media_type"],
                    config_digest=img["config_digest"],
                    layers=[
                        Layer(digest=la["digest"], size=la["size"], media_type=la["mediaType"])
                        for la in img["layers"]
                    ],
                )
            )
        for f in (lock.get("elastic") or {}).get("files", []):
            path = self._cached(Expect(size=f["size"], sha256=f["sha256"]), f["name"])
            payloads.append(
                Payload(
                    f"elastic/{f['name']}",
                    FileRange(path, 0, f["size"]),
                    expected_sha256=f["sha256"],
                    origin=f["url"],
                )
            )
        return payloads, images

    def _cached(self, expect: Expect, what: str) -> Path:
        path = self.downloader.cached(expect)
        if path is None:
            raise FetchError(
                f"{what} is not in the cache after fetching", hint="Run the build again."
            )
        return path


def drift(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed upstream since the lock was written, one line per change."""
    lines: list[str] = []
    om, nm = old.get("model") or {}, new.get("model") or {}
    if om.get("source") == "huggingface" or nm.get("source") == "huggingface":
        if om.get("commit") != nm.get("commit"):
            lines.append(
                f"model: {nm.get('repo')}@{nm.get('revision')} now resolves to "
                f"{nm.get('commit')}, the lock has {om.get('commit')}"
            )
        of = {f["path"]: f for f in om.get("files", [])}
        nf = {f["path"]: f for f in nm.get("files", [])}
        for path in sorted(set(of) | set(nf)):
            if of.get(path) != nf.get(path):
                lines.append(
                    f"model file {path}: "
                    + ("added" if path not in of else "removed" if path not in nf else "changed")
                )
    oi, ni = old.get("images") or {}, new.get("images") or {}
    for role in sorted(set(oi) | set(ni)):
        a, b = oi.get(role, {}), ni.get(role, {})
        if a.get("manifest_digest") != b.get("manifest_digest") or a.get("ref") != b.get("ref"):
            lines.append(
                f"images.{role}: {b.get('ref')} now is {b.get('manifest_digest')}, "
                f"the lock has {a.get('ref')} = {a.get('manifest_digest')}"
            )
    oe = {f["name"]: f for f in (old.get("elastic") or {}).get("files", [])}
    ne = {f["name"]: f for f in (new.get("elastic") or {}).get("files", [])}
    for name in sorted(set(oe) | set(ne)):
        if oe.get(name, {}).get("sha256") != ne.get(name, {}).get("sha256"):
            lines.append(
                f"elastic {name}: sha256 {ne.get(name, {}).get('sha256')}, "
                f"the lock has {oe.get(name, {}).get('sha256')}"
            )
    return lines
