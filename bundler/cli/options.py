"""Options shared by several commands, each group handed to the command as one typed object.

A group decorator declares its flags, and at call time pops them from the keyword
arguments and passes one object instead (twine's ``Settings``, hauler's ``flags.go``):
``fetch`` (:class:`FetchInputs`), ``trust`` (:class:`TrustInputs`), ``host``
(:class:`HostInputs`) and ``access`` (:class:`~bundler.install.installer.ElasticAccess`).
Core modules are imported when a command runs, not when the CLI starts.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from bundler import env
from bundler.progress import NullReporter

if TYPE_CHECKING:
    from bundler.bundle.signing import TrustedKey
    from bundler.fetch.options import FetchOptions
    from bundler.install.elastic.steps import ElasticAccess
    from bundler.progress import Reporter

Command = Callable[..., object]
Decorator = Callable[[Command], Command]
RuntimeKind = Literal["docker", "podman"]
Params = dict[str, Any]  # what click parsed for one option group (its own JSON-like values)

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4G`` -> 4 GiB. Suffixes K, M, G, T are binary (powers of 1024)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size like 4G, 700M or 1073741824")
    factor = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * factor)


class State:
    """The group's own options (``-v``, ``-q``), for every command."""

    def __init__(self, verbose: int, quiet: bool) -> None:
        self.verbose = verbose
        self.quiet = quiet


def state() -> State:
    obj = click.get_current_context().find_root().obj
    assert isinstance(obj, State)
    return obj


@contextmanager
def reporter(quiet: bool = False) -> Iterator[Reporter]:
    """Progress bars on an interactive stderr only; rich is not even imported otherwise."""
    if quiet or state().quiet or not sys.stderr.isatty() or env.no_color():
        yield NullReporter()
        return
    from bundler.cli.output import make_reporter

    with make_reporter(False) as r:
        yield r


def option_group(name: str, build: Callable[[Params], object], *options: Decorator) -> Decorator:
    """Declare ``options`` (listed in help order); call the command with ``name=build(kwargs)``.

    ``build`` pops the group's own keyword arguments, so the command never sees them.
    """

    def decorate(f: Command) -> Command:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> object:
            kwargs[name] = build(kwargs)
            return f(*args, **kwargs)

        decorated: Command = wrapper
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate


def file_option(*decls: str, help: str, exists: bool = False, multiple: bool = False) -> Decorator:
    kind = click.Path(path_type=Path, dir_okay=False, exists=exists)
    return click.option(*decls, type=kind, multiple=multiple, help=help)


def dir_option(name: str, help: str) -> Decorator:
    return click.option(name, type=click.Path(path_type=Path, file_okay=False), help=help)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")

passphrase_option = file_option(
    "--passphrase-file",
    help="File holding the key passphrase (else AIRGAP_KEY_PASSPHRASE; never on the command line).",
)


def read_passphrase(passphrase_file: Path | None) -> bytes | None:
    from bundler.bundle.signing import read_passphrase as read

    return read(passphrase_file)


# -- fetch: where remote sources come from and where they are cached ----------------------


@dataclass(frozen=True)
class FetchInputs:
    cache_dir: Path
    options: FetchOptions


def _fetch_inputs(kw: Params) -> FetchInputs:
    from bundler.fetch.options import FetchOptions

    return FetchInputs(
        cache_dir=kw.pop("cache_dir") or env.cache_dir(),
        options=FetchOptions(
            jobs=kw.pop("jobs"),
            insecure_registries=frozenset(kw.pop("insecure_registries")),
            registry_ca=kw.pop("fetch_registry_ca"),
            images_from=kw.pop("images_from"),
        ),
    )


fetch_options = option_group(
    "fetch",
    _fetch_inputs,
    dir_option("--cache-dir", "Cache directory (default: AIRGAP_CACHE_DIR or ~/.cache/airgap)."),
    click.option(
        "--insecure-registry",
        "insecure_registries",
        multiple=True,
        metavar="HOST[:PORT]",
        help="Registry to reach over plain HTTP (loopback ones always are).",
    ),
    file_option(
        "--registry-ca", "fetch_registry_ca", help="CA bundle for registries with a private CA."
    ),
    click.option(
        "--jobs",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Parallel downloads.",
    ),
    click.option(
        "--images-from",
        type=click.Choice(["registry", "docker"]),
        default="registry",
        show_default=True,
        help="Pull image references from their registries, or export them from "
        "the local Docker engine (DOCKER_HOST) where a daemon login is "
        "needed.",
    ),
)


# -- trust: which keys a bundle must be signed by -----------------------------------------


