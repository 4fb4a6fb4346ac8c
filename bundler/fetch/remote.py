"""Remote sources: resolve them to pins (the lock), then fetch exactly those pins.

``resolve`` asks each upstream what the manifest's names mean today (a commit, a
manifest digest, published file digests) without downloading weights or layers.
``fetch`` downloads what the lock names into the cache, in parallel, verified, and
returns bundle payloads that point at the cached files (their chunk digests are
already known, so writing the bundle is a plain copy).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from pydantic import ValidationError

from bundler import env, safejson
from bundler.bundle.index import BLOB_PREFIX, SHA256_RE, ImageEntry, Layer
from bundler.bundle.plan import Payload
from bundler.errors import FetchError
from bundler.fetch.cache import Cache
from bundler.fetch.http import Downloader, Expect
from bundler.fetch.huggingface import auth_headers, resolve_repo
from bundler.fetch.options import FetchOptions as FetchOptions
from bundler.fmt import human
from bundler.fsutil import free_space, naming
from bundler.hashing import FileRange, hash_sources
from bundler.manifest import ImageArchive, Manifest
from bundler.oci.ref import ImageRef, parse_ref
from bundler.oci.registry import RegistryClient
from bundler.pins import (
    ElasticFilePin,
    HfFile,
    HfModelPin,
    ImagePin,
    LayerPin,
    Pins,
    RegistryImagePin,
    RemoteElasticPin,
)

logger = logging.getLogger(__name__)
ELSER_URL = "https://ml-models.elastic.co"
PRODUCT_DOCS_URL = "https://kibana-knowledge-base-artifacts.elastic.co"
# Bounds for the files fetched without a pin (read to pin what they name): ELSER's
# metadata is a few hundred bytes, its vocabulary under 1 MiB.
META_MAX = 1024 * 1024
VOCAB_MAX = 64 * 1024 * 1024


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

    def resolve(self, m: Manifest) -> Pins:
        """The pins of every remote source of ``m`` (no big downloads).

        Raises:
            FetchError: an upstream cannot be reached or does not have what is named.
        """
        model = None
        if m.model.repo is not None:
            repo = resolve_repo(m.model.repo, m.model.revision, m.model.include, m.model.exclude)
            model = HfModelPin(
                repo=repo.repo,
                revision=repo.revision,
                commit=repo.commit,
                gated=repo.gated,
                files=tuple(
                    HfFile(path=f.path, size=f.size, blob_id=f.blob_id, sha256=f.sha256 or None)
                    for f in repo.files
                ),
            )
        images: dict[str, ImagePin] = {}
        for role, source in m.images.items():
            if isinstance(source, ImageArchive) or self.opts.images_from == "docker":
                continue
            client, ref = self._client(source)
            img = client.resolve(ref, m.platform)
            # keep the small documents: the build needs them and they are pinned now
            for data in (img.manifest, client.blob_bytes(ref, img.config_digest)):
                self._keep(data)
            images[role] = RegistryImagePin(
                ref=source,
                manifest_digest=img.manifest_digest,
                media_type=img.manifest_media_type,
                config_digest=img.config_digest,
                config_size=img.config_size,
                platform=img.platform,
                layers=_layer_pins(source, img.layers),
            )
        elastic = self._resolve_elastic(m)
        return Pins(
            model=model,
            images=images or None,
            elastic=RemoteElasticPin(files=tuple(elastic)) if elastic else None,
        )

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

    def _resolve_elastic(self, m: Manifest) -> list[ElasticFilePin]:
        e = m.elastic
        if e is None or e.source_dir is not None:
            return []
        out: list[ElasticFilePin] = []
        elser_base = (e.elser_url or ELSER_URL).rstrip("/")
        for model_id in e.model_ids():
            meta_url = f"{elser_base}/{model_id}.metadata.json"
            meta_file = self.downloader.fetch(
                meta_url,
                Expect(max_size=META_MAX),
                key=f"url-{meta_url}",
                what=f"ELSER {model_id} metadata",
            )
            try:
                meta = safejson.obj(safejson.loads(meta_file.path.read_bytes()), "metadata")
                pt_sha = safejson.field(meta, "sha256", str, "metadata")
                pt_size = safejson.count(safejson.field(meta, "size", int, "metadata"), "size")
                if not SHA256_RE.match(pt_sha):
                    raise safejson.JSONInputError(f"metadata.sha256: {pt_sha[:80]!r} is not hex")
            except safejson.JSONInputError as err:
                raise FetchError(
                    f"ELSER {model_id}: metadata lacks a valid sha256/size ({err})",
                    url=meta_url,
                    hint="Point elastic.elser_url at Elastic's model repository or a faithful "
                    "mirror of it.",
                ) from err
            vocab_url = f"{elser_base}/{model_id}.vocab.json"
            vocab = self.downloader.fetch(
                vocab_url,
                Expect(max_size=VOCAB_MAX),
                key=f"url-{vocab_url}",
                what=f"ELSER {model_id} vocabulary",
            )
            try:
                pt = ElasticFilePin(
                    name=f"elser/{model_id}.pt",
                    url=f"{elser_base}/{model_id}.pt",
                    size=pt_size,
                    sha256=pt_sha,
                )
            except ValidationError as err:
                raise FetchError(
                    f"ELSER {model_id}: metadata has an invalid sha256/size", url=meta_url
                ) from err
            out += [
                ElasticFilePin(
                    name=f"elser/{model_id}.metadata.json",
                    url=meta_url,
                    size=meta_file.size,
                    sha256=meta_file.sha256,
                ),
                pt,
                ElasticFilePin(
                    name=f"elser/{model_id}.vocab.json",
                    url=vocab_url,
                    size=vocab.size,
                    sha256=vocab.sha256,
                ),
            ]
        if e.product_docs is not None:
            docs_base = (e.product_docs_url or PRODUCT_DOCS_URL).rstrip("/")
            # product docs, OpenAPI specs, Security Labs and their E5 variants: one
            # repository, the names Kibana asks it for
            for name in e.product_docs.artifact_names():
                url = f"{docs_base}/{quote(name)}"
                got = self.downloader.fetch(url, Expect(), key=f"url-{url}", what=name)
                out.append(
                    ElasticFilePin(
                        name=f"product-docs/{name}", url=url, size=got.size, sha256=got.sha256
                    )
                )
        return out

    # -- fetch -----------------------------------------------------------------------

    def downloads(self, m: Manifest, pins: Pins) -> list[Download]:
        """Everything the pins name, as downloads (cached ones included)."""
        out: list[Download] = []
        model = pins.hf_model
        if model is not None:
            from bundler.fetch.huggingface import ResolvedRepo

            repo = ResolvedRepo(model.repo, model.revision, model.commit, [], env.hf_endpoint())
            for f in model.files:
                out.append(
                    Download(
                        f"{model.repo}/{f.path}",
                        repo.url(f.path),
                        _expect(f),
                        f.sha256 or f"gitblob-{f.blob_id}",
                        auth_headers(),
                    )
                )
        for role, img in pins.registry_images():
            client, ref = self._client(img.ref)
            for layer in img.layers:
                digest = layer.digest
                out.append(
                    Download(
                        f"{role} layer {digest[:19]}",
                        client.blob_url(ref.repository, digest),
                        Expect(size=layer.size, sha256=digest[7:]),
                        digest[7:],
                        session=client.session,
                    )
                )
        for e in pins.elastic_files:
            out.append(Download(e.name, e.url, Expect(size=e.size, sha256=e.sha256), e.sha256))
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

        # The first failure (or Ctrl-C) stops the downloads still running at once, not
        # after their last byte; what they got stays in partial/ for the next run.
        cancel = self.downloader.cancel
        cancel.clear()
        pool = ThreadPoolExecutor(max_workers=max(1, self.opts.jobs))
        futures = [pool.submit(one, d) for d in todo]
        try:
            return sum(f.result() for f in as_completed(futures))
        except BaseException:
            cancel.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            cancel.clear()

    def payloads(self, m: Manifest, pins: Pins) -> tuple[list[Payload], list[ImageEntry]]:
        """Bundle payloads pointing at cached, verified files (call after fetch_all)."""
        payloads: list[Payload] = []
        images: list[ImageEntry] = []
        model = pins.hf_model
        if model is not None:
            for f in model.files:
                path = self._cached(_expect(f), f.path)
                payloads.append(
                    Payload(
                        f"models/{m.model.served_name}/{f.path}",
                        FileRange(path, 0, f.size),
                        expected_sha256=f.sha256,
                        origin=str(path),
                    )
                )
        for role, img in pins.registry_images():
            blobs: list[tuple[str, int | None]] = [(img.manifest_digest, None)]
            blobs += [(img.config_digest, None)]
            blobs += [(la.digest, la.size) for la in img.layers]
            for digest, size in blobs:
                path = self._cached(Expect(size=size, sha256=digest[7:]), digest)
                payloads.append(
                    Payload(
                        BLOB_PREFIX + digest[7:],
                        FileRange(path, 0, path.stat().st_size),
                        expected_sha256=digest[7:],
                        origin=img.ref,
                    )
                )
            ref = parse_ref(img.ref)
            images.append(
                ImageEntry(
                    role=role,
                    ref=img.ref if ref.tag else f"{ref.registry}/{ref.repository}",
                    tags=[],
                    platform=img.platform,
                    manifest_digest=img.manifest_digest,
                    manifest_media_type=img.media_type,
                    config_digest=img.config_digest,
                    layers=[
                        Layer(digest=la.digest, size=la.size, media_type=la.media_type)
                        for la in img.layers
                    ],
                )
            )
        for e in pins.elastic_files:
            path = self._cached(Expect(size=e.size, sha256=e.sha256), e.name)
            payloads.append(
                Payload(
                    f"elastic/{e.name}",
                    FileRange(path, 0, e.size),
                    expected_sha256=e.sha256,
                    origin=e.url,
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


def _expect(f: HfFile) -> Expect:
    if f.sha256:
        return Expect(size=f.size, sha256=f.sha256)
    return Expect(size=f.size, git_blob=f.blob_id)


def _layer_pins(ref: str, layers: list[dict[str, Any]]) -> tuple[LayerPin, ...]:
    try:
        return tuple(LayerPin.model_validate(la) for la in layers)
    except ValidationError as e:
        raise FetchError(
            f"{ref}: the registry's manifest lists an invalid layer ({e.errors()[0]['msg']})",
            hint="The registry serves a malformed image manifest; check the image upstream.",
        ) from e
