"""A server bound to a wildcard address answers from the address each client wrote to.

On a host with several addresses the kernel picks a reply's source address by route, so
without help a client that wrote to a secondary address gets replies from a stranger: a
connected client socket (Qt's) and our client drop them, and the handshake never completes.
Loopback gives every test machine a second address for free: 127.0.0.2 reaches the same
interface as 127.0.0.1, but the kernel answers 127.0.0.1's clients from 127.0.0.1.
"""

from __future__ import annotations

import socket as stdlib_socket

import pytest
import support
import trio
from support import IDENTITY, KEY

from trio_dtls_server import DTLSClient, DTLSServer
from trio_dtls_server._transport import bind_udp
from trio_dtls_server._wire import parse_hello_verify_request


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
async def test_a_client_of_a_secondary_address_gets_its_replies_from_that_address(
    wildcard: str,
) -> None:
    server = DTLSServer({IDENTITY: KEY})
    async with support.serving(server, host=wildcard) as running:
        # DTLSClient accepts only datagrams whose source is the address it wrote to.
        client = await DTLSClient.connect(
            "127.0.0.2", running.port, identity=IDENTITY, key=KEY, handshake_timeout=10
        )
        async with client:
            await client.send(b"ping")
            with trio.fail_after(support.WAIT_LIMIT):
                reply = await client.receive()
        peer_host = "::ffff:127.0.0.1" if wildcard == "::" else "127.0.0.1"
        assert reply == f"to ({peer_host}:{client.local_address[1]}): ACK".encode()
        assert client.foreign_datagrams == 0
        assert server.statistics().handshakes_completed == 1


async def test_the_hello_verify_request_leaves_from_the_address_the_hello_went_to() -> None:
    server = DTLSServer({IDENTITY: KEY})
    first_hello, _ = support.client_hellos()
    async with support.serving(server, host="0.0.0.0") as running:
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            raw.setblocking(False)
            for target in ("127.0.0.2", "127.0.0.1"):
                raw.sendto(first_hello, (target, running.port))
                with trio.fail_after(support.WAIT_LIMIT):
                    await trio.lowlevel.wait_readable(raw)
                reply, source = raw.recvfrom(65_536)
                assert source == (target, running.port)
                assert len(parse_hello_verify_request(reply)) == 16  # our 16-byte cookie


async def test_a_socket_bound_to_one_address_needs_no_packet_info() -> None:
    transport = await bind_udp("127.0.0.1", 0)
    try:
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.1", 0))
            sender.sendto(b"x", transport.local_address)
            with trio.fail_after(support.WAIT_LIMIT):
                await transport.wait_readable()
            assert transport.receive_nowait(100) == (b"x", sender.getsockname())
            assert transport.reply_source() is None
    finally:
        transport.close()
