"""Interop with Mbed TLS, the DTLS stack most IoT devices run, as a real client of our server.

``tests/peers/mbedtls_client.py`` drives Mbed TLS 2.28 (bundled in the ``python-mbedtls``
wheel) as a subprocess, the way ``test_interop_stacks.py`` drives Qt, node-dtls-client and
tinydtls: our server runs in the test's own Trio run on loopback, the client prints
``connected cipher=<Mbed TLS name>`` and one ``reply: ...`` line per answer, or ``error: ...``.

What the tests show:

* Mbed TLS's default offer (every suite of its build, ~100 of them, CBC and AEAD mixed) goes
  through our stateless cookie and ends on the server's first choice,
  ``ECDHE-PSK-CHACHA20-POLY1305``; after the handshake our own AEAD record layer
  (``openssl_released``) talks to Mbed TLS's, both ways, on IPv4 and IPv6; its close_notify
  is seen.
* Each PSK suite Mbed TLS can be limited to -- AES-GCM (128, 256), ChaCha20-Poly1305 plain and
  ECDHE, AES-CCM (128, 256), the CCM_8 suites of RFC 7925 (with ``ciphers="iot"``) and an
  AES-CBC suite (with ``ciphers="compat"``, where OpenSSL keeps the records) -- lands on the
  matching OpenSSL suite and carries pings both ways.  CBC alone against ``default`` gets our
  ``handshake_failure`` alert.
* A wrong key ends in our ``bad_record_mac`` alert, an unknown identity in our
  ``unknown_psk_identity`` alert, each after Mbed TLS's first ClientKeyExchange flight: Mbed
  TLS stops at once, it never retransmits.
* 1,200-byte records and a burst of 20 pings sent back to back come back whole and in order.
* With a 64-byte MTU, Mbed TLS cuts its ClientKeyExchange into fragments across datagrams, and
  the handshake completes.
* When our final flight (ChangeCipherSpec + Finished) is lost, Mbed TLS's retransmission
  reaches a server that has already handed the connection to its own record layer, which
  sends the flight again; the handshake completes (one second: Mbed TLS's timer).

The whole module skips (with the reason) where ``python-mbedtls`` is not installed: it comes
with the ``interop`` extra.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import support
import trio
import trio.socket
from interop_support import (
    IDENTITY,
    PEERS,
    AckLog,
    PeerRun,
    ack_for,
    client_hellos,
    run_peer,
)

from trio_dtls_server import (
    DatagramReceived,
    DTLSConnection,
    DTLSServer,
    ServerConfig,
)
from trio_dtls_server._transport import Address
from trio_dtls_server._wire import (
    ContentType,
    HandshakeFragment,
    HandshakeType,
    parse_handshake_fragment,
    parse_records,
)
from trio_dtls_server.qt import QT_DEMO_IDENTITY_HINT, QT_DEMO_KEY

pytestmark = pytest.mark.interop

WRONG_KEY = bytes.fromhex("0102030405")


def _mbedtls_suites() -> tuple[str | None, frozenset[str]]:
    """Why Mbed TLS cannot run here (None if it can), and the suites its build has.

    Asked in a child process, as the client script will run: a wheel that installed but does
    not load (a missing shared library, another platform) skips rather than errors.
    """
    probe = subprocess.run(
        [sys.executable, "-c", "from mbedtls import tls; print(*tls.ciphers_available())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"python-mbedtls is not usable here ({last_line}): "
            "pip install python-mbedtls, or the interop extra",
            frozenset(),
        )
    return None, frozenset(probe.stdout.split())


MBEDTLS_MISSING, MBEDTLS_SUITES = _mbedtls_suites()
if MBEDTLS_MISSING is not None:
    pytest.skip(MBEDTLS_MISSING, allow_module_level=True)


# -- helpers ----------------------------------------------------------------------------------


def mbedtls_client(
    host: str,
    port: int,
    message: str,
    *,
    key: bytes = QT_DEMO_KEY,
    identity: str = IDENTITY,
    ciphers: tuple[str, ...] = (),
    pings: int = 1,
    burst: bool = False,
) -> list[str]:
    """The command running ``tests/peers/mbedtls_client.py`` (``%n`` in ``message``: ping n)."""
    script = str(PEERS / "mbedtls_client.py")
    command = [sys.executable, script, str(port), host, message, identity, key.hex()]
    command += ["--pings", str(pings)]
    if ciphers:
        command += ["--ciphers", ",".join(ciphers)]
    if burst:
        command.append("--burst")
    return command


def reply_lines(run: PeerRun) -> list[str]:
    return [line.removeprefix("reply: ") for line in run.lines if line.startswith("reply: ")]


@dataclass
class EchoLog:
    """A server handler that sends every plaintext back after ``echo: ``."""

    connections: list[DTLSConnection] = field(default_factory=list)

    async def __call__(self, connection: DTLSConnection) -> None:
        self.connections.append(connection)
        async for plaintext in connection:
            await connection.send(b"echo: " + plaintext)


def qt_like_server(*, ciphers: str = "default") -> tuple[DTLSServer, AckLog]:
    """One key for our identity, Qt's identity hint (Mbed TLS reads it), Qt's ACK."""
    log = AckLog()
    server = DTLSServer(
        {IDENTITY: QT_DEMO_KEY},
        config=ServerConfig(ciphers=ciphers, identity_hint=QT_DEMO_IDENTITY_HINT),
        handler=log,
    )
    return server, log


# -- Mbed TLS's default offer ----------------------------------------------------------------


@pytest.mark.parametrize("host", support.LOOPBACK_HOSTS)
async def test_mbedtls_default_offer_gets_acks_through_our_record_layer(host: str) -> None:
    server, log = qt_like_server()
    async with support.serving_recorded(server, host) as (running, transport):
        run = await run_peer(mbedtls_client(host, running.port, "ping %n from mbedtls", pings=3))
        assert run.returncode == 0, run.text
        await running.events.wait_for("remote_closed")  # Mbed TLS's close_notify
        await support.settle()

        [connection] = log.connections
        # The server's order decides: its first PSK choice, which Mbed TLS offers too.
        assert connection.cipher == "ECDHE-PSK-CHACHA20-POLY1305"
        assert run.lines == [
            "connected cipher=TLS-ECDHE-PSK-WITH-CHACHA20-POLY1305-SHA256",
            *[f"reply: {ack_for(connection.peer)}"] * 3,
        ]
        assert connection.psk_identity == IDENTITY.encode()
        assert [event.plaintext for event in running.events.of_type(DatagramReceived)] == [
            f"ping {n} from mbedtls".encode() for n in range(3)
        ]

        # Mbed TLS answered our HelloVerifyRequest itself: the same hello again (same
        # random), now carrying our cookie.
        hellos = client_hellos(transport.received_from, connection.peer)
        first, cookied = hellos[0], [hello for hello in hellos if hello.cookie]
        assert first.cookie == b""
        assert cookied, hellos
        for hello in cookied:
            assert (hello.random, hello.cipher_suites) == (first.random, first.cipher_suites)

        statistics = server.statistics()
        assert statistics.cookies_sent == 1
        assert statistics.cookies_verified == 1
        assert statistics.cookies_rejected == 0
        assert statistics.handshakes_completed == 1
        assert statistics.handshakes_failed == {}
        # An AEAD suite: after the handshake our own record layer talked to Mbed TLS's.
        assert statistics.openssl_released == 1
        assert statistics.messages_received == 3
        assert statistics.messages_sent == 3
        assert statistics.remote_closed == 1
        assert statistics.peers == 0


# -- one suite at a time ---------------------------------------------------------------------


def _suite(mbedtls_name: str, openssl_name: str, profile: str = "default") -> object:
    """A parameter: skipped, with the reason, when this Mbed TLS build lacks the suite."""
    missing = mbedtls_name not in MBEDTLS_SUITES
    return pytest.param(
        mbedtls_name,
        openssl_name,
        profile,
        id=mbedtls_name.removeprefix("TLS-"),
        marks=pytest.mark.skipif(missing, reason=f"this Mbed TLS build has no {mbedtls_name}"),
    )


@pytest.mark.parametrize(
    ("mbedtls_suite", "openssl_suite", "profile"),
    [
        _suite("TLS-PSK-WITH-AES-128-GCM-SHA256", "PSK-AES128-GCM-SHA256"),
        _suite("TLS-PSK-WITH-AES-256-GCM-SHA384", "PSK-AES256-GCM-SHA384"),
        _suite("TLS-PSK-WITH-CHACHA20-POLY1305-SHA256", "PSK-CHACHA20-POLY1305"),
        _suite("TLS-ECDHE-PSK-WITH-CHACHA20-POLY1305-SHA256", "ECDHE-PSK-CHACHA20-POLY1305"),
        _suite("TLS-PSK-WITH-AES-128-CCM", "PSK-AES128-CCM"),
        _suite("TLS-PSK-WITH-AES-256-CCM", "PSK-AES256-CCM"),
        # RFC 7925's mandatory suite: 8-byte tags, only in the iot profile.
        _suite("TLS-PSK-WITH-AES-128-CCM-8", "PSK-AES128-CCM8", "iot"),
        _suite("TLS-PSK-WITH-AES-256-CCM-8", "PSK-AES256-CCM8", "iot"),
        # CBC with HMAC: only in the compat profile, and OpenSSL keeps the connection.
        _suite("TLS-PSK-WITH-AES-128-CBC-SHA256", "PSK-AES128-CBC-SHA256", "compat"),
    ],
)
async def test_mbedtls_limited_to_one_suite(
    mbedtls_suite: str, openssl_suite: str, profile: str
) -> None:
    server, log = qt_like_server(ciphers=profile)
    async with support.serving(server) as running:
        command = mbedtls_client(
            "127.0.0.1", running.port, "suite ping %n", ciphers=(mbedtls_suite,), pings=2
        )
        run = await run_peer(command)
        assert run.returncode == 0, run.text
        await running.events.wait_for("remote_closed")

        [connection] = log.connections
        assert run.lines == [
            f"connected cipher={mbedtls_suite}",
            *[f"reply: {ack_for(connection.peer)}"] * 2,
        ]
        assert connection.cipher == openssl_suite
        assert [event.plaintext for event in running.events.of_type(DatagramReceived)] == [
            b"suite ping 0",
            b"suite ping 1",
        ]
        statistics = server.statistics()
        assert statistics.handshakes_completed == 1
        assert statistics.messages_received == 2
        # AEAD suites move to our record layer; CBC ones stay with OpenSSL.
        assert statistics.openssl_released == (0 if "CBC" in openssl_suite else 1)


async def test_mbedtls_offering_cbc_only_gets_our_handshake_failure_alert() -> None:
    server, log = qt_like_server()  # default: AEAD only
    async with support.serving(server) as running:
        command = mbedtls_client(
            "127.0.0.1", running.port, "never sent", ciphers=("TLS-PSK-WITH-AES-128-CBC-SHA256",)
        )
        run = await run_peer(command)
        assert run.returncode == 1, run.text
        assert run.lines == [
            "error: handshake failed: SSL - A fatal alert message was received from our peer "
            "(mbedtls error -0x7780); fatal alert received: handshake_failure (40)"
        ]
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith("no shared cipher; fatal alert sent: handshake_failure (40)")
        assert server.statistics().handshakes_failed == {"no shared cipher": 1}
        assert log.connections == []


# -- refused credentials ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "key", "alert", "kind"),
    [
        (IDENTITY, WRONG_KEY, "bad_record_mac (20)", "wrong key"),
        ("Mallory", QT_DEMO_KEY, "unknown_psk_identity (115)", "unknown identity"),
    ],
    ids=["wrong-key", "unknown-identity"],
)
async def test_mbedtls_with_refused_credentials_gets_our_fatal_alert_at_once(
    identity: str, key: bytes, alert: str, kind: str
) -> None:
    """Mbed TLS stops at our alert: it never has to retransmit its last flight."""
    server, log = qt_like_server()
    async with support.serving_recorded(server) as (running, transport):
        command = mbedtls_client(
            "127.0.0.1", running.port, "never sent", key=key, identity=identity
        )
        run = await run_peer(command)
        assert run.returncode == 1, run.text
        assert run.lines == [
            "error: handshake failed: SSL - A fatal alert message was received from our peer "
            f"(mbedtls error -0x7780); fatal alert received: {alert}"
        ]
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith(f"fatal alert sent: {alert}")
        assert server.statistics().handshakes_failed == {kind: 1}
        assert log.connections == []
        await support.settle()
        # Three flights from Mbed TLS, each once: the hello, the hello with the cookie, and
        # ClientKeyExchange + ChangeCipherSpec + Finished.  No retransmission was needed.
        sources = {source for _, source in transport.received_from}
        assert len(sources) == 1, sources
        assert len(transport.received) == 3, [
            datagram[:14].hex() for datagram, _ in transport.received_from
        ]


# -- sizes and bursts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "pings", "burst"),
    [
        # 1,200 bytes of plaintext ("0:mmm...") to us, 1,206 back: one record each way.
        ("%n:" + "m" * 1_198, 3, False),
        # Twenty pings written back to back before any reply is read.
        ("burst ping %n", 20, True),
    ],
    ids=["1200-byte-messages", "burst-of-20"],
)
async def test_mbedtls_large_messages_and_bursts_come_back_whole_and_in_order(
    message: str, pings: int, burst: bool
) -> None:
    log = EchoLog()
    server = DTLSServer({IDENTITY: QT_DEMO_KEY}, handler=log)
    async with support.serving(server) as running:
        command = mbedtls_client("127.0.0.1", running.port, message, pings=pings, burst=burst)
        run = await run_peer(command)
        assert run.returncode == 0, run.text
        await running.events.wait_for("remote_closed")

        sent = [message.replace("%n", str(n)) for n in range(pings)]
        assert reply_lines(run) == [f"echo: {text}" for text in sent]
        assert [event.plaintext for event in running.events.of_type(DatagramReceived)] == [
            text.encode() for text in sent
        ]
        statistics = server.statistics()
        assert statistics.openssl_released == 1
        assert statistics.messages_received == pings
        assert statistics.messages_sent == pings
        assert statistics.drops == {}
        assert statistics.queue_overflows == 0


async def test_mbedtls_client_script_refuses_a_suite_its_build_lacks() -> None:
    """The peer's own guard: a misspelt suite is a usage error, not a silent default offer."""
    # It stops before opening a socket: nothing is sent to port 9.
    run = await run_peer(
        mbedtls_client("127.0.0.1", 9, "x", ciphers=("TLS-PSK-WITH-NOTHING-SHA256",))
    )
    assert run.returncode == 2, run.text
    assert run.lines == ["error: this Mbed TLS build has no suite TLS-PSK-WITH-NOTHING-SHA256"]


