"""The client's JSON on the wire: orjson, with the standard library for what orjson refuses.

The switch must not change a byte of meaning: every body the operator sends and every response
or watch event it reads decodes to what the standard library's ``json`` gives.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from default_policy_operator.kube.client import decode, encode

#: what the API's JSON holds: 64-bit integers, finite doubles, any text
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(documents)
def test_what_is_encoded_decodes_as_the_standard_library_reads_it(document: Any) -> None:
    assert json.loads(encode(document)) == document
    assert decode(json.dumps(document).encode()) == json.loads(json.dumps(document))


def test_an_integer_beyond_64_bits_from_a_template_is_still_sent() -> None:
    body = {"spec": {"order": 2**70}}
    assert json.loads(encode(body)) == body  # the apiserver says what is wrong with it


def test_what_orjson_refuses_to_read_the_standard_library_reads() -> None:
    assert decode(b'{"order": 1e400}') == {"order": float("inf")}
    assert decode(b'{"name": "\\ud800"}') == {"name": "\ud800"}


def test_an_empty_response_is_none() -> None:
    assert decode(b"") is None
    assert decode(b"  \n") is None


def test_a_watch_line_with_its_newline_decodes() -> None:
    line = b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"7"}}}\n'
    event = {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "7"}}}
    assert decode(line) == event
