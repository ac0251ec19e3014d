"""RFC 6347 §4.2.8: a new handshake from a known address replaces the association only once
it completes.

A client that restarts on the same address and port sends a new ClientHello; after the cookie
exchange the server starts a new handshake (Qt's example would lock such a client out).  But
a cookie'd ClientHello can be captured and replayed from the victim's address within the
cookie's lifetime, so the established association is kept aside until the new handshake
finishes: a replay that never completes costs the real client one handshake timeout, not its
association.  (The real-restart case is in tests/test_server.py and, with Qt's own client, in
tests/test_interop_stacks.py.)
"""

from __future__ import annotations

import trio
import trio.testing
from hostile_support import ack_for, connect, replay_a_foreign_hello, serving_psk

from trio_dtls_server import ServerConfig


async def test_a_replayed_hello_that_never_completes_leaves_the_association_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving_psk(ServerConfig(handshake_timeout=10.0)) as served:
        good = await connect(served.address)
        await good.round_trip(b"before", ack_for(good.address))

        # The "replay": another client's cookie'd hello, sent from the victim's address.
        await replay_a_foreign_hello(good)

        stats = served.server.statistics()
        assert (stats.handshakes_started, stats.handshaking, stats.replacements) == (2, 1, 0)
        # Meanwhile the real client's application data still reaches its association.
        await good.round_trip(b"during", ack_for(good.address))
        # The attacker never answers; at the deadline the new handshake fails and the
        # established association is back in the table, keys and all.
        await trio.sleep(10.5)
        stats = served.server.statistics()
        assert stats.handshakes_failed == {"deadline": 1}
        assert (stats.peers, stats.handshaking, stats.replacements) == (1, 0, 0)
        assert served.events.with_code("replacement_failed")
        await good.round_trip(b"after", ack_for(good.address))
        await good.client.aclose()
