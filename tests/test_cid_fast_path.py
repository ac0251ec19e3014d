"""The single-record fast paths of a connection-ID association (RFC 9146).

A datagram holding exactly one ``tls12_cid`` record of the current epoch with our CID is
opened and screened without :func:`~trio_dtls_server._wire.parse_records_with_cid`
(:func:`~trio_dtls_server._wire.single_cid_record`), and our own CID records are sealed
without the helper calls of ``_seal_cid``.  None of it may change behaviour, so these tests
hold each fast path to the general one it shortcuts:

* the peek agrees with the general parser on arbitrary bytes, and never raises;
* the struct-packed ``cid_record_header`` and ``cid_additional_data`` give the bytes of the
  field-by-field concatenation they replaced;
* ``CidAeadProtector.open`` and ``screen`` give the same events, drops, replies and state with
  the fast path as with the peek switched off, datagram after datagram, for valid, replayed,
  mutated, concatenated, standard and alert/handshake records;
* ``RecordProtection.seal`` writes the bytes ``_seal_cid`` writes.
"""

from __future__ import annotations

import pytest
import support
from hypothesis import given
from hypothesis import strategies as st
from session_support import cid_handshake
from wire_support import SETTINGS, mutated

from trio_dtls_server import _protection
from trio_dtls_server._protection import CidAeadProtector
from trio_dtls_server._records import (
    RecordProtection,
    cid_additional_data,
    inner_plaintext,
)
from trio_dtls_server._session_events import ConnectionFailed, RemoteClosed, SessionEvent
from trio_dtls_server._wire import (
    DTLS_1_2,
    AlertDescription,
    AlertLevel,
    CidRecord,
    MalformedDatagram,
    cid_record_header,
    encode_alert,
    encode_record,
    parse_records_with_cid,
    single_cid_record,
)

# ---------------------------------------------------------------------------------------
# The peek, against the general parser
# ---------------------------------------------------------------------------------------


def general_single_cid_record(datagram: bytes, epoch: int, cid: bytes) -> CidRecord | None:
    """What the general path makes of ``datagram``: its one CID record, if it is exactly one
    well-formed ``tls12_cid`` record of ``epoch`` carrying ``cid``; else None."""
    try:
        records = parse_records_with_cid(datagram, len(cid))
    except MalformedDatagram:
        return None
    if len(records) != 1:
        return None
    (record,) = records
    if not isinstance(record, CidRecord) or record.epoch != epoch or record.cid != cid:
        return None
    return record


@st.composite
def cid_datagrams(draw: st.DrawFn) -> tuple[bytes, int, bytes]:
    """``(datagram, epoch, cid)``: a valid CID record, mutated or not, or arbitrary bytes; the
    epoch and CID asked about are the record's or others."""
    cid = draw(st.binary(min_size=0, max_size=12))
    epoch = draw(st.integers(0, 3))
    record_epoch = draw(st.sampled_from([epoch, epoch + 1]))
    record_cid = draw(st.sampled_from([cid, cid[::-1] + b"\x01", b""]))
    fragment = draw(st.binary(max_size=40))
    version = draw(st.sampled_from([DTLS_1_2, 0xFEFF, 0x0303]))
    sequence = draw(st.integers(0, 2**48 - 1))
    valid = cid_record_header(version, record_epoch, sequence, record_cid, len(fragment)) + fragment
    base = draw(
        st.sampled_from(
            [
                valid,
                valid + valid,
                valid + encode_record(23, DTLS_1_2, 1, sequence, fragment or b"x"),
            ]
        )
    )
    datagram = draw(st.one_of(st.just(base), mutated(st.just(base)), st.binary(max_size=60)))
    return datagram, epoch, cid


@SETTINGS
@given(cid_datagrams())
def test_single_cid_record_agrees_with_the_general_parser(case: tuple[bytes, int, bytes]) -> None:
    datagram, epoch, cid = case
    try:
        fast = single_cid_record(datagram, epoch, cid)
    except MalformedDatagram:  # the contract allows it; the peek in fact never raises
        fast = None
    assert fast == general_single_cid_record(datagram, epoch, cid)
    if fast is not None:
        assert fast.raw is datagram  # no copy


def test_single_cid_record_refuses_what_the_parser_calls_malformed() -> None:
    """A version that is not DTLS and a length over the cap: the parser raises, so the peek
    must not hand the record on (it would be dropped as a forgery, not as malformed)."""
    cid = b"\x0a\x0b"
    fragment = b"\0" * 30
    good = cid_record_header(DTLS_1_2, 1, 7, cid, len(fragment)) + fragment
    assert single_cid_record(good, 1, cid) == CidRecord(DTLS_1_2, 1, 7, cid, fragment, good)
    not_dtls = cid_record_header(0x0303, 1, 7, cid, len(fragment)) + fragment
    assert single_cid_record(not_dtls, 1, cid) is None
    huge = b"\0" * (2**14 + 2049)
    too_long = cid_record_header(DTLS_1_2, 1, 7, cid, len(huge)) + huge
    assert single_cid_record(too_long, 1, cid) is None
    with pytest.raises(MalformedDatagram):
        parse_records_with_cid(too_long, len(cid))


# ---------------------------------------------------------------------------------------
# The struct-packed encoders, against the concatenations they replaced
# ---------------------------------------------------------------------------------------


@SETTINGS
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**48 - 1),
    st.binary(max_size=255),
    st.integers(0, 0xFFFF),
)
def test_cid_encoders_give_the_concatenated_bytes(
    version: int, epoch: int, sequence: int, cid: bytes, length: int
) -> None:
    fields = (
        version.to_bytes(2, "big")
        + epoch.to_bytes(2, "big")
        + sequence.to_bytes(6, "big")
        + cid
        + length.to_bytes(2, "big")
    )
    assert cid_record_header(version, epoch, sequence, cid, length) == b"\x19" + fields
    assert (
        cid_additional_data(version, epoch, sequence, cid, length)
        == b"\xff" * 8 + bytes((25, len(cid), 25)) + fields
    )


