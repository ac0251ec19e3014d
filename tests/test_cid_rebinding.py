"""A NAT rebinding mid-association, with and without Connection IDs (RFC 9146), real clients.

Two independent DTLS stacks -- pion/dtls v3 (Go) and Eclipse Californium Scandium (Java),
driven through ``tests/cid_peers.py`` -- talk to our server through the relay of
``tests/relay.py``.  Mid-association the relay rebinds, so the server sees the client's
datagrams arrive from a new port, or from a new host (127.0.0.1 -> 127.0.0.2), as behind a NAT
whose mapping expired while the device slept.

* **Without a CID** the server cannot know the datagrams from the new address are the
  client's: it drops them (``not a ClientHello and no association``), the message goes
  unanswered, and only a new handshake brings the client back.  That is RFC 6347's behaviour,
  and every DTLS 1.2 server's that keys associations by address.
* **With a CID** (the client asking for a 4-byte CID, or offering an empty one and only sending
  the server's), the server finds the association by the CID in the record, moves it to the new
  address once the record authenticates and is the newest (RFC 9146 section 6), says so
  (``peer_moved``, naming both addresses) and answers there: no new handshake.

Each test prints how long the first ACK took after the rebinding (``-s`` shows it), so the
difference is measured, not claimed: with a CID one round trip; without, the drop plus a new
handshake (and, for a real client, however long it waits before it gives up on an answer).
"""

from __future__ import annotations

import pytest
import support
import trio
from cid_peers import PION, SCANDIUM, PeerCommand, PeerProcess, running_peer
from relay import open_relay

from trio_dtls_server import DTLSServer, ServerConfig, Supervisor
from trio_dtls_server._events import peer_info
from trio_dtls_server.qt import QT_DEMO_IDENTITY_HINT, QT_DEMO_KEY

pytestmark = pytest.mark.interop

#: What the server's statistics call a datagram from an address it has no association with.
DROPPED_UNKNOWN_PEER = "not a ClientHello from an unknown peer"

STACKS = [
    pytest.param(
        PION,
        id="pion",
        marks=pytest.mark.skipif(PION.missing() is not None, reason=PION.missing() or ""),
    ),
    pytest.param(
        SCANDIUM,
        id="scandium",
        marks=pytest.mark.skipif(SCANDIUM.missing() is not None, reason=SCANDIUM.missing() or ""),
    ),
]


def ack_server() -> DTLSServer:
    """Qt's example server: the default handler answers ``to (host:port): ACK``."""
    return DTLSServer(QT_DEMO_KEY, identity_hint=QT_DEMO_IDENTITY_HINT)


async def acked(peer: PeerProcess, text: str) -> str:
    """Send ``text``; the next line must be the server's ACK. Returns the reply."""
    await peer.send(text)
    reply = await peer.expect("received")
    assert reply.startswith("to (") and reply.endswith("): ACK"), reply
    return reply


def report(capsys: pytest.CaptureFixture[str], label: str, seconds: float) -> None:
    with capsys.disabled():
        print(f"\n[{label}] first ACK {seconds * 1000:.1f} ms after the rebinding")


