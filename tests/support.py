"""Shared test helpers: a server on loopback, an event recorder, raw sockets, hand-made hellos.

Import it from any test module as ``import support`` (pytest puts ``tests/`` on ``sys.path``).
Everything here is generic; nothing asserts by itself.

Running a server
    :func:`serving` is an async context manager: it subscribes an :class:`EventRecorder`, starts
    ``server.serve`` on ``host`` port 0 in a nursery of its own and yields a
    :class:`RunningServer` (the address, the recorder, the nursery).  Leaving the block cancels
    the nursery, which is exactly how an application shuts the server down.

Waiting without sleeping
    :meth:`EventRecorder.wait_for` waits for the server to *say* something.  :func:`settle` waits
    until every task of the test is blocked: over loopback a datagram is in the receiving
    socket's buffer by the time ``sendto`` returns, so once everything is blocked the server has
    read and handled every datagram sent so far.  Neither needs a guessed delay.

Talking to the server by hand
    :class:`RawSocket` sends hand-made datagrams from a port of its own and reads the replies.
    :class:`MemoryBioClient` is a real DTLS 1.2 PSK client made of one pyOpenSSL connection on
    memory BIOs, stepped one datagram at a time, so a test can hold a real ClientHello, the
    cookie'd second ClientHello, and every flight after them.  :class:`RecordingTransport`
    wraps a client's transport and keeps every datagram that went through it.

Sessions in memory
    :func:`server_context` / :func:`client_context` build OpenSSL contexts the way the server and
    the client do, and :func:`handshake_in_memory` runs :class:`~trio_dtls_server._session.
    DTLSSession` server and client against each other without any socket.
"""

from __future__ import annotations

import random
import socket as stdlib_socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TypedDict, TypeVar, Unpack

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from trio_dtls_server import (
    DEFAULT_CIPHERS,
    DTLSClient,
    DTLSServer,
    RetransmitPolicy,
    ServerEvent,
)
from trio_dtls_server._cookie import CookieJar
from trio_dtls_server._openssl import (
    drain_write_bio,
    install_client_psk,
    install_server_psk,
    new_dtls_context,
)
from trio_dtls_server._protection import AeadProtector
from trio_dtls_server._records import RecordProtection
from trio_dtls_server._session import DTLSSession, SessionEvent, SessionState
from trio_dtls_server._transport import (
    Address,
    DatagramTransport,
    ReplySource,
    UDPTransport,
    bind_udp,
)
from trio_dtls_server._wire import (
    HANDSHAKE_HEADER_LENGTH,
    RECORD_HEADER_LENGTH,
    ContentType,
    build_hello_verify_request,
    pack_datagrams,
    parse_initial_client_hello,
    split_records,
)
from trio_dtls_server.qt import QT_DEMO_KEY

__all__ = [
    "IDENTITY",
    "KEY",
    "LOOPBACK_HOSTS",
    "WAIT_LIMIT",
    "EventRecorder",
    "HandshakeOptions",
    "InMemoryHandshake",
    "MemoryBioClient",
    "RawSocket",
    "RecordingTransport",
    "RunningServer",
    "begin_handshake_in_memory",
    "client_context",
    "client_hellos",
    "drain_events",
    "established",
    "exchange",
    "fragment_client_hello",
    "garbage_record",
    "handshake_in_memory",
    "hello_extension",
    "hello_verify_request_for",
    "needs_ipv6_loopback",
    "next_event",
    "server_context",
    "serving",
    "serving_recorded",
    "settle",
    "sizes",
    "talk",
    "with_client_random",
]

#: The identity Qt's example client uses for its first association, and Qt's demo key.
IDENTITY = "Alice (clone number 0)"
KEY = QT_DEMO_KEY

#: How long any single wait in a test may take before the test fails (generous: the machine is
#: shared, and a wait that hits this is a failure, not a measurement).
WAIT_LIMIT = 20.0

EventT = TypeVar("EventT", bound=ServerEvent)


