"""Interop with Eclipse Californium Scandium (Java), the DTLS stack of many CoAP devices.

``tests/peers/scandium_client`` is a Scandium 3.14.0 client built by ``.ci/run`` (Maven) into
``target/scandium-client.jar``.  It speaks the line protocol every Connection ID (RFC 9146)
test client speaks (pion's too): ``--cid none|send-only|N`` on its command line, ``connected``
/ ``received <text>`` / ``error <message>`` on stdout, ``send <text>`` / ``reconnect`` /
``quit`` on stdin.  ``tests/cid_peers.py`` drives it, as it drives pion's; its
:data:`~cid_peers.SCANDIUM` holds everything that is Scandium's own (the java command line, the
jar, how long a JVM may take to start).

What these tests show, today (the server does not negotiate Connection IDs yet):

* a Scandium client offering no CID, an empty one (``send-only``) or asking for a 4-byte one
  completes a PSK handshake with our server, gets the default handler's ACK for each datagram,
  and its ``quit`` reaches us as a close_notify;
* ``reconnect`` is a new *full* handshake (not a resumption), so a later test that counts
  handshakes (the no-CID relay case) counts the right thing;
* the CID offer really goes out: the ClientHellos our server received carry extension 54 with
  the requested length, an empty one for ``send-only``, and none for ``none``.  Without this a
  CID test could pass against a client that never asked for a CID.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import pytest
import support
from cid_peers import SCANDIUM, PeerProcess, running_peer

from trio_dtls_server import DatagramReceived, DTLSServer
from trio_dtls_server._transport import Address
from trio_dtls_server._wire import (
    ClientHello,
    ExtensionType,
    MalformedDatagram,
    parse_initial_client_hello,
)
from trio_dtls_server.qt import QT_DEMO_KEY

pytestmark = pytest.mark.interop

IDENTITY = "Scandium client"

needs_scandium = pytest.mark.skipif(SCANDIUM.missing() is not None, reason=SCANDIUM.missing() or "")


def scandium(
    server: Address, *, cid: str, key: bytes = QT_DEMO_KEY, connect: bool = True
) -> AbstractAsyncContextManager[PeerProcess]:
    """A Scandium client for ``server``; with ``connect``, it has printed ``connected``."""
    return running_peer(SCANDIUM, SCANDIUM.argv(server, IDENTITY, key, cid), connect=connect)


# -- what the server saw ----------------------------------------------------------------------


def client_hellos(received: Sequence[tuple[bytes, Address]]) -> list[ClientHello]:
    """Every initial ClientHello among the datagrams the server received, in arrival order."""
    hellos: list[ClientHello] = []
    for datagram, _source in received:
        try:
            hellos.append(parse_initial_client_hello(datagram).hello)
        except MalformedDatagram:
            continue  # a later flight or an application record
    return hellos


def connection_id_offers(hellos: list[ClientHello]) -> list[bytes | None]:
    """For each ClientHello, the CID it asks us to use (``connection_id`` body), or None."""
    offers: list[bytes | None] = []
    for hello in hellos:
        body = support.hello_extension(hello.extensions, ExtensionType.connection_id)
        if body is not None:
            # opaque cid<0..255>: one length byte, then the CID the client wants to receive.
            assert len(body) == 1 + body[0], body.hex()
            body = body[1:]
        offers.append(body)
    return offers


ACK = re.compile(r"to \((?P<host>[^()]+):(?P<port>\d+)\): ACK")


def ack_peer(reply: str) -> Address:
    """The client address named in the default handler's reply ``to (host:port): ACK``."""
    match = ACK.fullmatch(reply)
    assert match is not None, reply
    return match["host"], int(match["port"])


# -- the tests ------------------------------------------------------------------------------


async def exchange(running: support.RunningServer, client: PeerProcess, count: int) -> Address:
    """Send ``count`` messages one at a time; each gets the ACK that names the client's address."""
    peers = set()
    for n in range(count):
        await client.send(f"hello {n}")
        peers.add(ack_peer(await client.expect("received")))
    [peer] = peers
    await support.settle()
    received = [e for e in running.events.of_type(DatagramReceived) if e.peer == peer]
    assert [event.plaintext for event in received][-count:] == [
        f"hello {n}".encode() for n in range(count)
    ]
    return peer


@needs_scandium
@pytest.mark.parametrize("host", support.LOOPBACK_HOSTS)
async def test_scandium_without_cid_gets_acks_and_its_close_reaches_us(host: str) -> None:
    server = DTLSServer(QT_DEMO_KEY)
    async with support.serving_recorded(server, host) as (running, transport):
        async with scandium(running.address, cid="none") as client:
            peer = await exchange(running, client, 3)
            assert await client.quit() == 0, client.transcript
            closed = await running.events.wait_for("remote_closed")
        assert closed.peer == peer
        assert client.transcript == ["connected", *[f"received to ({host}:{peer[1]}): ACK"] * 3]
        # Scandium offers ECDHE-PSK (RFC 8442 GCM/CCM, which OpenSSL lacks) and plain-PSK
        # AES-GCM/CCM/CCM_8; the server's order picks plain-PSK AES-256-GCM.
        [complete] = running.events.messages("handshake_complete")
        assert "Session cipher: PSK-AES256-GCM-SHA384; session protocol: DTLS 1.2." in complete
        hellos = client_hellos(transport.received_from)
        assert hellos and connection_id_offers(hellos) == [None] * len(hellos)
        statistics = server.statistics()
        assert statistics.handshakes_completed == 1
        assert statistics.messages_received == statistics.messages_sent == 3
        assert statistics.remote_closed == 1
        assert statistics.peers == 0


