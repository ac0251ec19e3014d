"""Forged records during a handshake: they cost kilobytes, steer nothing and end nothing.

Anyone who knows a peer's address can send well-framed DTLS records "from" it while its
handshake runs.  Three rules, each pinned here by tests that failed before them:

* **Memory** (``HANDSHAKE_KEPT_BUDGET``): the peer's protected records are kept once each,
  de-duplicated on content, within a per-peer byte budget, and OpenSSL never queues the ones it
  cannot judge yet; a handshaking peer's inbox is bounded in bytes too.
* **Hand-over and resends**: a forged record numbered like the peer's Finished does not shadow
  it (so the session still lets go of OpenSSL), and only a byte-for-byte copy of the Finished
  that completed the handshake makes a server that kept OpenSSL resend its final flight.
* **Ending a handshake**: a plaintext record that cannot belong to the client's next flight
  never reaches OpenSSL (which would abort), and a protected record that fails authentication
  ends the handshake (with ``bad_record_mac``, "a wrong PSK?") only when it came with the key
  exchange OpenSSL accepted from the same datagram, or failed a second time right after a copy
  of that key exchange (flights split over datagrams); otherwise it is dropped and counted.

Session tests run in memory; the network test runs a real server and client over the fake
network (``tests/fakenet.py``) with an attacker injecting records from the client's address.
"""

from __future__ import annotations

import gc
import struct
import tracemalloc

import pytest
import support
import trio
import trio.testing
from fakenet import Address, FakeNetwork, SentDatagram
from hypothesis import given, settings
from hypothesis import strategies as st
from support import IDENTITY, KEY, InMemoryHandshake, carry

from trio_dtls_server import DTLSClient, DTLSConnection, DTLSServer, RetransmitPolicy, ServerConfig
from trio_dtls_server._codes import DropReason, FailureKind
from trio_dtls_server._session import (
    HANDSHAKE_KEPT_BUDGET,
    DTLSSession,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeProgress,
    PskIdentity,
    RecordsDropped,
    Retransmitted,
    SessionState,
)
from trio_dtls_server._wire import (
    ContentType,
    HandshakeFragment,
    MalformedDatagram,
    parse_handshake_messages,
    parse_records,
)

GCM = "PSK-AES128-GCM-SHA256"
IDENTITY_BYTES = IDENTITY.encode("latin-1")
NOW = 0.0


# -- building forged records ----------------------------------------------------------------------


def record(content_type: int, epoch: int, sequence: int, fragment: bytes) -> bytes:
    """One well-framed DTLS 1.2 record."""
    header = struct.pack("!BHH", content_type, 0xFEFD, epoch) + sequence.to_bytes(6, "big")
    return header + len(fragment).to_bytes(2, "big") + fragment


def handshake_message(
    msg_type: int,
    message_seq: int,
    body: bytes,
    *,
    length: int | None = None,
    offset: int = 0,
) -> bytes:
    """A handshake message header and body; ``length`` may lie about the message's size."""
    total = len(body) if length is None else length
    return (
        bytes([msg_type])
        + total.to_bytes(3, "big")
        + message_seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + len(body).to_bytes(3, "big")
        + body
    )


# -- a handshake driven by hand -------------------------------------------------------------------


def up_to_the_clients_flight(
    *, server_releases: bool = True, policy: RetransmitPolicy | None = None, key: bytes = KEY
) -> tuple[InMemoryHandshake, bytes]:
    """Both sessions, the server's first flight delivered; returns the client's answer
    (ClientKeyExchange, ChangeCipherSpec, Finished in one datagram), not yet delivered."""
    chosen = policy or RetransmitPolicy()
    client = DTLSSession.client(
        support.client_context(GCM), now=NOW, mtu=1400, policy=chosen,
        identity=IDENTITY_BYTES, key=key,
    )  # fmt: skip
    first = client.take_datagrams()
    client.receive_datagram(support.hello_verify_request_for(first[0]), NOW)
    (hello,) = client.take_datagrams()
    server = DTLSSession.server(
        support.server_context(ciphers=GCM), hello, now=NOW, mtu=1400, policy=chosen,
        psk_lookup={IDENTITY_BYTES: KEY}.get, release_openssl=server_releases,
    )  # fmt: skip
    result = InMemoryHandshake(client, server)
    carry(server.take_datagrams(), client)
    (flight,) = client.take_datagrams()
    assert [r.content_type for r in parse_records(flight)] == [
        ContentType.handshake,
        ContentType.change_cipher_spec,
        ContentType.handshake,
    ]
    return result, flight


