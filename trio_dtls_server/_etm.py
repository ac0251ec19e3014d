"""Encrypt-then-MAC records checked before OpenSSL sees them: a forged CBC record is dropped.

A session that negotiated a CBC suite keeps its OpenSSL connection after the handshake
(:mod:`._records` only takes AEAD suites).  Most stacks that offer CBC also offer RFC 7366's
``encrypt_then_mac`` extension (OpenSSL, Mbed TLS and wolfSSL do, as the interop tests see;
node-dtls-client does not), and OpenSSL agrees to it.  OpenSSL's DTLS record layer then checks
each record's MAC before decrypting it and treats a failure as **fatal**: a record shorter than
the MAC (``length too short``) or with a wrong MAC (``decryption failed or bad record mac``)
ends the association with an alert.  But anyone can send a datagram with the peer's address,
which is why RFC 6347 §4.1.2.7 says that invalid records are discarded silently in DTLS, as
OpenSSL does for AEAD suites and for MAC-then-encrypt CBC.  One spoofed 29-byte datagram would
otherwise end the association on both sides.

So once such a session is established it keeps an :class:`EtmGuard`: the MAC key of the peer's
direction (the start of the TLS 1.2 key block, derived like the AEAD keys of ``_records``) and
the read epoch.  Every record of that epoch is checked with it first, and one that fails never
reaches OpenSSL; OpenSSL checks the MAC of the records it does get once more, and accepts
them.  Records of other epochs (the peer's retransmitted handshake flight in epoch 0) go to
OpenSSL as before: it drops or answers them without failing.

Why not simply switch encrypt-then-MAC off (``SSL_OP_NO_ENCRYPT_THEN_MAC``): with
MAC-then-encrypt, DTLS gives an attacker an unlimited supply of silent padding-oracle queries,
which is how AlFardan and Paterson recovered plaintext from OpenSSL's and GnuTLS's DTLS
(NDSS 2012), and BCP 195 (RFC 9325) asks for encrypt-then-MAC whenever CBC is used.  Checking
the MAC ourselves keeps encrypt-then-MAC and the silence.

Whether encrypt-then-MAC was negotiated is not exposed by the bindings; it is *proven*, the way
``_records`` proves its keys: under encrypt-then-MAC with the derived keys, the MACs of the
Finished records both sides really sent verify.  If they do not (MAC-then-encrypt, or a suite we
do not know), there is no guard and OpenSSL's own silent drop applies.

During the handshake the danger is the same, one step earlier: OpenSSL keeps the peer's records
of the next epoch that arrive before its ChangeCipherSpec and checks them once it has the keys,
so a forged epoch-1 record sent during the handshake ends the association the moment it is
established (or fails the handshake, if it comes after the ChangeCipherSpec).  So when the
ServerHello says encrypt-then-MAC (:func:`etm_in_server_hello`), the session hands OpenSSL the
protected records of a handshake datagram only after checking them with
:func:`read_guard`, built as soon as OpenSSL holds the keys; before that, none can be genuine
but a reordered Finished, which the peer sends again.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from ._records import aead_suite, key_expansion
from ._wire import (
    RECORD_HEADER_LENGTH,
    ContentType,
    ExtensionType,
    HandshakeType,
    MalformedDatagram,
    Record,
    handshake_type,
    mac_pseudo_header,
    parse_records,
    parse_server_hello,
    plaintext_records,
    single_record_epoch,
)

__all__ = ["EtmGuard", "etm_guard_for", "etm_in_server_hello", "mac_hash", "read_guard"]

_MAC_LENGTHS = {"sha1": 20, "sha256": 32, "sha384": 48}


def mac_hash(openssl_name: str) -> str | None:
    """The HMAC hash of a CBC suite (``sha1``, ``sha256``, ``sha384``), or None (AEAD suites,
    which have no MAC, and names we do not know).

    OpenSSL names a suite's MAC by its last word: ``PSK-AES128-CBC-SHA256``,
    ``ECDHE-ECDSA-AES128-SHA`` (HMAC-SHA1).
    """
    if aead_suite(openssl_name) is not None:
        return None
    name = openssl_name.upper()
    for suffix, name_of_hash in (("-SHA384", "sha384"), ("-SHA256", "sha256"), ("-SHA", "sha1")):
        if name.endswith(suffix):
            return name_of_hash
    return None


class EtmGuard:
    """Checks the encrypt-then-MAC tag of the peer's records of one epoch (RFC 7366 §3)."""

    __slots__ = ("_hash", "_key", "_mac_length", "epoch")

    def __init__(self, *, epoch: int, read_mac_key: bytes, hash_name: str) -> None:
        self.epoch = epoch
        self._key = read_mac_key
        self._hash = hash_name
        self._mac_length = _MAC_LENGTHS[hash_name]

    def authentic(self, raw: bytes) -> bool:
        """True if ``raw`` (one whole record, header included) carries the right MAC.

        The MAC covers epoch and sequence (8 bytes), type, version, and the length and bytes
        of IV plus ciphertext, and follows them.  A record too short to hold a MAC is not
        authentic (OpenSSL would fail the association on it: ``length too short``).
        """
        size = len(raw) - RECORD_HEADER_LENGTH - self._mac_length
        if size < 0:
            return False
        content_end = RECORD_HEADER_LENGTH + size
        mac_input = mac_pseudo_header(raw, size) + raw[RECORD_HEADER_LENGTH:content_end]
        expected = hmac.digest(self._key, mac_input, self._hash)
        return hmac.compare_digest(expected, raw[content_end:])

    def screen(self, datagram: bytes) -> bytes | None:
        """What of ``datagram`` OpenSSL may see: the datagram, its records without the forged
        ones, or None when nothing is left (every record of our epoch failed its MAC, or the
        datagram does not even split into records).

        Never raises; the bytes are untrusted.
        """
        # The hot path: a datagram of exactly one record.
        epoch = single_record_epoch(datagram)
        if epoch is not None:
            if epoch != self.epoch or self.authentic(datagram):
                return datagram
            return None
        try:
            records = parse_records(datagram)
        except MalformedDatagram:
            return None
        kept = [r.raw for r in records if r.epoch != self.epoch or self.authentic(r.raw)]
        if len(kept) == len(records):
            return datagram
        return b"".join(kept) or None


