"""The server and client over real UDP sockets on loopback (127.0.0.1 and ::1).

Every test runs a real :class:`DTLSServer` on port 0 and talks to it with :class:`DTLSClient`
or with hand-made datagrams (see ``support.py``).  Nothing sleeps: tests wait for the server's
events, for replies, or for every task to be blocked (:func:`support.settle`).
"""

from __future__ import annotations

import errno
import math
import os
import random
from collections.abc import Callable

import pytest
import support
import trio
import trio.testing
from OpenSSL import SSL
from support import IDENTITY, KEY, LOOPBACK_HOSTS, RawSocket, RecordingTransport, serving

from trio_dtls_server import (
    DEFAULT_CIPHERS,
    ConnectionClosed,
    DatagramReceived,
    DTLSClient,
    DTLSConnection,
    DTLSServer,
    ErrorEvent,
    HandshakeError,
    MappingStore,
    RetransmitPolicy,
    ServerBindError,
    ServerConfig,
    WarningEvent,
)
from trio_dtls_server._wire import (
    ContentType,
    HandshakeType,
    parse_first_record,
    parse_handshake_fragment,
    parse_hello_verify_request,
    parse_initial_client_hello,
    parse_records,
)

Address = tuple[str, int]


def ack(host: str, port: int) -> bytes:
    """Qt's reply: ``to (127.0.0.1:PORT): ACK``; IPv6 has no brackets: ``to (::1:PORT): ACK``."""
    return f"to ({host}:{port}): ACK".encode()


def ping(number: int, identity: str = IDENTITY) -> bytes:
    """Qt's client message."""
    return f"I am {identity}, please, accept our ping {number}".encode()


async def connect(
    address: Address,
    *,
    identity: str = IDENTITY,
    key: bytes = KEY,
    local_port: int = 0,
    handshake_timeout: float = 30.0,
    tls_session: SSL.Session | None = None,
) -> DTLSClient:
    """A client with the test identity and key, connected to ``address``."""
    return await DTLSClient.connect(
        address[0],
        address[1],
        identity=identity,
        key=key,
        local_port=local_port,
        handshake_timeout=handshake_timeout,
        tls_session=tls_session,
    )


async def recorded_client(
    running: support.RunningServer,
) -> tuple[DTLSClient, RecordingTransport]:
    """A client with the test identity and key, connected to ``running`` over a
    :class:`RecordingTransport` on the server's host (which keeps every datagram it carries)."""
    transport = await RecordingTransport.bind(running.host)
    client = await DTLSClient.connect_over(transport, running.address, identity=IDENTITY, key=KEY)
    return client, transport


async def crashed_client(running: support.RunningServer, host: str) -> tuple[DTLSClient, int]:
    """A client that handshakes, makes one round trip, then "crashes": its socket closes
    without a close_notify.  Returns it (its ``tls_session`` still there) and its port."""
    client, transport = await recorded_client(running)
    port = client.local_address[1]
    await assert_round_trip(client, host)
    transport.close()
    return client, port


async def assert_round_trip(client: DTLSClient, host: str, number: int = 0) -> None:
    """One ping, one exact ACK back."""
    await client.send(ping(number))
    with trio.fail_after(support.WAIT_LIMIT):
        assert await client.receive() == ack(host, client.local_address[1])


# -- the main job -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_handshake_then_100_messages_each_get_qts_ack(host: str) -> None:
    server = DTLSServer(psk=KEY)
    async with serving(server, host) as running:
        client = await connect(running.address)
        port = client.local_address[1]
        assert client.protocol == "DTLSv1.2"
        assert client.cipher in DEFAULT_CIPHERS.split(":")
        for number in range(100):
            await client.send(ping(number))
            with trio.fail_after(support.WAIT_LIMIT):
                assert await client.receive() == ack(host, port)
        await support.settle()

        stats = server.statistics()
        assert stats.handshakes_started == 1
        assert stats.handshakes_completed == 1
        assert stats.handshakes_failed == {}
        assert stats.messages_received == 100
        assert stats.messages_sent == 100
        assert stats.cookies_sent == 1
        assert stats.cookies_verified == 1
        assert stats.drops == {}
        assert server.peer_count == 1
        received = running.events.of_type(DatagramReceived)
        assert [event.plaintext for event in received] == [ping(n) for n in range(100)]
        assert {event.peer for event in received} == {(host, port)}
        (complete,) = running.events.with_code("handshake_complete")
        assert complete.message == (
            f"Connection with ({host}:{port}) encrypted. Session cipher: {client.cipher}; "
            "session protocol: DTLS 1.2."
        )
        await client.aclose()