@pytest.mark.parametrize("stack", STACKS)
async def test_without_cid_a_rebinding_costs_a_new_handshake(
    stack: PeerCommand, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ack_server()
    async with (
        support.serving(server) as running,
        open_relay(running.address) as relay,
        running_peer(stack, stack.argv(relay.front_address, stack.name, QT_DEMO_KEY)) as peer,
    ):
        await acked(peer, "hello")
        assert server.statistics().handshakes_completed == 1

        moved = await relay.rebind()
        started = trio.current_time()
        await peer.send("after the rebinding")
        drop = await running.events.wait_for(
            "unexpected_datagram", where=lambda event: event.peer == moved
        )
        assert "no association" in drop.message
        assert server.statistics().drops[DROPPED_UNKNOWN_PEER] >= 1
        assert peer.pending() == []  # no answer: the server dropped it
        assert running.events.with_code("peer_moved") == []

        await peer.reconnect()  # a new (full) handshake
        reply = await acked(peer, "after the new handshake")
        elapsed = trio.current_time() - started
        assert server.statistics().handshakes_completed == 2
        assert peer_info(moved) in reply  # the new association is at the relay's new address
    report(capsys, f"{stack.name} without CID (drop + new handshake)", elapsed)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize(
    ("cid", "new_host"),
    [
        pytest.param("4", "127.0.0.2", id="cid-4-new-host"),
        pytest.param("send-only", None, id="send-only-new-port"),
    ],
)
async def test_with_cid_the_association_follows_the_client(
    stack: PeerCommand, cid: str, new_host: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ack_server()  # ServerConfig.connection_id_length: 6 by default
    async with (
        support.serving(server) as running,
        open_relay(running.address) as relay,
        running_peer(stack, stack.argv(relay.front_address, stack.name, QT_DEMO_KEY, cid)) as peer,
    ):
        await acked(peer, "hello")
        old = relay.upstream_address
        assert server.statistics().handshakes_completed == 1

        moved = await relay.rebind(host=new_host)
        assert moved != old
        if new_host is not None:
            assert (old[0], moved[0]) == ("127.0.0.1", new_host)
        started = trio.current_time()
        await peer.send("after the rebinding")
        # Fail at once, not after a timeout, if the server drops the record instead.
        seen = await running.events.wait_for(
            where=lambda event: (
                event.peer == moved and (event.code == "peer_moved" or event.severity != "info")
            )
        )
        assert seen.code == "peer_moved", seen
        reply = await peer.expect("received")
        elapsed = trio.current_time() - started

        assert peer_info(old) in seen.message
        assert peer_info(moved) in seen.message
        assert seen.severity == "info"
        assert reply == f"to {peer_info(moved)}: ACK"  # Qt's reply names the new address
        await acked(peer, "and again")
        statistics = server.statistics()
        assert statistics.handshakes_completed == 1  # no new handshake
        assert statistics.drops.get(DROPPED_UNKNOWN_PEER, 0) == 0
    report(capsys, f"{stack.name} --cid {cid}", elapsed)


#: Workers in the group of the next test, and how often its client changes address.
WORKERS = 4
REBINDINGS = 6


@pytest.mark.parametrize("stack", STACKS)
async def test_with_workers_a_rebinding_client_stays_with_its_worker(stack: PeerCommand) -> None:
    """``--workers 4``: each rebinding would land on a worker the kernel's hash picks (a 1 in 4
    chance of the right one; all six right by chance: 1 in 4,096), but the CID's first byte
    names the worker that holds the association, and the group's BPF program steers the
    record there: one handshake in all, every message answered, every move made."""
    supervisor = Supervisor(
        QT_DEMO_KEY,
        identity_hint=QT_DEMO_IDENTITY_HINT,
        workers=WORKERS,
        config=ServerConfig(connection_id_length=6),
        statistics_interval=0.05,
    )
    async with trio.open_nursery() as nursery:
        address = await nursery.start(supervisor.serve, "127.0.0.1", 0)
        assert supervisor.steers_connection_ids
        async with (
            open_relay(address) as relay,
            running_peer(
                stack, stack.argv(relay.front_address, stack.name, QT_DEMO_KEY, "4")
            ) as peer,
        ):
            await acked(peer, "hello")
            for rebinding in range(REBINDINGS):
                await relay.rebind(host="127.0.0.2" if rebinding % 2 == 0 else "127.0.0.1")
                await acked(peer, f"after rebinding {rebinding + 1}")

            def totals() -> tuple[int, int, int]:
                workers = supervisor.worker_statistics()
                return (
                    sum(s.handshakes_completed for s in workers),
                    sum(s.peer_moves for s in workers),
                    sum(sum(s.drops.values()) for s in workers),
                )

            with trio.fail_after(10):  # the workers report their counters every 0.05 s
                while totals()[1] < REBINDINGS:
                    await trio.sleep(0.05)
            assert totals() == (1, REBINDINGS, 0)
        nursery.cancel_scope.cancel()
