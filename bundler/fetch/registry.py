"""Pull images from OCI registries by digest (the distribution spec, with requests).

Anonymous access, the bearer-token flow announced by ``WWW-Authenticate``, and
basic credentials from ``~/.docker/config.json``. A tag resolves to a manifest
digest; a multi-arch index resolves to the manifest for the bundle's platform.
Manifests are checked against their digest; config and layers are fetched by
digest through the resumable cache. Plain HTTP only for loopback registries or
ones named with ``--insecure-registry`` (Docker's convention).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bundler import env
from bundler.errors import FetchError
from bundler.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IMAGE_INDEXES,
    IMAGE_MANIFESTS,
    OCI_INDEX,
    OCI_MANIFEST,
    platform_matches,
    platform_of,
)

logger = logging.getLogger(__name__)
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
DOCKER_HUB = "registry-1.docker.io"
MAX_MANIFEST = 4 * 1024 * 1024


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port] as addressed
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_ref(ref: str) -> ImageRef:
    """``[registry/]repo[:tag][@digest]`` with Docker's defaults (docker.io, library/)."""
    rest, _, digest = ref.partition("@")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = "docker.io", rest
    tag = None
    if ":" in path.rsplit("/", 1)[-1]:
        path, _, tag = path.rpartition(":")
    if registry in ("docker.io", "index.docker.io"):
        registry = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    if not tag and not digest:
        tag = "latest"
    return ImageRef(registry, path, tag, digest or None)


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1 : name.index("]")]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def docker_config_auth(registry: str, config: Path | None = None) -> tuple[str, str] | None:
    """Basic credentials for ``registry`` from ~/.docker/config.json (``auths``)."""
    path = config or env.docker_config_dir() / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    auths = doc.get("auths") or {}
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for k in keys:
        entry = auths.get(k)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user, password
    return None


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


