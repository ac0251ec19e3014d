"""The sans-I/O DTLS session: a server and a client :class:`DTLSSession` driven in memory.

No sockets and no Trio: the tests carry datagrams between the two sessions by hand (see
``support.begin_handshake_in_memory`` / ``support.exchange``) and pass ``now`` explicitly, so
loss, replay, tampering and timers are exact.
"""

from __future__ import annotations

import time

import pytest
import support
from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from support import IDENTITY, KEY

from trio_dtls_server import DEFAULT_CIPHERS, RetransmitPolicy
from trio_dtls_server._codes import DropReason, FailureKind
from trio_dtls_server._openssl import configure_session_resumption
from trio_dtls_server._session import (
    MAX_PLAINTEXT,
    ApplicationData,
    DTLSSession,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeProgress,
    PskIdentity,
    RecordsDropped,
    RemoteClosed,
    Retransmitted,
    SessionEvent,
    SessionState,
)
from trio_dtls_server._wire import (
    AlertDescription,
    AlertLevel,
    ContentType,
    parse_handshake_fragment,
    parse_records,
)

IDENTITY_BYTES = IDENTITY.encode("latin-1")


def complete(events: list[object]) -> list[HandshakeComplete]:
    return [event for event in events if isinstance(event, HandshakeComplete)]


# -- the handshake ----------------------------------------------------------------------------


def test_a_handshake_reports_the_identity_then_completion_on_both_sides() -> None:
    result = support.handshake_in_memory()

    assert result.client.state is SessionState.ESTABLISHED
    assert result.server.state is SessionState.ESTABLISHED
    identities = [e for e in result.server_events if isinstance(e, PskIdentity)]
    assert identities == [PskIdentity(IDENTITY_BYTES, known=True)]
    assert result.server.psk_identity == IDENTITY_BYTES
    (server_done,) = complete(list(result.server_events))
    (client_done,) = complete(list(result.client_events))
    assert server_done.protocol == client_done.protocol == "DTLSv1.2"
    assert server_done.cipher == client_done.cipher
    assert server_done.cipher in DEFAULT_CIPHERS.split(":")
    # Completion is the last thing each side reports; progress came before it.
    assert result.server_events[-1] == server_done
    assert result.client_events[-1] == client_done
    assert HandshakeProgress() in result.server_events
    assert HandshakeProgress() in result.client_events
    # Established sessions have no retransmission timer and nothing left to send.
    assert result.server.timer_deadline is None
    assert result.client.timer_deadline is None
    assert result.server.take_datagrams() == []
    assert result.client.take_datagrams() == []


def test_the_negotiated_cipher_follows_the_cipher_list() -> None:
    result = support.handshake_in_memory(ciphers="PSK-AES128-GCM-SHA256")
    (done,) = complete(list(result.server_events))
    assert done == HandshakeComplete("PSK-AES128-GCM-SHA256", "DTLSv1.2")
    assert result.server.cipher == result.client.cipher == "PSK-AES128-GCM-SHA256"
    assert result.server.protocol == "DTLSv1.2"


@pytest.mark.parametrize("mtu", [256, 576, 1400])
def test_no_datagram_is_larger_than_the_mtu(mtu: int) -> None:
    # A long identity hint makes the ServerKeyExchange bigger than 256 bytes.
    result = support.handshake_in_memory(mtu=mtu, identity_hint="example server hint " * 12)

    assert support.established(result.client, result.server)
    everything = result.client_datagrams + result.server_datagrams
    assert max(support.sizes(everything)) <= mtu, support.sizes(everything)
    fragments = [
        parse_handshake_fragment(record.fragment)
        for datagram in result.server_datagrams
        for record in parse_records(datagram)
        if record.content_type == ContentType.handshake and record.epoch == 0
    ]
    # At 256 bytes OpenSSL had to cut a handshake message into fragments; above, it did not.
    assert any(not fragment.is_complete for fragment in fragments) is (mtu == 256)