def _ipv6_loopback_works() -> bool:
    try:
        with stdlib_socket.socket(stdlib_socket.AF_INET6, stdlib_socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


#: Marks a test that needs IPv6 loopback: skipped, with the reason shown, without ``::1``.
needs_ipv6_loopback = pytest.mark.skipif(
    not _ipv6_loopback_works(), reason="no IPv6 loopback (::1)"
)

#: ``@pytest.mark.parametrize("host", LOOPBACK_HOSTS)`` runs a test over IPv4 and IPv6 loopback
#: (the IPv6 case is skipped, with the reason shown, on a machine without ``::1``).
LOOPBACK_HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("::1", id="ipv6", marks=needs_ipv6_loopback),
]


# -- waiting ---------------------------------------------------------------------------------


async def settle() -> None:
    """Return once every task in this Trio run is blocked.

    Over loopback, every datagram sent before this call has then been read and handled (the
    kernel queues a loopback datagram on the receiving socket before ``sendto`` returns, and
    Trio only reports "all blocked" after an I/O poll found nothing more to do).  Use it before
    asserting on counters that no event announces.
    """
    await trio.testing.wait_all_tasks_blocked()


class EventRecorder:
    """Keeps every event of one ``server.events()`` subscription, in order.

    Start it with :meth:`start` *before* the traffic you want to see.  The subscription buffer
    is large (the server drops events for a full subscriber, and a test should not lose any).
    """

    def __init__(self, *, keep_events: bool = True) -> None:
        #: With ``keep_events=False`` only :attr:`counts` grows (for runs that measure memory: a
        #: list of every event would be the biggest thing growing).
        self.keep_events = keep_events
        self.events: list[ServerEvent] = []
        #: How many events of each code arrived, kept even when the events themselves are not.
        self.counts: Counter[str] = Counter()
        self._arrived = trio.Event()

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        server: DTLSServer,
        *,
        max_buffer: int = 1 << 16,
        keep_events: bool = True,
    ) -> EventRecorder:
        """Subscribe to ``server`` and keep recording in a task of ``nursery``."""
        recorder = cls(keep_events=keep_events)
        await nursery.start(recorder._record, server, max_buffer)
        return recorder

    async def _record(
        self,
        server: DTLSServer,
        max_buffer: int,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with server.events(max_buffer) as stream:
            task_status.started()
            async for event in stream:
                self.counts[event.code] += 1
                if self.keep_events:
                    self.events.append(event)
                self._arrived.set()
                self._arrived = trio.Event()

    def with_code(self, code: str) -> list[ServerEvent]:
        """Every event recorded so far with this ``code``."""
        return [event for event in self.events if event.code == code]

    def messages(self, code: str) -> list[str]:
        """The messages of every event recorded so far with this ``code``, in order."""
        return [event.message for event in self.with_code(code)]

    def of_type(self, kind: type[EventT]) -> list[EventT]:
        """Every event recorded so far of this class (exactly, not subclasses)."""
        return [event for event in self.events if type(event) is kind]

    def codes(self) -> list[str]:
        return [event.code for event in self.events]

    async def wait_for(
        self,
        code: str | None = None,
        *,
        where: Callable[[ServerEvent], bool] | None = None,
        count: int = 1,
        timeout: float = WAIT_LIMIT,
    ) -> ServerEvent:
        """Wait until ``count`` recorded events match; return the ``count``-th one.

        An event matches when its ``code`` equals ``code`` (if given) and ``where(event)`` is
        true (if given).  Events recorded before the call count too.  Fails the test with
        :class:`trio.TooSlowError` after ``timeout`` seconds (on the run's clock).
        """

        def matches(event: ServerEvent) -> bool:
            return (code is None or event.code == code) and (where is None or where(event))

        with trio.fail_after(timeout):
            while True:
                found = [event for event in self.events if matches(event)]
                if len(found) >= count:
                    return found[count - 1]
                await self._arrived.wait()


def drain_events(stream: trio.MemoryReceiveChannel[ServerEvent]) -> list[ServerEvent]:
    """Every event waiting in ``stream`` (a ``server.events()`` subscription) now."""
    events = []
    while True:
        try:
            events.append(stream.receive_nowait())
        except trio.WouldBlock:
            return events


async def next_event(stream: trio.MemoryReceiveChannel[ServerEvent], code: str) -> ServerEvent:
    """The next event with ``code`` from ``stream``, skipping others (bound it with a timeout)."""
    async for event in stream:
        if event.code == code:
            return event
    raise AssertionError(f"no {code} event")


async def talk(client: DTLSClient, text: bytes = b"ping") -> bytes:
    """Send ``text`` on ``client`` and return the reply (failing after :data:`WAIT_LIMIT`)."""
    await client.send(text)
    with trio.fail_after(WAIT_LIMIT):
        return await client.receive()


@dataclass
class RunningServer:
    """What :func:`serving` yields."""

    server: DTLSServer
    address: Address
    events: EventRecorder
    nursery: trio.Nursery

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]


