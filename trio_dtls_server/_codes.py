"""The codes the library speaks in: event codes, drop reasons, handshake failure kinds.

Each is an :class:`enum.StrEnum`, defined here once and set where the thing happens.  Being
strings, the members compare equal to their values (``EventCode.COOKIE_SENT == "cookie_sent"``),
print as their values in logs, JSON and the metrics page, and key the same dictionaries; so an
application that matched on the strings before keeps working, and a typo in new code is a
``AttributeError`` at import time instead of a counter nobody reads.

Nothing here is ever derived from a message: a message is for people and may be reworded (or
quote a peer's identity); a code is for programs.

* :class:`EventCode` -- ``ServerEvent.code``: what happened, for filters (``--events``),
  dashboards and tests.
* :class:`DropReason` -- the keys of ``statistics().drops``: why a datagram or record was
  dropped.  Every reason has the warning code that reports it (:data:`DROP_WARNING_CODES`).
* :class:`FailureKind` -- the buckets of ``statistics().handshakes_failed``.
"""

from __future__ import annotations

import enum

__all__ = ["DROP_WARNING_CODES", "DropReason", "EventCode", "FailureKind"]


class EventCode(enum.StrEnum):
    """The stable, machine-readable ``code`` of every :class:`~trio_dtls_server.ServerEvent`."""

    # -- the server's life ----------------------------------------------------------------------
    LISTENING = "listening"
    STOPPED = "stopped"
    ACCEPTING = "accepting"
    NOT_ACCEPTING = "not_accepting"
    RECEIVE_BUFFER_CLIPPED = "receive_buffer_clipped"
    PSK_RELOADED = "psk_reloaded"
    PSK_RELOAD_FAILED = "psk_reload_failed"
    SHUTDOWN = "shutdown"
    # -- workers (serve --workers N) ------------------------------------------------------------
    WORKER_STARTED = "worker_started"
    WORKER_RESTARTED = "worker_restarted"
    CONNECTION_ID_STEERING = "connection_id_steering"
    # -- before a peer exists: the stateless cookie exchange ------------------------------------
    COOKIE_SENT = "cookie_sent"
    COOKIE_REJECTED = "cookie_rejected"
    VERIFIED = "verified"
    HANDSHAKE_REFUSED = "handshake_refused"
    # -- datagrams dropped before they reach a peer ---------------------------------------------
    EMPTY_DATAGRAM = "empty_datagram"
    OVERSIZED_DATAGRAM = "oversized_datagram"
    UNEXPECTED_DATAGRAM = "unexpected_datagram"
    FRAGMENTED_CLIENT_HELLO = "fragmented_client_hello"
    MALFORMED_CLIENT_HELLO = "malformed_client_hello"
    MALFORMED_CLIENT_KEY_EXCHANGE = "malformed_client_key_exchange"
    QUEUE_OVERFLOW = "queue_overflow"
    DATAGRAM_FAILED = "datagram_failed"
    UNKNOWN_CONNECTION_ID = "unknown_connection_id"
    # -- the handshake --------------------------------------------------------------------------
    HANDSHAKE_START = "handshake_start"
    HANDSHAKE_PROGRESS = "handshake_progress"
    RETRANSMIT = "retransmit"
    PSK_IDENTITY = "psk_identity"
    PSK_LOOKUP_FAILED = "psk_lookup_failed"
    UNKNOWN_IDENTITY = "unknown_identity"
    HANDSHAKE_COMPLETE = "handshake_complete"
    SESSION_RESUMED = "session_resumed"
    HANDSHAKE_FAILED = "handshake_failed"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    REPLACEMENT_FAILED = "replacement_failed"
    # -- an established peer --------------------------------------------------------------------
    DATAGRAM = "datagram"
    AUTHENTICATION_FAILED = "authentication_failed"
    REPLAYED_RECORD = "replayed_record"
    HANDSHAKE_RETRANSMISSION = "handshake_retransmission"
    WRONG_EPOCH = "wrong_epoch"
    BAD_RECORD_LENGTH = "bad_record_length"
    MALFORMED_RECORD = "malformed_record"
    RECORD_WITHOUT_CONNECTION_ID = "record_without_connection_id"
    WRONG_CONNECTION_ID = "wrong_connection_id"
    RECORD_DROPPED = "record_dropped"
    PEER_MOVED = "peer_moved"
    PEER_MOVE_REFUSED = "peer_move_refused"
    DROPPED = "dropped"
    FORGED_RECORDS = "forged_records"
    IDLE_TIMEOUT = "idle_timeout"
    REMOTE_CLOSED = "remote_closed"
    CONNECTION_FAILED = "connection_failed"
    HANDLER_FAILED = "handler_failed"
    PEER_FAILED = "peer_failed"
    PEER_ENDED = "peer_ended"
    # -- the command line -----------------------------------------------------------------------
    CERTIFICATE_ONLY = "certificate_only"
    DEMO_KEY = "demo_key"
    METRICS = "metrics"
    WORKERS = "workers"
    RELOAD = "reload"
    INTERRUPTED = "interrupted"
    STATISTICS = "statistics"
    SUMMARY = "summary"
    SOCKET_ERROR = "socket_error"
    REPLY_TIMEOUT = "reply_timeout"


