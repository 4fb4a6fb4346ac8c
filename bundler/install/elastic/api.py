"""HTTP to Kibana and Elasticsearch: credentials, TLS, retries, and errors that quote them.

Credentials come from an environment variable or a file, never from a command-line
argument (a process list is readable by every user). They are sent as a header and
never logged or stored. Retries cover what a restarting Kibana or a busy cluster
answers (refused connections, timeouts, 500/502/503/504) with exponential backoff;
400/401/403/404/409 are answered at once with the server's own message and a hint.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from bundler import safejson
from bundler.errors import InstallError, UsageError

logger = logging.getLogger(__name__)
RETRY_STATUS = frozenset({500, 502, 503, 504})
# A POST/PUT may have been carried out even when its answer was lost or was a 5xx;
# those are retried only when the server surely did nothing: 503 (Kibana not ready),
# or no connection at all.
UNSENT_STATUS = frozenset({503})
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})


@dataclass(frozen=True)
class Credentials:
    """An ``Authorization`` header for Kibana or Elasticsearch; ``source`` names its origin."""

    scheme: Literal["ApiKey", "Basic"]
    value: str
    source: str

    def header(self) -> str:
        return f"{self.scheme} {self.value}"

    def __repr__(self) -> str:  # never show the secret in a traceback or log
        return f"Credentials({self.scheme}, from {self.source})"


def _read_secret_file(path: Path, option: str) -> str:
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{option} {path}: cannot read it: {e}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "%s is readable by other users (mode %o); `chmod 600 %s`",
            path,
            stat.S_IMODE(st.st_mode),
            path,
        )
    if not text or "\n" in text:
        raise UsageError(
            f"{option} {path}: expected one line", hint="Put only the secret in the file."
        )
    return text


def load_credentials(
    product: str,
    env_name: str,
    env_value: str | None,
    api_key_file: Path | None,
    credentials_file: Path | None,
) -> Credentials | None:
    """Credentials from (in order) an API key file, a ``user:password`` file, the env var.

    Raises:
        UsageError: a file is unreadable or malformed, or two sources were given.
    """
    flag = "es" if product == "Elasticsearch" else product.lower()

    def clean(value: str, source: str) -> str:
        value = value.strip()
        if not value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
            raise UsageError(
                f"the {product} credentials from {source} are empty or contain spaces or "
                "control characters",
                hint="Put exactly the key (or user:password) on one line, no CR (Windows "
                "line ends) or tabs.",
            )
        return value

    if api_key_file and credentials_file:
        raise UsageError(
            f"give --{flag}-api-key-file or --{flag}-credentials-file, not both",
        )
    if api_key_file:
        key = clean(_read_secret_file(api_key_file, f"--{flag}-api-key-file"), str(api_key_file))
        return Credentials("ApiKey", key, str(api_key_file))
    if credentials_file:
        pair = clean(
            _read_secret_file(credentials_file, f"--{flag}-credentials-file"),
            str(credentials_file),
        )
        if ":" not in pair:
            raise UsageError(
                f"--{flag}-credentials-file {credentials_file}: expected one line user:password"
            )
        encoded = base64.b64encode(pair.encode()).decode()
        return Credentials("Basic", encoded, str(credentials_file))
    if env_value:
        return Credentials("ApiKey", clean(env_value, env_name), env_name)
    return None


def json_object(r: requests.Response, hint: str) -> dict[str, Any]:
    """The answer as a JSON object, or an error naming the URL (a proxy page, say)."""
    try:
        data = safejson.loads(r.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InstallError(
            f"{r.url} answered {r.status_code} with something that is not a JSON object",
            hint=hint,
        )
    return data


def _message(r: requests.Response) -> str:
    """The server's own words: Kibana's ``message`` or Elasticsearch's ``error.reason``."""
    try:
        body = safejson.loads(r.content)
    except ValueError:
        return r.text.strip()[:300] or r.reason
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return str(body["message"])
        err = body.get("error")
        if isinstance(err, dict) and err.get("reason"):
            return f"{err.get('type', 'error')}: {err['reason']}"
        if isinstance(err, str):
            return err
    return str(body)[:300]


