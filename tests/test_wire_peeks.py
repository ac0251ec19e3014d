"""The record-header peeks and the encoders of ``_wire.py`` (issue 10, item 4).

The peeks (``single_record_header``, ``single_record_epoch``, ``single_application_record``,
``looks_like_client_hello``, ``starts_with_cid_record``, ``is_protected_data_or_alert``,
``first_content_type``, ``handshake_type``, ``mac_pseudo_header``) read untrusted bytes on
the hot paths, so for *any* bytes they return their result or raise MalformedDatagram,
nothing else; and each gives the answer of the inline code it replaced (kept below as the
oracle, verbatim but for names), so moving it into ``_wire`` changed no behaviour.  The
encoders (trusted values) round-trip through the parsers.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from wire_support import SETTINGS, encode_handshake, mutated, valid_records

from trio_dtls_server._wire import (
    DTLS_1_2,
    RECORD_HEADER_LENGTH,
    AlertDescription,
    AlertLevel,
    ContentType,
    ExtensionType,
    HandshakeType,
    MalformedDatagram,
    Record,
    RecordHeader,
    encode_alert,
    encode_plaintext_alert,
    encode_pseudo_header,
    encode_record,
    encode_record_header,
    first_content_type,
    handshake_type,
    is_protected_data_or_alert,
    looks_like_client_hello,
    mac_pseudo_header,
    parse_alert,
    parse_first_record,
    parse_records,
    read_own_record,
    renumber_plaintext_records,
    single_application_record,
    single_record_epoch,
    single_record_header,
    split_records,
    starts_with_cid_record,
)

# ---------------------------------------------------------------------------------------
# The code the peeks replaced (from _session.py, _server.py and _etm.py before the move)
# ---------------------------------------------------------------------------------------


def old_single_record_header(datagram: bytes) -> tuple[int, int, int] | None:
    if len(datagram) < 13 or int.from_bytes(datagram[11:13], "big") != len(datagram) - 13:
        return None
    return (
        datagram[0],
        int.from_bytes(datagram[3:5], "big"),
        int.from_bytes(datagram[5:11], "big"),
    )


def old_looks_like_client_hello(datagram: bytes) -> bool:
    return (
        len(datagram) > 25
        and datagram[0] == 22
        and datagram[3] == 0
        and datagram[4] == 0
        and datagram[13] == 1
    )


def old_kept_aside(datagram: bytes) -> bool:
    return datagram[0] in (23, 21) and datagram[3:5] != b"\0\0"


def old_renumbered(records: list[bytes], offset: int) -> list[bytes]:
    if not offset:
        return records
    return [
        record[:5] + (int.from_bytes(record[5:11], "big") + offset).to_bytes(6, "big") + record[11:]
        if record[3:5] == b"\0\0"
        else record
        for record in records
    ]


def old_mac_header(raw: bytes, size: int) -> bytes:
    return raw[3:11] + raw[0:3] + size.to_bytes(2, "big")


# ---------------------------------------------------------------------------------------
# Peeks: any bytes in, the old answer out, nothing but MalformedDatagram raised
# ---------------------------------------------------------------------------------------

datagrams = st.one_of(
    st.binary(max_size=120),
    valid_records,
    mutated(st.lists(valid_records, min_size=1, max_size=3).map(b"".join)),
    st.tuples(st.binary(max_size=60), st.integers(0, 2**48 - 1)).map(
        lambda t: encode_record(
            ContentType.handshake,
            0xFEFF,
            0,
            t[1],
            encode_handshake(HandshakeType.client_hello, t[0]),
        )
    ),
)


@SETTINGS
@given(datagrams, st.integers(0, 3))
def test_peeks_agree_with_the_code_they_replaced(datagram: bytes, epoch: int) -> None:
    header = single_record_header(datagram)
    old = old_single_record_header(datagram)
    if old is None:
        assert header is None
    else:
        assert header is not None
        assert (header.content_type, header.epoch, header.sequence_number) == old
        assert header.length == len(datagram) - RECORD_HEADER_LENGTH
        assert header.version == int.from_bytes(datagram[1:3], "big")

    assert single_record_epoch(datagram) == (None if old is None else old[1])

    record = single_application_record(datagram, epoch)
    if old is not None and old[0] == ContentType.application_data and old[1] == epoch:
        assert header is not None
        assert record == Record(23, header.version, epoch, old[2], datagram[13:], datagram)
    else:
        assert record is None

    assert looks_like_client_hello(datagram) == old_looks_like_client_hello(datagram)
    assert first_content_type(datagram) == (datagram[0] if datagram else None)
    assert starts_with_cid_record(datagram) == (datagram[:1] == b"\x19")
    assert handshake_type(datagram) == (datagram[0] if datagram else None)
    if datagram:  # the reader only asks about non-empty datagrams
        assert is_protected_data_or_alert(datagram) == old_kept_aside(datagram)
    else:
        assert not is_protected_data_or_alert(datagram)


@SETTINGS
@given(datagrams, st.integers(0, 0xFFFF))
def test_mac_pseudo_header_raises_only_malformed(datagram: bytes, length: int) -> None:
    try:
        pseudo = mac_pseudo_header(datagram, length)
    except MalformedDatagram as error:
        assert len(datagram) < RECORD_HEADER_LENGTH
        assert str(error)
    else:
        assert pseudo == old_mac_header(datagram, length)


@SETTINGS
@given(st.lists(valid_records, max_size=6), st.integers(0, 2**40))
def test_renumbering_matches_the_old_code(records: list[bytes], offset: int) -> None:
    # Trusted input only: OpenSSL numbers a server's epoch-0 records from 1, and the session
    # offsets them only by a hello number below 2^40, so the sum stays far below 2^48.
    assume(
        all(
            read_own_record(r).sequence_number + offset < 2**48
            for r in records
            if read_own_record(r).epoch == 0
        )
    )
    renumbered = renumber_plaintext_records(records, offset)
    assert renumbered == old_renumbered(records, offset)
    for before, after in zip(records, renumbered, strict=True):
        old, new = read_own_record(before), read_own_record(after)
        expected = old.sequence_number + offset if old.epoch == 0 else old.sequence_number
        assert new._replace(raw=b"") == old._replace(sequence_number=expected, raw=b"")


@SETTINGS
@given(st.lists(valid_records, min_size=1, max_size=4).map(b"".join))
def test_read_own_record_agrees_with_the_parser(flight: bytes) -> None:
    """On well-framed bytes (all it is for), the trusted reader decodes as the parser does."""
    assert [read_own_record(raw) for raw in split_records(flight)] == parse_records(flight)


def test_read_own_record_refuses_a_truncated_header() -> None:
    with pytest.raises(MalformedDatagram, match="truncated"):
        read_own_record(bytes(12))


# ---------------------------------------------------------------------------------------
# Encoders: round trips through the parsers
# ---------------------------------------------------------------------------------------

record_fields = st.tuples(
    st.sampled_from(
        [
            ContentType.change_cipher_spec,
            ContentType.alert,
            ContentType.handshake,
            ContentType.application_data,
        ]
    ),
    st.integers(0xFE00, 0xFEFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**48 - 1),
    st.binary(max_size=80),
)


@SETTINGS
@given(record_fields)
def test_encode_record_round_trips(fields: tuple[int, int, int, int, bytes]) -> None:
    content_type, version, epoch, sequence, fragment = fields
    raw = encode_record(content_type, version, epoch, sequence, fragment)
    assert raw == encode_record_header(content_type, version, epoch, sequence, len(fragment)) + (
        fragment
    )
    assert parse_records(raw) == [Record(content_type, version, epoch, sequence, fragment, raw)]
    assert single_record_header(raw) == RecordHeader(
        content_type, version, epoch, sequence, len(fragment)
    )
    assert read_own_record(raw) == parse_first_record(raw)


@SETTINGS
@given(record_fields)
def test_pseudo_header_is_the_same_read_or_written(
    fields: tuple[int, int, int, int, bytes],
) -> None:
    content_type, version, epoch, sequence, fragment = fields
    raw = encode_record(content_type, version, epoch, sequence, fragment)
    written = encode_pseudo_header(content_type, version, (epoch << 48) | sequence, len(fragment))
    assert written == mac_pseudo_header(raw, len(fragment))
    assert len(written) == 13


@pytest.mark.parametrize("level", list(AlertLevel))
@pytest.mark.parametrize("description", list(AlertDescription))
def test_alerts_round_trip(level: AlertLevel, description: AlertDescription) -> None:
    assert parse_alert(encode_alert(level, description)) == (level, description)
    raw = encode_plaintext_alert(level, description, 7)
    (record,) = parse_records(raw)
    assert (record.content_type, record.version, record.epoch, record.sequence_number) == (
        ContentType.alert,
        DTLS_1_2,
        0,
        7,
    )
    assert parse_alert(record.fragment) == (level, description)


def test_plaintext_alert_bytes() -> None:
    """The bytes the session wrote inline before (``_reject_bad_finished``)."""
    assert encode_plaintext_alert(AlertLevel.fatal, AlertDescription.bad_record_mac, 5) == (
        b"\x15\xfe\xfd\x00\x00" + (5).to_bytes(6, "big") + b"\x00\x02\x02\x14"
    )


def test_encoders_refuse_values_out_of_range() -> None:
    """Our own values: out of range is a bug, and struct says so rather than wrapping."""
    with pytest.raises(struct.error):
        encode_record_header(ContentType.alert, DTLS_1_2, 0, 0, 2**16)
    with pytest.raises(struct.error):
        encode_record_header(ContentType.alert, DTLS_1_2, 2**16, 0, 0)


def test_enums_are_the_wire_numbers() -> None:
    assert [int(t) for t in ContentType] == [20, 21, 22, 23, 25]
    assert [int(t) for t in HandshakeType] == [1, 2, 3, 11, 12, 13, 14, 15, 16, 20]
    assert [int(t) for t in AlertLevel] == [1, 2]
    assert [int(t) for t in ExtensionType] == [1, 21, 22, 23, 54]
