"""Unit tests for trio_dtls_server._wire: hand-built bytes plus a real OpenSSL client."""

from __future__ import annotations

import dataclasses

import pytest
from OpenSSL import SSL

from trio_dtls_server._cookie import CookieJar
from trio_dtls_server._wire import (
    DTLS_1_0,
    DTLS_1_2,
    MAX_RECORD_FRAGMENT,
    ClientHello,
    ContentType,
    FragmentedClientHello,
    HandshakeType,
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

# ---------------------------------------------------------------------------------------
# Builders for hand-made wire bytes. Deliberately written independently of _wire so that
# a shared misunderstanding of the format would have to be made twice.
# ---------------------------------------------------------------------------------------

RANDOM = bytes(range(32))
SUITES = b"\xc0\x2b\xc0\x2f\x00\xff"


def record(
    fragment: bytes,
    *,
    content_type: int = ContentType.handshake,
    version: int = DTLS_1_2,
    epoch: int = 0,
    seq: int = 0,
    length: int | None = None,
) -> bytes:
    if length is None:
        length = len(fragment)
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + epoch.to_bytes(2, "big")
        + seq.to_bytes(6, "big")
        + length.to_bytes(2, "big")
        + fragment
    )


def handshake(
    body: bytes,
    *,
    msg_type: int = HandshakeType.client_hello,
    message_seq: int = 0,
    offset: int = 0,
    fragment_length: int | None = None,
    length: int | None = None,
) -> bytes:
    if fragment_length is None:
        fragment_length = len(body)
    if length is None:
        length = offset + fragment_length
    return (
        bytes([msg_type])
        + length.to_bytes(3, "big")
        + message_seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + fragment_length.to_bytes(3, "big")
        + body
    )


def hello_body(
    *,
    version: int = DTLS_1_2,
    random: bytes = RANDOM,
    session_id: bytes = b"",
    cookie: bytes = b"",
    cipher_suites: bytes = SUITES,
    compression: bytes = b"\x00",
    extensions: bytes | None = None,
) -> bytes:
    body = (
        version.to_bytes(2, "big")
        + random
        + bytes([len(session_id)])
        + session_id
        + bytes([len(cookie)])
        + cookie
        + len(cipher_suites).to_bytes(2, "big")
        + cipher_suites
        + bytes([len(compression)])
        + compression
    )
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return body


def hello_datagram(body: bytes | None = None, *, seq: int = 0) -> bytes:
    return record(handshake(hello_body() if body is None else body), seq=seq)


def error_message(excinfo: pytest.ExceptionInfo[MalformedDatagram]) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------


