"""The two parts of a handshake that live beside the ``HandshakeDriver``, through their own
small APIs: the budget of the peer's kept records (``KeptRecords``, ``_kept_records.py``) and
the RFC 9146 connection-ID negotiation and Finished translation (``CidHandshake``,
``_cid_handshake.py``).

The whole handshakes that use them are tested in ``test_handshake_forgery.py`` and
``test_connection_ids.py``; these tests pin each part's own rules with known bytes and keys.
"""

from __future__ import annotations

import support
from OpenSSL import SSL

from trio_dtls_server._cid_handshake import CidHandshake, predict_suite
from trio_dtls_server._codes import DropReason
from trio_dtls_server._kept_records import HANDSHAKE_KEPT_BUDGET, KeptRecords
from trio_dtls_server._records import RecordProtection, aead_suite, protection_from_key_block
from trio_dtls_server._session import DTLSSession, RetransmitPolicy
from trio_dtls_server._wire import (
    CidRecord,
    ContentType,
    Record,
    encode_plaintext_alert,
    first_content_type,
    parse_records,
    parse_records_with_cid,
)

GCM = "PSK-AES128-GCM-SHA256"
CBC = "PSK-AES128-CBC-SHA256"
CLIENT_CID = b"\xc1\xc2"  # what the client asks for on the server's records
SERVER_CID = b"\x51\x52\x53\x54"  # what the server issues for the client's records


def junk(size: int, seed: int) -> bytes:
    """A protected-looking record of ``size`` bytes in all (contents never read here)."""
    return support.garbage_record(
        content_type=ContentType.handshake, epoch=1, sequence=seed, length=size - 13, seed=seed
    )


def record(raw: bytes) -> Record:
    (parsed,) = parse_records(raw)
    return parsed


def connection(ciphers: str = GCM) -> SSL.Connection:
    """A server connection that never handshakes (the parts only read it for secrets)."""
    return SSL.Connection(support.server_context(None, ciphers), None)


# -- KeptRecords ------------------------------------------------------------------------------


def test_the_oldest_held_record_makes_room_when_the_budget_is_full() -> None:
    kept = KeptRecords(is_server=True)
    quarter = HANDSHAKE_KEPT_BUDGET // 4
    records = [junk(quarter, seed) for seed in range(4)]
    assert [kept.hold(raw) for raw in records] == [None] * 4
    assert kept.kept_bytes == HANDSHAKE_KEPT_BUDGET
    newest = junk(quarter + 1, 9)
    assert kept.hold(newest) is DropReason.OVER_BUDGET  # something was dropped to make room
    assert kept.held == [*records[2:], newest]  # the two oldest went: the newest is kept
    assert kept.kept_bytes == sum(map(len, kept.held))


def test_a_copy_of_a_kept_record_counts_as_a_replay() -> None:
    kept = KeptRecords(is_server=True)
    finished = junk(64, 1)
    data = junk(80, 2)
    assert kept.hold(finished) is None
    assert kept.keep_early(record(data), connection(), own_protected=[]) is None
    for raw in (finished, data):
        assert kept.hold(raw) is DropReason.REPLAY
        assert kept.keep_early(record(raw), connection(), own_protected=[]) is DropReason.REPLAY
    assert (kept.held, kept.early, kept.kept_bytes) == ([finished], [data], 144)


def test_early_records_are_never_evicted_and_an_oversized_record_is_refused() -> None:
    kept = KeptRecords(is_server=False)
    half = HANDSHAKE_KEPT_BUDGET // 2
    early = [junk(half, seed) for seed in range(2)]
    assert [kept.keep_early(record(raw), connection(), own_protected=[]) for raw in early] == [
        None,
        None,
    ]
    assert kept.keep_early(record(junk(20, 7)), connection(), []) is DropReason.OVER_BUDGET
    assert kept.hold(junk(20, 8)) is DropReason.OVER_BUDGET  # checked data stays
    assert kept.hold(junk(HANDSHAKE_KEPT_BUDGET + 1, 9)) is DropReason.OVER_BUDGET
    assert kept.early == early and kept.held == []
    assert kept.kept_bytes == HANDSHAKE_KEPT_BUDGET


def test_taking_the_held_records_frees_their_bytes_and_clear_forgets_all() -> None:
    kept = KeptRecords(is_server=True)
    held = [junk(50, 1), junk(60, 2)]
    for raw in held:
        kept.hold(raw)
    kept.keep_early(record(junk(70, 3)), connection(), [])
    early = kept.early
    assert kept.take_held() == held  # oldest first
    assert (kept.held, kept.kept_bytes) == ([], 70)
    kept.clear()
    assert (kept.held, kept.early, kept.kept_bytes) == ([], [], 0)
    assert len(early) == 1  # what was handed out is not emptied under its new owner


# -- CidHandshake -------------------------------------------------------------------------------


def key_pair(ciphers: str = GCM) -> tuple[RecordProtection, RecordProtection]:
    """The client's and the server's epoch-1 keys from one made-up key exchange."""
    suite = aead_suite(ciphers)
    assert suite is not None
    secrets = {
        "master_secret": bytes(range(48)),
        "client_random": b"c" * 32,
        "server_random": b"s" * 32,
    }
    pair = [
        protection_from_key_block(suite, is_server=side, epoch=1, next_sequence=0, **secrets)
        for side in (False, True)
    ]
    client, server = pair
    assert client is not None and server is not None
    return client, server