@asynccontextmanager
async def serving(
    server: DTLSServer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on: DatagramTransport | None = None,
    keep_events: bool = True,
) -> AsyncIterator[RunningServer]:
    """Run ``server`` on ``host``:``port`` (0: a free port) for the duration of the block.

    With ``on``, the server serves on that transport instead (``serve_on``; ``host`` and
    ``port`` are then unused), e.g. a :class:`RecordingTransport` that keeps what it carries.
    ``keep_events=False`` makes the recorder keep only counts (see :class:`EventRecorder`).

    The recorder subscribes before ``serve`` starts, so it sees every event, ``listening``
    included.  The block's end cancels the nursery: the server then sends close_notify to
    every established peer and closes its socket.
    """
    async with trio.open_nursery() as nursery:
        recorder = await EventRecorder.start(nursery, server, keep_events=keep_events)
        address: Address
        if on is None:
            address = await nursery.start(server.serve, host, port)
        else:
            address = await nursery.start(server.serve_on, on)
        yield RunningServer(server, address, recorder, nursery)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving_recorded(
    server: DTLSServer, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[RunningServer, RecordingTransport]]:
    """:func:`serving`, on a :class:`RecordingTransport` that keeps a copy of every datagram."""
    transport = await RecordingTransport.bind(host, 0)
    async with serving(server, on=transport) as running:
        yield running, transport


# -- raw datagrams ----------------------------------------------------------------------------


