"""Record protection of an established session: one small interface, two implementations.

Once its handshake is over, a :class:`~._session.DTLSSession` hands every datagram to a
:class:`RecordProtector`, which opens the peer's records and seals ours.  There are two:

* :class:`AeadProtector`: our own record layer (:class:`~._records.RecordProtection`).  A
  session that negotiated an AEAD suite lets go of its OpenSSL connection (about 64 KiB) and
  protects records itself (a few KiB, and a quarter of the CPU per record).  It does so only
  once the keys it derived have opened the Finished records both sides really sent
  (:func:`aead_protector_for`); otherwise, and for CBC suites or with
  ``release_openssl=False``, OpenSSL goes on doing the work.  See ``_records.py``.
  :class:`CidAeadProtector` is the same for an association that negotiated connection IDs
  (RFC 9146): only our record layer runs one, and a record that authenticates and is the
  newest of its epoch sets :attr:`~CidAeadProtector.newest_record_authenticated`, which lets
  the owner move the association to the datagram's address (RFC 9146 §6).
* :class:`OpenSSLProtector`: the OpenSSL connection stays and protects records on its memory
  BIOs.  A CBC session with encrypt-then-MAC checks each record's MAC itself before OpenSSL
  sees it, because OpenSSL's DTLS record layer fails the association on a bad
  encrypt-then-MAC tag: one spoofed datagram would end it.  See ``_etm.py``.

Both are sans-I/O like the session: they are given bytes, return events, and append the
datagrams they must send (answers to close_notify, our final flight again, a refusal to
renegotiate) to the ``outgoing`` list their owner passes in; the owner keeps that one list and
hands it out in ``take_datagrams``.  A protector never changes the session's state itself: an
:meth:`~RecordProtector.open` that ends the association says so in
:attr:`~RecordProtector.ending`, and the owner closes or fails the session.

The per-datagram paths (:meth:`AeadProtector.open`, :meth:`~AeadProtector.seal`,
:meth:`~AeadProtector.screen`) are hot: they read module globals rather than Enum attributes
(~100 ns each on Python 3.11) and keep what they need in slots.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from typing import ClassVar, Protocol

from OpenSSL import SSL

from ._codes import DropReason
from ._etm import EtmGuard
from ._openssl import (
    alert_name,
    drain_write_bio,
    openssl_error_reason,
    watch_alerts_read,
)
from ._records import (
    RecordProtection,
    ReplayWindow,
    aead_suite,
    protection_from_key_block,
    record_protection_for,
)
from ._session_events import (
    MAX_PLAINTEXT,
    ApplicationData,
    ConnectionFailed,
    RecordsDropped,
    RemoteClosed,
    SessionEvent,
)
from ._wire import (
    FATAL_ONLY_ALERTS,
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
    MalformedDatagram,
    Record,
    encode_alert,
    handshake_type,
    pack_datagrams,
    parse_alert,
    parse_record_headers,
    parse_records,
    parse_records_with_cid,
    read_own_record,
    renumber_plaintext_records,
    single_application_record,
    single_cid_record,
    single_record_header,
    split_records,
)

__all__ = [
    "AeadProtector",
    "CidAeadProtector",
    "OpenSSLProtector",
    "RecordProtector",
    "aead_protector_for",
    "alert_ending",
    "epoch1_keys",
    "records_or_none",
]

#: The content types read per datagram (and per send), as module globals: reading an attribute
#: of an Enum class costs ~100 ns on Python 3.11 (its metaclass has ``__getattr__``), a global
#: ~15 ns.  The same members, not copies of the numbers.
_APPLICATION_DATA = ContentType.application_data
_ALERT = ContentType.alert
_HANDSHAKE = ContentType.handshake
_TLS12_CID = ContentType.tls12_cid


def records_or_none(datagram: bytes) -> list[Record] | None:
    """The datagram's records, or None if it does not split into DTLS records."""
    try:
        return parse_records(datagram)
    except MalformedDatagram:
        return None


def alert_ending(plaintext: bytes) -> RemoteClosed | ConnectionFailed | None:
    """How an authenticated alert ends the session; None for a warning, which changes
    nothing (RFC 5246 §7.2.2) -- unless its description is one that RFC 5246 makes
    always fatal (``FATAL_ONLY_ALERTS``): that ends the session like a fatal alert."""
    try:
        level, description = parse_alert(plaintext)
    except MalformedDatagram:
        return ConnectionFailed("the peer sent a malformed alert")
    if description == AlertDescription.close_notify:
        return RemoteClosed()
    if level == AlertLevel.warning:
        if description not in FATAL_ONLY_ALERTS:
            return None
        return ConnectionFailed(
            f"the peer sent the alert {alert_name(description)} at warning level; "
            "it is always fatal (RFC 5246 §7.2.2)"
        )
    return ConnectionFailed(f"the peer sent the fatal alert {alert_name(description)}")


