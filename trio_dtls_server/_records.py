"""Protecting DTLS 1.2 application records after the handshake, without an OpenSSL connection.

OpenSSL (the one inside the ``cryptography`` wheel) keeps about 64 KiB per established DTLS
connection, even with ``MODE_RELEASE_BUFFERS``, and every record costs four pyOpenSSL calls
(``bio_write``, ``read``, ``write``, ``bio_read``).  Once the handshake is over, though, a
connection that negotiated an AEAD suite needs very little: two keys, two implicit IVs, two
sequence numbers and a replay window.  :class:`RecordProtection` holds exactly that and seals
and opens records with the AEAD classes of ``cryptography`` (the same OpenSSL, minus the
per-connection state), so the session can let go of its OpenSSL connection.

The formats, all for DTLS 1.2 (RFC 6347 §4.1):

* **Keys** come from the TLS 1.2 key block, ``PRF(master_secret, "key expansion",
  server_random + client_random)`` (RFC 5246 §6.3), where the PRF is P_SHA256, or P_SHA384 for
  ``*-SHA384`` suites.  AEAD suites have no MAC keys, so the block is client key, server key,
  client IV, server IV.
* **AES-GCM** (RFC 5288) and **AES-CCM** (RFC 6655): the nonce is the 4-byte implicit IV
  followed by an 8-byte explicit nonce carried at the front of the record.  We send the
  record's own epoch and sequence number there, which RFC 5288 §3 recommends and which can
  never repeat under one key.
* **ChaCha20-Poly1305** (RFC 7905): no explicit nonce; the nonce is the 12-byte IV XORed with
  the 8-byte epoch-and-sequence number.
* The additional data is epoch and sequence (8 bytes), content type, version and the
  *plaintext* length (RFC 5246 §6.2.3.3).

Whether the derived keys are right is not taken on trust: :func:`record_protection_for`
decrypts the Finished records both sides really sent with them before anything relies on
them, and answers None (keep OpenSSL) if either does not open.  Suites outside the table
(CBC with HMAC, ARIA, Camellia) always keep OpenSSL.
"""

from __future__ import annotations

import functools
import hmac
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ._wire import (
    DTLS_1_2,
    ContentType,
    Record,
    cid_record_header,
    encode_pseudo_header,
    encode_record_header,
)

__all__ = [
    "AeadSuite",
    "RecordProtection",
    "ReplayWindow",
    "aead_suite",
    "cid_additional_data",
    "inner_plaintext",
    "split_inner_plaintext",
    "derive_key_block",
    "key_expansion",
    "protection_from_key_block",
    "record_protection_for",
]

_Aead = AESGCM | AESCCM | ChaCha20Poly1305

#: The largest sequence number of an epoch (48 bits); a record may never reuse one.
MAX_SEQUENCE = 2**48 - 1


@dataclass(frozen=True, slots=True)
class AeadSuite:
    """How one AEAD cipher suite protects records."""

    name: str
    key_length: int
    #: 4 (the salt of GCM and CCM) or 12 (ChaCha20-Poly1305's whole IV).
    implicit_iv_length: int
    #: 8 for GCM and CCM, 0 for ChaCha20-Poly1305.
    explicit_nonce_length: int
    tag_length: int
    prf_hash: str
    make_aead: Callable[[bytes], _Aead]

    @property
    def overhead(self) -> int:
        """Bytes a record's fragment carries beyond its plaintext."""
        return self.explicit_nonce_length + self.tag_length


#: ``[KX-[AUTH-]]AES128|AES256-GCM|CCM|CCM8[-SHA256|-SHA384]``, as OpenSSL names its suites.
_AES_NAME = re.compile(
    r"(?:[A-Z0-9]+-)*(?P<cipher>AES128|AES256)-(?P<mode>GCM|CCM8|CCM)(?:-SHA(?:256|384))?"
)
_CHACHA_NAME = re.compile(r"(?:[A-Z0-9]+-)*CHACHA20-POLY1305")