# -- handshakes that fail ---------------------------------------------------------------------


async def refused_over_recording(
    running: support.RunningServer, identity: str, key: bytes
) -> tuple[HandshakeError, float, RecordingTransport]:
    """A handshake as ``identity`` with ``key`` that must fail, from a :class:`RecordingTransport`
    on the server's host; returns the error, how long it took and the transport.

    The client's deadline is far away (120 s): only the server's fatal alert can end this
    quickly.
    """
    transport = await RecordingTransport.bind(running.host)
    started = trio.current_time()
    with pytest.raises(HandshakeError) as failure:
        await DTLSClient.connect_over(
            transport, running.address, identity=identity, key=key, handshake_timeout=120.0
        )
    return failure.value, trio.current_time() - started, transport


def assert_last_datagram_is_plaintext_alert(
    transport: RecordingTransport, server: Address, fragment: bytes
) -> None:
    """The last datagram ``transport`` received came from ``server`` and holds one record: an
    epoch-0 alert whose body (level, description) is ``fragment``."""
    last_datagram, source = transport.received_from[-1]
    assert source == server
    (alert,) = parse_records(last_datagram)
    assert (alert.content_type, alert.epoch, alert.fragment) == (ContentType.alert, 0, fragment)


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_unknown_identity_fails_fast_on_both_sides(host: str) -> None:
    server = DTLSServer(psk=MappingStore({IDENTITY: KEY}))
    async with serving(server, host) as running:
        failure, elapsed, transport = await refused_over_recording(running, "Mallory", KEY)
        # The alert ended it, not the client's timer (which says "not finished within").
        assert str(failure).startswith(
            "Mallory: handshake error - tlsv1 alert unknown psk identity"
        )
        # Generous: the first retransmission alone would take 1 s; the deadline is 120 s.
        assert elapsed < 10.0
        # What ended it: the server's last datagram is OpenSSL's fatal unknown_psk_identity alert.
        assert_last_datagram_is_plaintext_alert(transport, running.address, b"\x02\x73")
        failed = await running.events.wait_for("handshake_failed")
        await support.settle()

        assert isinstance(failed, ErrorEvent)
        assert "handshake failed: unknown PSK identity 'Mallory'" in failed.message
        (unknown,) = running.events.with_code("unknown_identity")
        assert isinstance(unknown, ErrorEvent)
        assert unknown.message.endswith(": unknown PSK identity 'Mallory'")
        stats = server.statistics()
        assert stats.handshakes_failed == {"unknown identity": 1}
        assert stats.handshakes_started == 1
        assert stats.handshakes_completed == 0
        assert stats.handshaking == 0
        assert server.peer_count == 0
        # And the server still serves the identity it knows.
        async with await connect(running.address) as client:
            await assert_round_trip(client, host)


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_wrong_key_fails_fast_on_both_sides(host: str) -> None:
    """OpenSSL drops the undecryptable Finished; the session answers with bad_record_mac."""
    server = DTLSServer(psk=MappingStore({IDENTITY: KEY}))
    async with serving(server, host) as running:
        failure, elapsed, transport = await refused_over_recording(
            running, IDENTITY, b"not the key"
        )
        assert str(failure).startswith(f"{IDENTITY}: handshake error - tls alert bad record mac")
        assert elapsed < 10.0  # generous; without the alert it would take the full 120 s
        assert_last_datagram_is_plaintext_alert(transport, running.address, b"\x02\x14")
        failed = await running.events.wait_for("handshake_failed")
        await support.settle()

        assert isinstance(failed, ErrorEvent)
        assert (
            "handshake failed: the peer's Finished failed authentication: "
            "the two sides derived different keys (a wrong PSK?)"
        ) in failed.message
        (identity,) = running.events.with_code("psk_identity")
        assert identity.message == f"PSK callback, received a client's identity: '{IDENTITY}'"
        stats = server.statistics()
        assert stats.handshakes_failed == {"wrong key": 1}
        assert stats.handshakes_completed == 0
        assert stats.handshaking == 0
        assert server.peer_count == 0
        async with await connect(running.address) as client:
            await assert_round_trip(client, host)


