"""DTLSConnection and DTLSClient are ``trio.abc.Channel[bytes]``, and work through that ABC.

The functions below know only ``trio.abc.Channel[bytes]`` (mypy --strict checks the calls):
one is the server's handler, the other drives the client, over a real server on loopback.
They use what any channel offers -- ``send``, ``receive``, ``async for``, ``async with`` and
``aclose`` -- and the documented differences from the ABC's letter: every end is a
:class:`ConnectionClosed` (a ``trio.BrokenResourceError``), never ``trio.EndOfChannel``.
"""

from __future__ import annotations

import pytest
import trio
from support import IDENTITY, KEY, serving

from trio_dtls_server import ConnectionClosed, DTLSClient, DTLSConnection, DTLSServer


async def upper_echo(channel: trio.abc.Channel[bytes]) -> None:
    """A handler for any channel of bytes: answer each message in capitals, then close."""
    async with channel:  # AsyncResource: leaving the block closes the channel
        async for message in channel:
            await channel.send(message.upper())


async def exchange(channel: trio.abc.Channel[bytes], messages: list[bytes]) -> list[bytes]:
    """Send each message over any channel of bytes and collect each reply."""
    replies = []
    for message in messages:
        await channel.send(message)
        replies.append(await channel.receive())
    return replies


async def test_both_ends_are_channels_of_bytes_and_work_through_the_abc() -> None:
    seen: list[DTLSConnection] = []

    async def handler(connection: DTLSConnection) -> None:
        seen.append(connection)
        assert isinstance(connection, trio.abc.Channel)
        await upper_echo(connection)

    async with serving(DTLSServer({IDENTITY: KEY}, handler=handler)) as running:
        client = await DTLSClient.connect(running.host, running.port, identity=IDENTITY, key=KEY)
        assert isinstance(client, trio.abc.Channel)
        async with client:
            assert await exchange(client, [b"one", b"two", b"three"]) == [b"ONE", b"TWO", b"THREE"]
        # The client's close_notify ended the handler's ``async for``; its ``async with``
        # then closed the server's end too.
        await running.events.wait_for("remote_closed")
        assert seen and seen[0].closed
        with pytest.raises(ConnectionClosed):
            await seen[0].send(b"after the end")


async def test_a_closed_channel_raises_connection_closed_a_broken_resource_error() -> None:
    async with serving(DTLSServer({IDENTITY: KEY})) as running:
        client = await DTLSClient.connect(running.host, running.port, identity=IDENTITY, key=KEY)
        assert isinstance(client, trio.abc.Channel)
        channel: trio.abc.Channel[bytes] = client
        await channel.aclose()
        await channel.aclose()  # idempotent, as AsyncResource asks
        with pytest.raises(trio.BrokenResourceError) as raised:
            await channel.receive()
        assert isinstance(raised.value, ConnectionClosed)
        assert not isinstance(raised.value, trio.EndOfChannel)
        with pytest.raises(ConnectionClosed):
            await channel.send(b"late")
        # ``async for`` over an ended channel ends quietly.
        assert [message async for message in channel] == []