class RecordProtector(Protocol):
    """How an established session opens and seals records; see the module docstring.

    ``outgoing`` is the owner's queue of datagrams to send: a protector appends to it.
    """

    #: True when records are protected by :mod:`._records` (the OpenSSL connection is gone).
    openssl_released: ClassVar[bool]
    #: The exceptions :meth:`seal` raises when the association cannot go on (then call
    #: :meth:`seal_failed`, and let the exception go on to the caller).
    seal_errors: ClassVar[tuple[type[Exception], ...]]
    #: How the last :meth:`open` ended the association (the peer's close_notify, a fatal alert
    #: or a protocol error), or None while it goes on.
    ending: RemoteClosed | ConnectionFailed | None
    #: Set by each :meth:`open` of a CID association (always False otherwise): a record
    #: authenticated and was the newest the peer has sent in the epoch (RFC 9146 §6).
    newest_record_authenticated: bool

    @property
    def connection(self) -> SSL.Connection | None:
        """The OpenSSL connection that protects records, or None (our own layer does)."""

    @property
    def encrypt_then_mac(self) -> bool:
        """True when the peer's encrypt-then-MAC tags are checked before OpenSSL does."""

    def screen(self, datagram: bytes) -> DropReason | None:
        """Why nothing in ``datagram`` can be authentic, from its record headers alone; None
        when some record may be.  Changes nothing."""

    def open(self, datagram: bytes, outgoing: list[bytes]) -> list[SessionEvent]:
        """Open the peer's datagram: its plaintext, or why it gave none."""

    def seal(self, data: bytes) -> bytes:
        """``data`` as one protected application record (one datagram)."""

    def seal_failed(self, error: Exception, outgoing: list[bytes]) -> str:
        """:meth:`seal` raised one of :attr:`seal_errors`: why the association ends."""

    def goodbye(self, outgoing: list[bytes]) -> None:
        """Queue our close_notify (nothing if the association is broken)."""


class _Protector:
    """What both protectors share: the epoch and lengths a record of the peer must have, and
    our saved final flight, resent (bounded) when the peer's Finished comes again."""

    __slots__ = (
        "_final_flight",
        "_final_flight_resends",
        "_fragment_lengths",
        "_max_resends",
        "_read_epoch",
        "ending",
        "newest_record_authenticated",
    )

    def __init__(
        self,
        *,
        read_epoch: int,
        fragment_lengths: tuple[int, int] | None,
        final_flight: list[bytes],
        max_resends: int,
    ) -> None:
        # The epoch the peer's records must carry, and the fragment lengths an AEAD suite can
        # produce (None: a CBC suite, whose padding makes lengths vary): screen() judges
        # records with them, without cryptography.
        self._read_epoch = read_epoch
        self._fragment_lengths = fragment_lengths
        # Our final handshake flight (the server's CCS + Finished), kept until the peer proves
        # it arrived (authentic data from it); see _resend_saved_final_flight.
        self._final_flight = final_flight
        self._final_flight_resends = 0
        self._max_resends = max_resends
        self.ending: RemoteClosed | ConnectionFailed | None = None
        self.newest_record_authenticated = False

    def screen(self, datagram: bytes) -> DropReason | None:
        """Why nothing in ``datagram`` can be authentic, from its record headers alone (each
        judged by :meth:`_unverifiable`); None when some record may be.  Changes nothing."""
        try:
            headers = parse_record_headers(datagram)
        except MalformedDatagram:
            return DropReason.MALFORMED
        reason: DropReason | None = None
        for header in headers:
            why = self._unverifiable(
                header.content_type, header.epoch, header.sequence_number, header.length
            )
            if why is None:
                return None
            reason = reason or why
        return reason

    def _unverifiable(
        self, content: int, epoch: int, sequence: int, length: int
    ) -> DropReason | None:
        raise NotImplementedError

    def _resend_saved_final_flight(self, outgoing: list[bytes]) -> None:
        """Queue our saved final flight again, at most ``max_retransmissions`` times."""
        if self._final_flight and self._final_flight_resends < self._max_resends:
            self._final_flight_resends += 1
            outgoing.extend(self._final_flight)


