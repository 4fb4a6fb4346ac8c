"""Canonical JSON: the exact bytes that get hashed and signed.

Sorted keys, UTF-8, no insignificant whitespace, no NaN/Infinity. Floats use
Python's shortest round-trip form; :func:`loads` re-serializes and compares, so
only the one canonical text of a document is ever accepted.
"""

from __future__ import annotations

import json
from typing import Any


class CanonicalJSONError(ValueError):
    """A value that has no canonical JSON form."""


def _check(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CanonicalJSONError(f"{where}: NaN and Infinity have no JSON form")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"{where}: object keys must be strings")
            _check(item, f"{where}.{key}")
        return
    raise CanonicalJSONError(f"{where}: {type(value).__name__} has no JSON form")


def dumps(value: Any) -> bytes:
    """Serialize ``value`` to canonical JSON bytes.

    Raises:
        CanonicalJSONError: if ``value`` holds NaN/Infinity or a non-JSON type.
    """
    _check(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def loads(data: bytes) -> Any:
    """Parse JSON and insist that ``data`` is exactly its canonical form.

    Raises:
        CanonicalJSONError: if ``data`` is not valid UTF-8 JSON or not canonical.
    """
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CanonicalJSONError(f"not valid JSON: {e}") from e
    if dumps(value) != data:
        raise CanonicalJSONError("JSON is valid but not in canonical form")
    return value


def _reject(text: str) -> Any:
    raise CanonicalJSONError(f"{text} is not allowed in canonical JSON")
