"""The hand-over from OpenSSL to our record layer (``_records.py`` and its callers), at its edges.

They came from an adversarial review of the hand-over.  Four of its findings, each fixed,
each pinned here by the test that showed it:

* **max_fragment_length** (RFC 6066 §4): a peer that negotiated 512-byte records (constrained
  devices do, RFC 7925) must never get a longer one, whether our record layer or OpenSSL
  protects the records.  Shown with Mbed TLS, in process, as the client.
* **The ``queued`` counter** of a peer slot must not drift when the handler's sending task
  runs between the reader handing a datagram straight to a ``receive()`` that was waiting and
  that ``receive()`` waking up; otherwise a handler that only sends would miss the peer's
  close_notify.
* **A close_notify that overtook the peer's Finished** must not be thrown away with OpenSSL's
  buffers when the session hands over (or when OpenSSL is kept).
* **Data that overtook the Finished** must appear as a ``DatagramReceived`` event like any
  other datagram.

The other tests are regression tests for attacks the review tried and found handled, where
``tests/test_records.py`` did not already pin the behaviour down.

Everything runs in memory, without sockets or clocks; the ``async`` tests drive a real
:class:`DTLSConnection` over a real :class:`PeerSlot`, fed by the reader's own
``DTLSServer._deliver``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Protocol, cast

import pytest
import support
import trio
import trio.testing
from session_support import begin_pair, zero_key_protection
from support import IDENTITY, KEY, InMemoryHandshake, carry, protection_of, seal_one

from trio_dtls_server import DatagramReceived, DTLSServer, RetransmitPolicy, ServerEvent
from trio_dtls_server._codes import DropReason
from trio_dtls_server._connection import ConnectionClosed, DTLSConnection, PeerSlot
from trio_dtls_server._openssl import configure_session_resumption
from trio_dtls_server._peers import PeerState
from trio_dtls_server._records import aead_suite
from trio_dtls_server._session import (
    ApplicationData,
    DTLSSession,
    HandshakeComplete,
    HandshakeProgress,
    RecordsDropped,
    RemoteClosed,
    SessionState,
)
from trio_dtls_server._wire import (
    DTLS_1_2,
    ContentType,
    parse_records,
)

GCM = "PSK-AES128-GCM-SHA256"
IDENTITY_BYTES = IDENTITY.encode("latin-1")
NOW = 0.0
PEER_ADDRESS = ("127.0.0.1", 40_000)


# -- helpers ----------------------------------------------------------------------------------


def established_pair(ciphers: str = GCM, *, server_releases: bool = True) -> InMemoryHandshake:
    result = support.exchange(begin_pair(ciphers, server_releases=server_releases))
    assert support.established(result.client, result.server)
    assert result.client.openssl_released
    assert result.server.openssl_released is server_releases
    return result


def resumed_client_finished_first() -> tuple[InMemoryHandshake, bytes]:
    """A resumed handshake in which the client has finished and the server has not.

    In an abbreviated handshake the server sends its Finished first; the client is done (and
    released) as soon as it has answered.  Returns the pair and the client's answer (CCS +
    Finished), not yet delivered: whatever the client sends next overtakes it.
    """
    server_context = support.server_context(ciphers=GCM)
    configure_session_resumption(
        server_context, enabled=True, lifetime=60.0, session_id_context=b"record_handover"
    )
    client_context = support.client_context(GCM)
    first = support.exchange(begin_pair(server_ssl=server_context, client_ssl=client_context))
    assert support.established(first.client, first.server)
    result = begin_pair(
        server_ssl=server_context,
        client_ssl=client_context,
        resume=first.client.ssl_session,
    )
    assert carry(result.server.take_datagrams(), result.client) == [
        HandshakeComplete(GCM, "DTLSv1.2", resumed=True)
    ]
    assert result.client.openssl_released
    (client_flight,) = result.client.take_datagrams()
    return result, client_flight


@dataclass
class ConnectionHarness:
    """A :class:`DTLSConnection` over a real :class:`PeerSlot`, fed by the reader's code."""

    server: DTLSServer
    slot: PeerSlot
    connection: DTLSConnection
    events: trio.MemoryReceiveChannel[ServerEvent]
    transmitted: list[bytes] = field(default_factory=list)

    def deliver(self, datagram: bytes) -> None:
        """What the reader task does with a datagram from this peer."""
        self.server._deliver(self.slot, datagram)

    def events_so_far(self) -> list[ServerEvent]:
        seen: list[ServerEvent] = []
        while True:
            try:
                seen.append(self.events.receive_nowait())
            except trio.WouldBlock:
                return seen