# -- small MTUs and lost flights -------------------------------------------------------------


def handshake_fragments(datagram: bytes, msg_type: int) -> list[HandshakeFragment]:
    """The unprotected (epoch 0) handshake fragments of type ``msg_type`` in ``datagram``."""
    return [
        parse_handshake_fragment(record.fragment)
        for record in parse_records(datagram)
        if record.content_type == ContentType.handshake
        and record.epoch == 0
        and record.fragment[0] == msg_type
    ]


async def test_mbedtls_with_a_64_byte_mtu_fragments_its_flight_and_we_reassemble_it() -> None:
    """A constrained link: Mbed TLS cuts its ClientKeyExchange across datagrams.

    (Mbed TLS never fragments its ClientHello, whatever the MTU: it sends the hello whole and
    lets the IP layer cope, so our fragmented-hello path is not what this exercises.)
    """
    server, log = qt_like_server()
    async with support.serving_recorded(server) as (running, transport):
        command = mbedtls_client("127.0.0.1", running.port, "tiny link %n", pings=2)
        run = await run_peer([*command, "--mtu", "64"])
        assert run.returncode == 0, run.text
        await running.events.wait_for("remote_closed")
        await support.settle()

        [connection] = log.connections
        assert reply_lines(run) == [ack_for(connection.peer)] * 2
        after_hellos = [
            datagram
            for datagram, _ in transport.received_from
            if not handshake_fragments(datagram, HandshakeType.client_hello)
        ]
        assert max(len(datagram) for datagram in after_hellos) <= 64
        fragments = [
            fragment
            for datagram in after_hellos
            for fragment in handshake_fragments(datagram, HandshakeType.client_key_exchange)
        ]
        assert len(fragments) >= 2, fragments
        assert fragments[0].fragment_offset == 0
        assert sum(fragment.fragment_length for fragment in fragments) == fragments[0].length
        statistics = server.statistics()
        assert statistics.handshakes_completed == 1
        assert statistics.openssl_released == 1
        assert statistics.messages_received == 2


