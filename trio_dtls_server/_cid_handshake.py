"""The RFC 9146 connection-ID part of a handshake: what to offer, answer and accept, and the
translation of the two Finished records.

OpenSSL negotiates the ``connection_id`` extension through the custom-extension callbacks
(:mod:`._openssl`, :class:`~._openssl.ConnectionIdResponder`) but knows nothing of
``tls12_cid`` records.  The :class:`~._handshake.HandshakeDriver` answers those callbacks from a
:class:`CidHandshake`, which it creates only when connection IDs are in play (a server that
may issue one, a client that offers one); a handshake without them pays nothing.

The callbacks' answers (:meth:`CidHandshake.to_offer`, :meth:`CidHandshake.received`,
:meth:`CidHandshake.to_answer`) settle :attr:`CidHandshake.connection_id` and
:attr:`CidHandshake.peer_connection_id`.  A server answers only for a suite our own record
layer protects, and OpenSSL names the suite only after the callback, so it predicts the suite
from the verified ClientHello (:func:`predict_suite`).

Then the two Finished records are translated: the peer's ``tls12_cid`` Finished is opened with
the epoch-1 keys derived from OpenSSL's master secret and re-sealed in the standard format,
same key, epoch and sequence number, before OpenSSL reads it
(:meth:`CidHandshake.peer_record_for_openssl`); every epoch-1 record OpenSSL writes is
re-sealed as ``tls12_cid`` with the peer's CID (:meth:`CidHandshake.outgoing`).  After the
handshake only our record layer runs a CID association
(:class:`~._protection.CidAeadProtector`).
"""

from __future__ import annotations

import contextlib

from OpenSSL import SSL

from ._openssl import cipher_name_for_suite, current_cipher_name
from ._protection import epoch1_keys
from ._records import RecordProtection, aead_suite
from ._wire import (
    CidRecord,
    ContentType,
    MalformedDatagram,
    encode_record,
    first_content_type,
    parse_initial_client_hello,
    parse_records,
    parse_records_with_cid,
    read_own_record,
)

__all__ = ["CidHandshake", "predict_suite"]

#: Read once per translated record: a module global, not an Enum attribute (~100 ns on 3.11).
_HANDSHAKE = ContentType.handshake


def predict_suite(connection: SSL.Connection, verified_client_hello: bytes) -> str | None:
    """The suite OpenSSL will choose for this ClientHello: the first of ours (server
    preference order) that the client offers; None if none or unreadable."""
    try:
        hello = parse_initial_client_hello(verified_client_hello).hello
    except MalformedDatagram:
        return None
    offered = {cipher_name_for_suite(connection, suite) for suite in hello.cipher_suite_numbers()}
    for name in connection.get_cipher_list():
        if name in offered:
            return name
    return None