def test_the_server_session_starts_only_from_a_hello_with_a_cookie() -> None:
    """The server only builds sessions for verified hellos; OpenSSL refuses anything else."""
    first, second = support.client_hellos()

    def start(hello: bytes) -> DTLSSession:
        return DTLSSession.server(
            support.server_context(),
            hello,
            now=0.0,
            mtu=1400,
            policy=RetransmitPolicy(),
            psk_lookup={IDENTITY_BYTES: KEY}.get,
        )

    refused = start(first)
    assert refused.state is SessionState.FAILED
    assert refused.startup_events == [
        HandshakeFailed("ClientHello refused by OpenSSL: WantReadError")
    ]
    assert refused.failure_reason == "ClientHello refused by OpenSSL: WantReadError"

    accepted = start(second)
    assert accepted.state is SessionState.HANDSHAKING
    assert accepted.startup_events == [HandshakeProgress()]
    flight = accepted.take_datagrams()
    records = [record for datagram in flight for record in parse_records(datagram)]
    # ServerHello, ServerKeyExchange (ECDHE-PSK), ServerHelloDone.
    assert [parse_handshake_fragment(r.fragment).msg_type for r in records] == [2, 12, 14]
    assert accepted.timer_deadline == 1.0


# -- failures ---------------------------------------------------------------------------------


def test_an_unknown_identity_fails_and_queues_the_fatal_alert() -> None:
    result = support.begin_handshake_in_memory(identity="Mallory", keys={IDENTITY_BYTES: KEY})
    # Carry the handshake by hand up to the client's flight with the identity in it.
    for datagram in result.server.take_datagrams():
        result.client_events += result.client.receive_datagram(datagram, 0.0)
    server_events: list[SessionEvent] = []
    for datagram in result.client.take_datagrams():
        server_events += result.server.receive_datagram(datagram, 0.0)

    reason = "unknown PSK identity 'Mallory' (psk identity not found)"
    assert server_events == [
        PskIdentity(b"Mallory", known=False),
        HandshakeFailed(
            reason, alert_sent="unknown_psk_identity (115)", kind=FailureKind.UNKNOWN_IDENTITY
        ),
    ]
    assert result.server.state is SessionState.FAILED
    assert result.server.failure_reason == reason
    assert result.server.timer_deadline is None
    # The alert OpenSSL wrote is queued, ready to send.
    (alert_datagram,) = result.server.take_datagrams()
    (alert,) = parse_records(alert_datagram)
    assert alert.content_type == ContentType.alert
    assert alert.epoch == 0
    assert alert.fragment == bytes([AlertLevel.fatal, AlertDescription.unknown_psk_identity])
    # Delivered, it ends the client's handshake at once, with the alert's name.
    events = result.client.receive_datagram(alert_datagram, 0.0)
    assert events == [
        HandshakeFailed(
            "tlsv1 alert unknown psk identity",
            alert_received="unknown_psk_identity (115)",
            kind=FailureKind.UNKNOWN_IDENTITY,
        )
    ]
    assert result.client.state is SessionState.FAILED
    # A failed session ignores anything more.
    assert result.server.receive_datagram(alert_datagram, 0.0) == []
    assert result.client.receive_datagram(alert_datagram, 0.0) == []