def carries_ccs(datagram: bytes) -> bool:
    """Whether ``datagram`` holds a ChangeCipherSpec record (the start of a final flight)."""
    return any(
        record.content_type == ContentType.change_cipher_spec for record in parse_records(datagram)
    )


@dataclass
class LossyRelay:
    """A UDP relay on loopback between one client and the server that can lose datagrams.

    The client talks to :attr:`port`; the relay forwards each datagram to the server from a
    socket of its own, and the server's answers back, except those :meth:`should_lose` picks.
    ``to_server`` / ``to_client`` keep every datagram that arrived in each direction, lost
    ones included (``lost`` holds those).
    """

    front: trio.socket.SocketType
    back: trio.socket.SocketType
    lose_to_client: int = 0
    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    lost: list[bytes] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.front.getsockname()[1])

    def should_lose(self, datagram: bytes) -> bool:
        """Lose the server's first ``lose_to_client`` datagrams carrying a ChangeCipherSpec."""
        return carries_ccs(datagram) and len(self.lost) < self.lose_to_client

    async def forward_to_server(self, client: list[Address]) -> None:
        """Forever: the client's datagrams to the server (``client`` learns its address)."""
        while True:
            datagram, source = await self.front.recvfrom(65_536)
            client[:] = [(str(source[0]), int(source[1]))]
            self.to_server.append(datagram)
            await self.back.send(datagram)

    async def forward_to_client(self, client: list[Address]) -> None:
        """Forever: the server's datagrams to the client, but for the lost ones."""
        while True:
            datagram = await self.back.recv(65_536)
            self.to_client.append(datagram)
            if self.should_lose(datagram):
                self.lost.append(datagram)
                continue
            await self.front.sendto(datagram, client[0])