class CidHandshake:
    """The connection-ID negotiation of one handshake and the translation of its Finished
    records between OpenSSL's format and RFC 9146's.

    Build it with :meth:`for_server` or :meth:`for_client`.  Every method that needs OpenSSL's
    secrets takes the handshake's connection: this object never outlives nor keeps it.
    """

    __slots__ = (
        "_is_server",
        "_own_cid",
        "_peer_offer",
        "_predicted_suite",
        "_release_openssl",
        "_translator",
        "connection_id",
        "peer_connection_id",
    )

    def __init__(
        self,
        *,
        is_server: bool,
        own_cid: bytes,
        release_openssl: bool = True,
        predicted_suite: str | None = None,
        keys: RecordProtection | None = None,
    ) -> None:
        """``own_cid``: server, the CID to issue if the client offers the extension; client,
        the CID to ask for (``b""``: send-only).  ``keys``: the epoch-1 keys of the Finished
        translation when already known (tests); by default derived once OpenSSL has them."""
        self._is_server = is_server
        self._own_cid = own_cid
        self._release_openssl = release_openssl
        # Server: the suite OpenSSL will choose (see to_answer).
        self._predicted_suite = predicted_suite
        # What the peer's extension said (server: the CID the client wants on our records).
        self._peer_offer: bytes | None = None
        #: The CID negotiated for the peer's records to us (the one we issued or asked for),
        #: or None when the handshake negotiated no CID.  Non-empty: the peer's protected
        #: records are ``tls12_cid`` records carrying it, its Finished included.
        self.connection_id: bytes | None = None
        #: The CID the peer asked us to put on our records, or None (not negotiated).
        #: Non-empty: our protected records are ``tls12_cid`` records, our Finished included.
        self.peer_connection_id: bytes | None = None
        # The keys of epoch 1 used to translate the Finished records between OpenSSL's format
        # and RFC 9146's during the handshake (see keys); built once OpenSSL has them.
        self._translator = keys

    @classmethod
    def for_server(
        cls,
        connection: SSL.Connection,
        connection_id: bytes,
        verified_client_hello: bytes,
        *,
        release_openssl: bool,
    ) -> CidHandshake:
        """A server's: issue ``connection_id`` if the client offers the extension and the
        handshake can use it (see :meth:`to_answer`)."""
        return cls(
            is_server=True,
            own_cid=connection_id,
            release_openssl=release_openssl,
            predicted_suite=predict_suite(connection, verified_client_hello),
        )

    @classmethod
    def for_client(cls, connection_id: bytes) -> CidHandshake:
        """A client's: ask for ``connection_id`` on the server's records (``b""``: send-only,
        the server's records stay standard)."""
        return cls(is_server=False, own_cid=connection_id)

    # -- the connection_id callbacks' answers ---------------------------------------------------

    def to_offer(self) -> bytes | None:
        """Client: the CID our ClientHello asks for; None on a server."""
        return None if self._is_server else self._own_cid

    def received(self, cid: bytes) -> bool:
        """The peer's ``connection_id`` extension (server: in the ClientHello; client: in the
        ServerHello, which OpenSSL only passes on if we offered one).  False fails the
        handshake (``decode_error``)."""
        if self._is_server:
            self._peer_offer = cid
            return True
        self.connection_id = self._own_cid
        self.peer_connection_id = cid
        return True

    def to_answer(self, connection: SSL.Connection) -> bytes | None:
        """Server: the CID our ServerHello names, or None to send no extension (today's bytes).

        Only when the client offered the extension, this session will hand its records to
        :mod:`._records` (``release_openssl``) and OpenSSL chose an AEAD suite that module
        protects: CBC suites and kept OpenSSL connections get no CID, since only our own
        record layer speaks RFC 9146.
        """
        wanted = self._peer_offer
        if not self._is_server or wanted is None or not self._release_openssl:
            return None
        # OpenSSL has chosen the suite but exposes it only once the ServerHello is written
        # (SSL_get_current_cipher is NULL here, and the bindings lack SSL_get_pending_cipher),
        # so we predict it as OpenSSL picks it: our preference order, first suite the client
        # offers.  Should OpenSSL skip that one (no shared group), the completed handshake
        # checks the suite again and fails rather than run CID without our record layer.
        cipher = current_cipher_name(connection) or self._predicted_suite
        if cipher is None or aead_suite(cipher) is None:
            return None
        self.connection_id = self._own_cid
        self.peer_connection_id = wanted
        return self._own_cid

    @property
    def read_cid(self) -> bytes:
        """The CID the peer's protected records carry (b"": standard records)."""
        return self.connection_id or b""

    @property
    def write_cid(self) -> bytes:
        """The CID our protected records carry (b"": standard records)."""
        return self.peer_connection_id or b""

    # -- the Finished translation ---------------------------------------------------------------

    def keys(self, connection: SSL.Connection) -> RecordProtection | None:
        """Epoch-1 keys to translate Finished records between OpenSSL's format and RFC 9146's.

        Built once OpenSSL has a master secret (it read the key exchange) and the suite is one
        of :mod:`._records`; None before.  These keys are only ever used to re-seal a record
        under the same key, epoch and sequence number as the form it came in, so no nonce is
        used for two different records; if they are wrong, the peer's Finished fails inside
        OpenSSL as a forged one would, and ours fails at the peer.
        """
        if self._translator is not None:
            return self._translator
        cipher = current_cipher_name(connection) or ""
        try:
            master_secret = connection.master_key() or b""
        except SSL.Error:  # no key exchange yet
            return None
        self._translator = epoch1_keys(
            connection, is_server=self._is_server, cipher=cipher, master_secret=master_secret
        )
        return self._translator

    def forget_keys(self) -> None:
        """The Finished translation is over (its keys now live in the record protector)."""
        self._translator = None

    def peer_record_for_openssl(self, raw: bytes, connection: SSL.Connection) -> bytes | None:
        """The peer's ``tls12_cid`` handshake record (its Finished), re-sealed in the standard
        format for OpenSSL; or a standard record that fails authentication inside OpenSSL
        (the CID record did not open: a forgery or a wrong key, which OpenSSL then judges
        like any failed Finished); None if it is not even a record of ours."""
        read_cid = self.read_cid
        try:
            (record,) = parse_records_with_cid(raw, len(read_cid))
        except (MalformedDatagram, ValueError):
            return None
        if not isinstance(record, CidRecord) or record.cid != read_cid:
            return None
        keys = self.keys(connection)
        translated = None
        if keys is not None:
            translated = keys.reseal_peer_standard(
                record.version, record.sequence_number, record.cid, record.fragment
            )
        if translated is None or first_content_type(translated) != _HANDSHAKE:
            return encode_record(
                _HANDSHAKE,
                record.version,
                record.epoch,
                record.sequence_number,
                record.fragment,
            )
        return translated

    def outgoing(self, records: list[bytes], connection: SSL.Connection) -> list[bytes]:
        """Our protected records as RFC 9146 wants them: ``tls12_cid`` with the peer's CID,
        when it asked for a non-empty one (OpenSSL wrote them in the standard format)."""
        cid = self.write_cid
        if not cid:
            return records
        keys = self.keys(connection)
        out: list[bytes] = []
        for raw in records:
            if keys is None or read_own_record(raw).epoch == 0:
                out.append(raw)
                continue
            resealed = None
            with contextlib.suppress(MalformedDatagram):
                (record,) = parse_records(raw)
                resealed = keys.reseal_own_as_cid(record, cid)
            out.append(resealed if resealed is not None else raw)
        return out