def test_a_wrong_key_fails_with_a_bad_record_mac_alert() -> None:
    """OpenSSL drops the client's undecryptable Finished silently (RFC 6347 §4.1.2.7).

    The session notices (the peer's ChangeCipherSpec was read, a protected handshake record
    came, the handshake did not finish) and fails with a plaintext fatal ``bad_record_mac``
    alert, so a client with the wrong key fails at once instead of at its deadline.
    """
    result = support.handshake_in_memory(key=b"not the key", keys={IDENTITY_BYTES: KEY})

    reason = (
        "the peer's Finished failed authentication: the two sides derived different keys "
        "(a wrong PSK?)"
    )
    assert PskIdentity(IDENTITY_BYTES, known=True) in result.server_events
    assert result.server_events[-1] == HandshakeFailed(
        reason, alert_sent="bad_record_mac (20)", kind=FailureKind.WRONG_KEY
    )
    assert result.server.state is SessionState.FAILED
    (alert,) = parse_records(result.server_datagrams[-1])
    assert (alert.content_type, alert.epoch) == (ContentType.alert, 0)
    assert alert.fragment == bytes([AlertLevel.fatal, AlertDescription.bad_record_mac])
    # Its record number follows the server's last plaintext record, so the client reads it.
    (previous, *_) = reversed(parse_records(result.server_datagrams[-2]))
    assert alert.sequence_number == previous.sequence_number + 1
    assert result.client_events[-1] == HandshakeFailed(
        "tls alert bad record mac", alert_received="bad_record_mac (20)", kind=FailureKind.WRONG_KEY
    )
    assert result.client.state is SessionState.FAILED


# -- retransmission ---------------------------------------------------------------------------


def test_handle_timer_resends_the_lost_flight_and_the_handshake_completes() -> None:
    result = support.begin_handshake_in_memory(now=100.0)
    flight_made = time.monotonic()
    lost_flight = result.server.take_datagrams()
    assert lost_flight
    assert result.server.timer_deadline == 101.0

    # Before the deadline nothing happens.
    assert result.server.handle_timer(100.5) == []
    assert result.server.take_datagrams() == []
    events = result.server.handle_timer(101.0)
    assert events == [Retransmitted(attempt=1, datagrams=len(lost_flight))]
    resent = result.server.take_datagrams()
    if time.monotonic() - flight_made < 0.9:
        # OpenSSL's own 1 s timer had not expired: we resent its flight byte for byte.
        assert resent == lost_flight
    else:  # a very slow machine: OpenSSL made the retransmission itself
        assert len(resent) == len(lost_flight)
    # The next interval doubles.
    assert result.server.timer_deadline == 101.0 + 2.0

    for datagram in resent:
        result.client_events += result.client.receive_datagram(datagram, 101.0)
    support.exchange(result, 101.0)
    assert support.established(result.client, result.server)


def test_the_clients_first_hello_is_retransmitted_too() -> None:
    client = DTLSSession.client(
        support.client_context(),
        now=0.0,
        mtu=1400,
        policy=RetransmitPolicy(initial=2.0),
        identity=IDENTITY_BYTES,
        key=KEY,
    )
    (hello,) = client.take_datagrams()
    assert client.timer_deadline == 2.0
    assert client.handle_timer(2.0) == [Retransmitted(1, 1)]
    assert client.take_datagrams() == [hello]
    assert client.timer_deadline == 2.0 + 4.0


def test_retransmissions_run_out_and_the_handshake_fails() -> None:
    policy = RetransmitPolicy(initial=1.0, maximum=3.0, max_retransmissions=3)
    result = support.begin_handshake_in_memory(policy=policy)
    result.server.take_datagrams()  # the first flight, lost

    deadlines: list[float] = []
    outcomes: list[list[SessionEvent]] = []
    while result.server.timer_deadline is not None and len(outcomes) < 10:
        deadline = result.server.timer_deadline
        deadlines.append(deadline)
        outcomes.append(result.server.handle_timer(deadline))
        result.server.take_datagrams()

    # 1 s, then 2 s, then capped at 3 s; the fourth expiry gives up.
    assert deadlines == [1.0, 3.0, 6.0, 9.0]
    assert outcomes[:3] == [[Retransmitted(n, 1)] for n in (1, 2, 3)]
    reason = "no answer from the peer after 3 retransmissions"
    assert outcomes[3] == [HandshakeFailed(reason, kind=FailureKind.NO_ANSWER)]
    assert result.server.state is SessionState.FAILED
    assert result.server.failure_reason == reason


