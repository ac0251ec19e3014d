"""Property tests for trio_dtls_server._wire.

The contract under test: for *any* input bytes, every parse function either returns its
result type or raises MalformedDatagram -- never IndexError, struct.error, OverflowError
or anything else -- and the valid cases round-trip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from wire_support import (
    SETTINGS,
    encode_handshake,
    encode_record,
    mutated,
    record_fields,
    valid_records,
)

from trio_dtls_server._wire import (
    MAX_PSK_IDENTITY_LENGTH,
    ClientHello,
    ContentType,
    HandshakeFragment,
    HandshakeType,
    InitialClientHello,
    MalformedDatagram,
    Record,
    build_hello_verify_request,
    pack_datagrams,
    parse_alert,
    parse_client_hello,
    parse_first_record,
    parse_handshake_fragment,
    parse_hello_verify_request,
    parse_initial_client_hello,
    parse_psk_identity_from_client_key_exchange,
    parse_psk_identity_from_flight,
    parse_records,
    split_records,
)


def _is_list_of(item_type: type) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return isinstance(value, list) and all(isinstance(v, item_type) for v in value)

    return check


def _is(result_type: type) -> Callable[[object], bool]:
    return lambda value: isinstance(value, result_type)


def _is_alert(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    )


# Every function that takes untrusted (or, for split_records, defensive) bytes, with a
# check of its result type.
PARSERS: list[tuple[Callable[[bytes], Any], Callable[[object], bool]]] = [
    (parse_records, _is_list_of(Record)),
    (parse_first_record, _is(Record)),
    (split_records, _is_list_of(bytes)),
    (parse_handshake_fragment, _is(HandshakeFragment)),
    (parse_client_hello, _is(ClientHello)),
    (parse_initial_client_hello, _is(InitialClientHello)),
    (parse_hello_verify_request, _is(bytes)),
    (parse_alert, _is_alert),
    (parse_psk_identity_from_client_key_exchange, _is(bytes)),
]


def assert_only_malformed(data: bytes) -> int:
    """Feed data to every parser; return how many accepted it.

    Any exception other than MalformedDatagram propagates and fails the test. Rejections
    must come with a message, since the message is all an operator sees in the logs.
    """
    accepted = 0
    for parse, result_ok in PARSERS:
        try:
            result = parse(data)
        except MalformedDatagram as exc:
            assert str(exc), f"{parse.__name__} raised MalformedDatagram without a message"
        else:
            assert result_ok(result), f"{parse.__name__} returned {result!r}"
            accepted += 1
    return accepted


# ---------------------------------------------------------------------------------------
# Strategies for valid wire data
# ---------------------------------------------------------------------------------------


@st.composite
def client_hello_bodies(draw: st.DrawFn) -> bytes:
    session_id = draw(st.binary(max_size=32))
    cookie = draw(st.binary(max_size=40))
    suite_count = draw(st.integers(1, 10))
    suites = draw(st.binary(min_size=2 * suite_count, max_size=2 * suite_count))
    compression = draw(st.binary(min_size=1, max_size=4))
    extensions = draw(st.none() | st.binary(max_size=60))
    body = (
        draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        + draw(st.binary(min_size=32, max_size=32))
        + bytes([len(session_id)])
        + session_id
        + bytes([len(cookie)])
        + cookie
        + len(suites).to_bytes(2, "big")
        + suites
        + bytes([len(compression)])
        + compression
    )
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return body


client_hello_datagrams = st.tuples(client_hello_bodies(), st.integers(0, 2**48 - 1)).map(
    lambda t: encode_record(
        ContentType.handshake, 0xFEFF, 0, t[1], encode_handshake(HandshakeType.client_hello, t[0])
    )
)


# ---------------------------------------------------------------------------------------
# Nothing but MalformedDatagram
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    assert_only_malformed(data)


@SETTINGS
@given(mutated(st.lists(valid_records, min_size=1, max_size=4).map(b"".join)))
def test_mutated_records(data: bytes) -> None:
    assert_only_malformed(data)


@SETTINGS
@given(mutated(client_hello_datagrams))
def test_mutated_client_hello_datagrams(data: bytes) -> None:
    assert_only_malformed(data)


@SETTINGS
@given(mutated(client_hello_bodies()))
def test_mutated_client_hello_bodies(data: bytes) -> None:
    # Exercise parse_client_hello directly too, not only behind the record layer.
    assert_only_malformed(data)


@SETTINGS
@given(mutated(client_hello_bodies().map(lambda b: encode_handshake(1, b))))
def test_mutated_handshake_fragments(data: bytes) -> None:
    assert_only_malformed(data)


# ---------------------------------------------------------------------------------------
# Valid inputs parse and round-trip
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(record_fields, min_size=1, max_size=6))
def test_parse_records_round_trip(fields: list[tuple[int, int, int, int, bytes]]) -> None:
    raws = [encode_record(*f) for f in fields]
    datagram = b"".join(raws)
    records = parse_records(datagram)
    assert b"".join(r.raw for r in records) == datagram
    assert [
        (r.content_type, r.version, r.epoch, r.sequence_number, r.fragment) for r in records
    ] == fields
    assert parse_first_record(datagram) == records[0]
    assert split_records(datagram) == raws


@SETTINGS
@given(st.binary(max_size=300))
def test_accepted_datagrams_are_tiled_exactly(data: bytes) -> None:
    try:
        records = parse_records(data)
    except MalformedDatagram:
        return
    assert b"".join(r.raw for r in records) == data
    assert all(len(r.raw) == 13 + len(r.fragment) for r in records)


@SETTINGS
@given(client_hello_bodies(), st.integers(0, 2**48 - 1))
def test_valid_client_hello_parses(body: bytes, seq: int) -> None:
    datagram = encode_record(
        ContentType.handshake, 0xFEFD, 0, seq, encode_handshake(HandshakeType.client_hello, body)
    )
    initial = parse_initial_client_hello(datagram)
    assert initial.record.sequence_number == seq
    assert initial.hello == parse_client_hello(body)
    hello = initial.hello
    # Re-encode from the parsed fields: we must get the body back exactly.
    rebuilt = (
        hello.client_version.to_bytes(2, "big")
        + hello.random
        + bytes([len(hello.session_id)])
        + hello.session_id
        + bytes([len(hello.cookie)])
        + hello.cookie
        + len(hello.cipher_suites).to_bytes(2, "big")
        + hello.cipher_suites
        + bytes([len(hello.compression_methods)])
        + hello.compression_methods
    )
    if len(rebuilt) < len(body):
        rebuilt += len(hello.extensions).to_bytes(2, "big") + hello.extensions
    assert rebuilt == body


@SETTINGS
@given(client_hello_datagrams, st.binary(max_size=255))
def test_hello_verify_request_round_trip(datagram: bytes, cookie: bytes) -> None:
    initial = parse_initial_client_hello(datagram)
    hvr = build_hello_verify_request(initial.record, cookie)
    assert len(hvr) == 28 + len(cookie)
    assert parse_hello_verify_request(hvr) == cookie
    [record] = parse_records(hvr)
    assert record.sequence_number == initial.record.sequence_number


@SETTINGS
@given(
    st.binary(max_size=MAX_PSK_IDENTITY_LENGTH + 100),
    st.binary(max_size=80),
    st.integers(0, 4),
    st.one_of(st.none(), st.integers(0, 4)),
)
@example(bytes(MAX_PSK_IDENTITY_LENGTH), b"", 2, 2)
@example(bytes(MAX_PSK_IDENTITY_LENGTH + 1), b"", 2, None)
def test_psk_identities_are_bounded_and_taken_from_the_wanted_message(
    identity: bytes, tail: bytes, message_seq: int, wanted: int | None
) -> None:
    """Identities up to OpenSSL's 256 bytes come back whole, longer ones are refused; in a
    flight, only the ClientKeyExchange with the wanted message number (if one is asked) counts.
    """
    body = len(identity).to_bytes(2, "big") + identity + tail  # tail: an ECDHE public value
    key_exchange = encode_handshake(HandshakeType.client_key_exchange, body, message_seq)
    flight = encode_record(ContentType.handshake, 0xFEFD, 0, 2, key_exchange) + encode_record(
        20, 0xFEFD, 0, 3, b"\x01"
    )
    if wanted is not None and wanted != message_seq:
        assert parse_psk_identity_from_flight(flight, message_seq=wanted) is None
        return
    if len(identity) <= MAX_PSK_IDENTITY_LENGTH:
        assert parse_psk_identity_from_client_key_exchange(body) == identity
        assert parse_psk_identity_from_flight(flight, message_seq=wanted) == identity
        return
    refusal = (
        f"^PSK identity of {len(identity)} bytes exceeds OpenSSL's limit of "
        f"{MAX_PSK_IDENTITY_LENGTH}$"
    )
    with pytest.raises(MalformedDatagram, match=refusal):
        parse_psk_identity_from_client_key_exchange(body)
    with pytest.raises(MalformedDatagram, match=refusal):
        parse_psk_identity_from_flight(flight, message_seq=wanted)


# ---------------------------------------------------------------------------------------
# pack_datagrams
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=12), st.integers(1, 600))
def test_pack_datagrams(records: list[bytes], mtu: int) -> None:
    datagrams = pack_datagrams(records, mtu)
    # Nothing lost, nothing reordered.
    assert b"".join(datagrams) == b"".join(records)
    # Recover which records went into which datagram from the byte offsets: every
    # datagram boundary must fall on a record boundary (no record spans two datagrams).
    groups: list[list[bytes]] = []
    remaining = list(records)
    for datagram in datagrams:
        group: list[bytes] = []
        size = 0
        while size < len(datagram):
            group.append(remaining.pop(0))
            size += len(group[-1])
        assert size == len(datagram), "a record spans two datagrams"
        groups.append(group)
    assert remaining == []
    for datagram, group in zip(datagrams, groups, strict=True):
        assert group, "empty datagram"
        # Only a lone oversized record may exceed the MTU.
        assert len(datagram) <= mtu or len(group) == 1
    # As few as possible: the next datagram's first record would not have fitted.
    for datagram, next_group in zip(datagrams, groups[1:], strict=False):
        assert len(datagram) + len(next_group[0]) > mtu


@SETTINGS
@given(st.lists(valid_records, max_size=8), st.integers(13, 400))
def test_split_then_pack_round_trip(raws: list[bytes], mtu: int) -> None:
    flight = b"".join(raws)
    assert split_records(flight) == raws
    datagrams = pack_datagrams(split_records(flight), mtu)
    assert [r.raw for d in datagrams for r in parse_records(d)] == raws
