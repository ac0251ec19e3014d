"""Helpers shared by the hostile-network tests (limits, floods, garbage, health report).

Everything here talks to a real :class:`~trio_dtls_server.DTLSServer` over real UDP on
127.0.0.1, with the generic tools of :mod:`support` (:func:`support.serving`,
:class:`support.RecordingTransport`, :func:`support.settle`: see there why settling works).
The tools added here:

* :func:`serving_psk` builds a PSK server (default: any identity, with :data:`KEY`) and runs
  it with :func:`support.serving` for the body of an ``async with``;
* :func:`connect` connects a :class:`~trio_dtls_server.DTLSClient` over a
  :class:`support.RecordingTransport` that keeps every datagram the client sends and receives
  -- the captures the fuzz and replay tests mutate -- and lets a test send raw bytes *from the
  client's own port*;
* :func:`real_client_hello` and :func:`cookie_round_trip` give attackers the bytes a real
  OpenSSL client would send (before and after the cookie exchange), so floods are realistic;
  :func:`forged_record` turns a captured record into one that fails authentication;
* :func:`live_ssl_connections` and :func:`record_memory_channels` look for leaks and for
  unbounded queues.
"""

from __future__ import annotations

import gc
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from fakenet import FakeNetwork
from OpenSSL import SSL
from support import RecordingTransport, RunningServer, serving, settle

from trio_dtls_server import (
    DEFAULT_CIPHERS,
    DTLSClient,
    DTLSServer,
    ServerConfig,
    peer_info,
)
from trio_dtls_server._client import _client_context
from trio_dtls_server._psk import PskSource
from trio_dtls_server._session import DTLSSession, RetransmitPolicy
from trio_dtls_server._wire import ClientHello, parse_hello_verify_request, parse_records

Address = tuple[str, int]

#: The key every test client uses (the servers here accept any identity with it).
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
IDENTITY = "well-behaved"
LOOPBACK = "127.0.0.1"


def ack_for(address: Address) -> bytes:
    """What the default handler (Qt's) answers to every datagram from ``address``."""
    return f"to {peer_info(address)}: ACK".encode("latin-1")


def udp_socket(host: str = LOOPBACK) -> socket.socket:
    """A non-blocking UDP socket bound to ``host`` on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` right now."""
    received: list[bytes] = []
    while True:
        try:
            received.append(sock.recv(65_536))
        except BlockingIOError:
            return received


