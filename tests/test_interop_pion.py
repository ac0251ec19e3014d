"""Interop with pion/dtls v3 (Go): what the rebinding tests rely on.

The NAT-rebinding tests, with and without Connection IDs, run pion and Scandium alike in
``tests/test_cid_rebinding.py``.  Here: the pion client (``tests/peers/pion_client``, driven
through ``tests/cid_peers.py``) reports a failed handshake and refuses a bad option the way the
harness expects.
"""

from __future__ import annotations

import pytest
import support
from cid_peers import PION, running_peer

from trio_dtls_server import DTLSServer
from trio_dtls_server.qt import QT_DEMO_IDENTITY_HINT, QT_DEMO_KEY

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(PION.missing() is not None, reason=PION.missing() or ""),
]

IDENTITY = "pion client"


def ack_server() -> DTLSServer:
    """Qt's example server: the default handler answers ``to (host:port): ACK``."""
    return DTLSServer(QT_DEMO_KEY, identity_hint=QT_DEMO_IDENTITY_HINT)


async def test_a_wrong_key_ends_in_an_error_line() -> None:
    """The client reports a failed handshake on stdout and exits 1 (what the harness relies on)."""
    server = ack_server()
    async with support.serving(server) as running:
        argv = PION.argv(running.address, IDENTITY, bytes(16))
        async with running_peer(PION, argv, connect=False) as peer:
            message = await peer.expect("error")
            assert "handshake" in message
            assert await peer.exited() == 1
        await running.events.wait_for("handshake_failed")
    assert server.statistics().handshakes_completed == 0


async def test_a_bad_cid_option_is_refused() -> None:
    async with running_peer(
        PION, PION.argv(("127.0.0.1", 9), IDENTITY, QT_DEMO_KEY, "0"), connect=False
    ) as peer:
        assert "--cid" in await peer.expect("error")
        assert await peer.exited() == 1
