"""Interop with Eclipse Californium Scandium (Java), the DTLS stack of many CoAP devices.

``tests/peers/scandium_client`` is a Scandium 3.14.0 client built by ``.ci/run`` (Maven) into
``target/scandium-client.jar``.  It speaks the line protocol every Connection ID (RFC 9146)
test client speaks (pion's too): ``--cid none|send-only|N`` on its command line, ``connected``
/ ``received <text>`` / ``error <message>`` on stdout, ``send <text>`` / ``reconnect`` /
``quit`` on stdin.  :class:`LineClient` below drives it; :data:`SCANDIUM` holds everything that
is Scandium's own (the java command line, the jar, how long a JVM may take).

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
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
import trio

from trio_dtls_server import DatagramReceived, DTLSServer
from trio_dtls_server._transport import Address
from trio_dtls_server._wire import ClientHello, MalformedDatagram, parse_initial_client_hello
from trio_dtls_server.qt import QT_DEMO_KEY

pytestmark = pytest.mark.interop

PEERS = Path(__file__).parent / "peers"
IDENTITY = "Scandium client"
#: TLS extension type of RFC 9146's connection_id (final codepoint; drafts used 53 and 254).
EXTENSION_CONNECTION_ID = 54


# -- the Scandium client: everything that is Scandium's own ------------------------------------


@dataclass(frozen=True)
class JavaPeer:
    """How to start a Java test client built by ``.ci/run`` and how long it may take."""

    #: The runnable jar (all dependencies inside), built by ``mvn package`` in its folder.
    jar: Path
    #: JVM flags for a quick start: C1 only (a short-lived client never needs C2) and the
    #: JDK's class-data-sharing archive where it has one.
    jvm_flags: tuple[str, ...] = ("-XX:TieredStopAtLevel=1", "-Xshare:auto")
    #: How long the JVM may take to start and finish its first handshake (0.3 s here; the
    #: machine is shared, and hitting this limit is a failure, not a measurement).
    startup_limit: float = 30.0

    def missing(self) -> str | None:
        """Why the client cannot run here, or None if it can."""
        if shutil.which("java") is None:
            return "java is not installed (JDK 17: .ci/run builds the Scandium client with Maven)"
        if not self.jar.is_file():
            return (
                f"{self.jar.relative_to(PEERS.parent.parent)} is not built: run "
                "`mvn -q -B package` in tests/peers/scandium_client (.ci/run does)"
            )
        return None

    def command(self, host: str, port: int, identity: str, key: bytes, cid: str) -> list[str]:
        """The client's command line (``cid``: ``none``, ``send-only`` or a length)."""
        return [
            "java",
            *self.jvm_flags,
            "-jar",
            str(self.jar),
            *("--host", host, "--port", str(port)),
            *("--identity", identity, "--key", key.hex(), "--cid", cid),
        ]


SCANDIUM = JavaPeer(jar=PEERS / "scandium_client" / "target" / "scandium-client.jar")
needs_scandium = pytest.mark.skipif(SCANDIUM.missing() is not None, reason=SCANDIUM.missing() or "")


# -- a driver for any client that speaks the CID test-client line protocol --------------------


class ClientFailed(AssertionError):
    """The client printed something else than the protocol line the test waited for."""