def test_no_retransmissions_allowed_fails_at_the_first_expiry() -> None:
    policy = RetransmitPolicy(max_retransmissions=0)
    result = support.begin_handshake_in_memory(policy=policy)
    assert result.server.handle_timer(1.0) == [
        HandshakeFailed(
            "no answer from the peer after 0 retransmissions", kind=FailureKind.NO_ANSWER
        )
    ]


def test_a_lost_final_flight_is_sent_again_when_the_client_retransmits() -> None:
    result = support.begin_handshake_in_memory()
    # Up to the server's final flight, which is lost.
    for datagram in result.server.take_datagrams():
        result.client.receive_datagram(datagram, 0.0)
    for datagram in result.client.take_datagrams():
        result.server_events += result.server.receive_datagram(datagram, 0.0)
    assert result.server.state is SessionState.ESTABLISHED
    final_flight = result.server.take_datagrams()
    assert final_flight
    assert result.client.state is SessionState.HANDSHAKING

    # The client's timer fires; the server answers its retransmission with the final flight.
    deadline = result.client.timer_deadline
    assert deadline is not None
    assert result.client.handle_timer(deadline) == [Retransmitted(1, 1)]
    dropped: list[SessionEvent] = []
    for datagram in result.client.take_datagrams():
        dropped += result.server.receive_datagram(datagram, deadline)
    assert dropped == [RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)]
    again = result.server.take_datagrams()
    assert again
    for datagram in again:
        result.client_events += result.client.receive_datagram(datagram, deadline)
    assert support.established(result.client)


# -- application data -------------------------------------------------------------------------


def test_application_data_both_ways() -> None:
    result = support.handshake_in_memory()
    result.client.send(b"I am Alice, please, accept our ping 0")
    (datagram,) = result.client.take_datagrams()
    (record,) = parse_records(datagram)
    assert record.content_type == ContentType.application_data
    assert record.epoch == 1
    assert result.server.receive_datagram(datagram, 1.0) == [
        ApplicationData(b"I am Alice, please, accept our ping 0")
    ]
    result.server.send(b"to (127.0.0.1:5555): ACK")
    (reply,) = result.server.take_datagrams()
    assert result.client.receive_datagram(reply, 1.0) == [
        ApplicationData(b"to (127.0.0.1:5555): ACK")
    ]


def test_a_replayed_record_is_dropped_as_a_replay() -> None:
    result = support.handshake_in_memory()
    result.client.send(b"once")
    (datagram,) = result.client.take_datagrams()
    assert result.server.receive_datagram(datagram, 0.0) == [ApplicationData(b"once")]
    assert result.server.receive_datagram(datagram, 0.0) == [RecordsDropped(DropReason.REPLAY)]
    assert result.server.state is SessionState.ESTABLISHED


def test_a_tampered_record_fails_authentication_and_changes_nothing() -> None:
    result = support.handshake_in_memory()
    result.client.send(b"genuine")
    (datagram,) = result.client.take_datagrams()
    tampered = bytearray(datagram)
    tampered[-1] ^= 0x01  # one bit of the authentication tag
    assert result.server.receive_datagram(bytes(tampered), 0.0) == [
        RecordsDropped(DropReason.AUTHENTICATION)
    ]
    # The genuine record still decrypts: the forgery did not consume its sequence number.
    assert result.server.receive_datagram(datagram, 0.0) == [ApplicationData(b"genuine")]


def test_a_forged_record_with_a_fresh_sequence_number_fails_authentication() -> None:
    result = support.handshake_in_memory()
    forged = support.garbage_record(epoch=1, sequence=77)
    assert result.server.receive_datagram(forged, 0.0) == [
        RecordsDropped(DropReason.AUTHENTICATION)
    ]


@pytest.mark.parametrize(
    "junk",
    [b"", b"\x17\xfe\xfd", b"\x99" * 30],
    ids=["empty", "truncated header", "not a record"],
)
def test_junk_for_an_established_session_is_dropped_as_malformed(junk: bytes) -> None:
    result = support.handshake_in_memory()
    assert result.server.receive_datagram(junk, 0.0) == [RecordsDropped(DropReason.MALFORMED)]
    assert result.client.receive_datagram(junk, 0.0) == [RecordsDropped(DropReason.MALFORMED)]
    assert support.established(result.client, result.server)


