"""Our own DTLS 1.2 record layer (``_records.py``) and how a :class:`DTLSSession` hands over to it.

After an AEAD handshake a session derives the record keys from the TLS 1.2 key block, checks
them on both Finished records, frees its OpenSSL connection and seals and opens records itself.
These tests hold that layer to three standards:

* **Independent arithmetic.**  The key block is recomputed here with a P_hash written in this
  file, and that P_hash is first checked against OpenSSL's own PRF (the RFC 5705 exporter).
  Records are opened here with ``cryptography``'s AEAD classes and nonces/additional data built
  in this file, not with :class:`RecordProtection`.
* **Interop with OpenSSL's record layer**, both ways, for every AEAD suite we release: a
  released session talks to a session that kept OpenSSL (``release_openssl=False``).  If our
  sealing or opening were off by one byte, nothing would arrive.
* **Hostile input**: replays, every single-byte tamper, the replay window's edges, and a
  Hypothesis fuzz run; nothing raises, nothing forged or replayed is ever delivered.

Everything runs in memory with explicit ``now`` values, like ``test_session.py``.  Sessions with
a mixed pair (one side released, one not) are built directly with ``DTLSSession.client`` /
``DTLSSession.server``, the way ``support.begin_handshake_in_memory`` builds them.
"""

from __future__ import annotations

import hmac
import random
from collections import Counter

import pytest
import support
from auth_support import self_signed
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from session_support import GCM, NOW, begin_pair, zero_key_protection
from support import InMemoryHandshake, carry, protection_of, seal_one

from trio_dtls_server import RetransmitPolicy
from trio_dtls_server._codes import DropReason
from trio_dtls_server._openssl import (
    DTLS_1_2,
    configure_session_resumption,
    drain_write_bio,
    install_client_psk,
    new_dtls_context,
)
from trio_dtls_server._protection import OpenSSLProtector
from trio_dtls_server._records import (
    MAX_SEQUENCE,
    RecordProtection,
    ReplayWindow,
    aead_suite,
    derive_key_block,
    record_protection_for,
)
from trio_dtls_server._session import (
    ApplicationData,
    ConnectionFailed,
    DTLSSession,
    HandshakeComplete,
    HandshakeProgress,
    RecordsDropped,
    RemoteClosed,
    Retransmitted,
    SessionEvent,
    SessionState,
)
from trio_dtls_server._wire import (
    ContentType,
    Record,
    parse_records,
)

CBC = "PSK-AES128-CBC-SHA256"
#: The AEAD suites a PSK server of ours can negotiate, and how each protects a record, written
#: down here from the RFCs (5288, 6655, 7905) rather than taken from ``aead_suite``:
#: (key length, implicit IV length, explicit nonce length, tag length, PRF hash).
RELEASED_SUITES: dict[str, tuple[int, int, int, int, str]] = {
    "PSK-AES128-GCM-SHA256": (16, 4, 8, 16, "sha256"),
    "PSK-AES256-GCM-SHA384": (32, 4, 8, 16, "sha384"),
    "PSK-CHACHA20-POLY1305": (32, 12, 0, 16, "sha256"),
    "ECDHE-PSK-CHACHA20-POLY1305": (32, 12, 0, 16, "sha256"),
    "PSK-AES128-CCM": (16, 4, 8, 16, "sha256"),
    "PSK-AES256-CCM": (32, 4, 8, 16, "sha256"),
    "PSK-AES128-CCM8": (16, 4, 8, 8, "sha256"),
}

#: Plaintext sizes for the interop runs: the smallest, a typical one, one that is no multiple of
#: the AES block, and the largest a record may carry (2^14).
MESSAGE_SIZES = [1, 64, 1000, 16_384]

#: The three ways a pair can split the work, as (server releases, client releases).
RELEASE_MODES = {
    "both-released": (True, True),
    "server-released": (True, False),
    "client-released": (False, True),
}

AeadObject = AESGCM | AESCCM | ChaCha20Poly1305


# -- helpers ----------------------------------------------------------------------------------


def cipher_string(suite: str) -> str:
    """OpenSSL >= 3.2 offers CCM_8 (a 64-bit tag) only below the default security level."""
    return f"{suite}:@SECLEVEL=0" if "CCM8" in suite else suite


def handshake_pair(
    ciphers: str = GCM, *, server_releases: bool = True, client_releases: bool = True
) -> InMemoryHandshake:
    """A whole handshake with nothing lost; fails the test unless both sides are established."""
    result = support.exchange(
        begin_pair(ciphers, server_releases=server_releases, client_releases=client_releases)
    )
    assert support.established(result.client, result.server), (
        result.client_events,
        result.server_events,
    )
    return result


def only_record(datagram: bytes) -> Record:
    (record,) = parse_records(datagram)
    return record


def plaintext_of_alert(receiver_side: DTLSSession, datagram: bytes) -> bytes | None:
    """Open an alert datagram with the released session it was meant for, without side effects."""
    record = only_record(datagram)
    assert (record.content_type, record.epoch) == (ContentType.alert, 1)
    return protection_of(receiver_side).decrypt(
        record.content_type, record.version, record.sequence_number, record.fragment
    )


def message(seed: int, size: int) -> bytes:
    """Reproducible, distinct test plaintexts."""
    return random.Random(seed).randbytes(size)