class TestParseRecords:
    def test_single_record_fields(self) -> None:
        data = record(b"hello", content_type=ContentType.alert, epoch=3, seq=0x010203040506)
        [rec] = parse_records(data)
        assert rec == Record(
            content_type=21,
            version=0xFEFD,
            epoch=3,
            sequence_number=0x010203040506,
            fragment=b"hello",
            raw=data,
        )

    def test_largest_sequence_number(self) -> None:
        [rec] = parse_records(record(b"", seq=2**48 - 1))
        assert rec.sequence_number == 2**48 - 1

    def test_several_records_tile_the_datagram(self) -> None:
        parts = [
            record(b"a", content_type=ContentType.change_cipher_spec, seq=1),
            record(b"", content_type=ContentType.handshake, seq=2),
            record(b"xyz" * 10, content_type=ContentType.application_data, epoch=1, seq=0),
        ]
        records = parse_records(b"".join(parts))
        assert [r.raw for r in records] == parts
        assert [r.content_type for r in records] == [20, 22, 23]
        assert [r.sequence_number for r in records] == [1, 2, 0]
        assert [r.fragment for r in records] == [b"a", b"", b"xyz" * 10]

    def test_dtls_1_0_version_accepted(self) -> None:
        [rec] = parse_records(record(b"x", version=DTLS_1_0))
        assert rec.version == 0xFEFF

    def test_maximum_fragment_length_accepted(self) -> None:
        [rec] = parse_records(record(bytes(MAX_RECORD_FRAGMENT)))
        assert len(rec.fragment) == MAX_RECORD_FRAGMENT == 18432

    def test_empty_datagram(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^empty datagram$"):
            parse_records(b"")

    def test_trailing_bytes_shorter_than_header(self) -> None:
        data = record(b"ok") + b"\x16\xfe\xfd\x00\x00\x00\x00"
        with pytest.raises(MalformedDatagram, match=r"^record header truncated: 7 bytes$"):
            parse_records(data)

    def test_lone_short_header(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^record header truncated: 12 bytes$"):
            parse_records(record(b"")[:12])

    def test_length_runs_past_end(self) -> None:
        with pytest.raises(
            MalformedDatagram, match=r"^record length 300 exceeds the 20 bytes left$"
        ):
            parse_records(record(bytes(20), length=300))

    def test_length_past_end_in_second_record(self) -> None:
        data = record(b"first") + record(bytes(4), length=5)
        with pytest.raises(MalformedDatagram, match=r"^record length 5 exceeds the 4 bytes left$"):
            parse_records(data)

    def test_length_over_maximum(self) -> None:
        data = record(bytes(MAX_RECORD_FRAGMENT + 1))
        with pytest.raises(
            MalformedDatagram, match=r"^record length 18433 exceeds the maximum of 18432$"
        ):
            parse_records(data)

    @pytest.mark.parametrize("content_type", [0, 19, 24, 255])
    def test_unknown_content_type(self, content_type: int) -> None:
        with pytest.raises(MalformedDatagram) as excinfo:
            parse_records(record(b"x", content_type=content_type))
        assert error_message(excinfo) == f"content type {content_type} is not a DTLS record type"

    @pytest.mark.parametrize("version", [0x0303, 0x0301, 0xFFFD, 0x0000])
    def test_not_dtls_version(self, version: int) -> None:
        with pytest.raises(MalformedDatagram) as excinfo:
            parse_records(record(b"x", version=version))
        assert error_message(excinfo) == f"record version {version:#06x} is not DTLS"

    def test_a_tls_record_is_rejected(self) -> None:
        # A TLS 1.2 record header (type 22, version 03 03, length): the DTLS header is
        # longer, so without the version check this could be misread.
        tls = b"\x16\x03\x03\x00\x05hello" + bytes(10)
        with pytest.raises(MalformedDatagram, match=r"^record version 0x0303 is not DTLS$"):
            parse_records(tls)


class TestParseFirstRecord:
    def test_returns_first_record_only(self) -> None:
        first = record(b"one", seq=7)
        rec = parse_first_record(first + record(b"two", seq=8))
        assert rec.raw == first
        assert rec.fragment == b"one"
        assert rec.sequence_number == 7

    def test_ignores_garbage_after_first_record(self) -> None:
        first = record(b"one")
        assert parse_first_record(first + b"\xff\xff\xff").raw == first

    def test_empty(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^empty datagram$"):
            parse_first_record(b"")

    def test_same_checks_as_parse_records(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^record header truncated: 5 bytes$"):
            parse_first_record(bytes(5))
        with pytest.raises(MalformedDatagram, match=r"^content type 99 is not"):
            parse_first_record(record(b"", content_type=99))
        with pytest.raises(MalformedDatagram, match=r"^record version 0x0102 is not DTLS$"):
            parse_first_record(record(b"", version=0x0102))
        with pytest.raises(MalformedDatagram, match=r"^record length 10 exceeds the 9 bytes"):
            parse_first_record(record(bytes(9), length=10))
        with pytest.raises(MalformedDatagram, match=r"exceeds the maximum of 18432$"):
            parse_first_record(record(b"", length=0xFFFF))


class TestSplitRecords:
    def test_splits_on_boundaries(self) -> None:
        parts = [record(b"a" * 5, seq=0), record(b"", seq=1), record(b"b" * 300, seq=2)]
        assert split_records(b"".join(parts)) == parts

    def test_empty_flight(self) -> None:
        assert split_records(b"") == []

    def test_truncated_header(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^record header truncated: 3 bytes$"):
            split_records(record(b"x") + b"\x16\xfe\xfd")

    def test_length_past_end(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^record length 9 exceeds the 8 bytes left$"):
            split_records(record(bytes(8), length=9))


class TestPackDatagrams:
    def test_greedy_packing(self) -> None:
        a, b, c = b"a" * 40, b"b" * 40, b"c" * 40
        assert pack_datagrams([a, b, c], 100) == [a + b, c]

    def test_exact_fit(self) -> None:
        a, b = b"a" * 60, b"b" * 40
        assert pack_datagrams([a, b], 100) == [a + b]
        assert pack_datagrams([a, b], 99) == [a, b]

    def test_oversized_record_goes_alone(self) -> None:
        small1, big, small2 = b"s" * 30, b"B" * 150, b"t" * 30
        assert pack_datagrams([small1, big, small2], 100) == [small1, big, small2]

    def test_order_is_kept_even_when_reordering_would_save_a_datagram(self) -> None:
        a, b, c = b"a" * 60, b"b" * 60, b"c" * 40
        # a+c would fit in one datagram, but records must stay in order.
        assert pack_datagrams([a, b, c], 100) == [a, b + c]

    def test_no_records(self) -> None:
        assert pack_datagrams([], 1200) == []

    @pytest.mark.parametrize("mtu", [0, -1])
    def test_mtu_must_be_positive(self, mtu: int) -> None:
        with pytest.raises(ValueError, match=r"mtu must be positive"):
            pack_datagrams([b"x"], mtu)


# ---------------------------------------------------------------------------------------
# Handshake messages
# ---------------------------------------------------------------------------------------


class TestParseHandshakeFragment:
    def test_complete_message(self) -> None:
        frag = parse_handshake_fragment(handshake(b"body!", msg_type=11, message_seq=258))
        assert frag.msg_type == 11
        assert frag.length == 5
        assert frag.message_seq == 258
        assert frag.fragment_offset == 0
        assert frag.fragment_length == 5
        assert frag.body == b"body!"
        assert frag.is_complete

    def test_middle_fragment(self) -> None:
        frag = parse_handshake_fragment(handshake(b"abc", offset=10, length=20))
        assert (frag.fragment_offset, frag.fragment_length, frag.length) == (10, 3, 20)
        assert not frag.is_complete

    def test_first_fragment_is_not_complete(self) -> None:
        frag = parse_handshake_fragment(handshake(b"abc", offset=0, length=4))
        assert not frag.is_complete

    def test_last_fragment_is_not_complete(self) -> None:
        frag = parse_handshake_fragment(handshake(b"abc", offset=1, length=4))
        assert not frag.is_complete

    def test_empty_body(self) -> None:
        frag = parse_handshake_fragment(handshake(b""))
        assert frag.body == b""
        assert frag.is_complete

    def test_three_byte_fields_are_big_endian(self) -> None:
        frag = parse_handshake_fragment(
            handshake(b"", offset=0x010203, fragment_length=0, length=0x040506)
        )
        assert frag.fragment_offset == 0x010203
        assert frag.length == 0x040506

    def test_fragment_length_is_three_bytes(self) -> None:
        # All three bytes count: a fragment_length with its high byte set is read in full,
        # both when the body is really that long and when it is not.
        size = 0x010003
        frag = parse_handshake_fragment(handshake(bytes(size)))
        assert (frag.fragment_length, frag.length, len(frag.body)) == (size, size, size)
        assert frag.is_complete
        with pytest.raises(
            MalformedDatagram,
            match=r"^handshake fragment length 65539 exceeds the 3 bytes left$",
        ):
            parse_handshake_fragment(handshake(b"abc", fragment_length=size))

    def test_truncated_header(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^handshake header truncated: 11 bytes$"):
            parse_handshake_fragment(handshake(b"")[:11])

    def test_body_shorter_than_fragment_length(self) -> None:
        with pytest.raises(
            MalformedDatagram,
            match=r"^handshake fragment length 10 exceeds the 4 bytes left$",
        ):
            parse_handshake_fragment(handshake(b"abcd", fragment_length=10))

    def test_bytes_after_body(self) -> None:
        # Two handshake messages in one record: we parse one per call, so this is an error.
        data = handshake(b"abcd") + handshake(b"")
        with pytest.raises(
            MalformedDatagram, match=r"^12 bytes after the handshake fragment body$"
        ):
            parse_handshake_fragment(data)

    def test_fragment_past_message_end(self) -> None:
        with pytest.raises(MalformedDatagram) as excinfo:
            parse_handshake_fragment(handshake(b"abc", offset=8, length=10))
        assert error_message(excinfo) == (
            "handshake fragment (offset 8, 3 bytes) runs past the message length 10"
        )


class TestParseClientHello:
    def test_minimal(self) -> None:
        hello = parse_client_hello(hello_body())
        assert hello == ClientHello(
            client_version=DTLS_1_2,
            random=RANDOM,
            session_id=b"",
            cookie=b"",
            cipher_suites=SUITES,
            compression_methods=b"\x00",
            extensions=b"",
        )

    def test_all_fields(self) -> None:
        body = hello_body(
            version=DTLS_1_0,
            session_id=b"S" * 32,
            cookie=b"C" * 255,
            cipher_suites=b"\x00\x01" * 100,
            compression=b"\x01\x00",
            extensions=b"\x00\x0b\x00\x02\x01\x00",
        )
        hello = parse_client_hello(body)
        assert hello.client_version == 0xFEFF
        assert hello.session_id == b"S" * 32
        assert hello.cookie == b"C" * 255
        assert hello.cipher_suites == b"\x00\x01" * 100
        assert hello.compression_methods == b"\x01\x00"
        assert hello.extensions == b"\x00\x0b\x00\x02\x01\x00"

    def test_empty_extensions_block(self) -> None:
        assert parse_client_hello(hello_body(extensions=b"")).extensions == b""

    def test_truncated_fixed_part(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^ClientHello truncated: 33 bytes$"):
            parse_client_hello(hello_body()[:33])

    @pytest.mark.parametrize(
        ("cut", "field"),
        [(34, "session_id"), (35, "cookie"), (36, "cipher_suites"), (37, "cipher_suites")],
    )
    def test_truncated_in_a_length(self, cut: int, field: str) -> None:
        with pytest.raises(MalformedDatagram) as excinfo:
            parse_client_hello(hello_body()[:cut])
        assert error_message(excinfo) == f"ClientHello truncated in the {field} length"

    def test_truncated_before_compression_length(self) -> None:
        body = hello_body()
        with pytest.raises(
            MalformedDatagram, match=r"^ClientHello truncated in the compression_methods length$"
        ):
            parse_client_hello(body[:-2])

    def test_session_id_too_long(self) -> None:
        with pytest.raises(
            MalformedDatagram, match=r"^ClientHello session_id is 33 bytes, over 32$"
        ):
            parse_client_hello(hello_body(session_id=b"s" * 33))

    def test_session_id_past_end(self) -> None:
        body = hello_body()[:34] + b"\x20" + b"s" * 5
        with pytest.raises(
            MalformedDatagram, match=r"^ClientHello session_id length 32 exceeds the 5 bytes left$"
        ):
            parse_client_hello(body)

    def test_cookie_past_end(self) -> None:
        body = hello_body()[:35] + b"\x10" + b"c" * 3
        with pytest.raises(
            MalformedDatagram, match=r"^ClientHello cookie length 16 exceeds the 3 bytes left$"
        ):
            parse_client_hello(body)

    def test_cipher_suites_past_end(self) -> None:
        body = hello_body()[:36] + b"\x01\x00" + b"\x00\x2f"
        with pytest.raises(
            MalformedDatagram,
            match=r"^ClientHello cipher_suites length 256 exceeds the 2 bytes left$",
        ):
            parse_client_hello(body)

    @pytest.mark.parametrize("suites", [b"", b"\x00", b"\x00\x2f\x00"])
    def test_cipher_suites_not_positive_even(self, suites: bytes) -> None:
        with pytest.raises(MalformedDatagram) as excinfo:
            parse_client_hello(hello_body(cipher_suites=suites))
        assert error_message(excinfo) == (
            f"ClientHello cipher_suites length {len(suites)} is not a positive even number"
        )

    def test_no_compression_methods(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^ClientHello has no compression methods$"):
            parse_client_hello(hello_body(compression=b""))

    def test_compression_methods_past_end(self) -> None:
        body = hello_body()[:-2] + b"\x05\x00"
        with pytest.raises(
            MalformedDatagram,
            match=r"^ClientHello compression_methods length 5 exceeds the 1 bytes left$",
        ):
            parse_client_hello(body)

    def test_one_stray_byte_instead_of_extensions(self) -> None:
        with pytest.raises(
            MalformedDatagram, match=r"^ClientHello truncated in the extensions length$"
        ):
            parse_client_hello(hello_body() + b"\x00")

    def test_extensions_length_too_long(self) -> None:
        body = hello_body() + b"\x00\x05abc"
        with pytest.raises(
            MalformedDatagram, match=r"^ClientHello extensions length 5 exceeds the 3 bytes left$"
        ):
            parse_client_hello(body)

    def test_extensions_length_too_short(self) -> None:
        body = hello_body() + b"\x00\x02abcd"
        with pytest.raises(MalformedDatagram, match=r"^2 bytes after the ClientHello extensions$"):
            parse_client_hello(body)


class TestCookieInput:
    def test_layout(self) -> None:
        hello = parse_client_hello(
            hello_body(session_id=b"sid", cookie=b"ck", extensions=b"\x00\x17\x00\x00")
        )
        assert hello.cookie_input() == (
            b"\xfe\xfd"
            + b"\x00\x20"
            + RANDOM
            + b"\x00\x03sid"
            + b"\x00\x06"
            + SUITES
            + b"\x00\x01\x00"
        )

    def test_ignores_cookie_and_extensions(self) -> None:
        plain = parse_client_hello(hello_body())
        other = parse_client_hello(hello_body(cookie=b"x" * 16, extensions=b"\xff\x01\x00\x00"))
        assert plain.cookie_input() == other.cookie_input()

    @pytest.mark.parametrize(
        "change",
        [
            {"client_version": DTLS_1_0},
            {"random": bytes(32)},
            {"session_id": b"\x01"},
            {"cipher_suites": b"\x00\x2f"},
            {"compression_methods": b"\x01"},
        ],
    )
    def test_covers_each_repeated_field(self, change: dict[str, object]) -> None:
        base = parse_client_hello(hello_body())
        changed = dataclasses.replace(base, **change)  # type: ignore[arg-type]
        assert changed.cookie_input() != base.cookie_input()

    def test_field_boundaries_are_unambiguous(self) -> None:
        # Moving bytes between adjacent fields must change the output.
        base = ClientHello(0xFEFD, RANDOM, b"ab", b"", b"cd", b"\x00", b"")
        shifted = ClientHello(0xFEFD, RANDOM, b"a", b"", b"bcd", b"\x00", b"")
        assert base.cookie_input() != shifted.cookie_input()


class TestParseInitialClientHello:
    def test_valid(self) -> None:
        body = hello_body(session_id=b"x")
        data = hello_datagram(body, seq=5)
        initial = parse_initial_client_hello(data)
        assert initial.record.raw == data
        assert initial.record.sequence_number == 5
        assert initial.handshake.msg_type == HandshakeType.client_hello
        assert initial.handshake.body == body
        assert initial.hello == parse_client_hello(body)

    def test_records_after_the_first_are_ignored(self) -> None:
        first = hello_datagram()
        initial = parse_initial_client_hello(first + b"garbage that is not a record")
        assert initial.record.raw == first

    def test_not_a_handshake_record(self) -> None:
        data = record(b"\x02\x28", content_type=ContentType.alert)
        with pytest.raises(
            MalformedDatagram, match=r"^not a handshake record \(content type 21\)$"
        ):
            parse_initial_client_hello(data)

    def test_nonzero_epoch(self) -> None:
        data = record(handshake(hello_body()), epoch=1)
        with pytest.raises(MalformedDatagram, match=r"^epoch 1 is not 0$"):
            parse_initial_client_hello(data)

    def test_not_a_client_hello(self) -> None:
        data = record(handshake(hello_body(), msg_type=HandshakeType.client_key_exchange))
        with pytest.raises(
            MalformedDatagram, match=r"^handshake message type 16 is not ClientHello$"
        ):
            parse_initial_client_hello(data)

    def test_fragmented(self) -> None:
        body = hello_body()
        data = record(handshake(body[:40], offset=0, length=len(body)))
        with pytest.raises(FragmentedClientHello) as excinfo:
            parse_initial_client_hello(data)
        assert isinstance(excinfo.value, MalformedDatagram)
        assert str(excinfo.value) == f"fragmented ClientHello (offset 0, 40 of {len(body)} bytes)"

    def test_later_fragment(self) -> None:
        data = record(handshake(b"tail", offset=60, length=64))
        with pytest.raises(
            FragmentedClientHello, match=r"^fragmented ClientHello \(offset 60, 4 of 64 bytes\)$"
        ):
            parse_initial_client_hello(data)

    def test_bad_record_propagates(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^empty datagram$"):
            parse_initial_client_hello(b"")

    def test_bad_handshake_header_propagates(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^handshake header truncated: 3 bytes$"):
            parse_initial_client_hello(record(b"\x01\x00\x00"))

    def test_bad_hello_body_propagates(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^ClientHello has no compression methods$"):
            parse_initial_client_hello(hello_datagram(hello_body(compression=b"")))


# ---------------------------------------------------------------------------------------
# HelloVerifyRequest
# ---------------------------------------------------------------------------------------


class TestHelloVerifyRequest:
    def test_layout_byte_by_byte(self) -> None:
        hello_record = parse_first_record(hello_datagram(seq=0x0000_0102_0304))
        cookie = bytes(range(0xA0, 0xB0))
        hvr = build_hello_verify_request(hello_record, cookie)
        assert len(hvr) == 28 + 16 == 44
        assert hvr[0] == 22  # handshake record
        assert hvr[1:3] == b"\xfe\xff"  # record version DTLS 1.0
        assert hvr[3:5] == b"\x00\x00"  # epoch 0
        assert hvr[5:11] == b"\x00\x00\x01\x02\x03\x04"  # sequence number copied
        assert hvr[11:13] == (12 + 3 + 16).to_bytes(2, "big")  # record length
        assert hvr[13] == 3  # HelloVerifyRequest
        assert hvr[14:17] == b"\x00\x00\x13"  # length 19
        assert hvr[17:19] == b"\x00\x00"  # message_seq 0
        assert hvr[19:22] == b"\x00\x00\x00"  # fragment_offset 0
        assert hvr[22:25] == b"\x00\x00\x13"  # fragment_length 19
        assert hvr[25:27] == b"\xfe\xff"  # server_version
        assert hvr[27] == 16  # cookie length
        assert hvr[28:] == cookie

    def test_empty_and_maximum_cookie(self) -> None:
        hello_record = parse_first_record(hello_datagram())
        assert len(build_hello_verify_request(hello_record, b"")) == 28
        assert len(build_hello_verify_request(hello_record, bytes(255))) == 28 + 255

    def test_cookie_too_long(self) -> None:
        hello_record = parse_first_record(hello_datagram())
        with pytest.raises(ValueError, match=r"256 bytes") as excinfo:
            build_hello_verify_request(hello_record, bytes(256))
        assert not isinstance(excinfo.value, MalformedDatagram)

    def test_parses_as_records(self) -> None:
        hello_record = parse_first_record(hello_datagram(seq=9))
        [rec] = parse_records(build_hello_verify_request(hello_record, b"abc"))
        assert (rec.content_type, rec.version, rec.epoch, rec.sequence_number) == (
            ContentType.handshake,
            DTLS_1_0,
            0,
            9,
        )
        frag = parse_handshake_fragment(rec.fragment)
        assert frag.msg_type == HandshakeType.hello_verify_request
        assert frag.is_complete

    def test_round_trip(self) -> None:
        hello_record = parse_first_record(hello_datagram())
        for cookie in (b"", b"\x00", b"cookie!" * 20, bytes(255)):
            hvr = build_hello_verify_request(hello_record, cookie)
            assert parse_hello_verify_request(hvr) == cookie

    def test_parse_rejects_other_content(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^not a handshake record \(content type 23\)"):
            parse_hello_verify_request(record(b"x", content_type=ContentType.application_data))
        body = b"\xfe\xff\x01c"
        hvr_handshake = handshake(body, msg_type=HandshakeType.hello_verify_request)
        with pytest.raises(MalformedDatagram, match=r"^epoch 2 is not 0$"):
            parse_hello_verify_request(record(hvr_handshake, epoch=2))
        with pytest.raises(
            MalformedDatagram, match=r"^handshake message type 1 is not HelloVerifyRequest$"
        ):
            parse_hello_verify_request(record(handshake(body)))
        with pytest.raises(MalformedDatagram, match=r"^fragmented HelloVerifyRequest"):
            parse_hello_verify_request(
                record(handshake(body, msg_type=HandshakeType.hello_verify_request, length=9))
            )

    def test_parse_rejects_bad_body(self) -> None:
        def hvr(body: bytes) -> bytes:
            return record(handshake(body, msg_type=HandshakeType.hello_verify_request))

        with pytest.raises(MalformedDatagram, match=r"^HelloVerifyRequest truncated: 2 bytes$"):
            parse_hello_verify_request(hvr(b"\xfe\xff"))
        with pytest.raises(
            MalformedDatagram,
            match=r"^HelloVerifyRequest cookie length 5 does not match the 2 bytes left$",
        ):
            parse_hello_verify_request(hvr(b"\xfe\xff\x05ab"))
        with pytest.raises(
            MalformedDatagram,
            match=r"^HelloVerifyRequest cookie length 1 does not match the 2 bytes left$",
        ):
            parse_hello_verify_request(hvr(b"\xfe\xff\x01ab"))


# ---------------------------------------------------------------------------------------
# Alerts and ClientKeyExchange
# ---------------------------------------------------------------------------------------


class TestParseAlert:
    def test_fatal_handshake_failure(self) -> None:
        assert parse_alert(b"\x02\x28") == (2, 40)

    def test_warning_close_notify(self) -> None:
        assert parse_alert(b"\x01\x00") == (1, 0)

    @pytest.mark.parametrize("fragment", [b"", b"\x02", b"\x02\x28\x00"])
    def test_wrong_length(self, fragment: bytes) -> None:
        with pytest.raises(MalformedDatagram) as excinfo:
            parse_alert(fragment)
        assert error_message(excinfo) == f"alert is {len(fragment)} bytes, not 2"


class TestParsePskIdentity:
    def test_plain_psk(self) -> None:
        assert parse_psk_identity_from_client_key_exchange(b"\x00\x06client") == b"client"

    def test_ecdhe_psk_ignores_public_value(self) -> None:
        body = b"\x00\x03abc" + b"\x41" + bytes(65)
        assert parse_psk_identity_from_client_key_exchange(body) == b"abc"

    def test_empty_identity(self) -> None:
        assert parse_psk_identity_from_client_key_exchange(b"\x00\x00") == b""

    @pytest.mark.parametrize("body", [b"", b"\x00"])
    def test_truncated_length(self, body: bytes) -> None:
        with pytest.raises(MalformedDatagram) as excinfo:
            parse_psk_identity_from_client_key_exchange(body)
        assert error_message(excinfo) == f"ClientKeyExchange truncated: {len(body)} bytes"

    def test_identity_past_end(self) -> None:
        with pytest.raises(
            MalformedDatagram, match=r"^PSK identity length 10 exceeds the 3 bytes left$"
        ):
            parse_psk_identity_from_client_key_exchange(b"\x00\x0aabc")

    @pytest.mark.parametrize("size", [255, 256, 257, 300, 0xFFFF])
    def test_identity_lengths_use_both_bytes(self, size: int) -> None:
        identity = bytes(i % 251 for i in range(size))
        body = size.to_bytes(2, "big") + identity + b"\x41" + bytes(65)
        if size <= 256:  # OpenSSL's limit (PSK_MAX_IDENTITY_LEN)
            assert parse_psk_identity_from_client_key_exchange(body) == identity
            return
        # Refused, and the message shows the length was read from both bytes.
        with pytest.raises(MalformedDatagram, match=rf"^PSK identity of {size} bytes exceeds"):
            parse_psk_identity_from_client_key_exchange(body)

    def test_a_long_identity_past_end(self) -> None:
        with pytest.raises(
            MalformedDatagram, match=r"^PSK identity length 256 exceeds the 255 bytes left$"
        ):
            parse_psk_identity_from_client_key_exchange(b"\x01\x00" + bytes(255))


def client_key_exchange(identity: bytes, **fields: int) -> bytes:
    """A PSK ClientKeyExchange handshake message (RFC 4279): just the identity vector."""
    body = len(identity).to_bytes(2, "big") + identity
    return handshake(body, msg_type=HandshakeType.client_key_exchange, **fields)


class TestParsePskIdentityFromFlight:
    def test_client_key_exchange_alone(self) -> None:
        assert parse_psk_identity_from_flight(record(client_key_exchange(b"id"))) == b"id"

    def test_records_before_the_client_key_exchange_are_skipped(self) -> None:
        # A certificate-authenticated PSK client sends its Certificate first; an alert, a
        # ChangeCipherSpec or an epoch-1 record (ciphertext, which must not be parsed as a
        # handshake message) may sit in front of it too.
        certificate = record(handshake(b"\x00\x00\x00", msg_type=11))
        alert = record(b"\x01\x00", content_type=ContentType.alert)
        change_cipher_spec = record(b"\x01", content_type=ContentType.change_cipher_spec)
        encrypted = record(b"\xff" * 5, epoch=1)
        datagram = (
            certificate
            + alert
            + change_cipher_spec
            + encrypted
            + record(client_key_exchange(b"the identity"))
            + record(b"\xee" * 40, epoch=1)  # the Finished after it
        )
        assert parse_psk_identity_from_flight(datagram) == b"the identity"

    def test_none_without_a_complete_client_key_exchange(self) -> None:
        certificate = record(handshake(b"\x00\x00\x03abc", msg_type=11))
        fragmented = record(
            handshake(b"\x00\x08iden", msg_type=HandshakeType.client_key_exchange, length=10)
        )
        assert parse_psk_identity_from_flight(certificate) is None
        assert parse_psk_identity_from_flight(certificate + fragmented) is None
        assert parse_psk_identity_from_flight(record(b"\x01", content_type=20)) is None

    def test_the_first_complete_client_key_exchange_counts(self) -> None:
        datagram = record(client_key_exchange(b"first")) + record(client_key_exchange(b"second"))
        assert parse_psk_identity_from_flight(datagram) == b"first"

    def test_bad_bytes_raise_malformed(self) -> None:
        with pytest.raises(MalformedDatagram, match=r"^handshake header truncated: 5 bytes$"):
            parse_psk_identity_from_flight(record(b"\xff" * 5))
        with pytest.raises(MalformedDatagram, match=r"^empty datagram$"):
            parse_psk_identity_from_flight(b"")


# ---------------------------------------------------------------------------------------
# A real OpenSSL client
# ---------------------------------------------------------------------------------------


def openssl_client() -> SSL.Connection:
    """A DTLS client connection on memory BIOs; nothing is sent until we read its BIO."""
    ctx = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    # PSK suites would need a PSK callback, which pyOpenSSL does not offer; the
    # ClientHello format is the same whatever suites it lists.
    ctx.set_cipher_list(b"DEFAULT")
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn


def advance(conn: SSL.Connection) -> bytes:
    """Let the client run until it waits for the server, and return what it sent."""
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


class TestRealOpenSSLClient:
    def test_first_client_hello_parses(self) -> None:
        conn = openssl_client()
        datagram = advance(conn)
        initial = parse_initial_client_hello(datagram)
        assert initial.record.raw == datagram  # one record, nothing else
        assert initial.record.content_type == ContentType.handshake
        assert initial.record.epoch == 0
        assert initial.handshake.message_seq == 0
        assert initial.handshake.is_complete
        hello = initial.hello
        assert hello.client_version == DTLS_1_2
        assert hello.cookie == b""
        assert len(hello.random) == 32
        assert len(hello.cipher_suites) >= 2
        assert hello.compression_methods == b"\x00"
        assert hello.extensions != b""
        # Our HelloVerifyRequest must be smaller than what it answers (no amplification).
        assert len(datagram) > 28 + CookieJar.COOKIE_LENGTH

    def test_openssl_accepts_our_hello_verify_request(self) -> None:
        conn = openssl_client()
        first = parse_initial_client_hello(advance(conn))
        peer = ("192.0.2.10", 40000)
        jar = CookieJar()
        cookie = jar.make_cookie(peer, first.hello)
        assert len(cookie) == 16
        assert not jar.is_valid(peer, first.hello)  # no cookie yet

        conn.bio_write(build_hello_verify_request(first.record, cookie))
        second = parse_initial_client_hello(advance(conn))

        # The client echoed exactly our cookie and repeated the fields it must repeat.
        assert second.hello.cookie == cookie
        assert second.hello.cookie_input() == first.hello.cookie_input()
        assert second.hello.random == first.hello.random
        assert second.record.sequence_number != first.record.sequence_number
        assert second.handshake.message_seq == 1

        assert jar.is_valid(peer, second.hello)
        assert not jar.is_valid(("192.0.2.10", 40001), second.hello)
        assert not jar.is_valid(("192.0.2.11", 40000), second.hello)
        assert not jar.is_valid(("::ffff:192.0.2.10", 40000), second.hello)
        # The cookie grafted onto a different hello (other random) is rejected.
        grafted = dataclasses.replace(second.hello, random=bytes(32))
        assert not jar.is_valid(peer, grafted)
        other_client_hello = parse_initial_client_hello(advance(openssl_client())).hello
        assert other_client_hello.random != first.hello.random
        assert not jar.is_valid(peer, dataclasses.replace(other_client_hello, cookie=cookie))

    def test_client_flight_splits_into_records(self) -> None:
        conn = openssl_client()
        datagram = advance(conn)
        assert split_records(datagram) == [datagram]
        assert pack_datagrams(split_records(datagram), 1500) == [datagram]
