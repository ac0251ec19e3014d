"""The pion Connection ID vector (``tests/vectors/pion_cid_aes128gcm.json``), checked from scratch.

The vector was captured between a pion/dtls client and server (``tests/peers/pion_client/
vector``); its format is in ``tests/vectors/README.md``.  Nothing here uses this project's code
or OpenSSL's record layer: the TLS 1.2 PRF (RFC 5246 section 5), the PSK premaster secret (RFC
4279 section 2), the extended master secret (RFC 7627), the key block, the Finished
``verify_data``, and RFC 9146's record format -- the ``tls12_cid`` header, the section 5.3
additional data and the ``DTLSInnerPlaintext`` -- are all written out below on top of the
``cryptography`` package's HMAC and AES-GCM.  So when these tests pass, the vector is right by
the RFCs, and a record layer that agrees with it agrees with the RFCs and with pion.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VECTOR = Path(__file__).parent / "vectors" / "pion_cid_aes128gcm.json"

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
CONTENT_TLS12_CID = 25
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_SERVER_HELLO = 2
HANDSHAKE_HELLO_VERIFY_REQUEST = 3
HANDSHAKE_CLIENT_KEY_EXCHANGE = 16
HANDSHAKE_FINISHED = 20
EXTENSION_EXTENDED_MASTER_SECRET = 23
EXTENSION_CONNECTION_ID = 54
DTLS_1_2 = b"\xfe\xfd"
#: RFC 9146 section 5.3: eight 0xff bytes where the sequence number used to stand.
SEQ_NUM_PLACEHOLDER = b"\xff" * 8
TO_SERVER = "client_to_server"
TO_CLIENT = "server_to_client"


# -- the vector, parsed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One DTLS record as it was on the wire."""

    direction: str
    content_type: int
    version: bytes
    epoch: int
    sequence: int
    cid: bytes
    fragment: bytes


@dataclass(frozen=True)
class Vector:
    psk: bytes
    psk_identity: bytes
    cipher_suite_id: int
    client_random: bytes
    server_random: bytes
    master_secret: bytes
    #: The CID the client asked for: it is in the records the *server* sends.
    client_cid: bytes
    #: The CID the server asked for: it is in the records the *client* sends.
    server_cid: bytes
    client_finished_padding: int
    records: tuple[Record, ...]
    application_data: dict[str, list[str]]

    def cid_in_records(self, direction: str) -> bytes:
        return self.server_cid if direction == TO_SERVER else self.client_cid


def split_records(direction: str, datagram: bytes, cid_length: int) -> list[Record]:
    """A datagram's records; a tls12_cid header has ``cid_length`` CID bytes before the length."""
    records = []
    while datagram:
        content_type, version, epoch = datagram[0], datagram[1:3], datagram[3:5]
        sequence = int.from_bytes(datagram[5:11], "big")
        cid_end = 11 + (cid_length if content_type == CONTENT_TLS12_CID else 0)
        cid = datagram[11:cid_end]
        (length,) = struct.unpack(">H", datagram[cid_end : cid_end + 2])
        fragment = datagram[cid_end + 2 : cid_end + 2 + length]
        assert len(fragment) == length, "a record runs past the end of its datagram"
        records.append(
            Record(direction, content_type, version, int.from_bytes(epoch), sequence, cid, fragment)
        )
        datagram = datagram[cid_end + 2 + length :]
    return records


def load_vector() -> Vector:
    raw = json.loads(VECTOR.read_text())
    client_cid, server_cid = bytes.fromhex(raw["client_cid"]), bytes.fromhex(raw["server_cid"])
    records: list[Record] = []
    for datagram in raw["datagrams"]:
        direction = datagram["direction"]
        cid_length = len(server_cid if direction == TO_SERVER else client_cid)
        records += split_records(direction, bytes.fromhex(datagram["hex"]), cid_length)
    return Vector(
        psk=bytes.fromhex(raw["psk"]),
        psk_identity=raw["psk_identity"].encode(),
        cipher_suite_id=raw["cipher_suite_id"],
        client_random=bytes.fromhex(raw["client_random"]),
        server_random=bytes.fromhex(raw["server_random"]),
        master_secret=bytes.fromhex(raw["master_secret"]),
        client_cid=client_cid,
        server_cid=server_cid,
        client_finished_padding=raw["client_finished_padding"],
        records=tuple(records),
        application_data=raw["application_data"],
    )


