"""Every timer of the server and the client, at exact times, on Trio's autojump clock.

All tests run over :mod:`fakenet` (a perfect in-memory network) under pytest-trio's
``autojump_clock``: whenever every task is blocked the clock jumps to the next deadline, so a
schedule that spans minutes takes milliseconds and every time is exact.  The network log tells
when each datagram left; the server's event stream tells when it gave up.

The timers:

* handshake retransmission (``RetransmitPolicy``): a flight goes out at t0, then again after
  ``initial``, doubling, capped at ``maximum``; after ``max_retransmissions`` unanswered
  retransmissions the handshake fails ("no answer");
* the server's overall handshake deadline (``ServerConfig.handshake_timeout``);
* the client's ``handshake_timeout``;
* the idle timeout of an established peer (``ServerConfig.idle_timeout``).

A "silent client" is a real DTLS client session (the library's sans-I/O
:class:`~trio_dtls_server._session.DTLSSession`) driven by hand: it sends its ClientHello,
answers the HelloVerifyRequest with the cookie'd ClientHello, and then never reads again.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing
from fakenet import Address, FakeEndpoint, FakeNetwork, SentDatagram

from trio_dtls_server import (
    DEFAULT_CIPHERS,
    ConnectionClosed,
    DTLSClient,
    DTLSServer,
    HandshakeError,
    RetransmitPolicy,
    ServerConfig,
    ServerEvent,
)
from trio_dtls_server._client import _client_context
from trio_dtls_server._session import DTLSSession
from trio_dtls_server._wire import (
    ContentType,
    HandshakeType,
    parse_initial_client_hello,
    parse_records,
)

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
IDENTITY = "alice"
SERVER_ADDRESS: Address = ("127.0.0.1", 4433)
# fakenet hands out ports from 40000 upwards: the first client endpoint of a test gets this.
CLIENT_ADDRESS: Address = ("127.0.0.1", 40000)
CLIENT_INFO = "(127.0.0.1:40000)"


def ignore_event(event: ServerEvent) -> None:
    """An ``on_event`` for clients whose events a test does not look at."""


class EventLog:
    """Every server event with the (mock) time it was emitted; waits for a code to appear.

    The recording task runs at the same mock time as the emitter: the autojump clock only
    moves when every task is blocked, and this task is runnable as soon as an event is queued.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[float, ServerEvent]] = []
        self._changed = trio.Event()

    async def record(
        self, server: DTLSServer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with server.events() as stream:
            task_status.started()
            async for event in stream:
                self.entries.append((trio.current_time(), event))
                self._changed.set()
                self._changed = trio.Event()

    def with_code(self, code: str) -> list[tuple[float, ServerEvent]]:
        return [(time, event) for time, event in self.entries if event.code == code]

    async def wait_for(self, code: str) -> tuple[float, ServerEvent]:
        """The first event with ``code`` and its time, waiting for it if need be."""
        while True:
            found = self.with_code(code)
            if found:
                return found[0]
            await self._changed.wait()


async def start_server(
    nursery: trio.Nursery, network: FakeNetwork, config: ServerConfig
) -> tuple[DTLSServer, EventLog]:
    server = DTLSServer(psk={IDENTITY: KEY}, config=config)
    events = EventLog()
    await nursery.start(events.record, server)
    await nursery.start(server.serve_on, network.endpoint(SERVER_ADDRESS))
    return server, events


async def receive_one(endpoint: FakeEndpoint) -> bytes:
    while True:
        received = endpoint.receive_nowait(65536)
        if received is not None:
            return received[0]
        await endpoint.wait_readable()


async def send_verified_client_hello(endpoint: FakeEndpoint) -> float:
    """Play a real client up to its cookie'd ClientHello, then fall silent.

    Returns the time the cookie'd ClientHello was sent: on a perfect network the server
    verifies it and sends its first flight at that same instant (t0).
    """
    session = DTLSSession.client(
        _client_context(DEFAULT_CIPHERS),
        now=trio.current_time(),
        mtu=1400,
        policy=RetransmitPolicy(),
        identity=IDENTITY.encode(),
        key=KEY,
    )
    [first_hello] = session.take_datagrams()
    assert endpoint.send_nowait(first_hello, SERVER_ADDRESS)
    hello_verify_request = await receive_one(endpoint)
    session.receive_datagram(hello_verify_request, trio.current_time())
    [verified_hello] = session.take_datagrams()
    assert parse_initial_client_hello(verified_hello).hello.cookie != b""
    assert endpoint.send_nowait(verified_hello, SERVER_ADDRESS)
    return trio.current_time()


def flights(datagrams: Sequence[SentDatagram]) -> list[tuple[float, list[SentDatagram]]]:
    """Group datagrams that left at the same instant (one flight) in sending order."""
    grouped: list[tuple[float, list[SentDatagram]]] = []
    for datagram in datagrams:
        if grouped and grouped[-1][0] == datagram.sent_at:
            grouped[-1][1].append(datagram)
        else:
            grouped.append((datagram.sent_at, [datagram]))
    return grouped


def handshake_payload(datagrams: Sequence[SentDatagram]) -> list[tuple[int, int, bytes]]:
    """A flight's records without their sequence numbers: (content type, epoch, fragment).

    A retransmitted flight carries the same handshake messages in records with new sequence
    numbers when OpenSSL makes it, or byte for byte the same records when the session resends
    them itself; this compares what both must keep.
    """
    return [
        (record.content_type, record.epoch, record.fragment)
        for datagram in datagrams
        for record in parse_records(datagram.data)
    ]


def offsets(times: Sequence[float], origin: float) -> list[float]:
    return [round(time - origin, 9) for time in times]


# ---------------------------------------------------------------------------------------------
# The server's handshake timers
# ---------------------------------------------------------------------------------------------


async def test_server_retransmits_on_schedule_then_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """initial=1, maximum=4, five retransmissions: t0, +1, +3, +7, +11, +15; failure at +19."""
    network = FakeNetwork(seed=1)
    policy = RetransmitPolicy(initial=1.0, maximum=4.0, max_retransmissions=5)
    config = ServerConfig(retransmit=policy, handshake_timeout=1000.0)
    async with trio.open_nursery() as nursery:
        server, events = await start_server(nursery, network, config)
        client = network.endpoint()
        t0 = await send_verified_client_hello(client)

        failed_at, failure = await events.wait_for("handshake_failed")
        assert failure.message == (
            f"{CLIENT_INFO}: handshake failed: no answer from the peer after 5 retransmissions"
        )
        assert failure.severity == "error"
        assert failure.peer == CLIENT_ADDRESS
        assert failed_at - t0 == pytest.approx(19.0, abs=1e-9)
        # The give-up is not a retransmission: nothing more is sent, ever.
        await trio.sleep(1000)

        stats = server.statistics()
        assert stats.handshakes_started == 1
        assert stats.handshakes_failed == {"no answer": 1}
        assert stats.handshakes_completed == 0
        assert stats.handshaking == 0
        assert stats.peers == 0
        assert server.peer_count == 0

        retransmit_events = events.with_code("retransmit")
        assert offsets([time for time, _ in retransmit_events], t0) == [1, 3, 7, 11, 15]
        assert [event.message for _, event in retransmit_events] == [
            f"{CLIENT_INFO}: handshake timeout, re-transmitting the last flight (attempt {n})"
            for n in range(1, 6)
        ]
        nursery.cancel_scope.cancel()

    to_client = network.sent(source=SERVER_ADDRESS, destination=CLIENT_ADDRESS)
    hello_verify_request, *server_flights = to_client
    assert hello_verify_request.data[13] == HandshakeType.hello_verify_request
    grouped = flights(server_flights)
    assert offsets([time for time, _ in grouped], t0) == [0, 1, 3, 7, 11, 15]
    original = handshake_payload(grouped[0][1])
    assert original[0][0] == ContentType.handshake and original[0][1] == 0
    for _, flight in grouped[1:]:
        assert handshake_payload(flight) == original


async def test_server_retransmission_interval_is_capped_by_maximum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """initial=1 doubling to maximum=60: 1, 2, 4, 8, 16, 32, then 60, 60 (not 64, 128)."""
    network = FakeNetwork(seed=2)
    policy = RetransmitPolicy(initial=1.0, maximum=60.0, max_retransmissions=8)
    config = ServerConfig(retransmit=policy, handshake_timeout=10_000.0)
    async with trio.open_nursery() as nursery:
        server, events = await start_server(nursery, network, config)
        t0 = await send_verified_client_hello(network.endpoint())
        failed_at, failure = await events.wait_for("handshake_failed")
        assert failure.message.endswith("no answer from the peer after 8 retransmissions")
        assert server.statistics().handshakes_failed == {"no answer": 1}
        nursery.cancel_scope.cancel()

    server_flights = network.sent(source=SERVER_ADDRESS, destination=CLIENT_ADDRESS)[1:]
    sent_times = [time for time, _ in flights(server_flights)]
    assert offsets(sent_times, t0) == [0, 1, 3, 7, 15, 31, 63, 123, 183]
    assert failed_at - t0 == pytest.approx(243.0, abs=1e-9)


async def test_server_handshake_deadline_releases_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """handshake_timeout=10 with retransmissions to spare: released at exactly t0+10."""
    network = FakeNetwork(seed=3)
    policy = RetransmitPolicy(initial=1.0, maximum=60.0, max_retransmissions=50)
    config = ServerConfig(retransmit=policy, handshake_timeout=10.0)
    async with trio.open_nursery() as nursery:
        server, events = await start_server(nursery, network, config)
        t0 = await send_verified_client_hello(network.endpoint())
        verified_at, _ = await events.wait_for("verified")
        assert verified_at == t0
        assert server.peer_count == 1
        assert server.statistics().handshaking == 1

        failed_at, failure = await events.wait_for("handshake_failed")
        assert failed_at - t0 == pytest.approx(10.0, abs=1e-9)
        assert failure.message == (
            f"{CLIENT_INFO}: handshake failed: handshake not finished within 10 s"
        )
        assert failure.peer == CLIENT_ADDRESS
        assert server.peer_count == 0
        stats = server.statistics()
        assert stats.handshakes_failed == {"deadline": 1}
        assert stats.handshaking == 0
        assert stats.peers == 0
        await trio.sleep(100)  # nothing more goes out after the deadline
        nursery.cancel_scope.cancel()

    server_flights = network.sent(source=SERVER_ADDRESS, destination=CLIENT_ADDRESS)[1:]
    assert offsets([time for time, _ in flights(server_flights)], t0) == [0, 1, 3, 7]


async def test_peer_released_after_give_up_can_handshake_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a "no answer" failure the address is free: a real client from it then connects."""
    network = FakeNetwork(seed=4)
    policy = RetransmitPolicy(initial=1.0, maximum=2.0, max_retransmissions=2)
    async with trio.open_nursery() as nursery:
        server, events = await start_server(nursery, network, ServerConfig(retransmit=policy))
        silent = network.endpoint()
        t0 = await send_verified_client_hello(silent)
        failed_at, _ = await events.wait_for("handshake_failed")
        assert failed_at - t0 == pytest.approx(1 + 2 + 2, abs=1e-9)
        assert server.peer_count == 0
        silent.close()

        client = await DTLSClient.connect_over(
            network.endpoint(CLIENT_ADDRESS),
            SERVER_ADDRESS,
            identity=IDENTITY,
            key=KEY,
            on_event=ignore_event,
        )
        await client.send(b"hello again")
        assert await client.receive() == f"to {CLIENT_INFO}: ACK".encode()
        stats = server.statistics()
        assert stats.handshakes_started == 2
        assert stats.handshakes_completed == 1
        assert stats.handshakes_failed == {"no answer": 1}
        await client.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# The client's handshake timers
# ---------------------------------------------------------------------------------------------


def client_hellos(network: FakeNetwork) -> list[SentDatagram]:
    sent = network.sent(source=CLIENT_ADDRESS, destination=SERVER_ADDRESS)
    for datagram in sent:
        # Each is an unanswered first ClientHello: epoch 0, no cookie.
        [record] = parse_records(datagram.data)
        assert record.content_type == ContentType.handshake
        assert record.fragment[0] == HandshakeType.client_hello
        assert parse_initial_client_hello(datagram.data).hello.cookie == b""
    return sent


async def test_client_retransmits_on_schedule_then_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No server at all: ClientHello at t0, +1, +3, +7, +11, +15; HandshakeError at +19."""
    network = FakeNetwork(seed=5)
    seen: list[tuple[float, ServerEvent]] = []
    t0 = trio.current_time()
    with pytest.raises(HandshakeError) as raised:
        await DTLSClient.connect_over(
            network.endpoint(),
            SERVER_ADDRESS,
            identity=IDENTITY,
            key=KEY,
            retransmit=RetransmitPolicy(initial=1.0, maximum=4.0, max_retransmissions=5),
            handshake_timeout=1000.0,
            on_event=lambda event: seen.append((trio.current_time(), event)),
        )
    assert trio.current_time() - t0 == pytest.approx(19.0, abs=1e-9)
    assert (
        str(raised.value)
        == "alice: handshake error - no answer from the peer after 5 retransmissions"
    )

    hellos = client_hellos(network)
    assert offsets([datagram.sent_at for datagram in hellos], t0) == [0, 1, 3, 7, 11, 15]
    assert all(datagram.unroutable for datagram in hellos)
    randoms = {parse_initial_client_hello(datagram.data).hello.random for datagram in hellos}
    assert len(randoms) == 1  # a retransmission, not a new hello
    payloads = {tuple(handshake_payload([datagram])) for datagram in hellos}
    assert len(payloads) == 1

    retransmits = [time for time, event in seen if event.code == "retransmit"]
    assert offsets(retransmits, t0) == [1, 3, 7, 11, 15]
    assert [(event.code, event.severity) for _, event in seen][-1] == ("handshake_failed", "error")
    assert seen[-1][1].message == str(raised.value)


async def test_client_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """handshake_timeout=10 with the default policy: HandshakeError at exactly t0+10."""
    network = FakeNetwork(seed=6)
    # A server that is there but never answers (bound, never read).
    black_hole = network.endpoint(SERVER_ADDRESS)
    seen: list[ServerEvent] = []
    t0 = trio.current_time()
    with pytest.raises(HandshakeError) as raised:
        await DTLSClient.connect_over(
            network.endpoint(),
            SERVER_ADDRESS,
            identity=IDENTITY,
            key=KEY,
            handshake_timeout=10.0,
            on_event=seen.append,
        )
    assert trio.current_time() - t0 == pytest.approx(10.0, abs=1e-9)
    assert str(raised.value) == "alice: handshake not finished within 10 s"
    assert [(event.code, event.message) for event in seen][-1] == (
        "handshake_timeout",
        "alice: handshake not finished within 10 s",
    )
    hellos = client_hellos(network)
    assert offsets([datagram.sent_at for datagram in hellos], t0) == [0, 1, 3, 7]
    assert black_hole.queued == 4
    # The client closed its endpoint on failure: it no longer holds its address.
    assert network.endpoint(CLIENT_ADDRESS).local_address == CLIENT_ADDRESS


# ---------------------------------------------------------------------------------------------
# The idle timeout
# ---------------------------------------------------------------------------------------------


def alerts_to_client(network: FakeNetwork) -> list[SentDatagram]:
    """The server's datagrams to the client that hold an encrypted alert (close_notify)."""
    return [
        datagram
        for datagram in network.sent(source=SERVER_ADDRESS, destination=CLIENT_ADDRESS)
        if [(r.content_type, r.epoch) for r in parse_records(datagram.data)]
        == [(ContentType.alert, 1)]
    ]


async def test_idle_peer_gets_close_notify_at_last_activity_plus_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """idle_timeout=30: every authentic datagram restarts the clock; silence ends the peer."""
    network = FakeNetwork(seed=7)
    async with trio.open_nursery() as nursery:
        server, events = await start_server(nursery, network, ServerConfig(idle_timeout=30.0))
        client = await DTLSClient.connect_over(
            network.endpoint(), SERVER_ADDRESS, identity=IDENTITY, key=KEY, on_event=ignore_event
        )
        established_at = trio.current_time()
        # Two messages 20 s apart: each comes before the 30 s are up and restarts them.
        for _ in range(2):
            await trio.sleep(20)
            await client.send(b"still here")
            assert await client.receive() == f"to {CLIENT_INFO}: ACK".encode()
        last_activity = trio.current_time()
        assert last_activity - established_at == pytest.approx(40.0, abs=1e-9)
        assert server.peer_count == 1

        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.reason == "the server sent close_notify"
        assert trio.current_time() - last_activity == pytest.approx(30.0, abs=1e-9)

        idle_at, idle = await events.wait_for("idle_timeout")
        assert idle_at - last_activity == pytest.approx(30.0, abs=1e-9)
        assert idle.message == (
            f"{CLIENT_INFO}: no authentic datagram for 30 s, closing the connection"
        )
        stats = server.statistics()
        assert stats.idle_closed == 1
        assert stats.messages_received == 2
        assert stats.peers == 0
        assert server.peer_count == 0
        await client.aclose()
        nursery.cancel_scope.cancel()

    [close_notify] = alerts_to_client(network)
    assert close_notify.sent_at - last_activity == pytest.approx(30.0, abs=1e-9)


async def test_idle_timeout_counts_from_the_handshake_when_nothing_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(seed=8)
    async with trio.open_nursery() as nursery:
        server, _ = await start_server(nursery, network, ServerConfig(idle_timeout=45.0))
        client = await DTLSClient.connect_over(
            network.endpoint(), SERVER_ADDRESS, identity=IDENTITY, key=KEY, on_event=ignore_event
        )
        established_at = trio.current_time()
        with pytest.raises(ConnectionClosed):
            await client.receive()
        assert trio.current_time() - established_at == pytest.approx(45.0, abs=1e-9)
        assert server.statistics().idle_closed == 1
        assert server.peer_count == 0
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_no_idle_timeout_keeps_quiet_peers(autojump_clock: trio.testing.MockClock) -> None:
    """idle_timeout=None: a peer silent for a day is still there and still answered."""
    network = FakeNetwork(seed=9)
    async with trio.open_nursery() as nursery:
        server, _ = await start_server(nursery, network, ServerConfig(idle_timeout=None))
        client = await DTLSClient.connect_over(
            network.endpoint(), SERVER_ADDRESS, identity=IDENTITY, key=KEY, on_event=ignore_event
        )
        await trio.sleep(86_400)
        assert server.peer_count == 1
        await client.send(b"good morning")
        assert await client.receive() == f"to {CLIENT_INFO}: ACK".encode()
        assert server.statistics().idle_closed == 0
        assert alerts_to_client(network) == []
        await client.aclose()
        nursery.cancel_scope.cancel()