def _mac_keys(
    cipher: str, master_secret: bytes, client_random: bytes, server_random: bytes
) -> tuple[str, bytes, bytes] | None:
    """``(hash, client MAC key, server MAC key)`` of a CBC suite: the key block's first bytes."""
    hash_name = mac_hash(cipher)
    if hash_name is None or not master_secret:
        return None
    prf_hash = "sha384" if cipher.upper().endswith("-SHA384") else "sha256"
    length = _MAC_LENGTHS[hash_name]
    block = key_expansion(master_secret, client_random, server_random, 2 * length, prf_hash)
    return hash_name, block[:length], block[length:]


def read_guard(
    cipher: str,
    *,
    is_server: bool,
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    epoch: int = 1,
) -> EtmGuard | None:
    """The guard for the peer's records of ``epoch``, assuming encrypt-then-MAC (unproven: the
    caller knows it from the ServerHello); None for a suite without a MAC we know."""
    keys = _mac_keys(cipher, master_secret, client_random, server_random)
    if keys is None:
        return None
    hash_name, client_mac_key, server_mac_key = keys
    read_key = client_mac_key if is_server else server_mac_key
    return EtmGuard(epoch=epoch, read_mac_key=read_key, hash_name=hash_name)


def etm_in_server_hello(datagrams: Iterable[bytes]) -> bool | None:
    """Whether the first ServerHello in ``datagrams`` accepts encrypt-then-MAC; None if there
    is none, or it is fragmented or malformed (the bytes may come from the network)."""
    for record in plaintext_records(datagrams, ContentType.handshake):
        if handshake_type(record.fragment) == HandshakeType.server_hello:
            return _server_hello_has_etm(record.fragment)
    return None


def _server_hello_has_etm(fragment: bytes) -> bool | None:
    try:
        hello = parse_server_hello(fragment)
    except MalformedDatagram:
        return None  # malformed, or a fragment: leave it to the proof after the handshake
    return ExtensionType.encrypt_then_mac in hello.extensions


def etm_guard_for(
    cipher: str,
    *,
    is_server: bool,
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    peer_protected: Iterable[Record],
    own_protected: Iterable[Record],
) -> EtmGuard | None:
    """The guard for a session that negotiated ``cipher`` with encrypt-then-MAC, or None.

    ``peer_protected`` and ``own_protected`` are the protected records each side sent during
    the handshake (at least the two Finished).  The guard exists only if the MAC of every one
    of our own protected handshake records, and of at least one of the peer's, verifies under
    encrypt-then-MAC with the keys derived here: that proves the extension was negotiated and
    the keys are right.  (One of the peer's is enough: a forgery may sit among them.)
    """
    keys = _mac_keys(cipher, master_secret, client_random, server_random)
    if keys is None:
        return None
    hash_name, client_mac_key, server_mac_key = keys
    read_key, write_key = (
        (client_mac_key, server_mac_key) if is_server else (server_mac_key, client_mac_key)
    )
    own = [r for r in own_protected if r.content_type == ContentType.handshake]
    peer = [r for r in peer_protected if r.content_type == ContentType.handshake]
    if not own or not peer:
        return None
    epoch = own[0].epoch
    writer = EtmGuard(epoch=epoch, read_mac_key=write_key, hash_name=hash_name)
    if not all(r.epoch == epoch and writer.authentic(r.raw) for r in own):
        return None
    guard = EtmGuard(epoch=epoch, read_mac_key=read_key, hash_name=hash_name)
    if not any(r.epoch == epoch and guard.authentic(r.raw) for r in peer):
        return None
    return guard
