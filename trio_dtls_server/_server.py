"""The Trio server: one UDP socket, one reader task, one task per verified peer.

Where things are:

* :meth:`DTLSServer.serve` binds the socket and opens the nursery that owns every task.
* :meth:`DTLSServer._reader` is **the reader task**: it reads datagrams in a tight loop and
  classifies each one synchronously (:meth:`DTLSServer._on_datagram`).  It never waits for a
  peer: a datagram for a known peer goes into that peer's bounded inbox with ``send_nowait``
  unless its record headers show it cannot be authentic (:meth:`DTLSSession.screen`); when
  the inbox is full the reader yields twice, at most once per batch, for the peer's task to
  catch up, then drops and counts (:meth:`DTLSServer._let_peer_catch_up`); a ClientHello
  from anyone is answered statelessly with a HelloVerifyRequest unless its cookie
  (:mod:`._cookie`) is valid; anything else is dropped and counted.  No OpenSSL object, task
  or table entry exists for a peer before its cookie checks.  A datagram whose first byte is
  25 (``tls12_cid``, RFC 9146) is routed by the connection ID in its header instead of its
  address (:meth:`DTLSServer._on_cid_datagram`); from a new address it carries that address
  along, and the peer task moves the association there once a record in it authenticates and
  is the newest (:meth:`DTLSServer._follow_peer`, event ``peer_moved``).  See
  ``docs/connection_ids.md``.
* :meth:`DTLSServer._run_peer` is **the peer task**: it runs the handshake (with the handshake
  deadline as a cancel scope), then the application's handler with a :class:`DTLSConnection`.
  Its cancel scope is how the server replaces (client restart), evicts or shuts down a peer.
  An exception it did not expect (the handler's, a PSK store's, a bug's) ends that peer alone
  (:meth:`DTLSServer._peer_failed`); the reader and every other peer carry on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
from OpenSSL import SSL

from ._certificates import (
    CertificateConfig,
    ServerCertificate,
    load_certificate_config,
    use_server_certificate,
)
from ._codes import DropReason, EventCode, FailureKind
from ._config import DEFAULT_IPV4_MTU, DEFAULT_IPV6_MTU, DEFAULT_PORT, ServerConfig
from ._connection import (
    IDLE_WATCH_GRACE,
    AddressedDatagram,
    ConnectionClosed,
    DTLSConnection,
    PeerSlot,
    drop_warning,
)
from ._cookie import CookieJar
from ._errors import DTLSError
from ._events import (
    ErrorEvent,
    EventFilter,
    EventHub,
    InfoEvent,
    ServerEvent,
    WarningEvent,
    describe_exception,
    peer_info,
)
from ._heap import HeapTrimmer
from ._openssl import (
    configure_session_resumption,
    install_server_connection_id,
    install_server_psk,
    new_dtls_context,
    restrict_groups_and_signatures,
    set_session_id_context,
)
from ._peers import EndReason, PeerTable
from ._profiles import CipherSelection, select_ciphers
from ._psk import (
    AsyncPskStore,
    PskFileStore,
    PskSource,
    as_psk_store,
    is_async_store,
    reload_on_signal,
    store_generation,
)
from ._session import (
    DTLSSession,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeProgress,
    PskIdentity,
    Retransmitted,
    SessionEvent,
    SessionState,
)
from ._stats import ServerStatistics, StatisticsSnapshot
from ._text import quote_peer_text
from ._transport import (
    DatagramTransport,
    ReplySource,
    UDPTransport,
    bind_udp,
    receive_buffer_cap,
)
from ._wire import (
    ContentType,
    FragmentedClientHello,
    MalformedDatagram,
    build_hello_verify_request,
    client_hello_connection_id,
    datagram_connection_id,
    first_content_type,
    is_protected_data_or_alert,
    looks_like_client_hello,
    parse_initial_client_hello,
    starts_with_cid_record,
)
from .qt import qt_ack_handler

__all__ = ["DTLSServer", "Handler", "ServerBindError"]

Address = tuple[str, int]
Handler = Callable[[DTLSConnection], Awaitable[None]]

# How many datagrams the reader handles before it lets other tasks run.
_READ_BATCH = 64

#: The most bytes waiting in a handshaking peer's inbox (one datagram of any size always
#: fits).  A client's whole flight, even a certificate chain, is a few KiB and the peer task
#: takes each datagram at once, except while an asynchronous PSK lookup runs (up to
#: ``psk_lookup_timeout``): then 16 KiB holds the flight and its retransmissions, where
#: ``peer_queue_size`` datagrams of up to 18 KiB would hold over a megabyte per half-open peer.
HANDSHAKE_INBOX_BUDGET = 16 * 1024


class ServerBindError(DTLSError, OSError):
    """The UDP socket could not be bound; the message names the address and the OS reason."""


class DTLSServer:
    """A DTLS 1.2 server for Trio: PSK devices, certificate clients, or both.

    Typical use, in a Trio program::

        server = DTLSServer(psk={"device-1": key1, "device-2": key2})
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "0.0.0.0", 5684)
            ...  # serves until the nursery is cancelled (or server.close())

    ``psk`` is a :class:`~trio_dtls_server.PskStore` or :class:`~trio_dtls_server.AsyncPskStore`,
    one ``bytes`` key for every identity, a mapping of identity to key, a PSK file path or an
    ``async def`` lookup function.  ``certificate`` (a :class:`CertificateConfig`) adds
    certificate suites and client-certificate checking; give either or both.
    ``config.ciphers`` picks the cipher profile; a combination that leaves no usable suite
    raises :class:`~trio_dtls_server.CipherConfigError` here, not at the first handshake.
    ``handler`` is called with a :class:`DTLSConnection` for each
    peer whose handshake completed, in that peer's own task; the default,
    :func:`~trio_dtls_server.qt.qt_ack_handler`, answers each datagram like Qt's example.
    ``cookie_secret`` (at least 16 random bytes) is for several servers on one address and
    host, such as the workers of :func:`~trio_dtls_server.serve_workers`: servers given the
    same one accept each other's HelloVerifyRequest cookies (see
    :class:`~trio_dtls_server._cookie.CookieJar`); without it each server draws secrets of its
    own.  Events (Qt's error / warning / info / datagram
    signals) go to :mod:`logging`, to :meth:`events` subscribers and to ``on_event``; counters
    to :meth:`statistics`.  ``on_event(event)`` is called at once, inside the server's tasks,
    like a Qt signal's direct connection: before the reply to a datagram or the next handshake
    flight is sent, so what it prints reads in causal order with what the peers print.  It must
    be quick and must not block; what it raises is logged and the server goes on.  A
    subscriber (:meth:`events`) runs in its own task instead and may see events later.
    """

    def __init__(
        self,
        psk: PskSource | None = None,
        *,
        handler: Handler = qt_ack_handler,
        config: ServerConfig | None = None,
        identity_hint: str | None = None,
        certificate: CertificateConfig | None = None,
        on_event: Callable[[ServerEvent], object] | None = None,
        cookie_secret: bytes | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        if identity_hint is not None:
            self.config = dataclasses.replace(self.config, identity_hint=identity_hint)
        store = None if psk is None else as_psk_store(psk)
        self._psk_store = store
        # OpenSSL's callback can only use a synchronous store; an async one is awaited by the
        # peer task before the ClientKeyExchange reaches OpenSSL (see _prefetch_psk).
        self._async_store: AsyncPskStore | None = None
        self._sync_lookup: Callable[[bytes], bytes | None] | None = None
        if is_async_store(store):
            assert isinstance(store, AsyncPskStore)
            self._async_store = store
        elif store is not None:
            self._sync_lookup = store.lookup  # type: ignore[assignment]
        self._psk_generation = store_generation(store)
        self._certificate: ServerCertificate | None = (
            None if certificate is None else load_certificate_config(certificate)
        )
        self._cipher_selection = select_ciphers(
            self.config.ciphers, psk=store is not None, certificate=self._certificate
        )
        self._handler = handler
        self._context = self._make_context()
        # RFC 9146: clients that offer the connection_id extension handshake on a context of
        # their own, which has the extension's callbacks and never resumes: OpenSSL's custom
        # extension API skips the extension on resumed handshakes, and a client that asks
        # for a CID must get one, so it gets a full handshake (see docs/connection_ids.md).
        # Clients that do not offer it use self._context exactly as before.
        self._cid_context: SSL.Context | None = (
            self._make_context(connection_ids=True) if self.config.connection_id_length else None
        )
        #: The first bytes of every CID this server issues (``--workers`` sets it to the
        #: worker's index so that a BPF program can steer CID datagrams to their worker); the
        #: rest is random.  At most ``connection_id_length`` bytes are used.
        self._connection_id_prefix: bytes = b""
        self._stats = ServerStatistics()
        self._hub = EventHub()
        if on_event is not None:
            self._hub.observe(on_event)
        # A cookie_secret shared by several servers (the workers of one address) makes every one
        # of them accept the others' cookies; without one, this server draws its own secrets.
        self._cookies = CookieJar(
            rotation_interval=self.config.cookie_rotation, master_key=cookie_secret
        )
        # Admission, §4.2.8 replacement, eviction: the table decides, this class carries it out.
        self._peers: PeerTable[PeerSlot] = PeerTable(
            max_peers=self.config.max_peers,
            max_handshakes=self.config.max_handshakes,
            evict_idle_after=self.config.evict_idle_after,
        )
        # Gives the C heap back once a wave of handshakes has ended (see _heap).
        self._heap = HeapTrimmer()
        self._transport: DatagramTransport | None = None
        self._nursery: trio.Nursery | None = None
        self._send_lock = trio.Lock()
        self._stopped = trio.Event()
        self._stopped.set()
        self._local_address: Address | None = None
        self._mtu = DEFAULT_IPV4_MTU
        self._accepting = False
        self._paused = False
        # A datagram whose peer's inbox was full, held by the reader while that peer's task
        # catches up (see _reader); at most one per batch, and only inside the reader loop.
        self._held: tuple[PeerSlot, bytes] | None = None
        self._may_hold = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def local_address(self) -> Address | None:
        """The bound ``(host, port)`` (the real port when 0 was asked), or None when not serving."""
        return self._local_address

    def is_listening(self) -> bool:
        """True while :meth:`serve` is running and accepting new peers."""
        return self._accepting and not self._paused

    def stop_accepting(self) -> None:
        """Qt's *Stop listening*: new clients get no answer, known peers carry on.

        Cookieless ClientHellos get no HelloVerifyRequest and verified ones start no handshake
        (each counted in ``drops[DropReason.NOT_ACCEPTING]``); established and handshaking
        peers are untouched, and a client that restarts on a known address is a new client
        too.  :meth:`resume_accepting` undoes it; :meth:`close` stops everything.
        """
        if not self._paused:
            self._paused = True
            self._hub.emit(
                InfoEvent(EventCode.NOT_ACCEPTING, "Server is not accepting new connections")
            )

    def resume_accepting(self) -> None:
        """Accept new clients again after :meth:`stop_accepting`."""
        if self._paused:
            self._paused = False
            self._hub.emit(
                InfoEvent(EventCode.ACCEPTING, "Server is accepting new connections again")
            )

    @property
    def peer_count(self) -> int:
        """Peers held now: established plus handshaking."""
        return len(self._peers)

    @property
    def cipher_selection(self) -> CipherSelection:
        """The cipher profile as resolved: the OpenSSL string and the suites it can negotiate."""
        return self._cipher_selection

    async def reload_psk_on_signal(
        self,
        signum: int = signal.SIGHUP,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Reload the PSK file on SIGHUP (or ``signum``) until cancelled; each reload is an event.

        ``await nursery.start(server.reload_psk_on_signal)``.  Needs a
        :class:`~trio_dtls_server.PskFileStore` (``DTLSServer(psk=PskFileStore(path))`` or
        ``psk=Path(...)``).  Established peers are untouched; sessions made under the old keys
        are no longer resumed.
        """
        store = self._psk_store
        if not isinstance(store, PskFileStore):
            raise TypeError("reload_psk_on_signal needs a PskFileStore as the server's PSK store")

        def report(ok: bool, message: str) -> None:
            if ok:
                self._hub.emit(InfoEvent(EventCode.PSK_RELOADED, message))
            else:
                self._hub.emit(ErrorEvent(EventCode.PSK_RELOAD_FAILED, message))

        await reload_on_signal(store, signum, on_reload=report, task_status=task_status)

    def statistics(self) -> StatisticsSnapshot:
        """A snapshot of every counter (the health report)."""
        transport = self._transport
        return self._stats.snapshot(
            peers=len(self._peers),
            handshaking=self._peers.handshaking,
            events_dropped=self._hub.dropped,
            kernel_drops=transport.kernel_drops() if isinstance(transport, UDPTransport) else None,
        )

    @asynccontextmanager
    async def events(
        self, max_buffer: int | None = None, *, wanted: EventFilter | None = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[ServerEvent]]:
        """Subscribe to events: ``async with server.events() as stream: async for e in stream``.

        The stream is bounded (``ServerConfig.event_buffer`` by default): if the subscriber falls
        behind, events are dropped for it and counted in ``statistics().events_dropped`` — the
        server never waits for a reader.  ``wanted`` (an :class:`EventFilter`) limits the stream
        to some severities and codes; events that nobody takes are then not even built.
        """
        receive = self._hub.subscribe(max_buffer or self.config.event_buffer, wanted)
        async with receive:
            yield receive

    def close(self) -> None:
        """Stop serving: every established peer gets close_notify, then the socket closes.

        Returns at once; :meth:`aclose` also waits until :meth:`serve` has returned.
        """
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        self.close()
        await self._stopped.wait()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind ``host``:``port`` (IPv4 or IPv6) and serve until cancelled or :meth:`close`\\ d.

        Use it as ``address = await nursery.start(server.serve, host, port)``: that returns the
        bound ``(host, port)`` once the socket listens (the real port when 0 was asked).  A bind
        failure raises :class:`ServerBindError` naming the address and the OS reason.
        """
        if not self._stopped.is_set():
            raise RuntimeError("this server is already serving")
        try:
            transport = await bind_udp(host, port, receive_buffer=self.config.receive_buffer)
        except OSError as error:
            raise ServerBindError(error.errno or 0, error.strerror or str(error)) from None
        await self.serve_on(transport, task_status=task_status)

    async def serve_on(
        self,
        transport: DatagramTransport,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a transport you bound yourself (or an in-memory one, in tests).

        The server owns the transport from here on and closes it when it stops.
        """
        if not self._stopped.is_set():
            transport.close()
            raise RuntimeError("this server is already serving")
        self._stopped = trio.Event()
        self._transport = transport
        self._local_address = transport.local_address
        self._mtu = self.config.mtu or (DEFAULT_IPV6_MTU if transport.is_ipv6 else DEFAULT_IPV4_MTU)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._accepting = True
                nursery.start_soon(self._reader, transport)
                host, port = self._local_address
                self._hub.emit(
                    InfoEvent(
                        EventCode.LISTENING,
                        f"Server is listening on address {host} and port {port}",
                    )
                )
                self._check_receive_buffer(transport)
                task_status.started(self._local_address)
        finally:
            # Peer tasks sent their close_notify while being cancelled; now the socket can go.
            self._accepting = False
            self._nursery = None
            transport.close()
            self._transport = None
            self._local_address = None
            self._hub.emit(InfoEvent(EventCode.STOPPED, "Server is not accepting new connections"))
            self._stopped.set()

    def _check_receive_buffer(self, transport: DatagramTransport) -> None:
        """Say so once if the kernel granted less receive buffer than the config asks for."""
        if not isinstance(transport, UDPTransport):
            return
        wanted = self.config.receive_buffer
        # Linux reports twice what it grants (the other half is its bookkeeping allowance).
        granted = transport.receive_buffer // 2
        if granted >= wanted:
            return
        cap = receive_buffer_cap()
        why = f"net.core.rmem_max is {cap}; " if cap is not None else ""
        # Information, not a warning: with the defaults most machines clip it, and most
        # deployments never see a burst that needs more.
        self._hub.emit(
            InfoEvent(
                EventCode.RECEIVE_BUFFER_CLIPPED,
                f"the socket's receive buffer is {granted} bytes, not the {wanted} asked for: "
                f"{why}raise it (sysctl -w net.core.rmem_max={wanted}) or a burst of "
                "datagrams may be lost in the kernel (statistics: kernel_drops)",
            )
        )

    # -- setup ----------------------------------------------------------------------------------

    def _make_context(self, *, connection_ids: bool = False) -> SSL.Context:
        selection = self._cipher_selection
        context = new_dtls_context(server=True, ciphers=selection.cipher_string)
        if self._psk_store is not None:
            hint = self.config.identity_hint
            install_server_psk(context, hint.encode("utf-8") if hint else None)
        if self._certificate is not None:
            use_server_certificate(context, self._certificate)
        if selection.lowers_security_level:
            # @SECLEVEL=0 is there for the CCM_8 suites only; keep groups and signatures strong.
            restrict_groups_and_signatures(context)
        configure_session_resumption(
            context,
            enabled=self.config.session_resumption and not connection_ids,
            lifetime=self.config.session_lifetime,
            session_id_context=b"trio_dtls_server/cid"
            if connection_ids
            else self._session_id_context(),
        )
        if connection_ids:
            install_server_connection_id(context)
        # The real cookie check is ours and happens before any OpenSSL object exists (see
        # _on_client_hello); DTLSv1_listen only needs these to accept the verified hello.
        context.set_cookie_generate_callback(lambda connection: b"\0" * CookieJar.COOKIE_LENGTH)
        context.set_cookie_verify_callback(lambda connection, cookie: True)
        return context

    def _session_id_context(self) -> bytes:
        """Sessions resume only within one PSK store generation (see :mod:`._psk`)."""
        return f"trio_dtls_server/{self._psk_generation or 0}".encode("ascii")

    def _follow_psk_generation(self) -> None:
        """If the store's keys changed since the last handshake, stop resuming older sessions."""
        generation = store_generation(self._psk_store)
        if generation != self._psk_generation:
            self._psk_generation = generation
            set_session_id_context(self._context, self._session_id_context())

    # -- sending --------------------------------------------------------------------------------

    def _send_nowait(
        self, datagram: bytes, address: Address, source: ReplySource | None = None
    ) -> bool:
        """Try one non-blocking send; False if the transport's buffer is full (or it is gone)."""
        transport = self._transport
        if transport is None or not transport.send_nowait(datagram, address, source):
            return False
        self._stats.datagrams_out += 1
        self._stats.bytes_out += len(datagram)
        return True

    async def _transmit(
        self, datagrams: list[bytes], address: Address, source: ReplySource | None = None
    ) -> None:
        """Send datagrams to ``address``; waits (under a lock) only if the socket is full."""
        for datagram in datagrams:
            while not self._send_nowait(datagram, address, source):
                transport = self._transport
                if transport is None:
                    return
                # Only one task may wait for writability on a socket at a time in Trio.
                async with self._send_lock:
                    await transport.wait_writable()

    # -- the reader task ------------------------------------------------------------------------

    async def _reader(self, transport: DatagramTransport) -> None:
        """The reader task: drain every ready datagram, classify it, then wait for more."""
        size = self.config.max_datagram_size + 1
        while True:
            await transport.wait_readable()
            self._may_hold = True
            for _ in range(_READ_BATCH):
                received = transport.receive_nowait(size)
                if received is None:
                    break
                try:
                    self._on_datagram(received[0], received[1], size, transport.reply_source())
                except Exception as error:  # noqa: BLE001 - one datagram must not stop the reader
                    self._datagram_failed(received[1], error)
                if self._held is not None:
                    await self._let_peer_catch_up()
            self._may_hold = False

    async def _let_peer_catch_up(self) -> None:
        """Retry the held datagram once its peer's task has had a chance to empty its inbox.

        Trio runs ready tasks in either order, so in a burst the reader may fill a peer's
        inbox twice before that peer's task runs once, and then drop datagrams the task would
        have taken at once -- perhaps the real peer's, among an off-path attacker's forgeries
        (which only the peer task can tell apart: it takes the cipher).  So the first time in
        a batch that an inbox is full the reader yields twice, which lets a peer task that is
        waiting for its inbox run whichever order Trio picks, and then retries.  A peer task
        busy elsewhere (a handler that stopped reading) does not run: the datagram is then
        dropped as before.  The cost is bounded: two checkpoints per batch of datagrams.
        """
        assert self._held is not None
        slot, datagram = self._held
        self._held = None
        self._may_hold = False
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        try:
            slot.deliver_nowait(datagram)
        except trio.WouldBlock:
            self._overflow(slot)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._stats.drops[DropReason.PEER_CLOSING] += 1

    def _overflow(self, slot: PeerSlot) -> None:
        self._stats.queue_overflows += 1
        self._drop(
            DropReason.QUEUE_FULL,
            EventCode.QUEUE_OVERFLOW,
            f"{slot.info}: inbound queue full ({self.config.peer_queue_size}), dropped",
            slot.address,
        )

    def _datagram_failed(self, address: Address, error: Exception) -> None:
        """An exception nobody expected while the reader classified one datagram: that
        datagram is dropped (``drops["internal error"]``, error event with the exception); the
        reader reads on."""
        self._stats.drops[DropReason.INTERNAL_ERROR] += 1
        self._hub.emit(
            ErrorEvent(
                EventCode.DATAGRAM_FAILED,
                f"{peer_info(address)}: internal error, datagram dropped: "
                f"{describe_exception(error)}",
                address,
                exception=error,
            ),
            rate_limited=True,
        )

    def _warn(self, code: EventCode, message: str, peer: Address | None) -> None:
        self._hub.emit(WarningEvent(code, message, peer), rate_limited=True)

    def _drop(
        self, reason: DropReason, code: EventCode, message: str, peer: Address | None
    ) -> None:
        self._stats.drops[reason] += 1
        self._warn(code, message, peer)

    def _on_datagram(
        self,
        datagram: bytes,
        address: Address,
        read_size: int,
        source: ReplySource | None = None,
    ) -> None:
        """Classify one datagram and route it; runs in the reader task, never waits."""
        stats = self._stats
        stats.datagrams_in += 1
        stats.bytes_in += len(datagram)
        if not datagram:
            self._drop(
                DropReason.EMPTY,
                EventCode.EMPTY_DATAGRAM,
                f"{peer_info(address)}: empty datagram",
                address,
            )
            return
        if len(datagram) >= read_size:
            self._drop(
                DropReason.OVERSIZED,
                EventCode.OVERSIZED_DATAGRAM,
                f"{peer_info(address)}: datagram larger than {read_size - 1} bytes",
                address,
            )
            return
        if self.config.connection_id_length and starts_with_cid_record(datagram):
            self._on_cid_datagram(datagram, address, source)
            return
        slot = self._peers.get(address)
        if looks_like_client_hello(datagram):
            self._on_client_hello(datagram, address, slot, source)
            return
        if slot is None:
            self._drop(
                DropReason.NOT_A_CLIENT_HELLO,
                EventCode.UNEXPECTED_DATAGRAM,
                f"{peer_info(address)}: not a ClientHello and no association, dropped",
                address,
            )
            return
        kept = slot.replacing
        if kept is not None and is_protected_data_or_alert(datagram):
            # Protected application data or alerts during a replacement are nearly always for
            # the association kept aside while the new hello's handshake runs: its client's
            # data, and its close_notify, which must end it now rather than leave it to the
            # idle timeout.  But in a resumed handshake the client finishes first and may send
            # data (or a goodbye) before we have its Finished: that is the new association's
            # (delivered once that handshake completes).  Only the keys can tell, so both get
            # it and the other drops it.
            self._deliver(kept, datagram)
        self._deliver(slot, datagram)

    def _on_cid_datagram(
        self, datagram: bytes, address: Address, source: ReplySource | None
    ) -> None:
        """A ``tls12_cid`` datagram (RFC 9146): its peer is the one we issued its CID to,
        whatever address it comes from.  One from another address than the peer's travels
        with its source (:class:`AddressedDatagram`): the peer task moves the association
        there if a record in it authenticates and is the newest (§6)."""
        cid = datagram_connection_id(datagram, self.config.connection_id_length)
        slot = None if cid is None else self._peers.get_by_connection_id(cid)
        if slot is None:
            self._drop(
                DropReason.UNKNOWN_CONNECTION_ID,
                EventCode.UNKNOWN_CONNECTION_ID,
                f"{peer_info(address)}: record with an unknown connection ID, dropped",
                address,
            )
            return
        if address != slot.address:
            datagram = AddressedDatagram.make(datagram, address, source)
        self._deliver(slot, datagram)

    def _new_connection_id(self) -> bytes | None:
        """A CID for a new association: the prefix, then random bytes; unique among the live
        associations (None if 16 draws all collided: then the client gets no CID)."""
        length = self.config.connection_id_length
        prefix = self._connection_id_prefix[:length]
        for _ in range(16):
            cid = prefix + os.urandom(length - len(prefix))
            if self._peers.get_by_connection_id(cid) is None:
                return cid
        return None

    def _follow_peer(
        self, slot: PeerSlot, address: Address, reply_source: ReplySource | None
    ) -> bool:
        """RFC 9146 §6: move ``slot`` to ``address`` (its newest authentic record came from
        there); True if it moved.  Emits ``peer_moved``, or a warning if the move is refused."""
        old_info = slot.info
        move = self._peers.move(slot, address)
        if not move.moved:
            if move.refused is not None:
                self._stats.peer_moves_refused += 1
                self._warn(
                    EventCode.PEER_MOVE_REFUSED,
                    f"{old_info}: authentic record from {peer_info(address)} with its "
                    f"connection ID, but not moved there: {move.refused}",
                    address,
                )
            return False
        if reply_source is not None or slot.reply_source is not None:
            slot.reply_source = reply_source
        self._stats.peer_moves += 1
        self._hub.emit(
            InfoEvent(EventCode.PEER_MOVED, f"{old_info} moved to {slot.info}", slot.address)
        )
        return True

    def _deliver(self, slot: PeerSlot, datagram: bytes) -> None:
        """Queue a datagram for its peer's task, unless its headers show it cannot be authentic.

        Whatever else came from this address, a datagram that may be authentic is queued: an
        off-path attacker can send anything "from" a peer's address, so nothing it sends may
        make us ignore that address.  What the session can judge from the headers alone
        (another epoch, an impossible length, a replay) is dropped here, so it takes no place
        in the peer's bounded inbox and costs no decryption; only well-formed records of the
        current epoch reach the cipher.
        """
        session = slot.session
        if session is not None:
            reason = session.screen(datagram)
            if reason is not None:
                self._stats.drops[reason] += 1
                self._hub.emit(drop_warning(reason, slot.address), rate_limited=True)
                return
        if (
            not slot.established
            and slot.queued
            and slot.queued_bytes + len(datagram) > HANDSHAKE_INBOX_BUDGET
        ):
            self._stats.queue_overflows += 1
            self._drop(
                DropReason.QUEUE_FULL,
                EventCode.QUEUE_OVERFLOW,
                f"{slot.info}: inbound queue full ({slot.queued_bytes} bytes waiting for a "
                "handshake), dropped",
                slot.address,
            )
            return
        try:
            slot.deliver_nowait(datagram)
        except trio.WouldBlock:
            if self._may_hold and self._held is None:
                self._held = (slot, datagram)  # the reader retries it (_let_peer_catch_up)
                return
            self._overflow(slot)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._stats.drops[DropReason.PEER_CLOSING] += 1

    def _on_client_hello(
        self,
        datagram: bytes,
        address: Address,
        slot: PeerSlot | None,
        source: ReplySource | None = None,
    ) -> None:
        try:
            initial = parse_initial_client_hello(datagram)
        except FragmentedClientHello as error:
            self._drop(
                DropReason.FRAGMENTED_CLIENT_HELLO,
                EventCode.FRAGMENTED_CLIENT_HELLO,
                f"{peer_info(address)}: {error} (fragmented ClientHellos are not supported)",
                address,
            )
            return
        except MalformedDatagram as error:
            if slot is not None:
                self._deliver(slot, datagram)  # OpenSSL judges what comes from a known peer
                return
            self._drop(
                DropReason.MALFORMED_CLIENT_HELLO,
                EventCode.MALFORMED_CLIENT_HELLO,
                f"{peer_info(address)}: malformed ClientHello: {error}",
                address,
            )
            return
        hello = initial.hello
        if slot is not None and slot.client_random == hello.random:
            # The hello that started this peer's handshake, retransmitted: OpenSSL handles it.
            self._deliver(slot, datagram)
            return
        if hello.cookie and self._cookies.is_valid(address, hello):
            self._stats.cookies_verified += 1
            offers_cid = False
            if self._cid_context is not None:
                with contextlib.suppress(MalformedDatagram):  # then OpenSSL judges it
                    offers_cid = client_hello_connection_id(hello) is not None
            self._start_peer(datagram, address, hello.random, source, offers_cid=offers_cid)
            return
        if hello.cookie:
            self._stats.cookies_rejected += 1
            self._warn(
                EventCode.COOKIE_REJECTED,
                f"{peer_info(address)}: ClientHello with an invalid or expired cookie",
                address,
            )
        if not self.is_listening():
            self._stats.drops[DropReason.NOT_ACCEPTING] += 1
            return
        reply = build_hello_verify_request(
            initial.record, self._cookies.make_cookie(address, hello)
        )
        if len(reply) > len(datagram):
            # Never answer with more bytes than came in: no amplification for spoofed sources.
            self._stats.drops[DropReason.WOULD_AMPLIFY] += 1
            return
        if self._send_nowait(reply, address, source):
            self._stats.cookies_sent += 1
            if self._hub.wants("info", EventCode.COOKIE_SENT):
                self._hub.emit(
                    InfoEvent(
                        EventCode.COOKIE_SENT, f"{peer_info(address)}: not verified yet", address
                    ),
                    rate_limited=True,
                )

    # -- peers ----------------------------------------------------------------------------------

    def _start_peer(
        self,
        hello: bytes,
        address: Address,
        client_random: bytes,
        source: ReplySource | None = None,
        *,
        offers_cid: bool = False,
    ) -> None:
        if not self.is_listening() or self._nursery is None:
            self._stats.drops[DropReason.NOT_ACCEPTING] += 1
            return
        now = trio.current_time()

        def new_peer() -> PeerSlot:
            send, receive = trio.open_memory_channel[bytes](self.config.peer_queue_size)
            return PeerSlot(address, client_random, send, receive, reply_source=source)

        # RFC 6347 §4.2.8: a new, cookie-verified ClientHello from a known address means the
        # client restarted; the table keeps an established association aside until the new
        # handshake completes (see _peers).
        admission = self._peers.admit(address, now, new_peer)
        if admission.refused is not None:
            self._refuse(address, admission.refused)
            return
        if admission.evicted is not None:
            self._stats.evictions += 1
            admission.evicted.cancel_scope.cancel()
        if admission.superseded is not None:
            admission.superseded.cancel_scope.cancel()
        slot = admission.peer
        assert slot is not None
        self._stats.handshakes_started += 1
        self._stats.peak_peers = max(self._stats.peak_peers, len(self._peers))
        if self._hub.wants("info", EventCode.VERIFIED):
            self._hub.emit(
                InfoEvent(
                    EventCode.VERIFIED, f"{slot.info}: verified, starting a handshake", address
                )
            )
        self._nursery.start_soon(self._run_peer, slot, hello, offers_cid)

    def _handshake_over(self) -> None:
        """One handshake fewer in flight (it completed or failed; the table has counted it).

        The last one of a wave schedules a heap trim (see :mod:`._heap`): as a task of its own,
        which runs after the ending peer task has finished and its OpenSSL connection has been
        freed too."""
        if self._heap.handshake_ended(self._peers.handshaking) and self._nursery is not None:
            self._nursery.start_soon(self._trim_heap)

    async def _trim_heap(self) -> None:
        self._heap.trim()

    def _refuse(self, address: Address, why: str) -> None:
        self._stats.handshakes_refused += 1
        self._warn(
            EventCode.HANDSHAKE_REFUSED, f"{peer_info(address)}: handshake refused: {why}", address
        )

    async def _run_peer(self, slot: PeerSlot, hello: bytes, offers_cid: bool = False) -> None:
        """The peer task: handshake, then the handler; its cancel scope ends it from outside.

        Any :class:`Exception` raised in here ends this peer only (:meth:`_peer_failed`); Trio's
        cancellation (a :class:`BaseException`) passes untouched.  The ``finally`` releases the
        table entry and the handshake count whatever happened.
        """
        session: DTLSSession | None = None
        try:
            with slot.cancel_scope:
                self._follow_psk_generation()
                context, cid = self._context, None
                if offers_cid and self._cid_context is not None:
                    context, cid = self._cid_context, self._new_connection_id()
                    if cid is not None and not self._peers.bind_connection_id(slot, cid):
                        cid = None
                session = DTLSSession.server(
                    context,
                    hello,
                    now=trio.current_time(),
                    mtu=self._mtu,
                    policy=self.config.retransmit,
                    psk_lookup=self._sync_lookup,
                    release_openssl=self.config.release_openssl,
                    connection_id=cid,
                )
                slot.session = session
                if await self._handshake(slot, session):
                    await self._serve_connection(slot, session)
        except Exception as error:  # noqa: BLE001 - a fault in one peer must not stop the server
            self._peer_failed(slot, session, error)
        finally:
            finish = self._peers.finished(slot)
            if finish.was_handshaking:
                self._handshake_over()
            # Server shutdown, eviction or a handler that returned: say goodbye.  Not on
            # replacement: the restarted client has no keys for the old epoch.
            replaced = slot.end_reason is EndReason.REPLACED
            if session is not None and session.state is SessionState.ESTABLISHED and not replaced:
                try:
                    session.close()
                    goodbye = session.take_datagrams()
                except Exception as error:  # noqa: BLE001 - the entry below must still go
                    self._peer_failed(slot, None, error)
                    goodbye = []
                for datagram in goodbye:
                    self._send_nowait(datagram, slot.address, slot.reply_source)
            slot.inbox_send.close()
            if finish.restored is not None:
                self._hub.emit(
                    InfoEvent(
                        EventCode.REPLACEMENT_FAILED,
                        f"{slot.info}: the new handshake from this address failed; "
                        "the established association goes on",
                        slot.address,
                    )
                )
            if slot.end_message:
                self._hub.emit(
                    InfoEvent(
                        EventCode.PEER_ENDED, f"{slot.info}: {slot.end_message}", slot.address
                    )
                )

    async def _handshake(self, slot: PeerSlot, session: DTLSSession) -> bool:
        deadline = trio.current_time() + self.config.handshake_timeout
        self._report_handshake(slot, session.startup_events)
        # One cancel scope per handshake, not one more per wait for the peer (Trio's scopes
        # were 14 % of a handshake's CPU): while the task waits for the peer's next datagram,
        # the scope's deadline is lowered to the retransmission timer's and put back as soon
        # as a datagram comes.  A timer that fires ends the scope; after the resend the next
        # pass opens a fresh one.  Everything but the wait runs under the handshake deadline
        # alone, as before.
        pending: bytes | None = None
        datagram: bytes | None
        while True:
            with trio.CancelScope(deadline=deadline) as scope:
                while True:
                    if pending is not None:
                        datagram, pending = pending, None
                    else:
                        await self._transmit(
                            session.take_datagrams(), slot.address, slot.reply_source
                        )
                        if session.state is not SessionState.HANDSHAKING:
                            break
                        datagram = slot.take_ready()
                        if datagram is None:
                            timer = session.timer_deadline or math.inf
                            if timer < deadline:
                                scope.deadline = timer
                            datagram = await slot.take()
                            if scope.cancel_called:
                                # The timer ran out as the datagram came: it goes first, under
                                # a fresh scope, then the timer is looked at again.
                                pending = datagram
                                break
                            if timer < deadline:
                                scope.deadline = deadline
                    await self._handshake_datagram(slot, session, datagram)
            if pending is not None:
                continue
            if not scope.cancelled_caught:
                break  # the handshake is over, one way or the other
            now = trio.current_time()
            if now >= deadline:
                break
            self._report_handshake(slot, session.handle_timer(now))
        self._count_handshake_drops(session)
        if session.state is SessionState.ESTABLISHED:
            return True
        if session.state is SessionState.HANDSHAKING:
            reason = session.with_finished_failures(
                f"handshake not finished within {self.config.handshake_timeout:g} s"
            )
            session.close()
            self._handshake_failed(slot, reason, FailureKind.DEADLINE)
        return False

    async def _handshake_datagram(
        self, slot: PeerSlot, session: DTLSSession, datagram: bytes
    ) -> None:
        """Feed one datagram from the peer's inbox to its handshake, report what it caused."""
        now = trio.current_time()
        if self._async_store is not None:
            await self._prefetch_psk(slot, session, datagram)
            now = trio.current_time()
        events = session.receive_datagram(datagram, now)
        self._count_handshake_drops(session)
        if any(isinstance(e, HandshakeComplete) and e.resumed for e in events):
            events = await self._check_resumed_identity(session, events)
        self._report_handshake(slot, events)

    def _count_handshake_drops(self, session: DTLSSession) -> None:
        """Move what the session dropped during its handshake (forged or unexpected records,
        see ``HandshakeDriver._handshake_datagram``) into the statistics, as it happens."""
        drops = session.handshake_drops
        if drops:
            for reason, count in drops.items():
                self._stats.drops[reason] += count
            drops.clear()

    async def _lookup_async(self, identity: bytes) -> tuple[bytes | None, str | None]:
        """Await the async store, bounded by ``psk_lookup_timeout``: ``(key, why_not)``."""
        assert self._async_store is not None
        timeout = self.config.psk_lookup_timeout
        try:
            with trio.move_on_after(timeout):
                return await self._async_store.lookup(identity), None
        except Exception as error:  # noqa: BLE001 - any store failure fails this handshake only
            return None, f"the store raised {describe_exception(error)}"
        return None, f"no answer within {timeout:g} s"

    async def _prefetch_psk(self, slot: PeerSlot, session: DTLSSession, datagram: bytes) -> None:
        """Look the client's identity up *before* OpenSSL's synchronous callback needs it.

        In DTLS 1.2 the ClientKeyExchange travels in plaintext (epoch 0), usually in the same
        datagram as ChangeCipherSpec and Finished.  We read the identity out of it, await the
        store (other peers keep flowing: this is the peer's own task; datagrams arriving
        meanwhile wait in its bounded inbox), and leave the answer on the session, where the
        PSK callback finds it.  A failed or late lookup leaves "no key", so OpenSSL itself
        sends the ``unknown_psk_identity`` alert.

        Bounded: one lookup per handshake, for the ClientKeyExchange OpenSSL will process
        (:meth:`DTLSSession.psk_identity_to_prefetch`), and one answer kept; later ones, with
        whatever identity, start none.  A malformed one (an identity longer than OpenSSL's 256
        bytes, say) is counted and not looked up; OpenSSL then refuses it with a fatal alert.
        """
        if first_content_type(datagram) != ContentType.handshake:
            return
        try:
            identity = session.psk_identity_to_prefetch(datagram)
        except MalformedDatagram as error:
            self._drop(
                DropReason.MALFORMED_CLIENT_KEY_EXCHANGE,
                EventCode.MALFORMED_CLIENT_KEY_EXCHANGE,
                f"{slot.info}: malformed ClientKeyExchange: {error}; no PSK lookup",
                slot.address,
            )
            return
        if identity is None:
            return
        key, failure = await self._lookup_async(identity)
        session.provide_psk(identity, key, failure)

    async def _check_resumed_identity(
        self, session: DTLSSession, events: list[SessionEvent]
    ) -> list[SessionEvent]:
        """A resumed PSK session skips the store: ask it again whether the identity is known.

        A revoked identity must not live on through resumption.  The handshake already
        finished, so the peer gets close_notify (OpenSSL cannot send a fatal alert on demand).
        """
        identity = session.psk_identity
        if identity is None:
            return events  # a certificate session
        failure: str | None = None
        key: bytes | None = None
        if self._async_store is not None:
            key, failure = await self._lookup_async(identity)
        elif self._sync_lookup is not None:
            try:
                key = self._sync_lookup(identity)
            except Exception as error:  # noqa: BLE001 - a broken store fails this handshake only
                failure = f"the store raised {describe_exception(error)}"
        if key is not None:
            return events
        name = quote_peer_text(identity)
        why = f"PSK lookup failed: {failure}" if failure else "the identity is no longer known"
        kind = FailureKind.PSK_LOOKUP_FAILED if failure else FailureKind.UNKNOWN_IDENTITY
        session.close()
        kept = [event for event in events if not isinstance(event, HandshakeComplete)]
        refused = f"resumed session of PSK identity {name} refused: {why}"
        return [*kept, HandshakeFailed(refused, kind=kind)]

    def _report_handshake(self, slot: PeerSlot, events: list[SessionEvent]) -> None:
        hub = self._hub
        for event in events:
            if isinstance(event, HandshakeProgress):
                if not hub.wants("info", EventCode.HANDSHAKE_PROGRESS):
                    continue
                self._hub.emit(
                    InfoEvent(
                        EventCode.HANDSHAKE_PROGRESS,
                        f"{slot.info}: handshake is in progress ...",
                        slot.address,
                    ),
                    rate_limited=True,
                )
            elif isinstance(event, PskIdentity):
                if event.known and not hub.wants("info", EventCode.PSK_IDENTITY):
                    continue
                name = quote_peer_text(event.identity)  # the peer's bytes: never raw in a log
                if hub.wants("info", EventCode.PSK_IDENTITY):
                    self._hub.emit(
                        InfoEvent(
                            EventCode.PSK_IDENTITY,
                            f"PSK callback, received a client's identity: {name}",
                            slot.address,
                        )
                    )
                failure = slot.session.psk_lookup_failure if slot.session is not None else None
                if not event.known and failure is not None:
                    self._hub.emit(
                        ErrorEvent(
                            EventCode.PSK_LOOKUP_FAILED,
                            f"{slot.info}: PSK lookup for {name} failed: {failure}",
                            slot.address,
                        )
                    )
                elif not event.known:
                    self._hub.emit(
                        ErrorEvent(
                            EventCode.UNKNOWN_IDENTITY,
                            f"{slot.info}: unknown PSK identity {name}",
                            slot.address,
                        )
                    )
            elif isinstance(event, Retransmitted):
                self._stats.retransmissions += 1
                self._hub.emit(
                    InfoEvent(
                        EventCode.RETRANSMIT,
                        f"{slot.info}: handshake timeout, re-transmitting the last flight "
                        f"(attempt {event.attempt})",
                        slot.address,
                    ),
                    rate_limited=True,
                )
            elif isinstance(event, HandshakeComplete):
                completion = self._peers.handshake_completed(slot, trio.current_time())
                if completion.replaced is not None:
                    # The client proved itself with a Finished: now the old association goes.
                    self._stats.replacements += 1
                    completion.replaced.cancel_scope.cancel()
                self._stats.record_handshake_duration(completion.duration)
                self._handshake_over()
                self._stats.handshakes_completed += 1
                if event.resumed:
                    self._stats.handshakes_resumed += 1
                if slot.session is not None and slot.session.openssl_released:
                    self._stats.openssl_released += 1
                if slot.session is not None and slot.session.connection_id is not None:
                    self._stats.connection_id_associations += 1
                elif slot.connection_id is not None:
                    self._peers.unbind_connection_id(slot)  # offered, but none negotiated
                if hub.wants("info", EventCode.HANDSHAKE_COMPLETE):
                    protocol = "DTLS 1.2." if event.protocol == "DTLSv1.2" else "Unknown protocol."
                    self._hub.emit(
                        InfoEvent(
                            EventCode.HANDSHAKE_COMPLETE,
                            f"Connection with {slot.info} encrypted. Session cipher: "
                            f"{event.cipher}; session protocol: {protocol}",
                            slot.address,
                        )
                    )
                if event.resumed and hub.wants("info", EventCode.SESSION_RESUMED):
                    self._hub.emit(
                        InfoEvent(
                            EventCode.SESSION_RESUMED,
                            f"{slot.info}: resumed an earlier session (abbreviated handshake)",
                            slot.address,
                        )
                    )
            elif isinstance(event, HandshakeFailed):
                self._handshake_failed(slot, _describe_failure(event), event.kind)

    def _handshake_failed(
        self,
        slot: PeerSlot,
        reason: str,
        kind: FailureKind,
        exception: Exception | None = None,
    ) -> None:
        self._stats.handshakes_failed[kind] += 1
        self._hub.emit(
            ErrorEvent(
                EventCode.HANDSHAKE_FAILED,
                f"{slot.info}: handshake failed: {reason}",
                slot.address,
                exception=exception,
            ),
            # An attacker holding the handshake slots must not turn them into a log flood.
            rate_limited=True,
        )

    def _peer_failed(self, slot: PeerSlot, session: DTLSSession | None, error: Exception) -> None:
        """An exception nobody expected ended ``slot``'s task: contain it to this peer.

        The peer is told (:meth:`DTLSSession.abort`: a fatal ``internal_error`` alert during
        the handshake, close_notify after it), ``peer_failures`` counts it (and, during the
        handshake, ``handshakes_failed["internal error"]``), and an error event names the peer
        and carries the exception, so the log shows its traceback.  The caller's ``finally``
        releases the peer's table entry.
        """
        during_handshake = not slot.established
        self._stats.peer_failures["handshake" if during_handshake else "connection"] += 1
        described = describe_exception(error)
        told = ""
        if session is not None:
            before = session.state
            try:
                session.abort(f"internal error: {described}")
                datagrams = session.take_datagrams()
            except Exception:  # noqa: BLE001 - the session may be what broke: say nothing then
                datagrams = []
            for datagram in datagrams:
                self._send_nowait(datagram, slot.address, slot.reply_source)
            if datagrams and before is SessionState.HANDSHAKING and session.alert_sent:
                told = f"; fatal alert sent: {session.alert_sent}"
            elif datagrams and before is SessionState.ESTABLISHED:
                told = "; close_notify sent"
        if during_handshake:
            reason = f"internal error: {described}{told}"
            self._handshake_failed(slot, reason, FailureKind.INTERNAL_ERROR, exception=error)
            return
        self._hub.emit(
            ErrorEvent(
                EventCode.PEER_FAILED,
                f"{slot.info}: internal error, the connection ends: {described}{told}",
                slot.address,
                exception=error,
            ),
            rate_limited=True,
        )

    def _handler_failed(self, slot: PeerSlot, error: Exception) -> None:
        """The application's handler raised: count it and report it with its traceback."""
        self._stats.peer_failures["handler"] += 1
        self._hub.emit(
            ErrorEvent(
                EventCode.HANDLER_FAILED,
                f"{slot.info}: the handler raised {describe_exception(error)}; "
                "the connection ends (close_notify)",
                slot.address,
                exception=error,
            ),
            # A handler bug that every datagram triggers must not become a log flood.
            rate_limited=True,
        )

    async def _serve_connection(self, slot: PeerSlot, session: DTLSSession) -> None:
        connection = DTLSConnection(
            slot=slot,
            session=session,
            # Read the address at each send: a CID association may move (RFC 9146 §6).
            transmit=lambda datagrams: self._transmit(datagrams, slot.address, slot.reply_source),
            follow=functools.partial(self._follow_peer, slot),
            hub=self._hub,
            stats=self._stats,
            idle_timeout=self.config.idle_timeout,
            max_auth_failures=self.config.max_auth_failures,
            auth_failure_window=self.config.auth_failure_window,
            ready_limit=self.config.peer_queue_size,
        )
        await connection._take_early_events()
        idle = self.config.idle_timeout
        if idle is not None:
            slot.idle_watch.deadline = slot.last_activity + idle + IDLE_WATCH_GRACE
        # A handler may let the end of its connection propagate; that is a normal end.  Any
        # other exception ends this connection only; _run_peer then sends close_notify.
        try:
            with slot.idle_watch, contextlib.suppress(ConnectionClosed):
                await self._handler(connection)
        except Exception as error:  # noqa: BLE001 - the application's bug ends its peer only
            if not _only_connection_closed(error):
                self._handler_failed(slot, error)
                return
        if slot.idle_watch.cancelled_caught and not connection.closed:
            # The handler stopped reading (stuck on something else) and the peer stayed quiet:
            # the idle timeout holds anyway.  _run_peer sends the close_notify.
            self._stats.idle_closed += 1
            self._hub.emit(
                InfoEvent(
                    EventCode.IDLE_TIMEOUT,
                    f"{slot.info}: no authentic datagram for {idle:g} s, closing the connection "
                    "(the handler was not reading)",
                    slot.address,
                )
            )


def _only_connection_closed(error: Exception) -> bool:
    """A group of nothing but ConnectionClosed: a handler's nursery saw its connection end."""
    return isinstance(error, ExceptionGroup) and error.split(ConnectionClosed)[1] is None


def _describe_failure(event: HandshakeFailed) -> str:
    """The failure reason, and which fatal alert went to the client or came from it."""
    parts = [event.reason]
    if event.alert_sent is not None:
        parts.append(f"fatal alert sent: {event.alert_sent}")
    if event.alert_received is not None:
        parts.append(f"the client sent the fatal alert {event.alert_received}")
    return "; ".join(parts)