def connection_harness(session: DTLSSession) -> ConnectionHarness:
    """Must run inside Trio.  Subscribes to the events before the connection exists."""
    server = DTLSServer({IDENTITY: KEY})
    events = server._hub.subscribe(64)
    inbox_send, inbox_receive = trio.open_memory_channel[bytes](server.config.peer_queue_size)
    slot = PeerSlot(
        PEER_ADDRESS,
        bytes(32),
        inbox_send,
        inbox_receive,
        session=session,
        state=PeerState.ESTABLISHED,
        last_activity=trio.current_time(),
    )
    transmitted: list[bytes] = []

    async def transmit(datagrams: list[bytes]) -> None:
        # Like DTLSServer._transmit on a socket with room: no checkpoint.
        transmitted.extend(datagrams)

    connection = DTLSConnection(
        slot=slot,
        session=session,
        transmit=transmit,
        hub=server._hub,
        stats=server._stats,
        idle_timeout=None,
        max_auth_failures=server.config.max_auth_failures,
        auth_failure_window=server.config.auth_failure_window,
        ready_limit=server.config.peer_queue_size,
    )
    return ConnectionHarness(server, slot, connection, events, transmitted)


# -- finding: a negotiated max_fragment_length is ignored after the hand-over --------------------


class MbedTlsBuffer(Protocol):
    """The part of python-mbedtls's ``TLSWrappedBuffer`` used here (see peers/mbedtls_client)."""

    @property
    def _handshake_state(self) -> object: ...
    def do_handshake(self) -> None: ...
    def receive_from_network(self, data: bytes) -> None: ...
    def peek_outgoing(self, amt: int) -> bytes: ...
    def consume_outgoing(self, amt: int) -> None: ...
    def readinto(self, buffer: bytearray, amt: int) -> int: ...


MFL_512 = 512


def mbedtls_asking_for_512_byte_records(
    *, server_releases: bool
) -> tuple[MbedTlsBuffer, DTLSSession]:
    """Mbed TLS (in process, on memory buffers) handshakes with a server session.

    Its ClientHello carries ``max_fragment_length`` = 2^9 (RFC 6066 §4), which OpenSSL accepts.
    """
    tls = pytest.importorskip("mbedtls.tls", reason="python-mbedtls (the interop extra)")
    configuration = tls.DTLSConfiguration(
        pre_shared_key=(IDENTITY, KEY),
        ciphers=("TLS-PSK-WITH-AES-128-GCM-SHA256",),
        lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
        highest_supported_version=tls.DTLSVersion.DTLSv1_2,
        validate_certificates=False,
        max_fragmentation_length=tls.MaxFragmentLength.MFL_512K,  # 2^9 bytes, whatever "K" says
    )
    client = cast(MbedTlsBuffer, tls.ClientContext(configuration).wrap_buffers(None))

    def step() -> bytes:
        """One handshake step; what Mbed TLS wrote (it writes a flight at a time)."""
        with contextlib.suppress(tls.WantReadError, tls.WantWriteError):
            client.do_handshake()
        written = client.peek_outgoing(65_536)
        client.consume_outgoing(len(written))
        return written

    def next_flight() -> bytes:
        for _ in range(5):
            if written := step():
                return written
        raise AssertionError("Mbed TLS wrote nothing")

    first_hello = next_flight()
    client.receive_from_network(support.hello_verify_request_for(first_hello))
    server = DTLSSession.server(
        support.server_context(ciphers=GCM),
        next_flight(),
        now=NOW,
        mtu=1400,
        policy=RetransmitPolicy(),
        psk_lookup={IDENTITY_BYTES: KEY}.get,
        release_openssl=server_releases,
    )
    for _ in range(30):  # Mbed TLS needs a few steps with nothing new to reach HANDSHAKE_OVER
        if getattr(client._handshake_state, "name", "") == "HANDSHAKE_OVER":
            break
        for datagram in server.take_datagrams():
            client.receive_from_network(datagram)
        if written := step():
            server.receive_datagram(written, NOW)
    assert getattr(client._handshake_state, "name", "") == "HANDSHAKE_OVER"
    assert server.state is SessionState.ESTABLISHED
    assert server.openssl_released is server_releases
    return client, server


