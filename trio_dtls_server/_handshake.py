"""The handshake of a DTLS session, sans I/O: one pyOpenSSL connection on memory BIOs.

:class:`HandshakeDriver` is what a :class:`~._session.DTLSSession` holds while its handshake
runs.  It is driven by datagrams and time like the session (it owns no socket and reads no
clock), and it ends in a frozen :class:`~._session_events.HandshakeOutcome` (suite, protocol,
resumption, peer certificate, TLS session, max plaintext, PSK identity, connection IDs), the
record protector that protects the association from then on (:mod:`._protection`) and the
early events (data that overtook the peer's Finished).  The session then lets it go: an idle
established association keeps none of the handshake's state.

Retransmission follows one rule taken from experience: **let OpenSSL produce every byte**.  When
our timer fires we ask OpenSSL to retransmit (``DTLSv1_handle_timeout``); OpenSSL keeps its own
real-time timer, so if it does not think the time has come yet (a clock skew of microseconds, or
a test running on Trio's ``MockClock``) we resend the datagrams of its last flight byte for byte.
A receiver that already saw those records drops them as duplicates; one that lost them accepts
them.  When the peer retransmits a flight after we finished (our final flight was lost), OpenSSL
answers by re-emitting that final flight, and since we drain the write BIO after every step it
goes out.  But OpenSSL drops a byte-for-byte resent flight as a replay, so when the peer's
retransmitted Finished made OpenSSL send nothing we resend our saved final flight byte for byte
(the record protector does, see :meth:`~._protection.OpenSSLProtector._resend_final_flight`).
We never re-pack records ourselves; the one renumbering is of a server's plaintext epoch-0
records, so that they follow the number our stateless HelloVerifyRequest used
(:meth:`~HandshakeDriver._renumbered`).

During the handshake, OpenSSL sees only records it can judge at once
(:meth:`~HandshakeDriver._handshake_datagram`): anyone can send well-framed records from the
peer's address, and OpenSSL ends a handshake for many of them.  A server passes on plaintext
records only if they fit the client's next flight; the peer's protected records wait with us
(:class:`~._kept_records.KeptRecords`), one copy each within :data:`HANDSHAKE_KEPT_BUDGET`
bytes, until OpenSSL has read the ChangeCipherSpec (its Finished) or the handshake is over (data
that overtook the Finished).
The rest is dropped and counted (:attr:`~HandshakeDriver.handshake_drops`).

The one record we write ourselves during the handshake is an alert: OpenSSL silently drops a
client Finished that fails authentication (a wrong PSK), so the client would only time out; we
answer it with a plaintext fatal ``bad_record_mac`` alert
(:meth:`~HandshakeDriver._reject_bad_finished`) when that Finished cannot be a stranger's
(:meth:`~HandshakeDriver._feed_protected_handshake`).

When the handshake is over, a session that negotiated an AEAD suite lets go of its OpenSSL
connection (about 64 KiB) and protects records itself (:class:`~._protection.AeadProtector`),
but only once the keys it derived have opened the Finished records both sides really sent;
otherwise, and for CBC suites or with ``release_openssl=False``, OpenSSL goes on doing the work
(:class:`~._protection.OpenSSLProtector`).  See ``_protection.py`` and ``_records.py``.

Connection IDs (RFC 9146): OpenSSL negotiates the ``connection_id`` extension through the
custom-extension callbacks (:meth:`~HandshakeDriver.connection_id_received`,
:meth:`~HandshakeDriver.connection_id_to_answer`,
:meth:`~HandshakeDriver.connection_id_to_offer`) but knows nothing of ``tls12_cid`` records.
The driver answers them from a :class:`~._cid_handshake.CidHandshake`, made only when CIDs are
in play, which also translates the two Finished records between OpenSSL's format and RFC
9146's (see ``_cid_handshake.py``).

With a CBC suite and encrypt-then-MAC, the peer's Finished is checked against its MAC before
OpenSSL sees it (:meth:`~HandshakeDriver._etm_rejects`): OpenSSL's DTLS record layer fails the
association on a bad encrypt-then-MAC tag, so one spoofed record would end the handshake.  See
``_etm.py``.
"""

from __future__ import annotations

import collections
import contextlib
import weakref
from collections.abc import Callable

from OpenSSL import SSL

from ._certificates import UnreadablePeerCertificate, peer_certificate
from ._cid_handshake import CidHandshake
from ._codes import DropReason, FailureKind
from ._etm import EtmGuard, etm_guard_for, etm_in_server_hello, mac_hash, read_guard
from ._events import describe_exception
from ._kept_records import HANDSHAKE_KEPT_BUDGET, KeptRecords
from ._openssl import (
    alert_name,
    cipher_name_for_suite,
    drain_write_bio,
    expect_server_name,
    openssl_error_reason,
    session_max_fragment_length,
    session_psk_identity,
    session_reused,
)
from ._protection import (
    OpenSSLProtector,
    RecordProtector,
    aead_protector_for,
    records_or_none,
)
from ._records import aead_suite
from ._session_events import (
    MAX_PLAINTEXT,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeOutcome,
    HandshakeProgress,
    PskIdentity,
    RecordsDropped,
    RetransmitPolicy,
    Retransmitted,
    SessionEvent,
    SessionState,
)
from ._text import quote_peer_text
from ._wire import (
    AlertDescription,
    AlertLevel,
    CidRecord,
    ContentType,
    HandshakeType,
    MalformedDatagram,
    Record,
    encode_plaintext_alert,
    first_content_type,
    handshake_type,
    mentions_max_fragment_length,
    pack_datagrams,
    parse_alert,
    parse_handshake_messages,
    parse_psk_identity_from_flight,
    parse_records,
    parse_records_with_cid,
    parse_server_hello,
    plaintext_records,
    read_own_record,
    renumber_plaintext_records,
    split_records,
)

__all__ = [
    "HANDSHAKE_KEPT_BUDGET",
    "HandshakeDriver",
    "failure_kind_of_openssl",
]


def failure_kind_of_openssl(reason: str) -> FailureKind:
    """The kind of a handshake OpenSSL failed, from OpenSSL's own reason text.

    Only ever given OpenSSL's words (``openssl_error_reason``): the library's fixed reason
    strings and the names of alerts, never text of the peer's.
    """
    text = reason.lower()
    if "psk identity not found" in text or "unknown psk identity" in text:
        return FailureKind.UNKNOWN_IDENTITY
    if "certificate" in text or "unknown ca" in text:
        return FailureKind.BAD_CERTIFICATE
    if "decrypt" in text or "bad record mac" in text or "digest check failed" in text:
        return FailureKind.WRONG_KEY
    if "no shared cipher" in text or "no suitable" in text:
        return FailureKind.NO_SHARED_CIPHER
    if "alert" in text:
        return FailureKind.ALERT_FROM_PEER
    return FailureKind.OTHER