class RawSocket:
    """A plain UDP socket for sending hand-made datagrams and reading what comes back."""

    def __init__(self, sock: stdlib_socket.socket) -> None:
        sock.setblocking(False)
        self._socket = sock
        name = sock.getsockname()
        self.address: Address = (str(name[0]), int(name[1]))

    @classmethod
    def bind(cls, host: str = "127.0.0.1", port: int = 0) -> RawSocket:
        family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
        sock = stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM)
        try:
            # Room for a burst of replies: a test may send many datagrams before reading any.
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 1 << 20)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def send(self, datagram: bytes, to: Address) -> None:
        """Send at once (loopback never makes a test wait for buffer space at these rates)."""
        self._socket.sendto(datagram, to)

    async def receive(self, timeout: float = WAIT_LIMIT) -> tuple[bytes, Address]:
        """The next datagram and its sender; fails the test after ``timeout`` seconds."""
        with trio.fail_after(timeout):
            while True:
                received = self.receive_nowait()
                if received is not None:
                    return received
                await trio.lowlevel.wait_readable(self._socket)

    def receive_nowait(self) -> tuple[bytes, Address] | None:
        """A datagram already waiting and its sender, or None (after :func:`settle`: silence)."""
        try:
            datagram, sender = self._socket.recvfrom(65_536)
        except BlockingIOError:
            return None
        return datagram, (str(sender[0]), int(sender[1]))

    def close(self) -> None:
        # Wake (with an error) any task still waiting on the socket before the fd goes away.
        with suppress(RuntimeError):  # not inside a Trio run: nobody can be waiting
            trio.lowlevel.notify_closing(self._socket)
        self._socket.close()

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RecordingTransport:
    """A :class:`DatagramTransport` that passes everything to a real one and keeps a copy.

    ``sent`` / ``received`` hold every datagram handed to the kernel / read, in order;
    ``sent_to`` / ``received_from`` hold the same as ``(datagram, destination)`` /
    ``(datagram, source)`` pairs.  Set :attr:`keep_copies` to False to stop keeping copies
    (long runs that measure memory); :attr:`sent_count` and :attr:`received_count` go on.

    Give it to ``DTLSClient.connect_over`` to see exactly what a client sends and gets, or to
    :func:`serving` (``on=``) to see a server's traffic.  Made with :meth:`over_socket`, it
    can also :meth:`send_raw`: bytes from the transport's own port that, to the peer, look
    exactly like the client's traffic (the replay and fuzz tests send mutated captures so).
    """

    def __init__(self, inner: DatagramTransport) -> None:
        self.inner = inner
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.sent_to: list[tuple[bytes, Address]] = []
        self.received_from: list[tuple[bytes, Address]] = []
        self.keep_copies = True
        self.sent_count = 0
        self.received_count = 0
        self._raw: tuple[stdlib_socket.socket, Address] | None = None

    @classmethod
    async def bind(cls, host: str = "127.0.0.1", port: int = 0) -> RecordingTransport:
        return cls(await bind_udp(host, port))

    @classmethod
    def over_socket(cls, sock: stdlib_socket.socket, peer: Address) -> RecordingTransport:
        """Wrap a bound non-blocking ``sock``; :meth:`send_raw` then sends to ``peer``."""
        transport = cls(UDPTransport(sock))
        transport._raw = (sock, peer)
        return transport

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    @property
    def is_ipv6(self) -> bool:
        return self.inner.is_ipv6

    def receive_nowait(self, max_size: int) -> tuple[bytes, Address] | None:
        received = self.inner.receive_nowait(max_size)
        if received is not None:
            self.received_count += 1
            if self.keep_copies:
                self.received.append(received[0])
                self.received_from.append(received)
        return received

    async def wait_readable(self) -> None:
        await self.inner.wait_readable()

    def reply_source(self) -> ReplySource | None:
        return self.inner.reply_source()

    def send_nowait(
        self, datagram: bytes, address: Address, source: ReplySource | None = None
    ) -> bool:
        accepted = self.inner.send_nowait(datagram, address, source)
        if accepted:
            self.sent_count += 1
            if self.keep_copies:
                self.sent.append(datagram)
                self.sent_to.append((datagram, address))
        return accepted

    async def wait_writable(self) -> None:
        await self.inner.wait_writable()

    def close(self) -> None:
        self.inner.close()

    def send_raw(self, datagram: bytes) -> None:
        """Send ``datagram`` to the peer from this transport's port, without recording it."""
        if self._raw is None:
            raise RuntimeError("send_raw needs a RecordingTransport made by over_socket")
        sock, peer = self._raw
        sock.sendto(datagram, peer)


def _recording_transport_is_a_transport(transport: RecordingTransport) -> DatagramTransport:
    # Never called: mypy checks here that RecordingTransport satisfies the protocol.
    return transport


# -- hand-made DTLS ---------------------------------------------------------------------------


class _PskAnswer:
    """The client half of :class:`trio_dtls_server._openssl.PskResponder`."""

    def __init__(self, identity: bytes, key: bytes) -> None:
        self.identity = identity
        self.key = key
        #: The identity hint the server sent, once the PSK callback ran.
        self.hint: bytes | None = None

    def psk_for_identity(self, identity: bytes) -> bytes | None:
        return None

    def psk_identity_and_key(self, hint: bytes | None) -> tuple[bytes, bytes] | None:
        self.hint = hint
        return self.identity, self.key


def client_context(ciphers: str = DEFAULT_CIPHERS) -> SSL.Context:
    """A DTLS 1.2 PSK client context, built like ``DTLSClient`` builds its own."""
    context = new_dtls_context(server=False, ciphers=ciphers)
    install_client_psk(context)
    return context


def server_context(identity_hint: str | None = None, ciphers: str = DEFAULT_CIPHERS) -> SSL.Context:
    """A DTLS 1.2 PSK server context, built like ``DTLSServer`` builds its own.

    Its cookie callbacks accept anything: :meth:`DTLSSession.server` expects the caller to have
    checked the cookie already (the server does it statelessly before any OpenSSL object exists).
    """
    context = new_dtls_context(server=True, ciphers=ciphers)
    install_server_psk(context, identity_hint.encode("utf-8") if identity_hint else None)
    context.set_cookie_generate_callback(lambda connection: b"\0" * CookieJar.COOKIE_LENGTH)
    context.set_cookie_verify_callback(lambda connection, cookie: True)
    return context