@needs_scandium
@pytest.mark.parametrize(
    ("cid", "requested"), [("4", 4), ("send-only", 0)], ids=["cid-4", "send-only"]
)
async def test_scandium_offering_a_cid_is_served_without_one_today(
    cid: str, requested: int
) -> None:
    """The offer goes out (extension 54, the requested length); today's server ignores it."""
    server = DTLSServer(QT_DEMO_KEY)
    async with support.serving_recorded(server) as (running, transport):
        async with scandium(running.address, cid=cid) as client:
            peer = await exchange(running, client, 3)
            assert await client.quit() == 0, client.transcript
            closed = await running.events.wait_for("remote_closed")
        assert closed.peer == peer
        hellos = client_hellos(transport.received_from)
        # The first hello and the one that returns our cookie: each carries the same offer.
        assert len(hellos) >= 2
        offers = connection_id_offers(hellos)
        assert all(offer is not None and len(offer) == requested for offer in offers), offers
        assert len(set(offers)) == 1, offers  # RFC 6347 4.2.1: the cookie hello repeats it
        statistics = server.statistics()
        assert statistics.handshakes_completed == 1
        assert statistics.messages_received == statistics.messages_sent == 3
        assert statistics.remote_closed == 1


@needs_scandium
async def test_scandium_reconnect_is_a_new_full_handshake() -> None:
    """``reconnect``: close_notify, then a full handshake (Scandium would rather resume).

    The client ends on EOF here (the protocol's other way to quit): close_notify again.
    """
    server = DTLSServer(QT_DEMO_KEY)
    async with support.serving(server) as running:
        async with scandium(running.address, cid="none") as client:
            first = await exchange(running, client, 1)
            await client.command_line("reconnect")
            await running.events.wait_for("remote_closed")
            await client.expect("connected")
            second = await exchange(running, client, 2)
            assert await client.end_input() == 0, client.transcript  # EOF: quit
            await running.events.wait_for("remote_closed", count=2)
        assert first == second  # same socket: the server saw the same address twice
        statistics = server.statistics()
        assert statistics.handshakes_completed == 2
        assert statistics.handshakes_resumed == 0
        assert statistics.remote_closed == 2
        assert statistics.messages_received == 3


@needs_scandium
async def test_scandium_with_a_wrong_key_reports_an_error() -> None:
    """A failed handshake is an ``error`` line and exit status 1, never a ``connected``."""
    server = DTLSServer(QT_DEMO_KEY)
    async with support.serving(server) as running:
        async with scandium(running.address, cid="none", key=b"wrong key", connect=False) as client:
            message = await client.expect("error")
            assert message.startswith("handshake failed: "), client.transcript
            assert await client.exited() == 1
        await running.events.wait_for("handshake_failed")
        assert server.statistics().handshakes_completed == 0


@needs_scandium
@pytest.mark.parametrize(
    ("cid", "offer"),
    [("none", None), ("send-only", 0), ("1", 1), ("4", 4), ("254", 254)],
    ids=["none", "send-only", "cid-1", "cid-4", "cid-254"],
)
async def test_scandium_connection_id_offer_on_the_wire(cid: str, offer: int | None) -> None:
    """The first ClientHello, caught by a plain UDP socket that never answers.

    254 is the longest CID Scandium can ask for (RFC 9146 allows 255; the client refuses 255
    with an ``error`` line, see :func:`test_scandium_refuses_a_cid_it_cannot_encode`).

    A test of the peer itself: it shows the later CID tests have a client that asks for a CID
    of the length they think (the server-side tests above see the same through the server).
    """
    with support.RawSocket.bind() as fake_server:
        async with (
            scandium(fake_server.address, cid=cid, connect=False) as client,
            client.silent(),  # e.g. an "error ..." line fails the test at once
        ):
            datagram, _ = await fake_server.receive(SCANDIUM.startup_timeout)
    [wanted] = connection_id_offers([parse_initial_client_hello(datagram).hello])
    if offer is None:
        assert wanted is None, wanted.hex()
    else:
        assert wanted is not None and len(wanted) == offer, wanted


@needs_scandium
async def test_scandium_refuses_a_cid_it_cannot_encode() -> None:
    """``--cid 255`` is legal in RFC 9146 but not in Scandium 3.14: an error before any send."""
    async with scandium(("127.0.0.1", 9), cid="255", connect=False) as client:
        message = await client.expect("error")
        assert message == "--cid must be none, send-only or 1..254 (Scandium's limit), not 255"
        assert await client.exited() == 1


@needs_scandium
async def test_scandium_says_connected_only_after_the_handshake() -> None:
    """Scandium connects lazily; the client's ``connected`` must wait for the real handshake.

    A server that never answers: the client sends its ClientHello and, a retransmission timer
    later, sends it again -- and has printed nothing in between (no ``connected``).
    """
    with support.RawSocket.bind() as silent_server:
        async with scandium(silent_server.address, cid="none", connect=False) as client:
            async with client.silent():
                first, _ = await silent_server.receive(SCANDIUM.startup_timeout)
                again, _ = await silent_server.receive(SCANDIUM.startup_timeout)
            assert client.pending() == []
    first_hello = parse_initial_client_hello(first).hello
    assert parse_initial_client_hello(again).hello.random == first_hello.random  # a retransmission
    assert client.transcript == []