#: Plaintext handshake messages a client may send after the server's first flight (server
#: side), and the longest OpenSSL accepts of each (a longer one ends the handshake): its
#: ``max_cert_list`` default, and the limits of ``ossl_statem_server_max_message_size``.
_MAX_MESSAGE_LENGTH: dict[int, int] = {
    HandshakeType.certificate: 102_400,
    HandshakeType.client_key_exchange: 2_048,
    HandshakeType.certificate_verify: 16_384,
}
#: The client's flight after our ServerHelloDone, by position after its ClientHello: asked for
#: a certificate, a client sends Certificate (empty if it has none: RFC 5246 §7.4.6 says it
#: MUST), ClientKeyExchange, then CertificateVerify if it had a certificate; any other client
#: only ClientKeyExchange.  Anything else in those places would make OpenSSL end the handshake.
_FLIGHT_AFTER_CERTIFICATE_REQUEST = (
    frozenset({HandshakeType.certificate}),
    frozenset({HandshakeType.client_key_exchange}),
    frozenset({HandshakeType.certificate_verify}),
)
_FLIGHT_WITHOUT_CERTIFICATE = (frozenset({HandshakeType.client_key_exchange}),)
#: The messages a ChangeCipherSpec follows in the client's flight.
_BEFORE_CHANGE_CIPHER_SPEC = frozenset(
    {HandshakeType.client_key_exchange, HandshakeType.certificate_verify}
)
#: OpenSSL's state strings (server side) while it still waits for the client's key exchange.
_BEFORE_KEY_EXCHANGE = (b"write server done", b"read client certificate")


def _plaintext_fatal_alert(datagrams: list[bytes]) -> str | None:
    """The name of the first plaintext (epoch 0) fatal alert in ``datagrams``, or None."""
    for record in plaintext_records(datagrams, ContentType.alert):
        try:
            level, description = parse_alert(record.fragment)
        except MalformedDatagram:
            continue
        if level == AlertLevel.fatal:
            return alert_name(description)
    return None


