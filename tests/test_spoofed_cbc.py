"""An off-path attacker floods a CBC association with spoofed records, on real sockets.

The attacker knows the two addresses (both are on the wire) and nothing else: it sends forged
DTLS records in UDP datagrams whose source is the victim's peer, through a raw socket
(:mod:`spoofing`; needs root, which CI has).  Before the fix one such datagram ended a CBC
association with encrypt-then-MAC on both sides: OpenSSL's record layer failed on it
(``length too short; record layer failure``) and sent the real peer a fatal alert.  Now every
forgery is dropped and counted (``record failed authentication``) while the real peer keeps
pinging and every ping is answered.  ``test_cbc_forgeries.py`` has the same attack in memory,
for every CBC suite and every shape of forgery.

The server's throttle (``max_auth_failures`` records failing authentication in
``auth_failure_window`` seconds ignore the peer's address for a while) would answer a flood of
forgeries by ignoring the real peer too; that is a separate policy, set out of the way here.
"""

from __future__ import annotations

import pytest
import support
import trio
from cli_support import free_udp_port
from spoofing import needs_raw_socket, send_spoofed

from trio_dtls_server import DTLSClient, DTLSServer, ServerConfig, ServerEvent
from trio_dtls_server._codes import DropReason

pytestmark = needs_raw_socket

IDENTITY = "Alice (clone number 0)"
KEY = bytes.fromhex("1a2b3c4d5e6f")
ROUNDS = 20
LOOPBACK = "127.0.0.1"
#: The most spoofed datagrams the flood spanning a handshake sends each way.
FLOOD_LIMIT = 5_000


def forged_datagrams(round_number: int) -> list[bytes]:
    """Ten datagrams an off-path attacker can send: well-framed epoch-1 records with no valid
    MAC, the first of them the 29-byte datagram of the issue (shorter than any MAC)."""

    def record(content_type: int, sequence: int, fragment: bytes) -> bytes:
        header = bytes([content_type, 0xFE, 0xFD, 0, 1]) + sequence.to_bytes(6, "big")
        return header + len(fragment).to_bytes(2, "big") + fragment

    base = 1000 + 10 * round_number
    return [
        record(23, base, bytes(16)),  # 29 bytes: "length too short" in OpenSSL
        record(23, base + 1, bytes(80)),  # a wrong MAC: "decryption failed or bad record mac"
        record(21, base + 2, bytes(64)),  # a "fatal alert"
        record(22, base + 3, bytes(64)),  # a "Finished"
        record(23, base + 4, b""),
        *(record(23, base + 5 + n, bytes([n]) * (32 + 16 * n)) for n in range(5)),
    ]


async def _connect(port: int, suite: str, events: list[ServerEvent]) -> DTLSClient:
    client = await DTLSClient.connect(
        LOOPBACK, port, identity=IDENTITY, key=KEY, ciphers=suite, on_event=events.append
    )
    assert client.cipher == suite
    return client


async def _ping_through_forgeries(
    client: DTLSClient, source: tuple[str, int], to: tuple[str, int]
) -> int:
    """ROUNDS rounds of: the round's forgeries, spoofed from ``source`` to ``to``, then a ping
    from ``client`` that must be answered at once.  Returns how many forgeries were sent.

    When the forgeries go to the client, they sit in its socket before the ACK and are read
    first.
    """
    ack = f"to ({LOOPBACK}:{client.local_address[1]}): ACK".encode()
    sent = 0
    for round_number in range(ROUNDS):
        for forged in forged_datagrams(round_number):
            send_spoofed(forged, source, to)
            sent += 1
        await client.send(f"ping {round_number}".encode())
        with trio.fail_after(support.WAIT_LIMIT):
            assert await client.receive() == ack
    return sent