async def _go_silent_after_the_cookie(address: Address, sock: RawSocket) -> int:
    """Send a real cookie'd ClientHello from ``sock``, then never answer; return the port."""
    hand = support.MemoryBioClient()
    sock.send(hand.start(), address)
    verify_request, _ = await sock.receive()
    (second_hello,) = hand.feed(verify_request)
    sock.send(second_hello, address)
    return sock.address[1]


async def test_a_client_that_goes_silent_is_released_at_the_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Retransmissions (1 + 2 + 4 + 8 s ...) would outlast the 10 s deadline.
    server = DTLSServer(psk=KEY, config=ServerConfig(handshake_timeout=10.0))
    async with serving(server) as running:
        with RawSocket.bind() as sock:
            started = trio.current_time()
            port = await _go_silent_after_the_cookie(running.address, sock)
            await running.events.wait_for("verified")
            assert server.peer_count == 1
            failed = await running.events.wait_for("handshake_failed")
            assert 10.0 <= trio.current_time() - started < 11.0
            await support.settle()

            assert failed.message == (
                f"(127.0.0.1:{port}): handshake failed: handshake not finished within 10 s"
            )
            assert server.statistics().handshakes_failed == {"deadline": 1}
            assert server.peer_count == 0
            # The server did retransmit its flight meanwhile: at 1, 3 and 7 s.
            assert len(running.events.with_code("retransmit")) == 3


