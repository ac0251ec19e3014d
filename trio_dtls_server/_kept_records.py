"""The peer's protected records a handshake keeps, within a budget.

During the handshake OpenSSL sees only records it can judge at once (see
:meth:`~._handshake.HandshakeDriver._handshake_datagram`).  The peer's protected (epoch 1)
records that it cannot judge yet wait here, in one :class:`KeptRecords` per handshake: its
Finished while OpenSSL has not read the ChangeCipherSpec (:meth:`KeptRecords.hold`), and
application data or alerts that overtook that Finished (:meth:`KeptRecords.keep_early`), which
the record protector opens once the handshake is over.  One copy of each, de-duplicated on
content, at most :data:`HANDSHAKE_KEPT_BUDGET` bytes in all.
"""

from __future__ import annotations

from OpenSSL import SSL

from ._codes import DropReason
from ._protection import epoch1_keys
from ._records import RecordProtection
from ._wire import Record

__all__ = ["HANDSHAKE_KEPT_BUDGET", "KeptRecords"]

#: The most bytes of the peer's protected (epoch 1) records a session keeps during a handshake,
#: in one copy each, de-duplicated on content: its Finished while OpenSSL cannot read it yet
#: (it overtook the ChangeCipherSpec), and application data or alerts that overtook the
#: Finished (a resumed handshake whose client Finished was lost).  A Finished record is
#: 40-80 bytes and the data that overtakes it is rare, so 8 KiB holds dozens of small
#: readings or several MTU-sized datagrams, while 1,000 half-open handshakes (the default
#: ``max_handshakes``) can hold at most 8 MiB this way.  OpenSSL sees none of these records
#: before it can judge them (see :meth:`~._handshake.HandshakeDriver.receive_datagram`), so it
#: never queues them.
HANDSHAKE_KEPT_BUDGET = 8 * 1024

#: Read per kept record: module globals, not Enum attributes (~100 ns each on 3.11).
_REPLAY = DropReason.REPLAY
_OVER_BUDGET = DropReason.OVER_BUDGET
_AUTHENTICATION = DropReason.AUTHENTICATION


class KeptRecords:
    """The peer's protected records kept during one handshake (raw bytes, one copy each,
    :data:`HANDSHAKE_KEPT_BUDGET` bytes in all): handshake records OpenSSL cannot read yet
    (:attr:`held`), and data or alerts that overtook the peer's Finished (:attr:`early`).
    """

    __slots__ = ("_is_server", "_verifier", "_verifier_tried", "early", "held", "kept_bytes")

    def __init__(self, *, is_server: bool) -> None:
        self._is_server = is_server
        #: Protected handshake records OpenSSL cannot read yet, oldest first.
        self.held: list[bytes] = []
        #: Data or alerts that overtook the peer's Finished, in the order they came.
        self.early: list[bytes] = []
        #: The bytes of :attr:`held` and :attr:`early` together.
        self.kept_bytes = 0
        # Checks the peer's early records on arrival, once our own Finished proved the keys
        # (see _verifier_for); None until then, or for suites we leave to OpenSSL.
        self._verifier: RecordProtection | None = None
        self._verifier_tried = False

    def _kept(self, raw: bytes) -> bool:
        return raw in self.held or raw in self.early

    def hold(self, raw: bytes) -> DropReason | None:
        """Keep a protected handshake record OpenSSL cannot read yet; why not, if not.

        It cannot be checked before OpenSSL has the keys, so when the budget is full the
        oldest held record makes room: the peer's real Finished is the one that comes last.
        """
        if self._kept(raw):
            return _REPLAY
        if len(raw) > HANDSHAKE_KEPT_BUDGET:
            return _OVER_BUDGET
        reason = None
        while self.held and self.kept_bytes + len(raw) > HANDSHAKE_KEPT_BUDGET:
            self.kept_bytes -= len(self.held.pop(0))
            reason = _OVER_BUDGET
        if self.kept_bytes + len(raw) > HANDSHAKE_KEPT_BUDGET:
            return _OVER_BUDGET  # the rest is checked data: it stays
        self.held.append(raw)
        self.kept_bytes += len(raw)
        return reason

    def take_held(self) -> list[bytes]:
        """The held records, oldest first, now that OpenSSL reads them; no longer kept."""
        held, self.held = self.held, []
        self.kept_bytes -= sum(len(raw) for raw in held)
        return held

    def keep_early(
        self, record: Record, connection: SSL.Connection, own_protected: list[Record]
    ) -> DropReason | None:
        """Keep protected data or an alert that overtook the peer's Finished; why not, if not.

        The caller passes only records that came after we sent our own Finished (before it,
        such a record cannot be the peer's).  Once our Finished (``own_protected``, OpenSSL's
        bytes) proves the keys we derive from ``connection`` (see :meth:`_verifier_for`), a
        record that does not authenticate is not the peer's either.  What passes is kept while
        it fits; beyond the budget it is dropped, like a datagram lost on the way.
        """
        raw = record.raw
        if self._kept(raw):
            return _REPLAY
        verifier = self._verifier_for(connection, own_protected)
        if verifier is not None and (
            verifier.decrypt(
                record.content_type, record.version, record.sequence_number, record.fragment
            )
            is None
        ):
            return _AUTHENTICATION
        if self.kept_bytes + len(raw) > HANDSHAKE_KEPT_BUDGET:
            return _OVER_BUDGET
        self.early.append(raw)
        self.kept_bytes += len(raw)
        return None

    def _verifier_for(
        self, connection: SSL.Connection, own_protected: list[Record]
    ) -> RecordProtection | None:
        """Our record protection for the peer's epoch-1 records, built during the handshake.

        Only once the keys it derives have opened our own Finished (OpenSSL's bytes), and only
        for the AEAD suites of :mod:`._records`; None otherwise (then early records are kept
        unchecked, within the budget).
        """
        if self._verifier_tried or not own_protected:
            return self._verifier
        self._verifier_tried = True
        verifier = epoch1_keys(
            connection,
            is_server=self._is_server,
            cipher=connection.get_cipher_name() or "",
            master_secret=connection.master_key() or b"",
        )
        if verifier is None:
            return None
        for own in own_protected:
            if own.epoch != 1 or (
                verifier.decrypt_own(
                    own.content_type, own.version, own.sequence_number, own.fragment
                )
                is None
            ):
                return None
        self._verifier = verifier
        return verifier

    def clear(self) -> None:
        """Forget everything (the handshake is over: the record protector has the early
        records, OpenSSL has read the held ones)."""
        self.held = []
        self.early = []
        self.kept_bytes = 0
        self._verifier = None
