"""Qt's "Stop listening": the server stops taking new clients and keeps the ones it has."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hostile_support import ack_for, connect, serving_psk
from support import settle

from trio_dtls_server import HandshakeError


async def test_stop_accepting_ignores_new_clients_and_keeps_known_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving_psk() as served:
        server = served.server
        known = await connect(served.address)
        assert server.is_listening()

        server.stop_accepting()
        assert not server.is_listening()
        await settle()  # the event log is a subscriber task
        assert served.events.messages("not_accepting") == [
            "Server is not accepting new connections"
        ]
        cookies_before = server.statistics().cookies_sent
        with pytest.raises(HandshakeError, match="not finished within 5 s"):
            await connect(served.address, handshake_timeout=5.0)
        stats = server.statistics()
        assert stats.cookies_sent == cookies_before  # new clients get no answer at all
        assert stats.drops["not accepting new clients"] >= 1
        assert (stats.peers, stats.handshakes_started) == (1, 1)
        await known.round_trip(b"still here", ack_for(known.address))

        server.resume_accepting()
        assert server.is_listening()
        newcomer = await connect(served.address)
        await newcomer.round_trip(b"hello", ack_for(newcomer.address))
        assert server.statistics().peers == 2
        await newcomer.client.aclose()
        await known.client.aclose()