def mbedtls_reads(client: MbedTlsBuffer, datagram: bytes) -> bytes:
    client.receive_from_network(datagram)
    buffer = bytearray(65_536)
    return bytes(buffer[: client.readinto(buffer, len(buffer))])


@pytest.mark.interop
@pytest.mark.parametrize("server_releases", [True, False], ids=["released", "kept"])
def test_a_session_keeps_to_the_negotiated_max_fragment_length(server_releases: bool) -> None:
    """A peer that asked for 512-byte records (RFC 6066 §4) never gets a longer one.

    Our record layer and OpenSSL behave the same: ``send()`` refuses the longer plaintext with
    a ``ValueError`` naming the limit, sends nothing, and the session goes on.  (OpenSSL's own
    write would fail the whole connection; the session checks first.)
    """
    client, server = mbedtls_asking_for_512_byte_records(server_releases=server_releases)
    assert server.openssl_released is server_releases
    assert server.max_plaintext == MFL_512
    server.send(bytes(MFL_512))
    (datagram,) = server.take_datagrams()
    assert mbedtls_reads(client, datagram) == bytes(MFL_512)
    with pytest.raises(ValueError, match=r"at most 512 bytes of plaintext \(max_fragment_length"):
        server.send(bytes(MFL_512 + 1))
    assert server.take_datagrams() == []
    assert server.state is SessionState.ESTABLISHED
    server.send(b"still talking")
    (datagram,) = server.take_datagrams()
    assert mbedtls_reads(client, datagram) == b"still talking"


# -- finding: PeerSlot.queued drifts below the inbox when receive() and send() run together ------


async def test_queued_counts_the_inbox_when_a_waiting_receive_was_handed_the_datagram() -> None:
    """A handler reads one request in a task of its own while its main task pushes data.

    The reader task hands the request straight to the waiting ``receive()`` (Trio's memory
    channel does not buffer it) and counts it in ``queued``; the pushing task runs before the
    receiving one wakes up (the test plays both the reader and the pushing task, so the order
    is certain).  After that the handler only pushes: it must still hear close_notify.
    """
    pair = established_pair()
    harness = connection_harness(pair.server)
    requests: list[bytes] = []

    async def read_the_request() -> None:
        requests.append(await harness.connection.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_the_request)
        await trio.testing.wait_all_tasks_blocked()
        harness.deliver(seal_one(pair.client, b"subscribe"))
        await harness.connection.send(b"tick 1")  # no checkpoint since the delivery
    assert requests == [b"subscribe"]
    assert carry(harness.transmitted, pair.client) == [ApplicationData(b"tick 1")]

    pair.client.close()
    (goodbye,) = pair.client.take_datagrams()
    harness.deliver(goodbye)
    with pytest.raises(ConnectionClosed, match="the peer sent close_notify"):
        await harness.connection.send(b"tick 2")
    assert harness.slot.queued == 0


