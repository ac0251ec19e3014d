"""Qt's "DTLS server" example, on Trio: the seed of this project.

Run it, then point ``secure_udp_client.py`` (or ``openssl s_client -dtls1_2 -psk 1a2b3c4d5e6f``)
at it::

    python examples/secure_udp_server.py --port 22334

Like Qt's example it accepts any PSK identity with the demo key ``1a 2b 3c 4d 5e 6f``, sends
the identity hint "Qt DTLS example server", answers every datagram with ``to (addr:port): ACK``
and shows what happens -- the four kinds of event Qt's window shows.  Ctrl-C (or SIGTERM)
stops it: every connected client gets a close_notify first.

Events are printed by ``on_event``, which the server calls at once, like Qt's signals: a
message's line is out before its ACK is sent.  (``server.events()`` is the other way to get
them: a bounded stream read in a task of your own, for consumers that may be slow.)

The demo key is public.  A real server passes its own keys: ``DTLSServer({"sensor-17": key})``.
"""

from __future__ import annotations

import argparse
import signal

import trio

from trio_dtls_server import (
    DEFAULT_PORT,
    DatagramReceived,
    DTLSServer,
    ServerEvent,
)
from trio_dtls_server.qt import QT_DEMO_IDENTITY_HINT, QT_DEMO_KEY


def describe(event: ServerEvent, *, hex_bytes: int | None = None) -> str:
    """One line for an event, worded as Qt's server window words it.

    A received message shows the DTLS datagram in hex (Qt's ``toHex(' ')``), shortened to
    ``hex_bytes`` bytes if given, and the plaintext (``repr``, so a peer cannot send
    terminal control codes to your screen).
    """
    if not isinstance(event, DatagramReceived):
        return event.message
    ciphertext = event.ciphertext
    shown = ciphertext if hex_bytes is None else ciphertext[:hex_bytes]
    dump = shown.hex(" ") + (" ..." if len(shown) < len(ciphertext) else "")
    text = event.plaintext.decode("utf-8", "replace")
    return f"{event.message} DTLS datagram: {dump} As plain text: {text!r}"


def print_event(event: ServerEvent) -> None:
    print(describe(event), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description="Qt's DTLS server example, on Trio.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"({DEFAULT_PORT})")
    arguments = parser.parse_args()

    # One key for every identity, and Qt's identity hint: exactly what Qt's example does.
    server = DTLSServer(QT_DEMO_KEY, identity_hint=QT_DEMO_IDENTITY_HINT, on_event=print_event)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            # Returns once the socket is bound; the server then runs until cancelled.
            await nursery.start(server.serve, arguments.host, arguments.port)
            async for _ in signals:
                break
            # Cancelling is how a Trio server stops: aclose() cancels the server's own nursery
            # and waits; every peer gets close_notify on the way.
            await server.aclose()
            nursery.cancel_scope.cancel()
    print("Stopped.", flush=True)


if __name__ == "__main__":
    trio.run(main)
