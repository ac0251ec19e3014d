"""Hypothesis strategies for wire data: valid records and handshake messages, and mutations.

Shared by ``test_wire_properties.py`` and ``test_wire_peeks.py``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from trio_dtls_server._wire import MAX_RECORD_FRAGMENT

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode_record(content_type: int, version: int, epoch: int, seq: int, fragment: bytes) -> bytes:
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + epoch.to_bytes(2, "big")
        + seq.to_bytes(6, "big")
        + len(fragment).to_bytes(2, "big")
        + fragment
    )


record_fields = st.tuples(
    st.integers(20, 23),
    st.integers(0xFE00, 0xFEFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**48 - 1),
    st.binary(max_size=80),
)


valid_records = record_fields.map(lambda fields: encode_record(*fields))


def encode_handshake(msg_type: int, body: bytes, message_seq: int = 0) -> bytes:
    n = len(body).to_bytes(3, "big")
    return bytes([msg_type]) + n + message_seq.to_bytes(2, "big") + b"\x00\x00\x00" + n + body


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid input with one or more mutations of the kinds that trip up parsers."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "huge", "delete", "dup"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            index = min(at, len(data) - 1)
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            data = data[:at]
        elif kind == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "huge":
            # Overwrite what may be a length field with a large value.
            width = draw(st.sampled_from([1, 2, 3]))
            value = draw(st.sampled_from([0xFF, 0xFFFF, 0xFFFFFF, MAX_RECORD_FRAGMENT + 1]))
            data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)