class DropReason(enum.StrEnum):
    """Why a datagram (or a record in it) was dropped: the keys of ``statistics().drops``.

    Only :attr:`AUTHENTICATION` means a record was run through the cipher and failed; the
    record-level reasons after it are decided from the record headers alone, without any
    cryptography (see ``DTLSSession.screen``), so that junk costs as little as possible.
    """

    # -- the reader task, before any peer -------------------------------------------------------
    EMPTY = "empty datagram"
    OVERSIZED = "oversized datagram"
    NOT_A_CLIENT_HELLO = "not a ClientHello from an unknown peer"
    FRAGMENTED_CLIENT_HELLO = "fragmented ClientHello"
    MALFORMED_CLIENT_HELLO = "malformed ClientHello"
    NOT_ACCEPTING = "not accepting new clients"
    WOULD_AMPLIFY = "HelloVerifyRequest would amplify"
    INTERNAL_ERROR = "internal error"
    #: A ``tls12_cid`` record (RFC 9146) whose connection ID no association was issued.
    UNKNOWN_CONNECTION_ID = "unknown connection id"
    # -- on the way to a peer -------------------------------------------------------------------
    QUEUE_FULL = "peer queue full"
    PEER_CLOSING = "peer closing"
    MALFORMED_CLIENT_KEY_EXCHANGE = "malformed ClientKeyExchange"
    # -- a peer's records -----------------------------------------------------------------------
    #: A record of the current epoch, of a possible length and not yet seen, that failed the
    #: AEAD tag (or OpenSSL's MAC check): a forgery or corruption.
    AUTHENTICATION = "record failed authentication"
    #: A record number the replay window already accepted, or one too old for it to tell.
    REPLAY = "replayed record"
    #: Only records of an older epoch (0, after the handshake): the rest of the peer's
    #: retransmitted flight, or a client that restarted on the same port.
    HANDSHAKE_RETRANSMISSION = "late handshake retransmission"
    #: Not a sequence of well-framed DTLS records.
    MALFORMED = "malformed datagram"
    #: A record of an epoch this association has not reached (there is no renegotiation): it
    #: cannot be authentic, whatever its bytes (RFC 6347 §4.1.2.7: discard it).
    WRONG_EPOCH = "record of another epoch"
    #: A fragment shorter than the cipher's explicit nonce and tag, or longer than 2^14 bytes
    #: of plaintext plus them: no key opens it.
    BAD_LENGTH = "record length impossible for the cipher"
    #: During a handshake: a record that cannot belong to the peer's next flight (a plaintext
    #: handshake message of a type or number it cannot send now, plaintext application data, a
    #: record of an epoch that does not exist yet).  Dropped before OpenSSL, which would end
    #: the handshake for it.
    UNEXPECTED = "unexpected record during the handshake"
    #: During a handshake: a protected record that did not fit in ``HANDSHAKE_KEPT_BUDGET``.
    OVER_BUDGET = "handshake record budget full"
    #: RFC 9146: a protected record in the standard format on an association whose peer must
    #: put our connection ID on every protected record.
    MISSING_CID = "record without its connection id"
    #: RFC 9146: a ``tls12_cid`` record carrying another CID than the one we issued (the
    #: server's reader routes by CID, so only a client, or a session fed by hand, meets one).
    WRONG_CID = "record with another connection id"


#: The (rate-limited) warning code for each reason a record of an established peer is
#: dropped; any other reason is reported as :attr:`EventCode.RECORD_DROPPED`.
DROP_WARNING_CODES: dict[DropReason, EventCode] = {
    DropReason.AUTHENTICATION: EventCode.AUTHENTICATION_FAILED,
    DropReason.REPLAY: EventCode.REPLAYED_RECORD,
    DropReason.HANDSHAKE_RETRANSMISSION: EventCode.HANDSHAKE_RETRANSMISSION,
    DropReason.WRONG_EPOCH: EventCode.WRONG_EPOCH,
    DropReason.BAD_LENGTH: EventCode.BAD_RECORD_LENGTH,
    DropReason.MALFORMED: EventCode.MALFORMED_RECORD,
    DropReason.MISSING_CID: EventCode.RECORD_WITHOUT_CONNECTION_ID,
    DropReason.WRONG_CID: EventCode.WRONG_CONNECTION_ID,
}


class FailureKind(enum.StrEnum):
    """Why a handshake failed, in a word: the bucket of ``statistics().handshakes_failed``.

    Set where the failure is decided, never read back out of a message (a message may quote
    the peer's own identity, which must not be able to pick its bucket).
    """

    DEADLINE = "deadline"
    NO_ANSWER = "no answer"
    UNKNOWN_IDENTITY = "unknown identity"
    PSK_LOOKUP_FAILED = "PSK lookup failed"
    WRONG_KEY = "wrong key"
    BAD_CERTIFICATE = "bad certificate"
    NO_SHARED_CIPHER = "no shared cipher"
    ALERT_FROM_PEER = "alert from peer"
    INTERNAL_ERROR = "internal error"
    OTHER = "other"
