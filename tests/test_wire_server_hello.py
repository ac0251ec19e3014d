"""``_wire.parse_server_hello``: the one reader of a ServerHello (the suite the server chose, and
which extensions it answered), for the session's PSK check and the encrypt-then-MAC guard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_dtls_server._wire import (
    HandshakeType,
    MalformedDatagram,
    ServerHello,
    parse_server_hello,
)


def server_hello(
    suite: int = 0xC0A4,
    session_id: bytes = b"\x11" * 32,
    extensions: list[tuple[int, bytes]] | None = None,
    *,
    offset: int = 0,
    cut: int = 0,
) -> bytes:
    body = b"\xfe\xfd" + bytes(32) + bytes([len(session_id)]) + session_id
    body += suite.to_bytes(2, "big") + b"\x00"
    if extensions is not None:
        block = b"".join(
            kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
            for kind, data in extensions
        )
        body += len(block).to_bytes(2, "big") + block
    length = len(body)
    shown = body[: length - cut] if cut else body
    header = bytes([HandshakeType.server_hello]) + length.to_bytes(3, "big") + b"\x00\x01"
    return header + offset.to_bytes(3, "big") + len(shown).to_bytes(3, "big") + shown


def test_the_suite_and_the_extensions_in_order() -> None:
    hello = server_hello(0x00A8, extensions=[(0xFF01, b"\x00"), (22, b""), (23, b"")])
    assert parse_server_hello(hello) == ServerHello(0x00A8, (0xFF01, 22, 23))


def test_no_extension_block_is_no_extensions() -> None:
    assert parse_server_hello(server_hello(0x00AE, session_id=b"")) == ServerHello(0x00AE, ())


@pytest.mark.parametrize(
    ("fragment", "why"),
    [
        (server_hello(cut=10), "a fragment of a ServerHello"),
        (bytes([1]) + server_hello()[1:], "is not a ServerHello"),
        (server_hello(session_id=b"", extensions=[(22, b"")])[:-2] + b"\x00\x09", "runs past"),
    ],
)
def test_fragments_other_messages_and_broken_blocks_are_malformed(
    fragment: bytes, why: str
) -> None:
    with pytest.raises(MalformedDatagram, match=why):
        parse_server_hello(fragment)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_malformed_datagram_only(data: bytes) -> None:
    try:
        hello = parse_server_hello(data)
    except MalformedDatagram:
        return
    assert 0 <= hello.cipher_suite <= 0xFFFF
    assert all(0 <= kind <= 0xFFFF for kind in hello.extensions)


@given(
    suite=st.integers(0, 0xFFFF),
    session_id=st.binary(max_size=32),
    extensions=st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=8)), max_size=6),
)
def test_what_is_written_is_read_back(
    suite: int, session_id: bytes, extensions: list[tuple[int, bytes]]
) -> None:
    hello = parse_server_hello(server_hello(suite, session_id, extensions))
    assert hello == ServerHello(suite, tuple(kind for kind, _ in extensions))