@asynccontextmanager
async def lossy_relay(server: Address, *, lose_to_client: int) -> AsyncIterator[LossyRelay]:
    """A :class:`LossyRelay` to ``server`` for the duration of the block (IPv4 loopback)."""
    with (
        trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as front,
        trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as back,
    ):
        await front.bind(("127.0.0.1", 0))
        await back.connect(server)
        relay = LossyRelay(front, back, lose_to_client)
        client: list[Address] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.forward_to_server, client)
            nursery.start_soon(relay.forward_to_client, client)
            yield relay
            nursery.cancel_scope.cancel()


async def test_mbedtls_gets_our_final_flight_again_when_it_was_lost() -> None:
    """Our ChangeCipherSpec + Finished is lost; Mbed TLS's timer resends its own last flight.

    By then the server has already freed its OpenSSL connection (the suite is AEAD), so it is
    our record layer that recognises the repeated Finished and sends the final flight again.
    Costs one second: Mbed TLS's first retransmission timeout, on the wall clock.
    """
    server, log = qt_like_server()
    async with (
        support.serving(server) as running,
        lossy_relay(running.address, lose_to_client=1) as relay,
    ):
        run = await run_peer(mbedtls_client("127.0.0.1", relay.port, "after a loss %n", pings=2))
        assert run.returncode == 0, run.text
        await running.events.wait_for("remote_closed")
        await support.settle()

        [connection] = log.connections
        assert reply_lines(run) == [ack_for(connection.peer)] * 2
        assert len(relay.lost) == 1
        # The server sent its ChangeCipherSpec + Finished flight twice (the relay lost the
        # first), Mbed TLS its ClientKeyExchange + ChangeCipherSpec + Finished flight twice.
        assert len([datagram for datagram in relay.to_client if carries_ccs(datagram)]) == 2
        client_final_flights = [
            datagram
            for datagram in relay.to_server
            if handshake_fragments(datagram, HandshakeType.client_key_exchange)
        ]
        assert len(client_final_flights) == 2
        statistics = server.statistics()
        assert statistics.handshakes_completed == 1
        assert statistics.openssl_released == 1
        assert statistics.drops == {"late handshake retransmission": 1}
        assert statistics.messages_received == 2