class HandshakeDriver:
    """The handshake of one DTLS 1.2 association, sans I/O: the OpenSSL connection on memory
    BIOs, until it ends in a :class:`HandshakeOutcome` and a record protector.

    Build it with :meth:`server` or :meth:`client`; :class:`~._session.DTLSSession` holds it
    while the handshake runs and lets it go once established.
    """

    def __init__(
        self,
        connection: SSL.Connection,
        *,
        mtu: int,
        policy: RetransmitPolicy,
        psk_lookup: Callable[[bytes], bytes | None] | None = None,
        psk_credentials: tuple[bytes, bytes] | None = None,
        is_server: bool,
        release_openssl: bool = True,
    ) -> None:
        self._openssl: SSL.Connection | None = connection
        self._is_server = is_server
        # RFC 9146 connection IDs: their negotiation and the Finished translation, only when
        # in play (server: a CID to issue; client: one to offer); None otherwise.
        self._cid: CidHandshake | None = None
        self._release_openssl = release_openssl
        #: Opens and seals records once established (see ``_protection.py``): our own record
        #: layer, or the OpenSSL connection kept; None before.
        self.protector: RecordProtector | None = None
        # The peer's protected records kept during the handshake, within their budget:
        # handshake records OpenSSL cannot read yet, and data or alerts that overtook the
        # peer's Finished (see _kept_records.py).
        self._kept = KeptRecords(is_server=is_server)
        # The peer's record that completed the handshake (its Finished), byte for byte: only a
        # copy of it makes the record protector resend our final flight.
        self._peer_finished: bytes | None = None
        # Whether the ServerHello agreed to encrypt-then-MAC (None: not seen, or not readable),
        # and the MAC check of the peer's Finished once OpenSSL holds the keys (see _etm.py).
        self._etm_in_hello: bool | None = None
        self._handshake_etm: EtmGuard | None = None
        # Our protected records (our Finished and its retransmissions), for the record
        # protector (aead_protector_for checks the keys on them).
        self._own_protected: list[Record] = []
        # Server side: the message_seq of the client's ClientHello, and whether we asked for a
        # certificate: what the client's next flight may hold (see _unexpected_plaintext).
        self._hello_message_seq = 0
        self._certificate_requested = False
        # Whether our flight may hold a CertificateRequest at all (server side: the context
        # asks for client certificates); if not, _note_sent need not parse our messages.
        self._may_request_certificate = is_server
        # Protected handshake records OpenSSL read and rejected while the peer's Finished was
        # outstanding, for the failure reason.
        self._finished_failures = 0
        # The wrong-key diagnosis for flights split over datagrams (see
        # _feed_protected_handshake): the ClientKeyExchange OpenSSL accepted (its record's
        # fragment), whether the datagrams since carried only its flight, and how many
        # Finished records failed in that place.
        self._key_exchange: bytes | None = None
        self._in_flight_chain = False
        self._chained_failures = 0
        # The protected record being fed to OpenSSL (see _feed_protected_handshake).
        self._completing: bytes | None = None
        #: Records dropped during the handshake, by :class:`~._codes.DropReason`; the owner
        #: may take (and clear) them for its statistics.  A datagram that OpenSSL saw nothing
        #: of is also reported as a :class:`RecordsDropped` event.
        self.handshake_drops: collections.Counter[DropReason] = collections.Counter()
        self._mtu = mtu
        self._policy = policy
        self._psk_lookup = psk_lookup
        self._psk_credentials = psk_credentials
        self._outgoing: list[bytes] = []
        self._last_flight: list[bytes] = []
        self._retransmissions = 0
        # Our final handshake flight (the server's CCS + Finished), handed to the record
        # protector, which resends it when the peer's Finished comes again.
        self._final_flight: list[bytes] = []
        self._callback_events: list[SessionEvent] = []
        self.state = SessionState.HANDSHAKING
        #: When :meth:`handle_timer` wants to be called next (same clock as ``now``), or None.
        self.timer_deadline: float | None = None
        # The PSK identity the client used (server side, once the PSK callback ran); see
        # the psk_identity property.
        self._psk_identity: bytes | None = None
        # The one lookup an asynchronous PSK store answered before OpenSSL asked (server
        # side): ``(identity, key or None)``.  The owner hands it over with provide_psk (see
        # psk_identity_to_prefetch), the PSK callback reads it.  One entry, never more: a
        # handshake makes at most one lookup, whatever the client sends.
        self._prefetched_psk: tuple[bytes, bytes | None] | None = None
        # Why the key is missing (lookup timed out or raised), for the reason text.
        self._psk_lookup_failure: str | None = None
        # Server side, a PSK suite: the handshake message number of the client's
        # ClientKeyExchange, the one after its verified ClientHello (see server()).
        self._psk_key_exchange_seq: int | None = None
        #: The fatal alert we sent / received when the handshake failed (``name (number)``).
        self.alert_sent: str | None = None
        self.alert_received: str | None = None
        # What our own alert needs if we must write one (see _reject_bad_finished): the next
        # record sequence number of epoch 0, and whether we already sent protected records.
        self._next_plaintext_sequence = 0
        self._sent_protected = False
        self._last_received = b""
        #: Why the handshake or the connection failed, once it did.
        self.failure_reason: str | None = None
        #: What the first handshake step (inside :meth:`server` / :meth:`client`) caused.
        self.startup_events: list[SessionEvent] = []
        #: What the finished handshake settled (None until then).
        self.outcome: HandshakeOutcome | None = None
        # Whether the peer's ClientHello may carry max_fragment_length (server side; our own
        # client never asks for it).  Reading the session's DER costs 4 µs a handshake, so
        # only then: the extension (type 1, length 1) cannot be there without these bytes.
        self._peer_may_limit_fragments = False
        # Added to OpenSSL's epoch-0 record numbers (server side; see _renumbered).
        self._epoch0_offset = 0
        # Client side: whether a ServerHello came (see receive_datagram).
        self._heard_server_hello = False
        #: Once established: application data the peer sent before its Finished was processed
        #: (it overtook the handshake), and a close_notify or fatal alert that came with it,
        #: opened by the record protector (see ``DTLSSession.take_early_events``).
        self.early_events: list[SessionEvent] = []
        # OpenSSL's callbacks (PSK, alerts read) find the session through the connection's app
        # data -- through a weak proxy: the session owns the connection, and a strong reference
        # back would make a cycle that only Python's cycle collector breaks.  Until a full
        # collection (rare: the Python side of a session is a few small objects) every ended
        # session would keep its connection, ~80 KB of C memory the collector does not see:
        # under handshake churn the RSS grew by ~100 MB.  With the proxy, a session and its
        # connection go the moment the last reference does.  The callbacks run only inside the
        # session's own calls into OpenSSL, so the proxy is always alive when they use it.
        connection.set_app_data(weakref.proxy(self))
        connection.set_ciphertext_mtu(mtu)

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
    ) -> HandshakeDriver:
        """A server handshake started from a ClientHello whose cookie the caller already verified.

        ``connection_id`` (RFC 9146): the CID to issue if the client offers the extension and
        the handshake can use it (an AEAD suite of :mod:`._records`, ``release_openssl``);
        the context must carry ``install_server_connection_id``.  None: never answer.

        ``psk_lookup`` answers the PSK callback; ``None`` means keys come only from
        :meth:`provide_psk` (an asynchronous store) or that there is no PSK at all.

        ``context`` must accept every cookie (``set_cookie_verify_callback`` returning True):
        the real, stateless check happened before any OpenSSL object existed.
        ``DTLSv1_listen`` then sets up the handshake and record sequence numbers exactly as
        OpenSSL expects for a ClientHello that follows a HelloVerifyRequest.
        """
        session = cls(
            SSL.Connection(context, None),
            mtu=mtu,
            policy=policy,
            psk_lookup=psk_lookup,
            is_server=True,
            release_openssl=release_openssl,
        )
        if connection_id is not None:
            session._cid = CidHandshake.for_server(
                session._connection,
                connection_id,
                verified_client_hello,
                release_openssl=release_openssl,
            )
        session._peer_may_limit_fragments = mentions_max_fragment_length(verified_client_hello)
        session._may_request_certificate = bool(context.get_verify_mode() & SSL.VERIFY_PEER)
        hello_message_seq = hello_number = 0
        with contextlib.suppress(MalformedDatagram, IndexError):  # verified: cannot fail
            first = parse_records(verified_client_hello)[0]
            hello_number = first.sequence_number
            hello_message_seq = parse_handshake_messages(first.fragment)[0].message_seq
            session._hello_message_seq = hello_message_seq
        if 1 < hello_number < 2**40:  # OpenSSL starts at 1; leave room below 2^48
            session._epoch0_offset = hello_number - 1
        session._connection.set_accept_state()
        session._connection.bio_write(verified_client_hello)
        try:
            session._connection.DTLSv1_listen()
        except SSL.Error as error:
            reason = f"ClientHello refused by OpenSSL: {openssl_error_reason(error)}"
            session.startup_events = session._fail(reason, now)
            return session
        session.startup_events = session._step_handshake(now)
        # Our own ServerHello, in the first flight: trusted bytes.  Encrypt-then-MAC applies
        # to CBC suites only (RFC 7366 §3: never sent with an AEAD suite), so the flight is
        # searched for it only when the suite is not one of ours.
        suite = session._chosen_suite()
        if suite is not None and aead_suite(suite) is not None:
            session._etm_in_hello = False
        else:
            session._etm_in_hello = etm_in_server_hello(session._outgoing)
        if session.state is SessionState.HANDSHAKING and suite and "PSK" in suite.split("-"):
            # A PSK client sends no Certificate: its ClientKeyExchange comes next.
            session._psk_key_exchange_seq = hello_message_seq + 1
        return session

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
    ) -> HandshakeDriver:
        """A client handshake; its first ClientHello is ready in :meth:`take_datagrams`.

        ``connection_id`` (RFC 9146): offer the extension asking for this CID on the server's
        records (``b""``: send-only, the server's records stay standard); the context must
        carry ``install_client_connection_id``.  None: no extension.

        ``identity`` and ``key`` may be None for a certificate-only client.  ``session`` (from an
        earlier connection's ``connection.get_session()``) asks the server to resume it.
        ``server_hostname`` is the name (or IP address) the server's certificate must carry,
        when the context verifies certificates; a DNS name is also sent as SNI.
        """
        credentials = (identity, key) if identity is not None and key is not None else None
        client = cls(
            SSL.Connection(context, None),
            mtu=mtu,
            policy=policy,
            psk_credentials=credentials,
            is_server=False,
            release_openssl=release_openssl,
        )
        if connection_id is not None:
            client._cid = CidHandshake.for_client(connection_id)
        if session is not None:
            client._connection.set_session(session)
        if server_hostname is not None:
            expect_server_name(client._connection, server_hostname)
        client._connection.set_connect_state()
        client.startup_events = client._step_handshake(now)
        return client

    # -- PSK callbacks (called by OpenSSL from inside do_handshake) -----------------------------

    def psk_for_identity(self, identity: bytes) -> bytes | None:
        if self._prefetched_psk is not None:
            looked_up, key = self._prefetched_psk
            if looked_up != identity:
                # OpenSSL processed another ClientKeyExchange than the one looked up (a forged
                # one got there first): no second lookup, the handshake fails.
                key = None
                self._psk_lookup_failure = "another identity was looked up for this handshake"
        elif self._psk_lookup is not None:
            try:
                key = self._psk_lookup(identity)
            except Exception as error:  # noqa: BLE001 - a broken store fails this handshake only
                key = None
                self._psk_lookup_failure = f"the store raised {describe_exception(error)}"
        else:
            key = None
            if self._psk_lookup_failure is None:
                self._psk_lookup_failure = (
                    "no key was looked up for it (its ClientKeyExchange was not recognised)"
                )
        self._psk_identity = identity
        self._callback_events.append(PskIdentity(identity, key is not None))
        return key

    def psk_identity_and_key(self, hint: bytes | None) -> tuple[bytes, bytes] | None:
        return self._psk_credentials

    def psk_identity_to_prefetch(self, datagram: bytes) -> bytes | None:
        """The identity an asynchronous store should look up for ``datagram``, or None.

        That is the identity in its ClientKeyExchange if OpenSSL will process it: server side,
        a PSK suite was chosen, the message number follows the client's verified hello, and
        no lookup was made yet for this handshake (:meth:`provide_psk` was not called).  So one
        handshake costs the store one lookup, however many ClientKeyExchanges the client
        sends.  Raises :class:`~._wire.MalformedDatagram` for a datagram that does not parse
        or names an identity longer than OpenSSL accepts.
        """
        expected = self._psk_key_exchange_seq
        if (
            expected is None
            or self._prefetched_psk is not None
            or self.state is not SessionState.HANDSHAKING
        ):
            return None
        return parse_psk_identity_from_flight(datagram, message_seq=expected)

    def provide_psk(self, identity: bytes, key: bytes | None, failure: str | None = None) -> None:
        """The owner's answer to :meth:`psk_identity_to_prefetch`: the store's key for
        ``identity`` (None: unknown, or the lookup failed, and ``failure`` says why, for the
        reason text).  The PSK callback uses it instead of a synchronous lookup; a second
        answer for the same handshake is ignored (one lookup per handshake)."""
        if self._prefetched_psk is not None:
            return
        self._prefetched_psk = (identity, key)
        if failure is not None:
            self._psk_lookup_failure = failure

    @property
    def psk_lookup_failure(self) -> str | None:
        """Why the PSK lookup gave no key (it timed out or raised), or None."""
        return self._psk_lookup_failure

    @property
    def psk_identity(self) -> bytes | None:
        """The PSK identity the client named (server side, once the PSK callback ran)."""
        return self._psk_identity

    def _chosen_suite(self) -> str | None:
        """OpenSSL's name of the suite the ServerHello we just sent chose (read from our own
        bytes: OpenSSL names the suite only once the handshake is over); None if not found."""
        for datagram in self._outgoing:
            for record in records_or_none(datagram) or []:
                fragment = record.fragment
                plaintext_handshake = (
                    record.epoch == 0 and record.content_type == ContentType.handshake
                )
                if (
                    not plaintext_handshake
                    or handshake_type(fragment) != HandshakeType.server_hello
                ):
                    continue
                try:
                    suite = parse_server_hello(fragment).cipher_suite
                except MalformedDatagram:
                    return None
                return cipher_name_for_suite(self._connection, suite)
        return None

    # -- connection_id callbacks (called by OpenSSL from inside do_handshake) -----------------

    def connection_id_to_offer(self) -> bytes | None:
        """Client: the CID our ClientHello asks for, or None (no extension)."""
        cid = self._cid
        return None if cid is None else cid.to_offer()

    def connection_id_received(self, cid: bytes) -> bool:
        """The peer's ``connection_id`` extension (server: in the ClientHello; client: in the
        ServerHello, which OpenSSL only passes on if we offered one).  False fails the
        handshake (``decode_error``): a client that offered none."""
        negotiation = self._cid
        if negotiation is None:
            return self._is_server  # a server that issues none just never answers
        return negotiation.received(cid)

    def connection_id_to_answer(self) -> bytes | None:
        """Server: the CID our ServerHello names, or None to send no extension (today's bytes);
        see :meth:`~._cid_handshake.CidHandshake.to_answer`."""
        cid = self._cid
        return None if cid is None else cid.to_answer(self._connection)

    @property
    def connection_id(self) -> bytes | None:
        """The CID negotiated for the peer's records to us, or None (see
        :attr:`~._cid_handshake.CidHandshake.connection_id`)."""
        cid = self._cid
        return None if cid is None else cid.connection_id

    @property
    def peer_connection_id(self) -> bytes | None:
        """The CID the peer asked us to put on our records, or None (see
        :attr:`~._cid_handshake.CidHandshake.peer_connection_id`)."""
        cid = self._cid
        return None if cid is None else cid.peer_connection_id

    def _cid_outgoing(self, records: list[bytes]) -> list[bytes]:
        """Our records as they go out: OpenSSL's, or re-sealed as ``tls12_cid`` when the peer
        asked for a CID (see :meth:`~._cid_handshake.CidHandshake.outgoing`)."""
        cid = self._cid
        return records if cid is None else cid.outgoing(records, self._connection)

    def _handshake_records(self, datagram: bytes) -> list[Record] | None:
        """A datagram's records during the handshake; ``tls12_cid`` ones (where we issued a
        CID) as protected handshake records holding the raw CID record, which
        :meth:`_feed_protected_handshake` translates once OpenSSL can read it."""
        cid = self._cid
        read_cid = b"" if cid is None else cid.read_cid
        if not read_cid or ContentType.tls12_cid not in datagram:
            return records_or_none(datagram)
        try:
            mixed = parse_records_with_cid(datagram, len(read_cid))
        except MalformedDatagram:
            return None
        records: list[Record] = []
        for record in mixed:
            if isinstance(record, CidRecord):
                if record.cid != read_cid or record.epoch == 0:
                    self.handshake_drops[DropReason.WRONG_CID] += 1
                    continue
                records.append(
                    Record(
                        ContentType.handshake,
                        record.version,
                        record.epoch,
                        record.sequence_number,
                        record.fragment,
                        record.raw,
                    )
                )
            else:
                records.append(record)
        return records or None

    # -- what the owner calls -----------------------------------------------------------------

    @property
    def _connection(self) -> SSL.Connection:
        if self._openssl is None:
            raise RuntimeError("this session released its OpenSSL connection after the handshake")
        return self._openssl

    @property
    def connection(self) -> SSL.Connection | None:
        """The pyOpenSSL connection, or None once released to our record layer."""
        return self._openssl

    def take_datagrams(self) -> list[bytes]:
        """The datagrams to send now, in order; the driver forgets them."""
        out, self._outgoing = self._outgoing, []
        return out

    def receive_datagram(self, datagram: bytes, now: float) -> list[SessionEvent]:
        """Feed one datagram from the peer during the handshake; return what it caused."""
        if self.state is not SessionState.HANDSHAKING:
            return []
        if not datagram:
            # A zero-length BIO write raises WantReadError out of pyOpenSSL; and there is
            # nothing in it for OpenSSL anyway.
            return [RecordsDropped(DropReason.MALFORMED)]
        records = self._handshake_records(datagram)
        if records is None:
            # Epoch-0 records are unauthenticated: a spoofed datagram of garbage sent to a
            # client's address mid-handshake would make OpenSSL abort that handshake.  What
            # does not even split into DTLS records cannot be the peer's, so OpenSSL never
            # sees it (well-framed forgeries still can; DTLS 1.2 offers no defence there).
            return [RecordsDropped(DropReason.MALFORMED)]
        if not self._is_server and not self._heard_server_hello:
            first = records[0]
            if first.epoch == 0 and first.content_type == ContentType.handshake:
                message_type = handshake_type(first.fragment)
                if message_type == HandshakeType.server_hello:
                    self._heard_server_hello = True
                    # The first ServerHello is the one OpenSSL acts on; later copies it drops.
                    self._etm_in_hello = etm_in_server_hello([datagram])
                elif message_type != HandshakeType.hello_verify_request:
                    return [RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)]
            elif not (first.epoch == 0 and first.content_type == ContentType.alert):
                # Until the server answers this hello, anything else is a late datagram meant
                # for an earlier client on this port (a device that restarted): OpenSSL would
                # buffer its messages and mark its record numbers seen, and then drop the real
                # ones as replays.
                return [RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)]
        self._last_received = datagram
        return self._handshake_datagram(records, now)

    def _handshake_datagram(self, records: list[Record], now: float) -> list[SessionEvent]:
        """A datagram during the handshake: OpenSSL sees only what it can judge right away.

        Anyone can send a well-framed record from the peer's address, and OpenSSL ends a
        handshake for many of them, so before it sees a record:

        * a plaintext (epoch 0) record must fit the peer's next flight (server side, see
          :meth:`_unexpected_plaintext`); the others are dropped and counted;
        * a protected (epoch 1) handshake record (the peer's Finished) goes to OpenSSL only
          once OpenSSL has read the peer's ChangeCipherSpec, and alone: OpenSSL then either
          finishes the handshake with it or drops it for failing authentication, and we can
          tell which.  Until then we hold it (OpenSSL would queue it in its own memory);
        * protected application data and alerts never go to OpenSSL during the handshake: we
          keep them (checked, where our keys are proven, see
          :meth:`~._kept_records.KeptRecords.keep_early`) and open or feed them once the
          handshake is over.

        What we keep is one copy of each record, de-duplicated on content, at most
        :data:`HANDSHAKE_KEPT_BUDGET` bytes.
        """
        plaintext: list[bytes] = []
        protected_handshake: list[bytes] = []
        drop: DropReason | None = None
        follows_key_exchange = False
        for record in records:
            reason: DropReason | None = None
            if record.epoch == 0:
                reason = self._unexpected_plaintext(record, follows_key_exchange)
                if reason is None:
                    plaintext.append(record.raw)
                    follows_key_exchange = (
                        record.content_type == ContentType.handshake
                        and handshake_type(record.fragment) in _BEFORE_CHANGE_CIPHER_SPEC
                    )
            elif record.epoch != 1:
                reason = DropReason.UNEXPECTED  # no epoch but 1 exists before the handshake ends
            elif record.content_type == ContentType.handshake:
                protected_handshake.append(record.raw)
            elif record.content_type in (ContentType.application_data, ContentType.alert):
                # The peer can only have sent such a record after our Finished reached it (the
                # client of a resumed handshake, the server of a full one), so before we sent
                # ours it is not the peer's.
                if self._sent_protected:
                    reason = self._kept.keep_early(record, self._connection, self._own_protected)
                else:
                    reason = DropReason.UNEXPECTED
            else:
                reason = DropReason.UNEXPECTED  # a protected ChangeCipherSpec
            if reason is not None:
                drop = drop or reason
                self.handshake_drops[reason] += 1
        events: list[SessionEvent] = []
        waiting_for_key_exchange = self._is_server and self._before_key_exchange()
        if plaintext:
            self._connection.bio_write(b"".join(plaintext))
            events += self._step_handshake(now)
        # The wrong-key diagnosis (see _feed_protected_handshake): did this datagram carry the
        # key exchange OpenSSL accepted, or a copy of it, or only what follows it in a flight?
        accepted_here = (
            waiting_for_key_exchange
            and bool(plaintext)
            and self.state is SessionState.HANDSHAKING
            and not self._before_key_exchange()
        )
        key_exchanges = [
            r.fragment
            for r in records
            if r.epoch == 0
            and r.content_type == ContentType.handshake
            and handshake_type(r.fragment) == HandshakeType.client_key_exchange
        ]
        if accepted_here:
            self._key_exchange = key_exchanges[0] if key_exchanges else None
        if accepted_here or (
            self._key_exchange is not None and self._key_exchange in key_exchanges
        ):
            self._in_flight_chain = True
        elif any(
            r.content_type
            != (ContentType.change_cipher_spec if r.epoch == 0 else ContentType.handshake)
            for r in records
        ):
            self._in_flight_chain = False
        kept = self._kept
        if kept.held and self._openssl_reads_protected():
            for raw in kept.take_held():
                if self.state is not SessionState.HANDSHAKING:
                    break
                events += self._feed_protected_handshake(raw, now, in_chain=False, at_once=False)
        for raw in protected_handshake:
            if self.state is not SessionState.HANDSHAKING:
                break
            if self._openssl_reads_protected():
                failures = self._finished_failures
                events += self._feed_protected_handshake(
                    raw, now, in_chain=self._in_flight_chain, at_once=accepted_here
                )
                if self._finished_failures > failures:
                    drop = drop or DropReason.AUTHENTICATION
            else:
                reason = kept.hold(raw)
                if reason is not None:
                    drop = drop or reason
                    self.handshake_drops[reason] += 1
        if not events and drop is not None:
            # OpenSSL saw nothing of it, or only what it dropped: say why.  (Drops beside
            # records OpenSSL took are only counted, in handshake_drops.)
            return [RecordsDropped(drop)]
        # One datagram, one report of progress (none if it ended the handshake), however many
        # steps OpenSSL took.
        progress = [e for e in events if isinstance(e, HandshakeProgress)]
        if len(progress) > 1 or self.state is not SessionState.HANDSHAKING:
            events = [e for e in events if not isinstance(e, HandshakeProgress)]
            if self.state is SessionState.HANDSHAKING:
                events.insert(0, progress[0])
        return events or [HandshakeProgress()]

    def _unexpected_plaintext(
        self, record: Record, follows_key_exchange: bool
    ) -> DropReason | None:
        """Why a plaintext (epoch 0) record cannot be the peer's, or None to let OpenSSL see it.

        Server side only (the client side has its own check in :meth:`receive_datagram`).
        OpenSSL ends the handshake for a handshake message of a type it does not expect now,
        for one whose fragment bounds or length are impossible, for plaintext application
        data, for a malformed ChangeCipherSpec.  And a record OpenSSL takes, even one that
        changes nothing, marks its record number as seen: the client's own record with that
        number would then be dropped as a replay.  So only these pass: an alert of two bytes (a
        client's fatal alert must still end its handshake at once: DTLS 1.2 cannot tell it
        from a forged one), handshake records whose messages are numbered and typed as the
        client's next flight (:data:`_FLIGHT_WITHOUT_CERTIFICATE` after the hello; none in a
        resumed handshake) with lengths OpenSSL accepts, and a ChangeCipherSpec where OpenSSL
        expects one (:meth:`_unexpected_change_cipher_spec`).  A message numbered before that
        flight is a retransmission OpenSSL would discard anyway.
        """
        if not self._is_server:
            return None
        content = record.content_type
        if content == ContentType.alert:
            return None if len(record.fragment) == 2 else DropReason.UNEXPECTED
        if content == ContentType.change_cipher_spec:
            if record.fragment != b"\x01":
                return DropReason.UNEXPECTED
            return self._unexpected_change_cipher_spec(follows_key_exchange)
        if content != ContentType.handshake:
            return DropReason.UNEXPECTED  # application data never travels in plaintext
        try:
            messages = parse_handshake_messages(record.fragment)
        except MalformedDatagram:
            return DropReason.UNEXPECTED
        if session_reused(self._connection):
            flight: tuple[frozenset[int], ...] = ()  # the client answers with CCS + Finished
        elif self._certificate_requested:
            flight = _FLIGHT_AFTER_CERTIFICATE_REQUEST
        else:
            flight = _FLIGHT_WITHOUT_CERTIFICATE
        first = self._hello_message_seq + 1
        for message in messages:
            position = message.message_seq - first
            if position < 0:
                return DropReason.HANDSHAKE_RETRANSMISSION
            if (
                position >= len(flight)
                or message.msg_type not in flight[position]
                or message.length > _MAX_MESSAGE_LENGTH[message.msg_type]
            ):
                return DropReason.UNEXPECTED
        return None

    def _unexpected_change_cipher_spec(self, follows_key_exchange: bool) -> DropReason | None:
        """Why a ChangeCipherSpec cannot be the client's now, or None to let OpenSSL see it.

        The client's comes right after its ClientKeyExchange (or CertificateVerify, when it
        showed a certificate), in the same datagram or a later one; in a resumed handshake it
        opens the client's flight.  Before that, OpenSSL would end a certificate client's
        handshake for it, or take its record number from the client's own next record.
        """
        state = self._connection.get_state_string()
        if b"read change cipher spec" in state:
            return DropReason.HANDSHAKE_RETRANSMISSION  # OpenSSL has read the client's already
        if follows_key_exchange or session_reused(self._connection):
            return None
        if b"read certificate verify" in state:
            return None
        if b"read client key exchange" in state and peer_certificate(self._connection) is None:
            return None
        return DropReason.UNEXPECTED

    def _before_key_exchange(self) -> bool:
        """Server side: OpenSSL still waits for the client's key exchange."""
        state = self._connection.get_state_string()
        return any(name in state for name in _BEFORE_KEY_EXCHANGE)

    def _openssl_reads_protected(self) -> bool:
        """OpenSSL has read the peer's ChangeCipherSpec: it judges a protected record at once."""
        return b"read change cipher spec" in self._connection.get_state_string()

    def _feed_protected_handshake(
        self, raw: bytes, now: float, *, in_chain: bool, at_once: bool
    ) -> list[SessionEvent]:
        """Give OpenSSL one protected handshake record, now that it reads them; judge the result.

        OpenSSL has read the ChangeCipherSpec, so this record either finishes the handshake
        (it was the peer's Finished) or is dropped for failing authentication, silently.  A
        failure ends the handshake with ``bad_record_mac`` (a wrong PSK, see
        :meth:`_reject_bad_finished`) only when the record cannot be a stranger's:

        * ``at_once``: it came in the datagram whose key exchange OpenSSL accepted (Mbed TLS,
          OpenSSL, Qt, GnuTLS send ClientKeyExchange, ChangeCipherSpec and Finished together);
        * or it is the second such failure ``in_chain``: right after the key exchange, or a
          byte-for-byte copy of it, with nothing but the ChangeCipherSpec between (tinydtls
          sends each message in a datagram of its own, and retransmits all three).  One
          forged record in that place fails once and is forgiven; the real client's Finished
          still completes the handshake after it.

        Any other failure is dropped and counted, and the handshake goes on.
        """
        events: list[SessionEvent] = []
        if first_content_type(raw) == ContentType.tls12_cid:
            translated = (
                None
                if self._cid is None
                else self._cid.peer_record_for_openssl(raw, self._connection)
            )
            if translated is None:
                self.handshake_drops[DropReason.WRONG_CID] += 1
                return []
            raw = translated
        if not self._etm_rejects(raw):
            self._connection.bio_write(raw)
            self._completing = raw
            events = self._step_handshake(now)
            self._completing = None
            if self.state is not SessionState.HANDSHAKING or not self._openssl_reads_protected():
                return events
        self._finished_failures += 1
        if in_chain:
            self._in_flight_chain = False  # a flight has one Finished
            self._chained_failures += 1
        if self._is_server and (at_once or self._chained_failures >= 2):
            return events + self._reject_bad_finished(now)
        self.handshake_drops[DropReason.AUTHENTICATION] += 1
        return [e for e in events if not isinstance(e, HandshakeProgress)]

    def _etm_rejects(self, raw: bytes) -> bool:
        """Under encrypt-then-MAC, whether a protected handshake record fails its MAC.

        OpenSSL fails the association on a bad encrypt-then-MAC tag, where an AEAD suite's
        record that fails is dropped in silence.  So we check the tag first and treat a failure
        as that silent drop (see :meth:`_feed_protected_handshake`); OpenSSL never sees it.
        """
        if not self._etm_in_hello:
            return False
        cipher = self._connection.get_cipher_name()
        if cipher is not None and mac_hash(cipher) is None:
            self._etm_in_hello = False  # a MAC we do not know: OpenSSL decides alone
            return False
        guard = self._handshake_guard()
        return guard is None or not guard.authentic(raw)

    def _handshake_guard(self) -> EtmGuard | None:
        """The MAC check of the peer's epoch-1 records, once OpenSSL holds the keys."""
        if self._handshake_etm is None:
            connection = self._connection
            cipher = connection.get_cipher_name()
            if cipher is None:
                return None
            try:
                master_secret = connection.master_key()
            except SSL.Error:  # no key exchange yet: pyOpenSSL raises for an empty key
                return None
            self._handshake_etm = read_guard(
                cipher,
                is_server=self._is_server,
                master_secret=master_secret or b"",
                client_random=connection.client_random() or b"",
                server_random=connection.server_random() or b"",
            )
        return self._handshake_etm

    def handle_timer(self, now: float) -> list[SessionEvent]:
        """Retransmit the last flight if the timer is due; fail once retransmissions run out."""
        if self.timer_deadline is None or now < self.timer_deadline:
            return []
        if self._retransmissions >= self._policy.max_retransmissions:
            attempts = self._retransmissions
            reason = f"no answer from the peer after {attempts} retransmissions"
            return self._fail(self.with_finished_failures(reason), now, FailureKind.NO_ANSWER)
        try:
            self._connection.DTLSv1_handle_timeout()
        except SSL.Error as error:
            return self._fail(openssl_error_reason(error), now)
        fresh = drain_write_bio(self._connection)
        if fresh:
            records = self._renumbered(split_records(fresh))
            # A retransmitted Finished takes new record numbers: our own record layer must
            # start after them (a number used twice would repeat a ChaCha20 nonce).
            self._note_sent(records)
            self._last_flight = pack_datagrams(self._cid_outgoing(records), self._mtu)
        self._outgoing.extend(self._last_flight)
        self._retransmissions += 1
        self.timer_deadline = now + self._policy.interval(self._retransmissions)
        return [Retransmitted(self._retransmissions, len(self._last_flight))]

    def with_finished_failures(self, reason: str) -> str:
        """``reason`` for a handshake that never finished, plus what its Finished did if it
        failed (the owner's deadline uses it too): a wrong key that could not be told from
        forged records (see :meth:`_feed_protected_handshake`) is still named in the end."""
        if not self._finished_failures:
            return reason
        return (
            f"{reason}; {self._finished_failures} record(s) in the place of its Finished failed "
            "authentication (a wrong PSK, or forged records)"
        )

    def close(self) -> None:
        """End the handshake where it is (the owner gave up on it); idempotent."""
        if self.state is SessionState.HANDSHAKING:
            self.state = SessionState.CLOSED
        self.timer_deadline = None

    def abort(self, reason: str) -> None:
        """Fail the handshake for a fault on our side (an exception where none was expected).

        The peer gets a plaintext fatal ``internal_error`` alert, which it can read until we
        have sent our ChangeCipherSpec (after that OpenSSL cannot seal an alert on demand, and
        the peer times out); :attr:`alert_sent` then names it.  ``reason`` becomes the
        :attr:`failure_reason`.  Idempotent.
        """
        if self.state is SessionState.HANDSHAKING:
            self._queue_plaintext_alert(AlertDescription.internal_error)
            self.state = SessionState.FAILED
            self.failure_reason = reason
        self.timer_deadline = None

    # -- internals ------------------------------------------------------------------------------

    def _queue_plaintext_alert(self, description: int) -> None:
        """Queue a fatal alert of our own, in plaintext (epoch 0), during the handshake.

        The peer reads it until we have sent our ChangeCipherSpec; after that nothing is
        queued (OpenSSL cannot seal an alert on demand).  Numbered after OpenSSL's epoch-0
        records, as :meth:`_reject_bad_finished` does.
        """
        if self._sent_protected:
            return
        self._outgoing.append(
            encode_plaintext_alert(AlertLevel.fatal, description, self._next_plaintext_sequence)
        )
        self._next_plaintext_sequence += 1
        self.alert_sent = alert_name(description)

    def _flush(self) -> list[bytes]:
        raw = drain_write_bio(self._connection)
        if not raw:
            return []
        try:
            records = self._renumbered(split_records(raw))
        except MalformedDatagram:  # cannot happen with OpenSSL's own output; send it whole
            records = []
        if self.state is SessionState.HANDSHAKING:
            self._note_sent(records)
        # Every epoch-1 record OpenSSL writes (its Finished, retransmissions included) goes
        # out in RFC 9146's format when the peer asked for a CID.
        datagrams = pack_datagrams(self._cid_outgoing(records), self._mtu) if records else [raw]
        self._outgoing.extend(datagrams)
        return datagrams

    def _renumbered(self, records: list[bytes]) -> list[bytes]:
        """Our epoch-0 records, numbered after the client's verified ClientHello (server side).

        Our stateless HelloVerifyRequest carries the record number of the ClientHello it
        answers (RFC 6347 §4.2.1), and a client whose first hellos were lost has sent a few:
        say 4.  But OpenSSL 4 numbers a server's epoch-0 records from 1 whatever the verified
        hello's number, so its fourth record (a ChangeCipherSpec) would be 4 too, and the
        client would drop it as a replay of the HelloVerifyRequest.  Starting at the verified
        hello's own number, as older OpenSSL did, keeps every number new to the client.  The
        numbers of plaintext records are not authenticated and not in the handshake hash.
        """
        return renumber_plaintext_records(records, self._epoch0_offset)

    def _note_sent(self, records: list[bytes]) -> None:
        """Track the records OpenSSL wrote for us (trusted bytes).

        Epoch 0: the next free number, for our own alert (:meth:`_reject_bad_finished`).
        Protected records (our Finished, and its retransmissions): kept for the record
        protector (:func:`~._protection.aead_protector_for`), which checks the keys on them
        and numbers our next record after the highest.
        """
        for raw in records:
            record = read_own_record(raw)
            if record.epoch == 0:
                sequence = record.sequence_number
                self._next_plaintext_sequence = max(self._next_plaintext_sequence, sequence + 1)
                if record.content_type == ContentType.handshake and self._may_request_certificate:
                    with contextlib.suppress(MalformedDatagram):
                        types = {m.msg_type for m in parse_handshake_messages(record.fragment)}
                        self._certificate_requested |= HandshakeType.certificate_request in types
            else:
                self._sent_protected = True
                with contextlib.suppress(MalformedDatagram):
                    self._own_protected.extend(parse_records(raw))

    def _take_callback_events(self) -> list[SessionEvent]:
        events, self._callback_events = self._callback_events, []
        return events

    def _step_handshake(self, now: float) -> list[SessionEvent]:
        try:
            self._connection.do_handshake()
        except SSL.WantReadError:
            events = self._take_callback_events()
            flight = self._flush()
            if flight:
                # A new flight: the peer answered, so the retransmission clock starts over.
                self._last_flight = flight
                self._retransmissions = 0
                self.timer_deadline = now + self._policy.interval(0)
            events.append(HandshakeProgress())
            return events
        except SSL.Error as error:
            events = self._take_callback_events()
            reason, kind = self._handshake_failure(error)
            return events + self._fail(reason, now, kind)
        except UnreadablePeerCertificate as error:
            # pyOpenSSL raises what our verify callback raised.  OpenSSL's queued alert says
            # internal_error (it cannot know why the callback refused); ours says what is wrong.
            events = self._take_callback_events()
            drain_write_bio(self._connection)
            self._queue_plaintext_alert(AlertDescription.bad_certificate)
            return events + self._fail(str(error), now, FailureKind.BAD_CERTIFICATE)
        events = self._take_callback_events()
        self._final_flight = self._flush()
        self.state = SessionState.ESTABLISHED
        self.timer_deadline = None
        self._last_flight = []
        self._last_received = b""
        connection = self._connection
        resumed = session_reused(connection)
        psk_identity = self._psk_identity
        if resumed and psk_identity is None:
            # A resumed handshake skips the PSK callback; the session remembers the identity.
            psk_identity = session_psk_identity(connection)
        max_plaintext = MAX_PLAINTEXT
        if self._peer_may_limit_fragments:
            max_plaintext = session_max_fragment_length(connection) or MAX_PLAINTEXT
        outcome = self.outcome = HandshakeOutcome(
            cipher=connection.get_cipher_name() or "unknown",
            protocol=connection.get_protocol_version_name(),
            resumed=resumed,
            peer_certificate=peer_certificate(connection),
            # Only a client resumes; on a server it would pin the session past the cache.
            tls_session=None if self._is_server else connection.get_session(),
            max_plaintext=max_plaintext,
            psk_identity=psk_identity,
            connection_id=self.connection_id,
            peer_connection_id=self.peer_connection_id,
        )
        events.append(HandshakeComplete(outcome.cipher, outcome.protocol, outcome.resumed))
        # Our own protected records (OpenSSL wrote them: trusted) carry the new epoch; DTLS 1.2
        # moves both directions to it in the same handshake.
        read_epoch = self._own_protected[0].epoch if self._own_protected else 1
        peer_finished = self._peer_finished = self._completing
        protector: RecordProtector | None = None
        cid = self._cid
        read_cid, write_cid = (b"", b"") if cid is None else (cid.read_cid, cid.write_cid)
        early = self._kept.early
        if self._release_openssl or read_cid or write_cid:
            released = aead_protector_for(
                outcome.cipher,
                is_server=self._is_server,
                connection=connection,
                peer_finished=peer_finished,
                own_protected=self._own_protected,
                early=early,
                read_cid=read_cid,
                write_cid=write_cid,
                read_epoch=read_epoch,
                final_flight=self._final_flight,
                max_resends=self._policy.max_retransmissions,
            )
            if released is not None:
                protector, self.early_events = released
                self._openssl = None
        if protector is None and (read_cid or write_cid):
            # Only our record layer speaks RFC 9146: without it the peer's records cannot be
            # read.  Our server answers only for suites it protects (a foreign server might
            # not; or OpenSSL chose another suite than predicted, see connection_id_to_answer).
            self.state = SessionState.HANDSHAKING  # so that _fail reports a failed handshake
            kept = [e for e in events if not isinstance(e, HandshakeComplete)]
            return kept + self._fail(
                f"a connection ID was negotiated with {outcome.cipher}, whose records this "
                "library cannot protect itself (RFC 9146 needs one of its AEAD suites)",
                now,
                FailureKind.NO_SHARED_CIPHER,
            )
        if protector is None:
            suite = aead_suite(outcome.cipher)
            kept_openssl = OpenSSLProtector(
                connection,
                etm=etm_guard_for(
                    outcome.cipher,
                    is_server=self._is_server,
                    master_secret=connection.master_key() or b"",
                    client_random=connection.client_random() or b"",
                    server_random=connection.server_random() or b"",
                    peer_protected=(records_or_none(peer_finished) or []) if peer_finished else [],
                    own_protected=self._own_protected,
                ),
                read_epoch=read_epoch,
                fragment_lengths=(
                    (suite.overhead, MAX_PLAINTEXT + suite.overhead) if suite is not None else None
                ),
                final_flight=self._final_flight,
                max_resends=self._policy.max_retransmissions,
                peer_finished=peer_finished,
                mtu=self._mtu,
                epoch0_offset=self._epoch0_offset,
            )
            self.early_events = kept_openssl.open_early(early, self.handshake_drops)
            protector = kept_openssl
        self.protector = protector
        self._final_flight = []
        self._kept.clear()
        self._own_protected = []
        if cid is not None:
            cid.forget_keys()
        return events

    def _handshake_failure(self, error: SSL.Error) -> tuple[str, FailureKind]:
        """What to say of a handshake OpenSSL failed, and its kind (decided before the
        peer's identity is quoted into the message)."""
        reason = openssl_error_reason(error)
        kind = failure_kind_of_openssl(reason)
        if self.psk_identity is not None and kind is FailureKind.UNKNOWN_IDENTITY:
            name = quote_peer_text(self.psk_identity)
            if self._psk_lookup_failure is not None:
                return (
                    f"PSK lookup for {name} failed: {self._psk_lookup_failure} ({reason})",
                    FailureKind.PSK_LOOKUP_FAILED,
                )
            return f"unknown PSK identity {name} ({reason})", kind
        return reason, kind

    def _fail(
        self, reason: str, now: float | None, kind: FailureKind | None = None
    ) -> list[SessionEvent]:
        """Fail the handshake: :class:`HandshakeFailed` of ``kind`` (by default read from
        ``reason``, which must then be OpenSSL's own words)."""
        # OpenSSL leaves the fatal alert in the write BIO: send it so the peer fails fast.
        sent = self._flush() if self._openssl is not None else []
        self.state = SessionState.FAILED
        self.failure_reason = reason
        self.timer_deadline = None
        self.alert_sent = self.alert_sent or _plaintext_fatal_alert(sent)
        self.alert_received = _plaintext_fatal_alert([self._last_received])
        self._last_received = b""
        if kind is None:
            kind = failure_kind_of_openssl(reason)
        return [HandshakeFailed(reason, self.alert_sent, self.alert_received, kind)]

    def _reject_bad_finished(self, now: float) -> list[SessionEvent]:
        """Fail the handshake and tell the peer with a fatal ``bad_record_mac`` alert.

        OpenSSL has no way to send it, so this is the one record we write ourselves: a
        plaintext epoch-0 alert, which the peer still reads because we have not sent our
        ChangeCipherSpec yet (RFC 6347 §4.1.2.7 allows a fatal alert for an invalid record).
        After our ChangeCipherSpec (a resumed handshake) only an encrypted alert would be read,
        and OpenSSL cannot make one on demand, so then the handshake just fails.
        """
        if not self._sent_protected:
            self._outgoing.append(
                encode_plaintext_alert(
                    AlertLevel.fatal,
                    AlertDescription.bad_record_mac,
                    self._next_plaintext_sequence,
                )
            )
            self._next_plaintext_sequence += 1
            self.alert_sent = alert_name(AlertDescription.bad_record_mac)
        return self._fail(
            "the peer's Finished failed authentication: the two sides derived different keys "
            "(a wrong PSK?)",
            now,
            FailureKind.WRONG_KEY,
        )