async def test_a_client_that_goes_silent_is_released_after_the_last_retransmission(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = RetransmitPolicy(initial=1.0, maximum=60.0, max_retransmissions=2)
    server = DTLSServer(psk=KEY, config=ServerConfig(retransmit=policy))
    async with serving(server) as running:
        with RawSocket.bind() as sock:
            started = trio.current_time()
            port = await _go_silent_after_the_cookie(running.address, sock)
            failed = await running.events.wait_for("handshake_failed")
            # Flight at 0 s, retransmissions at 1 s and 3 s, given up at 7 s.
            assert 7.0 <= trio.current_time() - started < 8.0
            await support.settle()

            assert failed.message == (
                f"(127.0.0.1:{port}): handshake failed: "
                "no answer from the peer after 2 retransmissions"
            )
            assert server.statistics().handshakes_failed == {"no answer": 1}
            assert server.peer_count == 0
            # After the HelloVerifyRequest, the silent client got the flight three times.
            flights = []
            while (received := sock.receive_nowait()) is not None:
                flights.append(received[0])
            assert len(flights) == 3
            assert flights[0] == flights[1] == flights[2]


# -- associations: duplicates, restarts, closes, shutdown -------------------------------------


async def test_a_retransmitted_client_hello_makes_exactly_one_association() -> None:
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        with RawSocket.bind() as sock:
            hand = support.MemoryBioClient()
            sock.send(hand.start(), running.address)
            verify_request, _ = await sock.receive()
            (second_hello,) = hand.feed(verify_request)
            # The same datagram twice, as a client whose first copy was slow would send it.
            sock.send(second_hello, running.address)
            sock.send(second_hello, running.address)
            await running.events.wait_for("verified")
            await support.settle()

            stats = server.statistics()
            assert stats.handshakes_started == 1
            assert stats.cookies_verified == 1
            assert server.peer_count == 1
            assert running.events.codes().count("verified") == 1

            # The one association finishes the handshake with the same client.
            with trio.fail_after(support.WAIT_LIMIT):
                while not hand.established:
                    datagram, _ = await sock.receive()
                    for answer in hand.feed(datagram):
                        sock.send(answer, running.address)
            await running.events.wait_for("handshake_complete")
            sock.send(hand.encrypt(b"ping"), running.address)
            while not hand.plaintexts:
                datagram, _ = await sock.receive()
                hand.feed(datagram)
            assert hand.plaintexts == [ack(*sock.address)]
            assert server.statistics().handshakes_completed == 1


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_client_restart_from_the_same_port_replaces_the_old_association(host: str) -> None:
    server = DTLSServer(psk=KEY)
    async with serving(server, host) as running:
        # The first client "crashes": its socket closes without a close_notify.
        _, port = await crashed_client(running, host)

        # It restarts on the same port and handshakes again.
        async with await connect(running.address, local_port=port) as second:
            assert second.local_address[1] == port
            await assert_round_trip(second, host, 1)
            ended = await running.events.wait_for("peer_ended")
            await support.settle()

            assert ended.message == (
                f"({host}:{port}): replaced by a new handshake from the same address"
            )
            stats = server.statistics()
            assert stats.replacements == 1
            assert stats.handshakes_started == 2
            assert stats.handshakes_completed == 2
            assert server.peer_count == 1
            # Replacement sends no close_notify: the restarted client has no keys for it.
            assert not second.closed


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_a_client_that_restarts_and_resumes_on_the_same_port_is_answered_at_once(
    host: str,
) -> None:
    """A device that reboots keeps its port and its session: its first datagram must count.

    In a resumed handshake the client finishes first, so its first datagram follows its
    Finished at once, while the server still holds the old association aside.
    """
    server = DTLSServer(psk=KEY)
    async with serving(server, host) as running:
        first, port = await crashed_client(running, host)
        async with await connect(
            running.address, local_port=port, tls_session=first.tls_session
        ) as second:
            assert second.resumed
            with trio.fail_after(5):
                await assert_round_trip(second, host, 1)
            await support.settle()
            stats = server.statistics()
            assert (stats.replacements, stats.handshakes_resumed, server.peer_count) == (1, 1, 1)
            assert stats.messages_received == 2


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_close_notify_from_the_client_removes_the_peer(host: str) -> None:
    server = DTLSServer(psk=KEY)
    async with serving(server, host) as running:
        client = await connect(running.address)
        port = client.local_address[1]
        await assert_round_trip(client, host)
        assert server.peer_count == 1
        await client.aclose()
        closed = await running.events.wait_for("remote_closed")
        await support.settle()

        assert closed.message == f"({host}:{port}): The DTLS connection has been shutdown"
        assert server.peer_count == 0
        assert server.statistics().remote_closed == 1
        assert server.statistics().peers == 0


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_cancelling_the_servers_nursery_sends_close_notify(host: str) -> None:
    server = DTLSServer(psk=KEY)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, host, 0)
        clients = [await connect(address) for _ in range(3)]
        for client in clients:
            await assert_round_trip(client, host)
        nursery.cancel_scope.cancel()
    assert not server.is_listening()
    for client in clients:
        with trio.fail_after(support.WAIT_LIMIT), pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.reason == "the server sent close_notify"
        await client.aclose()


async def test_aclose_sends_close_notify_and_the_same_server_serves_again() -> None:
    server = DTLSServer(psk=KEY)
    async with trio.open_nursery() as nursery:
        recorder = await support.EventRecorder.start(nursery, server)
        first_address = await nursery.start(server.serve, "127.0.0.1", 0)
        client = await connect(first_address)
        await assert_round_trip(client, "127.0.0.1")

        await server.aclose()
        assert not server.is_listening()
        assert server.local_address is None
        assert server.peer_count == 0
        with trio.fail_after(support.WAIT_LIMIT), pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.reason == "the server sent close_notify"
        await client.aclose()

        # Serve again with the same object: a fresh socket, the counters carry on.
        second_address = await nursery.start(server.serve, "127.0.0.1", 0)
        assert server.is_listening()
        async with await connect(second_address) as again:
            await assert_round_trip(again, "127.0.0.1")
        assert server.statistics().handshakes_completed == 2
        assert recorder.codes().count("listening") == 2
        assert recorder.codes().count("stopped") == 1
        nursery.cancel_scope.cancel()