@contextmanager
def udp_sockets(count: int, hosts: tuple[str, ...] = (LOOPBACK,)) -> Iterator[list[socket.socket]]:
    """``count`` bound sockets spread over ``hosts`` (all of 127/8 is loopback on Linux)."""
    sockets: list[socket.socket] = []
    try:
        for index in range(count):
            sockets.append(udp_socket(hosts[index % len(hosts)]))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def live_ssl_connections() -> int:
    """How many OpenSSL connection objects exist right now (each holds 60-140 KB of C memory)."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, SSL.Connection))


# -- the server and what it says --------------------------------------------------------------


@asynccontextmanager
async def serving_psk(
    config: ServerConfig | None = None,
    *,
    keep_events: bool = True,
    psk: PskSource = KEY,
    **server_options: Any,
) -> AsyncIterator[RunningServer]:
    """Run a PSK server on 127.0.0.1 for the ``async with`` body (default: any identity, with
    :data:`KEY`), through :func:`support.serving`."""
    server = DTLSServer(psk=psk, config=config, **server_options)
    async with serving(server, LOOPBACK, keep_events=keep_events) as running:
        yield running


# -- a client whose traffic we can see and imitate ---------------------------------------------


@dataclass
class WatchedClient:
    """A connected :class:`DTLSClient` and the recording transport under it."""

    client: DTLSClient
    transport: RecordingTransport

    @property
    def address(self) -> Address:
        return self.transport.local_address

    async def round_trip(self, message: bytes, expected: bytes) -> None:
        """Send ``message``; the next datagram the server sends back must be ``expected``."""
        await self.client.send(message)
        with trio.fail_after(10):
            assert await self.client.receive() == expected

    def application_datagrams(self) -> list[bytes]:
        """The datagrams this client sent that carry application data (epoch 1, type 23)."""
        return [d for d in self.transport.sent if parse_records(d)[0].content_type == 23]


async def connect(
    server_address: Address, *, identity: str = IDENTITY, key: bytes = KEY, **options: Any
) -> WatchedClient:
    """Connect a recording client from a fresh port on 127.0.0.1."""
    sock = udp_socket()
    transport = RecordingTransport.over_socket(sock, server_address)
    client = await DTLSClient.connect_over(
        transport, server_address, identity=identity, key=key, **options
    )
    return WatchedClient(client, transport)


# -- real ClientHellos for attackers -----------------------------------------------------------


def new_client_session() -> DTLSSession:
    """A fresh client-side session; its first ClientHello is waiting in ``take_datagrams()``."""
    return DTLSSession.client(
        _client_context(DEFAULT_CIPHERS),
        now=0.0,
        mtu=1472,
        policy=RetransmitPolicy(),
        identity=IDENTITY.encode(),
        key=KEY,
    )


async def replay_a_foreign_hello(victim: WatchedClient) -> None:
    """Send another client's cookie'd ClientHello from ``victim``'s address, as a replay would.

    The cookie exchange is real: the first hello gets a HelloVerifyRequest (to the victim's
    port, where this reads it), the second one carries its cookie.  The attacker then falls
    silent, so the new handshake can only end at its deadline.
    """
    attacker = new_client_session()
    [hello] = attacker.take_datagrams()
    victim.transport.send_raw(hello)
    await settle()
    received = victim.transport.receive_nowait(65_536)
    assert received is not None
    hello_verify_request = received[0]
    assert len(parse_hello_verify_request(hello_verify_request)) == 16
    attacker.receive_datagram(hello_verify_request, 0.0)
    [cookied_hello] = attacker.take_datagrams()
    victim.transport.send_raw(cookied_hello)
    await settle()


def real_client_hello() -> bytes:
    """One cookieless ClientHello exactly as OpenSSL's DTLS client writes it."""
    [hello] = new_client_session().take_datagrams()
    return hello


def with_random(hello: bytes, rng: random.Random) -> bytes:
    """``hello`` with a fresh 32-byte client random (bytes 27-58: after the 13-byte record
    header, the 12-byte handshake header and the 2-byte client version)."""
    return hello[:27] + rng.randbytes(32) + hello[59:]


async def cookie_round_trip(sock: socket.socket, server_address: Address) -> bytes:
    """Do a real client's cookie exchange from ``sock``; return its verified second ClientHello.

    The hello is *not* sent: the caller decides when (and whether to repeat it).  The server's
    HelloVerifyRequest arrives on ``sock`` while this waits for it.
    """
    session = new_client_session()
    [hello] = session.take_datagrams()
    sock.sendto(hello, server_address)
    with trio.fail_after(10):
        await trio.lowlevel.wait_readable(sock)
    [reply] = drain(sock)
    assert len(parse_hello_verify_request(reply)) == 16
    session.receive_datagram(reply, 0.0)
    [verified] = session.take_datagrams()
    return verified


# -- counting every memory channel the server opens --------------------------------------------


@dataclass
class ChannelRecord:
    max_buffer_size: float
    send: trio.MemorySendChannel[Any]
    receive: trio.MemoryReceiveChannel[Any]


def record_memory_channels(monkeypatch: pytest.MonkeyPatch) -> list[ChannelRecord]:
    """Make ``trio.open_memory_channel`` note every channel opened from now on.

    The library calls it as ``trio.open_memory_channel[T](size)``, so the stand-in must accept
    a subscript too.
    """
    opened: list[ChannelRecord] = []
    original: Callable[[float], Any] = trio.open_memory_channel

    class Recording:
        def __class_getitem__(cls, item: object) -> type[Recording]:
            return cls

        def __new__(cls, max_buffer_size: float) -> Any:
            send, receive = original(max_buffer_size)
            opened.append(ChannelRecord(max_buffer_size, send, receive))
            return send, receive

    monkeypatch.setattr(trio, "open_memory_channel", Recording)
    return opened