def test_an_empty_datagram_during_the_handshake_is_dropped() -> None:
    result = support.begin_handshake_in_memory()
    assert result.client.receive_datagram(b"", 0.0) == [RecordsDropped(DropReason.MALFORMED)]
    assert result.server.receive_datagram(b"", 0.0) == [RecordsDropped(DropReason.MALFORMED)]
    support.exchange(result)
    assert support.established(result.client, result.server)


def test_send_limits() -> None:
    result = support.handshake_in_memory()
    largest = bytes(range(256)) * 64
    assert len(largest) == MAX_PLAINTEXT == 16_384
    result.client.send(largest)
    (datagram,) = result.client.take_datagrams()
    assert result.server.receive_datagram(datagram, 0.0) == [ApplicationData(largest)]

    with pytest.raises(ValueError, match="at most 16384 bytes of plaintext, not 16385"):
        result.client.send(largest + b"!")
    with pytest.raises(ValueError, match="refusing to send an empty datagram"):
        result.client.send(b"")
    assert result.client.take_datagrams() == []
    assert result.client.state is SessionState.ESTABLISHED


def test_send_needs_an_established_session() -> None:
    result = support.begin_handshake_in_memory()
    with pytest.raises(RuntimeError, match="cannot send on a handshaking DTLS session"):
        result.client.send(b"too early")


# -- closing ----------------------------------------------------------------------------------


def test_close_notify_reaches_the_peer_as_remote_closed() -> None:
    result = support.handshake_in_memory()
    result.client.close()
    assert result.client.state is SessionState.CLOSED
    (goodbye,) = result.client.take_datagrams()
    (record,) = parse_records(goodbye)
    assert record.content_type == ContentType.alert
    assert record.epoch == 1  # encrypted, like every record after the handshake

    assert result.server.receive_datagram(goodbye, 0.0) == [RemoteClosed()]
    assert result.server.state is SessionState.CLOSED
    # Closing twice sends nothing more; a closed session ignores input.
    result.client.close()
    assert result.client.take_datagrams() == []
    assert result.server.receive_datagram(goodbye, 0.0) == []


def test_closing_during_the_handshake_sends_nothing() -> None:
    result = support.begin_handshake_in_memory()
    result.server.take_datagrams()
    result.server.close()
    assert result.server.state is SessionState.CLOSED
    assert result.server.timer_deadline is None
    assert result.server.take_datagrams() == []
    assert result.server.handle_timer(1_000.0) == []


# -- the retransmission policy ----------------------------------------------------------------