class MemoryBioClient:
    """A real DTLS 1.2 PSK client: one pyOpenSSL connection on memory BIOs, stepped by hand.

    ``first = client.start()`` gives the first (cookie-less) ClientHello as one datagram.  Each
    :meth:`feed` writes one datagram from the server into OpenSSL, lets the handshake advance
    and returns what OpenSSL wrote in answer, packed into datagrams of at most ``mtu`` bytes —
    after a HelloVerifyRequest that is the cookie'd second ClientHello.  The class never
    retransmits by itself; call :meth:`retransmit` to get OpenSSL's retransmission.
    """

    def __init__(
        self,
        identity: str | bytes = IDENTITY,
        key: bytes = KEY,
        *,
        ciphers: str = DEFAULT_CIPHERS,
        mtu: int = 1400,
    ) -> None:
        name = identity.encode("latin-1") if isinstance(identity, str) else identity
        self.psk = _PskAnswer(name, key)
        self.mtu = mtu
        self.connection = SSL.Connection(client_context(ciphers), None)
        self.connection.set_app_data(self.psk)
        self.connection.set_ciphertext_mtu(mtu)
        self.connection.set_connect_state()
        self.established = False
        #: The OpenSSL error that ended the handshake (or the connection), if one did.
        self.error: SSL.Error | None = None
        #: Application data decrypted by :meth:`feed` after the handshake, in order.
        self.plaintexts: list[bytes] = []

    def start(self) -> bytes:
        """The first ClientHello (one datagram)."""
        datagrams = self._step()
        if len(datagrams) != 1:
            raise AssertionError(f"expected one ClientHello datagram, got {len(datagrams)}")
        return datagrams[0]

    def feed(self, datagram: bytes) -> list[bytes]:
        """Give OpenSSL one datagram from the server; return the datagrams it wants sent."""
        self.connection.bio_write(datagram)
        if not self.established:
            return self._step()
        try:
            self.plaintexts.append(self.connection.read(65_536))
        except SSL.WantReadError:
            pass  # a record that gave no plaintext (a retransmission, say)
        except SSL.Error as error:
            self.error = error
        return self._outgoing()

    def retransmit(self) -> list[bytes]:
        """OpenSSL's retransmission of the last flight (empty until its own 1 s timer expires)."""
        self.connection.DTLSv1_handle_timeout()
        return self._outgoing()

    def encrypt(self, plaintext: bytes) -> bytes:
        """One application-data datagram carrying ``plaintext`` (after the handshake)."""
        self.connection.write(plaintext)
        return drain_write_bio(self.connection)

    def _step(self) -> list[bytes]:
        try:
            self.connection.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as error:
            self.error = error
        else:
            self.established = True
        return self._outgoing()

    def _outgoing(self) -> list[bytes]:
        raw = drain_write_bio(self.connection)
        return pack_datagrams(split_records(raw), self.mtu) if raw else []


def hello_verify_request_for(first_client_hello: bytes, cookie: bytes = b"\x5a" * 16) -> bytes:
    """A HelloVerifyRequest answering ``first_client_hello`` with ``cookie`` (no server needed)."""
    record = parse_initial_client_hello(first_client_hello).record
    return build_hello_verify_request(record, cookie)


def client_hellos(
    identity: str | bytes = IDENTITY, key: bytes = KEY, *, cookie: bytes = b"\x5a" * 16
) -> tuple[bytes, bytes]:
    """A real first ClientHello and the second one carrying ``cookie``, as OpenSSL writes them.

    No server is involved: the HelloVerifyRequest is built locally.  The second hello repeats
    the first one's random, so a server's cookie made for the first one would match it too.
    """
    client = MemoryBioClient(identity, key)
    first = client.start()
    (second,) = client.feed(hello_verify_request_for(first, cookie))
    return first, second


def hello_extension(extensions: bytes, wanted: int) -> bytes | None:
    """The body of extension ``wanted`` in a ClientHello's extensions block, or None.

    ``extensions`` is :attr:`~trio_dtls_server._wire.ClientHello.extensions` (the parser
    leaves the block unparsed): entries of type (2 bytes), length (2 bytes), body.
    """
    position = 0
    while position + 4 <= len(extensions):
        kind = int.from_bytes(extensions[position : position + 2], "big")
        length = int.from_bytes(extensions[position + 2 : position + 4], "big")
        if kind == wanted:
            return extensions[position + 4 : position + 4 + length]
        position += 4 + length
    return None