def split_flight(flight: bytes) -> tuple[bytes, bytes]:
    """(ClientKeyExchange + ChangeCipherSpec, Finished): the flight as two datagrams."""
    records = parse_records(flight)
    return b"".join(r.raw for r in records[:-1]), records[-1].raw


def finish(result: InMemoryHandshake, flight: bytes) -> list[object]:
    """Deliver the client's flight and the server's answer; both must be established.

    Returns what the flight caused at the server, but for the PSK callback's report.
    """
    events: list[object] = list(carry([flight], result.server))
    carry(result.server.take_datagrams(), result.client)
    assert support.established(result.client, result.server), events
    return [e for e in events if not isinstance(e, PskIdentity)]


# -- item 10: a stranger cannot end a handshake --------------------------------------------------

# The client's hello was message_seq 1: its next flight starts at 2.
FORGED_PLAINTEXT = {
    "a Finished in plaintext": record(
        ContentType.handshake, 0, 50, handshake_message(20, 2, bytes(12))
    ),
    "a ServerHello": record(ContentType.handshake, 0, 50, handshake_message(2, 2, bytes(40))),
    "a Certificate nobody asked for": record(
        ContentType.handshake, 0, 50, handshake_message(11, 2, bytes(3))
    ),
    "a fragment past its message": record(
        ContentType.handshake, 0, 50, handshake_message(16, 2, b"ab", length=1)
    ),
    "a message longer than OpenSSL takes": record(
        ContentType.handshake, 0, 50, handshake_message(16, 2, b"ab", length=200_000)
    ),
    "a ClientKeyExchange over 2 KiB": record(
        ContentType.handshake, 0, 50, handshake_message(16, 2, b"ab", length=4_096)
    ),
    "a message numbered after the flight": record(
        ContentType.handshake, 0, 50, handshake_message(16, 3, b"\x00\x03bob")
    ),
    "a truncated handshake header": record(ContentType.handshake, 0, 50, b"\x10\x00\x00"),
    "plaintext application data": record(ContentType.application_data, 0, 50, b"hello"),
    "a ChangeCipherSpec of two bytes": record(ContentType.change_cipher_spec, 0, 50, b"\x01\x01"),
    "an alert of three bytes": record(ContentType.alert, 0, 50, b"\x02\x28\x00"),
    "a record of epoch 2": record(ContentType.handshake, 2, 0, bytes(48)),
}


@pytest.mark.parametrize("forged", list(FORGED_PLAINTEXT.values()), ids=list(FORGED_PLAINTEXT))
def test_a_forged_record_before_the_clients_flight_is_dropped_and_the_handshake_completes(
    forged: bytes,
) -> None:
    result, flight = up_to_the_clients_flight()
    assert result.server.receive_datagram(forged, NOW) == [RecordsDropped(DropReason.UNEXPECTED)]
    assert result.server.state is SessionState.HANDSHAKING
    assert result.server.take_datagrams() == []  # no alert, no flight
    assert result.server.handshake_drops == {DropReason.UNEXPECTED: 1}
    events = finish(result, flight)
    assert events == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.server.openssl_released


def test_a_change_cipher_spec_numbered_like_the_key_exchange_does_not_shadow_it() -> None:
    """OpenSSL would take an early ChangeCipherSpec, changing nothing, but mark its record
    number as seen, and then drop the client's ClientKeyExchange with that number as a replay
    (found by the property test below)."""
    result, flight = up_to_the_clients_flight()
    key_exchange_number = parse_records(flight)[0].sequence_number
    forged = record(ContentType.change_cipher_spec, 0, key_exchange_number, b"\x01")
    assert result.server.receive_datagram(forged, NOW) == [RecordsDropped(DropReason.UNEXPECTED)]
    assert finish(result, flight) == [HandshakeComplete(GCM, "DTLSv1.2")]


