"""One error hierarchy for the whole tool.

Every error carries a one-line message that names the thing at fault (a file, a
tar member, a URL, a manifest key) and a ``hint`` that tells the operator what to
do about it. The CLI renders them in one place and maps each family to an exit
code from :data:`EXIT_CODES`; core code only raises.
"""

from __future__ import annotations

# Exit codes: the one table (also documented in the README).
EXIT_OK = 0
EXIT_FAILURE = 1  # operational failure: I/O, network, runtime, install step
EXIT_USAGE = 2  # bad command line or bad input file (manifest, key, option)
EXIT_VERIFICATION = 3  # signature, trust, expiry, rollback, damaged or malicious bundle
EXIT_INTERRUPTED = 130


class AirgapError(Exception):
    """Base of every error this tool raises on purpose."""

    exit_code = EXIT_FAILURE
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(AirgapError):
    """An option or argument that cannot work as given."""

    exit_code = EXIT_USAGE


class ManifestError(AirgapError):
    """The manifest (the declarative input) is invalid."""

    exit_code = EXIT_USAGE
    default_hint = "Fix the manifest; `airgap schema` prints every allowed key."

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class LicenseError(UsageError):
    """A model licence needs an acceptance that was not given (or names another licence)."""


class KeyFileError(AirgapError):
    """A signing or trusted key cannot be read or used."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class SourceError(AirgapError):
    """A local source (weights directory, image archive, artifact dir) is unusable."""

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class InsufficientSpaceError(AirgapError):
    """A file system has less free space than a command will write there (refused
    before anything is written)."""


class FetchError(AirgapError):
    """Downloading from a hub, registry or artifact server failed."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(f"{url}: {message}" if url else message, hint=hint)
        self.url = url
        self.status = status


class BundleError(AirgapError):
    """The bundle is malformed, damaged or carries something the reader refuses.

    ``member`` is the tar member at fault and ``part`` the split part that holds
    it, when known, so that a damaged transfer is named precisely.
    """

    exit_code = EXIT_VERIFICATION
    default_hint = (
        "The bundle was damaged or altered after it was signed. Copy it (or the named part) "
        "again from the original and compare its sha256 with the build machine's."
    )

    def __init__(
        self,
        message: str,
        *,
        bundle: str | None = None,
        member: str | None = None,
        part: str | None = None,
        offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if part:
            where.append(f"part {part}")
        elif bundle:
            where.append(bundle)
        if member:
            where.append(f"member {member}")
        if offset is not None:
            where.append(f"at byte {offset}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint=hint)
        self.bundle = bundle
        self.member = member
        self.part = part
        self.offset = offset


class InputStalledError(AirgapError):
    """A stream (standard input) sent nothing for longer than its stall timeout."""


class VerificationError(AirgapError):
    """Signature, trust threshold, expiry or rollback check failed."""

    exit_code = EXIT_VERIFICATION


class TrustError(VerificationError):
    """Not enough valid signatures from trusted keys."""

    default_hint = (
        "Pass the signer's public key with --trusted-key (or put it in --trust-dir), or have "
        "more trusted signers co-sign with `airgap sign`."
    )


class ExpiredError(VerificationError):
    """The signed index has expired."""

    default_hint = "Build and sign a fresh bundle on the connected side (see --expires-days)."


class RollbackError(VerificationError):
    """The bundle is older than what is installed for the same name."""

    default_hint = "Install a bundle with a higher version, or pass --allow-downgrade on purpose."


class InstallError(AirgapError):
    """An install step failed; the host was left as it was."""


class ElasticStepError(InstallError):
    """The release is installed and serving, but an Elastic step after it failed.

    Unlike its parent, this does not mean the host was left as it was: the new release
    stays current, and running the same install again repeats only the Elastic steps.
    """


class HostStateError(VerificationError):
    """Something under the install prefix that airgap never creates there: a symbolic link
    in place of one of its directories or files, another owner, a device. Only root or the
    user running airgap can write under a prefix that passed the path check, so this is a
    tampered host state, refused like a tampered bundle; nothing is read or written
    through it."""

    default_hint = (
        "Find out who changed it and why; then remove that entry by hand (`rm` on a symbolic "
        "link removes the link, not what it points to) and run the command again."
    )
