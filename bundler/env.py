"""Every environment variable the tool reads, read here and nowhere else."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from bundler.errors import UsageError


def key_passphrase() -> bytes | None:
    """``AIRGAP_KEY_PASSPHRASE``: passphrase of an encrypted signing key."""
    value = os.environ.get("AIRGAP_KEY_PASSPHRASE")
    return value.encode() if value else None


def source_date_epoch() -> datetime | None:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds.org): the build's ``created`` time."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    try:
        seconds = int(value)
    except ValueError as e:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={value!r} is not an integer",
            hint="Set it to seconds since 1970-01-01 UTC, e.g. $(git log -1 --format=%ct).",
        ) from e
    return datetime.fromtimestamp(seconds, UTC)


DEFAULT_NET_TIMEOUT = 120.0


def net_timeout() -> float:
    """``AIRGAP_NET_TIMEOUT``: seconds to wait for a server to connect and to answer
    (hub, registry, file server, container engine's probes); default 120.

    Raises:
        UsageError: not a number of seconds between 0 and one day.
    """
    value = os.environ.get("AIRGAP_NET_TIMEOUT")
    if value is None or value == "":
        return DEFAULT_NET_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 86400:
        raise UsageError(
            f"AIRGAP_NET_TIMEOUT={value!r} is not a number of seconds",
            hint="Set it to seconds to wait for a server's answer, e.g. 120 (at most 86400).",
        )
    return seconds


def debug() -> bool:
    """``AIRGAP_DEBUG=1``: show the traceback of an unexpected error (as ``--debug``)."""
    return os.environ.get("AIRGAP_DEBUG", "") not in ("", "0")


def no_color() -> bool:
    """``NO_COLOR`` (no-color.org): plain output, no progress bars."""
    return bool(os.environ.get("NO_COLOR"))


def cache_dir() -> Path:
    """``AIRGAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/airgap``, else ``~/.cache/airgap``."""
    explicit = os.environ.get("AIRGAP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "airgap"


def _number(name: str, default: float, low: float, high: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise UsageError(
            f"{name}={value!r} is not a number from {low:g} to {high:g}",
            hint=f"Unset it for the default ({default:g}).",
        )
    return number


def fetch_retries() -> int:
    """``AIRGAP_FETCH_RETRIES``: retries of a download after a 5xx or a dropped
    connection (default 6)."""
    return int(_number("AIRGAP_FETCH_RETRIES", 6, 0, 100))


def fetch_backoff() -> float:
    """``AIRGAP_FETCH_BACKOFF``: seconds before the first retry, doubled for each next
    one (default 0.5)."""
    return _number("AIRGAP_FETCH_BACKOFF", 0.5, 0, 60)


def fetch_read_timeout() -> float:
    """``AIRGAP_FETCH_TIMEOUT``: seconds a download may go without receiving a byte before
    it is dropped and retried (default 120)."""
    return _number("AIRGAP_FETCH_TIMEOUT", 120, 0.1, 3600)


def container_host(kind: str) -> str | None:
    """The engine socket: ``DOCKER_HOST``; for Podman also ``CONTAINER_HOST``."""
    if kind == "podman" and os.environ.get("CONTAINER_HOST"):
        return os.environ["CONTAINER_HOST"]
    return os.environ.get("DOCKER_HOST") or None


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` (a Hub mirror), else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hf_token() -> str | None:
    """``HF_TOKEN``: sent as a header to the Hub, never stored."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def docker_config_dir() -> Path:
    """``DOCKER_CONFIG``, else ``~/.docker``: where ``docker login`` keeps credentials."""
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def kibana_api_key() -> str | None:
    """``AIRGAP_KIBANA_API_KEY``: a Kibana API key (the encoded form), never stored."""
    return os.environ.get("AIRGAP_KIBANA_API_KEY") or None


def es_api_key() -> str | None:
    """``AIRGAP_ES_API_KEY``: an Elasticsearch API key (the encoded form), never stored."""
    return os.environ.get("AIRGAP_ES_API_KEY") or None


def cuda_visible_devices() -> str | None:
    """``CUDA_VISIBLE_DEVICES``: the GPUs to serve on when ``--gpus`` is not given
    (indices or ``GPU-`` UUIDs, as ``nvidia-smi -L`` shows them)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() or None


def operator_name() -> str:
    """Who runs airgap: the account of the real user id, and ``SUDO_USER`` when sudo was
    used (recorded with a licence acceptance; not a proof of identity)."""
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{sudo} (sudo as {name})" if sudo and sudo != name else name


def fault_point() -> tuple[str | None, str]:
    """``AIRGAP_FAULT_POINT`` and ``AIRGAP_FAULT_ACTION``: the fault-injection tier's hook
    (:mod:`bundler.faults`); unset in every real run."""
    return os.environ.get("AIRGAP_FAULT_POINT") or None, os.environ.get(
        "AIRGAP_FAULT_ACTION", "kill"
    )