@pytest.mark.parametrize("suite", ["PSK-AES128-CBC-SHA256", "ECDHE-PSK-AES256-CBC-SHA384"])
async def test_spoofed_forgeries_to_the_server_do_not_end_a_cbc_association(suite: str) -> None:
    config = ServerConfig(ciphers="compat", max_auth_failures=1_000_000)
    server = DTLSServer({IDENTITY: KEY}, config=config)
    async with support.serving(server, LOOPBACK) as running:
        client_events: list[ServerEvent] = []
        client = await _connect(running.port, suite, client_events)
        victim = (LOOPBACK, client.local_address[1])
        async with client:
            sent = await _ping_through_forgeries(client, victim, running.address)
            await support.settle()
            statistics = server.statistics()
            # Every forgery reached the association (none was taken for a stranger's datagram)
            # and was dropped as what it is.
            assert statistics.drops.get(DropReason.AUTHENTICATION) == sent == 10 * ROUNDS
            assert statistics.messages_received == statistics.messages_sent == ROUNDS
            assert statistics.peers == 1 and statistics.throttles == 0
            assert running.events.with_code("connection_failed") == []
            assert not client.closed
            assert [e for e in client_events if e.code == "connection_failed"] == []


async def test_spoofed_forgeries_to_the_client_do_not_end_a_cbc_association() -> None:
    suite = "PSK-AES128-CBC-SHA"
    server = DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers="compat"))
    async with support.serving(server, LOOPBACK) as running:
        client_events: list[ServerEvent] = []
        client = await _connect(running.port, suite, client_events)
        victim = (LOOPBACK, client.local_address[1])
        async with client:
            # "From the server": the client takes them for the server's.
            sent = await _ping_through_forgeries(client, running.address, victim)
            dropped = [e for e in client_events if e.code == "dropped"]
            assert [e.message for e in dropped] == [
                f"{IDENTITY}: {DropReason.AUTHENTICATION}, dropped"
            ] * sent
            assert client.foreign_datagrams == 0  # they passed for the server's own
            assert not client.closed
            assert [e for e in client_events if e.code == "connection_failed"] == []
        await support.settle()
        assert server.statistics().messages_received == ROUNDS
        assert running.events.with_code("connection_failed") == []


async def test_a_flood_spanning_the_handshake_does_not_end_a_cbc_association() -> None:
    """The attacker floods both directions from before the handshake to after the pings: the
    forged epoch-1 records that reach either side mid-handshake are checked before OpenSSL
    keeps them (it used to fail on them the moment the association was established)."""
    suite = "PSK-AES128-CBC-SHA256"
    server = DTLSServer(
        {IDENTITY: KEY}, config=ServerConfig(ciphers="compat", max_auth_failures=1_000_000)
    )
    local_port = free_udp_port()
    victim = (LOOPBACK, local_port)
    async with support.serving(server, LOOPBACK) as running:
        done = trio.Event()
        flood = [datagram for n in range(ROUNDS) for datagram in forged_datagrams(n)]

        async def attacker() -> None:
            # Bounded: at most FLOOD_LIMIT datagrams, one per scheduling turn, until done.
            for sent in range(FLOOD_LIMIT):
                if done.is_set():
                    return
                forged = flood[sent % len(flood)]
                send_spoofed(forged, victim, running.address)
                send_spoofed(forged, running.address, victim)
                await trio.lowlevel.checkpoint()

        client_events: list[ServerEvent] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attacker)
            client = await DTLSClient.connect(
                LOOPBACK, running.port, identity=IDENTITY, key=KEY, ciphers=suite,
                local_port=local_port, on_event=client_events.append,
            )  # fmt: skip
            async with client:
                for round_number in range(ROUNDS):
                    await client.send(f"ping {round_number}".encode())
                    with trio.fail_after(support.WAIT_LIMIT):
                        reply = await client.receive()
                    assert reply == f"to ({LOOPBACK}:{local_port}): ACK".encode()
                done.set()
                assert not client.closed
        await support.settle()
        assert running.events.with_code("connection_failed") == []
        assert running.events.with_code("handshake_failed") == []
        assert [e for e in client_events if e.code == "connection_failed"] == []
        statistics = server.statistics()
        assert statistics.handshakes_completed == 1
        assert statistics.messages_received == ROUNDS
        # Some forgeries met the association (the others came before it existed).
        assert statistics.drops.get(DropReason.AUTHENTICATION, 0) > 0