async def test_an_empty_datagram_from_the_servers_address_does_not_break_the_client() -> None:
    """Regression: an empty datagram made the client's session raise WantReadError.

    A relay sits between client and server and sends an empty datagram to the client before
    every real one, during the handshake and after it.
    """
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        with RawSocket.bind() as relay:
            client_address: list[Address] = []

            async def forward() -> None:
                while True:
                    datagram, sender = await relay.receive(timeout=math.inf)
                    if sender == running.address:
                        relay.send(b"", client_address[0])
                        relay.send(datagram, client_address[0])
                    else:
                        client_address[:] = [sender]
                        relay.send(datagram, running.address)

            async with trio.open_nursery() as relay_nursery:
                relay_nursery.start_soon(forward)
                async with await connect(relay.address) as client:
                    for number in range(3):
                        await client.send(ping(number))
                        with trio.fail_after(support.WAIT_LIMIT):
                            # The server sees the relay, so the ACK names the relay's port.
                            assert await client.receive() == ack(*relay.address)
                relay_nursery.cancel_scope.cancel()


# -- bad input --------------------------------------------------------------------------------


def _first_hello() -> bytes:
    return support.MemoryBioClient().start()


def _truncated_client_hello() -> list[bytes]:
    # Still looks like a ClientHello (type, epoch, message type) but the record is cut short.
    return [_first_hello()[:40]]


def _client_hello_with_a_bad_vector_length() -> list[bytes]:
    # The record framing is intact; the session_id length inside the hello runs past the end.
    hello = bytearray(_first_hello())
    hello[13 + 12 + 2 + 32] = 0xFF
    return [bytes(hello)]


def _random_bytes() -> list[bytes]:
    noise = random.Random(2024).randbytes(200)
    assert noise[0] != ContentType.handshake  # so it is "not a ClientHello", whatever else it is
    return [noise]


def _alert_record() -> list[bytes]:
    # A well-formed plaintext alert (fatal, handshake_failure) from an address we do not know.
    return [bytes([ContentType.alert, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 2, 40])]


def _application_record() -> list[bytes]:
    return [support.garbage_record()]