def p_hash(secret: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """RFC 5246 §5 P_hash, written out independently of ``_records.derive_key_block``."""
    output = b""
    a_value = seed  # A(0)
    while len(output) < length:
        a_value = hmac.new(secret, a_value, hash_name).digest()  # A(i) = HMAC(secret, A(i-1))
        output += hmac.new(secret, a_value + seed, hash_name).digest()
    return output[:length]


def independent_key_block(
    suite_name: str, master: bytes, client_random: bytes, server_random: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """RFC 5246 §6.3's key block for an AEAD suite, split with :func:`p_hash`: the client and
    server write keys, then the client and server write IVs (the implicit nonce parts)."""
    key_length, iv_length, _, _, hash_name = RELEASED_SUITES[suite_name]
    block = p_hash(
        master,
        b"key expansion" + server_random + client_random,
        2 * (key_length + iv_length),
        hash_name,
    )
    k, iv = key_length, iv_length
    return block[:k], block[k : 2 * k], block[2 * k : 2 * k + iv], block[2 * k + iv :]


def independent_aead(suite: str, key: bytes) -> AeadObject:
    """The AEAD for ``suite``'s records, chosen from the suite name here, not by ``_records``."""
    if "CHACHA20" in suite:
        return ChaCha20Poly1305(key)
    if "CCM8" in suite:
        return AESCCM(key, tag_length=8)
    if "CCM" in suite:
        return AESCCM(key, tag_length=16)
    return AESGCM(key)


def open_independently(suite: str, key: bytes, implicit_iv: bytes, record: Record) -> bytes:
    """Decrypt one DTLS 1.2 AEAD record from first principles (RFC 5288 / 6655 / 7905)."""
    _, _, explicit_length, tag_length, _ = RELEASED_SUITES[suite]
    epoch_and_sequence = (record.epoch << 48 | record.sequence_number).to_bytes(8, "big")
    if explicit_length:
        nonce = implicit_iv + record.fragment[:explicit_length]
    else:  # RFC 7905: the 64-bit sequence, left-padded to 96 bits, XORed into the IV
        padded = bytes(4) + epoch_and_sequence
        nonce = bytes(x ^ y for x, y in zip(implicit_iv, padded, strict=True))
    body = record.fragment[explicit_length:]
    plaintext_length = len(body) - tag_length
    additional = (
        epoch_and_sequence
        + bytes([record.content_type])
        + record.version.to_bytes(2, "big")
        + plaintext_length.to_bytes(2, "big")
    )
    return independent_aead(suite, key).decrypt(nonce, body, additional)


# -- 1. which suites we protect ourselves -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key_length", "implicit_iv", "explicit", "tag", "prf_hash", "aead_class"),
    [
        ("PSK-AES128-GCM-SHA256", 16, 4, 8, 16, "sha256", AESGCM),
        ("PSK-AES256-GCM-SHA384", 32, 4, 8, 16, "sha384", AESGCM),
        ("ECDHE-PSK-CHACHA20-POLY1305", 32, 12, 0, 16, "sha256", ChaCha20Poly1305),
        ("PSK-CHACHA20-POLY1305", 32, 12, 0, 16, "sha256", ChaCha20Poly1305),
        ("PSK-AES128-CCM", 16, 4, 8, 16, "sha256", AESCCM),
        ("PSK-AES256-CCM", 32, 4, 8, 16, "sha256", AESCCM),
        ("PSK-AES128-CCM8", 16, 4, 8, 8, "sha256", AESCCM),
        ("ECDHE-ECDSA-AES128-GCM-SHA256", 16, 4, 8, 16, "sha256", AESGCM),
        ("ECDHE-ECDSA-AES256-CCM8", 32, 4, 8, 8, "sha256", AESCCM),
        ("ECDHE-RSA-AES256-GCM-SHA384", 32, 4, 8, 16, "sha384", AESGCM),
        ("DHE-PSK-AES128-GCM-SHA256", 16, 4, 8, 16, "sha256", AESGCM),
        ("psk-aes128-gcm-sha256", 16, 4, 8, 16, "sha256", AESGCM),
    ],
)
def test_aead_suite_maps_openssl_names(
    name: str,
    key_length: int,
    implicit_iv: int,
    explicit: int,
    tag: int,
    prf_hash: str,
    aead_class: type,
) -> None:
    suite = aead_suite(name)
    assert suite is not None
    assert (
        suite.name,
        suite.key_length,
        suite.implicit_iv_length,
        suite.explicit_nonce_length,
        suite.tag_length,
        suite.prf_hash,
        suite.overhead,
    ) == (name, key_length, implicit_iv, explicit, tag, prf_hash, explicit + tag)
    aead = suite.make_aead(bytes(key_length))
    assert isinstance(aead, aead_class)
    # The tag length is what the AEAD object really appends (8 for CCM_8, 16 otherwise).
    assert len(aead.encrypt(bytes(12), b"", b"")) == tag


@pytest.mark.parametrize(
    "name",
    [
        "PSK-AES128-CBC-SHA256",
        "PSK-AES128-CBC-SHA",
        "ECDHE-PSK-AES128-CBC-SHA256",
        "PSK-NULL-SHA256",
        "ECDHE-ARIA128-GCM-SHA256",
        "ECDHE-ECDSA-ARIA256-GCM-SHA384",
        "DHE-PSK-ARIA128-GCM-SHA256",
        "PSK-CAMELLIA128-SHA256",
        "ECDHE-PSK-CAMELLIA256-SHA384",
    ],
)
def test_aead_suite_leaves_other_suites_to_openssl(name: str) -> None:
    assert aead_suite(name) is None


@pytest.mark.parametrize("name", ["unknown", "", "AES128-SHA", "AES256-SHA256"])
def test_aead_suite_answers_none_for_short_names(name: str) -> None:
    # "unknown" is DTLSSession.cipher's value before a handshake; AES128-SHA and AES256-SHA256
    # are real OpenSSL names (RSA key transport with CBC), negotiable with an RSA certificate.
    assert aead_suite(name) is None


def _self_signed_rsa_server_context(ciphers: str) -> SSL.Context:
    """A DTLS server context with a throwaway RSA certificate (plain-RSA suites need one)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = self_signed(key, "records test")
    context = new_dtls_context(server=True, ciphers=ciphers)
    context.use_certificate(certificate)
    context.use_privatekey(key)
    context.set_cookie_generate_callback(lambda connection: bytes(16))
    context.set_cookie_verify_callback(lambda connection, cookie: True)
    return context


def test_a_two_word_cbc_suite_keeps_openssl_instead_of_crashing() -> None:
    suite = "AES128-SHA256"
    client = DTLSSession.client(
        new_dtls_context(server=False, ciphers=suite),
        now=NOW,
        mtu=1400,
        policy=RetransmitPolicy(),
        identity=None,
        key=None,
    )
    first = client.take_datagrams()
    client.receive_datagram(support.hello_verify_request_for(first[0]), NOW)
    server = DTLSSession.server(
        _self_signed_rsa_server_context(suite),
        client.take_datagrams()[0],
        now=NOW,
        mtu=1400,
        policy=RetransmitPolicy(),
        psk_lookup=None,
    )
    result = support.exchange(InMemoryHandshake(client, server))
    assert support.established(result.client, result.server)
    assert (result.server.cipher, result.server.openssl_released) == (suite, False)
    assert result.server.receive_datagram(seal_one(result.client, b"cbc"), NOW) == [
        ApplicationData(b"cbc")
    ]


# -- 2. the key block and the record format, from first principles ------------------------------


def test_derive_key_block_matches_an_independent_prf_on_fixed_inputs() -> None:
    master, client_random, server_random = bytes(range(48)), b"\x01" * 32, b"\x02" * 32
    for name, (k, iv, _, _, _) in RELEASED_SUITES.items():
        suite = aead_suite(name)
        assert suite is not None
        expected = independent_key_block(name, master, client_random, server_random)
        assert derive_key_block(suite, master, client_random, server_random) == expected, name
        assert [len(part) for part in expected] == [k, k, iv, iv]


@pytest.mark.parametrize("suite_name", list(RELEASED_SUITES))
def test_key_block_and_record_format_agree_with_openssl(suite_name: str) -> None:
    """OpenSSL's own PRF checks our test's P_hash; our keys then open OpenSSL's records.

    Both sessions keep OpenSSL here, so every record is OpenSSL's.  The RFC 5705 exporter is
    ``PRF(master_secret, label, client_random + server_random)``, the same PRF as the key
    block's; once the test's P_hash reproduces it, the key block computed with it is the
    reference for :func:`derive_key_block`.
    """
    result = handshake_pair(cipher_string(suite_name), server_releases=False, client_releases=False)
    assert result.server.cipher == result.client.cipher == suite_name
    connection = result.server.connection
    assert connection is not None
    master = connection.master_key()
    client_random, server_random = connection.client_random(), connection.server_random()
    assert master is not None and client_random is not None and server_random is not None
    assert len(master) == 48
    hash_name = RELEASED_SUITES[suite_name][4]

    label = b"EXPERIMENTAL records test"
    assert p_hash(master, label + client_random + server_random, 100, hash_name) == (
        connection.export_keying_material(label, 100)
    )

    client_key, server_key, client_iv, server_iv = independent_key_block(
        suite_name, master, client_random, server_random
    )
    suite = aead_suite(suite_name)
    assert suite is not None
    assert derive_key_block(suite, master, client_random, server_random) == (
        client_key,
        server_key,
        client_iv,
        server_iv,
    )

    # OpenSSL's records open with these keys, our nonce and our additional data.
    from_client = only_record(seal_one(result.client, b"sealed by OpenSSL, client side"))
    from_server = only_record(seal_one(result.server, b"sealed by OpenSSL, server side"))
    assert open_independently(suite_name, client_key, client_iv, from_client) == (
        b"sealed by OpenSSL, client side"
    )
    assert open_independently(suite_name, server_key, server_iv, from_server) == (
        b"sealed by OpenSSL, server side"
    )


def _mirror_pair(
    suite_name: str, sender_sequence: int = 1, receiver_sequence: int = 1
) -> tuple[RecordProtection, RecordProtection]:
    """Two :class:`RecordProtection` objects whose keys mirror each other: one seals, one opens.

    The sender writes with key ``0x11...`` and IV ``0x22...``; the receiver reads with them.
    """
    suite = aead_suite(suite_name)
    assert suite is not None
    key_a, key_b = b"\x11" * suite.key_length, b"\x33" * suite.key_length
    iv_a, iv_b = b"\x22" * suite.implicit_iv_length, b"\x44" * suite.implicit_iv_length
    sender = RecordProtection(
        suite,
        epoch=1,
        read_key=key_b,
        read_iv=iv_b,
        write_key=key_a,
        write_iv=iv_a,
        next_sequence=sender_sequence,
    )
    receiver = RecordProtection(
        suite,
        epoch=1,
        read_key=key_a,
        read_iv=iv_a,
        write_key=key_b,
        write_iv=iv_b,
        next_sequence=receiver_sequence,
    )
    return sender, receiver


@pytest.mark.parametrize("suite_name", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305"])
def test_seal_writes_the_documented_record_format(suite_name: str) -> None:
    """Fixed keys: the header, the explicit nonce and the ciphertext are exactly as specified."""
    suite = aead_suite(suite_name)
    assert suite is not None
    key_length, iv_length, explicit_length, tag_length, _ = RELEASED_SUITES[suite_name]
    # The sender's write key and IV, as _mirror_pair makes them.
    write_key, write_iv = b"\x11" * key_length, b"\x22" * iv_length
    sender, receiver = _mirror_pair(suite_name, sender_sequence=0x0102030405, receiver_sequence=0)
    datagram = sender.seal(ContentType.application_data, b"hello, record")
    assert sender.next_sequence == 0x0102030406
    length = explicit_length + len(b"hello, record") + tag_length
    header = b"\x17\xfe\xfd" + b"\x00\x01" + bytes.fromhex("000102030405") + length.to_bytes(2)
    assert datagram[:13] == header
    assert len(datagram) == 13 + length
    if explicit_length:
        # RFC 5288 §3: we send the record's own epoch and sequence number as the explicit nonce.
        assert datagram[13:21] == b"\x00\x01" + bytes.fromhex("000102030405")
    record = only_record(datagram)
    assert open_independently(suite_name, write_key, write_iv, record) == b"hello, record"

    # The mirror image (the peer) opens it once; the replay window then refuses it.
    arguments = (record.content_type, record.version, record.sequence_number, record.fragment)
    assert receiver.open_record(*arguments) == b"hello, record"
    assert receiver.open_record(*arguments) is None
    # decrypt() alone never consults the window.
    assert receiver.decrypt(*arguments) == b"hello, record"
    # The content type, version and sequence number are authenticated.
    assert receiver.decrypt(ContentType.handshake, *arguments[1:]) is None
    assert receiver.decrypt(record.content_type, 0xFEFF, *arguments[2:]) is None
    assert receiver.decrypt(record.content_type, record.version, 7, record.fragment) is None


@pytest.mark.parametrize("suite_name", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305"])
def test_decrypt_refuses_impossible_fragment_lengths_without_raising(suite_name: str) -> None:
    suite = aead_suite(suite_name)
    assert suite is not None
    protection = zero_key_protection(suite, next_sequence=0)
    for fragment_length in [0, 1, suite.overhead - 1, suite.overhead + 2**14 + 1]:
        fragment = bytes(fragment_length)
        assert protection.decrypt(ContentType.application_data, DTLS_1_2, 0, fragment) is None
        assert protection.open_record(ContentType.application_data, DTLS_1_2, 0, fragment) is None
    # The window was not moved by any of them.
    assert protection.replay.seen(0) is False


def test_record_protection_for_refuses_what_it_cannot_check() -> None:
    """No keys without Finished records to prove them, and none for a CBC suite."""
    result = handshake_pair(GCM, server_releases=False, client_releases=False)
    connection = result.server.connection
    assert connection is not None
    finished = [
        record
        for datagram in result.client_datagrams
        for record in parse_records(datagram)
        if record.epoch == 1
    ]
    own = [
        record
        for datagram in result.server_datagrams
        for record in parse_records(datagram)
        if record.epoch == 1
    ]
    assert len(finished) == len(own) == 1

    def attempt(
        cipher: str = GCM,
        master: bytes | None = None,
        peer: list[Record] | None = None,
        mine: list[Record] | None = None,
    ) -> RecordProtection | None:
        return record_protection_for(
            cipher,
            is_server=True,
            master_secret=master if master is not None else connection.master_key() or b"",
            client_random=connection.client_random() or b"",
            server_random=connection.server_random() or b"",
            peer_protected=finished if peer is None else peer,
            own_protected=own if mine is None else mine,
        )

    made = attempt()
    assert made is not None
    # It carries on after the server's Finished (sequence 0) with the client's Finished marked.
    assert (made.epoch, made.next_sequence) == (1, 1)
    assert made.replay.seen(finished[0].sequence_number) is True
    assert attempt(cipher=CBC) is None
    assert attempt(peer=[]) is None
    assert attempt(mine=[]) is None
    assert attempt(master=bytes(48)) is None  # wrong keys: the Finished records do not open
    assert attempt(master=bytes(47)) is None
    # Roles swapped: the server's Finished is not the client's.
    assert attempt(peer=own, mine=finished) is None


# -- what mutation testing found unpinned (``nox -s mutants``) -----------------------------------


@pytest.mark.parametrize("suite_name", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305"])
def test_an_authentic_record_with_an_empty_plaintext_opens(suite_name: str) -> None:
    """Zero bytes of plaintext is a legal record (RFC 5246 §6.2.1 allows empty application data)."""
    sender, receiver = _mirror_pair(suite_name)
    record = only_record(sender.seal(ContentType.application_data, b""))
    assert len(record.fragment) == sender.suite.overhead
    arguments = (record.content_type, record.version, record.sequence_number, record.fragment)
    assert receiver.decrypt(*arguments) == b""
    assert receiver.open_record(*arguments) == b""
    assert receiver.replay.seen(record.sequence_number) is True


@pytest.mark.parametrize("suite_name", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305"])
def test_an_authentic_record_over_2_14_bytes_of_plaintext_is_refused(suite_name: str) -> None:
    """RFC 6347 §4.1 / RFC 5246 §6.2.3: at most 2^14 bytes of plaintext, even if authentic.

    ``seal`` leaves the limit to its caller, so it can build the record a broken (or hostile)
    peer would send; random bytes of that size would fail authentication first and prove
    nothing about the length check.
    """
    sender, receiver = _mirror_pair(suite_name)
    largest = only_record(sender.seal(ContentType.application_data, message(1, 2**14)))
    too_big = only_record(sender.seal(ContentType.application_data, message(2, 2**14 + 1)))
    for record, expected in [(largest, message(1, 2**14)), (too_big, None)]:
        arguments = (record.content_type, record.version, record.sequence_number, record.fragment)
        assert receiver.decrypt(*arguments) == expected
        assert receiver.open_record(*arguments) == expected
    assert receiver.replay.seen(too_big.sequence_number) is False


def _finished_records() -> tuple[SSL.Connection, list[Record], list[Record]]:
    """A server connection kept by OpenSSL, the client's Finished and the server's, as records."""
    result = handshake_pair(GCM, server_releases=False, client_releases=False)
    connection = result.server.connection
    assert connection is not None
    peer, own = (
        [
            record
            for datagram in datagrams
            for record in parse_records(datagram)
            if record.epoch == 1
        ]
        for datagrams in (result.client_datagrams, result.server_datagrams)
    )
    assert len(peer) == len(own) == 1
    return connection, peer, own


def test_release_needs_at_least_one_of_the_peers_records_to_open() -> None:
    """The keys are only trusted once a record of the peer's opened with them.

    Our own Finished opening is not enough: it proves our half of the key block, not the
    peer's.  A forged record among the peer's is skipped (OpenSSL dropped it too), and a
    record of another epoch does not count even if its bytes would open.
    """
    connection, peer, own = _finished_records()
    (finished,) = peer

    def attempt(peer_records: list[Record]) -> RecordProtection | None:
        return record_protection_for(
            GCM,
            is_server=True,
            master_secret=connection.master_key() or b"",
            client_random=connection.client_random() or b"",
            server_random=connection.server_random() or b"",
            peer_protected=peer_records,
            own_protected=own,
        )

    tampered = bytearray(finished.fragment)
    tampered[-1] ^= 1
    forged = finished._replace(fragment=bytes(tampered))
    other_epoch = finished._replace(epoch=2)
    assert attempt([forged]) is None
    assert attempt([forged, forged]) is None
    assert attempt([other_epoch]) is None
    # The genuine Finished among forgeries is enough, wherever it is.
    for peer_records in ([forged, finished], [finished, forged], [other_epoch, finished]):
        made = attempt(peer_records)
        assert made is not None
        assert made.replay.seen(finished.sequence_number) is True


def test_record_protection_for_checks_the_secret_lengths_itself() -> None:
    """A 49-byte master secret is refused even though its keys would open the Finished records.

    HMAC pads a key shorter than its block with zero bytes, so the master secret with one zero
    byte appended derives the very same key block; only the explicit length check stops it.
    """
    connection, peer, own = _finished_records()
    master = connection.master_key() or b""

    def attempt(master_secret: bytes) -> RecordProtection | None:
        return record_protection_for(
            GCM,
            is_server=True,
            master_secret=master_secret,
            client_random=connection.client_random() or b"",
            server_random=connection.server_random() or b"",
            peer_protected=peer,
            own_protected=own,
        )

    assert attempt(master) is not None
    assert attempt(master + b"\x00") is None


# -- 2. interop with OpenSSL's record layer, every suite, every split ----------------------------


@pytest.mark.parametrize("mode", list(RELEASE_MODES))
@pytest.mark.parametrize("suite_name", list(RELEASED_SUITES))
def test_records_interoperate_with_openssl(suite_name: str, mode: str) -> None:
    server_releases, client_releases = RELEASE_MODES[mode]
    result = handshake_pair(
        cipher_string(suite_name),
        server_releases=server_releases,
        client_releases=client_releases,
    )
    client, server = result.client, result.server
    assert (server.openssl_released, client.openssl_released) == RELEASE_MODES[mode]
    for session, released in [(server, server_releases), (client, client_releases)]:
        assert (session.connection is None) is released
        # What the session knows about the handshake outlives the OpenSSL connection.
        assert (session.cipher, session.protocol) == (suite_name, "DTLSv1.2")
    # Only the client keeps the session (to resume it later); a server leaves it to the cache.
    assert client.ssl_session is not None
    assert server.ssl_session is None

    _, _, explicit_length, tag_length, _ = RELEASED_SUITES[suite_name]
    for index, size in enumerate(MESSAGE_SIZES):
        # Each side's first application record follows its Finished (epoch 1, sequence 0).
        sequence = index + 1
        for sender, receiver, seed in [(client, server, index), (server, client, 100 + index)]:
            plaintext = message(seed, size)
            datagram = seal_one(sender, plaintext)
            assert len(datagram) == 13 + explicit_length + size + tag_length
            record = only_record(datagram)
            assert (record.content_type, record.epoch, record.sequence_number) == (
                ContentType.application_data,
                1,
                sequence,
            )
            assert receiver.receive_datagram(datagram, NOW) == [ApplicationData(plaintext)]
    assert server.take_datagrams() == client.take_datagrams() == []
    assert support.established(client, server)


@pytest.mark.parametrize("suite_name", [CBC, "PSK-AES128-CBC-SHA"])
def test_a_cbc_suite_keeps_openssl_and_data_flows(suite_name: str) -> None:
    result = handshake_pair(suite_name)
    for session in (result.client, result.server):
        assert session.openssl_released is False
        assert session.connection is not None
        assert isinstance(session._protector, OpenSSLProtector)
        assert session.cipher == suite_name
    for index, size in enumerate(MESSAGE_SIZES):
        to_server, to_client = message(index, size), message(50 + index, size)
        assert result.server.receive_datagram(seal_one(result.client, to_server), NOW) == [
            ApplicationData(to_server)
        ]
        assert result.client.receive_datagram(seal_one(result.server, to_client), NOW) == [
            ApplicationData(to_client)
        ]


def test_release_openssl_false_keeps_openssl_for_an_aead_suite() -> None:
    result = handshake_pair(GCM, server_releases=False, client_releases=False)
    assert result.server.openssl_released is result.client.openssl_released is False
    assert result.server.connection is not None and result.client.connection is not None


# -- 4. replay and tampering on a released session ----------------------------------------------


def test_the_same_datagram_twice_is_a_replay() -> None:
    result = handshake_pair()
    datagram = seal_one(result.client, b"once only")
    assert result.server.receive_datagram(datagram, NOW) == [ApplicationData(b"once only")]
    assert result.server.receive_datagram(datagram, NOW) == [RecordsDropped(DropReason.REPLAY)]
    assert result.server.state is SessionState.ESTABLISHED
    # And the other direction.
    reply = seal_one(result.server, b"reply once")
    assert result.client.receive_datagram(reply, NOW) == [ApplicationData(b"reply once")]
    assert result.client.receive_datagram(reply, NOW) == [RecordsDropped(DropReason.REPLAY)]


def _expected_tamper_outcome(position: int) -> DropReason:
    """What flipping the lowest bit of byte ``position`` of the target record must cause.

    The target has epoch 1, sequence 3 (1 and 2 were never delivered), content type 23.
    """
    if position == 4:
        # Epoch 1 -> 0: a plaintext-epoch record after the handshake is taken for the tail of
        # a retransmitted flight (the same classification OpenSSL-backed sessions give it).
        return DropReason.HANDSHAKE_RETRANSMISSION
    if position == 3:
        # Epoch 1 -> 257: an epoch this association never reached, dropped without crypto
        # (until the off-path hardening it was counted as an authentication failure).
        return DropReason.WRONG_EPOCH
    if position in (11, 12):
        # The length field no longer matches the datagram: the records do not tile it.
        return DropReason.MALFORMED
    # Content type 23 -> 22 (authenticated in the additional data), version, sequence 3 -> 2
    # or far ahead (both unseen), explicit nonce, ciphertext, tag.
    return DropReason.AUTHENTICATION


@pytest.mark.parametrize("suite_name", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305"])
def test_every_single_byte_tamper_is_dropped_and_changes_nothing(suite_name: str) -> None:
    result = handshake_pair(suite_name)
    client, server = result.client, result.server
    seal_one(client, b"never delivered 1")
    seal_one(client, b"never delivered 2")
    target = seal_one(client, b"the genuine payload, sixty-four bytes long" + bytes(22))
    assert only_record(target).sequence_number == 3
    outcomes: dict[int, list[SessionEvent]] = {}
    for position in range(len(target)):
        tampered = bytearray(target)
        tampered[position] ^= 0x01
        outcomes[position] = server.receive_datagram(bytes(tampered), NOW)
    expected = {
        position: [RecordsDropped(_expected_tamper_outcome(position))]
        for position in range(len(target))
    }
    assert outcomes == expected
    assert server.state is SessionState.ESTABLISHED
    assert server.take_datagrams() == []
    # Flips that break framing in other ways.
    not_a_type = bytes([target[0] ^ 0x80]) + target[1:]
    not_dtls = target[:1] + bytes([target[1] ^ 0x80]) + target[2:]
    assert server.receive_datagram(not_a_type, NOW) == [RecordsDropped(DropReason.MALFORMED)]
    # A one-record datagram takes the fast path, which reads only the header fields it needs;
    # the version is then caught by authentication (it is in the additional data).
    assert server.receive_datagram(not_dtls, NOW) == [RecordsDropped(DropReason.AUTHENTICATION)]
    # Next to a second record the datagram is parsed in full, and a non-DTLS version is framing.
    assert server.receive_datagram(not_dtls + target, NOW) == [RecordsDropped(DropReason.MALFORMED)]
    # No forgery consumed the genuine record's number, and the session carries on.
    assert server.receive_datagram(target, NOW) == [
        ApplicationData(b"the genuine payload, sixty-four bytes long" + bytes(22))
    ]
    assert server.receive_datagram(seal_one(client, b"next"), NOW) == [ApplicationData(b"next")]
    assert server.state is SessionState.ESTABLISHED


def test_records_of_another_epoch_are_dropped() -> None:
    result = handshake_pair()
    genuine = seal_one(result.client, b"epoch one")
    epoch_two = genuine[:3] + b"\x00\x02" + genuine[5:]
    # Not a forgery of ours: no key of this association can open it, so no crypto is tried.
    assert result.server.screen(epoch_two) == DropReason.WRONG_EPOCH
    assert result.server.receive_datagram(epoch_two, NOW) == [
        RecordsDropped(DropReason.WRONG_EPOCH)
    ]
    assert result.server.receive_datagram(support.garbage_record(epoch=1, sequence=40), NOW) == [
        RecordsDropped(DropReason.AUTHENTICATION)
    ]
    assert result.server.receive_datagram(genuine, NOW) == [ApplicationData(b"epoch one")]


def test_out_of_order_records_within_the_window_are_each_accepted_once() -> None:
    result = handshake_pair()
    plaintexts = [b"message %d" % index for index in range(10)]
    datagrams = [seal_one(result.client, plaintext) for plaintext in plaintexts]
    order = [9, 0, 5, 1, 8, 2, 7, 3, 6, 4]
    for index in order:
        assert result.server.receive_datagram(datagrams[index], NOW) == [
            ApplicationData(plaintexts[index])
        ]
    for index in order:
        assert result.server.receive_datagram(datagrams[index], NOW) == [
            RecordsDropped(DropReason.REPLAY)
        ]


def test_the_window_edge_63_behind_is_accepted_64_behind_is_a_replay() -> None:
    result = handshake_pair()
    client, server = result.client, result.server
    held_back = seal_one(client, b"63 behind")  # sequence 1
    for _ in range(62):
        seal_one(client, b"skipped")
    newest = seal_one(client, b"newest")  # sequence 64
    assert only_record(newest).sequence_number == 64
    assert server.receive_datagram(newest, NOW) == [ApplicationData(b"newest")]
    assert server.receive_datagram(held_back, NOW) == [ApplicationData(b"63 behind")]

    too_old = seal_one(client, b"64 behind")  # sequence 65
    for _ in range(63):
        seal_one(client, b"skipped")
    newest = seal_one(client, b"newest again")  # sequence 129
    assert only_record(newest).sequence_number == 129
    assert server.receive_datagram(newest, NOW) == [ApplicationData(b"newest again")]
    assert server.receive_datagram(too_old, NOW) == [RecordsDropped(DropReason.REPLAY)]


def test_a_record_older_than_the_window_is_dropped_as_a_replay() -> None:
    result = handshake_pair()
    old = seal_one(result.client, b"old")
    for index in range(100):
        plaintext = b"newer %d" % index
        assert result.server.receive_datagram(seal_one(result.client, plaintext), NOW) == [
            ApplicationData(plaintext)
        ]
    assert result.server.receive_datagram(old, NOW) == [RecordsDropped(DropReason.REPLAY)]
    assert result.server.state is SessionState.ESTABLISHED


def test_several_records_in_one_datagram_arrive_in_order() -> None:
    result = handshake_pair()
    first, second = seal_one(result.client, b"first"), seal_one(result.client, b"second")
    assert result.server.receive_datagram(first + second, NOW) == [
        ApplicationData(b"first"),
        ApplicationData(b"second"),
    ]
    # Both numbers are now taken: the pair again, or either alone, is a replay.
    assert result.server.receive_datagram(second + first, NOW) == [
        RecordsDropped(DropReason.REPLAY)
    ]
    third = seal_one(result.client, b"third")
    # A replayed record next to a fresh one: only the fresh one counts.
    assert result.server.receive_datagram(first + third, NOW) == [ApplicationData(b"third")]


# -- 5. fuzzing a released server session -------------------------------------------------------

#: One hostile datagram, described independently of the session it will be built for:
#: (kind, a, b, extra bytes).
Recipe = tuple[str, int, int, bytes]

_RECIPES: st.SearchStrategy[Recipe] = st.one_of(
    st.tuples(st.just("raw"), st.just(0), st.just(0), st.binary(max_size=300)),
    st.tuples(st.just("genuine"), st.integers(0, 99), st.just(0), st.just(b"")),
    st.tuples(st.just("flip"), st.integers(0, 99), st.integers(0, 2**20), st.just(b"")),
    st.tuples(st.just("truncate"), st.integers(0, 99), st.integers(0, 2**20), st.just(b"")),
    st.tuples(
        st.just("extend"), st.integers(0, 99), st.just(0), st.binary(min_size=1, max_size=40)
    ),
    st.tuples(
        st.just("prefix"), st.integers(0, 99), st.just(0), st.binary(min_size=1, max_size=40)
    ),
    st.tuples(st.just("concat"), st.integers(0, 99), st.integers(0, 99), st.just(b"")),
    st.tuples(
        st.just("forge"), st.integers(0, 2**48 - 1), st.integers(20, 25), st.binary(max_size=80)
    ),
)


def _build(recipe: Recipe, pool: list[bytes]) -> bytes:
    kind, a, b, extra = recipe
    base = pool[a % len(pool)]
    if kind == "raw":
        return extra
    if kind == "genuine":
        return base
    if kind == "flip":
        bit = b % (len(base) * 8)
        flipped = bytearray(base)
        flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)
    if kind == "truncate":
        return base[: b % len(base)]
    if kind == "extend":
        return base + extra
    if kind == "prefix":
        return extra + base
    if kind == "concat":
        return base + pool[b % len(pool)]
    assert kind == "forge"  # a well-framed epoch-1 record with a body of chance bytes
    header = bytes([b]) + b"\xfe\xfd\x00\x01" + a.to_bytes(6, "big")
    return header + len(extra).to_bytes(2, "big") + extra


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(recipes=st.lists(_RECIPES, min_size=1, max_size=10))
def test_a_released_server_survives_hostile_datagrams(recipes: list[Recipe]) -> None:
    """Never an exception, never a forged or repeated plaintext, never a state change."""
    result = handshake_pair()
    client, server = result.client, result.server
    assert server.openssl_released
    client_flight = result.client_datagrams[-1]  # ClientKeyExchange, CCS, Finished
    server_flight = result.server_datagrams[-1]  # CCS, Finished
    sent = {message(1000 + index, size): index for index, size in enumerate([1, 17, 300, 1400])}
    pool = [seal_one(client, plaintext) for plaintext in sent] + [client_flight]
    drops = {
        DropReason.AUTHENTICATION,
        DropReason.BAD_LENGTH,
        DropReason.HANDSHAKE_RETRANSMISSION,
        DropReason.MALFORMED,
        DropReason.REPLAY,
        DropReason.WRONG_EPOCH,
    }
    delivered: Counter[bytes] = Counter()
    for recipe in recipes:
        datagram = _build(recipe, pool)
        # What the server's reader drops unread (screen) must be what gives no plaintext.
        screened = server.screen(datagram)
        events = server.receive_datagram(datagram, NOW)
        assert events, recipe
        if screened is not None:
            assert all(isinstance(event, RecordsDropped) for event in events), (recipe, events)
        if isinstance(events[0], RecordsDropped):
            assert len(events) == 1 and events[0].reason in drops, (recipe, events)
        else:
            assert all(isinstance(event, ApplicationData) for event in events), (recipe, events)
            for event in events:
                assert isinstance(event, ApplicationData)
                assert event.data in sent, recipe
                delivered[event.data] += 1
        assert server.state is SessionState.ESTABLISHED
        # The only thing the server may say: its saved final flight, for a resent Finished.
        assert set(server.take_datagrams()) <= {server_flight}
    assert all(count == 1 for count in delivered.values()), delivered


# -- 6. close_notify across the two record layers -----------------------------------------------


@pytest.mark.parametrize("released", ["both", "closer", "receiver"])
@pytest.mark.parametrize("closer_role", ["client", "server"])
def test_close_notify_is_understood_across_record_layers(closer_role: str, released: str) -> None:
    closer_releases = released in ("both", "closer")
    receiver_releases = released in ("both", "receiver")
    if closer_role == "client":
        result = handshake_pair(server_releases=receiver_releases, client_releases=closer_releases)
        closer, receiver = result.client, result.server
    else:
        result = handshake_pair(server_releases=closer_releases, client_releases=receiver_releases)
        closer, receiver = result.server, result.client
    assert (closer.openssl_released, receiver.openssl_released) == (
        closer_releases,
        receiver_releases,
    )

    closer.close()
    assert closer.state is SessionState.CLOSED
    (goodbye,) = closer.take_datagrams()
    record = only_record(goodbye)
    assert (record.content_type, record.epoch, record.sequence_number) == (ContentType.alert, 1, 1)

    assert receiver.receive_datagram(goodbye, NOW) == [RemoteClosed()]
    assert receiver.state is SessionState.CLOSED
    # RFC 5246 §7.2.1: the receiver answers with its own close_notify, exactly one datagram.
    (answer,) = receiver.take_datagrams()
    assert only_record(answer).content_type == ContentType.alert

    # The closer's record layer reads that answer as close_notify.
    if closer_releases:
        assert plaintext_of_alert(closer, answer) == b"\x01\x00"  # warning, close_notify
    else:
        connection = closer.connection
        assert connection is not None
        connection.bio_write(answer)
        with pytest.raises(SSL.ZeroReturnError):
            connection.read(100)
        assert connection.get_shutdown() == SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN
    # A closed session ignores anything more, and closing again sends nothing.
    assert closer.receive_datagram(answer, NOW) == []
    receiver.close()
    assert receiver.take_datagrams() == []
    assert receiver.receive_datagram(goodbye, NOW) == []


def test_a_released_server_answers_openssls_close_notify_with_one_datagram() -> None:
    result = handshake_pair(server_releases=True, client_releases=False)
    result.client.close()
    (goodbye,) = result.client.take_datagrams()
    assert result.server.receive_datagram(goodbye, NOW) == [RemoteClosed()]
    assert result.server.state is SessionState.CLOSED
    (answer,) = result.server.take_datagrams()
    record = only_record(answer)
    # Our close_notify follows the server's Finished: epoch 1, sequence 1.
    assert (record.content_type, record.epoch, record.sequence_number) == (ContentType.alert, 1, 1)
    assert len(answer) == 13 + 8 + 2 + 16  # explicit nonce, the two alert bytes, the tag


# -- 7. alerts from the peer --------------------------------------------------------------------


def test_a_protected_fatal_alert_fails_the_session() -> None:
    result = handshake_pair()
    alert = protection_of(result.client).seal(ContentType.alert, bytes([2, 40]))
    reason = "the peer sent the fatal alert handshake_failure (40)"
    assert result.server.receive_datagram(alert, NOW) == [ConnectionFailed(reason)]
    assert result.server.state is SessionState.FAILED
    assert result.server.failure_reason == reason
    assert result.server.take_datagrams() == []  # no answer to a fatal alert
    assert result.server.receive_datagram(seal_one(result.client, b"too late"), NOW) == []
    with pytest.raises(RuntimeError, match="cannot send on a failed DTLS session"):
        result.server.send(b"anyone there?")


def test_data_before_a_fatal_alert_in_the_same_datagram_is_delivered_first() -> None:
    result = handshake_pair()
    last_words = seal_one(result.client, b"last words")
    alert = protection_of(result.client).seal(ContentType.alert, bytes([2, 255]))
    assert result.server.receive_datagram(last_words + alert, NOW) == [
        ApplicationData(b"last words"),
        ConnectionFailed("the peer sent the fatal alert unknown alert (255)"),
    ]
    assert result.server.state is SessionState.FAILED


def test_a_protected_warning_alert_changes_nothing() -> None:
    result = handshake_pair()
    warning = protection_of(result.client).seal(ContentType.alert, bytes([1, 90]))  # user_canceled
    assert result.server.receive_datagram(warning, NOW) == []
    assert result.server.state is SessionState.ESTABLISHED
    assert result.server.take_datagrams() == []
    # The alert's number was authenticated and taken: a replay of it is dropped.
    assert result.server.receive_datagram(warning, NOW) == [RecordsDropped(DropReason.REPLAY)]
    assert result.server.receive_datagram(seal_one(result.client, b"still here"), NOW) == [
        ApplicationData(b"still here")
    ]


def test_a_malformed_protected_alert_fails_the_session() -> None:
    result = handshake_pair()
    alert = protection_of(result.client).seal(ContentType.alert, b"\x02")
    assert result.server.receive_datagram(alert, NOW) == [
        ConnectionFailed("the peer sent a malformed alert")
    ]
    assert result.server.state is SessionState.FAILED


# -- 8. a lost final flight ---------------------------------------------------------------------


def _up_to_the_servers_final_flight(
    policy: RetransmitPolicy | None = None,
) -> tuple[InMemoryHandshake, list[bytes]]:
    """Run the handshake until the server completes; return the final flight it made (lost)."""
    result = begin_pair(policy=policy)
    carry(result.server.take_datagrams(), result.client)
    result.server_events += carry(result.client.take_datagrams(), result.server)
    assert result.server.state is SessionState.ESTABLISHED
    assert result.server.openssl_released
    lost = result.server.take_datagrams()
    assert len(lost) == 1
    assert result.client.state is SessionState.HANDSHAKING
    return result, lost


def test_a_released_server_resends_its_lost_final_flight() -> None:
    result, lost = _up_to_the_servers_final_flight()
    client, server = result.client, result.server
    deadline = client.timer_deadline
    assert deadline is not None
    assert client.handle_timer(deadline) == [Retransmitted(1, 1)]
    (retransmission,) = client.take_datagrams()
    assert [(r.content_type, r.epoch) for r in parse_records(retransmission)] == [
        (ContentType.handshake, 0),
        (20, 0),  # ChangeCipherSpec
        (ContentType.handshake, 1),  # Finished
    ]
    assert server.receive_datagram(retransmission, deadline) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    assert server.take_datagrams() == lost  # the saved final flight, byte for byte

    assert client.receive_datagram(lost[0], deadline) == [
        HandshakeComplete(GCM, "DTLSv1.2", resumed=False)
    ]
    assert client.state is SessionState.ESTABLISHED
    assert client.openssl_released
    assert server.receive_datagram(seal_one(client, b"made it"), deadline) == [
        ApplicationData(b"made it")
    ]
    assert client.receive_datagram(seal_one(server, b"so did I"), deadline) == [
        ApplicationData(b"so did I")
    ]
    # Authentic data proved the client finished: a late retransmission gets no resend.
    assert server.receive_datagram(retransmission, deadline) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    assert server.take_datagrams() == []


def test_final_flight_resends_are_bounded_by_the_policy() -> None:
    policy = RetransmitPolicy(max_retransmissions=3)
    result, lost = _up_to_the_servers_final_flight(policy)
    deadline = result.client.timer_deadline
    assert deadline is not None
    result.client.handle_timer(deadline)
    (retransmission,) = result.client.take_datagrams()
    resent: list[list[bytes]] = []
    for _ in range(5):
        result.server.receive_datagram(retransmission, deadline)
        resent.append(result.server.take_datagrams())
    assert resent == [lost, lost, lost, [], []]
    assert result.server.state is SessionState.ESTABLISHED


def _resumption_contexts() -> tuple[SSL.Context, SSL.Context]:
    server_context = support.server_context(ciphers=GCM)
    configure_session_resumption(
        server_context, enabled=True, lifetime=60.0, session_id_context=b"test_records"
    )
    return server_context, support.client_context(GCM)


def _begin_resumed() -> InMemoryHandshake:
    """A full handshake (both released), then a second one resuming its session, begun."""
    server_context, client_context = _resumption_contexts()
    first = support.exchange(begin_pair(server_ssl=server_context, client_ssl=client_context))
    assert first.client.openssl_released and first.server.openssl_released
    saved = first.client.ssl_session
    assert saved is not None
    return begin_pair(server_ssl=server_context, client_ssl=client_context, resume=saved)


def test_a_released_client_resends_its_lost_final_flight_after_resumption() -> None:
    """In an abbreviated handshake the client finishes second; its CCS + Finished get lost."""
    result = _begin_resumed()
    server_flight = result.server.take_datagrams()
    assert carry(server_flight, result.client) == [HandshakeComplete(GCM, "DTLSv1.2", True)]
    assert result.client.openssl_released
    lost = result.client.take_datagrams()
    assert len(lost) == 1

    deadline = result.server.timer_deadline
    assert deadline is not None
    assert result.server.handle_timer(deadline) == [Retransmitted(1, 1)]
    retransmission = result.server.take_datagrams()
    assert carry(retransmission, result.client, deadline) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    assert result.client.take_datagrams() == lost
    assert carry(lost, result.server, deadline) == [HandshakeComplete(GCM, "DTLSv1.2", True)]
    assert result.server.openssl_released
    assert result.server.resumed is result.client.resumed is True
    assert result.server.receive_datagram(seal_one(result.client, b"resumed"), deadline) == [
        ApplicationData(b"resumed")
    ]


# -- 9. renegotiation -----------------------------------------------------------------------------


#: A ClientHello header (type 1, length 4, message_seq 2, unfragmented) and four bytes.
RENEGOTIATION_HELLO = bytes([1, 0, 0, 4, 0, 2, 0, 0, 0, 0, 0, 4]) + b"\x01\x02\x03\x04"


def test_a_renegotiation_attempt_is_answered_with_no_renegotiation() -> None:
    result = handshake_pair()
    attempt = protection_of(result.client).seal(ContentType.handshake, RENEGOTIATION_HELLO)
    assert result.server.receive_datagram(attempt, NOW) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    assert result.server.state is SessionState.ESTABLISHED
    (answer,) = result.server.take_datagrams()
    assert plaintext_of_alert(result.client, answer) == b"\x01\x64"  # warning, no_renegotiation
    # The released client takes the warning in its stride.
    assert result.client.receive_datagram(answer, NOW) == []
    assert result.client.state is SessionState.ESTABLISHED
    assert result.server.receive_datagram(seal_one(result.client, b"after"), NOW) == [
        ApplicationData(b"after")
    ]


def test_a_replayed_renegotiation_attempt_is_answered_a_bounded_number_of_times() -> None:
    result = handshake_pair()
    attempt = protection_of(result.client).seal(ContentType.handshake, RENEGOTIATION_HELLO)
    answers = []
    for _ in range(10):  # the same record, replayed
        result.server.receive_datagram(attempt, NOW)
        answers.append(len(result.server.take_datagrams()))
    limit = RetransmitPolicy().max_retransmissions
    assert answers == [1] * limit + [0] * (10 - limit)
    assert result.server.state is SessionState.ESTABLISHED


def test_openssl_renegotiating_with_a_released_server_gets_refused() -> None:
    """A real renegotiation ClientHello from OpenSSL; OpenSSL's answer is a real fatal alert."""
    context = SSL.Context(SSL.DTLS_CLIENT_METHOD)  # like client_context, renegotiation allowed
    context.set_min_proto_version(DTLS_1_2)
    context.set_max_proto_version(DTLS_1_2)
    context.set_options(SSL.OP_NO_QUERY_MTU)
    context.set_cipher_list(GCM.encode("ascii"))
    install_client_psk(context)
    result = support.exchange(begin_pair(client_ssl=context, client_releases=False))
    assert support.established(result.client, result.server)
    connection = result.client.connection
    assert connection is not None
    assert connection.renegotiate() is True
    with pytest.raises(SSL.WantReadError):
        connection.do_handshake()
    hello = drain_write_bio(connection)
    assert [(r.content_type, r.epoch) for r in parse_records(hello)] == [(ContentType.handshake, 1)]

    assert result.server.receive_datagram(hello, NOW) == [
        RecordsDropped(DropReason.HANDSHAKE_RETRANSMISSION)
    ]
    (refusal,) = result.server.take_datagrams()
    connection.bio_write(refusal)
    with pytest.raises(SSL.Error, match="no renegotiation"):
        connection.do_handshake()
    # OpenSSL gives up with an encrypted fatal handshake_failure, which our layer reads.
    fatal = drain_write_bio(connection)
    assert result.server.receive_datagram(fatal, NOW) == [
        ConnectionFailed("the peer sent the fatal alert handshake_failure (40)")
    ]
    assert result.server.state is SessionState.FAILED


# -- 10. application data that overtakes the Finished --------------------------------------------


def test_data_that_overtakes_the_clients_finished_reaches_a_released_server() -> None:
    """Only an abbreviated handshake lets the client finish first, so this one resumes."""
    result = _begin_resumed()
    assert carry(result.server.take_datagrams(), result.client) == [
        HandshakeComplete(GCM, "DTLSv1.2", True)
    ]
    client_flight = result.client.take_datagrams()  # CCS + Finished
    early = seal_one(result.client, b"overtook the Finished")
    assert result.server.receive_datagram(early, NOW) == [HandshakeProgress()]
    assert result.server.state is SessionState.HANDSHAKING
    assert carry(client_flight, result.server) == [HandshakeComplete(GCM, "DTLSv1.2", True)]
    assert result.server.openssl_released
    assert result.server.take_early_data() == [b"overtook the Finished"]
    assert result.server.take_early_data() == []
    assert result.server.receive_datagram(early, NOW) == [RecordsDropped(DropReason.REPLAY)]
    assert result.server.receive_datagram(seal_one(result.client, b"then this"), NOW) == [
        ApplicationData(b"then this")
    ]


def _servers_data_overtakes_its_final_flight(
    ciphers: str, *, client_releases: bool
) -> tuple[InMemoryHandshake, bytes, list[bytes]]:
    """A full handshake where the server's first data reaches the client before its Finished.

    Returns the handshake (client still handshaking), the early datagram and the final flight.
    """
    result = begin_pair(ciphers, client_releases=client_releases)
    carry(result.server.take_datagrams(), result.client)
    carry(result.client.take_datagrams(), result.server)
    assert result.server.state is SessionState.ESTABLISHED
    final_flight = result.server.take_datagrams()
    early = seal_one(result.server, b"server speaks first")
    assert result.client.receive_datagram(early, NOW) == [HandshakeProgress()]
    return result, early, final_flight


def test_data_that_overtakes_the_servers_finished_reaches_a_released_client() -> None:
    result, early, final_flight = _servers_data_overtakes_its_final_flight(
        GCM, client_releases=True
    )
    assert carry(final_flight, result.client) == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.client.openssl_released
    assert result.client.take_early_data() == [b"server speaks first"]
    assert result.client.take_early_data() == []
    assert result.client.receive_datagram(early, NOW) == [RecordsDropped(DropReason.REPLAY)]
    assert result.client.receive_datagram(seal_one(result.server, b"second"), NOW) == [
        ApplicationData(b"second")
    ]


def test_forged_records_before_the_finished_neither_block_release_nor_leak_in() -> None:
    """Epoch-1 records of chance bytes, some reusing the genuine record's number, are ignored.

    Once the client's own Finished proved its keys, it checks the server's early records on
    arrival: the forgeries are dropped (and reported), the genuine record is kept.
    """
    result, early, final_flight = _servers_data_overtakes_its_final_flight(
        GCM, client_releases=True
    )
    # The genuine early record went in first; send it again after 20 forgeries so it is kept.
    for index in range(20):
        forged = support.garbage_record(epoch=1, sequence=1 + index % 3, seed=index)
        assert result.client.receive_datagram(forged, NOW) == [
            RecordsDropped(DropReason.AUTHENTICATION)
        ]
    assert result.client.receive_datagram(early, NOW) == [RecordsDropped(DropReason.REPLAY)]
    assert carry(final_flight, result.client) == [HandshakeComplete(GCM, "DTLSv1.2")]
    assert result.client.openssl_released
    assert result.client.take_early_data() == [b"server speaks first"]
    assert result.client.receive_datagram(seal_one(result.server, b"second"), NOW) == [
        ApplicationData(b"second")
    ]


@pytest.mark.parametrize(
    ("ciphers", "client_releases"), [(GCM, False), (CBC, True)], ids=["kept-aead", "cbc"]
)
def test_data_that_overtakes_the_finished_is_not_stranded_when_openssl_is_kept(
    ciphers: str, client_releases: bool
) -> None:
    result, _, final_flight = _servers_data_overtakes_its_final_flight(
        ciphers, client_releases=client_releases
    )
    completion = carry(final_flight, result.client)
    assert result.client.state is SessionState.ESTABLISHED
    assert result.client.openssl_released is False
    second = result.client.receive_datagram(seal_one(result.server, b"second"), NOW)
    # Wherever the early message surfaces (early data, or events), it comes once, before
    # "second", and the datagram carrying "second" delivers "second".
    delivered = result.client.take_early_data() + [
        event.data for event in completion + second if isinstance(event, ApplicationData)
    ]
    assert delivered == [b"server speaks first", b"second"]
    assert ApplicationData(b"second") in second


# -- 11. the end of the sequence numbers ---------------------------------------------------------


def test_the_last_sequence_number_is_used_then_send_fails() -> None:
    result = handshake_pair()
    client, server = result.client, result.server
    protection_of(client).next_sequence = MAX_SEQUENCE
    last = seal_one(client, b"the last record of the epoch")
    assert only_record(last).sequence_number == 2**48 - 1
    assert server.receive_datagram(last, NOW) == [ApplicationData(b"the last record of the epoch")]

    with pytest.raises(OverflowError, match=r"the epoch's 2\^48 record sequence numbers are used"):
        client.send(b"one too many")
    assert client.state is SessionState.FAILED
    assert client.failure_reason == "the epoch's 2^48 record sequence numbers are used up"
    assert client.take_datagrams() == []
    client.close()  # neither raises nor says goodbye: a failed session cannot
    assert client.take_datagrams() == []
    assert client.state is SessionState.FAILED


def test_an_exhausted_session_set_straight_to_2_48_fails_to_send() -> None:
    result = handshake_pair()
    protection_of(result.server).next_sequence = 2**48
    with pytest.raises(OverflowError):
        result.server.send(b"x")
    assert result.server.state is SessionState.FAILED
    result.server.close()
    assert result.server.take_datagrams() == []


def test_an_exhausted_session_still_hears_close_notify_and_stays_silent() -> None:
    result = handshake_pair()
    protection_of(result.server).next_sequence = 2**48
    result.client.close()
    (goodbye,) = result.client.take_datagrams()
    assert result.server.receive_datagram(goodbye, NOW) == [RemoteClosed()]
    assert result.server.state is SessionState.CLOSED
    assert result.server.take_datagrams() == []  # no number left for our close_notify


# -- 12. the replay window ------------------------------------------------------------------------


def test_replay_window_starts_empty_and_remembers_what_is_marked() -> None:
    window = ReplayWindow()
    assert [window.seen(n) for n in (0, 1, 2**48 - 1)] == [False, False, False]
    window.mark(5)
    assert [window.seen(n) for n in range(7)] == [False, False, False, False, False, True, False]
    window.mark(2)
    assert [window.seen(n) for n in range(7)] == [False, False, True, False, False, True, False]
    window.mark(3)  # marking below the highest does not move the window
    assert window.seen(6) is False
    assert [window.seen(n) for n in range(2, 6)] == [True, True, False, True]


def test_replay_window_slides_and_forgets_beyond_64() -> None:
    window = ReplayWindow()
    window.mark(10)
    window.mark(73)  # 63 ahead: 10 is still inside the window, exactly at its edge
    assert window.seen(10) is True
    assert [window.seen(n) for n in range(11, 73)] == [False] * 62
    assert window.seen(9) is True  # 64 behind: too old to tell, so "seen"
    window.mark(74)  # now 10 is 64 behind: outside, reported as seen because too old
    assert window.seen(10) is True
    assert window.seen(11) is False
    assert window.seen(73) is True


def test_replay_window_a_jump_of_64_or_more_leaves_only_the_new_top() -> None:
    for jump in (64, 65, 1_000, 2**47):
        window = ReplayWindow()
        for n in range(100, 164):
            window.mark(n)  # a full window
        window.mark(163 + jump)
        assert window.seen(163 + jump) is True
        # Nothing in the new window is marked except its top.
        lowest_in_window = 163 + jump - 63
        assert [window.seen(n) for n in range(lowest_in_window, 163 + jump)] == [False] * 63, jump
        # Below the window: too old.
        assert window.seen(lowest_in_window - 1) is True
        assert window.seen(163) is True


def test_replay_window_marking_far_below_the_window_changes_nothing() -> None:
    window = ReplayWindow()
    window.mark(1_000)
    window.mark(900)  # 100 behind
    assert window.seen(1_001) is False
    assert [window.seen(n) for n in range(937, 1_000)] == [False] * 63
    assert window.seen(1_000) is True


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(0, 400), max_size=60), st.lists(st.integers(0, 500), max_size=30))
def test_replay_window_agrees_with_a_plain_model(marks: list[int], probes: list[int]) -> None:
    """RFC 6347 §4.1.2.6 as a set: seen = at or below the top and (too old or marked)."""
    window = ReplayWindow()
    marked: set[int] = set()
    highest = -1
    for number in marks:
        if window.seen(number) is False:
            window.mark(number)
            marked.add(number)
            highest = max(highest, number)
        for probe in [*probes, number]:
            expected = probe <= highest and (highest - probe >= 64 or probe in marked)
            assert window.seen(probe) is expected, (marks, probe)