# -- finding: an alert that overtook the Finished is lost in the hand-over -----------------------


def test_a_close_notify_that_overtook_the_clients_finished_is_not_lost() -> None:
    """A device resumes, sends one reading and says goodbye; its Finished arrives last."""
    result, client_flight = resumed_client_finished_first()
    reading = seal_one(result.client, b"reading 42")
    result.client.close()
    (goodbye,) = result.client.take_datagrams()
    assert carry([reading, goodbye], result.server) == [HandshakeProgress(), HandshakeProgress()]

    events = result.server.receive_datagram(client_flight, NOW)
    assert events[0] == HandshakeComplete(GCM, "DTLSv1.2", resumed=True)
    assert result.server.openssl_released
    assert result.server.take_early_data() == [b"reading 42"]
    assert RemoteClosed() in events or result.server.state is SessionState.CLOSED


@pytest.mark.parametrize("client_releases", [True, False], ids=["released", "kept"])
def test_a_close_notify_that_overtook_the_servers_finished_is_not_lost(
    client_releases: bool,
) -> None:
    """A handler that greets and returns: data and close_notify follow the final flight."""
    result = begin_pair(client_releases=client_releases)
    carry(result.server.take_datagrams(), result.client)
    carry(result.client.take_datagrams(), result.server)
    assert result.server.state is SessionState.ESTABLISHED
    final_flight = result.server.take_datagrams()
    greeting = seal_one(result.server, b"hello, and goodbye")
    result.server.close()
    (goodbye,) = result.server.take_datagrams()
    assert carry([greeting, goodbye], result.client) == [HandshakeProgress(), HandshakeProgress()]

    events = carry(final_flight, result.client)
    assert events[0] == HandshakeComplete(GCM, "DTLSv1.2")
    assert result.client.openssl_released is client_releases
    assert result.client.take_early_data() == [b"hello, and goodbye"]
    assert RemoteClosed() in events or result.client.state is SessionState.CLOSED


# -- finding: early data is delivered without its DatagramReceived event -------------------------


async def test_data_that_overtook_the_finished_is_reported_like_any_other_datagram() -> None:
    result, client_flight = resumed_client_finished_first()
    early = seal_one(result.client, b"overtook the Finished")
    assert result.server.receive_datagram(early, NOW) == [HandshakeProgress()]
    assert result.server.receive_datagram(client_flight, NOW) == [
        HandshakeComplete(GCM, "DTLSv1.2", resumed=True)
    ]
    harness = connection_harness(result.server)
    await harness.connection._take_early_events()  # what DTLSServer does before the handler
    with trio.fail_after(5):
        assert await harness.connection.receive() == b"overtook the Finished"
    harness.deliver(seal_one(result.client, b"in its turn"))
    assert await harness.connection.receive() == b"in its turn"

    assert harness.server.statistics().messages_received == 2
    reported = [
        event.plaintext for event in harness.events_so_far() if isinstance(event, DatagramReceived)
    ]
    assert reported == [b"overtook the Finished", b"in its turn"]


# -- regression: what the review tried and found handled ------------------------------------------