# -- hand-made records -------------------------------------------------------------------------


def encode_client_hello(hello: ClientHello, *, record_sequence: int = 0) -> bytes:
    """A one-record datagram carrying ``hello`` (message_seq 0), laid out as OpenSSL does."""
    body = b"".join(
        (
            hello.client_version.to_bytes(2, "big"),
            hello.random,
            bytes([len(hello.session_id)]),
            hello.session_id,
            bytes([len(hello.cookie)]),
            hello.cookie,
            len(hello.cipher_suites).to_bytes(2, "big"),
            hello.cipher_suites,
            bytes([len(hello.compression_methods)]),
            hello.compression_methods,
            len(hello.extensions).to_bytes(2, "big") + hello.extensions
            if hello.extensions
            else b"",
        )
    )
    size = len(body).to_bytes(3, "big")
    handshake = b"\x01" + size + b"\x00\x00" + b"\x00\x00\x00" + size + body
    return (
        b"\x16\xfe\xff\x00\x00"
        + record_sequence.to_bytes(6, "big")
        + len(handshake).to_bytes(2, "big")
        + handshake
    )


def smallest_client_hello(rng: random.Random) -> bytes:
    """The shortest datagram the server treats as a ClientHello: 67 bytes, one suite, no
    session id, no cookie, no extensions.  Our HelloVerifyRequest (44 bytes) must not exceed it."""
    hello = ClientHello(
        client_version=0xFEFD,
        random=rng.randbytes(32),
        session_id=b"",
        cookie=b"",
        cipher_suites=b"\x00\xa8",  # PSK-AES128-GCM-SHA256
        compression_methods=b"\x00",
        extensions=b"",
    )
    return encode_client_hello(hello)


def set_record_sequence(datagram: bytes, sequence: int) -> bytes:
    """``datagram`` with the first record's 48-bit sequence number replaced."""
    return datagram[:5] + sequence.to_bytes(6, "big") + datagram[11:]


async def first_ping(
    network: FakeNetwork,
    victim: DTLSClient,
    victim_address: Address,
    server: Address,
    content_type: int,
) -> tuple[bytes, bytes]:
    """The victim's first ping (``ping 0``) on the fake network, answered with its ACK.

    Returns the ACK and the one record of ``content_type`` the victim has sent so far (its
    ping): the authentic record the attacker captures to forge and replay.
    """
    ack = ack_for(victim_address)
    await victim.send(b"ping 0")
    assert await victim.receive() == ack
    [authentic] = [
        d.data
        for d in network.sent(source=victim_address, destination=server)
        if d.data[0] == content_type
    ]
    return ack, authentic


async def flood(
    network: FakeNetwork,
    server: Address,
    kinds: Sequence[str],
    make: Callable[[str, int], tuple[Address, bytes]],
    sent: Counter[str],
    stop: trio.Event,
    *,
    per_tick: int = 30,
    tick: float = 0.01,
    limit: int = 60_000,
) -> None:
    """Flood ``server`` on the fake network until ``stop`` is set (at most ``limit`` datagrams).

    ``per_tick`` datagrams every ``tick`` seconds (3,000 a second by default), the ``kinds`` in
    turn; the ``n``-th, of kind ``kind``, is ``make(kind, n)``: its source address and bytes.
    ``sent`` counts what went out, by kind.
    """
    n = 0
    while not stop.is_set() and n < limit:
        for _ in range(per_tick):
            kind = kinds[n % len(kinds)]
            source, datagram = make(kind, n)
            network.inject(source, server, datagram)
            sent[kind] += 1
            n += 1
        await trio.sleep(tick)


def forged_record(authentic: bytes, sequence: int) -> bytes:
    """A record that looks like ``authentic`` (epoch, type, length) but fails authentication:
    a fresh sequence number (so it is no replay) and a flipped bit in the AEAD tag."""
    forged = bytearray(set_record_sequence(authentic, sequence))
    forged[-1] ^= 0x01
    return bytes(forged)