class RegistryClient:
    def __init__(
        self,
        ref: ImageRef,
        *,
        insecure: set[str] | None = None,
        ca: Path | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.ref = ref
        host = DOCKER_HUB if ref.registry == "docker.io" else ref.registry
        scheme = "http" if (is_loopback(host) or host in (insecure or set())) else "https"
        self.base = f"{scheme}://{host}/v2/{ref.repository}"
        self.session = session or requests.Session()
        # Passed on every request: a session-level verify loses to REQUESTS_CA_BUNDLE.
        self.verify: str | bool = str(ca) if ca is not None else True
        self._token: str | None = None
        self._basic = docker_config_auth(ref.registry)

    def _auth_headers(self) -> dict[str, str]:
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
                raise FetchError(
                    "registry needs a login",
                    url=url,
                    status=401,
                    hint="`docker login` the registry (~/.docker/config.json).",
                )
            return False  # we already sent basic credentials: they were refused
        if scheme.lower() != "bearer":
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.pop("realm", None)
        if not realm:
            return False
        auth = self._basic
        try:
            r = self.session.get(realm, params=fields, auth=auth, timeout=30, verify=self.verify)
        except requests.RequestException as e:
            raise FetchError(f"token service unreachable: {e}", url=realm) from e
        if r.status_code != 200:
            raise FetchError(
                f"token service answered HTTP {r.status_code}",
                url=realm,
                status=r.status_code,
                hint="`docker login` the registry, or check the image name.",
            )
        body = r.json()
        self._token = body.get("token") or body.get("access_token")
        return bool(self._token)

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        headers = {**kw.pop("headers", {}), **self._auth_headers()}
        try:
            r = self.session.request(
                method, url, headers=headers, timeout=(15, 120), verify=self.verify, **kw
            )
            if r.status_code == 401 and self._login(r.headers.get("WWW-Authenticate", ""), url):
                r.close()
                headers.update(self._auth_headers())
                r = self.session.request(
                    method, url, headers=headers, timeout=(15, 120), verify=self.verify, **kw
                )
        except requests.RequestException as e:
            raise FetchError(
                f"registry unreachable: {e}",
                url=url,
                hint="Check the registry address; use --insecure-registry only "
                "for a registry without TLS.",
            ) from e
        return r

    def auth_headers(self) -> dict[str, str]:
        """Headers for blob downloads (after a request established the token)."""
        return self._auth_headers()

    def refresh_auth(self, url: str) -> None:
        """Renew an expired bearer token (registries hand out short-lived ones)."""
        self._token = None
        self.request("HEAD", url).close()

    def _manifest(self, reference: str) -> tuple[bytes, str, str]:
        url = f"{self.base}/manifests/{reference}"
        r = self.request("GET", url, headers={"Accept": ACCEPT})
        if r.status_code in (401, 403):
            raise FetchError(
                f"{self.ref}: not authorized (HTTP {r.status_code})",
                url=url,
                status=r.status_code,
                hint="`docker login` the registry (~/.docker/config.json).",
            )
        if r.status_code == 404:
            raise FetchError(
                f"{self.ref}: no such image or tag",
                url=url,
                status=404,
                hint="Check the image reference in the manifest.",
            )
        if r.status_code != 200:
            raise FetchError(f"{self.ref}: HTTP {r.status_code}", url=url, status=r.status_code)
        body = r.content
        if len(body) > MAX_MANIFEST:
            raise FetchError(f"{self.ref}: manifest implausibly large", url=url)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise FetchError(
                f"{self.ref}: manifest bytes do not match {reference}",
                url=url,
                hint="The registry serves altered content.",
            )
        media = r.headers.get("Content-Type", "").split(";")[0].strip()
        if media not in IMAGE_MANIFESTS + IMAGE_INDEXES:
            media = str(json.loads(body).get("mediaType", ""))
        return body, digest, media

    def resolve(self, platform: str, pinned: str | None = None) -> ResolvedImage:
        """Tag (or pinned digest) -> the image manifest for ``platform`` and its config.

        Raises:
            FetchError: not found, unauthorized, no manifest for the platform, altered bytes.
        """
        body, digest, media = self._manifest(pinned or self.ref.reference)
        if media in IMAGE_INDEXES:
            index = json.loads(body)
            choices = [
                d
                for d in index.get("manifests", [])
                if isinstance(d.get("platform"), dict)
                and platform_matches(platform_of(d["platform"]), platform)
            ]
            if not choices:
                have = sorted(
                    platform_of(d.get("platform", {})) for d in index.get("manifests", [])
                )
                raise FetchError(
                    f"{self.ref}: no image for {platform} (has: {', '.join(have)})",
                    hint="Set `platform` in the manifest to one the image has.",
                )
            body, digest, media = self._manifest(str(choices[0]["digest"]))
        if media not in IMAGE_MANIFESTS:
            raise FetchError(f"{self.ref}: unsupported manifest type {media!r}")
        manifest = json.loads(body)
        config_desc = manifest["config"]
        config = self.blob_bytes(str(config_desc["digest"]))
        plat = platform_of(json.loads(config))
        if not platform_matches(plat, platform):
            raise FetchError(f"{self.ref}: image is for {plat}, not {platform}")
        return ResolvedImage(
            ref=self.ref,
            manifest_digest=digest,
            manifest_media_type=media,
            manifest=body,
            config_digest=str(config_desc["digest"]),
            config_size=len(config),
            layers=[
                {"digest": la["digest"], "size": int(la["size"]), "mediaType": la["mediaType"]}
                for la in manifest.get("layers", [])
            ],
            platform=plat,
        )

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/blobs/{digest}"

    def blob_bytes(self, digest: str) -> bytes:
        url = self.blob_url(digest)
        r = self.request("GET", url)
        if r.status_code != 200:
            raise FetchError(
                f"{self.ref}: blob {digest}: HTTP {r.status_code}", url=url, status=r.status_code
            )
        data = r.content
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise FetchError(
                f"{self.ref}: blob {digest} does not match its digest",
                url=url,
                hint="The registry serves altered content.",
            )
        return data