# ---------------------------------------------------------------------------------------
# The protector: fast path against general path, datagram after datagram
# ---------------------------------------------------------------------------------------

State = tuple[int, int, int, list[bytes], int, int, RemoteClosed | ConnectionFailed | None, bool]


def state_of(protector: CidAeadProtector) -> State:
    """Everything of the protector that open() may change."""
    protection = protector.protection
    return (
        protection.replay.highest,
        protection.replay._mask,
        protection.next_sequence,
        list(protector._final_flight),
        protector._final_flight_resends,
        protector._renegotiation_refusals,
        protector.ending,
        protector.newest_record_authenticated,
    )


def restore(protector: CidAeadProtector, state: State) -> None:
    protection = protector.protection
    (
        protection.replay._highest,
        protection.replay._mask,
        protection.next_sequence,
        final_flight,
        protector._final_flight_resends,
        protector._renegotiation_refusals,
        protector.ending,
        protector.newest_record_authenticated,
    ) = state
    protector._final_flight = list(final_flight)


def pool_of_datagrams() -> tuple[CidAeadProtector, list[bytes]]:
    """A server's CID protector and datagrams its client sealed: application data (some
    empty), a warning alert, a Finished-typed and a renegotiation handshake record, an unknown
    inner type, a standard record of the epoch and an epoch-0 one."""
    pair = cid_handshake()
    client, server = pair.client, pair.server
    protector = server._protector
    assert isinstance(protector, CidAeadProtector)
    sealer = support.protection_of(client)
    assert sealer.write_cid
    pool = []
    for payload in (b"ping", b"", b"x" * 64, b"last"):
        pool.append(sealer.seal(23, payload))
    pool.append(sealer.seal(21, encode_alert(AlertLevel.warning, AlertDescription.user_canceled)))
    pool.append(sealer.seal(22, b"\x14\x00\x00\x0c" + b"\0" * 20))  # a "Finished"
    pool.append(sealer.seal(22, b"\x01\x00\x00\x00"))  # a ClientHello: renegotiation
    pool.append(sealer.seal(99, b"what"))
    pool.append(encode_record(23, DTLS_1_2, 1, 40, b"\0" * 40))
    pool.append(encode_record(22, DTLS_1_2, 0, 9, b"\0" * 20))
    return protector, pool


@st.composite
def datagram_sequences(draw: st.DrawFn, size: int) -> list[tuple[int, int]]:
    """Steps: (pool index, how to change it: 0 as is, 1 mutated, 2 followed by another)."""
    return draw(
        st.lists(
            st.tuples(st.integers(0, size - 1), st.integers(0, 2)),
            min_size=1,
            max_size=10,
        )
    )


POOL_SIZE = 10


@SETTINGS
@given(datagram_sequences(POOL_SIZE), st.data())
def test_cid_open_and_screen_are_those_of_the_general_path(
    steps: list[tuple[int, int]], data: st.DataObject
) -> None:
    protector, pool = pool_of_datagrams()
    assert len(pool) == POOL_SIZE
    for index, change in steps:
        datagram = pool[index]
        if change == 1:
            datagram = data.draw(mutated(st.just(datagram)))
        elif change == 2:
            datagram = datagram + pool[(index + 1) % POOL_SIZE]
        before = state_of(protector)
        fast_screen = protector.screen(datagram)
        fast_out: list[bytes] = []
        fast_events: list[SessionEvent] = protector.open(datagram, fast_out)
        fast_state = state_of(protector)
        restore(protector, before)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_protection, "single_cid_record", lambda *args: None)
            general_screen = protector.screen(datagram)
            general_out: list[bytes] = []
            general_events = protector.open(datagram, general_out)
        assert fast_screen == general_screen
        assert fast_events == general_events
        assert fast_out == general_out
        assert fast_state == state_of(protector)
        if protector.ending is not None:
            return


def test_the_fast_path_is_taken_for_one_cid_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The equality above would hold trivially if the fast path never ran: it does, and opens
    the datagram without the general parser."""
    protector, pool = pool_of_datagrams()

    def no_general_parser(*args: object) -> None:
        raise AssertionError("the general parser ran for a single CID record")

    monkeypatch.setattr(_protection, "parse_records_with_cid", no_general_parser)
    assert protector.screen(pool[0]) is None
    events = protector.open(pool[0], [])
    assert [type(event).__name__ for event in events] == ["ApplicationData"]
    assert protector.newest_record_authenticated


# ---------------------------------------------------------------------------------------
# Sealing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ciphers", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305"])
def test_seal_writes_the_bytes_of_seal_cid(ciphers: str) -> None:
    protection: RecordProtection = support.protection_of(cid_handshake(ciphers=ciphers).server)
    assert protection.write_cid
    for content_type, payload in ((23, b"x" * 64), (21, b"\x01\x00"), (23, b"")):
        sequence = protection.next_sequence
        sealed = protection.seal(content_type, payload)
        assert sealed == protection._seal_cid(
            protection._write_aead,
            protection._write_iv,
            protection._write_iv_number,
            sequence,
            protection.write_cid,
            inner_plaintext(content_type, payload),
        )
        (record,) = parse_records_with_cid(sealed, len(protection.write_cid))
        assert isinstance(record, CidRecord)
        assert record.sequence_number == sequence
        assert protection.decrypt_own_cid(
            record.version, sequence, record.cid, record.fragment
        ) == (content_type, payload)
