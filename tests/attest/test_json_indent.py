"""gocompat.json_indent writes what json.dumps(indent=2) writes, for any JSON-shaped value."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from buildkitpy.gocompat import json_indent

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
keys = st.text() | st.integers() | st.floats(allow_nan=False) | st.booleans() | st.none()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(values, st.booleans())
def test_same_text_as_the_json_module(value, ensure_ascii):
    expected = json.dumps(value, indent=2, ensure_ascii=ensure_ascii)
    assert json_indent(value, ensure_ascii=ensure_ascii) == expected


def test_special_values_and_errors():
    value = {"nan": math.nan, "inf": [math.inf, -math.inf], 1: {}, None: [], "s": "<ü>\n"}
    assert json_indent(value) == json.dumps(value, indent=2)
    for bad in ({"k": object()}, {(1, 2): 1}):
        try:
            json_indent(bad)
        except TypeError:
            pass
        else:
            raise AssertionError(f"{bad!r} was encoded")
