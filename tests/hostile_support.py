"""Helpers shared by the hostile-network tests (limits, floods, garbage, health report).

Everything here talks to a real :class:`~trio_dtls_server.DTLSServer` over real UDP on
127.0.0.1.  The tools:

* :func:`serving` runs a server (and an :class:`EventLog` of everything it reports) for the
  body of an ``async with``;
* :class:`RecordingTransport` is a real UDP transport for a :class:`~trio_dtls_server.DTLSClient`
  that keeps a copy of every datagram the client sends and receives -- the captures the fuzz
  and replay tests mutate -- and lets a test send raw bytes *from the client's own port*;
* :func:`real_client_hello` and :func:`cookie_round_trip` give attackers the bytes a real
  OpenSSL client would send (before and after the cookie exchange), so floods are realistic;
  :func:`forged_record` turns a captured record into one that fails authentication;
* :func:`settle` waits until the server has handled everything already sent to it;
* :func:`live_ssl_connections` and :func:`record_memory_channels` look for leaks and for
  unbounded queues.

Why :func:`settle` works: on Linux a UDP datagram sent to a loopback address is already in the
receiving socket's queue when ``sendto`` returns, and Trio only reports "all tasks blocked"
when no task can run *and* the I/O poll found nothing ready.  So once it returns, the server has
read, classified and answered every datagram sent before the call -- no sleeping, no guessing.
The same reasoning lets Trio's autojump clock drive real loopback sockets: the clock only jumps
when nothing is ready to read.
"""

from __future__ import annotations

import gc
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from trio_dtls_server import (
    DEFAULT_CIPHERS,
    DTLSClient,
    DTLSServer,
    ServerConfig,
    ServerEvent,
    peer_info,
)
from trio_dtls_server._client import _client_context
from trio_dtls_server._psk import PskSource
from trio_dtls_server._session import DTLSSession, RetransmitPolicy
from trio_dtls_server._transport import ReplySource, UDPTransport
from trio_dtls_server._wire import ClientHello, parse_hello_verify_request, parse_records

Address = tuple[str, int]

#: The key every test client uses (the servers here accept any identity with it).
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
IDENTITY = "well-behaved"
LOOPBACK = "127.0.0.1"


def ack_for(address: Address) -> bytes:
    """What the default handler (Qt's) answers to every datagram from ``address``."""
    return f"to {peer_info(address)}: ACK".encode("latin-1")


async def settle() -> None:
    """Return once every task is blocked and no socket has anything to read (see module doc)."""
    await trio.testing.wait_all_tasks_blocked()


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


@dataclass
class EventLog:
    """Everything a server reported through :meth:`DTLSServer.events`, in order.

    With ``keep_events=False`` only the count per code is kept (for runs that measure memory:
    a list of every event would be the biggest thing growing).
    """

    keep_events: bool = True
    events: list[ServerEvent] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def codes(self) -> list[str]:
        return [event.code for event in self.events]

    def with_code(self, code: str) -> list[ServerEvent]:
        return [event for event in self.events if event.code == code]

    def messages(self, code: str) -> list[str]:
        return [event.message for event in self.with_code(code)]

    async def record(
        self, server: DTLSServer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # A large buffer: the tests want every event, and the log task keeps up anyway.
        async with server.events(max_buffer=1 << 16) as stream:
            task_status.started()
            async for event in stream:
                self.counts[event.code] += 1
                if self.keep_events:
                    self.events.append(event)


@dataclass
class Served:
    """A running server: the object, its address and its event log."""

    server: DTLSServer
    address: Address
    log: EventLog


@asynccontextmanager
async def serving(
    config: ServerConfig | None = None,
    *,
    keep_events: bool = True,
    psk: PskSource = KEY,
    **server_options: Any,
) -> AsyncIterator[Served]:
    """Run a PSK server on 127.0.0.1 for the ``async with`` body (default: any identity, with
    :data:`KEY`)."""
    server = DTLSServer(psk=psk, config=config, **server_options)
    log = EventLog(keep_events=keep_events)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.record, server)
        address: Address = await nursery.start(server.serve, LOOPBACK, 0)
        yield Served(server, address, log)
        nursery.cancel_scope.cancel()


# -- a client whose traffic we can see and imitate ---------------------------------------------


class RecordingTransport:
    """A real UDP transport that keeps every datagram sent and received, in order.

    ``send_raw`` sends bytes to ``peer`` from this transport's own port without recording them:
    to the server they look exactly like traffic from the client.
    """

    def __init__(self, sock: socket.socket, peer: Address) -> None:
        self._socket = sock
        self._inner = UDPTransport(sock)
        self._peer = peer
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        #: Set to False to stop keeping copies (long runs that measure memory); the counts go on.
        self.keep_copies = True
        self.sent_count = 0
        self.received_count = 0

    @property
    def local_address(self) -> Address:
        return self._inner.local_address

    @property
    def is_ipv6(self) -> bool:
        return self._inner.is_ipv6

    def receive_nowait(self, max_size: int) -> tuple[bytes, Address] | None:
        received = self._inner.receive_nowait(max_size)
        if received is not None:
            self.received_count += 1
            if self.keep_copies:
                self.received.append(received[0])
        return received

    async def wait_readable(self) -> None:
        await self._inner.wait_readable()

    def reply_source(self) -> ReplySource | None:
        return self._inner.reply_source()

    def send_nowait(
        self, datagram: bytes, address: Address, source: ReplySource | None = None
    ) -> bool:
        sent = self._inner.send_nowait(datagram, address, source)
        if sent:
            self.sent_count += 1
            if self.keep_copies:
                self.sent.append(datagram)
        return sent

    async def wait_writable(self) -> None:
        await self._inner.wait_writable()

    def close(self) -> None:
        self._inner.close()

    def send_raw(self, datagram: bytes) -> None:
        self._socket.sendto(datagram, self._peer)


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
    transport = RecordingTransport(sock, server_address)
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


def forged_record(authentic: bytes, sequence: int) -> bytes:
    """A record that looks like ``authentic`` (epoch, type, length) but fails authentication:
    a fresh sequence number (so it is no replay) and a flipped bit in the AEAD tag."""
    forged = bytearray(set_record_sequence(authentic, sequence))
    forged[-1] ^= 0x01
    return bytes(forged)