@dataclass(frozen=True)
class TrustInputs:
    trusted_keys: tuple[Path, ...]
    trust_dir: Path | None
    threshold: int
    signatures: tuple[Path, ...] = ()  # extra detached signatures

    @property
    def given(self) -> bool:
        return bool(self.trusted_keys) or self.trust_dir is not None

    def load(self) -> dict[str, TrustedKey]:
        """The trusted public keys by key id.

        Raises:
            KeyFileError, UsageError: a key is unreadable, or none was given.
        """
        from bundler.bundle.signing import load_trust

        return load_trust(self.trusted_keys, self.trust_dir)


def _trust_inputs(kw: Params) -> TrustInputs:
    return TrustInputs(
        trusted_keys=kw.pop("trusted_keys"),
        trust_dir=kw.pop("trust_dir"),
        threshold=kw.pop("require_signatures"),
        signatures=kw.pop("signatures", ()),
    )


def _trust_group(key_help: str, threshold_help: str, *extra: Decorator) -> Decorator:
    return option_group(
        "trust",
        _trust_inputs,
        *extra,
        file_option("--trusted-key", "trusted_keys", multiple=True, help=key_help),
        dir_option("--trust-dir", "Directory of trusted *.pub keys."),
        click.option(
            "--require-signatures",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help=threshold_help,
        ),
    )


trust_options = _trust_group(
    "A trusted public key (repeatable).",
    "Distinct trusted signers required.",
    file_option(
        "--signature",
        "signatures",
        multiple=True,
        help="Extra detached signature <name>.<keyid>.sig (for stdin input).",
    ),
)

# `sign` checks the signatures already on the bundle before adding its own.
signed_by_options = _trust_group(
    "Public key of a signer already on the bundle (repeatable).",
    "Distinct trusted signatures the bundle must already carry.",
)


# -- host: the install prefix and the container engine ------------------------------------


@dataclass(frozen=True)
class HostInputs:
    prefix: Path
    runtime: RuntimeKind
    runtime_url: str | None


def _host_inputs(kw: Params) -> HostInputs:
    return HostInputs(kw.pop("prefix"), kw.pop("runtime"), kw.pop("runtime_url"))


host_options = option_group(
    "host",
    _host_inputs,
    click.option(
        "--prefix",
        type=click.Path(path_type=Path, file_okay=False),
        default="/opt/airgap",
        show_default=True,
        help="Where releases, state and the receipt live.",
    ),
    click.option(
        "--runtime",
        type=click.Choice(["docker", "podman"]),
        default="docker",
        show_default=True,
        help="Container engine that receives the images.",
    ),
    click.option(
        "--runtime-url",
        default=None,
        help="Engine API socket (default: DOCKER_HOST, or the engine's usual socket).",
    ),
)


# -- access: Kibana/Elasticsearch credentials and TLS, from files or env -------------------


def _elastic_access(kw: Params) -> ElasticAccess:
    from bundler.install.elastic.api import load_credentials
    from bundler.install.elastic.steps import ElasticAccess

    return ElasticAccess(
        kibana=load_credentials(
            "Kibana",
            "AIRGAP_KIBANA_API_KEY",
            env.kibana_api_key(),
            kw.pop("kibana_api_key_file"),
            kw.pop("kibana_credentials_file"),
        ),
        kibana_ca=kw.pop("kibana_ca"),
        kibana_insecure=kw.pop("kibana_insecure"),
        es=load_credentials(
            "Elasticsearch",
            "AIRGAP_ES_API_KEY",
            env.es_api_key(),
            kw.pop("es_api_key_file"),
            kw.pop("es_credentials_file"),
        ),
        es_ca=kw.pop("es_ca"),
        es_insecure=kw.pop("es_insecure"),
    )


def _access_flags(product: str, env_name: str) -> list[Decorator]:
    name = "Elasticsearch" if product == "es" else "Kibana"
    return [
        file_option(
            f"--{product}-api-key-file",
            exists=True,
            help=f"File with a {name} API key (encoded form). Or set {env_name}.",
        ),
        file_option(
            f"--{product}-credentials-file",
            exists=True,
            help=f"File with one line user:password for {name} (mode 0600).",
        ),
        file_option(
            f"--{product}-ca", exists=True, help=f"CA bundle that signs {name}'s TLS certificate."
        ),
        click.option(
            f"--{product}-insecure",
            is_flag=True,
            help=f"Do not verify {name}'s TLS certificate (test systems only).",
        ),
    ]


elastic_access_options = option_group(
    "access",
    _elastic_access,
    *_access_flags("kibana", "AIRGAP_KIBANA_API_KEY"),
    *_access_flags("es", "AIRGAP_ES_API_KEY"),
)