class AeadProtector(_Protector):
    """Records protected by our own AEAD layer (:class:`~._records.RecordProtection`); the
    OpenSSL connection is gone."""

    __slots__ = ("_peer_finished_sequence", "_renegotiation_refusals", "protection")

    openssl_released: ClassVar[bool] = True
    seal_errors: ClassVar[tuple[type[Exception], ...]] = (OverflowError,)

    def __init__(
        self,
        protection: RecordProtection,
        *,
        read_epoch: int,
        fragment_lengths: tuple[int, int] | None,
        final_flight: list[bytes],
        max_resends: int,
        peer_finished_sequence: int | None,
    ) -> None:
        super().__init__(
            read_epoch=read_epoch,
            fragment_lengths=fragment_lengths,
            final_flight=final_flight,
            max_resends=max_resends,
        )
        #: The keys, sequence numbers and replay window of the epoch.
        self.protection = protection
        # The sequence number of the peer's Finished (CID associations): a byte-for-byte copy
        # of it skips the replay check, so that it still triggers the bounded resend.
        self._peer_finished_sequence = peer_finished_sequence
        self._renegotiation_refusals = 0

    @property
    def connection(self) -> SSL.Connection | None:
        return None

    @property
    def encrypt_then_mac(self) -> bool:
        return False

    def _unverifiable(
        self, content: int, epoch: int, sequence: int, length: int
    ) -> DropReason | None:
        """Why one record cannot be authentic, without crypto; or None.

        Our record layer marks a number in the replay window only after the record
        authenticated, so a number seen there is a replay.
        """
        read_epoch = self._read_epoch
        if epoch != read_epoch:
            if epoch < read_epoch:
                return DropReason.HANDSHAKE_RETRANSMISSION
            return DropReason.WRONG_EPOCH
        lengths = self._fragment_lengths
        if lengths is not None and not lengths[0] <= length <= lengths[1]:
            return DropReason.BAD_LENGTH
        # Handshake records skip the replay check: a retransmitted Finished may be byte for
        # byte the one already seen, and it must still trigger the bounded resend.
        if (
            content != _HANDSHAKE
            and self.protection.replay.seen(sequence)
            # A CID record's real type is inside: a copy of the peer's Finished must still
            # reach _on_protected_handshake (and nothing else of that number authenticates).
            and not (content == _TLS12_CID and sequence == self._peer_finished_sequence)
        ):
            return DropReason.REPLAY
        return None

    def open(self, datagram: bytes, outgoing: list[bytes]) -> list[SessionEvent]:
        protection = self.protection
        record = single_application_record(datagram, protection.epoch)
        if record is not None:
            # The hot path: a datagram of one application record.
            sequence = record.sequence_number
            lengths = self._fragment_lengths
            if lengths is not None and not lengths[0] <= len(record.fragment) <= lengths[1]:
                return [RecordsDropped(DropReason.BAD_LENGTH)]
            if protection.replay.seen(sequence):
                return [RecordsDropped(DropReason.REPLAY)]
            plaintext = protection.decrypt(
                record.content_type, record.version, sequence, record.fragment
            )
            if plaintext is None:
                return [RecordsDropped(DropReason.AUTHENTICATION)]
            protection.replay.mark(sequence)
            self._final_flight = []  # authentic data: the peer has finished its handshake
            return [ApplicationData(plaintext)] if plaintext else []
        records = records_or_none(datagram)
        if records is None:
            return [RecordsDropped(DropReason.MALFORMED)]
        events: list[SessionEvent] = []
        drop: DropReason | None = None
        for record in records:
            content, sequence = record.content_type, record.sequence_number
            # Epoch 0: the rest of the peer's retransmitted flight; a later one: not ours; an
            # impossible length or a replay: nothing to decrypt.  (Handshake records skip the
            # replay check: they change nothing but trigger a bounded resend.)
            why = self._unverifiable(content, record.epoch, sequence, len(record.fragment))
            if why is not None:
                drop = drop or why
                continue
            plaintext = protection.decrypt(content, record.version, sequence, record.fragment)
            if plaintext is None:
                drop = drop or DropReason.AUTHENTICATION
                continue
            if content != _HANDSHAKE:
                protection.replay.mark(sequence)
            if content == _APPLICATION_DATA:
                self._final_flight = []
                if plaintext:
                    events.append(ApplicationData(plaintext))
            elif content == _ALERT:
                ending = self._on_protected_alert(plaintext, outgoing)
                if ending is not None:
                    events.append(ending)
                    return events
            elif content == _HANDSHAKE:
                self._on_protected_handshake(plaintext, outgoing)
                drop = drop or DropReason.HANDSHAKE_RETRANSMISSION
        if not events and drop is not None:
            events.append(RecordsDropped(drop))
        return events

    def _on_protected_alert(
        self, plaintext: bytes, outgoing: list[bytes]
    ) -> RemoteClosed | ConnectionFailed | None:
        """The peer's authenticated alert: close_notify or fatal end the association."""
        ending = alert_ending(plaintext)
        if isinstance(ending, RemoteClosed):
            # RFC 5246 §7.2.1: answer close_notify with our own before closing.
            self.goodbye(outgoing)
        if ending is not None:
            self.ending = ending
        return ending

    def _on_protected_handshake(self, plaintext: bytes, outgoing: list[bytes]) -> None:
        """A handshake message after the handshake: a retransmitted Finished, or renegotiation.

        A Finished means our final flight was lost: resend it (at most ``max_retransmissions``
        times).  Anything else asks for a renegotiation, which we do not do; RFC 5246 §7.2.2
        has the warning alert ``no_renegotiation`` for that answer.
        """
        if handshake_type(plaintext) == HandshakeType.finished:
            self._resend_saved_final_flight(outgoing)
            return
        # Handshake records skip the replay check, so cap the answers: a replayed record
        # must not make us talk without end.
        if self._renegotiation_refusals >= self._max_resends:
            return
        self._renegotiation_refusals += 1
        with contextlib.suppress(OverflowError):
            outgoing.append(
                self.protection.seal(
                    _ALERT, encode_alert(AlertLevel.warning, AlertDescription.no_renegotiation)
                )
            )

    def seal(self, data: bytes) -> bytes:
        return self.protection.seal(_APPLICATION_DATA, data)

    def seal_failed(self, error: Exception, outgoing: list[bytes]) -> str:
        return str(error)

    def goodbye(self, outgoing: list[bytes]) -> None:
        with contextlib.suppress(OverflowError):
            outgoing.append(
                self.protection.seal(
                    _ALERT, encode_alert(AlertLevel.warning, AlertDescription.close_notify)
                )
            )