class ApiClient:
    """One Kibana or Elasticsearch endpoint."""

    def __init__(
        self,
        product: str,
        base_url: str,
        credentials: Credentials | None,
        *,
        ca: Path | None = None,
        insecure: bool = False,
        attempts: int = 6,
        backoff: float = 0.5,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(
                f"{product} URL {base_url!r} must start with http:// or https://",
                hint="e.g. https://kibana.example:5601 or https://es.example:9200",
            )
        if urlsplit(base_url).username is not None:
            raise UsageError(
                f"the {product} URL carries a user name or password",
                hint=f"Give the URL without them and put user:password in "
                f"--{'es' if product == 'Elasticsearch' else 'kibana'}-credentials-file.",
            )
        if ca is not None and not ca.is_file():
            raise UsageError(f"{product} CA {ca}: no such file")
        self.product = product
        self.flag = "es" if product == "Elasticsearch" else "kibana"
        self.base = base_url.rstrip("/")
        self.credentials = credentials
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies, and REQUESTS_CA_BUNDLE cannot override
        self.verify: bool | str = False if insecure else (str(ca) if ca else True)
        if ca is None and not insecure:
            # The system's bundle, as an operator's curl would use; the session ignores env.
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
            if bundle:
                self.verify = bundle
        self.session.headers.update(headers or {})
        if credentials is not None:
            self.session.headers["Authorization"] = credentials.header()

    def close(self) -> None:
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        ok: Collection[int] = (200,),
        allow: Collection[int] = (),
        what: str = "",
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send with retries; return a response whose status is in ``ok`` or ``allow``.

        ``headers`` are added to this request only; ``stream`` leaves the body unread
        (the caller reads it bounded, and closes the response).

        Raises:
            InstallError: the server refused (with its message and a hint), or never
                answered within the retries.
        """
        url = self.base + path
        last = ""
        answered = False
        safe = method in IDEMPOTENT
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self.session.request(
                    method,
                    url,
                    json=json,
                    timeout=self.timeout,
                    verify=self.verify,
                    headers=headers,
                    stream=stream,
                )
            except requests.exceptions.SSLError as e:
                raise InstallError(
                    f"{self.product} at {self.base}: TLS verification failed: {e}",
                    hint=f"Pass --{self.flag}-ca with the CA that signed "
                    f"{self.product}'s certificate (or --{self.flag}-insecure "
                    "for a test system).",
                ) from None
            except (requests.ConnectionError, requests.Timeout) as e:
                sent = isinstance(e, requests.ReadTimeout) or (
                    isinstance(e, requests.ConnectionError)
                    and not isinstance(e, requests.ConnectTimeout)
                    and "Connection refused" not in str(e)
                    and "Name or service not known" not in str(e)
                )
                last = f"no answer ({type(e).__name__})"
                if sent and not safe:
                    break  # it may have been done: the caller looks before trying again
                logger.info("%s %s: %s; retrying", method, url, last)
                continue
            except requests.RequestException as e:
                # e.g. a header the library refuses: its text may quote the credentials
                raise InstallError(
                    f"{self.product} at {self.base}: cannot send {method} {path} "
                    f"({type(e).__name__})",
                    hint="Check the URL and that the credentials are one clean line.",
                ) from None
            if r.status_code in ok or r.status_code in allow:
                return r
            if r.status_code in RETRY_STATUS:
                answered = True
                last = f"{r.status_code} {_message(r)}"
                if not safe and r.status_code not in UNSENT_STATUS:
                    break
                logger.info("%s %s: %s; retrying", method, url, last)
                continue
            raise self._refused(method, url, r, what)
        doing = f" ({what})" if what else ""
        if answered:
            raise InstallError(
                f"{self.product} at {self.base} answered {last} to {method} {path}{doing}"
                f" (after {attempt + 1} attempts)",
                hint=f"{self.product} reports an internal error: see its log, then run the "
                "same command again.",
            )
        raise InstallError(
            f"{self.product} at {self.base} did not answer {method} {path}{doing} after "
            f"{attempt + 1} attempt(s): {last}",
            hint=f"Check that {self.product} is up and reachable from this host "
            f"(`curl {self.base}`), then run the same command again.",
        )

    def _refused(self, method: str, url: str, r: requests.Response, what: str) -> InstallError:
        msg = _message(r)
        doing = f" ({what})" if what else ""
        text = f"{self.product} answered {r.status_code} to {method} {url}{doing}: {msg}"
        src = self.credentials.source if self.credentials else "no credentials"
        kibana = self.product == "Kibana"
        env_name = "AIRGAP_KIBANA_API_KEY" if kibana else "AIRGAP_ES_API_KEY"
        if r.status_code == 401:
            hint = (
                f"{self.product} did not accept the credentials (from {src}). Give a valid "
                f"API key in {env_name} or --{self.flag}-api-key-file, or user:password in "
                f"--{self.flag}-credentials-file."
            )
        elif r.status_code == 403:
            hint = (
                "The credentials are valid but not allowed this: Kibana needs the feature "
                "privilege 'Actions and Connectors: All' in the space (and a licence that "
                "allows the connector)."
                if kibana
                else "The credentials are valid but not allowed this: Elasticsearch needs "
                "the cluster privileges monitor, manage_inference and manage_ml."
            )
        elif r.status_code == 404:
            hint = (
                "Check --kibana-url (Kibana's base URL) and --kibana-space."
                if kibana
                else "Check --es-url (Elasticsearch's base URL, port 9200 by default)."
            )
        elif kibana:
            hint = (
                "Kibana's message above names what it rejects; if it names a connector "
                "key, this Kibana version is unknown to airgap: report it with the version "
                "from `GET /api/status`."
            )
        else:
            hint = (
                "Elasticsearch's message above says what it refuses. An inference endpoint "
                "still used by semantic_text fields or ingest pipelines cannot be deleted: "
                "remove those references first, or uninstall with --keep-elastic."
            )
        return InstallError(text, hint=hint)