@pytest.mark.parametrize(
    "suite_name",
    ["PSK-AES128-CCM", "PSK-AES256-CCM", "PSK-AES128-CCM8", "PSK-AES256-GCM-SHA384"],
)
def test_impossible_fragments_and_odd_buffer_types_are_refused_without_raising(
    suite_name: str,
) -> None:
    """CCM has limits of its own in ``cryptography`` (nonce and data lengths); none leaks out."""
    suite = aead_suite(suite_name)
    assert suite is not None
    protection = zero_key_protection(suite, next_sequence=1)
    lengths = [0, 1, 8, suite.overhead - 1, suite.overhead, suite.overhead + 1]
    lengths += [suite.overhead + 2**14, suite.overhead + 2**14 + 1, 65_535]
    refused = 0
    for length in lengths:
        body = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
        for fragment in (body, bytearray(body), memoryview(body)):
            for content_type in (
                ContentType.application_data,
                ContentType.alert,
                ContentType.handshake,
                0,
            ):
                outcome = protection.open_record(
                    content_type,
                    DTLS_1_2,
                    2**48 - 1,
                    fragment,  # type: ignore[arg-type]  # a buffer, as a caller might pass
                )
                assert outcome is None
                refused += 1
    assert refused == len(lengths) * 3 * 4
    assert protection.replay.seen(2**48 - 1) is False  # no forgery moved the window
    # A genuine record of the largest size still opens: the refusals were about the bytes.
    largest = protection.seal(ContentType.application_data, bytes(2**14))
    mirror = zero_key_protection(suite, next_sequence=1)
    (record,) = parse_records(largest)
    assert mirror.open_record(
        record.content_type, record.version, record.sequence_number, record.fragment
    ) == bytes(2**14)


def test_forged_handshake_records_do_not_use_up_the_final_flight_resends() -> None:
    """With one resend allowed, ten forged "Finished" records must not take it."""
    result = begin_pair(policy=RetransmitPolicy(max_retransmissions=1))
    carry(result.server.take_datagrams(), result.client)
    carry(result.client.take_datagrams(), result.server)
    assert result.server.state is SessionState.ESTABLISHED and result.server.openssl_released
    lost = result.server.take_datagrams()  # the server's final flight never arrives
    for seed in range(10):  # numbers 0-9: the client's Finished itself took number 0
        forged = support.garbage_record(
            content_type=ContentType.handshake, epoch=1, sequence=seed, seed=seed
        )
        assert result.server.receive_datagram(forged, NOW) == [
            RecordsDropped(DropReason.AUTHENTICATION)
        ]
        assert result.server.take_datagrams() == []

    deadline = result.client.timer_deadline
    assert deadline is not None
    result.client.handle_timer(deadline)
    (retransmission,) = result.client.take_datagrams()
    assert result.server.receive_datagram(retransmission, deadline) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    assert result.server.take_datagrams() == lost  # the one resend is still there
    assert carry(lost, result.client) == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.server.state is SessionState.ESTABLISHED


def test_forged_handshake_records_do_not_use_up_the_renegotiation_answers() -> None:
    result = support.exchange(begin_pair(policy=RetransmitPolicy(max_retransmissions=1)))
    assert support.established(result.client, result.server)
    for seed in range(10):
        forged = support.garbage_record(
            content_type=ContentType.handshake, epoch=1, sequence=100 + seed, seed=seed
        )
        assert result.server.receive_datagram(forged, NOW) == [
            RecordsDropped(DropReason.AUTHENTICATION)
        ]
    assert result.server.take_datagrams() == []
    # A genuine ClientHello header (type 1, message_seq 2) and four bytes of body.
    hello = bytes([1, 0, 0, 4, 0, 2, 0, 0, 0, 0, 0, 4]) + b"\x01\x02\x03\x04"
    attempt = protection_of(result.client).seal(ContentType.handshake, hello)
    assert result.server.receive_datagram(attempt, NOW) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    (answer,) = result.server.take_datagrams()
    (record,) = parse_records(answer)
    assert (record.content_type, record.epoch) == (ContentType.alert, 1)
    plaintext = protection_of(result.client).decrypt(
        record.content_type, record.version, record.sequence_number, record.fragment
    )
    assert plaintext == b"\x01\x64"  # warning, no_renegotiation