class CidAeadProtector(AeadProtector):
    """:class:`AeadProtector` for an association whose peer must put our connection ID on its
    records (RFC 9146): every record it sends is a ``tls12_cid`` record carrying it."""

    __slots__ = ()

    def screen(self, datagram: bytes) -> DropReason | None:
        read_cid = self.protection.read_cid
        single = single_cid_record(datagram, self._read_epoch, read_cid)
        if single is not None:
            # The hot path: one well-framed record of our epoch with our CID; only its length
            # and sequence number are left to judge (what the loop below would do with it).
            return self._unverifiable(
                _TLS12_CID, single.epoch, single.sequence_number, len(single.fragment)
            )
        try:
            records = parse_records_with_cid(datagram, len(read_cid))
        except MalformedDatagram:
            return DropReason.MALFORMED
        reason: DropReason | None = None
        for record in records:
            why: DropReason | None
            if isinstance(record, Record):
                why = (
                    DropReason.HANDSHAKE_RETRANSMISSION
                    if record.epoch == 0
                    else DropReason.MISSING_CID
                )
            elif record.cid != read_cid:
                why = DropReason.WRONG_CID
            else:
                why = self._unverifiable(
                    _TLS12_CID, record.epoch, record.sequence_number, len(record.fragment)
                )
            if why is None:
                return None
            reason = reason or why
        return reason

    def open(self, datagram: bytes, outgoing: list[bytes]) -> list[SessionEvent]:
        """Each record must be a ``tls12_cid`` record carrying our CID; standard protected
        records are dropped (:data:`DropReason.MISSING_CID`).  Sets
        :attr:`newest_record_authenticated` when a record authenticated and was newer than
        any the peer sent before in the epoch (RFC 9146 §6: the owner may then move the
        association to the datagram's source address)."""
        self.newest_record_authenticated = False
        protection = self.protection
        read_cid = protection.read_cid
        single = single_cid_record(datagram, self._read_epoch, read_cid)
        if single is not None:
            # The hot path: one tls12_cid record of our epoch with our CID (anything else --
            # several records, another CID or epoch, bad framing -- takes the loop below).
            # The checks are _unverifiable's for such a record, inline, in its order.
            sequence = single.sequence_number
            fragment = single.fragment
            lengths = self._fragment_lengths
            if lengths is not None and not lengths[0] <= len(fragment) <= lengths[1]:
                return [RecordsDropped(DropReason.BAD_LENGTH)]
            replay = protection.replay
            if replay.seen(sequence) and sequence != self._peer_finished_sequence:
                return [RecordsDropped(DropReason.REPLAY)]
            opened = protection.decrypt_cid(single.version, sequence, read_cid, fragment)
            if opened is None:
                return [RecordsDropped(DropReason.AUTHENTICATION)]
            content, plaintext = opened
            if content == _APPLICATION_DATA:
                if sequence > replay.highest:
                    self.newest_record_authenticated = True
                replay.mark(sequence)
                self._final_flight = []  # authentic data: the peer has finished its handshake
                return [ApplicationData(plaintext)] if plaintext else []
            # An alert, a handshake message or an unknown type: rare, and the loop below
            # knows what each one does; it opens the record again (nothing has changed yet).
        try:
            records = parse_records_with_cid(datagram, len(read_cid))
        except MalformedDatagram:
            return [RecordsDropped(DropReason.MALFORMED)]
        events: list[SessionEvent] = []
        drop: DropReason | None = None
        for record in records:
            if isinstance(record, Record):
                drop = drop or (
                    DropReason.HANDSHAKE_RETRANSMISSION
                    if record.epoch == 0
                    else DropReason.MISSING_CID
                )
                continue
            sequence = record.sequence_number
            if record.cid != read_cid:
                drop = drop or DropReason.WRONG_CID
                continue
            why = self._unverifiable(_TLS12_CID, record.epoch, sequence, len(record.fragment))
            if why is not None:
                drop = drop or why
                continue
            newest = sequence > protection.replay.highest
            opened = protection.decrypt_cid(record.version, sequence, record.cid, record.fragment)
            if opened is None:
                drop = drop or DropReason.AUTHENTICATION
                continue
            content, plaintext = opened
            if content != _HANDSHAKE:
                protection.replay.mark(sequence)
                if newest:
                    self.newest_record_authenticated = True
            if content == _APPLICATION_DATA:
                self._final_flight = []
                if plaintext:
                    events.append(ApplicationData(plaintext))
            elif content == _ALERT:
                ending = self._on_protected_alert(plaintext, outgoing)
                if ending is not None:
                    events.append(ending)
                    return events
            elif content == _HANDSHAKE:
                self._on_protected_handshake(plaintext, outgoing)
                drop = drop or DropReason.HANDSHAKE_RETRANSMISSION
            else:
                drop = drop or DropReason.UNEXPECTED
        if not events and drop is not None:
            events.append(RecordsDropped(drop))
        return events