class LineClient:
    """One CID test-client process (pion's or Scandium's), driven by the shared line protocol.

    Use :meth:`running`; it kills the process if the test ends before the client does.  Every
    wait is bounded: a silent client fails the test with :class:`trio.TooSlowError`.
    """

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._buffer = bytearray()
        #: Every line the client printed so far (for assertion messages).
        self.lines: list[str] = []

    @classmethod
    @asynccontextmanager
    async def running(cls, command: Sequence[str]) -> AsyncIterator[LineClient]:
        """Start ``command``; stderr goes to the test's captured output."""
        process = await trio.lowlevel.open_process(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            yield cls(process)
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()

    async def line(self, limit: float = support.WAIT_LIMIT) -> str:
        """The next stdout line; "" once the client has closed its stdout."""
        with trio.fail_after(limit):
            while b"\n" not in self._buffer:
                chunk = await self._stdout.receive_some(65_536)
                if not chunk:
                    return ""
                self._buffer += chunk
        raw, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        text = raw.decode(errors="replace").rstrip("\r")
        self.lines.append(text)
        return text

    async def expect(self, expected: str, limit: float = support.WAIT_LIMIT) -> None:
        """Fail unless the next line is ``expected`` (``error ...`` lines show up here)."""
        got = await self.line(limit)
        if got != expected:
            raise ClientFailed(f"expected {expected!r}, client said {got!r} (all: {self.lines})")

    async def received(self, limit: float = support.WAIT_LIMIT) -> str:
        """The text of the next ``received <text>`` line."""
        got = await self.line(limit)
        if not got.startswith("received "):
            raise ClientFailed(f"expected 'received ...', client said {got!r} ({self.lines})")
        return got.removeprefix("received ")

    async def command(self, text: str) -> None:
        await self._stdin.send_all(text.encode() + b"\n")

    async def send(self, text: str) -> None:
        await self.command(f"send {text}")

    async def end_of_input(self, limit: float = support.WAIT_LIMIT) -> int:
        """Close the client's stdin (the protocol's EOF = ``quit``); returns the exit status."""
        await self._stdin.aclose()
        with trio.fail_after(limit):
            return await self.process.wait()

    async def quit(self, limit: float = support.WAIT_LIMIT) -> int:
        """``quit``: close_notify and exit; returns the exit status (0 when all went well)."""
        await self.command("quit")
        with trio.fail_after(limit):
            return await self.process.wait()


@asynccontextmanager
async def scandium(
    port: int, *, cid: str, host: str = "127.0.0.1", key: bytes = QT_DEMO_KEY
) -> AsyncIterator[LineClient]:
    """A Scandium client connected to ``host``:``port`` (it has printed ``connected``)."""
    async with LineClient.running(SCANDIUM.command(host, port, IDENTITY, key, cid)) as client:
        await client.expect("connected", limit=SCANDIUM.startup_limit)
        yield client


# -- what the server saw ----------------------------------------------------------------------


@asynccontextmanager
async def serving_recorded(
    server: DTLSServer, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[support.RunningServer, support.RecordingTransport]]:
    """:func:`support.serving`, on a transport that keeps a copy of every datagram."""
    transport = await support.RecordingTransport.bind(host, 0)
    async with support.serving(server, on=transport) as running:
        yield running, transport


def client_hellos(received: list[tuple[bytes, Address]]) -> list[ClientHello]:
    """Every initial ClientHello among the datagrams the server received, in arrival order."""
    hellos: list[ClientHello] = []
    for datagram, _source in received:
        try:
            hellos.append(parse_initial_client_hello(datagram).hello)
        except MalformedDatagram:
            continue  # a later flight or an application record
    return hellos


def extension(extensions: bytes, wanted: int) -> bytes | None:
    """The body of extension ``wanted`` in a ClientHello's extensions block, or None."""
    position = 0
    while position + 4 <= len(extensions):
        kind = int.from_bytes(extensions[position : position + 2], "big")
        length = int.from_bytes(extensions[position + 2 : position + 4], "big")
        if kind == wanted:
            return extensions[position + 4 : position + 4 + length]
        position += 4 + length
    return None


def connection_id_offers(hellos: list[ClientHello]) -> list[bytes | None]:
    """For each ClientHello, the CID it asks us to use (``connection_id`` body), or None."""
    offers: list[bytes | None] = []
    for hello in hellos:
        body = extension(hello.extensions, EXTENSION_CONNECTION_ID)
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


async def exchange(running: support.RunningServer, client: LineClient, count: int) -> Address:
    """Send ``count`` messages one at a time; each gets the ACK that names the client's address."""
    peers = set()
    for n in range(count):
        await client.send(f"hello {n}")
        peers.add(ack_peer(await client.received()))
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
    async with serving_recorded(server, host) as (running, transport):
        async with scandium(running.port, cid="none", host=host) as client:
            peer = await exchange(running, client, 3)
            assert await client.quit() == 0, client.lines
            closed = await running.events.wait_for("remote_closed")
        assert closed.peer == peer
        assert client.lines == ["connected", *[f"received to ({host}:{peer[1]}): ACK"] * 3]
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
    async with serving_recorded(server) as (running, transport):
        async with scandium(running.port, cid=cid) as client:
            peer = await exchange(running, client, 3)
            assert await client.quit() == 0, client.lines
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
        async with scandium(running.port, cid="none") as client:
            first = await exchange(running, client, 1)
            await client.command("reconnect")
            await running.events.wait_for("remote_closed")
            await client.expect("connected", limit=SCANDIUM.startup_limit)
            second = await exchange(running, client, 2)
            assert await client.end_of_input() == 0, client.lines  # EOF: quit
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
        command = SCANDIUM.command("127.0.0.1", running.port, IDENTITY, b"wrong key", "none")
        async with LineClient.running(command) as client:
            line = await client.line(SCANDIUM.startup_limit)
            assert line.startswith("error handshake failed: "), client.lines
            with trio.fail_after(support.WAIT_LIMIT):
                assert await client.process.wait() == 1
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
        command = SCANDIUM.command("127.0.0.1", fake_server.address[1], IDENTITY, QT_DEMO_KEY, cid)
        async with LineClient.running(command) as client, trio.open_nursery() as nursery:

            async def fail_on_any_line() -> None:
                line = await client.line(SCANDIUM.startup_limit)  # e.g. "error ..."
                raise ClientFailed(f"no ClientHello, and the client said {line!r}")

            nursery.start_soon(fail_on_any_line)
            datagram, _ = await fake_server.receive(SCANDIUM.startup_limit)
            nursery.cancel_scope.cancel()
    [wanted] = connection_id_offers([parse_initial_client_hello(datagram).hello])
    if offer is None:
        assert wanted is None, wanted.hex()
    else:
        assert wanted is not None and len(wanted) == offer, wanted


@needs_scandium
async def test_scandium_refuses_a_cid_it_cannot_encode() -> None:
    """``--cid 255`` is legal in RFC 9146 but not in Scandium 3.14: an error before any send."""
    command = SCANDIUM.command("127.0.0.1", 9, IDENTITY, QT_DEMO_KEY, "255")
    async with LineClient.running(command) as client:
        line = await client.line(SCANDIUM.startup_limit)
        assert line == "error --cid must be none, send-only or 1..254 (Scandium's limit), not 255"
        with trio.fail_after(support.WAIT_LIMIT):
            assert await client.process.wait() == 1


@needs_scandium
async def test_scandium_says_connected_only_after_the_handshake() -> None:
    """Scandium connects lazily; the client's ``connected`` must wait for the real handshake.

    A server that never answers: the client sends its ClientHello and, a retransmission timer
    later, sends it again -- and has printed nothing in between (no ``connected``).
    """
    with support.RawSocket.bind() as silent_server:
        command = SCANDIUM.command(
            "127.0.0.1", silent_server.address[1], IDENTITY, QT_DEMO_KEY, "none"
        )
        async with LineClient.running(command) as client, trio.open_nursery() as nursery:

            async def fail_on_any_line() -> None:
                line = await client.line(SCANDIUM.startup_limit)
                raise ClientFailed(f"the client said {line!r} to a server that never answered")

            nursery.start_soon(fail_on_any_line)
            first, _ = await silent_server.receive(SCANDIUM.startup_limit)
            again, _ = await silent_server.receive(SCANDIUM.startup_limit)
            nursery.cancel_scope.cancel()
    first_hello = parse_initial_client_hello(first).hello
    assert parse_initial_client_hello(again).hello.random == first_hello.random  # a retransmission
    assert client.lines == []