def with_client_random(client_hello: bytes, new_random: bytes) -> bytes:
    """The same ClientHello datagram with another 32-byte ``random`` (still a valid hello).

    The random sits right after the record header (13), the handshake header (12) and the
    client_version (2).
    """
    if len(new_random) != 32:
        raise ValueError("a ClientHello random is 32 bytes")
    start = RECORD_HEADER_LENGTH + HANDSHAKE_HEADER_LENGTH + 2
    return client_hello[:start] + new_random + client_hello[start + 32 :]


def fragment_client_hello(client_hello: bytes, first_fragment_length: int) -> list[bytes]:
    """Split a one-record ClientHello datagram into two records, one datagram each.

    Each record holds one handshake fragment (RFC 6347 §4.2.3): the first carries bytes
    ``[0, first_fragment_length)`` of the ClientHello body, the second the rest.  Both keep the
    message's full length and message_seq; the second record gets the next sequence number.
    """
    header = client_hello[:RECORD_HEADER_LENGTH]
    handshake = client_hello[RECORD_HEADER_LENGTH:]
    msg_type = handshake[0:1]
    length = handshake[1:4]
    message_seq = handshake[4:6]
    body = handshake[HANDSHAKE_HEADER_LENGTH:]
    if not 0 < first_fragment_length < len(body):
        raise ValueError("the first fragment must hold part of the body, not all or nothing")
    content_type, version, epoch = header[0], header[1:3], header[3:5]
    sequence = int.from_bytes(header[5:11], "big")
    datagrams = []
    for index, (offset, piece) in enumerate(
        [(0, body[:first_fragment_length]), (first_fragment_length, body[first_fragment_length:])]
    ):
        fragment = (
            msg_type
            + length
            + message_seq
            + offset.to_bytes(3, "big")
            + len(piece).to_bytes(3, "big")
            + piece
        )
        datagrams.append(
            bytes([content_type])
            + version
            + epoch
            + (sequence + index).to_bytes(6, "big")
            + len(fragment).to_bytes(2, "big")
            + fragment
        )
    return datagrams


def garbage_record(
    *,
    content_type: int = ContentType.application_data,
    epoch: int = 1,
    sequence: int = 1_000,
    length: int = 48,
    seed: int = 0,
) -> bytes:
    """One well-framed DTLS 1.2 record whose body is seeded random bytes (not decryptable)."""
    body = random.Random(seed).randbytes(length)
    header = struct.pack("!BHH", content_type, 0xFEFD, epoch) + sequence.to_bytes(6, "big")
    return header + len(body).to_bytes(2, "big") + body


# -- sessions in memory -----------------------------------------------------------------------


@dataclass
class InMemoryHandshake:
    """Two :class:`DTLSSession` objects that handshook in memory, and what each one said."""

    client: DTLSSession
    server: DTLSSession
    client_events: list[SessionEvent] = field(default_factory=list)
    server_events: list[SessionEvent] = field(default_factory=list)
    #: Every datagram each side produced during the handshake, in order.
    client_datagrams: list[bytes] = field(default_factory=list)
    server_datagrams: list[bytes] = field(default_factory=list)


class HandshakeOptions(TypedDict, total=False):
    """How :func:`begin_handshake_in_memory` (and :func:`handshake_in_memory`) set a pair up."""

    identity: str | bytes
    key: bytes
    keys: dict[bytes, bytes] | None
    mtu: int
    identity_hint: str | None
    policy: RetransmitPolicy | None
    ciphers: str
    client_releases: bool
    server_releases: bool
    client_ssl: SSL.Context | None
    server_ssl: SSL.Context | None
    resume: SSL.Session | None


