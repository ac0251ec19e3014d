"""Qt's "DTLS client" example, on Trio: associations that ping a DTLS server.

Start ``secure_udp_server.py`` first, then::

    python examples/secure_udp_client.py 127.0.0.1 22334 --clients 2 --pings 3

Like Qt's ``DtlsAssociation``, each association has its own UDP socket, is named
``Alice (clone number N)`` and uses that name as its PSK identity with the demo key
``1a 2b 3c 4d 5e 6f``; it sends ``I am <name>, please, accept our ping <n>`` right after the
handshake and then every ``--interval`` seconds, and shows every reply.  Qt's client pings
forever; ``--pings`` stops after that many replies.  Leaving the ``async with`` block (at the
end, or on Ctrl-C) sends close_notify.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import trio

from trio_dtls_server import (
    DEFAULT_PORT,
    DatagramReceived,
    DTLSClient,
    HandshakeError,
    ServerEvent,
)
from trio_dtls_server.qt import QT_DEMO_KEY


def describe(event: ServerEvent, *, hex_bytes: int | None = None) -> str:
    """One line for a client event, worded as Qt's client window words it."""
    if not isinstance(event, DatagramReceived):
        return event.message
    ciphertext = event.ciphertext
    shown = ciphertext if hex_bytes is None else ciphertext[:hex_bytes]
    dump = shown.hex(" ") + (" ..." if len(shown) < len(ciphertext) else "")
    text = event.plaintext.decode("utf-8", "replace")
    return f"{event.message}: {dump} As plain text: {text!r}"


def print_event(event: ServerEvent) -> None:
    print(describe(event), flush=True)


async def ping(client: DTLSClient, name: str, pings: int | None, interval: float) -> None:
    """Qt's ping timer: ping 0 at once, then one every ``interval`` seconds."""
    number = 0
    while pings is None or number < pings:
        await client.send(f"I am {name}, please, accept our ping {number}".encode())
        number += 1
        await trio.sleep(interval)


async def run_association(
    host: str,
    port: int,
    name: str,
    *,
    key: bytes = QT_DEMO_KEY,
    pings: int | None = None,
    interval: float = 5.0,
    on_event: Callable[[ServerEvent], None] | None = None,
) -> tuple[int, list[bytes]]:
    """One association: handshake, ping, collect the replies.

    ``on_event`` gets the progress and every reply as events (default: print them the way
    Qt's window shows them).  Returns the local UDP port (the server's ACK names it) and the
    replies, once ``pings`` replies are in or the server closed the connection.  Raises
    :class:`HandshakeError` if the handshake fails (the reason has been reported already).
    """
    replies: list[bytes] = []
    client = await DTLSClient.connect(
        host, port, identity=name, key=key, on_event=on_event or print_event
    )
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(ping, client, name, pings, interval)
        # Iteration ends when the server sends close_notify ("shutdown alert received").
        async for reply in client:
            replies.append(reply)
            if len(replies) == pings:
                break
        nursery.cancel_scope.cancel()
    return client.local_address[1], replies


async def main() -> None:
    parser = argparse.ArgumentParser(description="Qt's DTLS client example, on Trio.")
    parser.add_argument("host", nargs="?", default="127.0.0.1", help="(127.0.0.1)")
    parser.add_argument("port", nargs="?", type=int, default=DEFAULT_PORT, help=f"({DEFAULT_PORT})")
    parser.add_argument("--clients", type=int, default=1, help="associations (1)")
    parser.add_argument("--pings", type=int, default=None, help="pings each (forever)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between pings (5)")
    arguments = parser.parse_args()

    async def one(number: int) -> None:
        name = f"Alice (clone number {number})"
        try:
            _, replies = await run_association(
                arguments.host,
                arguments.port,
                name,
                pings=arguments.pings,
                interval=arguments.interval,
            )
        except HandshakeError:
            return  # already reported
        print(f"{name}: {len(replies)} replies", flush=True)

    async with trio.open_nursery() as nursery:
        for number in range(arguments.clients):
            nursery.start_soon(one, number)


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        # Trio cancelled everything on the way out: each association sent close_notify.
        print("Interrupted.")
