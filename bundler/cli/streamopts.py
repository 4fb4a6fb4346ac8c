"""How long a bundle read from standard input (``verify -``, ``install -``, ``sbom -``) may
wait: ``--stall-timeout`` once bytes flow, ``--start-timeout`` for the first byte."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from bundler.boundedio import DEFAULT_STALL_TIMEOUT, DEFAULT_START_TIMEOUT

F = TypeVar("F", bound=Callable[..., Any])


class _Seconds(click.FloatRange):
    """Seconds above 0 and at most ~23 days (poll()'s limit); inf and nan are usage errors."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


_SECONDS = _Seconds(0, 2_000_000, min_open=True)


def stall_timeout_option(f: F) -> F:
    """Add ``--stall-timeout`` and ``--start-timeout`` (the command takes both as floats)."""
    f = click.option(
        "--start-timeout",
        type=_SECONDS,
        default=DEFAULT_START_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="With -: fail when stdin sends no first byte this long (a cold "
        "`build -o -` hashes every source before its first byte).",
    )(f)
    return click.option(
        "--stall-timeout",
        type=_SECONDS,
        default=DEFAULT_STALL_TIMEOUT,
        show_default=True,
        metavar="SECONDS",
        help="With -: fail when stdin, once started, sends nothing this long.",
    )(f)