@functools.lru_cache(maxsize=64)  # a server meets a handful of names, once per handshake
def aead_suite(openssl_name: str) -> AeadSuite | None:
    """The :class:`AeadSuite` for an OpenSSL suite name, or None if we leave it to OpenSSL.

    Covered: AES-128/256 in GCM, CCM and CCM_8 and ChaCha20-Poly1305, with PSK, DHE-PSK,
    ECDHE-PSK, ECDHE-ECDSA, ECDHE-RSA, DHE-RSA or RSA key exchange.
    """
    name = openssl_name.upper()
    prf_hash = "sha384" if name.endswith("-SHA384") else "sha256"
    if _CHACHA_NAME.fullmatch(name):
        return AeadSuite(openssl_name, 32, 12, 0, 16, prf_hash, ChaCha20Poly1305)
    match = _AES_NAME.fullmatch(name)
    if match is None:
        return None
    key_length = 16 if match["cipher"] == "AES128" else 32
    if match["mode"] == "GCM":
        return AeadSuite(openssl_name, key_length, 4, 8, 16, prf_hash, AESGCM)
    tag_length = 8 if match["mode"] == "CCM8" else 16

    def make_ccm(key: bytes) -> _Aead:
        return AESCCM(key, tag_length=tag_length)

    return AeadSuite(openssl_name, key_length, 4, 8, tag_length, prf_hash, make_ccm)


def key_expansion(
    master_secret: bytes, client_random: bytes, server_random: bytes, length: int, prf_hash: str
) -> bytes:
    """The first ``length`` bytes of the TLS 1.2 key block (RFC 5246 §5 and §6.3)."""
    seed = b"key expansion" + server_random + client_random
    block = b""
    a = seed
    while len(block) < length:
        a = hmac.digest(master_secret, a, prf_hash)
        block += hmac.digest(master_secret, a + seed, prf_hash)
    return block[:length]


