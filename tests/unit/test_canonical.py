from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bundler import canonical

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20 - 1), max_value=10**20 - 1)  # the 20-digit limit
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(json_values)
def test_round_trip_is_identity_and_bytes_are_stable(value: object) -> None:
    data = canonical.dumps(value)
    again = canonical.loads(data)
    assert canonical.dumps(again) == data
    assert again == value or value != value


@given(st.dictionaries(st.text(min_size=1), st.integers(), min_size=2))
def test_non_canonical_forms_are_refused(value: dict[str, int]) -> None:
    pretty = json.dumps(value, indent=1, sort_keys=True).encode()
    with pytest.raises(canonical.CanonicalJSONError):
        canonical.loads(pretty)


def test_key_order_whitespace_and_duplicates_are_refused() -> None:
    assert canonical.dumps({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    for bad in (b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1,"a":1}', b'{"a":NaN}', b"\xff"):
        with pytest.raises(canonical.CanonicalJSONError):
            canonical.loads(bad)


def test_nan_and_objects_have_no_form() -> None:
    with pytest.raises(canonical.CanonicalJSONError):
        canonical.dumps({"x": float("nan")})
    with pytest.raises(canonical.CanonicalJSONError):
        canonical.dumps({"x": object()})