# -- TLS 1.2 key schedule (RFC 5246 section 5, RFC 4279, RFC 7627) -------------------------------


def prf(secret: bytes, label: bytes, seed: bytes, size: int) -> bytes:
    """TLS 1.2's PRF with SHA-256: P_SHA256(secret, label + seed), cut to ``size`` bytes."""
    seed = label + seed
    output, a = b"", seed
    while len(output) < size:
        a = hmac.digest(secret, a, "sha256")
        output += hmac.digest(secret, a + seed, "sha256")
    return output[:size]


def psk_premaster_secret(psk: bytes) -> bytes:
    """RFC 4279 section 2, plain PSK: uint16 N, N zero bytes, uint16 N, the key."""
    length = struct.pack(">H", len(psk))
    return length + bytes(len(psk)) + length + psk


@dataclass(frozen=True)
class GcmKeys:
    """RFC 5288 key block for an AES-128-GCM suite: no MAC keys, 4-byte implicit IVs."""

    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes

    @classmethod
    def expand(cls, master: bytes, client_random: bytes, server_random: bytes) -> GcmKeys:
        block = prf(master, b"key expansion", server_random + client_random, 40)
        return cls(block[0:16], block[16:32], block[32:36], block[36:40])

    def for_direction(self, direction: str) -> tuple[bytes, bytes]:
        if direction == TO_SERVER:
            return self.client_key, self.client_iv
        return self.server_key, self.server_iv


# -- RFC 9146 record protection ------------------------------------------------------------------


def cid_additional_data(record: Record, inner_length: int) -> bytes:
    """RFC 9146 section 5.3: the AEAD additional data of a tls12_cid record."""
    return (
        SEQ_NUM_PLACEHOLDER
        + bytes([CONTENT_TLS12_CID, len(record.cid), CONTENT_TLS12_CID])
        + record.version
        + struct.pack(">H", record.epoch)
        + record.sequence.to_bytes(6, "big")
        + record.cid
        + struct.pack(">H", inner_length)
    )


def decrypt_cid_record(keys: GcmKeys, record: Record) -> bytes:
    """The DTLSInnerPlaintext of a tls12_cid AES-GCM record (RFC 5288: 8-byte explicit nonce)."""
    key, implicit_iv = keys.for_direction(record.direction)
    explicit_nonce, sealed = record.fragment[:8], record.fragment[8:]
    inner_length = len(sealed) - 16
    return AESGCM(key).decrypt(
        implicit_iv + explicit_nonce, sealed, cid_additional_data(record, inner_length)
    )


def parse_inner_plaintext(inner: bytes) -> tuple[int, bytes, int]:
    """(real content type, content, padding length) of a DTLSInnerPlaintext (RFC 9146 sec. 4)."""
    stripped = inner.rstrip(b"\x00")
    assert stripped, "an inner plaintext of zeros only has no content type"
    return stripped[-1], stripped[:-1], len(inner) - len(stripped)


# -- handshake messages ---------------------------------------------------------------------------


def handshake_messages(fragment: bytes) -> list[bytes]:
    """Whole handshake messages (12-byte DTLS header included) in a record's fragment."""
    messages = []
    while fragment:
        length = int.from_bytes(fragment[1:4], "big")
        fragment_length = int.from_bytes(fragment[9:12], "big")
        assert fragment_length == length, "the vector has no fragmented handshake messages"
        messages.append(fragment[: 12 + length])
        fragment = fragment[12 + length :]
    return messages


def hello_extensions(message: bytes) -> dict[int, bytes]:
    """Extensions of a DTLS ClientHello or ServerHello (with its 12-byte header)."""
    body, offset = message[12:], 2 + 32
    session_id_length = body[offset]
    offset += 1 + session_id_length
    if message[0] == HANDSHAKE_CLIENT_HELLO:
        offset += 1 + body[offset]  # cookie
        (suites_length,) = struct.unpack(">H", body[offset : offset + 2])
        offset += 2 + suites_length
        offset += 1 + body[offset]  # compression methods
    else:
        offset += 2 + 1  # cipher suite, compression method
    extensions: dict[int, bytes] = {}
    (total,) = struct.unpack(">H", body[offset : offset + 2])
    data = body[offset + 2 : offset + 2 + total]
    while data:
        kind, length = struct.unpack(">HH", data[:4])
        extensions[kind] = data[4 : 4 + length]
        data = data[4 + length :]
    return extensions


