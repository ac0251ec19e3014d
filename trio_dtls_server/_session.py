"""The sans-I/O DTLS session: one DTLS 1.2 association, driven by datagrams and time.

A :class:`DTLSSession` owns no socket and reads no clock.  Its owner

* feeds it each datagram from the peer with :meth:`~DTLSSession.receive_datagram`, which returns
  the :class:`SessionEvent` objects that datagram caused;
* calls :meth:`~DTLSSession.handle_timer` when :attr:`~DTLSSession.timer_deadline` has passed
  (the handshake retransmission timer);
* sends whatever :meth:`~DTLSSession.take_datagrams` returns after every call.

The session is a thin facade over the two seams of an association, and forwards:

* while :attr:`~DTLSSession.state` is ``HANDSHAKING``, a
  :class:`~._handshake.HandshakeDriver` (``_handshake.py``): the OpenSSL connection on memory
  BIOs, retransmission, the filtering of the peer's records, the PSK and connection-ID
  callbacks, failure diagnosis.  It ends in a frozen :class:`HandshakeOutcome`
  (:attr:`~DTLSSession.outcome`), a record protector and the early events; the session keeps
  those and lets the driver go, so an idle established association holds none of the
  handshake's state;
* once ``ESTABLISHED``, a :class:`~._protection.RecordProtector` (``_protection.py``): records
  protected by our own AEAD layer (the OpenSSL connection released), or by the OpenSSL
  connection kept (CBC suites, ``release_openssl=False``).  No method here asks which.

The events, :class:`SessionState`, :class:`RetransmitPolicy` and :class:`HandshakeOutcome` live
in ``_session_events.py`` and are re-exported here.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from cryptography import x509
from OpenSSL import SSL

from ._codes import DropReason
from ._handshake import HANDSHAKE_KEPT_BUDGET, HandshakeDriver
from ._protection import RecordProtector
from ._session_events import (
    MAX_PLAINTEXT,
    ApplicationData,
    ConnectionFailed,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeOutcome,
    HandshakeProgress,
    PskIdentity,
    RecordsDropped,
    RemoteClosed,
    RetransmitPolicy,
    Retransmitted,
    SessionEvent,
    SessionState,
)

__all__ = [
    "HANDSHAKE_KEPT_BUDGET",
    "MAX_PLAINTEXT",
    "ApplicationData",
    "ConnectionFailed",
    "DTLSSession",
    "HandshakeComplete",
    "HandshakeFailed",
    "HandshakeOutcome",
    "HandshakeProgress",
    "PskIdentity",
    "RecordsDropped",
    "RemoteClosed",
    "Retransmitted",
    "RetransmitPolicy",
    "SessionEvent",
    "SessionState",
]

#: The states read per datagram, as module globals: reading an attribute of an Enum class costs
#: ~100 ns on Python 3.11 (its metaclass has ``__getattr__``), a global ~15 ns.  The same
#: members, not copies.
_ESTABLISHED = SessionState.ESTABLISHED
_HANDSHAKING = SessionState.HANDSHAKING


class DTLSSession:
    """One DTLS 1.2 association, sans I/O.  Build it with :meth:`server` or :meth:`client`."""

    __slots__ = (
        "__weakref__",
        "_driver",
        "_early_events",
        "_max_plaintext",
        "_outgoing",
        "_protector",
        "failure_reason",
        "handshake_drops",
        "outcome",
        "startup_events",
        "state",
        "timer_deadline",
    )

    def __init__(self, driver: HandshakeDriver) -> None:
        """Wrap a handshake just started (use :meth:`server` or :meth:`client`)."""
        # The handshake while it runs; None once established (the record protector is then
        # all that is needed), kept after a failure for its diagnosis (alert_sent, ...).
        self._driver: HandshakeDriver | None = driver
        #: Opens and seals records once established; None before.
        self._protector: RecordProtector | None = None
        self._outgoing: list[bytes] = []
        #: The state; read by the owner after every call.
        self.state = SessionState.HANDSHAKING
        #: When :meth:`handle_timer` wants to be called next (same clock as ``now``), or None.
        self.timer_deadline: float | None = None
        #: Why the handshake or the connection failed, once it did.
        self.failure_reason: str | None = None
        #: What the finished handshake settled (None until then).
        self.outcome: HandshakeOutcome | None = None
        # outcome.max_plaintext, read by every send (an attribute, not a property: hot path).
        self._max_plaintext = MAX_PLAINTEXT
        #: Records dropped during the handshake, by :class:`~._codes.DropReason`; the owner
        #: may take (and clear) them for its statistics.  A datagram that OpenSSL saw nothing
        #: of is also reported as a :class:`RecordsDropped` event.  (The driver's counter:
        #: the same object stays once the driver is gone.)
        self.handshake_drops: collections.Counter[DropReason] = driver.handshake_drops
        # Application data the peer sent before its Finished was processed (it overtook the
        # handshake), and a close_notify or fatal alert that came with it; the owner takes
        # them with take_early_events once established.
        self._early_events: list[SessionEvent] = []
        #: What the first handshake step (inside :meth:`server` / :meth:`client`) caused.
        self.startup_events: list[SessionEvent] = driver.startup_events
        self._follow(driver)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def server(
        cls,
        context: SSL.Context,
        verified_client_hello: bytes,
        *,
        now: float,
        mtu: int,
        policy: RetransmitPolicy,
        psk_lookup: Callable[[bytes], bytes | None] | None,
        release_openssl: bool = True,
        connection_id: bytes | None = None,
    ) -> DTLSSession:
        """A server session started from a ClientHello whose cookie the caller already verified.

        The arguments are :meth:`.HandshakeDriver.server`'s, which says what each means (and
        what ``context`` must allow); keys ``psk_lookup`` does not give come through
        :meth:`provide_psk`.
        """
        return cls(
            HandshakeDriver.server(
                context,
                verified_client_hello,
                now=now,
                mtu=mtu,
                policy=policy,
                psk_lookup=psk_lookup,
                release_openssl=release_openssl,
                connection_id=connection_id,
            )
        )

    @classmethod
    def client(
        cls,
        context: SSL.Context,
        *,
        now: float,
        mtu: int,
        policy: RetransmitPolicy,
        identity: bytes | None,
        key: bytes | None,
        session: SSL.Session | None = None,
        server_hostname: str | None = None,
        release_openssl: bool = True,
        connection_id: bytes | None = None,
    ) -> DTLSSession:
        """A client session; its first ClientHello is ready in :meth:`take_datagrams`.

        The arguments are :meth:`.HandshakeDriver.client`'s, which says what each means.
        """
        return cls(
            HandshakeDriver.client(
                context,
                now=now,
                mtu=mtu,
                policy=policy,
                identity=identity,
                key=key,
                session=session,
                server_hostname=server_hostname,
                release_openssl=release_openssl,
                connection_id=connection_id,
            )
        )

    def _follow(self, driver: HandshakeDriver) -> None:
        """Take over what a call into the driver changed: its datagrams, state and timer; and
        once established, its outcome, record protector and early events (then let it go)."""
        self._outgoing += driver.take_datagrams()
        self.timer_deadline = driver.timer_deadline
        self.failure_reason = driver.failure_reason
        if driver.outcome is not None:
            self.outcome = driver.outcome  # (kept even if the handshake failed after it)
            self._max_plaintext = driver.outcome.max_plaintext
        state = self.state = driver.state
        if state is _ESTABLISHED:
            self._protector = driver.protector
            self._early_events = driver.early_events
            self._driver = None

    # -- PSK: the owner's asynchronous lookups -------------------------------------------------

    def psk_identity_to_prefetch(self, datagram: bytes) -> bytes | None:
        """The identity an asynchronous store should look up for ``datagram``, or None.

        See :meth:`.HandshakeDriver.psk_identity_to_prefetch`: one lookup per handshake, for
        the ClientKeyExchange OpenSSL will process; answer it with :meth:`provide_psk`.
        Raises :class:`~._wire.MalformedDatagram` for a datagram that does not parse.
        """
        if self._driver is None:
            return None
        return self._driver.psk_identity_to_prefetch(datagram)

    def provide_psk(self, identity: bytes, key: bytes | None, failure: str | None = None) -> None:
        """The store's answer for ``identity``: its key, or None (unknown, or the lookup
        failed, and ``failure`` says why, for the reason text).  The PSK callback uses it
        instead of a synchronous lookup; a second answer for a handshake is ignored."""
        if self._driver is not None:
            self._driver.provide_psk(identity, key, failure)

    @property
    def psk_lookup_failure(self) -> str | None:
        """Why the PSK lookup gave no key (it timed out or raised), or None."""
        return self._driver.psk_lookup_failure if self._driver is not None else None

    # -- what the handshake settled ------------------------------------------------------------

    @property
    def psk_identity(self) -> bytes | None:
        """The PSK identity the client used (server side, once the PSK callback ran, or from
        the session once a resumed handshake finished); None for a certificate handshake."""
        if self.outcome is not None:
            return self.outcome.psk_identity
        return self._driver.psk_identity if self._driver is not None else None

    @property
    def cipher(self) -> str:
        """The negotiated suite, once established (``"unknown"`` before)."""
        return self.outcome.cipher if self.outcome is not None else "unknown"

    @property
    def protocol(self) -> str:
        """The protocol version name, once established (``"unknown"`` before)."""
        return self.outcome.protocol if self.outcome is not None else "unknown"

    @property
    def resumed(self) -> bool:
        """True once a handshake finished by resuming an earlier session."""
        return self.outcome is not None and self.outcome.resumed

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's verified certificate, once established, if it showed one."""
        return self.outcome.peer_certificate if self.outcome is not None else None

    @property
    def ssl_session(self) -> SSL.Session | None:
        """Client side, once established: the TLS session a later association may resume."""
        return self.outcome.tls_session if self.outcome is not None else None

    @property
    def max_plaintext(self) -> int:
        """The most plaintext one of our records may carry: 2^14, or less if the peer asked
        for a smaller max_fragment_length (RFC 6066 §4: constrained devices do)."""
        return self._max_plaintext

    @property
    def connection_id(self) -> bytes | None:
        """The CID negotiated for the peer's records to us (the one we issued or asked for),
        or None when the handshake negotiated none.  Non-empty: the peer's protected records
        are ``tls12_cid`` records carrying it, its Finished included."""
        if self.outcome is not None:
            return self.outcome.connection_id
        return self._driver.connection_id if self._driver is not None else None

    @property
    def peer_connection_id(self) -> bytes | None:
        """The CID the peer asked us to put on our records, or None (not negotiated).
        Non-empty: our protected records are ``tls12_cid`` records, our Finished included."""
        if self.outcome is not None:
            return self.outcome.peer_connection_id
        return self._driver.peer_connection_id if self._driver is not None else None

    @property
    def alert_sent(self) -> str | None:
        """The fatal alert we sent when the handshake failed (``name (number)``), or None."""
        return self._driver.alert_sent if self._driver is not None else None

    @property
    def alert_received(self) -> str | None:
        """The fatal alert the peer sent when the handshake failed, or None."""
        return self._driver.alert_received if self._driver is not None else None

    def with_finished_failures(self, reason: str) -> str:
        """``reason`` for a handshake that never finished, plus what its Finished did if it
        failed (see :meth:`.HandshakeDriver.with_finished_failures`)."""
        if self._driver is None:
            return reason
        return self._driver.with_finished_failures(reason)

    # -- how records are protected -------------------------------------------------------------

    @property
    def connection(self) -> SSL.Connection | None:
        """The pyOpenSSL connection, or None once released after the handshake."""
        if self._protector is not None:
            return self._protector.connection
        return self._driver.connection if self._driver is not None else None

    @property
    def openssl_released(self) -> bool:
        """True once records are protected by :mod:`._records` rather than by OpenSSL."""
        return self._protector is not None and self._protector.openssl_released

    @property
    def encrypt_then_mac(self) -> bool:
        """True once the session checks the peer's encrypt-then-MAC tags before OpenSSL does
        (a CBC suite with RFC 7366's extension, see :mod:`._etm`)."""
        return self._protector is not None and self._protector.encrypt_then_mac

    @property
    def newest_record_authenticated(self) -> bool:
        """Set by each :meth:`receive_datagram` of an established CID association: True when
        one of its records authenticated and was the newest the peer has sent in the epoch
        (RFC 9146 §6: only such a record may move the association to a new address)."""
        return self._protector is not None and self._protector.newest_record_authenticated

    # -- what the owner calls -----------------------------------------------------------------

    def take_early_events(self) -> list[SessionEvent]:
        """What the peer's records that overtook its Finished said; the session forgets them.

        :class:`ApplicationData` (with :attr:`~ApplicationData.record` set) in the order it
        arrived, then possibly a :class:`RemoteClosed` or :class:`ConnectionFailed`: a peer
        that sent a reading and said goodbye before its Finished got through.  Taking such an
        ending applies it now: close_notify is answered (see :meth:`take_datagrams`) and the
        session closes, or the session fails.
        """
        events, self._early_events = self._early_events, []
        if self.state is SessionState.ESTABLISHED and events:
            ending = events[-1]
            if isinstance(ending, RemoteClosed):
                self._say_goodbye()
                self.state = SessionState.CLOSED
            elif isinstance(ending, ConnectionFailed):
                self.state = SessionState.FAILED
                self.failure_reason = ending.reason
        return events

    def take_early_data(self) -> list[bytes]:
        """The plaintexts of :meth:`take_early_events` (which it takes, ending included)."""
        return [e.data for e in self.take_early_events() if isinstance(e, ApplicationData)]

    def take_datagrams(self) -> list[bytes]:
        """The datagrams to send now, in order; the session forgets them."""
        out, self._outgoing = self._outgoing, []
        return out

    def screen(self, datagram: bytes) -> DropReason | None:
        """Why nothing in ``datagram`` can be authentic, judged from its record headers alone.

        Returns a :class:`~._codes.DropReason`, or None when some record may be authentic (or the
        session is not established: then everything goes to the handshake).  It reads the session
        and changes nothing, so the server's reader task calls it before queueing a datagram for an
        established peer: junk an off-path attacker sends from the peer's address (records of
        another epoch, impossible lengths, replays) then never takes a place in the peer's bounded
        inbox nor costs a decryption.  :meth:`receive_datagram` applies the same rules record by
        record (see :meth:`~._protection.RecordProtector.screen`).
        """
        if self.state is not _ESTABLISHED or self._protector is None:
            return None
        return self._protector.screen(datagram)

    def receive_datagram(self, datagram: bytes, now: float) -> list[SessionEvent]:
        """Feed one datagram from the peer; return what it caused."""
        state = self.state
        if state is _ESTABLISHED and datagram:
            # The hot path: the record protector opens it.
            protector = self._protector
            assert protector is not None  # (established: the handshake gave one)
            events = protector.open(datagram, self._outgoing)
            if protector.ending is not None:
                self._ended(protector.ending)
            return events
        if state is not _HANDSHAKING and state is not _ESTABLISHED:
            return []  # closed or failed
        if not datagram:
            # A zero-length BIO write raises WantReadError out of pyOpenSSL; and there is
            # nothing in it for OpenSSL anyway.
            return [RecordsDropped(DropReason.MALFORMED)]
        driver = self._driver
        assert driver is not None  # (handshaking: the driver is there)
        events = driver.receive_datagram(datagram, now)
        self._follow(driver)
        return events

    def handle_timer(self, now: float) -> list[SessionEvent]:
        """Retransmit the last flight if the timer is due; fail once retransmissions run out."""
        driver = self._driver
        if driver is None:
            return []
        events = driver.handle_timer(now)
        self._follow(driver)
        return events

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` as one record; the datagram is then ready in :meth:`take_datagrams`."""
        if self.state is not _ESTABLISHED:
            raise RuntimeError(f"cannot send on a {self.state.value} DTLS session")
        if len(data) > self._max_plaintext:
            if self._max_plaintext < MAX_PLAINTEXT:
                raise ValueError(
                    f"the peer asked for records of at most {self._max_plaintext} bytes of "
                    f"plaintext (max_fragment_length, RFC 6066), not {len(data)}"
                )
            raise ValueError(
                f"a DTLS datagram carries at most {MAX_PLAINTEXT} bytes of plaintext, "
                f"not {len(data)}"
            )
        if not data:
            raise ValueError("refusing to send an empty datagram (DTLS peers treat it as noise)")
        protector = self._protector
        assert protector is not None  # (established: the handshake gave one)
        try:
            self._outgoing.append(protector.seal(data))
        except protector.seal_errors as error:
            self._ended(ConnectionFailed(protector.seal_failed(error, self._outgoing)))
            raise

    def close(self) -> None:
        """Queue close_notify (if established) and end the session; idempotent."""
        if self.state is _ESTABLISHED:
            self._say_goodbye()
        if self.state is _HANDSHAKING or self.state is _ESTABLISHED:
            self.state = SessionState.CLOSED
        if self._driver is not None:
            self._driver.close()
        self.timer_deadline = None

    def abort(self, reason: str) -> None:
        """End the session for a fault on our side (an exception where none was expected).

        During the handshake the peer gets a plaintext fatal ``internal_error`` alert, which
        it can read until we have sent our ChangeCipherSpec (after that OpenSSL cannot seal
        an alert on demand, and the peer times out); :attr:`alert_sent` then names it.  An
        established session says close_notify, as :meth:`close` does: the peer did nothing
        wrong and may come back.  Either way the session ends; ``reason`` becomes its
        :attr:`failure_reason`.  Idempotent.
        """
        if self.state is _HANDSHAKING:
            assert self._driver is not None
            self._driver.abort(reason)
            self._follow(self._driver)
        elif self.state is _ESTABLISHED:
            self.close()
            self.failure_reason = reason
        self.timer_deadline = None

    # -- internals ------------------------------------------------------------------------------

    def _say_goodbye(self) -> None:
        """Queue our close_notify (a broken connection cannot say goodbye: then nothing)."""
        assert self._protector is not None  # (established: the handshake gave one)
        self._protector.goodbye(self._outgoing)

    def _ended(self, ending: RemoteClosed | ConnectionFailed) -> None:
        """The record protector says the association ended: close or fail the session."""
        if isinstance(ending, RemoteClosed):
            self.state = SessionState.CLOSED
            return
        self.state = SessionState.FAILED
        self.failure_reason = ending.reason
        self.timer_deadline = None