def begin_handshake_in_memory(
    *,
    identity: str | bytes = IDENTITY,
    key: bytes = KEY,
    keys: dict[bytes, bytes] | None = None,
    mtu: int = 1400,
    identity_hint: str | None = None,
    policy: RetransmitPolicy | None = None,
    ciphers: str = DEFAULT_CIPHERS,
    now: float = 0.0,
    client_releases: bool = True,
    server_releases: bool = True,
    client_ssl: SSL.Context | None = None,
    server_ssl: SSL.Context | None = None,
    resume: SSL.Session | None = None,
) -> InMemoryHandshake:
    """A client session and a server session started from the client's cookie'd ClientHello.

    The cookie exchange is done here (the HelloVerifyRequest is made locally, as the server's
    reader task would send it); the server's first flight waits in ``server.take_datagrams()``.
    The server knows ``keys`` (default: ``{identity: key}``).  ``client_releases`` /
    ``server_releases`` are each side's ``release_openssl``.  The OpenSSL contexts may be given
    (``client_ssl``, ``server_ssl``: resumption needs the same ones twice; ``identity_hint`` is
    then unused); ``resume`` is a session from an earlier handshake of ``client_ssl``.
    """
    name = identity.encode("latin-1") if isinstance(identity, str) else identity
    known = keys if keys is not None else {name: key}
    chosen_policy = policy or RetransmitPolicy()
    client = DTLSSession.client(
        client_ssl or client_context(ciphers),
        now=now,
        mtu=mtu,
        policy=chosen_policy,
        identity=name,
        key=key,
        session=resume,
        release_openssl=client_releases,
    )
    client_events = list(client.startup_events)
    first = client.take_datagrams()
    client_events += client.receive_datagram(hello_verify_request_for(first[0]), now)
    second = client.take_datagrams()
    server = DTLSSession.server(
        server_ssl or server_context(identity_hint, ciphers),
        second[0],
        now=now,
        mtu=mtu,
        policy=chosen_policy,
        psk_lookup=known.get,
        release_openssl=server_releases,
    )
    return InMemoryHandshake(
        client,
        server,
        client_events=client_events,
        server_events=list(server.startup_events),
        client_datagrams=first + second,
    )


def exchange(
    result: InMemoryHandshake, now: float = 0.0, *, max_rounds: int = 20
) -> InMemoryHandshake:
    """Carry datagrams between the two sessions until neither has anything more to say."""
    for _ in range(max_rounds):
        moved = False
        for datagram in result.server.take_datagrams():
            moved = True
            result.server_datagrams.append(datagram)
            result.client_events += result.client.receive_datagram(datagram, now)
        for datagram in result.client.take_datagrams():
            moved = True
            result.client_datagrams.append(datagram)
            result.server_events += result.server.receive_datagram(datagram, now)
        if not moved:
            return result
    raise AssertionError(f"the sessions were still talking after {max_rounds} rounds")


def handshake_in_memory(
    *, now: float = 0.0, **options: Unpack[HandshakeOptions]
) -> InMemoryHandshake:
    """Run a whole handshake between a client and a server session, all in memory.

    Same arguments as :func:`begin_handshake_in_memory`.  Nothing is lost or reordered; the
    result says how it ended (``client.state`` / ``server.state`` and the events).
    """
    return exchange(begin_handshake_in_memory(now=now, **options), now)


def carry(datagrams: list[bytes], receiver: DTLSSession, now: float = 0.0) -> list[SessionEvent]:
    """Deliver ``datagrams`` in order; everything they caused."""
    events: list[SessionEvent] = []
    for datagram in datagrams:
        events += receiver.receive_datagram(datagram, now)
    return events


def seal_one(sender: DTLSSession, plaintext: bytes) -> bytes:
    """``sender.send(plaintext)``; the one datagram it made."""
    sender.send(plaintext)
    (datagram,) = sender.take_datagrams()
    return datagram


def protection_of(session: DTLSSession) -> RecordProtection:
    """The session's own record layer (it must have released OpenSSL)."""
    protector = session._protector
    assert isinstance(protector, AeadProtector), "this session kept OpenSSL"
    return protector.protection


def established(*sessions: DTLSSession) -> bool:
    return all(session.state is SessionState.ESTABLISHED for session in sessions)


def sizes(datagrams: Iterable[bytes]) -> list[int]:
    """The sizes of ``datagrams`` (for readable assertion messages)."""
    return [len(datagram) for datagram in datagrams]