@dataclass(frozen=True)
class Handshake:
    """The handshake as the transcript hash sees it, and the decrypted Finished messages."""

    #: RFC 6347 section 4.2.1: the first ClientHello and the HelloVerifyRequest are left out.
    transcript: list[bytes]
    client_finished: bytes
    server_finished: bytes
    client_finished_padding: int


def replay_handshake(vector: Vector, keys: GcmKeys) -> Handshake:
    transcript: list[bytes] = []
    seen: set[tuple[str, int]] = set()
    finished: dict[str, tuple[bytes, int]] = {}
    for record in vector.records:
        if record.content_type == CONTENT_HANDSHAKE and record.epoch == 0:
            for message in handshake_messages(record.fragment):
                message_seq = int.from_bytes(message[4:6], "big")
                if (record.direction, message_seq) in seen:
                    continue  # a retransmission
                seen.add((record.direction, message_seq))
                if message[0] == HANDSHAKE_HELLO_VERIFY_REQUEST:
                    transcript.clear()  # drops the first ClientHello too
                else:
                    transcript.append(message)
        elif record.content_type == CONTENT_TLS12_CID and record.direction not in finished:
            real_type, content, padding = parse_inner_plaintext(decrypt_cid_record(keys, record))
            assert real_type == CONTENT_HANDSHAKE, "the first protected record is the Finished"
            finished[record.direction] = (content, padding)
    client_finished, padding = finished[TO_SERVER]
    server_finished, _ = finished[TO_CLIENT]
    return Handshake(transcript, client_finished, server_finished, padding)


def find_message(transcript: list[bytes], message_type: int) -> bytes:
    (message,) = [m for m in transcript if m[0] == message_type]
    return message


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vector() -> Vector:
    return load_vector()


@pytest.fixture(scope="module")
def keys(vector: Vector) -> GcmKeys:
    return GcmKeys.expand(vector.master_secret, vector.client_random, vector.server_random)


@pytest.fixture(scope="module")
def handshake(vector: Vector, keys: GcmKeys) -> Handshake:
    return replay_handshake(vector, keys)


def test_the_hellos_negotiate_the_suite_and_both_cids(vector: Vector, handshake: Handshake) -> None:
    client_hello = find_message(handshake.transcript, HANDSHAKE_CLIENT_HELLO)
    server_hello = find_message(handshake.transcript, HANDSHAKE_SERVER_HELLO)
    assert client_hello[14:46] == vector.client_random
    assert server_hello[14:46] == vector.server_random
    session_id_length = server_hello[46]
    suite_offset = 47 + session_id_length
    assert int.from_bytes(server_hello[suite_offset : suite_offset + 2]) == vector.cipher_suite_id
    assert vector.cipher_suite_id == 0x00A8  # TLS_PSK_WITH_AES_128_GCM_SHA256
    # Each side's connection_id extension names the CID it wants to *receive* (opaque<0..255>).
    client_extension = hello_extensions(client_hello)[EXTENSION_CONNECTION_ID]
    server_extension = hello_extensions(server_hello)[EXTENSION_CONNECTION_ID]
    assert client_extension == bytes([len(vector.client_cid)]) + vector.client_cid
    assert server_extension == bytes([len(vector.server_cid)]) + vector.server_cid
    assert vector.client_cid and vector.server_cid
    assert len(vector.client_cid) != len(vector.server_cid)  # so a swap cannot pass


def test_the_master_secret_comes_from_the_psk(vector: Vector, handshake: Handshake) -> None:
    """Recomputed from the PSK, so the key log line and the handshake really belong together."""
    client_key_exchange = find_message(handshake.transcript, HANDSHAKE_CLIENT_KEY_EXCHANGE)
    identity_length = int.from_bytes(client_key_exchange[12:14])
    assert client_key_exchange[14 : 14 + identity_length] == vector.psk_identity
    premaster = psk_premaster_secret(vector.psk)
    client_hello = find_message(handshake.transcript, HANDSHAKE_CLIENT_HELLO)
    server_hello = find_message(handshake.transcript, HANDSHAKE_SERVER_HELLO)
    if EXTENSION_EXTENDED_MASTER_SECRET in hello_extensions(server_hello):
        assert EXTENSION_EXTENDED_MASTER_SECRET in hello_extensions(client_hello)
        end = handshake.transcript.index(client_key_exchange) + 1
        session_hash = hashlib.sha256(b"".join(handshake.transcript[:end])).digest()
        master = prf(premaster, b"extended master secret", session_hash, 48)
    else:
        master = prf(premaster, b"master secret", vector.client_random + vector.server_random, 48)
    assert master == vector.master_secret


