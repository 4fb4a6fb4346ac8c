"""One OCI registry client (the distribution spec, with requests) for pull and push.

Authentication is the same both ways: basic credentials from Docker's
``config.json`` (``auths``), sent up front, and the bearer-token flow a registry
announces in ``WWW-Authenticate`` (a new token whenever a request's scope needs one).
Plain HTTP only for loopback registries or ones the operator names (``--insecure-
registry`` when fetching, ``--registry-insecure`` when pushing), as Docker does.

Pull: a tag resolves to a manifest digest; a multi-arch index resolves to the manifest
for the bundle's platform; manifests and small blobs are checked against their digest
(layers are fetched by the resumable downloader with :meth:`blob_url` and
:meth:`auth_headers`). Push: blobs are uploaded monolithically (chunked encoding),
mounted from another repository when the registry already has them, manifests last.
Pull errors are :class:`FetchError`, push errors :class:`InstallError`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from bundler import env, net, safejson
from bundler.errors import AirgapError, FetchError, InstallError, UsageError
from bundler.oci.auth import docker_config_auth
from bundler.oci.media import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMAGE_INDEXES,
    IMAGE_MANIFESTS,
    OCI_INDEX,
    OCI_MANIFEST,
    platform_matches,
    platform_of,
)
from bundler.oci.ref import DOCKER_HUB, ImageRef, is_loopback

logger = logging.getLogger(__name__)
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
MAX_MANIFEST = 4 * 1024 * 1024
_LOGIN_HINT = "`docker login` the registry (~/.docker/config.json, or DOCKER_CONFIG)."


@dataclass
class ResolvedImage:
    ref: ImageRef
    manifest_digest: str
    manifest_media_type: str
    manifest: bytes
    config_digest: str
    config_size: int
    layers: list[dict[str, Any]] = field(default_factory=list)  # digest, size, mediaType
    platform: str = ""


def _dropped(e: requests.RequestException) -> bool:
    """A connection that was made and then broke or stalled (worth another try)."""
    if isinstance(e, requests.ReadTimeout | requests.exceptions.ChunkedEncodingError):
        return True
    text = str(e)
    return (
        isinstance(e, requests.ConnectionError)
        and not isinstance(e, requests.ConnectTimeout)
        and "Connection refused" not in text
        and "Name or service not known" not in text
        and "Temporary failure in name resolution" not in text
    )


class RegistryClient:
    """One registry host. ``error`` is the family its failures raise (fetch or install)."""

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        ca: Path | None = None,
        session: requests.Session | None = None,
        error: type[FetchError] | type[InstallError] = FetchError,
    ) -> None:
        self.registry = registry  # as addressed (docker.io, host:port)
        self.host = DOCKER_HUB if registry == "docker.io" else registry
        self.scheme = "http" if (insecure or is_loopback(self.host)) else "https"
        self.base = f"{self.scheme}://{self.host}/v2/"
        self.session = session or requests.Session()
        # Passed on every request: a session-level verify loses to REQUESTS_CA_BUNDLE.
        self.verify: str | bool = str(ca) if ca is not None else True
        self.error = error
        self._token: str | None = None
        self._basic = docker_config_auth(registry)

    # -- transport and authentication ---------------------------------------------------

    def _fail(
        self, message: str, *, url: str, status: int | None = None, hint: str | None = None
    ) -> AirgapError:
        if self.error is FetchError:
            return FetchError(message, url=url, status=status, hint=hint)
        return InstallError(f"{url}: {message}", hint=hint)

    def auth_headers(self) -> dict[str, str]:
        """Headers for downloads outside :meth:`request` (once a request got a token)."""
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        if self._basic:
            raw = f"{self._basic[0]}:{self._basic[1]}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _login(self, challenge: str, url: str) -> bool:
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            if not self._basic:
                raise self._fail("registry needs a login", url=url, status=401, hint=_LOGIN_HINT)
            return False  # basic credentials were sent already, and refused
        if scheme.lower() != "bearer":
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.pop("realm", None)
        if not realm:
            return False
        timeout = env.net_timeout()
        try:
            r = self.session.get(
                realm,
                params=fields,
                auth=self._basic,
                timeout=(min(15, timeout), timeout),
                verify=self.verify,
            )
        except requests.RequestException as e:
            raise self._unreachable(e, realm, "token service", timeout) from e
        if r.status_code != 200:
            raise self._fail(
                f"token service answered HTTP {r.status_code}",
                url=realm,
                status=r.status_code,
                hint=_LOGIN_HINT + " Or check the image name.",
            )
        try:
            body = safejson.loads(r.content)
        except ValueError as e:
            raise self._fail("token service answered no JSON", url=realm) from e
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        self._token = str(token) if token else None
        return bool(self._token)

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        """One request, logging in once when the registry asks (a body that is an
        iterator cannot be sent twice: such requests follow one that logged in).

        A GET or HEAD that meets a 5xx/429 answer, a dropped connection or a read
        timeout is sent again (``AIRGAP_FETCH_RETRIES``, with backoff); a refused
        connection or an unknown host is not (it will not get better in seconds).
        """
        limit = env.net_timeout()
        timeout = kw.pop("timeout", (min(15, limit), limit))
        extra = kw.pop("headers", {})
        tries = 1 + (env.fetch_retries() if method in ("GET", "HEAD") else 0)
        for attempt in range(tries):
            if attempt:
                time.sleep(env.fetch_backoff() * 2 ** (attempt - 1))
            last = attempt + 1 == tries
            try:
                r = self.session.request(
                    method,
                    url,
                    headers={**extra, **self.auth_headers()},
                    timeout=timeout,
                    verify=self.verify,
                    **kw,
                )
                if r.status_code == 401 and self._login(r.headers.get("WWW-Authenticate", ""), url):
                    r.close()
                    r = self.session.request(
                        method,
                        url,
                        headers={**extra, **self.auth_headers()},
                        timeout=timeout,
                        verify=self.verify,
                        **kw,
                    )
            except requests.RequestException as e:
                if not last and _dropped(e):
                    logger.info("%s %s: %s; retrying", method, url, type(e).__name__)
                    continue
                raise self._unreachable(e, url, f"registry ({method})", limit) from e
            if not last and (r.status_code >= 500 or r.status_code == 429):
                logger.info("%s %s: HTTP %d; retrying", method, url, r.status_code)
                r.close()
                continue
            return r
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _unreachable(
        self, e: requests.RequestException, url: str, what: str, timeout: float
    ) -> AirgapError:
        """No answer from the registry (or its token service), named, with the fix."""
        pulling = self.error is FetchError
        insecure = "--insecure-registry" if pulling else "--registry-insecure"
        return self._fail(
            f"{what} unreachable: {net.describe(e, timeout)}",
            url=url,
            hint=net.hint_for(
                net.kind_of(e),
                endpoint="the registry in the image reference" if pulling else "--registry",
                tls="The registry's certificate is not trusted: give its CA with "
                f"--registry-ca, or pass {insecure} if it speaks plain HTTP",
                timeout=f"No answer within {timeout:g} s: raise AIRGAP_NET_TIMEOUT",
            ),
        )

    def refresh_auth(self, url: str) -> None:
        """Renew an expired bearer token (registries hand out short-lived ones)."""
        self._token = None
        self.request("HEAD", url).close()

    def _url(self, repository: str, kind: str, reference: str = "") -> str:
        return f"{self.base}{repository}/{kind}/{reference}"

    # -- pull ---------------------------------------------------------------------------

    def _manifest(self, ref: ImageRef, reference: str) -> tuple[bytes, str, str]:
        url = self._url(ref.repository, "manifests", reference)
        r = self.request("GET", url, headers={"Accept": ACCEPT})
        if r.status_code in (401, 403):
            raise FetchError(
                f"{ref}: not authorized (HTTP {r.status_code})",
                url=url,
                status=r.status_code,
                hint=_LOGIN_HINT,
            )
        if r.status_code == 404:
            raise FetchError(
                f"{ref}: no such image or tag",
                url=url,
                status=404,
                hint="Check the image reference in the manifest.",
            )
        if r.status_code != 200:
            raise FetchError(f"{ref}: HTTP {r.status_code}", url=url, status=r.status_code)
        body = r.content
        if len(body) > MAX_MANIFEST:
            raise FetchError(f"{ref}: manifest implausibly large", url=url)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise FetchError(
                f"{ref}: manifest bytes do not match {reference}",
                url=url,
                hint="The registry serves altered content.",
            )
        media = r.headers.get("Content-Type", "").split(";")[0].strip()
        if media not in IMAGE_MANIFESTS + IMAGE_INDEXES:
            doc = _document(body, url, ref)
            found = doc.get("mediaType")
            media = found if isinstance(found, str) else ""
        return body, digest, media

    def resolve(self, ref: ImageRef, platform: str, pinned: str | None = None) -> ResolvedImage:
        """Tag (or pinned digest) -> the image manifest for ``platform`` and its config.

        Raises:
            FetchError: not found, unauthorized, no manifest for the platform, altered bytes.
        """
        body, digest, media = self._manifest(ref, pinned or ref.reference)
        url = self._url(ref.repository, "manifests", pinned or ref.reference)
        try:
            if media in IMAGE_INDEXES:
                entries = [
                    safejson.obj(d, f"manifests[{i}]")
                    for i, d in enumerate(
                        safejson.arr(_document(body, url, ref).get("manifests", []), "manifests")
                    )
                ]
                choices = [
                    d
                    for d in entries
                    if isinstance(d.get("platform"), dict)
                    and platform_matches(platform_of(d["platform"]), platform)
                ]
                if not choices:
                    have = sorted(
                        platform_of(d["platform"]) if isinstance(d.get("platform"), dict) else "?"
                        for d in entries
                    )
                    raise FetchError(
                        f"{ref}: no image for {platform} (has: {', '.join(have)})",
                        hint="Set `platform` in the manifest to one the image has.",
                    )
                chosen = safejson.field(choices[0], "digest", str, "manifests[]")
                url = self._url(ref.repository, "manifests", chosen)
                body, digest, media = self._manifest(ref, chosen)
            if media not in IMAGE_MANIFESTS:
                raise FetchError(f"{ref}: unsupported manifest type {media!r}", url=url)
            manifest = _document(body, url, ref)
            config_desc = safejson.field(manifest, "config", dict, "manifest")
            config_digest = safejson.field(config_desc, "digest", str, "config")
            layers = []
            for i, la in enumerate(safejson.arr(manifest.get("layers", []), "layers")):
                at = f"layers[{i}]"
                la = safejson.obj(la, at)
                layers.append(
                    {
                        "digest": safejson.field(la, "digest", str, at),
                        "size": safejson.count(safejson.field(la, "size", int, at), at),
                        "mediaType": safejson.field(la, "mediaType", str, at),
                    }
                )
        except safejson.JSONInputError as e:
            raise FetchError(
                f"{ref}: malformed manifest: {e}",
                url=url,
                hint="The registry serves a "
                "manifest this tool cannot read; check the image reference.",
            ) from e
        config = self.blob_bytes(ref, config_digest)
        config_url = self.blob_url(ref.repository, config_digest)
        plat = platform_of(_document(config, config_url, ref))
        if not platform_matches(plat, platform):
            raise FetchError(f"{ref}: image is for {plat}, not {platform}")
        return ResolvedImage(
            ref=ref,
            manifest_digest=digest,
            manifest_media_type=media,
            manifest=body,
            config_digest=config_digest,
            config_size=len(config),
            layers=layers,
            platform=plat,
        )

    def blob_url(self, repository: str, digest: str) -> str:
        return self._url(repository, "blobs", digest)

    def blob_bytes(self, ref: ImageRef, digest: str) -> bytes:
        url = self.blob_url(ref.repository, digest)
        r = self.request("GET", url)
        if r.status_code != 200:
            raise FetchError(
                f"{ref}: blob {digest}: HTTP {r.status_code}", url=url, status=r.status_code
            )
        data = r.content
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise FetchError(
                f"{ref}: blob {digest} does not match its digest",
                url=url,
                hint="The registry serves altered content.",
            )
        return data

    # -- push ---------------------------------------------------------------------------

    def _check(self, r: requests.Response, *ok: int) -> requests.Response:
        if r.status_code not in ok:
            raise self._fail(
                f"{r.request.method}: HTTP {r.status_code}: {r.text[:300]}",
                url=str(r.url),
                status=r.status_code,
                hint="401/403: " + _LOGIN_HINT + " 404 on upload: check the repository prefix.",
            )
        return r

    def ping(self) -> str:
        r = self.request("GET", self.base, timeout=60)
        self._check(r, 200, 401)
        return r.headers.get("Docker-Distribution-API-Version", "registry/2.0")

    def has_blob(self, repository: str, digest: str) -> bool:
        return self.request("HEAD", self.blob_url(repository, digest)).status_code == 200

    def manifest_digest(self, repository: str, reference: str, media_type: str) -> str | None:
        url = self._url(repository, "manifests", reference)
        r = self.request("HEAD", url, headers={"Accept": media_type})
        if r.status_code in (401, 403):
            self._check(r, 200)
        return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None

    def upload(self, repository: str, digest: str, chunks: Iterator[bytes]) -> None:
        r = self._check(self.request("POST", self._url(repository, "blobs", "uploads/")), 202)
        location = urljoin(self.base, r.headers["Location"])
        sep = "&" if "?" in location else "?"
        r = self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            data=chunks,
            headers={"Content-Type": "application/octet-stream"},
            timeout=3600,
        )
        self._check(r, 201)

    def mount(self, repository: str, digest: str, source: str) -> bool:
        r = self.request(
            "POST",
            self._url(repository, "blobs", "uploads/"),
            params={"mount": digest, "from": source},
        )
        if r.status_code == 201:
            return True
        if r.status_code == 202 and "Location" in r.headers:  # mount refused: cancel upload
            self.request("DELETE", urljoin(self.base, r.headers["Location"]))
        return False

    def put_manifest(self, repository: str, tag: str, media_type: str, data: bytes) -> str:
        r = self.request(
            "PUT",
            self._url(repository, "manifests", tag),
            data=data,
            headers={"Content-Type": media_type},
        )
        return self._check(r, 201).headers.get("Docker-Content-Digest", "")

    def tags(self, repository: str, limit: int = 10_000) -> list[str]:
        """The repository's tags (pages followed, at most ``limit``); [] if it has none."""
        out: list[str] = []
        url: str | None = self._url(repository, "tags", "list") + "?n=1000"
        while url and len(out) < limit:
            r = self.request("GET", url)
            if r.status_code == 404:
                return out
            self._check(r, 200)
            try:
                doc = safejson.loads(r.content)
                got = (doc.get("tags") if isinstance(doc, dict) else None) or []
                if not isinstance(got, list):
                    raise ValueError("tags is not a list")
            except ValueError as e:
                raise self._fail("tag list is not JSON", url=url) from e
            out += [str(t) for t in got if isinstance(t, str)]
            link = re.match(r'\s*<([^>]+)>\s*;\s*rel="next"', r.headers.get("Link", ""))
            url = urljoin(self.base, link[1]) if link else None
        return out[:limit]

    def delete_manifest(self, repository: str, digest: str) -> bool:
        r = self.request("DELETE", self._url(repository, "manifests", digest))
        return r.status_code in (200, 202)


def _document(body: bytes, url: str, ref: ImageRef) -> dict[str, Any]:
    """A registry's JSON document (manifest, index, config) as an object, within limits.

    Raises:
        FetchError: not JSON, beyond :mod:`bundler.safejson`'s limits, or not an object.
    """
    try:
        return safejson.obj(safejson.loads(body), "document")
    except safejson.JSONInputError as e:
        raise FetchError(
            f"{ref}: the registry sent a document this tool cannot read: {e}",
            url=url,
            hint="Check the image reference and the registry (or the proxy in front of it).",
        ) from e


class Registry(RegistryClient):
    """A push target, addressed as ``HOST[:PORT][/PREFIX]`` (``--registry``)."""

    def __init__(
        self,
        spec: str,
        *,
        insecure: bool = False,
        ca: Path | None = None,
        session: requests.Session | None = None,
    ) -> None:
        host, _, prefix = spec.partition("/")
        if not host:
            raise UsageError(f"--registry {spec!r}: give HOST[:PORT][/PREFIX]")
        super().__init__(host, insecure=insecure, ca=ca, session=session, error=InstallError)
        self.spec = spec
        self.prefix = prefix.strip("/")