def aead_protector_for(
    cipher: str,
    *,
    is_server: bool,
    connection: SSL.Connection,
    peer_finished: bytes | None,
    own_protected: list[Record],
    early: list[bytes],
    read_cid: bytes,
    write_cid: bytes,
    read_epoch: int,
    final_flight: list[bytes],
    max_resends: int,
) -> tuple[AeadProtector, list[SessionEvent]] | None:
    """Hand record protection to :mod:`._records` and let the OpenSSL connection go.

    Only if the keys derived from the session open the Finished records both sides sent
    (see :func:`~._records.record_protection_for`); otherwise None, and OpenSSL carries on.
    The peer's application data (and alerts) that overtook its Finished (``early``, raw
    records kept during the handshake) sit in OpenSSL's buffers, which are about to be freed,
    so we open them from our own copy; they come back as the early events, in the order they
    arrived.
    """
    handshake_records = records_or_none(peer_finished) or [] if peer_finished is not None else []
    protection = record_protection_for(
        cipher,
        is_server=is_server,
        master_secret=connection.master_key() or b"",
        client_random=connection.client_random() or b"",
        server_random=connection.server_random() or b"",
        peer_protected=handshake_records,
        own_protected=own_protected,
    )
    if protection is None:
        return None
    events: list[SessionEvent] = []
    records = [record for raw in early for record in records_or_none(raw) or []]
    for record in records:
        content = record.content_type
        if content not in (ContentType.application_data, ContentType.alert):
            continue
        if record.epoch != protection.epoch:
            continue
        plaintext = protection.open_record(
            content, record.version, record.sequence_number, record.fragment
        )
        if plaintext is None:
            continue  # a forgery, or a copy of a record already opened
        if content == ContentType.application_data:
            if plaintext:
                events.append(ApplicationData(plaintext, record.raw))
            continue
        ending = alert_ending(plaintext)
        if ending is not None:
            events.append(ending)
            break  # nothing the peer sent after its goodbye counts
    protection.read_cid = read_cid
    protection.write_cid = write_cid
    suite = aead_suite(cipher)
    assert suite is not None  # record_protection_for protects only these
    fragment_lengths = (suite.overhead, MAX_PLAINTEXT + suite.overhead)
    if read_cid:
        # DTLSInnerPlaintext: at least the content type, at most 2^14 + 256 bytes with
        # padding (RFC 9146 §4).
        fragment_lengths = (suite.overhead + 1, MAX_PLAINTEXT + 256 + suite.overhead)
    kind = CidAeadProtector if read_cid else AeadProtector
    protector = kind(
        protection,
        read_epoch=read_epoch,
        fragment_lengths=fragment_lengths,
        final_flight=final_flight,
        max_resends=max_resends,
        peer_finished_sequence=(
            read_own_record(peer_finished).sequence_number if peer_finished is not None else None
        ),
    )
    # OpenSSL forgets the session of a connection freed before a shutdown, as if it had
    # failed; this one did not, so say it ended cleanly and keep it resumable.
    connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
    connection.set_app_data(None)
    return protector, events


