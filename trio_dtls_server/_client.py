"""A Trio DTLS 1.2 PSK client: the counterpart the tests, the examples and ``client`` use.

    key = bytes.fromhex("1a2b3c4d5e6f")
    async with await DTLSClient.connect("127.0.0.1", 22334, identity="Alice", key=key) as client:
        await client.send(b"I am Alice, please, accept our ping 0")
        print(await client.receive())

The client owns one connected UDP socket.  It answers the server's HelloVerifyRequest (OpenSSL
does that inside the handshake), retransmits its flights on the same schedule as the server
(1 s, doubling), and gives up after ``handshake_timeout`` seconds with :class:`HandshakeError`.

Certificates: ``ca=`` (a PEM bundle) makes the client offer certificate suites and verify the
server's certificate against it; ``certificate=``/``private_key=`` present a client certificate.
Resumption: pass an earlier client's :attr:`DTLSClient.tls_session` as ``tls_session=`` and the
server may skip the key exchange (:attr:`DTLSClient.resumed` tells).

Words: the *association* is the secured exchange with the server, which the client object
itself stands for; the *TLS session* (:attr:`DTLSClient.tls_session`, OpenSSL's
``SSL_SESSION``) is the resumable master secret and parameters an association was built from,
which a later association may resume.  ``DTLSClient.session`` and ``session=`` are the old,
deprecated names of the TLS session.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket as stdlib_socket
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import PurePath
from types import TracebackType
from typing import Any

import trio
from cryptography import x509
from OpenSSL import SSL

from ._certificates import use_client_credentials
from ._codes import EventCode
from ._config import DEFAULT_IPV4_MTU, DEFAULT_IPV6_MTU
from ._connection import ConnectionClosed
from ._errors import DTLSError
from ._events import (
    DatagramReceived,
    ErrorEvent,
    InfoEvent,
    ServerEvent,
    WarningEvent,
    describe_exception,
)
from ._openssl import (
    install_client_connection_id,
    install_client_psk,
    new_dtls_context,
    restrict_groups_and_signatures,
)
from ._profiles import client_cipher_string, lowers_security_level
from ._session import (
    ApplicationData,
    ConnectionFailed,
    DTLSSession,
    RecordsDropped,
    RemoteClosed,
    RetransmitPolicy,
    Retransmitted,
    SessionEvent,
    SessionState,
)
from ._text import printable
from ._transport import Address, DatagramTransport, bind_udp

__all__ = ["DTLSClient", "HandshakeError"]

logger = logging.getLogger("trio_dtls_server.client")

EventCallback = Callable[[ServerEvent], None]


class HandshakeError(DTLSError):
    """The client's handshake failed (alert, wrong key, unknown identity) or timed out.

    ``alert`` names the fatal alert the server sent (``unknown_psk_identity (115)``), if any.
    """

    def __init__(self, message: str, *, alert: str | None = None) -> None:
        super().__init__(message)
        self.alert = alert


@functools.lru_cache(maxsize=16)
def _client_context(
    ciphers: str,
    ca: str | None = None,
    certificate: str | None = None,
    private_key: str | None = None,
) -> SSL.Context:
    # One context per cipher list and credential files: contexts are costly to build, and the
    # PSK callback finds each connection's identity and key through the connection itself.
    context = new_dtls_context(server=False, ciphers=ciphers)
    install_client_psk(context)
    # Server certificates are always verified: with no CA given, every certificate fails.
    context.set_verify(SSL.VERIFY_PEER)
    use_client_credentials(context, ca=ca, certificate=certificate, private_key=private_key)
    if lowers_security_level(ciphers):
        restrict_groups_and_signatures(context)
    # RFC 9146: only connections given a CID to offer send the extension (see
    # DTLSSession.client); the others' hellos are byte for byte what they were.  One context
    # for both, so that a session of either kind may be offered for resumption by the other.
    install_client_connection_id(context)
    return context


def _connection_id_to_offer(connection_id: bool | int) -> bytes | None:
    """The CID a client asks for: None (no extension), b"" (``True``: send-only, the server's
    records stay standard, as constrained devices usually ask), or ``n`` random bytes."""
    if connection_id is False:
        return None
    if connection_id is True:
        return b""
    if isinstance(connection_id, int) and 0 <= connection_id <= 255:
        return os.urandom(connection_id)
    raise ValueError(
        f"connection_id must be True, False or a length from 0 to 255, not {connection_id!r}"
    )


def _path_text(path: str | PurePath | None) -> str | None:
    return None if path is None else str(path)


def _log_event(event: ServerEvent) -> None:
    level = {"error": logging.ERROR, "warning": logging.WARNING}.get(event.severity, logging.INFO)
    # Like the server's hub: no log line holds a raw control character (the name may be any
    # bytes the application chose as its identity).
    exception = event.exception if isinstance(event, ErrorEvent) else None
    logger.log(level, "%s", printable(event.message), exc_info=exception)


class DTLSClient(trio.abc.Channel[bytes]):
    """One DTLS association to a server.  Build it with :meth:`connect`.

    A ``trio.abc.Channel[bytes]``, like :class:`DTLSConnection`: ``send`` encrypts one
    datagram, ``receive`` returns one, ``async for`` reads until the association ends and
    ``aclose`` (or leaving ``async with``) sends close_notify.
    """

    def __init__(
        self,
        transport: DatagramTransport,
        server: Address,
        session: DTLSSession,
        name: str,
        on_event: EventCallback,
    ) -> None:
        self._transport = transport
        self._server = server
        self._session = session
        self._name = name
        self._on_event = on_event
        self._ready: deque[bytes] = deque()
        self._closed_reason: str | None = None
        self._send_lock = trio.Lock()
        #: The negotiated suite, e.g. ``PSK-AES128-GCM-SHA256``.
        self.cipher: str = session.cipher
        #: ``DTLSv1.2``.
        self.protocol: str = session.protocol
        #: The local ``(host, port)`` of the client's socket.
        self.local_address: Address = transport.local_address
        #: Datagrams that came from somewhere other than the server (dropped unread).
        self.foreign_datagrams = 0
        #: The resumable TLS session (not the association: that is this client), for
        #: ``DTLSClient.connect(..., tls_session=client.tls_session)`` later.
        self.tls_session: SSL.Session | None = None
        #: True if the handshake resumed the ``tls_session=`` given (an abbreviated handshake).
        self.resumed = False
        #: The server's certificate (verified against ``ca``), or None for PSK suites.
        self.peer_certificate: x509.Certificate | None = None
        #: RFC 9146: the CID the server puts on its records to us (b"" for send-only), or
        #: None when the handshake negotiated no connection ID.
        self.connection_id: bytes | None = None
        #: The CID we put on our records (the server's), or None.  With one, the server
        #: finds this association whatever our address: a new source port keeps it.
        self.server_connection_id: bytes | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        identity: str | bytes | None = None,
        key: bytes | None = None,
        local_port: int = 0,
        **options: Any,
    ) -> DTLSClient:
        """Bind a UDP socket, run the handshake with ``host``:``port``, return the client.

        Raises :class:`HandshakeError` if the server refuses (the reason says why) or if no
        handshake completes within ``handshake_timeout`` seconds.  ``options`` are those of
        :meth:`connect_over`.
        """
        infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        wildcard = "::" if family == stdlib_socket.AF_INET6 else "0.0.0.0"
        transport = await bind_udp(wildcard, local_port, buffer_size=1 << 20)
        server = (str(address[0]), int(address[1]))
        if options.get("ca") is not None:
            # Like ssl.create_default_context(): a CA without a name check would accept any
            # certificate that CA ever signed.  Pass server_hostname to check another name.
            options.setdefault("server_hostname", host)
        return await cls.connect_over(transport, server, identity=identity, key=key, **options)

    @classmethod
    async def connect_over(
        cls,
        transport: DatagramTransport,
        server: Address,
        *,
        identity: str | bytes | None = None,
        key: bytes | None = None,
        ciphers: str = "default",
        ca: str | PurePath | None = None,
        certificate: str | PurePath | None = None,
        private_key: str | PurePath | None = None,
        tls_session: SSL.Session | None = None,
        mtu: int | None = None,
        retransmit: RetransmitPolicy | None = None,
        handshake_timeout: float = 30.0,
        on_event: EventCallback = _log_event,
        display_name: str | None = None,
        server_hostname: str | None = None,
        release_openssl: bool = True,
        session: SSL.Session | None = None,
        connection_id: bool | int = False,
    ) -> DTLSClient:
        """Run the handshake over ``transport`` (which the client then owns and closes).

        ``identity`` and ``key`` are the PSK credentials (both or neither).  ``ciphers`` is a
        cipher profile (``default``, ``iot``, ``compat``: its PSK suites when there is a key,
        its certificate suites when there is a ``ca``) or an OpenSSL cipher string.  ``ca``
        verifies the server's certificate; ``certificate`` and ``private_key`` (PEM; the key
        may be in the certificate file) are the client's own.  ``tls_session`` asks to resume
        an earlier client's :attr:`tls_session`.  ``on_event`` receives progress as the same
        event objects the server uses (default: :mod:`logging` under
        ``trio_dtls_server.client``);
        ``display_name`` names the client in them (default: the identity, or
        ``certificate client`` without one).  ``server_hostname`` (a DNS name or an IP
        address) must match the server's certificate when there is a ``ca``; :meth:`connect`
        passes the host it was given.  ``release_openssl`` is the server's option of that name
        (:class:`ServerConfig`): after an AEAD handshake, records are protected without OpenSSL.
        ``session`` is the deprecated name of ``tls_session`` (a :class:`DeprecationWarning`).
        ``connection_id`` offers RFC 9146 connection IDs: ``True`` asks for none on the
        server's records (send-only: we put the server's CID on ours, which is what keeps the
        association when our address changes), ``n`` asks for an ``n``-byte one; the server
        decides (:attr:`connection_id`, :attr:`server_connection_id`).
        """
        if session is not None:
            warnings.warn(
                "DTLSClient.connect(session=...) is deprecated: use tls_session=...",
                DeprecationWarning,
                stacklevel=2,
            )
            if tls_session is None:
                tls_session = session
        if (identity is None) != (key is None):
            transport.close()
            raise ValueError("give both identity and key (a PSK client) or neither")
        if isinstance(identity, bytes):
            name = identity.decode("latin-1")
            identity_bytes: bytes | None = identity
        elif identity is not None:
            name, identity_bytes = identity, identity.encode("latin-1")
        else:
            name, identity_bytes = "certificate client", None
        if display_name is not None:
            name = display_name
        try:
            offer = _connection_id_to_offer(connection_id)
            context = _client_context(
                client_cipher_string(ciphers, psk=key is not None, verify_server=ca is not None),
                _path_text(ca),
                _path_text(certificate),
                _path_text(private_key),
            )
            dtls_session = DTLSSession.client(
                context,
                now=trio.current_time(),
                mtu=mtu or (DEFAULT_IPV6_MTU if transport.is_ipv6 else DEFAULT_IPV4_MTU),
                policy=retransmit or RetransmitPolicy(),
                identity=identity_bytes,
                key=key,
                session=tls_session,
                server_hostname=server_hostname if ca is not None else None,
                release_openssl=release_openssl,
                connection_id=offer,
            )
            client = cls(transport, server, dtls_session, name, on_event)
            on_event(InfoEvent(EventCode.HANDSHAKE_START, f"{name}: starting a handshake"))
            try:
                with trio.move_on_after(handshake_timeout):
                    await client._handshake()
            except OSError:
                # The network said no (a connected socket hears "port unreachable"): that is
                # the caller's to handle, like a failed connect, not a fault of ours.
                raise
            except Exception as error:  # any other fault is this handshake's failure
                raise client._internal_error(error) from error
            if dtls_session.state is SessionState.HANDSHAKING:
                dtls_session.close()
                message = f"{name}: handshake not finished within {handshake_timeout:g} s"
                on_event(ErrorEvent(EventCode.HANDSHAKE_TIMEOUT, message))
                raise HandshakeError(message)
            if dtls_session.state is not SessionState.ESTABLISHED:
                message = f"{name}: handshake error - {dtls_session.failure_reason}"
                if dtls_session.alert_received is not None:
                    message += f" (fatal alert from the server: {dtls_session.alert_received})"
                on_event(ErrorEvent(EventCode.HANDSHAKE_FAILED, message))
                raise HandshakeError(message, alert=dtls_session.alert_received)
        except BaseException:
            transport.close()
            raise
        client.cipher = dtls_session.cipher
        client.protocol = dtls_session.protocol
        client.tls_session = dtls_session.ssl_session
        client.resumed = dtls_session.resumed
        client.peer_certificate = dtls_session.peer_certificate
        client.connection_id = dtls_session.connection_id
        client.server_connection_id = dtls_session.peer_connection_id
        # What the server sent ahead of its final flight (a greeting, even a goodbye).
        client._note_events(dtls_session.take_early_events(), None)
        await client._send_all(dtls_session.take_datagrams())
        on_event(
            InfoEvent(EventCode.HANDSHAKE_COMPLETE, f"{name}: encrypted connection established!")
        )
        return client

    async def _handshake(self) -> None:
        session, name = self._session, self._name
        while True:
            await self._send_all(session.take_datagrams())
            if session.state is not SessionState.HANDSHAKING:
                return
            datagram: bytes | None = None
            with trio.move_on_at(session.timer_deadline or math.inf):
                datagram = await self._receive_datagram()
            now = trio.current_time()
            if datagram is None:
                for event in session.handle_timer(now):
                    if isinstance(event, Retransmitted):
                        self._on_event(
                            WarningEvent(
                                EventCode.RETRANSMIT,
                                f"{name}: handshake timeout, trying to re-transmit",
                            )
                        )
                continue
            # Completion and failure are read from session.state by connect_over().
            session.receive_datagram(datagram, now)
            if session.state is SessionState.HANDSHAKING:
                self._on_event(
                    InfoEvent(
                        EventCode.HANDSHAKE_PROGRESS, f"{name}: continuing with handshake ..."
                    )
                )

    def _internal_error(self, error: Exception) -> HandshakeError:
        """An exception nobody expected during the handshake, as the :class:`HandshakeError`
        :meth:`connect` promises; the server gets a fatal ``internal_error`` alert if it can
        still read one (best effort, never blocking)."""
        message = f"{self._name}: handshake error - internal error: {describe_exception(error)}"
        try:
            self._session.abort(message)
            for datagram in self._session.take_datagrams():
                self._transport.send_nowait(datagram, self._server)
        except Exception:  # noqa: BLE001 - the session may be what broke
            pass
        self._on_event(ErrorEvent(EventCode.HANDSHAKE_FAILED, message, exception=error))
        return HandshakeError(message)

    async def _receive_datagram(self) -> bytes:
        """The next datagram from the server; anything from elsewhere is dropped."""
        while True:
            received = self._transport.receive_nowait(65536)
            if received is None:
                await self._transport.wait_readable()
                continue
            datagram, source = received
            if source == self._server:
                return datagram
            self.foreign_datagrams += 1

    async def _send_all(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            while not self._transport.send_nowait(datagram, self._server):
                async with self._send_lock:
                    await self._transport.wait_writable()

    @property
    def session(self) -> SSL.Session | None:
        """Deprecated: the old name of :attr:`tls_session` (a :class:`DeprecationWarning`)."""
        warnings.warn(
            "DTLSClient.session is deprecated: use DTLSClient.tls_session",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.tls_session

    # -- data -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def send(self, data: bytes) -> None:
        """Encrypt ``data`` as one datagram and send it."""
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        self._session.send(data)
        await self._send_all(self._session.take_datagrams())

    async def receive(self) -> bytes:
        """The next datagram from the server; :class:`ConnectionClosed` once it has ended."""
        while not self._ready:
            if self._closed_reason is not None:
                raise ConnectionClosed(self._closed_reason)
            datagram = await self._receive_datagram()
            self._note_events(
                self._session.receive_datagram(datagram, trio.current_time()), datagram
            )
            await self._send_all(self._session.take_datagrams())
        return self._ready.popleft()

    def _note_events(self, events: list[SessionEvent], datagram: bytes | None) -> None:
        """Act on the session's events (``datagram``: the one they came from, if known)."""
        for event in events:
            if isinstance(event, ApplicationData):
                self._ready.append(event.data)
                # Qt's client shows each reply with the DTLS datagram it came in.
                self._on_event(
                    DatagramReceived(
                        EventCode.DATAGRAM,
                        f"{self._name} received a DTLS datagram",
                        self._server,
                        ciphertext=event.record if datagram is None else datagram,
                        plaintext=event.data,
                    )
                )
            elif isinstance(event, RemoteClosed):
                self._closed_reason = "the server sent close_notify"
                self._on_event(
                    ErrorEvent(EventCode.REMOTE_CLOSED, f"{self._name}: shutdown alert received")
                )
            elif isinstance(event, ConnectionFailed):
                self._closed_reason = event.reason
                self._on_event(
                    ErrorEvent(EventCode.CONNECTION_FAILED, f"{self._name}: {event.reason}")
                )
            elif isinstance(event, RecordsDropped):
                self._on_event(
                    WarningEvent(EventCode.DROPPED, f"{self._name}: {event.reason}, dropped")
                )

    def __aiter__(self) -> DTLSClient:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Send close_notify (if still connected) and close the socket; idempotent."""
        if self._closed_reason is None:
            self._closed_reason = "closed by the client"
        if self._session.state is SessionState.ESTABLISHED:
            self._session.close()
            # Best effort and never blocking: a goodbye must not hang a cancelled caller.
            for datagram in self._session.take_datagrams():
                self._transport.send_nowait(datagram, self._server)
        self._transport.close()

    async def __aenter__(self) -> DTLSClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
