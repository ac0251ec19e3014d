"""Property tests for the RFC 9146 parsers of ``_wire.py`` (the style of
``test_wire_properties.py``): for any input bytes each parser returns its result type or raises
MalformedDatagram, nothing else, and what we build parses back to what we built."""

from __future__ import annotations

import pytest
import support
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trio_dtls_server._wire import (
    MAX_RECORD_FRAGMENT,
    CidRecord,
    ContentType,
    ExtensionType,
    MalformedDatagram,
    Record,
    cid_record_header,
    client_hello_connection_id,
    datagram_connection_id,
    encode_connection_id_extension,
    parse_client_hello,
    parse_connection_id_extension,
    parse_extension,
    parse_handshake_fragment,
    parse_initial_client_hello,
    parse_records_with_cid,
)

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x00")
@example(b"\x05abc")
def test_the_extension_body_parser_returns_a_cid_or_raises_malformed(body: bytes) -> None:
    try:
        cid = parse_connection_id_extension(body)
    except MalformedDatagram:
        assert not body or body[0] != len(body) - 1
    else:
        assert body == bytes((len(cid),)) + cid


@SETTINGS
@given(st.binary(max_size=255))
def test_an_encoded_cid_parses_back(cid: bytes) -> None:
    assert parse_connection_id_extension(encode_connection_id_extension(cid)) == cid


def test_a_cid_longer_than_255_bytes_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="at most 255"):
        encode_connection_id_extension(bytes(256))


def _extension(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


@SETTINGS
@given(st.binary(max_size=200), st.integers(0, 0xFFFF))
def test_the_extension_finder_never_raises_anything_else(block: bytes, kind: int) -> None:
    try:
        found = parse_extension(block, kind)
    except MalformedDatagram:
        return
    assert found is None or found in block


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)),
        max_size=6,
        unique_by=lambda e: e[0],
    ),
    st.integers(0, 0xFFFF),
)
def test_the_extension_finder_finds_what_was_built(
    extensions: list[tuple[int, bytes]], wanted: int
) -> None:
    block = b"".join(_extension(kind, body) for kind, body in extensions)
    expected = next((body for kind, body in extensions if kind == wanted), None)
    assert parse_extension(block, wanted) == expected


def test_an_extension_given_twice_is_malformed() -> None:
    block = _extension(ExtensionType.connection_id, b"\x00") * 2
    with pytest.raises(MalformedDatagram, match="twice"):
        parse_extension(block, ExtensionType.connection_id)


@SETTINGS
@given(st.binary(max_size=400), st.integers(0, 32))
@example(b"\x19\xfe\xfd" + bytes(8) + b"AB" + b"\x00\x00", 2)
@example(b"\x19\xfe\xfd" + bytes(8) + b"AB", 2)
def test_the_mixed_record_parser_never_raises_anything_else(data: bytes, cid_length: int) -> None:
    try:
        records = parse_records_with_cid(data, cid_length)
    except MalformedDatagram:
        return
    assert records
    assert b"".join(record.raw for record in records) == data
    for record in records:
        assert isinstance(record, (Record, CidRecord))
        if isinstance(record, CidRecord):
            assert len(record.cid) == cid_length
            assert len(record.fragment) <= MAX_RECORD_FRAGMENT


@SETTINGS
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 2**48 - 1),
    st.binary(max_size=20),
    st.binary(max_size=300),
    st.integers(0, 0xFF),
)
def test_a_cid_record_we_frame_parses_back(
    epoch: int, sequence: int, cid: bytes, fragment: bytes, minor: int
) -> None:
    version = 0xFE00 | minor
    raw = cid_record_header(version, epoch, sequence, cid, len(fragment)) + fragment
    (record,) = parse_records_with_cid(raw, len(cid))
    assert record == CidRecord(version, epoch, sequence, cid, fragment, raw)
    assert datagram_connection_id(raw, len(cid)) == (cid if cid else None)


@SETTINGS
@given(st.binary(max_size=64), st.integers(-1, 40))
def test_the_readers_cid_peek_never_raises(data: bytes, cid_length: int) -> None:
    cid = datagram_connection_id(data, cid_length)
    if cid is not None:
        assert data[0] == ContentType.tls12_cid and len(cid) == cid_length > 0


def test_a_client_hello_offering_a_cid_is_recognised_and_one_without_is_not() -> None:
    from trio_dtls_server import RetransmitPolicy
    from trio_dtls_server._openssl import install_client_connection_id
    from trio_dtls_server._session import DTLSSession

    context = support.client_context()
    install_client_connection_id(context)

    def hello(offer: bytes | None) -> bytes:
        session = DTLSSession.client(
            context,
            now=0.0,
            mtu=1400,
            policy=RetransmitPolicy(),
            identity=b"id",
            key=b"k" * 16,
            connection_id=offer,
        )
        (datagram,) = session.take_datagrams()
        return datagram

    for offer in (b"", b"\x01\x02\x03", None):
        parsed = parse_initial_client_hello(hello(offer)).hello
        assert client_hello_connection_id(parsed) == offer
    # The same through the handshake-message parser, as the server reads it.
    record = parse_initial_client_hello(hello(b"\x09")).record
    body = parse_handshake_fragment(record.fragment).body
    assert client_hello_connection_id(parse_client_hello(body)) == b"\x09"