def test_both_finished_messages_verify(vector: Vector, handshake: Handshake) -> None:
    """The Finished records are tls12_cid records (RFC 9146 section 7); verify_data holds."""
    transcript = b"".join(handshake.transcript)
    expected_client = prf(
        vector.master_secret, b"client finished", hashlib.sha256(transcript).digest(), 12
    )
    assert handshake.client_finished[0] == HANDSHAKE_FINISHED
    assert handshake.client_finished[12:] == expected_client
    transcript += handshake.client_finished
    expected_server = prf(
        vector.master_secret, b"server finished", hashlib.sha256(transcript).digest(), 12
    )
    assert handshake.server_finished[0] == HANDSHAKE_FINISHED
    assert handshake.server_finished[12:] == expected_server


def test_the_client_finished_carries_zero_padding(vector: Vector, handshake: Handshake) -> None:
    assert vector.client_finished_padding > 0
    assert handshake.client_finished_padding == vector.client_finished_padding


def test_every_protected_record_is_a_cid_record_that_decrypts(
    vector: Vector, keys: GcmKeys
) -> None:
    """Epoch 1 is all tls12_cid, each direction with the other side's CID; the plaintexts match."""
    received: dict[str, list[str]] = {TO_SERVER: [], TO_CLIENT: []}
    alerts: dict[str, list[bytes]] = {TO_SERVER: [], TO_CLIENT: []}
    protected = [record for record in vector.records if record.epoch == 1]
    assert protected
    for record in protected:
        assert record.content_type == CONTENT_TLS12_CID
        assert record.version == DTLS_1_2
        assert record.cid == vector.cid_in_records(record.direction)
        real_type, content, _ = parse_inner_plaintext(decrypt_cid_record(keys, record))
        if real_type == CONTENT_APPLICATION_DATA:
            received[record.direction].append(content.decode())
        elif real_type == CONTENT_ALERT:
            alerts[record.direction].append(content)
        else:
            assert real_type == CONTENT_HANDSHAKE
    assert received == vector.application_data
    assert alerts[TO_SERVER] == [b"\x01\x00"]  # the client's close_notify
    # ChangeCipherSpec stays a plaintext epoch-0 record (RFC 9146 section 7).
    assert any(record.content_type == CONTENT_CHANGE_CIPHER_SPEC for record in vector.records)


@pytest.mark.parametrize("change", ["cid", "sequence", "epoch", "length"])
def test_the_additional_data_binds_the_header(vector: Vector, keys: GcmKeys, change: str) -> None:
    """Any header field changed, or the inner length misstated, and the tag no longer matches."""
    record = next(r for r in vector.records if r.content_type == CONTENT_TLS12_CID)
    key, implicit_iv = keys.for_direction(record.direction)
    inner_length = len(record.fragment) - 8 - 16
    if change == "cid":
        record = replace(record, cid=bytes([record.cid[0] ^ 1]) + record.cid[1:])
    elif change == "sequence":
        record = replace(record, sequence=record.sequence + 1)
    elif change == "epoch":
        record = replace(record, epoch=record.epoch + 1)
    else:
        inner_length += 1
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(
            implicit_iv + record.fragment[:8],
            record.fragment[8:],
            cid_additional_data(record, inner_length),
        )


def test_the_pre_rfc_additional_data_does_not_verify(vector: Vector, keys: GcmKeys) -> None:
    """The draft-era AAD (RFC 6347's 13 bytes with the CID appended) is not what pion sends."""
    record = next(r for r in vector.records if r.content_type == CONTENT_TLS12_CID)
    key, implicit_iv = keys.for_direction(record.direction)
    inner_length = len(record.fragment) - 8 - 16
    draft = (
        struct.pack(">H", record.epoch)
        + record.sequence.to_bytes(6, "big")
        + bytes([CONTENT_TLS12_CID])
        + record.version
        + record.cid
        + bytes([len(record.cid)])
        + struct.pack(">H", inner_length)
    )
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(implicit_iv + record.fragment[:8], record.fragment[8:], draft)