def test_a_retransmitted_hello_mid_handshake_is_dropped_as_a_retransmission() -> None:
    result, flight = up_to_the_clients_flight()
    old = record(ContentType.handshake, 0, 50, handshake_message(1, 1, bytes(40)))
    assert result.server.receive_datagram(old, NOW) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    finish(result, flight)


def test_a_forged_protected_record_while_the_finished_is_outstanding_is_dropped() -> None:
    """The flight comes in two datagrams; a forgery between them used to fail it ("wrong PSK")."""
    result, flight = up_to_the_clients_flight()
    key_exchange, finished = split_flight(flight)
    assert result.server.receive_datagram(key_exchange, NOW) == [
        PskIdentity(IDENTITY_BYTES, known=True),
        HandshakeProgress(),
    ]
    for sequence in (0, 1, 7):  # 0: the number of the client's own Finished
        forged = support.garbage_record(
            content_type=ContentType.handshake, epoch=1, sequence=sequence, seed=sequence
        )
        assert result.server.receive_datagram(forged, NOW) == [
            RecordsDropped(DropReason.AUTHENTICATION)
        ]
    assert result.server.state is SessionState.HANDSHAKING
    assert result.server.take_datagrams() == []  # no bad_record_mac to the real client
    assert result.server.handshake_drops == {DropReason.AUTHENTICATION: 3}
    assert finish(result, finished) == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.server.openssl_released


def test_a_wrong_key_in_one_datagram_still_gets_bad_record_mac_at_once() -> None:
    """The unambiguous case keeps its prompt diagnosis (mbedTLS, Qt and OpenSSL send so)."""
    result, flight = up_to_the_clients_flight(key=bytes(16))
    events = result.server.receive_datagram(flight, NOW)
    assert isinstance(events[-1], HandshakeFailed)
    assert events[-1].alert_sent == "bad_record_mac (20)"
    assert "a wrong PSK?" in events[-1].reason


def test_a_wrong_key_whose_finished_comes_alone_fails_when_the_retransmissions_run_out() -> None:
    """Split from its key exchange, a failing Finished may be anyone's: no alert, but the
    failure, once the retransmissions are spent, says what was seen."""
    result, flight = up_to_the_clients_flight(
        key=bytes(16), policy=RetransmitPolicy(max_retransmissions=1)
    )
    key_exchange, finished = split_flight(flight)
    carry([key_exchange], result.server)
    assert result.server.receive_datagram(finished, NOW) == [
        RecordsDropped(DropReason.AUTHENTICATION)
    ]
    assert result.server.take_datagrams() == []
    deadline = result.server.timer_deadline
    assert deadline is not None
    assert result.server.handle_timer(deadline) == [Retransmitted(1, 1)]
    result.server.take_datagrams()
    deadline = result.server.timer_deadline
    assert deadline is not None
    (failed,) = result.server.handle_timer(deadline)
    assert failed == HandshakeFailed(
        "no answer from the peer after 1 retransmissions; 1 record(s) in the place of its "
        "Finished failed authentication (a wrong PSK, or forged records)",
        kind=FailureKind.NO_ANSWER,
    )


def test_a_wrong_key_in_split_datagrams_gets_bad_record_mac_when_the_flight_comes_again() -> None:
    """tinydtls sends ClientKeyExchange, ChangeCipherSpec and Finished one per datagram, and
    retransmits all three: the second Finished failing right after a copy of the accepted key
    exchange is the client's own, so it learns of its wrong key then."""
    result, flight = up_to_the_clients_flight(key=bytes(16))
    records = [r.raw for r in parse_records(flight)]
    assert carry(records[:2], result.server)[-1] == HandshakeProgress()
    assert result.server.receive_datagram(records[2], NOW) == [
        RecordsDropped(DropReason.AUTHENTICATION)
    ]
    assert result.server.take_datagrams() == []
    # A stranger's record between two flights is not in the Finished's place: no verdict.
    forged = support.garbage_record(content_type=ContentType.handshake, epoch=1, sequence=5)
    assert result.server.receive_datagram(forged, NOW) == [
        RecordsDropped(DropReason.AUTHENTICATION)
    ]
    deadline = result.client.timer_deadline
    assert deadline is not None
    result.client.handle_timer(deadline)
    (again,) = result.client.take_datagrams()
    records = [r.raw for r in parse_records(again)]
    carry(records[:2], result.server)
    (failed,) = [
        e for e in result.server.receive_datagram(records[2], NOW) if isinstance(e, HandshakeFailed)
    ]
    assert failed.alert_sent == "bad_record_mac (20)"
    assert "a wrong PSK?" in failed.reason