def test_retransmit_policy_intervals_double_up_to_the_maximum() -> None:
    policy = RetransmitPolicy(initial=1.0, maximum=60.0)
    assert [policy.interval(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


@pytest.mark.parametrize(
    ("initial", "maximum", "retransmissions", "message"),
    [
        (0.0, 60.0, 6, "0 < initial <= maximum"),
        (2.0, 1.0, 6, "0 < initial <= maximum"),
        (1.0, 60.0, -1, "max_retransmissions must be >= 0"),
    ],
)
def test_retransmit_policy_rejects_nonsense(
    initial: float, maximum: float, retransmissions: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RetransmitPolicy(initial=initial, maximum=maximum, max_retransmissions=retransmissions)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\xfe\xfd" + bytes(5),  # a record header cut short
        b"\x16\xfe\xfd\x00\x00" + bytes(6) + b"\x01\x00" + b"short",  # length past the end
        b"\x99" * 40,  # not DTLS at all
    ],
    ids=["truncated-header", "length-past-end", "not-dtls"],
)
def test_unframed_garbage_mid_handshake_never_reaches_openssl(garbage: bytes) -> None:
    """A spoofed datagram that is not even DTLS records must not abort a handshake."""
    started = support.begin_handshake_in_memory()
    events = started.client.receive_datagram(garbage, 0.0)
    assert events == [RecordsDropped(DropReason.MALFORMED)]
    assert started.server.receive_datagram(garbage, 0.0) == [RecordsDropped(DropReason.MALFORMED)]
    result = support.exchange(started)
    assert support.established(result.client, result.server)


# -- handing records over to our own record layer ----------------------------------------------


def _resumable_pair(session: SSL.Session | None = None) -> tuple[DTLSSession, DTLSSession]:
    """A client and a server session with session resumption on; the handshake just began."""
    client = DTLSSession.client(
        _RESUMPTION_CLIENT,
        now=0.0,
        mtu=1400,
        policy=RetransmitPolicy(),
        identity=IDENTITY_BYTES,
        key=KEY,
        session=session,
    )
    first = client.take_datagrams()
    client.receive_datagram(support.hello_verify_request_for(first[0]), 0.0)
    (hello,) = client.take_datagrams()
    server = DTLSSession.server(
        _RESUMPTION_SERVER,
        hello,
        now=0.0,
        mtu=1400,
        policy=RetransmitPolicy(),
        psk_lookup={IDENTITY_BYTES: KEY}.get,
    )
    return client, server


_RESUMPTION_SERVER = support.server_context()
configure_session_resumption(
    _RESUMPTION_SERVER, enabled=True, lifetime=3600.0, session_id_context=b"test_session"
)
_RESUMPTION_CLIENT = support.client_context()


def _openssl_timer_left(session: DTLSSession) -> float:
    """Seconds until OpenSSL's own (real-time) retransmission timer expires."""
    seconds, microseconds = ffi.new("time_t *"), ffi.new("long *")
    connection = session.connection
    assert connection is not None
    assert lib.Cryptography_DTLSv1_get_timeout(connection._ssl, seconds, microseconds) == 1
    return float(seconds[0]) + float(microseconds[0]) / 1e6


def test_our_records_are_numbered_after_every_finished_openssl_retransmitted() -> None:
    """A number used twice would repeat a nonce, and the peer would drop it as a replay.

    In a resumed handshake the server's Finished goes out first.  Lose it; when OpenSSL
    retransmits it, the new copy takes record number 1.  Our record layer must start at 2.
    """
    client, server = _resumable_pair()
    support.exchange(support.InMemoryHandshake(client, server))
    assert support.established(client, server)
    client, server = _resumable_pair(client.ssl_session)
    lost = server.take_datagrams()
    assert [(r.content_type, r.epoch, r.sequence_number) for r in parse_records(lost[-1])][-1] == (
        ContentType.handshake,
        1,
        0,
    )

    # OpenSSL's retransmission timer runs on the real clock and the bindings cannot shorten
    # it: wait it out (about 1 s) so that OpenSSL, not our byte-for-byte fallback, resends.
    time.sleep(_openssl_timer_left(server) + 0.02)
    assert server.timer_deadline is not None
    assert server.handle_timer(server.timer_deadline) == [Retransmitted(1, 1)]
    (again,) = server.take_datagrams()
    assert [(r.content_type, r.epoch, r.sequence_number) for r in parse_records(again)][-1] == (
        ContentType.handshake,
        1,
        1,
    )
    assert client.receive_datagram(again, 0.0) == [
        HandshakeComplete(client.cipher, "DTLSv1.2", True)
    ]
    result = support.exchange(support.InMemoryHandshake(client, server), 0.0)
    assert support.established(client, server)
    assert server.resumed and client.resumed
    assert server.openssl_released and client.openssl_released

    server.send(b"numbered after the retransmission")
    (datagram,) = server.take_datagrams()
    assert parse_records(datagram)[0].sequence_number == 2
    assert result.client.receive_datagram(datagram, 0.0) == [
        ApplicationData(b"numbered after the retransmission")
    ]
