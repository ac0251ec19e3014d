"""The Qt example's demo constants and handler.

This project began as a port of Qt's "DTLS server" example and its "DTLS client" companion.
What only that example needs lives here, out of the library's top-level namespace:

* :data:`QT_DEMO_KEY` -- Qt's published pre-shared key, ``1a 2b 3c 4d 5e 6f``;
* :data:`QT_DEMO_IDENTITY_HINT` -- the identity hint Qt's server sends;
* :func:`qt_ack_handler` -- Qt's reply to every datagram, ``to (addr:port): ACK``.  It is also
  :class:`~trio_dtls_server.DTLSServer`'s default handler, so a server built without
  ``handler=`` answers exactly as Qt's example does.

The command line (``trio-dtls-server serve`` and ``client``) and the examples under
``examples/`` use them; an application normally uses none of them.  The demo key is public:
anyone can connect to a server that uses it.
"""

# No ``from __future__ import annotations`` and a private alias of ``typing``: this module's
# namespace holds only its three public names (tests/test_public_api.py checks it).
import typing as _typing

if _typing.TYPE_CHECKING:
    from ._connection import DTLSConnection

__all__ = ["QT_DEMO_IDENTITY_HINT", "QT_DEMO_KEY", "qt_ack_handler"]

#: Qt's example key, ``1a 2b 3c 4d 5e 6f``.  It is published: for demos only.
QT_DEMO_KEY = bytes.fromhex("1a2b3c4d5e6f")
#: Qt's example identity hint.
QT_DEMO_IDENTITY_HINT = "Qt DTLS example server"


async def qt_ack_handler(connection: "DTLSConnection") -> None:
    """The default handler, Qt's: answer every datagram with ``to (addr:port): ACK``.

    The address is the peer's at the time of the reply: a client with a connection ID that
    moved (a NAT rebinding) reads its new address.
    """
    async for _ in connection:
        await connection.send(f"to {connection.peer_info}: ACK".encode("latin-1"))