def test_a_finished_that_overtook_the_key_exchange_is_held_then_completes() -> None:
    result, flight = up_to_the_clients_flight()
    key_exchange, finished = split_flight(flight)
    assert result.server.receive_datagram(finished, NOW) == [HandshakeProgress()]
    assert result.server._driver is not None
    assert result.server._driver._kept.held == [finished]
    assert finish(result, key_exchange) == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.server.openssl_released


@st.composite
def forged_records(draw: st.DrawFn) -> bytes:
    """A well-framed record a stranger might send: any type, epoch 0-2, any number; handshake
    records of epoch 0 carry a message header with any type, number, length and offset."""
    content_type = draw(st.sampled_from([20, 21, 22, 23]))
    epoch = draw(st.sampled_from([0, 0, 1, 1, 2]))
    # Small numbers collide with the client's own records (its flight's are 2-4).
    sequence = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**48 - 1)))
    if content_type == ContentType.handshake and epoch == 0 and draw(st.booleans()):
        body = draw(st.binary(max_size=60))
        fragment = handshake_message(
            draw(st.integers(0, 255)),
            draw(st.integers(0, 8)),
            body,
            length=len(body) + draw(st.sampled_from([0, 0, 1, 5000, 2**24 - 1 - len(body)])),
            offset=draw(st.sampled_from([0, 0, 1, 3])),
        )
    else:
        fragment = draw(st.binary(max_size=80))
    return record(content_type, epoch, sequence, fragment)


def _can_end_a_handshake(forged: bytes) -> bool:
    """What a stranger can still do (see docs/security.md): a plaintext alert, and a message in the
    place of the client's ClientKeyExchange (number 2), which DTLS 1.2 cannot tell apart."""
    for r in parse_records(forged):
        if r.epoch == 0 and r.content_type == ContentType.alert and len(r.fragment) == 2:
            return True
        if r.epoch == 0 and r.content_type == ContentType.handshake:
            try:
                messages = parse_handshake_messages(r.fragment)
            except MalformedDatagram:
                continue
            if any(m.msg_type == 16 and m.message_seq == 2 for m in messages):
                return True
    return False


@settings(max_examples=150, deadline=None)
@given(st.lists(forged_records(), min_size=1, max_size=4), st.booleans())
def test_any_other_forged_record_mid_handshake_leaves_it_to_complete(
    forged: list[bytes], between: bool
) -> None:
    """Forged datagrams before the client's flight, or between its ChangeCipherSpec and its
    Finished: the handshake completes and the session lets go of OpenSSL."""
    datagrams = [d for d in forged if not _can_end_a_handshake(d)]
    result, flight = up_to_the_clients_flight()
    key_exchange, finished = split_flight(flight)
    if between:
        carry([key_exchange], result.server)
    for datagram in datagrams:
        events = result.server.receive_datagram(datagram, NOW)
        assert result.server.state is SessionState.HANDSHAKING, events
    assert result.server.take_datagrams() == []
    finish(result, finished if between else flight)
    assert result.server.openssl_released


# -- item 10 on the network ----------------------------------------------------------------------

SERVER: Address = ("127.0.0.1", 5684)
CLIENT: Address = ("127.0.0.1", 41_000)


def _has_handshake_type(datagram: bytes, msg_type: int) -> bool:
    return any(
        r.epoch == 0
        and r.content_type == ContentType.handshake
        and r.fragment[:1] == bytes([msg_type])
        for r in parse_records(datagram)
    )


class Echo:
    """A handler that answers ``re <plaintext>``."""

    async def __call__(self, connection: DTLSConnection) -> None:
        async for plaintext in connection:
            await connection.send(b"re " + plaintext)


