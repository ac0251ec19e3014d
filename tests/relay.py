"""A UDP relay for tests that move a client to a new address mid-association, like a NAT.

::

    client  <->  front socket [relay] upstream socket  <->  server

The client sends to the relay's :attr:`~UdpRelay.front_address`; the relay forwards each
datagram to the server from its *upstream* socket, and forwards what the server sends to that
socket back to the client.  So the server sees the upstream socket's address as the client's.
:meth:`UdpRelay.rebind` replaces the upstream socket with a new one -- a new port, or a new
host such as ``127.0.0.2`` (Linux answers on all of 127.0.0.0/8) -- exactly what a NAT does
when its mapping expires: the client changes nothing and keeps its own address, while the
server suddenly sees its datagrams come from somewhere else.  Datagrams the server then sends
to the old address are lost, as behind a real NAT.

The relay forwards verbatim and never reorders, drops or delays; it counts what it carried.
It is for loopback tests only (IPv4).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from trio_dtls_server._transport import Address

#: Larger than any DTLS datagram (a record is at most 16 KiB + overhead).
MAX_DATAGRAM = 65_535


@dataclass
class RelayCounters:
    """Datagrams the relay carried each way."""

    to_server: int = 0
    to_client: int = 0


class UdpRelay:
    """A front socket for the client and a replaceable upstream socket towards the server.

    Make one with :func:`open_relay`.  The client's address is learnt from what arrives on the
    front socket (the latest sender wins, so a client that reconnects from a new port still
    gets its replies).
    """

    def __init__(self, nursery: trio.Nursery, front: trio.socket.SocketType, server: Address):
        self._nursery = nursery
        self._front = front
        self._server = server
        self._client: Address | None = None
        self._upstream: trio.socket.SocketType | None = None
        self._upstream_scope = trio.CancelScope()
        self.counters = RelayCounters()

    @property
    def front_address(self) -> Address:
        """Where the client sends (host, port)."""
        host, port = self._front.getsockname()[:2]
        return str(host), int(port)

    @property
    def upstream_address(self) -> Address:
        """The address the server sees the client at now."""
        assert self._upstream is not None, "the relay is not open"
        host, port = self._upstream.getsockname()[:2]
        return str(host), int(port)

    async def rebind(self, host: str | None = None) -> Address:
        """Replace the upstream socket; return the new address the server will see.

        ``host`` (e.g. ``"127.0.0.2"``) moves the client to another address; by default the
        new socket is on the same host, on another port (the new socket is bound while the old
        one still holds its port, so the port always changes).
        """
        if host is None:
            host = self.upstream_address[0] if self._upstream is not None else "127.0.0.1"
        upstream = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await upstream.bind((host, 0))
        old_scope = self._upstream_scope
        self._upstream, self._upstream_scope = upstream, trio.CancelScope()
        self._nursery.start_soon(self._from_server, upstream, self._upstream_scope)
        # The old socket's task closes it as it ends (closing it from here would wake that
        # task with ClosedResourceError rather than the cancellation).
        old_scope.cancel()
        return self.upstream_address

    async def _from_client(self) -> None:
        while True:
            datagram, sender = await self._front.recvfrom(MAX_DATAGRAM)
            self._client = (str(sender[0]), int(sender[1]))
            assert self._upstream is not None
            await self._upstream.sendto(datagram, self._server)
            self.counters.to_server += 1

    async def _from_server(self, upstream: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        with scope, upstream:
            while True:
                datagram, sender = await upstream.recvfrom(MAX_DATAGRAM)
                if (str(sender[0]), int(sender[1])) != self._server or self._client is None:
                    continue  # not from the server, or nobody to give it to yet
                await self._front.sendto(datagram, self._client)
                self.counters.to_client += 1


@asynccontextmanager
async def open_relay(
    server: Address, *, front_host: str = "127.0.0.1", upstream_host: str = "127.0.0.1"
) -> AsyncIterator[UdpRelay]:
    """Run a relay to ``server`` for the duration of the block; its sockets close at the end."""
    front = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with front:
        await front.bind((front_host, 0))
        async with trio.open_nursery() as nursery:
            relay = UdpRelay(nursery, front, server)
            await relay.rebind(upstream_host)
            nursery.start_soon(relay._from_client)
            try:
                yield relay
            finally:
                nursery.cancel_scope.cancel()  # each upstream task closes its socket
