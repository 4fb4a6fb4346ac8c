"""Is the endpoint healthy: the proof a new start must pass, the wait after restoring
the previous containers, and the probe behind ``airgap status``. Every request goes
through Nginx over TLS, verified against the endpoint's CA, with no proxy."""

from __future__ import annotations

import logging
import time
from typing import Any

import requests

from bundler import safejson
from bundler.errors import InstallError
from bundler.oci.engine import Containers

logger = logging.getLogger(__name__)


def wait_healthy(port: int, ca: str, timeout: float) -> bool:
    """Best effort: wait until the restored previous release answers /health."""
    session = requests.Session()
    session.trust_env = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (
                session.get(f"https://127.0.0.1:{port}/health", timeout=5, verify=ca).status_code
                == 200
            ):
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    logger.warning("the previous release did not answer /health again within %.0fs", timeout)
    return False


def prove(
    containers: Containers,
    port: int,
    token: str,
    model: str,
    ca: str,
    started: dict[str, dict[str, str]],
    timeout: float,
) -> None:
    """Health, the model list and one chat completion, through Nginx over TLS."""
    base = f"https://127.0.0.1:{port}"
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace our CA; no proxies
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        for role, c in started.items():
            state = (containers.find(c["id"]) or {}).get("State", {})
            if not state.get("Running", False):
                raise InstallError(
                    f"the {role} container stopped (exit {state.get('ExitCode')}); "
                    f"its last log lines:\n{containers.logs(c['id'])}",
                    hint="Fix what the log says (model files, flags, GPU), then install "
                    "again; the previous release keeps serving.",
                )
        try:
            r = session.get(f"{base}/health", timeout=5, verify=ca)
            if r.status_code == 200:
                break
            last = f"/health answered {r.status_code}"
        except requests.RequestException as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise InstallError(
                f"vLLM was not healthy after {timeout:.0f}s ({last}); its last log "
                f"lines:\n{containers.logs(started['vllm']['id'])}",
                hint="Large models take minutes to load: raise --health-timeout, or fix "
                "what the log says.",
            )
        time.sleep(1)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        r = session.get(f"{base}/v1/models", headers=headers, timeout=30, verify=ca)
        listed = _object(r).get("data") if r.ok else None
        names = (
            [d.get("id") for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []
        )
        if model not in names:
            raise InstallError(
                f"/v1/models through nginx answered {r.status_code} without {model!r} (got {names})"
            )
        r = session.post(
            f"{base}/v1/chat/completions",
            verify=ca,
            headers=headers,
            timeout=300,
            json={
                "model": model,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hello."}],
            },
        )
        if r.status_code != 200 or not _object(r).get("choices"):
            raise InstallError(f"the test chat completion answered {r.status_code}: {r.text[:300]}")
    except (requests.RequestException, ValueError) as e:
        raise InstallError(
            f"the endpoint did not answer correctly: {e}; vLLM log:\n"
            f"{containers.logs(started['vllm']['id'])}"
        ) from e


def _object(r: requests.Response) -> dict[str, Any]:
    """The answer as a JSON object (within :mod:`bundler.safejson`'s limits), else {}."""
    try:
        doc = safejson.loads(r.content)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