def epoch1_keys(
    connection: SSL.Connection, *, is_server: bool, cipher: str, master_secret: bytes
) -> RecordProtection | None:
    """Our record layer's keys of epoch 1, derived from OpenSSL's secrets, unproven; None
    for a suite :mod:`._records` does not protect, or before OpenSSL has the secrets.

    During the handshake two owners use them: the connection-ID Finished translation
    (:class:`~._cid_handshake.CidHandshake`) and the early-record check
    (:class:`~._kept_records.KeptRecords`).
    """
    suite = aead_suite(cipher)
    if suite is None:
        return None
    return protection_from_key_block(
        suite,
        is_server=is_server,
        master_secret=master_secret,
        client_random=connection.client_random() or b"",
        server_random=connection.server_random() or b"",
        epoch=1,
        next_sequence=0,
    )


class _ReplayMirror:
    """Remembers which application records OpenSSL accepted, to tell replays from forgeries.

    OpenSSL silently discards both replayed records and records that fail authentication.  To
    count them separately we keep the record layer's 64-record window
    (:class:`~._records.ReplayWindow`, RFC 6347 §4.1.2.6) for the current epoch, updated only
    with records that did decrypt.  It never decides anything: OpenSSL does.
    """

    __slots__ = ("_epoch", "_window")

    def __init__(self) -> None:
        self._epoch = -1
        self._window = ReplayWindow()

    def mark(self, epoch: int, sequence: int) -> None:
        if epoch != self._epoch:
            self._epoch, self._window = epoch, ReplayWindow()
        self._window.mark(sequence)

    def seen(self, epoch: int, sequence: int) -> bool:
        return epoch == self._epoch and self._window.seen(sequence)


def _has_protected_handshake(records: list[Record]) -> bool:
    """A Finished (or a later handshake message) travels in a protected handshake record."""
    return any(r.epoch > 0 and r.content_type == ContentType.handshake for r in records)


