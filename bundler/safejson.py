"""JSON from outside the process: one parser with limits, and typed field access.

Every JSON document airgap reads that it did not just write itself — the bundle
index, a parts list, an image archive's ``manifest.json`` and OCI index, a registry's
manifests, a lock, a receipt, Elastic's metadata — is parsed here, so that hostile
but well-formed input gives a clean error instead of a crash:

- nesting deeper than :data:`MAX_DEPTH` is refused *before* the standard library's
  recursive parser sees the text (a cheap scan of the brackets outside strings);
- an integer of more than :data:`MAX_INT_DIGITS` digits is refused (the standard
  library would raise an untyped ``ValueError`` from 4300 digits on, and nothing we
  read needs more than 64 bits);
- ``NaN``/``Infinity`` and floats that overflow to infinity are refused;
- a lone surrogate escape (``"\\ud800"``), in a key or a value, is refused: it has no
  UTF-8 form, so it could neither be hashed nor become a file name.

The callers turn :class:`JSONInputError` into their own error family (a damaged
bundle, a bad source, a failed fetch), naming the file or member.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64
MAX_INT_DIGITS = 20

# A JSON string once its escaped backslashes and quotes are gone (see _check_depth). In
# UTF-8 no byte of a multi-byte character is '"' or '\\', so scanning bytes is exact.
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_FOLD = bytes.maketrans(b"{}", b"[]")
_STEP = {ord("["): 1, ord("]"): -1}
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JSONInputError(ValueError):
    """Not JSON, or JSON outside the limits or the expected shape (the message says why)."""


def _check_depth(data: bytes, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth``, at C speed for everything but the last step.

    Escaped backslashes, then escaped quotes, are dropped (left to right, as a JSON
    reader pairs them), so that every string is ``"[^"]*"`` and can be cut out; what
    remains of the brackets outside strings decides the depth.
    """
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _STRING.sub(b"", unescaped).translate(_FOLD, _NOT_BRACKET)
    too_deep = JSONInputError(f"JSON nested deeper than {max_depth} levels (the limit)")
    if b"[" * (max_depth + 1) in brackets:
        raise too_deep
    # The deepest bracket of a document is always an empty pair "[]"; removing every
    # such pair (one C pass, which also empties flat documents) lowers the depth by one.
    rest = brackets.replace(b"[]", b"")
    if rest and max(accumulate(map(_STEP.__getitem__, rest))) > max_depth - 1:
        raise too_deep


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise JSONInputError(
            f"integer with {digits} digits (at most {MAX_INT_DIGITS} are accepted)"
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONInputError(f"number {text[:40]!r} is out of range")
    return value


def _reject_constant(text: str) -> Any:
    raise JSONInputError(f"{text} is not JSON")


def lone_surrogate_path(value: Any, where: str = "$") -> str | None:
    """The JSON path of the first string (key or value) holding a lone surrogate."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return at
        elif isinstance(v, dict):
            for k, item in v.items():
                try:
                    k.encode("utf-8")
                except UnicodeEncodeError:
                    return f"{at}.{k!r} (a key)"
                stack.append((item, f"{at}.{k}"))
        elif isinstance(v, list):
            stack.extend((item, f"{at}[{i}]") for i, item in enumerate(v))
    return None


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON (UTF-8 bytes) within the limits above.

    Raises:
        JSONInputError: not UTF-8, not JSON, or beyond a limit (the message names which).
    """
    _check_depth(data, max_depth)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONInputError(f"not UTF-8 (byte {e.start})") from e
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as e:
        raise JSONInputError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:  # cannot happen below the depth limit; kept as a backstop
        raise JSONInputError(f"JSON nested deeper than {max_depth} levels (the limit)") from e
    if _SURROGATE_ESCAPE.search(data):
        where = lone_surrogate_path(value)
        if where is not None:
            raise JSONInputError(f"{where}: lone surrogate escape (\\ud800-\\udfff) in a string")
    return value


# -- typed access: check each field's JSON type before it is used ----------------------

_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    bool: "true or false",
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in ((bool, "true or false"), (int, "an integer"), (float, "a number")):
        if isinstance(value, t):
            return name
    return _NAMES.get(type(value), type(value).__name__)


def expect(value: Any, kind: type, where: str) -> Any:
    """``value`` if it is of JSON type ``kind`` (``int`` excludes ``bool``).

    Raises:
        JSONInputError: ``where: expected a string, got an array``.
    """
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        wanted = _NAMES.get(kind, kind.__name__)
        raise JSONInputError(f"{where}: expected {wanted}, got {_kind(value)}")
    return value


def obj(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a JSON object (see :func:`expect`)."""
    return dict(expect(value, dict, where))


def arr(value: Any, where: str) -> list[Any]:
    """``value`` as a JSON array (see :func:`expect`)."""
    return list(expect(value, list, where))


def text(value: Any, where: str) -> str:
    """``value`` as a JSON string (see :func:`expect`)."""
    return str(expect(value, str, where))


def count(value: Any, where: str) -> int:
    """``value`` as a non-negative JSON integer (a size, a count).

    Raises:
        JSONInputError: not an integer, or negative.
    """
    n = int(expect(value, int, where))
    if n < 0:
        raise JSONInputError(f"{where}: expected a non-negative integer, got {n}")
    return n


def field(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``doc[key]``, present and of JSON type ``kind``.

    Raises:
        JSONInputError: the key is missing or has another type.
    """
    if key not in doc:
        raise JSONInputError(f"{where}.{key}: missing")
    return expect(doc[key], kind, f"{where}.{key}")