async def test_forged_records_injected_mid_handshake_on_the_network_do_not_end_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An attacker who sees the handshake sends records "from" the client at each step.

    When the server's ServerHello goes out, forged plaintext records race ahead of the
    client's answer; when the client's flight goes out, the network splits it in two and the
    attacker slips forged protected records between ClientKeyExchange and Finished.
    """
    network = FakeNetwork(seed=3)
    server = DTLSServer({IDENTITY: KEY}, handler=Echo(), config=ServerConfig(ciphers=GCM))
    client_endpoint = network.endpoint(CLIENT)
    injected: list[bytes] = []

    def inject(datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            injected.append(datagram)
            client_endpoint.send_nowait(datagram, SERVER)

    def attacker(sent: SentDatagram) -> bool:
        if sent.data in injected:
            return False
        if sent.source == SERVER and _has_handshake_type(sent.data, 2):  # ServerHello
            inject(list(FORGED_PLAINTEXT.values()))
            return False
        if sent.source == CLIENT and any(
            r.content_type == ContentType.change_cipher_spec for r in parse_records(sent.data)
        ):
            key_exchange, finished = split_flight(sent.data)
            forged = [
                support.garbage_record(content_type=ContentType.handshake, epoch=1, sequence=0),
                support.garbage_record(content_type=ContentType.application_data, epoch=1, seed=1),
            ]
            inject([key_exchange, *forged, finished])
            return True  # the flight travels as the pieces above
        return False

    network.lose_if(attacker)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_on, network.endpoint(SERVER))
        with trio.fail_after(10):
            client = await DTLSClient.connect_over(
                client_endpoint, SERVER, identity=IDENTITY, key=KEY, ciphers=GCM
            )
            await client.send(b"still here")
            assert await client.receive() == b"re still here"
        await client.aclose()
        nursery.cancel_scope.cancel()
    statistics = server.statistics()
    assert statistics.handshakes_completed == 1
    assert statistics.handshakes_failed == {}
    assert statistics.openssl_released == 1
    # Each forged plaintext record, and the protected "data" (it came before our Finished
    # went out, so it cannot be the client's).
    assert statistics.drops[DropReason.UNEXPECTED] == len(FORGED_PLAINTEXT) + 1
    assert statistics.drops[DropReason.AUTHENTICATION] == 1  # the forged "Finished"


# -- item 6: forged records steer neither the hand-over nor the resends ----------------------


@pytest.mark.parametrize("content_type", [ContentType.handshake, ContentType.application_data])
def test_a_forgery_numbered_like_the_finished_does_not_keep_openssl(content_type: int) -> None:
    """Epoch 1, sequence 0 is the client's Finished's number: the forgery used to shadow it."""
    result, flight = up_to_the_clients_flight()
    forged = support.garbage_record(content_type=content_type, epoch=1, sequence=0)
    carry([forged], result.server)
    assert finish(result, flight) == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.server.openssl_released


def test_forged_finished_records_do_not_make_a_kept_openssl_resend() -> None:
    """OpenSSL kept: only a byte-for-byte copy of the client's Finished earns the resend."""
    result, flight = up_to_the_clients_flight(
        server_releases=False, policy=RetransmitPolicy(max_retransmissions=1)
    )
    carry([flight], result.server)
    assert result.server.state is SessionState.ESTABLISHED
    assert not result.server.openssl_released
    final_flight = result.server.take_datagrams()  # lost on the way
    for seed in range(5):
        forged = support.garbage_record(
            content_type=ContentType.handshake, epoch=1, sequence=seed, seed=seed
        )
        events = result.server.receive_datagram(forged, NOW)
        assert result.server.take_datagrams() == []  # no resend for a forgery
        assert events == [RecordsDropped(DropReason.AUTHENTICATION)]
    # The client's own retransmission, byte for byte (its timer, under a test clock).
    assert result.server.receive_datagram(flight, NOW) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    assert result.server.take_datagrams() == final_flight  # the one resend is still there
    assert carry(final_flight, result.client) == [HandshakeComplete(GCM, "DTLSv1.2")]