class OpenSSLProtector(_Protector):
    """Records protected by the OpenSSL connection that ran the handshake (a CBC suite, a
    suite :mod:`._records` does not know, or ``release_openssl=False``).

    OpenSSL's callback for the alerts it reads (``watch_alerts_read``) finds this object
    through the connection's app data, through a weak proxy: a strong reference back would
    make a cycle that keeps the connection's C memory until a full collection.
    """

    __slots__ = (
        "__weakref__",
        "_alerts_read",
        "_connection",
        "_epoch0_offset",
        "_etm",
        "_mtu",
        "_peer_finished",
        "_replay",
    )

    openssl_released: ClassVar[bool] = False
    seal_errors: ClassVar[tuple[type[Exception], ...]] = (SSL.Error,)

    def __init__(
        self,
        connection: SSL.Connection,
        *,
        etm: EtmGuard | None,
        read_epoch: int,
        fragment_lengths: tuple[int, int] | None,
        final_flight: list[bytes],
        max_resends: int,
        peer_finished: bytes | None,
        mtu: int,
        epoch0_offset: int,
    ) -> None:
        super().__init__(
            read_epoch=read_epoch,
            fragment_lengths=fragment_lengths,
            final_flight=final_flight,
            max_resends=max_resends,
        )
        self._connection = connection
        #: The MAC check in front of OpenSSL for a CBC suite with encrypt-then-MAC (``_etm``).
        self._etm = etm
        # The peer's record that completed the handshake (its Finished), byte for byte: only a
        # copy of it makes us resend our final flight (see _resend_final_flight).
        self._peer_finished = peer_finished
        self._mtu = mtu
        # Added to OpenSSL's epoch-0 record numbers (server side; see _wire's
        # renumber_plaintext_records): a re-emitted final flight is numbered as the first was.
        self._epoch0_offset = epoch0_offset
        self._replay = _ReplayMirror()
        # The alerts OpenSSL authenticated and read during the current read (see alert_read).
        self._alerts_read: list[tuple[int, int]] = []
        connection.set_app_data(weakref.proxy(self))
        # OpenSSL stays for the rest of the connection: from now on, hear its alerts.
        watch_alerts_read(connection)

    @property
    def connection(self) -> SSL.Connection | None:
        return self._connection

    @property
    def encrypt_then_mac(self) -> bool:
        return self._etm is not None

    # -- alert callback (called by OpenSSL from inside read) ----------------------------------

    def alert_read(self, level: int, description: int) -> None:
        """OpenSSL authenticated and read one of the peer's alerts (see ``watch_alerts_read``).

        OpenSSL acts on fatal alerts and close_notify itself but reads every other warning
        without a word, fatal-only descriptions included; :meth:`_warning_that_is_fatal`
        looks at what was noted here.
        """
        self._alerts_read.append((level, description))

    def _warning_that_is_fatal(self) -> ConnectionFailed | None:
        """The ending for a fatal-only warning OpenSSL read (:meth:`alert_read`), if any.

        Fatal alerts and close_notify are not looked at here: OpenSSL acts on them itself.
        """
        for level, description in self._alerts_read:
            if level == AlertLevel.warning and description in FATAL_ONLY_ALERTS:
                ending = alert_ending(bytes((level, description)))
                assert isinstance(ending, ConnectionFailed)
                return ending
        return None

    def open_early(self, early: list[bytes], drops: Counter[DropReason]) -> list[SessionEvent]:
        """Give OpenSSL the records that overtook the peer's Finished, now.

        They were kept out of OpenSSL during the handshake (see ``_handshake.py``); now it
        opens them, each as if it had just arrived, and what they say comes back as the early
        events.  Those that opened are marked in the replay mirror, so that a late copy counts
        as a replay, not as a forgery.  A record whose encrypt-then-MAC tag fails is counted in
        ``drops``.
        """
        connection = self._connection
        events: list[SessionEvent] = []
        self._alerts_read = []
        for raw in early:
            if self._etm is not None and self._etm.screen(raw) is None:
                # Its MAC fails: a forgery, which OpenSSL would end the association for.
                drops[DropReason.AUTHENTICATION] += 1
                continue
            connection.bio_write(raw)
            ending: SessionEvent | None = None
            plaintext: bytes | None = None
            try:
                plaintext = connection.read(MAX_PLAINTEXT)
            except SSL.WantReadError:  # a forgery, empty data or a warning alert
                pass
            except SSL.ZeroReturnError:  # the peer's close_notify came with it
                ending = RemoteClosed()
            except SSL.Error as error:
                ending = ConnectionFailed(openssl_error_reason(error))
            # A fatal-only warning read on the way comes first: nothing after it counts.
            ending = self._warning_that_is_fatal() or ending
            if ending is not None:
                events.append(ending)
                return events
            if plaintext is None:
                continue
            header = read_own_record(raw)
            if header.content_type == ContentType.application_data:
                self._replay.mark(header.epoch, header.sequence_number)
            if plaintext:
                events.append(ApplicationData(plaintext, raw))
        return events

    def _unverifiable(
        self, content: int, epoch: int, sequence: int, length: int
    ) -> DropReason | None:
        """Why one record cannot be authentic, without crypto; or None.

        No replay check: our mirror of OpenSSL's window (:class:`_ReplayMirror`) may hold
        numbers of records that never authenticated, so it names drops but never decides them.
        """
        read_epoch = self._read_epoch
        if epoch != read_epoch:
            if epoch < read_epoch:
                return DropReason.HANDSHAKE_RETRANSMISSION
            return DropReason.WRONG_EPOCH
        lengths = self._fragment_lengths
        if lengths is not None and not lengths[0] <= length <= lengths[1]:
            return DropReason.BAD_LENGTH
        return None

    def _flush(self, outgoing: list[bytes]) -> list[bytes]:
        """Queue what OpenSSL wrote (an answer, an alert, our re-emitted final flight)."""
        raw = drain_write_bio(self._connection)
        if not raw:
            return []
        try:
            records = renumber_plaintext_records(split_records(raw), self._epoch0_offset)
        except MalformedDatagram:  # cannot happen with OpenSSL's own output; send it whole
            records = []
        datagrams = pack_datagrams(records, self._mtu) if records else [raw]
        outgoing.extend(datagrams)
        return datagrams

    def _fail(self, reason: str, outgoing: list[bytes]) -> list[SessionEvent]:
        # OpenSSL leaves the fatal alert in the write BIO: send it so the peer fails fast.
        self._flush(outgoing)
        ending = self.ending = ConnectionFailed(reason)
        return [ending]

    def open(self, datagram: bytes, outgoing: list[bytes]) -> list[SessionEvent]:
        if self._etm is not None:
            # A record that fails its MAC would be fatal inside OpenSSL: never let it in.
            screened = self._etm.screen(datagram)
            if screened is None:
                malformed = records_or_none(datagram) is None
                return [
                    RecordsDropped(DropReason.MALFORMED if malformed else DropReason.AUTHENTICATION)
                ]
            datagram = screened
        self._connection.bio_write(datagram)
        return self._read_application_data(datagram, outgoing)

    def _read_application_data(self, datagram: bytes, outgoing: list[bytes]) -> list[SessionEvent]:
        connection = self._connection
        events: list[SessionEvent] = []
        size = max(len(datagram), 1)
        single_record = single_record_header(datagram)
        if self._alerts_read:  # (no new list per datagram: alerts are rare)
            self._alerts_read = []
        while True:
            try:
                plaintext = connection.read(size)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                if self._alerts_read and self._warning_that_is_fatal() is not None:
                    break  # the fatal-only warning came before the close_notify
                # RFC 5246 §7.2.1: answer close_notify with our own before closing.
                self.goodbye(outgoing)
                ending = self.ending = RemoteClosed()
                events.append(ending)
                return events
            except SSL.Error as error:
                if self._alerts_read and self._warning_that_is_fatal() is not None:
                    break
                events.extend(self._fail(openssl_error_reason(error), outgoing))
                return events
            if self._alerts_read and self._warning_that_is_fatal() is not None:
                break  # this plaintext came after the alert: nothing after it counts
            if plaintext:
                events.append(ApplicationData(plaintext))
                if single_record is not None:
                    # The datagram was one record and it is consumed: asking OpenSSL again
                    # would only raise WantReadError, and an exception per datagram is a
                    # measurable share of a round trip.
                    break
        if self._alerts_read:
            failure = self._warning_that_is_fatal()
            if failure is not None:
                events.extend(self._fail(failure.reason, outgoing))
                return events
            if not events:
                return events  # an authenticated warning (user_canceled, ...): nothing dropped
        # A retransmitted client flight makes OpenSSL re-emit our final flight: send it.
        reemitted = self._flush(outgoing)
        if events:
            if single_record is not None:
                if single_record.content_type == _APPLICATION_DATA:
                    self._replay.mark(single_record.epoch, single_record.sequence_number)
            else:
                for record in records_or_none(datagram) or []:
                    if record.content_type == _APPLICATION_DATA:
                        self._replay.mark(record.epoch, record.sequence_number)
            self._final_flight = []  # authentic data: the peer has finished its handshake
        else:
            records = records_or_none(datagram)
            reason = DropReason.MALFORMED if records is None else self._classify_drop(records)
            if (
                reason == DropReason.HANDSHAKE_RETRANSMISSION
                and not reemitted
                and records
                and _has_protected_handshake(records)
                and not self._resend_final_flight(records, outgoing)
            ):
                # Not a copy of its Finished, and OpenSSL did not take it as a fresh one.
                reason = DropReason.AUTHENTICATION
            events.append(RecordsDropped(reason))
        return events

    def _resend_final_flight(self, records: list[Record], outgoing: list[bytes]) -> bool:
        """Answer the peer's retransmitted final flight with our final flight, byte for byte.

        OpenSSL re-emits our final flight only if the peer's retransmitted Finished passes its
        replay check, that is, only if the peer's OpenSSL made fresh records.  A peer that
        resends its flight byte for byte (as the handshake driver's ``handle_timer`` does
        whenever OpenSSL's real-time timer is not due yet: under a mock clock, or with a
        policy faster than OpenSSL's own 1 s doubling) has its Finished dropped as a replay,
        and would wait forever for our lost final flight.  So: a datagram carrying a protected
        handshake record (the peer's Finished) that made OpenSSL send nothing gets our saved
        final flight, at most ``max_retransmissions`` times.  Answers whether the datagram was
        such a copy.

        Only for a byte-for-byte copy of the peer's Finished that completed the handshake: a
        record OpenSSL dropped without a word may as well be a forgery, and forged "Finished"
        records must not make us talk, nor use up the resends.
        """
        finished = self._peer_finished
        if finished is not None and any(
            r.raw == finished
            for r in records
            if r.epoch > 0 and r.content_type == ContentType.handshake
        ):
            self._resend_saved_final_flight(outgoing)
            return True
        return False

    def _classify_drop(self, records: list[Record]) -> DropReason:
        """Why a well-framed datagram gave no plaintext (OpenSSL drops silently)."""
        protected = [r for r in records if r.epoch > 0]
        if not protected:
            return DropReason.HANDSHAKE_RETRANSMISSION
        reasons = [
            self._unverifiable(r.content_type, r.epoch, r.sequence_number, len(r.fragment))
            for r in protected
        ]
        if all(reasons):
            # Judged without OpenSSL's help: another epoch, or a length no key opens.
            return next(reason for reason in reasons if reason is not None)
        application = [r for r in protected if r.content_type == ContentType.application_data]
        if application and all(self._replay.seen(r.epoch, r.sequence_number) for r in application):
            return DropReason.REPLAY
        if not application:
            # Protected handshake records (a retransmitted Finished) are not forgeries.
            return DropReason.HANDSHAKE_RETRANSMISSION
        return DropReason.AUTHENTICATION

    def seal(self, data: bytes) -> bytes:
        connection = self._connection
        connection.write(data)
        return drain_write_bio(connection)

    def seal_failed(self, error: Exception, outgoing: list[bytes]) -> str:
        assert isinstance(error, SSL.Error)
        reason = openssl_error_reason(error)
        self._fail(reason, outgoing)
        return reason

    def goodbye(self, outgoing: list[bytes]) -> None:
        with contextlib.suppress(SSL.Error):
            self._connection.shutdown()
        self._flush(outgoing)