@pytest.mark.parametrize("suite_name", [GCM, "PSK-AES128-CCM", "PSK-CHACHA20-POLY1305"])
def test_no_nonce_repeats_across_openssls_finished_and_every_kind_of_our_records(
    suite_name: str,
) -> None:
    """Data, the no_renegotiation answer and close_notify share one sequence with the Finished.

    GCM and CCM carry the explicit nonce in the record: it must differ between every record
    sealed under the server's key, OpenSSL's Finished included.  ChaCha20-Poly1305's nonce is
    the IV XOR epoch-and-sequence, so the (epoch, sequence) pairs must all differ.
    """
    result = established_pair(suite_name)
    client, server = result.client, result.server
    server_records = [
        record
        for datagram in result.server_datagrams
        for record in parse_records(datagram)
        if record.epoch == 1
    ]
    assert [record.content_type for record in server_records] == [ContentType.handshake]  # Finished
    for index in range(5):
        server_records += parse_records(seal_one(server, b"data %d" % index))
    hello = bytes([1, 0, 0, 4, 0, 2, 0, 0, 0, 0, 0, 4]) + b"\x01\x02\x03\x04"
    server.receive_datagram(protection_of(client).seal(ContentType.handshake, hello), NOW)
    server_records += [r for d in server.take_datagrams() for r in parse_records(d)]
    server.close()
    server_records += [r for d in server.take_datagrams() for r in parse_records(d)]

    kinds = [record.content_type for record in server_records]
    assert (
        kinds
        == [ContentType.handshake] + [ContentType.application_data] * 5 + [ContentType.alert] * 2
    )
    if "CHACHA20" in suite_name:
        nonces = {
            (record.epoch << 48 | record.sequence_number).to_bytes(8, "big")
            for record in server_records
        }
    else:
        nonces = {record.fragment[:8] for record in server_records}
    assert len(nonces) == len(server_records) == 8
    # And the client opens every one of them (the close_notify last).
    events = carry([record.raw for record in server_records[1:]], client)
    assert events == [ApplicationData(b"data %d" % index) for index in range(5)] + [RemoteClosed()]


def test_data_around_the_finished_in_one_datagram_is_delivered_once_each() -> None:
    """The Finished shares its datagram with early data before and after it, and duplicates."""
    result, client_flight = resumed_client_finished_first()
    before = seal_one(result.client, b"before the Finished")
    after = seal_one(result.client, b"after the Finished")
    assert result.server.receive_datagram(before, NOW) == [HandshakeProgress()]
    assert result.server.receive_datagram(before, NOW) == [RecordsDropped(DropReason.REPLAY)]
    events = result.server.receive_datagram(before + client_flight + after + after, NOW)
    assert events == [HandshakeComplete(GCM, "DTLSv1.2", resumed=True)]
    assert result.server.openssl_released
    assert result.server.take_early_data() == [b"before the Finished", b"after the Finished"]
    assert carry([before, after], result.server) == [
        RecordsDropped(DropReason.REPLAY),
        RecordsDropped(DropReason.REPLAY),
    ]
    assert result.server.receive_datagram(seal_one(result.client, b"next"), NOW) == [
        ApplicationData(b"next")
    ]


async def test_a_handler_gets_the_data_that_overtook_the_finished_then_the_goodbye() -> None:
    """What DTLSServer does with such a peer: the reading first, then the connection ends."""
    result, client_flight = resumed_client_finished_first()
    reading = seal_one(result.client, b"reading 42")
    result.client.close()
    (goodbye,) = result.client.take_datagrams()
    carry([reading, goodbye], result.server)
    assert result.server.receive_datagram(client_flight, NOW) == [
        HandshakeComplete(GCM, "DTLSv1.2", resumed=True)
    ]

    harness = connection_harness(result.server)
    await harness.connection._take_early_events()
    # Our close_notify answers the peer's, once.
    assert [(r.content_type, r.epoch) for d in harness.transmitted for r in parse_records(d)] == [
        (ContentType.alert, 1)
    ]
    with trio.fail_after(5):
        assert await harness.connection.receive() == b"reading 42"
        with pytest.raises(ConnectionClosed, match=r"^the peer sent close_notify$"):
            await harness.connection.receive()
    stats = harness.server.statistics()
    assert (stats.messages_received, stats.remote_closed) == (1, 1)
    assert result.server.state is SessionState.CLOSED
