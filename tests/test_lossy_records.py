"""The record layer over a lossy network: resumption, restarts and goodbyes, judged exactly.

The first tests replay runs of the soak driver (``tests/soak_records.py``, run by hand with
many seeds) whose outcome is judged against the fake network's log: every handshake completes,
every plaintext reaches the handler at most once and every one read while its association
lived exactly once, the server's replay count equals the duplicates the network delivered,
each (epoch, sequence number) carries one record only, every connection ends for the reason
the wire shows, and the counters agree.  Each run takes a fraction of a second (autojump).

The last tests pin down what the soak found, with the network driven by hand; each was a bug
and is fixed: a HelloVerifyRequest numbered like our ChangeCipherSpec, duplicates pushing early
data out, early data's late copies counted as forgeries when OpenSSL is kept, and a restarted
client confused by a late final flight meant for its previous life.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing
from auth_support import quiet
from fakenet import Address, FakeNetwork, SentDatagram
from soak_records import KEY, SERVER, RunResult, run_one, spec_for

from trio_dtls_server import (
    DTLSClient,
    DTLSConnection,
    DTLSServer,
    HandshakeError,
    RetransmitPolicy,
    ServerConfig,
)
from trio_dtls_server._wire import (
    ContentType,
    parse_records,
)

# -- soak runs, judged by the soak's own oracle ------------------------------------------------


def soak(scenario: str, seed: int, released: bool = True) -> RunResult:
    result = run_one(spec_for(scenario, seed, released))
    assert result.problems == [], "\n".join(result.problems)
    assert result.stats is not None
    return result


@pytest.mark.parametrize("released", [True, False], ids=["released", "kept"])
def test_resumed_handshakes_under_30_percent_loss(released: bool) -> None:
    # Seed 2: 30 % loss, ChaCha20's successor in the suite list (AES-256-GCM-SHA384), MTU 576.
    result = soak("resume", 2, released)
    stats = result.stats
    assert stats is not None
    # Ten clients, each a full handshake then a resumed one from a new port.
    assert (stats.handshakes_started, stats.handshakes_completed) == (20, 20)
    assert (stats.handshakes_resumed, stats.openssl_released) == (10, 20 if released else 0)
    assert stats.handshakes_failed == {}
    # The network duplicated, and the server counted exactly the copies it read twice.
    assert result.facts["replayed record"] == result.facts["replays on the wire"] > 0
    assert stats.drops.get("record failed authentication", 0) == 0
    assert stats.remote_closed + stats.idle_closed == 20
    assert (stats.peers, stats.handshaking) == (0, 0)


def test_restarts_on_the_same_port_with_resumption_under_loss() -> None:
    result = soak("restart-resume", 4)
    stats = result.stats
    assert stats is not None
    # Ten clients crash mid-conversation and resume on their port: ten replacements, and the
    # old association kept aside meanwhile never took the new one's data (nor the reverse).
    assert (stats.handshakes_completed, stats.handshakes_resumed) == (20, 10)
    assert stats.replacements == result.facts["ended: cancelled"] == 10
    assert result.facts["restarts"] == 10
    assert stats.handshakes_failed == {}
    assert stats.messages_received == stats.messages_sent > 10 * 8


@pytest.mark.parametrize("scenario", ["client-close", "idle", "server-close"])
def test_goodbyes_under_loss_end_both_sides(scenario: str) -> None:
    result = soak(scenario, 5)
    stats = result.stats
    assert stats is not None
    assert (stats.peers, stats.handshaking) == (0, 0)
    ended = {k: v for k, v in result.facts.items() if k.startswith("ended: ")}
    if scenario == "client-close":
        # Each connection ends by the client's close_notify, or (goodbye lost) by idleness.
        assert sum(ended.values()) == 12
        assert stats.remote_closed == ended["ended: the peer sent close_notify"] > 0
        assert stats.idle_closed == ended.get("ended: idle timeout", 0)
    elif scenario == "idle":
        assert ended == {"ended: idle timeout": 12}
        assert stats.idle_closed == 12
    else:
        assert stats.remote_closed == stats.idle_closed == 0
        assert set(ended) <= {"ended: cancelled"}


# -- what the soak found -------------------------------------------------------------------------

FIRST: Address = ("127.0.0.1", 41_000)
SECOND: Address = ("127.0.0.1", 41_001)

#: Runs a test with the server releasing OpenSSL after the handshake, and keeping it.
BOTH_RECORD_LAYERS = pytest.mark.parametrize(
    "release_openssl", [True, False], ids=["released", "kept"]
)


class Received:
    """A handler that answers ``re <plaintext>`` and keeps what it got, in order."""

    def __init__(self) -> None:
        self.plaintexts: list[bytes] = []

    async def __call__(self, connection: DTLSConnection) -> None:
        async for plaintext in connection:
            self.plaintexts.append(plaintext)
            await connection.send(b"re " + plaintext)


def carries_change_cipher_spec(datagram: SentDatagram) -> bool:
    return any(
        r.content_type == ContentType.change_cipher_spec for r in parse_records(datagram.data)
    )


async def resumed_with_early_data(
    *, release_openssl: bool, messages: int, early_duplicates: int, late_duplicates: int
) -> tuple[DTLSServer, Received]:
    """A client resumes from a new port; its first ChangeCipherSpec + Finished is lost, so the
    ``messages`` it sends right away (resumed: the client finishes first) overtake its Finished.
    The last ``early_duplicates`` of them arrive twice before the Finished does (the server
    retransmits its flight after 1 s, the client answers with its final flight); the first
    ``late_duplicates`` arrive twice after it.  Returns once all but two are answered (the two
    the test below may see lost), a second later."""
    network = FakeNetwork(seed=11)
    received = Received()
    config = ServerConfig(release_openssl=release_openssl)
    server = DTLSServer(psk=KEY, handler=received, config=config)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_on, network.endpoint(SERVER))
        first = await DTLSClient.connect_over(
            network.endpoint(FIRST), SERVER, identity="sensor", key=KEY, on_event=quiet
        )
        await first.aclose()

        lost: list[SentDatagram] = []

        def first_finished_of_second(datagram: SentDatagram) -> bool:
            if datagram.source == SECOND and not lost and carries_change_cipher_spec(datagram):
                lost.append(datagram)
                return True
            return False

        network.lose_if(first_finished_of_second)
        endpoint = network.endpoint(SECOND)
        second = await DTLSClient.connect_over(
            endpoint,
            SERVER,
            identity="sensor",
            key=KEY,
            tls_session=first.tls_session,
            on_event=quiet,
        )
        assert second.resumed and len(lost) == 1
        for number in range(messages):
            await second.send(b"early %02d" % number)
        early = [
            d for d in network.sent(source=SECOND) if d.data[0] == ContentType.application_data
        ]
        for datagram in early[len(early) - early_duplicates :]:
            endpoint.send_nowait(datagram.data, SERVER)
        with trio.fail_after(30):
            replies = {await second.receive() for _ in range(messages - 2)}
            for datagram in early[:late_duplicates]:
                endpoint.send_nowait(datagram.data, SERVER)
            await trio.sleep(1)
        assert len(replies) == messages - 2  # the rest is what the test below looks at
        await second.aclose()
        nursery.cancel_scope.cancel()
    return server, received


@BOTH_RECORD_LAYERS
async def test_a_late_copy_of_data_that_overtook_the_finished_counts_as_a_replay(
    release_openssl: bool, autojump_clock: trio.testing.MockClock
) -> None:
    server, received = await resumed_with_early_data(
        release_openssl=release_openssl, messages=3, early_duplicates=0, late_duplicates=2
    )
    assert received.plaintexts == [b"early 00", b"early 01", b"early 02"]
    stats = server.statistics()
    assert stats.handshakes_resumed == 1
    assert stats.drops.get("replayed record", 0) == 2
    assert stats.drops.get("record failed authentication", 0) == 0


@BOTH_RECORD_LAYERS
async def test_duplicates_do_not_push_data_that_overtook_the_finished_out(
    release_openssl: bool, autojump_clock: trio.testing.MockClock
) -> None:
    server, received = await resumed_with_early_data(
        release_openssl=release_openssl, messages=14, early_duplicates=3, late_duplicates=0
    )
    assert sorted(received.plaintexts) == [b"early %02d" % n for n in range(14)]
    assert server.statistics().messages_received == 14


async def test_a_restarted_client_completes_despite_a_late_final_flight_of_its_previous_life(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(seed=12)
    server_endpoint = network.endpoint(SERVER)
    server = DTLSServer(psk=KEY, handler=Received())
    policy = RetransmitPolicy(initial=1.0, maximum=4.0, max_retransmissions=6)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_on, server_endpoint)
        crashed = network.endpoint(FIRST)
        first = await DTLSClient.connect_over(
            crashed, SERVER, identity="sensor", key=KEY, on_event=quiet
        )
        await first.send(b"before")
        assert await first.receive() == b"re before"
        (final_flight,) = [
            d
            for d in network.sent(source=SERVER, destination=FIRST)
            if carries_change_cipher_spec(d)
        ]
        crashed.close()  # the device crashes: no close_notify

        # It restarts on the same port; a late copy of that final flight is already waiting.
        restarted = network.endpoint(FIRST)
        server_endpoint.send_nowait(final_flight.data, FIRST)
        try:
            second = await DTLSClient.connect_over(
                restarted,
                SERVER,
                identity="sensor",
                key=KEY,
                retransmit=policy,
                handshake_timeout=30.0,
                on_event=quiet,
            )
        except HandshakeError as error:
            pytest.fail(f"the restarted client's handshake never completed: {error}")
        await second.send(b"after")
        assert await second.receive() == b"re after"
        stats = server.statistics()
        assert (stats.handshakes_completed, stats.replacements) == (2, 1)
        await second.aclose()
        nursery.cancel_scope.cancel()


def test_the_restart_race_is_identical_with_and_without_our_record_layer() -> None:
    """The soak's restart-anytime seed 1 in both modes: the same handshakes fail the same way
    (the race is OpenSSL's and the protocol's, not the record layer's), and every client still
    gets through on a retry."""
    outcomes: list[Counter[str]] = []
    for released in (True, False):
        result = soak("restart-anytime", 1, released)
        outcomes.append(Counter({k: v for k, v in result.facts.items() if "race" in k}))
    assert outcomes[0] == outcomes[1]
    assert sum(outcomes[0].values()) > 0


async def test_a_hello_verify_request_numbered_like_the_final_flight_does_not_wedge_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(seed=13)
    server = DTLSServer(psk=KEY, handler=Received())
    client_endpoint = network.endpoint(FIRST)
    lost: list[SentDatagram] = []

    def first_hello(datagram: SentDatagram) -> bool:
        if datagram.source == FIRST and not lost and datagram.data[13:14] == b"\x01":
            lost.append(datagram)
            return True
        return False

    # An OpenSSL client whose first four ClientHellos were lost has used record numbers 0 to
    # 4 by its fifth, which our HelloVerifyRequest echoes (RFC 6347 4.2.1), and numbers its
    # cookie'd hello 5.  Under the mock clock OpenSSL's own real-time timer never fires, so
    # the client here resends byte for byte: the test gives the two hellos those numbers.
    # OpenSSL 4 would number the server's epoch-0 records from 1 (ServerHello 1, ... a
    # ChangeCipherSpec 4), which the client would drop as a replay of the HelloVerifyRequest;
    # HandshakeDriver._renumbered starts them at the cookie'd hello's own number instead.
    renumbered_cookied: list[bytes] = []

    def cookied_hello(datagram: SentDatagram) -> bool:
        data = datagram.data
        if (
            datagram.source == FIRST
            and lost
            and not renumbered_cookied
            and data[13:14] == b"\x01"
            and len(data) > len(lost[0].data)  # it carries the cookie
        ):
            renumbered_cookied.append(data[:5] + (5).to_bytes(6, "big") + data[11:])
            return True
        return False

    network.lose_if(cookied_hello)

    network.lose_if(first_hello)
    outcome: list[DTLSClient | HandshakeError] = []

    async def connect() -> None:
        try:
            outcome.append(
                await DTLSClient.connect_over(
                    client_endpoint,
                    SERVER,
                    identity="sensor",
                    key=KEY,
                    ciphers="PSK-AES128-GCM-SHA256",
                    retransmit=RetransmitPolicy(initial=1.0, maximum=4.0, max_retransmissions=6),
                    handshake_timeout=30.0,
                    on_event=quiet,
                )
            )
        except HandshakeError as error:
            outcome.append(error)

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_on, network.endpoint(SERVER))
        nursery.start_soon(connect)
        await trio.testing.wait_all_tasks_blocked()
        (hello,) = lost
        # The copy that gets through is the client's fifth try: record number 4.
        renumbered = hello.data[:5] + (4).to_bytes(6, "big") + hello.data[11:]
        client_endpoint.send_nowait(renumbered, SERVER)
        with trio.fail_after(10):
            while not renumbered_cookied:
                await trio.sleep(0.1)
        client_endpoint.send_nowait(renumbered_cookied[0], SERVER)
        with trio.fail_after(60):
            while not outcome:
                await trio.sleep(1)
        (client,) = outcome
        if isinstance(client, HandshakeError):
            pytest.fail(f"the handshake never completed on the client: {client}")
        await client.send(b"ping")
        assert await client.receive() == b"re ping"
        await client.aclose()
        nursery.cancel_scope.cancel()
