"""The test relay (``tests/relay.py``) itself: it forwards both ways and rebinds like a NAT."""

from __future__ import annotations

import trio
import trio.testing
from relay import UdpRelay, open_relay

from trio_dtls_server._transport import Address

LIMIT = 10.0


async def udp_socket(host: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


def address_of(sock: trio.socket.SocketType) -> Address:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


async def round_trip(
    relay: UdpRelay, client: trio.socket.SocketType, server: trio.socket.SocketType, text: bytes
) -> Address:
    """Client -> relay -> server and back; returns where the server saw the datagram from."""
    with trio.fail_after(LIMIT):
        await client.sendto(text, relay.front_address)
        datagram, seen_from = await server.recvfrom(2048)
        assert datagram == text
        await server.sendto(b"re: " + text, seen_from)
        reply, replied_from = await client.recvfrom(2048)
    # The relay counts a datagram after its sendto returns, and the client may be scheduled
    # first: let the relay's tasks finish (and count) before a test reads the counters.
    await trio.testing.wait_all_tasks_blocked()
    assert reply == b"re: " + text
    assert replied_from == relay.front_address  # the client only ever talks to the front
    return str(seen_from[0]), int(seen_from[1])


async def test_the_relay_forwards_both_ways_from_its_upstream_socket() -> None:
    with await udp_socket() as server, await udp_socket() as client:
        async with open_relay(address_of(server)) as relay:
            assert await round_trip(relay, client, server, b"one") == relay.upstream_address
            assert await round_trip(relay, client, server, b"two") == relay.upstream_address
            assert relay.upstream_address != relay.front_address
            assert (relay.counters.to_server, relay.counters.to_client) == (2, 2)


async def test_rebind_changes_the_port_the_server_sees() -> None:
    with await udp_socket() as server, await udp_socket() as client:
        async with open_relay(address_of(server)) as relay:
            before = await round_trip(relay, client, server, b"before")
            moved = await relay.rebind()
            after = await round_trip(relay, client, server, b"after")
    assert after == moved
    assert after[0] == before[0] == "127.0.0.1"
    assert after[1] != before[1]


async def test_rebind_to_another_loopback_host() -> None:
    with await udp_socket() as server, await udp_socket() as client:
        async with open_relay(address_of(server)) as relay:
            before = await round_trip(relay, client, server, b"before")
            moved = await relay.rebind(host="127.0.0.2")
            after = await round_trip(relay, client, server, b"after")
    assert before[0] == "127.0.0.1"
    assert after == moved
    assert after[0] == "127.0.0.2"


async def test_what_the_server_sends_to_the_old_address_is_lost() -> None:
    with await udp_socket() as server, await udp_socket() as client:
        async with open_relay(address_of(server)) as relay:
            old = await round_trip(relay, client, server, b"before")
            await relay.rebind()
            await trio.testing.wait_all_tasks_blocked()  # the old socket's task has closed it
            await server.sendto(b"to the old mapping", old)
            await round_trip(relay, client, server, b"after")  # only this reply arrives
            assert relay.counters.to_client == 2


async def test_a_client_that_moves_on_the_front_gets_the_replies() -> None:
    with await udp_socket() as server, await udp_socket() as first, await udp_socket() as second:
        async with open_relay(address_of(server)) as relay:
            await round_trip(relay, first, server, b"first")
            await round_trip(relay, second, server, b"second")
