"""Model weights from the Hugging Face Hub (or a mirror at ``HF_ENDPOINT``).

huggingface_hub resolves the revision to a commit and lists every file with its
size, git blob id and, for LFS files, sha256; downloads go through the resumable
cache and are checked against exactly those identities. ``HF_TOKEN`` is read from
the environment and sent only as a header; it is never written anywhere.

huggingface_hub is imported when a repo is resolved or its URLs are made, not with
this module: a fetch without a model repo does not pay its start-up (≈0.15 s of CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from bundler import env, net
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
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo, path, revision=self.commit, endpoint=self.endpoint)


def _translate(e: Exception, repo: str, revision: str) -> FetchError:
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

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


def _unreachable(e: BaseException, endpoint: str, repo: str, timeout: float) -> FetchError:
    """A transport failure (no answer at all) of huggingface_hub's HTTP client, whichever
    it is (httpx2 in 2.x, httpx in 1.x, requests before)."""
    kind = net.kind_of(e)
    return FetchError(
        f"cannot reach the Hugging Face Hub for {repo}: {net.describe(e, timeout)}",
        url=endpoint,
        hint=net.hint_for(
            kind,
            endpoint=f"HF_ENDPOINT is {endpoint}; point it at the Hub or at a local mirror",
            tls="The Hub's certificate is not trusted: for a mirror with a private CA, add "
            "the CA to SSL_CERT_FILE (or the system trust store)",
            timeout=f"The Hub did not answer within {timeout:g} s: raise AIRGAP_NET_TIMEOUT, "
            "or set HF_ENDPOINT to a closer mirror",
        )
        + " A gated repo also needs HF_TOKEN, once it can be reached.",
    )


def resolve_repo(repo: str, revision: str, include: list[str], exclude: list[str]) -> ResolvedRepo:
    """Revision -> commit, and the selected files with their identities.

    Raises:
        FetchError: not found, gated, unauthorized, unreachable, an answer that is not
            the Hub API's, or nothing selected.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile as HubFile
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    endpoint = env.hf_endpoint()
    timeout = env.net_timeout()
    api = HfApi(endpoint=endpoint, token=env.hf_token() or False)
    try:
        info = api.model_info(repo, revision=revision, timeout=timeout)
        commit = info.sha
        gated = getattr(info, "gated", None)
        if not commit:
            raise FetchError(f"{repo}@{revision}: the Hub did not name a commit")
        entries = [
            e
            for e in api.list_repo_tree(repo, revision=commit, recursive=True)
            if hasattr(e, "blob_id") and getattr(e, "size", None) is not None
        ]
    except HfHubHTTPError as e:  # an HTTP answer (in huggingface_hub 0.x also an OSError)
        raise _translate(e, repo, revision) from e
    except net.transport_errors() as e:
        raise _unreachable(e, endpoint, repo, timeout) from e
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        # huggingface_hub parses the answer itself: a server that is not the Hub (or a
        # hostile mirror) makes it fail in these ways.
        raise FetchError(
            f"{repo}: the answer is not the Hub API's ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})",
            url=endpoint,
            hint=f"HF_ENDPOINT is {endpoint}: point it at the Hub or a Hub-compatible mirror.",
        ) from e
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
    return ResolvedRepo(repo, revision, commit, files, endpoint, str(gated) if gated else None)


def auth_headers() -> dict[str, str]:
    token = env.hf_token()
    return {"Authorization": f"Bearer {token}"} if token else {}