BAD_INPUTS: dict[str, tuple[Callable[[], list[bytes]], str, str]] = {
    # name: (datagrams, drop reason, warning code)
    "empty datagram": (lambda: [b""], "empty datagram", "empty_datagram"),
    "random bytes": (
        _random_bytes,
        "not a ClientHello from an unknown peer",
        "unexpected_datagram",
    ),
    "truncated ClientHello": (
        _truncated_client_hello,
        "malformed ClientHello",
        "malformed_client_hello",
    ),
    "ClientHello with a bad length inside": (
        _client_hello_with_a_bad_vector_length,
        "malformed ClientHello",
        "malformed_client_hello",
    ),
    "truncated record header": (
        lambda: [bytes([23, 0xFE, 0xFD, 0, 1])],
        "not a ClientHello from an unknown peer",
        "unexpected_datagram",
    ),
    "alert record from an unknown peer": (
        _alert_record,
        "not a ClientHello from an unknown peer",
        "unexpected_datagram",
    ),
    "application record from an unknown peer": (
        _application_record,
        "not a ClientHello from an unknown peer",
        "unexpected_datagram",
    ),
    "oversized datagram": (
        lambda: [b"\x17" * (ServerConfig().max_datagram_size + 1)],
        "oversized datagram",
        "oversized_datagram",
    ),
    "fragmented ClientHello": (
        lambda: support.fragment_client_hello(_first_hello(), 40),
        "fragmented ClientHello",
        "fragmented_client_hello",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
async def test_bad_input_is_dropped_counted_reported_and_harmless(name: str) -> None:
    make_datagrams, reason, code = BAD_INPUTS[name]
    datagrams = make_datagrams()
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        # A client that is already connected must not notice anything.
        async with await connect(running.address) as client:
            with RawSocket.bind() as sock:
                for datagram in datagrams:
                    sock.send(datagram, running.address)
                warning = await running.events.wait_for(code)
                await support.settle()

                assert isinstance(warning, WarningEvent)
                assert warning.peer == sock.address
                assert warning.message.startswith(f"({sock.address[0]}:{sock.address[1]}): ")
                stats = server.statistics()
                assert stats.drops == {reason: len(datagrams)}
                assert stats.cookies_sent == 1  # the good client's, none for the bad input
                assert stats.handshakes_started == 1
                assert server.peer_count == 1
                assert sock.receive_nowait() is None  # no answer to bad input
            await assert_round_trip(client, "127.0.0.1")
        async with await connect(running.address) as newcomer:
            await assert_round_trip(newcomer, "127.0.0.1")
        assert server.statistics().handshakes_completed == 2


async def test_a_smaller_max_datagram_size_drops_what_exceeds_it() -> None:
    server = DTLSServer(psk=KEY, config=ServerConfig(max_datagram_size=1024))
    async with serving(server) as running:
        with RawSocket.bind() as sock:
            sock.send(b"\x16" * 1025, running.address)
            sock.send(b"\x16" * 1024, running.address)  # at the limit: read, then not a hello
            warning = await running.events.wait_for("oversized_datagram")
            await running.events.wait_for("unexpected_datagram")
            await support.settle()
        assert warning.message.endswith(": datagram larger than 1024 bytes")
        assert server.statistics().drops == {
            "oversized datagram": 1,
            "not a ClientHello from an unknown peer": 1,
        }
        async with await connect(running.address) as client:
            await assert_round_trip(client, "127.0.0.1")


async def test_application_records_that_do_not_decrypt_are_dropped_and_counted() -> None:
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        # Keep the client's transport, to send forged records from the established peer's port.
        client, transport = await recorded_client(running)
        await assert_round_trip(client, "127.0.0.1")
        for index in range(3):
            forged = support.garbage_record(epoch=1, sequence=5_000 + index, seed=index)
            assert transport.send_nowait(forged, running.address)
        await running.events.wait_for("authentication_failed", count=3)
        await support.settle()

        warnings = running.events.with_code("authentication_failed")
        port = client.local_address[1]
        assert {w.message for w in warnings} == {
            f"(127.0.0.1:{port}): record failed authentication, dropped"
        }
        assert all(isinstance(w, WarningEvent) for w in warnings)
        stats = server.statistics()
        assert stats.drops == {"record failed authentication": 3}
        assert stats.messages_received == 1
        assert server.peer_count == 1
        # The association survives forgeries: the real client carries on.
        await assert_round_trip(client, "127.0.0.1", 1)
        await client.aclose()


async def test_1000_client_hellos_without_cookie_leave_no_state() -> None:
    """Each gets a HelloVerifyRequest no longer than itself; nothing is allocated."""
    server = DTLSServer(psk=KEY)
    hello = _first_hello()
    async with serving(server) as running:
        sockets = [RawSocket.bind() for _ in range(5)]
        try:
            replies: list[bytes] = []
            rng = random.Random(7)
            with trio.fail_after(60):
                for _ in range(20):  # 20 rounds x 5 sockets x 10 hellos = 1,000
                    for sock in sockets:
                        for _ in range(10):
                            sock.send(
                                support.with_client_random(hello, rng.randbytes(32)),
                                running.address,
                            )
                    for sock in sockets:
                        for _ in range(10):
                            reply, sender = await sock.receive()
                            assert sender == running.address
                            replies.append(reply)
            await support.settle()
            assert all(sock.receive_nowait() is None for sock in sockets)
        finally:
            for sock in sockets:
                sock.close()

        assert len(replies) == 1000
        for reply in replies:
            assert len(reply) <= len(hello)
            assert len(parse_hello_verify_request(reply)) == 16
            record = parse_first_record(reply)
            assert parse_handshake_fragment(record.fragment).msg_type == (
                HandshakeType.hello_verify_request
            )
        stats = server.statistics()
        assert stats.cookies_sent == 1000
        assert stats.handshakes_started == 0
        assert stats.peak_peers == 0
        assert server.peer_count == 0
        assert stats.drops == {}
        assert stats.datagrams_in == stats.datagrams_out == 1000


# -- what the server reports ------------------------------------------------------------------


async def test_datagram_events_carry_the_exact_ciphertext_and_plaintext() -> None:
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        client, transport = await recorded_client(running)
        port = client.local_address[1]
        messages = [ping(0), b"\x00binary\xffbytes", b"x" * 16_384]
        for number, message in enumerate(messages, start=1):
            await client.send(message)
            sent, destination = transport.sent_to[-1]
            assert destination == running.address
            event = await running.events.wait_for("datagram", count=number)
            assert isinstance(event, DatagramReceived)
            assert event.ciphertext == sent
            assert event.plaintext == message
            assert event.peer == ("127.0.0.1", port)
            assert event.message == f"A message from (127.0.0.1:{port})"
            assert event.severity == "message"
            with trio.fail_after(support.WAIT_LIMIT):
                assert await client.receive() == ack("127.0.0.1", port)
        await client.aclose()


async def test_port_zero_listening_state_and_local_address() -> None:
    server = DTLSServer(psk=KEY)
    assert not server.is_listening()
    assert server.local_address is None
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1", 0)
        host, port = address
        assert host == "127.0.0.1"
        assert port != 0
        assert server.local_address == address
        assert server.is_listening()
        # The port is really ours: nobody else can bind it now.
        with pytest.raises(OSError) as taken:
            RawSocket.bind("127.0.0.1", port)
        assert taken.value.errno == errno.EADDRINUSE
        nursery.cancel_scope.cancel()
    assert not server.is_listening()
    assert server.local_address is None


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_bind_failure_names_the_address_and_the_os_reason(host: str) -> None:
    server = DTLSServer(psk=KEY)
    with RawSocket.bind(host) as holder:
        port = holder.address[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(ServerBindError) as failure:
                await nursery.start(server.serve, host, port)
    error = failure.value
    assert isinstance(error, OSError)
    assert error.errno == errno.EADDRINUSE
    assert error.strerror == f"cannot bind UDP {host}:{port}: {os.strerror(errno.EADDRINUSE)}"
    assert f"{host}:{port}" in str(error)
    assert not server.is_listening()
    # The failed attempt left the server usable.
    async with serving(server, host) as running, await connect(running.address) as client:
        await assert_round_trip(client, host)


async def test_a_subscriber_that_never_reads_loses_events_not_service() -> None:
    server = DTLSServer(psk=KEY)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1", 0)
        async with server.events(max_buffer=4) as stuck:
            # A second subscriber that reads everything tells us how many events there were.
            recorder = await support.EventRecorder.start(nursery, server)
            async with await connect(address) as client:
                for number in range(20):
                    await assert_round_trip(client, "127.0.0.1", number)
            await support.settle()
            seen = len(recorder.events)
            assert seen > 20
            assert server.statistics().events_dropped == seen - 4
            # The stuck subscriber holds the first four events, the oldest ones.
            held = [stuck.receive_nowait() for _ in range(4)]
            assert held == recorder.events[:4]
        nursery.cancel_scope.cancel()


async def test_event_buffer_from_the_config_bounds_subscribers() -> None:
    server = DTLSServer(psk=KEY, config=ServerConfig(event_buffer=2))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1", 0)
        async with server.events() as stuck:
            async with await connect(address) as client:
                await assert_round_trip(client, "127.0.0.1")
            await support.settle()
            assert server.statistics().events_dropped > 0
            assert stuck.statistics().current_buffer_used == 2
        nursery.cancel_scope.cancel()


# -- the application's handler ----------------------------------------------------------------


async def test_a_custom_handler_gets_a_connection_it_can_use_and_close() -> None:
    seen: dict[str, object] = {}

    async def shouting_handler(connection: DTLSConnection) -> None:
        seen.update(
            peer=connection.peer,
            peer_info=connection.peer_info,
            psk_identity=connection.psk_identity,
            cipher=connection.cipher,
            protocol=connection.protocol,
        )
        first = await connection.receive()
        await connection.send(b"first: " + first.upper())
        async for data in connection:
            if data == b"bye":
                await connection.aclose()
                break
            await connection.send(data[::-1])
        seen["closed"] = connection.closed
        with pytest.raises(ConnectionClosed) as after_close:
            await connection.send(b"too late")
        seen["reason"] = after_close.value.reason

    server = DTLSServer(psk=MappingStore({"device-7": KEY}), handler=shouting_handler)
    async with serving(server) as running:
        client = await connect(running.address, identity="device-7")
        port = client.local_address[1]
        with trio.fail_after(support.WAIT_LIMIT):
            await client.send(b"hello")
            assert await client.receive() == b"first: HELLO"
            await client.send(b"abc")
            assert await client.receive() == b"cba"
            await client.send(b"bye")
            with pytest.raises(ConnectionClosed) as closed:
                await client.receive()
        assert closed.value.reason == "the server sent close_notify"
        await support.settle()

        assert seen == {
            "peer": ("127.0.0.1", port),
            "peer_info": f"(127.0.0.1:{port})",
            "psk_identity": b"device-7",
            "cipher": client.cipher,
            "protocol": "DTLSv1.2",
            "closed": True,
            "reason": "closed by the server",
        }
        assert server.peer_count == 0
        assert server.statistics().messages_received == 3
        assert server.statistics().messages_sent == 2
        await client.aclose()


# -- cookies and MTU --------------------------------------------------------------------------


def _other_loopback_address_works() -> bool:
    try:
        RawSocket.bind("127.0.0.2").close()
    except OSError:
        return False
    return True


async def test_a_cookie_moved_to_another_port_address_or_hello_is_refused() -> None:
    """A cookie earned by 127.0.0.1:A opens the door for that port and that hello only."""
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        with RawSocket.bind() as port_a, RawSocket.bind() as port_b:
            hand = support.MemoryBioClient()
            port_a.send(hand.start(), running.address)
            verify_request, _ = await port_a.receive()
            cookie_a = parse_hello_verify_request(verify_request)
            (second_hello,) = hand.feed(verify_request)
            assert parse_initial_client_hello(second_hello).hello.cookie == cookie_a

            # The same second hello from another port: a new HelloVerifyRequest, for B.
            port_b.send(second_hello, running.address)
            reply_b, _ = await port_b.receive()
            assert parse_hello_verify_request(reply_b) != cookie_a
            rejected = await running.events.wait_for("cookie_rejected")
            assert rejected.peer == port_b.address
            expected_rejections = 1

            # The same port number on another loopback address (Linux answers all of 127/8).
            if _other_loopback_address_works():
                with RawSocket.bind("127.0.0.2", port_a.address[1]) as other_address:
                    other_address.send(second_hello, running.address)
                    reply_c, _ = await other_address.receive()
                assert parse_hello_verify_request(reply_c) != cookie_a
                expected_rejections += 1

            # The cookie copied onto another ClientHello (another random), from port A itself.
            other_hello = support.with_client_random(second_hello, bytes(range(32)))
            assert parse_initial_client_hello(other_hello).hello.cookie == cookie_a
            port_a.send(other_hello, running.address)
            reply_a, _ = await port_a.receive()
            assert parse_hello_verify_request(reply_a) != cookie_a
            expected_rejections += 1
            await support.settle()

        stats = server.statistics()
        assert stats.cookies_rejected == expected_rejections
        assert len(running.events.with_code("cookie_rejected")) == expected_rejections
        assert stats.cookies_verified == 0
        assert stats.cookies_sent == 1 + expected_rejections
        assert stats.handshakes_started == 0
        assert server.peer_count == 0


@pytest.mark.parametrize("mtu", [576, 256])
async def test_no_server_datagram_exceeds_the_configured_mtu(mtu: int) -> None:
    # A long identity hint makes the ServerKeyExchange big enough to need fragmenting at 256.
    hint = "Qt DTLS example server " * 10
    server = DTLSServer(psk=KEY, config=ServerConfig(mtu=mtu, identity_hint=hint))
    async with serving(server) as running:
        client, transport = await recorded_client(running)
        for number in range(3):
            await assert_round_trip(client, "127.0.0.1", number)
        await client.aclose()
    from_server = [d for d, source in transport.received_from if source == running.address]
    sizes = [len(d) for d in from_server]
    assert max(sizes) <= mtu, sizes
    handshake_fragments = [
        parse_handshake_fragment(record.fragment)
        for datagram in from_server
        for record in parse_records(datagram)
        if record.content_type == ContentType.handshake and record.epoch == 0
    ]
    # At 256 bytes the ServerKeyExchange (hint included) only fits cut into fragments; at 576
    # it fits whole.  Either way every piece arrived within the MTU and the handshake worked.
    fragmented = any(not fragment.is_complete for fragment in handshake_fragments)
    assert fragmented is (mtu == 256)
