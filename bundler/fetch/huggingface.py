"""Model weights from the Hugging Face Hub (or a mirror at ``HF_ENDPOINT``).

huggingface_hub resolves the revision to a commit and lists every file with its
size, git blob id and, for LFS files, sha256; downloads go through the resumable
cache and are checked against exactly those identities. ``HF_TOKEN`` is read from
the environment and sent only as a header; it is never written anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile as HubFile
from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

from bundler import env
from bundler.errors import FetchError
from bundler.fetch.http import Expect

# Carried even when ``model.include`` does not name them: the model card (its YAML front
# matter states the licence) and the licence files themselves, for the SBOM and the operator.
CARD_PATTERNS = ("README.md", "LICENSE*", "LICENCE*", "USE_POLICY*")


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    blob_id: str
    sha256: str | None  # LFS files only

    @property
    def expect(self) -> Expect:
        if self.sha256:
            return Expect(size=self.size, sha256=self.sha256)
        return Expect(size=self.size, git_blob=self.blob_id)


@dataclass(frozen=True)
class ResolvedRepo:
    repo: str
    revision: str
    commit: str
    files: list[RepoFile]
    endpoint: str
    gated: str | None = None  # the hub's ``gated`` field: "auto" or "manual" when gated


    def url(self, path: str) -> str:
        return hf_hub_url(self.repo, path, revision=self.commit, endpoint=self.endpoint)


def _translate(e: Exception, repo: str, revision: str) -> FetchError:
    if isinstance(e, GatedRepoError):
        return FetchError(
            f"{repo} is gated and this token may not read it",
            hint="Accept the licence on the model's Hub page, then export HF_TOKEN "
            "for that account.",
        )
    if isinstance(e, RevisionNotFoundError):
        return FetchError(
            f"{repo}: revision {revision!r} not found",
            hint="Check model.revision (a branch, tag or commit).",
        )
    if isinstance(e, RepositoryNotFoundError):
        return FetchError(
            f"{repo}: repository not found, or private",
            hint="Check model.repo; for a private repo export HF_TOKEN.",
        )
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return FetchError(
            f"{repo}: not authorized (HTTP {status})",
            status=status,
            hint="Accept the licence on the Hub and export HF_TOKEN.",
        )
    return FetchError(
        f"{repo}: Hub request failed: {e}",
        hint="Check HF_ENDPOINT and the network; run again to resume.",
    )


def resolve_repo(repo: str, revision: str, include: list[str], exclude: list[str]) -> ResolvedRepo:
    """Revision -> commit, and the selected files with their identities.

    Raises:
        FetchError: not found, gated, unauthorized, or nothing selected.
    """
    endpoint = env.hf_endpoint()
    api = HfApi(endpoint=endpoint, token=env.hf_token() or False)
    try:
        info = api.model_info(repo, revision=revision)
        commit = info.sha
        gated = getattr(info, "gated", None)
        if not commit:
            raise FetchError(f"{repo}@{revision}: the Hub did not name a commit")
        entries = [
            e
            for e in api.list_repo_tree(repo, revision=commit, recursive=True)
            if hasattr(e, "blob_id") and getattr(e, "size", None) is not None
        ]
    except (HfHubHTTPError, OSError) as e:
        raise _translate(e, repo, revision) from e
    selected = list(
        filter_repo_objects(
            entries,
            # The card and licence files always come along: the build reads the licence there.
            allow_patterns=[*include, *CARD_PATTERNS] if include else None,
            ignore_patterns=exclude or None,
            key=lambda e: e.path,
        )
    )
    if not selected:
        raise FetchError(
            f"{repo}@{commit[:12]}: no file matches include={include} exclude={exclude}",
            hint="Fix model.include / model.exclude.",
        )
    files = []
    for item in sorted(selected, key=lambda x: x.path):
        assert isinstance(item, HubFile)
        sha = item.lfs.sha256 if item.lfs else None
        files.append(RepoFile(item.path, int(item.size), str(item.blob_id), sha))
    return ResolvedRepo(
        repo, revision, commit, files, endpoint, str(gated) if gated else None
    )


def auth_headers() -> dict[str, str]:
    token = env.hf_token()
    return {"Authorization": f"Bearer {token}"} if token else {}
