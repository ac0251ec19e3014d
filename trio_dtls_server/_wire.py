"""DTLS 1.2 wire format: the one place where untrusted datagram bytes are parsed.

A DTLS server has to look at datagrams *before* OpenSSL sees them: a datagram from an
address we do not know yet must be a ClientHello, and we answer it statelessly with a
HelloVerifyRequest (RFC 6347 section 4.2.1) so that a spoofed source address cannot make
us allocate a connection or send a large reply. That means parsing attacker-controlled
bytes in Python, so every parser here follows the same rules:

* Every length is checked against the bytes actually present before it is used, so a
  slice can never silently come back short.
* Anything wrong with the input raises :class:`MalformedDatagram` (a :class:`ValueError`)
  with a short message saying what was wrong. No other exception type escapes a
  ``parse_*`` function for any input, so callers need exactly one ``except`` clause and
  can log the message without fear.
* Parsers return immutable values (frozen dataclasses, or named tuples for the records and
  handshake fragments every datagram yields) holding ``bytes`` copies, never views into a buffer
  that may later be reused.

The layouts, all big-endian (RFC 6347 sections 4.1 and 4.2.2)::

    record:     type(1) version(2) epoch(2) sequence_number(6) length(2) fragment[length]
    handshake:  msg_type(1) length(3) message_seq(2) fragment_offset(3)
                fragment_length(3) body[fragment_length]

Functions that handle *trusted* bytes (written by OpenSSL, or built by us) do not start
with ``parse_``.

This module owns every wire byte: the numbers (:class:`ContentType`, :class:`HandshakeType`,
:class:`AlertLevel`, :class:`AlertDescription`, :class:`ExtensionType`), the cheap peeks at a
record header that the hot paths make instead of parsing (``single_record_header``,
``looks_like_client_hello``, ...), the renumbering of our epoch-0 records, and the encoders of
records, headers and alerts (``encode_*``).  No other module indexes record bytes
(``tests/test_wire_ownership.py`` checks).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from ._errors import DTLSError

__all__ = [
    "DTLS_1_0",
    "DTLS_1_2",
    "HANDSHAKE_HEADER_LENGTH",
    "FATAL_ONLY_ALERTS",
    "MAX_CONNECTION_ID_LENGTH",
    "MAX_PSK_IDENTITY_LENGTH",
    "MAX_RECORD_FRAGMENT",
    "RECORD_HEADER_LENGTH",
    "AlertDescription",
    "AlertLevel",
    "ContentType",
    "ExtensionType",
    "HandshakeType",
    "CidRecord",
    "ClientHello",
    "FragmentedClientHello",
    "HandshakeFragment",
    "InitialClientHello",
    "ServerHello",
    "MalformedDatagram",
    "Record",
    "RecordHeader",
    "build_hello_verify_request",
    "cid_record_header",
    "client_hello_connection_id",
    "datagram_connection_id",
    "encode_alert",
    "encode_plaintext_alert",
    "encode_pseudo_header",
    "encode_record",
    "encode_record_header",
    "first_content_type",
    "handshake_type",
    "is_protected_data_or_alert",
    "looks_like_client_hello",
    "mac_pseudo_header",
    "mentions_max_fragment_length",
    "read_own_record",
    "renumber_plaintext_records",
    "single_application_record",
    "single_cid_record",
    "single_record_epoch",
    "single_record_header",
    "starts_with_cid_record",
    "encode_connection_id_extension",
    "pack_datagrams",
    "parse_alert",
    "parse_cid_record_at",
    "parse_client_hello",
    "parse_connection_id_extension",
    "parse_extension",
    "parse_first_record",
    "parse_handshake_fragment",
    "parse_handshake_messages",
    "parse_hello_verify_request",
    "parse_initial_client_hello",
    "parse_psk_identity_from_client_key_exchange",
    "parse_psk_identity_from_flight",
    "parse_record_headers",
    "parse_records",
    "parse_records_with_cid",
    "parse_server_hello",
    "split_records",
    "plaintext_records",
]


class ContentType(enum.IntEnum):
    """Record content types (RFC 5246 section 6.2.1, and RFC 9146 section 4's ``tls12_cid``).

    RFC 6347 section 4.1.2.7 says a record with any other type is silently discarded, so the
    parsers treat one as malformed (``tls12_cid`` only where a connection ID was negotiated).
    """

    change_cipher_spec = 20
    alert = 21
    handshake = 22
    application_data = 23
    tls12_cid = 25


class HandshakeType(enum.IntEnum):
    """The handshake message types this package names (RFC 5246 section 7.4, RFC 6347
    section 4.3.2); OpenSSL handles the others."""

    client_hello = 1
    server_hello = 2
    hello_verify_request = 3
    certificate = 11
    server_key_exchange = 12
    certificate_request = 13
    server_hello_done = 14
    certificate_verify = 15
    client_key_exchange = 16
    finished = 20


class ExtensionType(enum.IntEnum):
    """The hello extension types this package names (IANA's TLS ExtensionType registry)."""

    max_fragment_length = 1  # RFC 6066 section 4
    padding = 21  # RFC 7685
    encrypt_then_mac = 22  # RFC 7366
    extended_master_secret = 23  # RFC 7627
    connection_id = 54  # RFC 9146 section 3 (the drafts and Mbed TLS 2.x used 53 / 254)


# DTLS versions are the one's complement of the TLS version they are based on, so they
# count *down*: DTLS 1.0 is {254, 255}, DTLS 1.2 is {254, 253}.
DTLS_1_0 = 0xFEFF
DTLS_1_2 = 0xFEFD


class AlertLevel(enum.IntEnum):
    """Alert levels (RFC 5246 section 7.2)."""

    warning = 1
    fatal = 2


class AlertDescription(enum.IntEnum):
    """TLS alert descriptions by number: RFC 5246 section 7.2, and the later registrations
    this package can meet (RFC 7507, RFC 6066, RFC 8446, RFC 4279's unknown_psk_identity)."""

    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    decryption_failed = 21  # RFC 5246: decryption_failed_RESERVED, never to be sent
    record_overflow = 22
    decompression_failure = 30
    handshake_failure = 40
    no_certificate = 41  # SSL 3.0 only: no_certificate_RESERVED
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    export_restriction = 60  # TLS 1.0 only: export_restriction_RESERVED
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    no_renegotiation = 100
    missing_extension = 109
    unsupported_extension = 110
    certificate_unobtainable = 111
    unrecognized_name = 112
    bad_certificate_status_response = 113
    bad_certificate_hash_value = 114
    unknown_psk_identity = 115


#: The descriptions RFC 5246 section 7.2.2 calls "always fatal" (handshake_failure: "a fatal
#: error"), and decryption_failed, which RFC 2246 made always fatal and RFC 5246 forbids
#: sending at all.  An alert with one of these descriptions ends the connection whatever level
#: the peer wrote next to it: a peer that says "bad_record_mac, but only a warning" is broken
#: or probing, and carrying on would trust a state the peer itself calls corrupt.
#: close_notify, user_canceled and no_renegotiation are warnings; the certificate alerts
#: (bad_certificate ... certificate_unknown) and the later registrations may be either.
FATAL_ONLY_ALERTS: frozenset[int] = frozenset(
    {
        AlertDescription.unexpected_message,
        AlertDescription.bad_record_mac,
        AlertDescription.decryption_failed,
        AlertDescription.record_overflow,
        AlertDescription.decompression_failure,
        AlertDescription.handshake_failure,
        AlertDescription.illegal_parameter,
        AlertDescription.unknown_ca,
        AlertDescription.access_denied,
        AlertDescription.decode_error,
        AlertDescription.decrypt_error,
        AlertDescription.protocol_version,
        AlertDescription.insufficient_security,
        AlertDescription.internal_error,
        AlertDescription.unsupported_extension,
    }
)

RECORD_HEADER_LENGTH = 13
HANDSHAKE_HEADER_LENGTH = 12

# RFC 6347 section 4.1 caps DTLSCiphertext.length at 2^14 + 2048; anything longer cannot
# come from a conforming peer.
MAX_RECORD_FRAGMENT = 2**14 + 2048

# OpenSSL's PSK_MAX_IDENTITY_LEN: a server ClientKeyExchange naming a longer identity is refused
# (fatal decode_error) before the PSK callback runs.  OpenSSL 1.0 had 128 (RFC 4279 §5.3's
# minimum every implementation must support); 1.1.0 and later, 256 (checked on OpenSSL 4.0:
# 256 bytes reach the callback, 257 do not).  We never look up what OpenSSL would not use.
MAX_PSK_IDENTITY_LENGTH = 256

_DTLS_MAJOR = 0xFE
_MIN_CONTENT_TYPE = int(ContentType.change_cipher_spec)
_MAX_CONTENT_TYPE = int(ContentType.application_data)
# The enum members the parsers compare with, as plain int globals: reading an attribute of an
# Enum class costs ~100 ns on Python 3.11 (its metaclass has ``__getattr__``), a global ~15 ns,
# and these run per datagram (the reader, the cookie exchange under a flood of hellos).
_HANDSHAKE = int(ContentType.handshake)
_ALERT = int(ContentType.alert)
_APPLICATION_DATA = int(ContentType.application_data)
_TLS12_CID = int(ContentType.tls12_cid)
_CLIENT_HELLO = int(HandshakeType.client_hello)
_SERVER_HELLO = int(HandshakeType.server_hello)
_HELLO_VERIFY_REQUEST = int(HandshakeType.hello_verify_request)
_CLIENT_KEY_EXCHANGE = int(HandshakeType.client_key_exchange)
_CONNECTION_ID = int(ExtensionType.connection_id)
_TLS12_CID_BYTE = bytes((_TLS12_CID,))
_RANDOM_LENGTH = 32
_MAX_SESSION_ID = 32
_MAX_COOKIE = 255

# type(1) version(2) epoch(2) sequence_number as high(2)+low(4) length(2) = 13 bytes.
# struct has no 6-byte integer, so the 48-bit sequence number is read as two parts.
_RECORD_HEADER = struct.Struct("!BHHHIH")
assert _RECORD_HEADER.size == RECORD_HEADER_LENGTH
# The same 13 bytes written with epoch and sequence number as one 64-bit number (RFC 6347
# section 4.1 calls it the "epoch and sequence number"; the record layer keeps it that way).
_RECORD_HEADER_OUT = struct.Struct("!BHQH")
assert _RECORD_HEADER_OUT.size == RECORD_HEADER_LENGTH
# seq_num(8) type(1) version(2) length(2): the header fields a MAC or an AEAD covers.
_PSEUDO_HEADER = struct.Struct("!QBHH")


class MalformedDatagram(DTLSError, ValueError):
    """Untrusted bytes that are not what they claim to be.

    The message says what was wrong, e.g. ``"record header truncated: 7 bytes"``. It is
    meant for logs and debugging; never for the peer.
    """


class FragmentedClientHello(MalformedDatagram):
    """A ClientHello split across several handshake fragments.

    Legal DTLS, but a stateless cookie exchange cannot reassemble fragments without
    keeping state per source address, which is exactly what the cookie exchange exists to
    avoid. Real clients send a ClientHello in one record, so callers drop these; a separate
    class lets them count the drops separately from garbage.
    """


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------


class Record(NamedTuple):
    """One DTLS record.

    ``raw`` is the whole record, header included, exactly as received; the other fields
    are decoded from it. ``sequence_number`` is the 48-bit per-epoch record number.

    A named tuple (immutable, compared by value), not a frozen dataclass: a handshake parses
    about fifteen records, and a frozen dataclass costs 1.1 µs to build against 0.4 µs.
    """

    content_type: int
    version: int
    epoch: int
    sequence_number: int
    fragment: bytes
    raw: bytes


class RecordHeader(NamedTuple):
    """One record's header, decoded, without its fragment: enough to judge a record cheaply.

    ``length`` is the fragment's length, already checked to lie inside the datagram.
    """

    content_type: int
    version: int
    epoch: int
    sequence_number: int
    length: int


def _parse_header_at(data: bytes, start: int) -> RecordHeader:
    """Parse and check the record header at ``data[start]``; the caller has checked start < len."""
    left = len(data) - start
    if left < RECORD_HEADER_LENGTH:
        raise MalformedDatagram(f"record header truncated: {left} bytes")
    content_type, version, epoch, seq_high, seq_low, length = _RECORD_HEADER.unpack_from(
        data, start
    )
    if not _MIN_CONTENT_TYPE <= content_type <= _MAX_CONTENT_TYPE:
        raise MalformedDatagram(f"content type {content_type} is not a DTLS record type")
    if version >> 8 != _DTLS_MAJOR:
        raise MalformedDatagram(f"record version {version:#06x} is not DTLS")
    # Check the absolute cap before "left" so an absurd length gets the clearer message.
    if length > MAX_RECORD_FRAGMENT:
        raise MalformedDatagram(
            f"record length {length} exceeds the maximum of {MAX_RECORD_FRAGMENT}"
        )
    if RECORD_HEADER_LENGTH + length > left:
        raise MalformedDatagram(
            f"record length {length} exceeds the {left - RECORD_HEADER_LENGTH} bytes left"
        )
    return RecordHeader(content_type, version, epoch, (seq_high << 32) | seq_low, length)


def _parse_record_at(data: bytes, start: int) -> Record:
    """Parse the record beginning at ``data[start]``; the caller has checked start < len."""
    left = len(data) - start
    if left < RECORD_HEADER_LENGTH:
        raise MalformedDatagram(f"record header truncated: {left} bytes")
    content_type, version, epoch, seq_high, seq_low, length = _RECORD_HEADER.unpack_from(
        data, start
    )
    # The checks of _parse_header_at, inline: this runs for every record of every datagram.
    if (
        not _MIN_CONTENT_TYPE <= content_type <= _MAX_CONTENT_TYPE
        or version >> 8 != _DTLS_MAJOR
        or RECORD_HEADER_LENGTH + length > left
        or length > MAX_RECORD_FRAGMENT
    ):
        _parse_header_at(data, start)  # raises, with the message that names the fault
    body_start = start + RECORD_HEADER_LENGTH
    end = body_start + length
    return Record(
        content_type,
        version,
        epoch,
        (seq_high << 32) | seq_low,
        data[body_start:end],
        data[start:end],
    )


def parse_record_headers(datagram: bytes) -> list[RecordHeader]:
    """The headers of a datagram's records, with every check of :func:`parse_records`.

    Nothing is copied: this is how the server's reader task judges a datagram for an
    established peer (which epoch, how long, which sequence numbers) before queueing it.
    """
    if not datagram:
        raise MalformedDatagram("empty datagram")
    headers = []
    position = 0
    total = len(datagram)
    while position < total:
        header = _parse_header_at(datagram, position)
        headers.append(header)
        position += RECORD_HEADER_LENGTH + header.length
    return headers


def parse_records(datagram: bytes) -> list[Record]:
    """Split a received datagram into its DTLS records.

    A datagram may carry several records back to back (RFC 6347 section 4.1.1) but a
    record never spans datagrams, so the records must tile the datagram exactly: leftover
    bytes too short for a header, or a length field running past the end, make the whole
    datagram malformed. So do an unknown content type and a version that is not DTLS.

    The result is never empty, and ``b"".join(r.raw for r in records) == datagram``.
    """
    if not datagram:
        raise MalformedDatagram("empty datagram")
    records = []
    position = 0
    total = len(datagram)
    while position < total:
        record = _parse_record_at(datagram, position)
        records.append(record)
        position += len(record[5])  # .raw
    return records


def plaintext_records(datagrams: Iterable[bytes], content_type: int) -> Iterator[Record]:
    """The plaintext (epoch 0) records of ``content_type`` in ``datagrams``, in order.

    A datagram that does not split into records is skipped, not an error: these bytes may
    come from the network, and one broken datagram must not hide the records of the next.
    """
    for datagram in datagrams:
        try:
            records = parse_records(datagram)
        except MalformedDatagram:
            continue
        for record in records:
            if record.epoch == 0 and record.content_type == content_type:
                yield record


def parse_first_record(datagram: bytes) -> Record:
    """Parse only the first record of a datagram, with the same checks as parse_records.

    This is the cheap way to classify a datagram (which epoch? handshake or application
    data?) without touching the rest of it. Bytes after the first record are not looked
    at, so they may be anything.
    """
    if not datagram:
        raise MalformedDatagram("empty datagram")
    return _parse_record_at(datagram, 0)


def split_records(flight: bytes) -> list[bytes]:
    """Split the bytes OpenSSL wrote into its write BIO into individual records.

    OpenSSL writes a whole flight (e.g. ServerHello ... ServerHelloDone) into the memory
    BIO as one blob of concatenated records. To send it over a path with a small MTU we
    re-pack it ourselves (see :func:`pack_datagrams`), which needs the record boundaries.

    The input is trusted, so only the framing is checked: every record header must be
    complete and every length must land inside the input. If that fails something is
    badly wrong (a bug, or a BIO read that cut a record in half), and we raise
    :class:`MalformedDatagram` rather than send a corrupt datagram. An empty flight gives
    an empty list.
    """
    records = []
    position = 0
    total = len(flight)
    while position < total:
        left = total - position
        if left < RECORD_HEADER_LENGTH:
            raise MalformedDatagram(f"record header truncated: {left} bytes")
        # The length is the last two bytes of the 13-byte header.
        length = int.from_bytes(flight[position + 11 : position + 13], "big")
        end = position + RECORD_HEADER_LENGTH + length
        if end > total:
            raise MalformedDatagram(
                f"record length {length} exceeds the {left - RECORD_HEADER_LENGTH} bytes left"
            )
        records.append(flight[position:end])
        position = end
    return records


def pack_datagrams(records: list[bytes], mtu: int) -> list[bytes]:
    """Pack whole records, in order, into as few datagrams of at most ``mtu`` bytes as possible.

    Records are never split (DTLS forbids a record spanning datagrams) and never
    reordered. A record that alone exceeds ``mtu`` is sent in a datagram of its own: the
    oversized datagram may still get through (IP fragmentation), whereas dropping it would
    certainly stall the handshake.

    Filling each datagram greedily is optimal here: since order is fixed, closing a
    datagram before it is full can only push records later, never save a datagram.
    """
    if mtu <= 0:
        raise ValueError(f"mtu must be positive, not {mtu}")
    datagrams: list[bytes] = []
    current: list[bytes] = []
    current_size = 0
    for record in records:
        if current and current_size + len(record) > mtu:
            datagrams.append(b"".join(current))
            current = []
            current_size = 0
        current.append(record)
        current_size += len(record)
    if current:
        datagrams.append(b"".join(current))
    return datagrams


# ---------------------------------------------------------------------------------------
# Peeks: a record header judged without parsing the datagram
# ---------------------------------------------------------------------------------------
# These run for every datagram (the server's reader, a session's application data), so they
# unpack with ``_RECORD_HEADER``, compare with plain ints, and build their named tuples with
# ``tuple.__new__`` (130 ns, where calling the class costs 300 ns on Python 3.11).  The peeks
# never raise; ``read_own_record`` and ``mac_pseudo_header`` raise only MalformedDatagram.

_new_tuple = tuple.__new__


def single_record_epoch(datagram: bytes) -> int | None:
    """The epoch of ``datagram`` if it is exactly one record (its length field covers the rest
    of the datagram), else None: the cheapest look at a datagram, for the encrypt-then-MAC
    guard, which only checks the records of one epoch."""
    if len(datagram) < RECORD_HEADER_LENGTH:
        return None
    header = _RECORD_HEADER.unpack_from(datagram)
    if header[5] != len(datagram) - RECORD_HEADER_LENGTH:
        return None
    epoch: int = header[2]
    return epoch


def single_record_header(datagram: bytes) -> RecordHeader | None:
    """The header of ``datagram`` if it is exactly one record (its length field covers the
    rest of the datagram), else None.

    The hot path's shortcut around :func:`parse_records`: an application datagram is almost
    always one record, and its header is all the caller needs.  Only the framing is checked,
    not the content type or the version (the caller compares what it needs).
    """
    size = len(datagram) - RECORD_HEADER_LENGTH
    if size < 0:
        return None
    content_type, version, epoch, seq_high, seq_low, length = _RECORD_HEADER.unpack_from(datagram)
    if length != size:
        return None
    return _new_tuple(
        RecordHeader, (content_type, version, epoch, (seq_high << 32) | seq_low, length)
    )


def single_application_record(datagram: bytes, epoch: int) -> Record | None:
    """``datagram`` as a :class:`Record` if it is exactly one application_data record of
    ``epoch``, else None (the caller then parses it in full).

    The established session's fast path.  ``raw`` is ``datagram`` itself (no copy); the
    version is not checked (the record's authentication covers it).
    """
    size = len(datagram) - RECORD_HEADER_LENGTH
    if size < 0:
        return None
    content_type, version, record_epoch, seq_high, seq_low, length = _RECORD_HEADER.unpack_from(
        datagram
    )
    if length != size or content_type != _APPLICATION_DATA or record_epoch != epoch:
        return None
    fields = (
        content_type,
        version,
        epoch,
        (seq_high << 32) | seq_low,
        datagram[RECORD_HEADER_LENGTH:],
        datagram,
    )
    return _new_tuple(Record, fields)


def first_content_type(datagram: bytes) -> int | None:
    """The content type byte of the record ``datagram`` starts with (unchecked), or None if
    it is empty."""
    return datagram[0] if datagram else None


def starts_with_cid_record(datagram: bytes) -> bool:
    """Whether ``datagram`` starts with a ``tls12_cid`` record (its first byte; no more)."""
    return datagram[:1] == _TLS12_CID_BYTE


def looks_like_client_hello(datagram: bytes) -> bool:
    """Cheap pre-check before :func:`parse_initial_client_hello`: an epoch-0 handshake record
    whose first handshake message is a ClientHello, and long enough to hold both headers."""
    return (
        len(datagram) > RECORD_HEADER_LENGTH + HANDSHAKE_HEADER_LENGTH
        and datagram[0] == _HANDSHAKE
        and datagram[3] == 0
        and datagram[4] == 0
        and datagram[RECORD_HEADER_LENGTH] == _CLIENT_HELLO
    )


def is_protected_data_or_alert(datagram: bytes) -> bool:
    """Whether ``datagram`` starts with an application_data or alert record of an epoch
    other than 0 (protected).  Only the first record's bytes 0 and 3-4 are looked at."""
    return (
        bool(datagram) and datagram[0] in (_APPLICATION_DATA, _ALERT) and datagram[3:5] != b"\0\0"
    )


def handshake_type(fragment: bytes) -> int | None:
    """The msg_type byte of the handshake message a handshake record's ``fragment`` starts
    with (unchecked: the header may be truncated), or None for an empty fragment."""
    return fragment[0] if fragment else None


def read_own_record(record: bytes) -> Record:
    """One whole record of *trusted* bytes (OpenSSL's output or ours, as :func:`split_records`
    cut it, or a peer's record that :func:`parse_records` already framed: its ``raw``),
    decoded without the checks of :func:`parse_records`.

    Raises :class:`MalformedDatagram` only for fewer bytes than a record header: a bug.
    """
    if len(record) < RECORD_HEADER_LENGTH:
        raise MalformedDatagram(f"record header truncated: {len(record)} bytes")
    content_type, version, epoch, seq_high, seq_low, length = _RECORD_HEADER.unpack_from(record)
    end = RECORD_HEADER_LENGTH + length
    return Record(
        content_type,
        version,
        epoch,
        (seq_high << 32) | seq_low,
        record[RECORD_HEADER_LENGTH:end],
        record[:end],
    )


def renumber_plaintext_records(records: list[bytes], offset: int) -> list[bytes]:
    """``records`` (trusted: OpenSSL's, as :func:`split_records` cut them) with ``offset``
    added to the sequence number of every epoch-0 record; the others unchanged.

    The server numbers its epoch-0 records after the client's verified ClientHello (see
    ``HandshakeDriver._renumbered``); the numbers of plaintext records are not authenticated and
    not in the handshake hash, so rewriting them is safe.
    """
    if not offset:
        return records
    renumbered = []
    for record in records:
        if record[3:5] == b"\0\0":
            sequence = int.from_bytes(record[5:11], "big") + offset
            record = record[:5] + sequence.to_bytes(6, "big") + record[11:]
        renumbered.append(record)
    return renumbered


def mac_pseudo_header(record: bytes, length: int) -> bytes:
    """``seq_num(8) type(1) version(2) length(2)`` of ``record`` with the fragment length
    ``length``: what the MAC of a CBC record covers before its content (RFC 5246 section
    6.2.3.1, RFC 7366 section 3), and AEAD's additional data (section 6.2.3.3).

    Raises :class:`MalformedDatagram` if ``record`` is shorter than a record header.
    """
    if len(record) < RECORD_HEADER_LENGTH:
        raise MalformedDatagram(f"record header truncated: {len(record)} bytes")
    return record[3:11] + record[0:3] + length.to_bytes(2, "big")


# ---------------------------------------------------------------------------------------
# Encoders (trusted values: ours)
# ---------------------------------------------------------------------------------------


def encode_record_header(
    content_type: int, version: int, epoch: int, sequence: int, length: int
) -> bytes:
    """The 13-byte header of a record we write (RFC 6347 section 4.1).

    The values are ours (``sequence`` below 2^48, the others in their fields), so one out of
    range is a bug; :class:`struct.error` says so for an epoch, a length or a version too large.
    """
    return _RECORD_HEADER_OUT.pack(content_type, version, (epoch << 48) | sequence, length)


def encode_pseudo_header(
    content_type: int, version: int, epoch_and_sequence: int, length: int
) -> bytes:
    """``seq_num(8) type(1) version(2) length(2)``: the header fields in the order a record's
    MAC covers them (RFC 5246 section 6.2.3.1) and AEAD's additional data (section 6.2.3.3).
    ``epoch_and_sequence`` is DTLS's ``seq_num``: epoch (16 bits) then sequence number (48).
    (See :func:`mac_pseudo_header` for the same bytes read from a record.)"""
    return _PSEUDO_HEADER.pack(epoch_and_sequence, content_type, version, length)


def encode_record(
    content_type: int, version: int, epoch: int, sequence: int, fragment: bytes
) -> bytes:
    """A whole record: :func:`encode_record_header` followed by ``fragment``."""
    return (
        _RECORD_HEADER_OUT.pack(content_type, version, (epoch << 48) | sequence, len(fragment))
        + fragment
    )


def encode_alert(level: int, description: int) -> bytes:
    """The two bytes of an alert (RFC 5246 section 7.2): the content of an alert record, to be
    protected by the record layer, or sent as it is by :func:`encode_plaintext_alert`."""
    return bytes((level, description))


def encode_plaintext_alert(
    level: int, description: int, sequence: int, version: int = DTLS_1_2
) -> bytes:
    """An unprotected (epoch 0) alert record numbered ``sequence``: the one alert a session
    writes itself during a handshake, before it has sent its ChangeCipherSpec."""
    return encode_record(_ALERT, version, 0, sequence, encode_alert(level, description))


# ---------------------------------------------------------------------------------------
# Handshake messages
# ---------------------------------------------------------------------------------------


class HandshakeFragment(NamedTuple):
    """One handshake message (or a fragment of one) from a handshake record.

    DTLS can split a handshake message of ``length`` bytes into fragments; this one holds
    ``body`` = bytes ``[fragment_offset, fragment_offset + fragment_length)`` of it.
    (A named tuple, like :class:`Record`, because it is built several times a handshake.)
    """

    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    fragment_length: int
    body: bytes

    @property
    def is_complete(self) -> bool:
        """True if this fragment is the whole message, so ``body`` can be parsed."""
        return self.fragment_offset == 0 and self.fragment_length == self.length


def parse_handshake_fragment(fragment: bytes) -> HandshakeFragment:
    """Parse the fragment of a handshake record as exactly one handshake message fragment.

    DTLS allows a record to carry several handshake messages back to back, but the
    messages we parse ourselves (ClientHello, HelloVerifyRequest, ClientKeyExchange) are
    each sent alone in their record by real implementations. So this parses one message per
    call, and bytes after its body are an error rather than a second message.

    Raises MalformedDatagram if the header is truncated, if the body is not exactly
    ``fragment_length`` bytes, or if the fragment reaches past the end of the message.
    """
    size = len(fragment)
    if size < HANDSHAKE_HEADER_LENGTH:
        raise MalformedDatagram(f"handshake header truncated: {size} bytes")
    msg_type = fragment[0]
    length = int.from_bytes(fragment[1:4], "big")
    message_seq = int.from_bytes(fragment[4:6], "big")
    fragment_offset = int.from_bytes(fragment[6:9], "big")
    fragment_length = int.from_bytes(fragment[9:12], "big")
    body_size = size - HANDSHAKE_HEADER_LENGTH
    if fragment_length > body_size:
        raise MalformedDatagram(
            f"handshake fragment length {fragment_length} exceeds the {body_size} bytes left"
        )
    if fragment_length < body_size:
        raise MalformedDatagram(
            f"{body_size - fragment_length} bytes after the handshake fragment body"
        )
    if fragment_offset + fragment_length > length:
        raise MalformedDatagram(
            f"handshake fragment (offset {fragment_offset}, {fragment_length} bytes) "
            f"runs past the message length {length}"
        )
    return HandshakeFragment(
        msg_type,
        length,
        message_seq,
        fragment_offset,
        fragment_length,
        fragment[HANDSHAKE_HEADER_LENGTH:],
    )


def parse_handshake_messages(fragment: bytes) -> list[HandshakeFragment]:
    """Parse the fragment of a plaintext handshake record as one or more message fragments.

    A record may carry several handshake messages (or fragments of them) back to back (RFC
    6347 §4.2.3); each is checked as :func:`parse_handshake_fragment` checks one: a complete
    12-byte header, a body of exactly ``fragment_length`` bytes that does not reach past the
    message's ``length``.  The fragments must tile the record exactly.  The result is never
    empty.  This is what the server checks before OpenSSL sees a handshake record during a
    handshake: OpenSSL ends the handshake for a fragment that breaks these rules.
    """
    if not fragment:
        raise MalformedDatagram("empty handshake record")
    messages = []
    position = 0
    while position < len(fragment):
        left = len(fragment) - position
        if left < HANDSHAKE_HEADER_LENGTH:
            raise MalformedDatagram(f"handshake header truncated: {left} bytes")
        fragment_length = int.from_bytes(fragment[position + 9 : position + 12], "big")
        end = position + HANDSHAKE_HEADER_LENGTH + fragment_length
        if end > len(fragment):
            raise MalformedDatagram(
                f"handshake fragment length {fragment_length} exceeds the "
                f"{left - HANDSHAKE_HEADER_LENGTH} bytes left"
            )
        messages.append(parse_handshake_fragment(fragment[position:end]))
        position = end
    return messages


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The fields of a DTLS ClientHello (RFC 6347 section 4.2.1).

    The vector fields hold the vector's content without its length prefix.
    ``extensions`` is ``b""`` both when the extensions block is absent and when it is
    present but empty; nothing we do depends on the difference.
    """

    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: bytes
    compression_methods: bytes
    extensions: bytes

    def cookie_input(self) -> bytes:
        """The bytes a HelloVerifyRequest cookie must be bound to.

        RFC 6347 section 4.2.1 requires the second ClientHello (the one carrying the
        cookie) to repeat version, random, session_id, cipher_suites and
        compression_methods from the first, so those five are what a stateless cookie can
        cover. The cookie itself obviously cannot be part of it, and extensions are
        left out because the RFC does not require clients to repeat them unchanged.

        Every variable-length field gets a 2-byte length prefix so that no two different
        hellos map to the same bytes (e.g. moving a byte from the end of session_id to
        the start of cipher_suites changes the output).
        """
        parts = [self.client_version.to_bytes(2, "big")]
        for field in (self.random, self.session_id, self.cipher_suites, self.compression_methods):
            parts.append(len(field).to_bytes(2, "big"))
            parts.append(field)
        return b"".join(parts)

    def cipher_suite_numbers(self) -> list[int]:
        """The offered cipher suites as numbers, in the client's order (the parser has checked
        that ``cipher_suites`` is a whole number of 2-byte suites)."""
        suites = self.cipher_suites
        return [int.from_bytes(suites[i : i + 2], "big") for i in range(0, len(suites), 2)]


#: A max_fragment_length extension's type and its one-byte body's length, as in a hello.
_MAX_FRAGMENT_LENGTH_BYTES = ExtensionType.max_fragment_length.to_bytes(2, "big") + b"\x00\x01"


def mentions_max_fragment_length(client_hello: bytes) -> bool:
    """Whether the bytes of a (verified) ClientHello datagram contain what a max_fragment_length
    extension starts with (RFC 6066 section 4): a byte search, not a parse, so it errs towards
    yes (a peer that may limit fragments is only treated more carefully)."""
    return _MAX_FRAGMENT_LENGTH_BYTES in client_hello


def _take_vector(data: bytes, position: int, prefix: int, what: str) -> tuple[bytes, int]:
    """Read the vector with a ``prefix``-byte length at ``position``; return it and its end."""
    header_end = position + prefix
    if header_end > len(data):
        raise MalformedDatagram(f"ClientHello truncated in the {what} length")
    length = int.from_bytes(data[position:header_end], "big")
    end = header_end + length
    if end > len(data):
        raise MalformedDatagram(
            f"ClientHello {what} length {length} exceeds the {len(data) - header_end} bytes left"
        )
    return data[header_end:end], end


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse the body of a complete ClientHello handshake message.

    Layout::

        client_version(2) random(32) session_id<0..32> cookie<0..255>
        cipher_suites<2..2^16-2> compression_methods<1..2^8-1> [extensions<0..2^16-1>]

    Every length is validated: session_id at most 32 bytes, cipher_suites non-empty and a
    whole number of 2-byte suites, compression_methods non-empty, and if anything follows
    the compression methods it must be an extensions block whose 2-byte length covers
    exactly the rest of the body. The extensions themselves are not parsed.
    """
    if len(body) < 2 + _RANDOM_LENGTH:
        raise MalformedDatagram(f"ClientHello truncated: {len(body)} bytes")
    client_version = int.from_bytes(body[0:2], "big")
    random = body[2 : 2 + _RANDOM_LENGTH]
    position = 2 + _RANDOM_LENGTH
    session_id, position = _take_vector(body, position, 1, "session_id")
    if len(session_id) > _MAX_SESSION_ID:
        raise MalformedDatagram(f"ClientHello session_id is {len(session_id)} bytes, over 32")
    cookie, position = _take_vector(body, position, 1, "cookie")
    cipher_suites, position = _take_vector(body, position, 2, "cipher_suites")
    if not cipher_suites or len(cipher_suites) % 2:
        raise MalformedDatagram(
            f"ClientHello cipher_suites length {len(cipher_suites)} is not a positive even number"
        )
    compression_methods, position = _take_vector(body, position, 1, "compression_methods")
    if not compression_methods:
        raise MalformedDatagram("ClientHello has no compression methods")
    extensions = b""
    if position < len(body):
        extensions, position = _take_vector(body, position, 2, "extensions")
        if position != len(body):
            raise MalformedDatagram(
                f"{len(body) - position} bytes after the ClientHello extensions"
            )
    return ClientHello(
        client_version=client_version,
        random=random,
        session_id=session_id,
        cookie=cookie,
        cipher_suites=cipher_suites,
        compression_methods=compression_methods,
        extensions=extensions,
    )


@dataclass(frozen=True, slots=True)
class InitialClientHello:
    """A datagram from an unknown peer that starts with a complete ClientHello."""

    record: Record
    handshake: HandshakeFragment
    hello: ClientHello


def parse_initial_client_hello(datagram: bytes) -> InitialClientHello:
    """Check that a datagram from an unknown address opens a handshake, and parse it.

    The first record must be an epoch-0 handshake record holding one complete ClientHello;
    anything else from an address without a connection is dropped, and the
    MalformedDatagram message says why. A ClientHello split into fragments raises the
    subclass :class:`FragmentedClientHello`. Records after the first are ignored: the
    cookie exchange only needs the hello, and OpenSSL will see the datagram again anyway
    once the peer has proven its address.
    """
    record = parse_first_record(datagram)
    if record.content_type != _HANDSHAKE:
        raise MalformedDatagram(f"not a handshake record (content type {record.content_type})")
    if record.epoch != 0:
        raise MalformedDatagram(f"epoch {record.epoch} is not 0")
    handshake = parse_handshake_fragment(record.fragment)
    if handshake.msg_type != _CLIENT_HELLO:
        raise MalformedDatagram(f"handshake message type {handshake.msg_type} is not ClientHello")
    if not handshake.is_complete:
        raise FragmentedClientHello(
            f"fragmented ClientHello (offset {handshake.fragment_offset}, "
            f"{handshake.fragment_length} of {handshake.length} bytes)"
        )
    return InitialClientHello(
        record=record, handshake=handshake, hello=parse_client_hello(handshake.body)
    )


# ---------------------------------------------------------------------------------------
# HelloVerifyRequest
# ---------------------------------------------------------------------------------------


def build_hello_verify_request(client_hello_record: Record, cookie: bytes) -> bytes:
    """Build the datagram answering a cookie-less ClientHello (RFC 6347 section 4.2.1).

    Laid out the way OpenSSL writes it, so clients see nothing unusual:

    * record: type 22, version fe ff (the RFC says to use DTLS 1.0 here whatever version
      is negotiated later), epoch 0, and the sequence number *copied* from the
      ClientHello record -- the server keeps no state, so it cannot have a counter of its
      own, and copying lets the client match the reply to its hello;
    * handshake: msg_type 3, message_seq 0, offset 0, fragment_length = length;
    * body: server_version fe ff, cookie length (1 byte), cookie.

    The result is ``28 + len(cookie)`` bytes. ``cookie`` is our own value, so a bad
    length is a programming error and raises a plain ValueError.
    """
    if len(cookie) > _MAX_COOKIE:
        raise ValueError(f"cookie is {len(cookie)} bytes; at most {_MAX_COOKIE} fit")
    body = DTLS_1_0.to_bytes(2, "big") + bytes([len(cookie)]) + cookie
    body_length = len(body).to_bytes(3, "big")
    handshake = (
        bytes([_HELLO_VERIFY_REQUEST])
        + body_length  # length of the whole message
        + b"\x00\x00"  # message_seq
        + b"\x00\x00\x00"  # fragment_offset
        + body_length  # fragment_length: one fragment holding everything
        + body
    )
    header = (
        bytes([_HANDSHAKE])
        + DTLS_1_0.to_bytes(2, "big")
        + b"\x00\x00"  # epoch
        + client_hello_record.sequence_number.to_bytes(6, "big")
        + len(handshake).to_bytes(2, "big")
    )
    return header + handshake


@dataclass(frozen=True, slots=True)
class ServerHello:
    """What we read of a ServerHello (RFC 5246 §7.4.1.3): the suite chosen and the extension
    types, in order (empty when it has none)."""

    cipher_suite: int
    extensions: tuple[int, ...]


def parse_server_hello(fragment: bytes) -> ServerHello:
    """Parse a handshake record's fragment holding one whole, unfragmented ServerHello.

    Raises MalformedDatagram for anything else: another message type, a fragment of a message
    (DTLS may split one; we then leave it to other checks), a body that does not hold
    version, random, session id, suite and compression, or an extension block that does not
    end exactly at the end of the message.
    """
    message = parse_handshake_fragment(fragment)
    if message.msg_type != _SERVER_HELLO:
        raise MalformedDatagram(f"handshake message type {message.msg_type} is not a ServerHello")
    if message.fragment_offset != 0 or message.fragment_length != message.length:
        raise MalformedDatagram("a fragment of a ServerHello, not all of it")
    body = message.body
    # version (2), random (32), session_id <0..32>, cipher_suite (2), compression_method (1)
    position = 34
    if len(body) < position + 1:
        raise MalformedDatagram("ServerHello too short for its session id")
    position += 1 + body[position]
    if len(body) < position + 3:
        raise MalformedDatagram("ServerHello too short for its suite and compression")
    suite = int.from_bytes(body[position : position + 2], "big")
    position += 3
    if position == len(body):
        return ServerHello(suite, ())
    if position + 2 > len(body):
        raise MalformedDatagram("ServerHello extension block truncated")
    end = position + 2 + int.from_bytes(body[position : position + 2], "big")
    if end != len(body):
        raise MalformedDatagram("ServerHello extension block does not end with the message")
    position += 2
    extensions: list[int] = []
    while position + 4 <= end:
        extensions.append(int.from_bytes(body[position : position + 2], "big"))
        position += 4 + int.from_bytes(body[position + 2 : position + 4], "big")
    if position != end:
        raise MalformedDatagram("ServerHello extension runs past the extension block")
    return ServerHello(suite, tuple(extensions))


def parse_hello_verify_request(datagram: bytes) -> bytes:
    """Return the cookie from a datagram whose first record is a HelloVerifyRequest.

    The client side of :func:`build_hello_verify_request`: an epoch-0 handshake record
    holding one complete HelloVerifyRequest whose body is server_version(2) followed by
    cookie<0..255> and nothing else. Records after the first are ignored.
    """
    record = parse_first_record(datagram)
    if record.content_type != _HANDSHAKE:
        raise MalformedDatagram(f"not a handshake record (content type {record.content_type})")
    if record.epoch != 0:
        raise MalformedDatagram(f"epoch {record.epoch} is not 0")
    handshake = parse_handshake_fragment(record.fragment)
    if handshake.msg_type != _HELLO_VERIFY_REQUEST:
        raise MalformedDatagram(
            f"handshake message type {handshake.msg_type} is not HelloVerifyRequest"
        )
    if not handshake.is_complete:
        raise MalformedDatagram(
            f"fragmented HelloVerifyRequest (offset {handshake.fragment_offset}, "
            f"{handshake.fragment_length} of {handshake.length} bytes)"
        )
    body = handshake.body
    if len(body) < 3:
        raise MalformedDatagram(f"HelloVerifyRequest truncated: {len(body)} bytes")
    cookie_length = body[2]
    if cookie_length != len(body) - 3:
        raise MalformedDatagram(
            f"HelloVerifyRequest cookie length {cookie_length} "
            f"does not match the {len(body) - 3} bytes left"
        )
    return body[3:]


# ---------------------------------------------------------------------------------------
# Other messages the server peeks at
# ---------------------------------------------------------------------------------------


def parse_alert(fragment: bytes) -> tuple[int, int]:
    """Return ``(level, description)`` from the fragment of a plaintext alert record.

    An alert is exactly two bytes (RFC 5246 section 7.2). Only meaningful for epoch 0;
    in later epochs the fragment is ciphertext.
    """
    if len(fragment) != 2:
        raise MalformedDatagram(f"alert is {len(fragment)} bytes, not 2")
    return fragment[0], fragment[1]


def parse_psk_identity_from_client_key_exchange(body: bytes) -> bytes:
    """Return the PSK identity from the body of a PSK ClientKeyExchange message.

    For plain PSK (RFC 4279) the body is ``psk_identity<0..2^16-1>``; for ECDHE-PSK
    (RFC 5489) the same vector is followed by the client's ECDH public value. Both start
    the same way, so we return just the identity and do not look at what follows.  An
    identity longer than :data:`MAX_PSK_IDENTITY_LENGTH` is refused: OpenSSL would refuse it
    too, so nobody should spend a key lookup (or memory) on it.
    """
    if len(body) < 2:
        raise MalformedDatagram(f"ClientKeyExchange truncated: {len(body)} bytes")
    length = int.from_bytes(body[0:2], "big")
    if 2 + length > len(body):
        raise MalformedDatagram(
            f"PSK identity length {length} exceeds the {len(body) - 2} bytes left"
        )
    if length > MAX_PSK_IDENTITY_LENGTH:
        raise MalformedDatagram(
            f"PSK identity of {length} bytes exceeds OpenSSL's limit of {MAX_PSK_IDENTITY_LENGTH}"
        )
    return body[2 : 2 + length]


def parse_psk_identity_from_flight(datagram: bytes, message_seq: int | None = None) -> bytes | None:
    """The PSK identity in a datagram's plaintext ClientKeyExchange, or None if it has none.

    In DTLS 1.2 the client's ClientKeyExchange travels in an epoch-0 handshake record, usually
    in the same datagram as its ChangeCipherSpec and Finished.  A ClientKeyExchange split into
    fragments is not looked into (None), nor, when ``message_seq`` is given, one with another
    handshake message number (OpenSSL would not process it as the next message).  Raises
    :class:`MalformedDatagram` for bytes that do not parse.
    """
    for record in parse_records(datagram):
        if record.content_type != _HANDSHAKE or record.epoch != 0:
            continue
        message = parse_handshake_fragment(record.fragment)
        if message.msg_type != _CLIENT_KEY_EXCHANGE or not message.is_complete:
            continue
        if message_seq is None or message.message_seq == message_seq:
            return parse_psk_identity_from_client_key_exchange(message.body)
    return None


# ---------------------------------------------------------------------------------------
# Connection IDs (RFC 9146)
# ---------------------------------------------------------------------------------------

#: A CID is ``opaque cid<0..2^8-1>``.
MAX_CONNECTION_ID_LENGTH = 255


class CidRecord(NamedTuple):
    """One ``tls12_cid`` record (RFC 9146 §4)::

        type(1)=25 version(2) epoch(2) sequence_number(6) cid(n) length(2) enc_content[length]

    The CID length ``n`` is not on the wire: the receiver knows it (the CID it issued).
    ``raw`` is the whole record, header included.
    """

    version: int
    epoch: int
    sequence_number: int
    cid: bytes
    fragment: bytes
    raw: bytes


def parse_connection_id_extension(body: bytes) -> bytes:
    """The CID in the body of a ``connection_id`` extension: ``opaque cid<0..255>``.

    The one-byte length must cover exactly the rest of the body.  An empty CID is valid (RFC
    9146 §3: "send me none, I will send yours").
    """
    if not body:
        raise MalformedDatagram("connection_id extension is empty (no length byte)")
    if body[0] != len(body) - 1:
        raise MalformedDatagram(
            f"connection_id length {body[0]} does not match the {len(body) - 1} bytes left"
        )
    return body[1:]


def encode_connection_id_extension(cid: bytes) -> bytes:
    """The body of a ``connection_id`` extension naming ``cid`` (our own value: a bad length
    is a programming error and raises a plain ValueError)."""
    if len(cid) > MAX_CONNECTION_ID_LENGTH:
        raise ValueError(f"a connection ID is at most {MAX_CONNECTION_ID_LENGTH} bytes")
    return bytes((len(cid),)) + cid


def parse_extension(extensions: bytes, extension_type: int) -> bytes | None:
    """The body of the extension ``extension_type`` in a hello's extension block, or None.

    ``extensions`` is the block without its 2-byte length (``ClientHello.extensions``).  Each
    extension is type(2) length(2) body; the extensions must tile the block exactly.
    """
    position = 0
    found: bytes | None = None
    while position < len(extensions):
        if position + 4 > len(extensions):
            raise MalformedDatagram("extension header truncated")
        kind = int.from_bytes(extensions[position : position + 2], "big")
        length = int.from_bytes(extensions[position + 2 : position + 4], "big")
        end = position + 4 + length
        if end > len(extensions):
            raise MalformedDatagram(
                f"extension {kind} length {length} exceeds the {len(extensions) - position - 4} "
                "bytes left"
            )
        if kind == extension_type:
            if found is not None:
                raise MalformedDatagram(f"extension {kind} appears twice")
            found = extensions[position + 4 : end]
        position = end
    return found


def client_hello_connection_id(hello: ClientHello) -> bytes | None:
    """The CID a ClientHello asks the server to use (possibly empty), or None if it does not
    offer the ``connection_id`` extension."""
    body = parse_extension(hello.extensions, _CONNECTION_ID)
    return None if body is None else parse_connection_id_extension(body)


def parse_cid_record_at(data: bytes, start: int, cid_length: int) -> CidRecord:
    """Parse the ``tls12_cid`` record at ``data[start]`` whose CID is ``cid_length`` bytes."""
    header_length = RECORD_HEADER_LENGTH + cid_length
    left = len(data) - start
    if left < header_length:
        raise MalformedDatagram(f"tls12_cid record header truncated: {left} bytes")
    if data[start] != _TLS12_CID:
        raise MalformedDatagram(f"content type {data[start]} is not tls12_cid")
    version = int.from_bytes(data[start + 1 : start + 3], "big")
    if version >> 8 != _DTLS_MAJOR:
        raise MalformedDatagram(f"record version {version:#06x} is not DTLS")
    epoch = int.from_bytes(data[start + 3 : start + 5], "big")
    sequence = int.from_bytes(data[start + 5 : start + 11], "big")
    cid_end = start + 11 + cid_length
    cid = data[start + 11 : cid_end]
    length = int.from_bytes(data[cid_end : cid_end + 2], "big")
    if length > MAX_RECORD_FRAGMENT:
        raise MalformedDatagram(
            f"record length {length} exceeds the maximum of {MAX_RECORD_FRAGMENT}"
        )
    if header_length + length > left:
        raise MalformedDatagram(
            f"record length {length} exceeds the {left - header_length} bytes left"
        )
    end = start + header_length + length
    return CidRecord(
        version, epoch, sequence, cid, data[start + header_length : end], data[start:end]
    )


def parse_records_with_cid(datagram: bytes, cid_length: int) -> list[Record | CidRecord]:
    """Split a datagram whose records may be ``tls12_cid`` ones with ``cid_length``-byte CIDs.

    Standard records are checked as by :func:`parse_records`; a record of type 25 is parsed
    with its CID (:func:`parse_cid_record_at`).  The records must tile the datagram exactly.
    """
    if not datagram:
        raise MalformedDatagram("empty datagram")
    records: list[Record | CidRecord] = []
    position = 0
    total = len(datagram)
    while position < total:
        record: Record | CidRecord
        if datagram[position] == _TLS12_CID:
            record = parse_cid_record_at(datagram, position, cid_length)
        else:
            record = _parse_record_at(datagram, position)
        records.append(record)
        position += len(record.raw)
    return records


def datagram_connection_id(datagram: bytes, cid_length: int) -> bytes | None:
    """The CID of a datagram that starts with a ``tls12_cid`` record, cheaply, or None.

    The reader's demultiplexing: only the first record's type and the ``cid_length`` bytes
    after its sequence number are looked at (the peer's session checks the rest).  None for a
    datagram of another type or too short to hold a CID record header.
    """
    if (
        cid_length <= 0
        or len(datagram) < RECORD_HEADER_LENGTH + cid_length
        or datagram[0] != _TLS12_CID
    ):
        return None
    return datagram[11 : 11 + cid_length]


# type(1) version(2) epoch(2) sequence_number as high(2)+low(4): a tls12_cid record's header
# up to its CID; then the CID, then the fragment's length (_FRAGMENT_LENGTH).
_CID_RECORD_PREFIX = struct.Struct("!BHHHI")
_CID_PREFIX_LENGTH = _CID_RECORD_PREFIX.size
assert _CID_PREFIX_LENGTH == 11
_FRAGMENT_LENGTH = struct.Struct("!H")


def single_cid_record(datagram: bytes, epoch: int, cid: bytes) -> CidRecord | None:
    """``datagram`` as a :class:`CidRecord` if it is exactly one ``tls12_cid`` record of
    ``epoch`` carrying ``cid`` that :func:`parse_records_with_cid` would accept, else None (the
    caller then parses it in full, and names what is wrong with it).

    The CID association's fast path, like :func:`single_application_record` for standard
    records: one ``struct`` unpack and a compare of the CID in place, where the general parser
    slices every field.  Unlike that one it checks the version's major byte and the absolute
    length cap, because :func:`parse_cid_record_at` does: a datagram that parser calls
    malformed must not come out of here as a record.  ``raw`` is ``datagram`` itself, and
    ``cid`` is the object passed in (equal to the bytes on the wire).
    """
    cid_end = _CID_PREFIX_LENGTH + len(cid)
    header_length = cid_end + 2
    size = len(datagram) - header_length
    if size < 0:
        return None
    content_type, version, record_epoch, seq_high, seq_low = _CID_RECORD_PREFIX.unpack_from(
        datagram
    )
    if (
        content_type != _TLS12_CID
        or record_epoch != epoch
        or version >> 8 != _DTLS_MAJOR
        or size > MAX_RECORD_FRAGMENT
        or _FRAGMENT_LENGTH.unpack_from(datagram, cid_end)[0] != size
        or not datagram.startswith(cid, _CID_PREFIX_LENGTH)
    ):
        return None
    fields = (
        version,
        epoch,
        (seq_high << 32) | seq_low,
        cid,
        datagram[header_length:],
        datagram,
    )
    return _new_tuple(CidRecord, fields)


def cid_record_header(version: int, epoch: int, sequence: int, cid: bytes, length: int) -> bytes:
    """The header of a ``tls12_cid`` record we write (trusted values).

    Packed by one ``struct`` per CID length (made on first use; at most 256), which is a
    third of the cost of joining six pieces: this runs for every record we send.
    """
    layout = _CID_HEADER_LAYOUTS.get(len(cid))
    if layout is None:
        layout = _CID_HEADER_LAYOUTS[len(cid)] = struct.Struct(f"!BHHHI{len(cid)}sH")
    return layout.pack(
        _TLS12_CID, version, epoch, sequence >> 32, sequence & 0xFFFFFFFF, cid, length
    )


#: :func:`cid_record_header`'s layouts, by CID length: type(1) version(2) epoch(2)
#: sequence_number as high(2)+low(4) cid(n) length(2).
_CID_HEADER_LAYOUTS: dict[int, struct.Struct] = {}
