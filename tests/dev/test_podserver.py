"""The pod responder's DNS codec: what the DNS probes rely on to tell an answer from noise."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from dpo_dev.podserver import dns_answer, dns_answered, dns_query

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(query_id=st.integers(0, 0xFFFF), labels=st.lists(LABEL, min_size=1, max_size=5))
def test_an_answer_matches_its_query_only(query_id: int, labels: list[str]) -> None:
    query = dns_query(query_id, ".".join(labels))
    answer = dns_answer(query, "10.250.1.2")
    assert answer is not None
    assert dns_answered(answer, query_id)
    assert not dns_answered(answer, (query_id + 1) % 0x10000)
    assert answer.endswith(bytes([10, 250, 1, 2]))


def test_a_query_is_not_an_answer_and_garbage_gets_none() -> None:
    query = dns_query(7)
    assert not dns_answered(query, 7)  # QR bit clear: a reflected query is not an answer
    assert dns_answer(b"\x00" * 5, "10.250.1.2") is None
    assert (
        dns_answer(struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + b"\0\0\1\0\1", "1.2.3.4") is None
    )