def negotiated(
    client_keys: RecordProtection | None = None, server_keys: RecordProtection | None = None
) -> tuple[CidHandshake, CidHandshake]:
    """Both sides' CID parts after the callbacks ran as OpenSSL runs them."""
    client = CidHandshake(is_server=False, own_cid=CLIENT_CID, keys=client_keys)
    server = CidHandshake(is_server=True, own_cid=SERVER_CID, predicted_suite=GCM, keys=server_keys)
    offer = client.to_offer()
    assert offer == CLIENT_CID
    assert server.received(offer)
    answer = server.to_answer(connection())
    assert answer == SERVER_CID
    assert client.received(answer)
    return client, server


def test_the_callbacks_answers_settle_both_cids() -> None:
    client, server = negotiated()
    assert (client.connection_id, client.peer_connection_id) == (CLIENT_CID, SERVER_CID)
    assert (server.connection_id, server.peer_connection_id) == (SERVER_CID, CLIENT_CID)
    assert (client.read_cid, client.write_cid) == (CLIENT_CID, SERVER_CID)
    assert server.to_offer() is None  # a server offers nothing


def test_a_server_answers_only_an_offer_for_a_suite_its_record_layer_protects() -> None:
    silent = CidHandshake(is_server=True, own_cid=SERVER_CID, predicted_suite=GCM)
    assert silent.to_answer(connection()) is None  # the client offered nothing
    for server in (
        CidHandshake(is_server=True, own_cid=SERVER_CID, predicted_suite=CBC),
        CidHandshake(is_server=True, own_cid=SERVER_CID, predicted_suite=None),
        CidHandshake(
            is_server=True, own_cid=SERVER_CID, predicted_suite=GCM, release_openssl=False
        ),
    ):
        assert server.received(CLIENT_CID)
        assert server.to_answer(connection()) is None
        assert server.connection_id is server.peer_connection_id is None
        assert (server.read_cid, server.write_cid) == (b"", b"")


def test_the_suite_is_predicted_as_openssl_chooses_it() -> None:
    hello = DTLSSession.client(
        support.client_context(f"{CBC}:{GCM}"),
        now=0.0,
        mtu=1400,
        policy=RetransmitPolicy(),
        identity=b"id",
        key=b"k" * 16,
    ).take_datagrams()[0]
    # The server's preference order decides, among the suites the client offers.
    assert predict_suite(connection(f"{GCM}:{CBC}"), hello) == GCM
    assert predict_suite(connection(f"{CBC}:{GCM}"), hello) == CBC
    assert predict_suite(connection(GCM), b"\x16garbage") is None


def test_the_finished_translation_round_trip_with_known_keys() -> None:
    """The client's standard Finished (as OpenSSL writes it) goes out as a ``tls12_cid``
    record with the server's CID, and the server hands OpenSSL the very same standard bytes."""
    client_keys, server_keys = key_pair()
    client, server = negotiated(client_keys, server_keys)
    hello_done = encode_plaintext_alert(2, 40, 3)  # an epoch-0 record: never re-sealed
    standard = client_keys.seal(ContentType.handshake, b"\x14" + b"finished" * 4)
    assert first_content_type(standard) == ContentType.handshake
    out = client.outgoing([hello_done, standard], connection())
    assert out[0] == hello_done
    (cid_record,) = parse_records_with_cid(out[1], len(SERVER_CID))
    assert isinstance(cid_record, CidRecord) and cid_record.cid == SERVER_CID
    assert cid_record.sequence_number == record(standard).sequence_number
    assert server.peer_record_for_openssl(out[1], connection()) == standard


def test_a_cid_finished_that_does_not_open_reaches_openssl_as_a_failing_record() -> None:
    client_keys, server_keys = key_pair()
    client, server = negotiated(client_keys, server_keys)
    standard = client_keys.seal(ContentType.handshake, b"\x14" + b"finished" * 4)
    (cid_raw,) = client.outgoing([standard], connection())
    forged = cid_raw[:-1] + bytes([cid_raw[-1] ^ 1])
    translated = server.peer_record_for_openssl(forged, connection())
    assert translated is not None and translated != standard
    assert first_content_type(translated) == ContentType.handshake
    assert (
        server_keys.decrypt(
            ContentType.handshake, record(translated).version, 0, record(translated).fragment
        )
        is None
    )  # OpenSSL will drop it as it drops any forged Finished
    # A record for another CID, or not a CID record at all, is not ours.
    other_cid = CidHandshake(is_server=True, own_cid=b"\x99" * 4, predicted_suite=GCM)
    other_cid.received(CLIENT_CID)
    other_cid.to_answer(connection())
    assert other_cid.peer_record_for_openssl(cid_raw, connection()) is None
    assert server.peer_record_for_openssl(standard, connection()) is None


def test_without_a_cid_to_write_our_records_go_out_as_openssl_wrote_them() -> None:
    client_keys, _ = key_pair()
    send_only = CidHandshake(is_server=False, own_cid=b"", keys=client_keys)
    assert send_only.received(b"")  # the server asked for none on our records
    standard = client_keys.seal(ContentType.handshake, b"\x14finished")
    records = [standard]
    assert send_only.outgoing(records, connection()) is records
    send_only.forget_keys()  # the protector has them now; nothing else changes
    assert send_only.connection_id == b""
