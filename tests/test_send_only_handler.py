"""A handler that only sends (telemetry push, game state broadcast) still hears the peer.

The peer task reads its inbox when the handler calls ``receive()``.  A handler that never does
would miss the peer's close_notify and keep sending into the void, and its peer would look
idle however much it talked.  So ``DTLSConnection.send()`` first takes in whatever already
arrived: close_notify makes that ``send()`` raise ``ConnectionClosed``, data waits for
``receive()`` (bounded by ``peer_queue_size``), and the peer counts as active.

Real sockets on loopback, our own client; each push is triggered by the test through a
memory channel, so nothing here waits on time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import support
import trio
from support import IDENTITY, KEY, serving

from trio_dtls_server import ConnectionClosed, DTLSClient, DTLSConnection, DTLSServer, ServerConfig


@dataclass
class PushHandler:
    """Sends one datagram each time the test pokes it; reads only when told to."""

    pokes_send: trio.MemorySendChannel[str]
    pokes_receive: trio.MemoryReceiveChannel[str]
    acted_send: trio.MemorySendChannel[str]
    acted_receive: trio.MemoryReceiveChannel[str]
    connections: list[DTLSConnection] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)

    @classmethod
    def create(cls) -> PushHandler:
        return cls(
            *trio.open_memory_channel[str](16),
            *trio.open_memory_channel[str](16),
        )

    def _note(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.acted_send.send_nowait(outcome)

    async def __call__(self, connection: DTLSConnection) -> None:
        self.connections.append(connection)
        try:
            async for poke in self.pokes_receive:
                if poke == "read":
                    self.received.append(await connection.receive())
                    self._note("read")
                else:
                    await connection.send(poke.encode())
                    self._note("sent")
        except ConnectionClosed as closed:
            self._note(f"closed: {closed.reason}")

    async def poke(self, what: str) -> str:
        """Make the handler act once; what it did."""
        await self.pokes_send.send(what)
        with trio.fail_after(support.WAIT_LIMIT):
            return await self.acted_receive.receive()


async def connect(address: tuple[str, int]) -> DTLSClient:
    return await DTLSClient.connect(address[0], address[1], identity=IDENTITY, key=KEY)


async def test_a_handler_that_only_sends_learns_of_the_peers_close_notify() -> None:
    handler = PushHandler.create()
    server = DTLSServer({IDENTITY: KEY}, handler=handler)
    async with serving(server) as running:
        client = await connect(running.address)
        await handler.poke("tick 1")
        assert await client.receive() == b"tick 1"

        await client.aclose()  # close_notify; the handler is not reading
        await support.settle()
        assert server.statistics().remote_closed == 0  # nobody has looked yet

        assert await handler.poke("tick 2") == "closed: the peer sent close_notify"
        assert handler.outcomes == ["sent", "closed: the peer sent close_notify"]
        stats = server.statistics()
        assert (stats.remote_closed, stats.messages_sent) == (1, 1)
        await running.events.wait_for("remote_closed")


async def test_what_the_peer_sent_meanwhile_waits_for_receive_in_order() -> None:
    handler = PushHandler.create()
    server = DTLSServer({IDENTITY: KEY}, handler=handler)
    async with serving(server) as running:
        client = await connect(running.address)
        for number in range(3):
            await client.send(f"reading {number}".encode())
        await support.settle()
        assert server.statistics().messages_received == 0

        await handler.poke("push")  # takes the three in before sending
        assert await client.receive() == b"push"
        assert server.statistics().messages_received == 3
        connection = handler.connections[0]
        # Counted as activity: the idle clock restarted when they were taken in.
        assert connection.closed is False

        for _ in range(3):
            await handler.poke("read")
        assert handler.received == [b"reading 0", b"reading 1", b"reading 2"]
        assert handler.outcomes == ["sent", "read", "read", "read"]
        await client.aclose()


async def test_data_a_sending_handler_never_reads_is_bounded_and_counted() -> None:
    handler = PushHandler.create()
    config = ServerConfig(peer_queue_size=4)
    server = DTLSServer({IDENTITY: KEY}, handler=handler, config=config)
    async with serving(server) as running:
        client = await connect(running.address)
        sent = 0
        for _ in range(3):  # three rounds of four: the inbox never overflows by itself
            for _ in range(4):
                await client.send(f"reading {sent}".encode())
                sent += 1
            await support.settle()
            await handler.poke("push")
            assert await client.receive() == b"push"

        stats = server.statistics()
        assert stats.messages_received == 12
        # Four wait for receive(); the eight that found no room were dropped and counted.
        assert stats.queue_overflows == 8
        assert stats.drops["peer queue full"] == 8
        for _ in range(4):
            await handler.poke("read")
        assert handler.received == [f"reading {n}".encode() for n in range(4)]
        await client.aclose()
