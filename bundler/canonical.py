"""Canonical JSON: the exact bytes that get hashed and signed.

Sorted keys, UTF-8, no insignificant whitespace, no NaN/Infinity, integers of at
most 20 digits, nesting at most 64 levels deep. Floats use Python's shortest
round-trip form; :func:`loads` re-serializes and compares, so only the one canonical
text of a document is ever accepted.
"""

from __future__ import annotations

import json
from typing import Any

from bundler import safejson


class CanonicalJSONError(ValueError):
    """A value that has no canonical JSON form."""


def _check(value: Any, where: str, depth: int = 0) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if len(str(abs(value))) > safejson.MAX_INT_DIGITS:
            raise CanonicalJSONError(
                f"{where}: integers have at most {safejson.MAX_INT_DIGITS} digits "
                "(what could not be read back is not written)"
            )
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CanonicalJSONError(f"{where}: NaN and Infinity have no JSON form")
        return
    if isinstance(value, (list, tuple, dict)) and depth >= safejson.MAX_DEPTH:
        raise CanonicalJSONError(f"{where}: nested deeper than {safejson.MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"{where}: object keys must be strings")
            _check(item, f"{where}.{key}", depth + 1)
        return
    raise CanonicalJSONError(f"{where}: {type(value).__name__} has no JSON form")


def dumps(value: Any) -> bytes:
    """Serialize ``value`` to canonical JSON bytes.

    Raises:
        CanonicalJSONError: if ``value`` holds NaN/Infinity, a non-JSON type, or
            something :func:`loads` would refuse (see the module's limits).
    """
    _check(value, "$")
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        near = text[max(0, e.start - 40) : e.start]
        raise CanonicalJSONError(
            f"lone surrogate {text[e.start]!r} has no UTF-8 form (after {near!r})"
        ) from e


def loads(data: bytes) -> Any:
    """Parse JSON and insist that ``data`` is exactly its canonical form.

    The document is untrusted: it is parsed by :func:`bundler.safejson.loads`, within
    its limits (nesting depth, integer digits, no lone surrogates).

    Raises:
        CanonicalJSONError: if ``data`` is not valid UTF-8 JSON, is beyond a limit, or
            is not canonical.
    """
    try:
        value = safejson.loads(data)
    except safejson.JSONInputError as e:
        raise CanonicalJSONError(str(e)) from e
    if dumps(value) != data:
        raise CanonicalJSONError("JSON is valid but not in canonical form")
    return value