def derive_key_block(
    suite: AeadSuite, master_secret: bytes, client_random: bytes, server_random: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """``(client key, server key, client IV, server IV)`` from the TLS 1.2 PRF (RFC 5246 §5)."""
    length = 2 * (suite.key_length + suite.implicit_iv_length)
    block = key_expansion(master_secret, client_random, server_random, length, suite.prf_hash)
    k, iv = suite.key_length, suite.implicit_iv_length
    keys, ivs = block[: 2 * k], block[2 * k : 2 * k + 2 * iv]
    return keys[:k], keys[k:], ivs[:iv], ivs[iv:]


#: RFC 9146 §5.3: the additional data of a CID record starts with eight 0xff bytes in place of
#: the sequence number.
_SEQ_NUM_PLACEHOLDER = b"\xff" * 8
#: Read per record: a module global, not an Enum attribute (~100 ns each on Python 3.11).
_TLS12_CID = ContentType.tls12_cid


def cid_additional_data(
    version: int, epoch: int, sequence: int, cid: bytes, inner_length: int
) -> bytes:
    """The AEAD additional data of a ``tls12_cid`` record (RFC 9146 §5.3, the final RFC)::

        seq_num_placeholder(8 x 0xff) || tls12_cid(25) || cid_length(1) || tls12_cid(25) ||
        version(2) || epoch(2) || sequence_number(6) || cid || length_of_DTLSInnerPlaintext(2)

    (Draft versions and Mbed TLS 2.x used another layout; pion/dtls v3 uses this one.)

    Packed by one ``struct`` per CID length (made on first use; at most 256): joining the
    eight pieces cost a sixth of a CID record's whole receive path.
    """
    layout = _CID_AAD_LAYOUTS.get(len(cid))
    if layout is None:
        layout = _CID_AAD_LAYOUTS[len(cid)] = struct.Struct(f"!8sBBBHHHI{len(cid)}sH")
    return layout.pack(
        _SEQ_NUM_PLACEHOLDER,
        _TLS12_CID,
        len(cid),
        _TLS12_CID,
        version,
        epoch,
        sequence >> 32,
        sequence & 0xFFFFFFFF,
        cid,
        inner_length,
    )


#: :func:`cid_additional_data`'s layouts, by CID length: placeholder(8) 25 cid_length 25
#: version(2) epoch(2) sequence_number as high(2)+low(4) cid(n) inner_length(2).
_CID_AAD_LAYOUTS: dict[int, struct.Struct] = {}


def inner_plaintext(content_type: int, content: bytes, padding: int = 0) -> bytes:
    """``DTLSInnerPlaintext`` (RFC 9146 §4): content || real type || ``padding`` zero bytes."""
    return content + bytes((content_type,)) + bytes(padding)


def split_inner_plaintext(inner: bytes) -> tuple[int, bytes] | None:
    """``(real content type, content)`` of a ``DTLSInnerPlaintext``, or None if it is all zeros
    (no content type: RFC 9146 §4 makes that an error, so the record is dropped)."""
    stripped = inner.rstrip(b"\0")
    if not stripped:
        return None
    return stripped[-1], stripped[:-1]


class ReplayWindow:
    """RFC 6347 §4.1.2.6: a 64-record sliding window of the sequence numbers already accepted.

    A record is checked with :meth:`seen` before it is decrypted and recorded with :meth:`mark`
    only after it authenticated, so a forgery cannot move the window.
    """

    __slots__ = ("_highest", "_mask")

    def __init__(self) -> None:
        self._highest = -1
        self._mask = 0

    @property
    def highest(self) -> int:
        """The highest sequence number accepted so far (-1 before any)."""
        return self._highest

    def seen(self, sequence: int) -> bool:
        """True for a sequence number already accepted, or too old for the window to tell."""
        if sequence > self._highest:
            return False
        offset = self._highest - sequence
        return offset >= 64 or bool(self._mask >> offset & 1)

    def mark(self, sequence: int) -> None:
        if sequence > self._highest:
            shift = sequence - self._highest
            self._mask = (self._mask << shift | 1) & 0xFFFFFFFFFFFFFFFF if shift < 64 else 1
            self._highest = sequence
        elif self._highest - sequence < 64:
            self._mask |= 1 << (self._highest - sequence)


class RecordProtection:
    """Seals our records and opens the peer's, for one epoch of one association.

    ``open_record`` returns None for a record that fails authentication or was already
    accepted; it never raises.  ``seal`` numbers records itself, from ``next_sequence``.
    """

    __slots__ = (
        "_epoch_high",
        "_explicit",
        "_read_aead",
        "_read_iv",
        "_read_iv_number",
        "_tag_length",
        "_write_aead",
        "_write_iv",
        "_write_iv_number",
        "_xor_nonce",
        "epoch",
        "next_sequence",
        "read_cid",
        "replay",
        "suite",
        "write_cid",
    )

    def __init__(
        self,
        suite: AeadSuite,
        *,
        epoch: int,
        read_key: bytes,
        read_iv: bytes,
        write_key: bytes,
        write_iv: bytes,
        next_sequence: int,
        read_cid: bytes = b"",
        write_cid: bytes = b"",
    ) -> None:
        self.suite = suite
        #: The CID the peer's records must carry (the one we issued), or b"": standard records.
        self.read_cid = read_cid
        #: The CID our records carry (the one the peer asked for), or b"": standard records.
        self.write_cid = write_cid
        self.epoch = epoch
        self.next_sequence = next_sequence
        self.replay = ReplayWindow()
        self._read_aead = suite.make_aead(read_key)
        self._write_aead = suite.make_aead(write_key)
        self._read_iv = read_iv
        self._write_iv = write_iv
        # ChaCha20-Poly1305 XORs the IV with the epoch and sequence: keep it as a number.
        self._read_iv_number = int.from_bytes(read_iv, "big")
        self._write_iv_number = int.from_bytes(write_iv, "big")
        self._epoch_high = epoch << 48
        self._explicit = suite.explicit_nonce_length
        self._tag_length = suite.tag_length
        self._xor_nonce = suite.explicit_nonce_length == 0

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        """One protected record carrying ``plaintext`` (at most 2^14 bytes: the caller checks)."""
        sequence = self.next_sequence
        if sequence > MAX_SEQUENCE:
            raise OverflowError("the epoch's 2^48 record sequence numbers are used up")
        self.next_sequence = sequence + 1
        number = self._epoch_high | sequence
        cid = self.write_cid
        if cid:
            # _seal_cid inline (no padding): this runs for every record a CID association
            # sends, and the calls of _seal_cid, _nonce and inner_plaintext cost a tenth of it.
            inner = plaintext + bytes((content_type,))
            if self._xor_nonce:
                explicit = b""
                nonce = (self._write_iv_number ^ number).to_bytes(12, "big")
            else:
                explicit = number.to_bytes(8, "big")
                nonce = self._write_iv + explicit
            epoch = self.epoch
            sealed = self._write_aead.encrypt(
                nonce, inner, cid_additional_data(DTLS_1_2, epoch, sequence, cid, len(inner))
            )
            header = cid_record_header(DTLS_1_2, epoch, sequence, cid, len(explicit) + len(sealed))
            return header + explicit + sealed
        epoch_and_sequence = number.to_bytes(8, "big")
        additional = encode_pseudo_header(content_type, DTLS_1_2, number, len(plaintext))
        if self._xor_nonce:
            explicit = b""
            nonce = (self._write_iv_number ^ number).to_bytes(12, "big")
        else:
            explicit = epoch_and_sequence
            nonce = self._write_iv + explicit
        sealed = self._write_aead.encrypt(nonce, plaintext, additional)
        header = encode_record_header(
            content_type, DTLS_1_2, self.epoch, sequence, len(explicit) + len(sealed)
        )
        return header + explicit + sealed

    def open_record(
        self, content_type: int, version: int, sequence: int, fragment: bytes
    ) -> bytes | None:
        """The plaintext of one of the peer's records in our epoch, or None (dropped).

        Checks the replay window first and marks it only once the record authenticated.
        """
        if self.replay.seen(sequence):
            return None
        plaintext = self.decrypt(content_type, version, sequence, fragment)
        if plaintext is not None:
            self.replay.mark(sequence)
        return plaintext

    def decrypt(
        self, content_type: int, version: int, sequence: int, fragment: bytes
    ) -> bytes | None:
        """Authenticate and decrypt without touching the replay window; None if it fails."""
        return self._open(
            self._read_aead,
            self._read_iv,
            self._read_iv_number,
            content_type,
            version,
            sequence,
            fragment,
        )

    def decrypt_own(
        self, content_type: int, version: int, sequence: int, fragment: bytes
    ) -> bytes | None:
        """Open a record sealed with *our* key (OpenSSL's Finished, to check the keys)."""
        return self._open(
            self._write_aead,
            self._write_iv,
            self._write_iv_number,
            content_type,
            version,
            sequence,
            fragment,
        )

    # -- RFC 9146 records --------------------------------------------------------------------

    def _nonce(
        self, implicit_iv: bytes, implicit_iv_number: int, number: int
    ) -> tuple[bytes, bytes]:
        """``(nonce, explicit part carried in the record)`` for epoch-and-sequence ``number``."""
        if self._xor_nonce:
            return (implicit_iv_number ^ number).to_bytes(12, "big"), b""
        explicit = number.to_bytes(8, "big")
        return implicit_iv + explicit, explicit

    def _seal_cid(
        self,
        aead: _Aead,
        implicit_iv: bytes,
        implicit_iv_number: int,
        sequence: int,
        cid: bytes,
        inner: bytes,
    ) -> bytes:
        nonce, explicit = self._nonce(implicit_iv, implicit_iv_number, self._epoch_high | sequence)
        additional = cid_additional_data(DTLS_1_2, self.epoch, sequence, cid, len(inner))
        sealed = aead.encrypt(nonce, inner, additional)
        header = cid_record_header(DTLS_1_2, self.epoch, sequence, cid, len(explicit) + len(sealed))
        return header + explicit + sealed

    def _open_cid(
        self,
        aead: _Aead,
        implicit_iv: bytes,
        implicit_iv_number: int,
        version: int,
        sequence: int,
        cid: bytes,
        fragment: bytes,
    ) -> tuple[int, bytes] | None:
        explicit_length = self._explicit
        inner_length = len(fragment) - explicit_length - self._tag_length
        # The inner plaintext holds at least the content type, at most 2^14 + 1 bytes of
        # content and type plus padding (RFC 9146 §4 bounds the whole by 2^14 + 256).
        if inner_length < 1 or inner_length > 2**14 + 256:
            return None
        number = self._epoch_high | sequence
        if self._xor_nonce:
            nonce = (implicit_iv_number ^ number).to_bytes(12, "big")
            sealed = fragment
        else:
            nonce = implicit_iv + fragment[:explicit_length]
            sealed = fragment[explicit_length:]
        additional = cid_additional_data(version, self.epoch, sequence, cid, inner_length)
        try:
            inner = aead.decrypt(nonce, sealed, additional)
        except InvalidTag:
            return None
        return split_inner_plaintext(inner)

    def decrypt_cid(
        self, version: int, sequence: int, cid: bytes, fragment: bytes
    ) -> tuple[int, bytes] | None:
        """Open one of the peer's ``tls12_cid`` records (RFC 9146) without touching the replay
        window: ``(real content type, content)``, or None (fails authentication, or all-zero
        inner plaintext).  The caller has checked the CID and the epoch."""
        return self._open_cid(
            self._read_aead, self._read_iv, self._read_iv_number, version, sequence, cid, fragment
        )

    def open_cid_record(
        self, version: int, sequence: int, cid: bytes, fragment: bytes
    ) -> tuple[int, bytes] | None:
        """:meth:`decrypt_cid`, with the replay check first and the mark once authentic."""
        if self.replay.seen(sequence):
            return None
        opened = self.decrypt_cid(version, sequence, cid, fragment)
        if opened is not None:
            self.replay.mark(sequence)
        return opened

    def decrypt_own_cid(
        self, version: int, sequence: int, cid: bytes, fragment: bytes
    ) -> tuple[int, bytes] | None:
        """Open a ``tls12_cid`` record sealed with *our* key (tests and checks)."""
        return self._open_cid(
            self._write_aead,
            self._write_iv,
            self._write_iv_number,
            version,
            sequence,
            cid,
            fragment,
        )

    def reseal_own_as_cid(self, record: Record, cid: bytes) -> bytes | None:
        """One of *our* standard records (OpenSSL's Finished), as a ``tls12_cid`` record with
        the same epoch and sequence number and ``cid``; None if it does not open with our key.

        The nonce is the same as the standard record's (same key, same epoch and sequence), so
        the peer must only ever get one of the two forms of a record: the caller sends only
        this one.
        """
        plaintext = self.decrypt_own(
            record.content_type, record.version, record.sequence_number, record.fragment
        )
        if plaintext is None:
            return None
        return self._seal_cid(
            self._write_aead,
            self._write_iv,
            self._write_iv_number,
            record.sequence_number,
            cid,
            inner_plaintext(record.content_type, plaintext),
        )

    def reseal_peer_standard(
        self, version: int, sequence: int, cid: bytes, fragment: bytes
    ) -> bytes | None:
        """One of the *peer's* ``tls12_cid`` records (its Finished), resealed with the peer's
        key in the standard format with the same epoch and sequence number, for OpenSSL to
        read; None if it does not open."""
        opened = self.decrypt_cid(version, sequence, cid, fragment)
        if opened is None:
            return None
        content_type, content = opened
        number = self._epoch_high | sequence
        nonce, explicit = self._nonce(self._read_iv, self._read_iv_number, number)
        additional = encode_pseudo_header(content_type, version, number, len(content))
        sealed = self._read_aead.encrypt(nonce, content, additional)
        header = encode_record_header(
            content_type, version, self.epoch, sequence, len(explicit) + len(sealed)
        )
        return header + explicit + sealed

    def _open(
        self,
        aead: _Aead,
        implicit_iv: bytes,
        implicit_iv_number: int,
        content_type: int,
        version: int,
        sequence: int,
        fragment: bytes,
    ) -> bytes | None:
        explicit_length = self._explicit
        plaintext_length = len(fragment) - explicit_length - self._tag_length
        if plaintext_length < 0 or plaintext_length > 2**14:
            return None
        number = self._epoch_high | sequence
        additional = encode_pseudo_header(content_type, version, number, plaintext_length)
        if self._xor_nonce:
            nonce = (implicit_iv_number ^ number).to_bytes(12, "big")
            sealed = fragment
        else:
            nonce = implicit_iv + fragment[:explicit_length]
            sealed = fragment[explicit_length:]
        try:
            return aead.decrypt(nonce, sealed, additional)
        except InvalidTag:
            return None


def protection_from_key_block(
    suite: AeadSuite,
    *,
    is_server: bool,
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    epoch: int,
    next_sequence: int,
) -> RecordProtection | None:
    """The record protection of ``epoch`` derived from the key block (RFC 5246 §6.3), reading
    the peer's records and writing ours from ``next_sequence``; None when the secrets do not
    have the sizes TLS 1.2 gives them (then nothing was derived).  Unchecked: the caller proves
    the keys on records both sides sent before relying on them."""
    if len(master_secret) != 48 or len(client_random) != 32 or len(server_random) != 32:
        return None
    client_key, server_key, client_iv, server_iv = derive_key_block(
        suite, master_secret, client_random, server_random
    )
    if is_server:
        read_key, read_iv, write_key, write_iv = client_key, client_iv, server_key, server_iv
    else:
        read_key, read_iv, write_key, write_iv = server_key, server_iv, client_key, client_iv
    return RecordProtection(
        suite,
        epoch=epoch,
        read_key=read_key,
        read_iv=read_iv,
        write_key=write_key,
        write_iv=write_iv,
        next_sequence=next_sequence,
    )


def record_protection_for(
    cipher_name: str,
    *,
    is_server: bool,
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    peer_protected: list[Record],
    own_protected: list[Record],
) -> RecordProtection | None:
    """A :class:`RecordProtection` that carries on where OpenSSL's handshake left off, or None.

    ``peer_protected`` and ``own_protected`` are the epoch-1 handshake records (the Finished
    messages) each side sent, ours including every retransmission.  The keys derived here must
    open all of ours and at least one of the peer's, or we answer None and the caller keeps
    OpenSSL: a wrong guess about the key block can cost speed, never data.  Our next sequence
    number follows the highest one OpenSSL used, so no record number (and no nonce) repeats;
    the replay window starts with the peer's records already marked.
    """
    suite = aead_suite(cipher_name)
    if suite is None or not peer_protected or not own_protected:
        return None
    epochs = {record.epoch for record in own_protected}
    if len(epochs) != 1:
        return None
    (epoch,) = epochs
    protection = protection_from_key_block(
        suite,
        is_server=is_server,
        master_secret=master_secret,
        client_random=client_random,
        server_random=server_random,
        epoch=epoch,
        next_sequence=max(record.sequence_number for record in own_protected) + 1,
    )
    if protection is None:
        return None
    # At least one of the peer's records must open; others may be forgeries OpenSSL dropped.
    opened = 0
    for record in peer_protected:
        if record.epoch == epoch and (
            protection.open_record(
                record.content_type, record.version, record.sequence_number, record.fragment
            )
            is not None
        ):
            opened += 1
    if not opened:
        return None
    for record in own_protected:
        if (
            protection.decrypt_own(
                record.content_type, record.version, record.sequence_number, record.fragment
            )
            is None
        ):
            return None
    return protection