# -- item 5: one copy, within a budget -----------------------------------------------------------


def test_junk_protected_records_during_a_handshake_stay_within_the_budget() -> None:
    """200 junk records of 16 KiB "from" the client: at most the budget is kept, once."""
    result, flight = up_to_the_clients_flight()
    server = result.server._driver  # the handshake driver, which keeps the records
    assert server is not None
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for sequence in range(200):
            content = ContentType.handshake if sequence % 2 else ContentType.application_data
            junk = support.garbage_record(
                content_type=content, epoch=1, sequence=sequence, length=16_000, seed=sequence
            )
            result.server.receive_datagram(junk, NOW)
            result.server.receive_datagram(junk, NOW)  # and a copy of each
            del junk
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < HANDSHAKE_KEPT_BUDGET + 32 * 1024, grown  # Python's own bookkeeping aside
    kept = server._kept
    assert kept.kept_bytes == sum(map(len, kept.held + kept.early))
    assert kept.kept_bytes <= HANDSHAKE_KEPT_BUDGET
    assert len(set(kept.held)) == len(kept.held)
    assert server.handshake_drops[DropReason.OVER_BUDGET] > 0
    # None of it was worth keeping: the handshake completes and lets go of OpenSSL.
    assert finish(result, flight) == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.server.openssl_released
    assert server._kept.kept_bytes == 0


async def test_a_handshaking_peers_inbox_is_bounded_in_bytes() -> None:
    """What waits for a handshaking peer's task (during a PSK lookup, say) is bounded in
    bytes, not only in datagrams: one datagram of any size, then ``HANDSHAKE_INBOX_BUDGET``."""
    from trio_dtls_server._connection import PeerSlot
    from trio_dtls_server._peers import PeerState
    from trio_dtls_server._server import HANDSHAKE_INBOX_BUDGET

    server = DTLSServer({IDENTITY: KEY})
    send, receive = trio.open_memory_channel[bytes](server.config.peer_queue_size)
    slot = PeerSlot(CLIENT, bytes(32), send, receive, last_activity=0.0)
    big = bytes(16_000)
    for _ in range(server.config.peer_queue_size):
        server._deliver(slot, big)
    assert slot.queued == 1  # 16 KB wait; the next would pass the budget
    assert slot.queued_bytes <= max(HANDSHAKE_INBOX_BUDGET, len(big))
    assert slot.queued == slot.queued_bytes // len(big)
    assert (
        server.statistics().drops["peer queue full"] == server.config.peer_queue_size - slot.queued
    )
    slot.take_nowait()
    assert slot.queued_bytes == (slot.queued) * len(big)
    slot.state = PeerState.ESTABLISHED  # an established peer has its datagram count bound only
    for _ in range(3):
        server._deliver(slot, big)
    assert slot.queued_bytes > HANDSHAKE_INBOX_BUDGET


# -- the parser ---------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=80))
def test_parse_handshake_messages_raises_only_malformed_datagram(data: bytes) -> None:
    try:
        messages = parse_handshake_messages(data)
    except MalformedDatagram:
        return
    assert messages and all(isinstance(m, HandshakeFragment) for m in messages)
    assert sum(12 + m.fragment_length for m in messages) == len(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255),
            st.integers(0, 2**16 - 1),
            st.binary(max_size=40),
            st.integers(0, 50),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_parse_handshake_messages_round_trips(
    parts: list[tuple[int, int, bytes, int]],
) -> None:
    built = b"".join(
        handshake_message(t, seq, body, length=len(body) + extra, offset=extra)
        for t, seq, body, extra in parts
    )
    messages = parse_handshake_messages(built)
    assert [(m.msg_type, m.message_seq, m.body, m.fragment_offset) for m in messages] == [
        (t, seq, body, extra) for t, seq, body, extra in parts
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x10\x00",
        handshake_message(16, 2, b"abc")[:-1],
        handshake_message(16, 2, b"ab", length=1),
    ],
    ids=["empty", "short-header", "short-body", "past-the-message"],
)
def test_parse_handshake_messages_refuses(data: bytes) -> None:
    with pytest.raises(MalformedDatagram):
        parse_handshake_messages(data)
