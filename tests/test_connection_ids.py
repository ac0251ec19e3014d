"""RFC 9146 connection IDs: negotiation, the ``tls12_cid`` record format, the Finished
translation, and the server's demultiplexing by CID (issue 12).

The first half is sans-I/O: a client and a server :class:`DTLSSession` in memory, datagrams
carried by hand.  The record format is checked against a vector computed by hand here (the
§5.3 additional data written out byte by byte) and against one captured from pion/dtls
(``tests/vectors/pion_cid_aes128gcm.json``, copied from the pion helper's branch).  The second
half runs the real server and client over loopback UDP, with a small relay that moves the
client to a new address the way a NAT rebinding does.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import support
import trio
from auth_support import connect, quiet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from session_support import CLIENT_CID, GCM, SERVER_CID, cid_handshake
from support import IDENTITY, KEY, talk

from trio_dtls_server import (
    ConfigError,
    DTLSClient,
    DTLSServer,
    RetransmitPolicy,
    ServerConfig,
    _cid_handshake,
)
from trio_dtls_server._codes import DropReason, FailureKind
from trio_dtls_server._records import (
    RecordProtection,
    aead_suite,
    cid_additional_data,
    derive_key_block,
    inner_plaintext,
    split_inner_plaintext,
)
from trio_dtls_server._session import (
    ApplicationData,
    HandshakeComplete,
    HandshakeFailed,
    RecordsDropped,
    SessionState,
)
from trio_dtls_server._transport import Address
from trio_dtls_server._wire import (
    CidRecord,
    ContentType,
    ExtensionType,
    Record,
    parse_records,
    parse_records_with_cid,
    parse_server_hello,
)

VECTOR = Path(__file__).parent / "vectors" / "pion_cid_aes128gcm.json"


# -- sessions in memory ------------------------------------------------------------------------


def record_types(datagrams: list[bytes], cid_length: int) -> list[int]:
    """The content type of every record (25 for tls12_cid ones) in ``datagrams``."""
    types = []
    for datagram in datagrams:
        for record in parse_records_with_cid(datagram, cid_length):
            types.append(
                ContentType.tls12_cid if isinstance(record, CidRecord) else record.content_type
            )
    return types


def server_hello_extensions(datagrams: list[bytes]) -> tuple[int, ...]:
    for datagram in datagrams:
        for record in parse_records(datagram):
            if record.epoch == 0 and record.fragment[:1] == b"\x02":
                return parse_server_hello(record.fragment).extensions
    raise AssertionError("no ServerHello")


def test_both_sides_negotiate_their_cids_and_both_finished_records_use_them() -> None:
    result = cid_handshake()
    client, server = result.client, result.server
    assert support.established(client, server)
    assert (server.connection_id, server.peer_connection_id) == (SERVER_CID, CLIENT_CID)
    assert (client.connection_id, client.peer_connection_id) == (CLIENT_CID, SERVER_CID)
    assert ExtensionType.connection_id in server_hello_extensions(result.server_datagrams)
    # RFC 9146 §7: the Finished records are the first protected ones, and already tls12_cid;
    # the ChangeCipherSpec stays a plaintext record.
    client_flight = result.client_datagrams[2:]
    assert record_types(client_flight, len(SERVER_CID)) == [22, 20, ContentType.tls12_cid]
    (client_finished,) = [
        r
        for datagram in client_flight
        for r in parse_records_with_cid(datagram, len(SERVER_CID))
        if isinstance(r, CidRecord)
    ]
    assert (client_finished.epoch, client_finished.cid) == (1, SERVER_CID)
    server_final = result.server_datagrams[-1]
    # (NewSessionTicket, plaintext in epoch 0, may come first.)
    assert record_types([server_final], len(CLIENT_CID))[-2:] == [20, ContentType.tls12_cid]
    (server_finished,) = [
        r for r in parse_records_with_cid(server_final, 3) if isinstance(r, CidRecord)
    ]
    assert (server_finished.epoch, server_finished.cid) == (1, CLIENT_CID)
    assert client.openssl_released and server.openssl_released


def test_application_records_carry_the_receivers_cid_both_ways() -> None:
    result = cid_handshake()
    client, server = result.client, result.server
    to_server = support.seal_one(client, b"reading 1")
    (record,) = parse_records_with_cid(to_server, len(SERVER_CID))
    assert isinstance(record, CidRecord) and record.cid == SERVER_CID
    assert server.receive_datagram(to_server, 1.0) == [ApplicationData(b"reading 1")]
    assert server.newest_record_authenticated
    to_client = support.seal_one(server, b"ACK")
    (record,) = parse_records_with_cid(to_client, len(CLIENT_CID))
    assert isinstance(record, CidRecord) and record.cid == CLIENT_CID
    assert client.receive_datagram(to_client, 1.0) == [ApplicationData(b"ACK")]


def test_a_send_only_client_gets_standard_records_and_sends_cid_ones() -> None:
    result = cid_handshake(client_cid=b"")
    client, server = result.client, result.server
    assert support.established(client, server)
    assert (server.connection_id, server.peer_connection_id) == (SERVER_CID, b"")
    # The server's Finished and records stay in the standard format (an empty CID).
    assert record_types([result.server_datagrams[-1]], 0)[-2:] == [20, ContentType.handshake]
    assert parse_records(support.seal_one(server, b"ACK"))[0].content_type == 23
    datagram = support.seal_one(client, b"up")
    assert datagram[0] == ContentType.tls12_cid
    assert server.receive_datagram(datagram, 1.0) == [ApplicationData(b"up")]


@pytest.mark.parametrize(
    ("client_cid", "server_cid", "ciphers", "server_releases"),
    [
        (None, SERVER_CID, GCM, True),  # the client does not offer: today's behaviour
        (CLIENT_CID, None, GCM, True),  # --cid-length 0: the offer is ignored
        (CLIENT_CID, SERVER_CID, "PSK-AES128-CBC-SHA256", True),  # CBC gets no CID
        (CLIENT_CID, SERVER_CID, GCM, False),  # OpenSSL keeps the records: no CID
    ],
    ids=["client-not-offering", "server-cid-off", "cbc", "release-openssl-off"],
)
def test_no_cid_is_negotiated_unless_both_sides_can(
    client_cid: bytes | None, server_cid: bytes | None, ciphers: str, server_releases: bool
) -> None:
    result = cid_handshake(
        client_cid=client_cid,
        server_cid=server_cid,
        ciphers=ciphers,
        server_releases=server_releases,
    )
    client, server = result.client, result.server
    assert support.established(client, server)
    assert server.connection_id is server.peer_connection_id is None
    assert client.connection_id is client.peer_connection_id is None
    assert ExtensionType.connection_id not in server_hello_extensions(result.server_datagrams)
    everything = result.client_datagrams + result.server_datagrams
    assert ContentType.tls12_cid not in record_types(everything, 0)
    datagram = support.seal_one(client, b"x")
    assert datagram[0] == ContentType.application_data
    assert server.receive_datagram(datagram, 1.0) == [ApplicationData(b"x")]


def test_a_cid_with_a_suite_our_record_layer_cannot_protect_fails_the_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should OpenSSL choose another suite than predicted (here: forced), or a foreign server
    answer a CID with a CBC suite, both sides fail the handshake with a reason rather than run
    an association whose records they cannot read."""
    monkeypatch.setattr(_cid_handshake, "predict_suite", lambda connection, hello: GCM)
    result = cid_handshake(ciphers="PSK-AES128-CBC-SHA256")
    for session, events in (
        (result.server, result.server_events),
        (result.client, result.client_events),
    ):
        assert session.state is SessionState.FAILED
        assert not any(isinstance(e, HandshakeComplete) for e in events)
        (failure,) = [e for e in events if isinstance(e, HandshakeFailed)]
        assert failure.kind is FailureKind.NO_SHARED_CIPHER
        assert "PSK-AES128-CBC-SHA256" in failure.reason


def test_a_client_that_does_not_offer_gets_todays_server_hello() -> None:
    """The same ServerHello extensions as from a context without the CID callbacks."""
    plain = support.handshake_in_memory(ciphers=GCM)
    with_callbacks = cid_handshake(client_cid=None)
    assert server_hello_extensions(plain.server_datagrams) == server_hello_extensions(
        with_callbacks.server_datagrams
    )
    assert [len(d) for d in plain.server_datagrams] == [
        len(d) for d in with_callbacks.server_datagrams
    ]


def test_a_wrong_key_is_still_diagnosed_when_the_finished_is_a_cid_record() -> None:
    """The client's CID Finished does not open with the server's keys: OpenSSL gets a record
    that fails as that Finished would have, and the server answers bad_record_mac, as for a
    client without CID."""
    result = cid_handshake(key=b"not the right key")
    server = result.server
    assert server.state is SessionState.FAILED
    failures = [e for e in result.server_events if isinstance(e, HandshakeFailed)]
    assert [f.kind for f in failures] == [FailureKind.WRONG_KEY]
    assert server.alert_sent == "bad_record_mac (20)"


def test_a_lost_final_flight_is_resent_in_the_cid_format() -> None:
    """OpenSSL's retransmitted flight and the saved final flight are translated too."""
    result = cid_handshake(run=False, policy=RetransmitPolicy(initial=1.0))
    client, server = result.client, result.server
    for datagram in server.take_datagrams():
        client.receive_datagram(datagram, 0.0)
    flight = client.take_datagrams()
    for datagram in flight:
        server.receive_datagram(datagram, 0.0)
    assert server.state is SessionState.ESTABLISHED
    lost = server.take_datagrams()  # the server's CCS + Finished never arrive
    assert record_types(lost, len(CLIENT_CID))[-2:] == [20, ContentType.tls12_cid]
    # The client retransmits its flight (its Finished as tls12_cid again) ...
    client.handle_timer(5.0)
    again = client.take_datagrams()
    assert ContentType.tls12_cid in record_types(again, len(SERVER_CID))
    events = support.carry(again, server, 5.0)
    assert not any(isinstance(e, ApplicationData) for e in events)
    resent = server.take_datagrams()
    # ... and the server answers with its final flight, still in the CID format.
    assert resent and record_types(resent, len(CLIENT_CID))[-2:] == [20, ContentType.tls12_cid]
    client_events = support.carry(resent, client, 5.0)
    assert any(isinstance(e, HandshakeComplete) for e in client_events)
    assert support.established(client, server)
    assert server.receive_datagram(support.seal_one(client, b"after"), 6.0) == [
        ApplicationData(b"after")
    ]


# -- records of an established CID association --------------------------------------------------


def client_records(result: support.InMemoryHandshake) -> RecordProtection:
    return support.protection_of(result.client)


def seal_padded(protection: RecordProtection, content: bytes, padding: int) -> bytes:
    """A tls12_cid application record with ``padding`` zero bytes in its inner plaintext."""
    sequence = protection.next_sequence
    protection.next_sequence += 1
    return protection._seal_cid(
        protection._write_aead,
        protection._write_iv,
        protection._write_iv_number,
        sequence,
        protection.write_cid,
        inner_plaintext(ContentType.application_data, content, padding),
    )


def test_padding_is_stripped_and_an_all_zero_inner_plaintext_is_refused() -> None:
    result = cid_handshake()
    server = result.server
    padded = seal_padded(client_records(result), b"padded", 40)
    assert server.receive_datagram(padded, 1.0) == [ApplicationData(b"padded")]
    protection = client_records(result)
    sequence = protection.next_sequence
    protection.next_sequence += 1
    no_type = protection._seal_cid(
        protection._write_aead,
        protection._write_iv,
        protection._write_iv_number,
        sequence,
        SERVER_CID,
        bytes(8),  # all zeros: no content type (RFC 9146 §4)
    )
    assert server.receive_datagram(no_type, 1.0) == [RecordsDropped(DropReason.AUTHENTICATION)]
    assert split_inner_plaintext(b"ab\x17\0\0") == (23, b"ab")
    assert split_inner_plaintext(bytes(3)) is None


def test_a_record_with_another_cid_is_dropped_unread() -> None:
    result = cid_handshake()
    datagram = bytearray(support.seal_one(result.client, b"x"))
    datagram[11:17] = b"OTHER!"
    assert result.server.screen(bytes(datagram)) == DropReason.WRONG_CID
    assert result.server.receive_datagram(bytes(datagram), 1.0) == [
        RecordsDropped(DropReason.WRONG_CID)
    ]


def test_a_standard_record_on_a_cid_association_is_dropped_and_named() -> None:
    result = cid_handshake()
    protection = client_records(result)
    protection.write_cid = b""  # the client "forgets" the CID: a standard, authentic record
    datagram = protection.seal(ContentType.application_data, b"no cid")
    assert datagram[0] == ContentType.application_data
    assert result.server.screen(datagram) == DropReason.MISSING_CID
    assert result.server.receive_datagram(datagram, 1.0) == [RecordsDropped(DropReason.MISSING_CID)]


def test_a_cid_record_on_an_association_without_cid_is_dropped() -> None:
    plain = cid_handshake(client_cid=None)
    forged = support.seal_one(cid_handshake().client, b"x")  # another association's record
    assert forged[0] == ContentType.tls12_cid
    assert plain.server.screen(forged) == DropReason.MALFORMED
    assert plain.server.receive_datagram(forged, 1.0) == [RecordsDropped(DropReason.MALFORMED)]


def test_only_the_newest_authentic_record_may_move_the_association() -> None:
    result = cid_handshake()
    server = result.server
    first = support.seal_one(result.client, b"1")
    second = support.seal_one(result.client, b"2")
    assert server.receive_datagram(second, 1.0) == [ApplicationData(b"2")]
    assert server.newest_record_authenticated
    # An older record that authenticates (reordered) is accepted, but is not the newest.
    assert server.receive_datagram(first, 1.0) == [ApplicationData(b"1")]
    assert not server.newest_record_authenticated
    # A replay is dropped before any cryptography, and moves nothing either.
    assert server.screen(second) == DropReason.REPLAY
    assert server.receive_datagram(second, 1.0) == [RecordsDropped(DropReason.REPLAY)]
    assert not server.newest_record_authenticated
    forged = bytearray(support.seal_one(result.client, b"3"))
    forged[-1] ^= 1
    assert server.receive_datagram(bytes(forged), 1.0) == [
        RecordsDropped(DropReason.AUTHENTICATION)
    ]
    assert not server.newest_record_authenticated


def test_close_notify_in_the_cid_format_closes_both_sides() -> None:
    result = cid_handshake()
    result.client.close()
    (goodbye,) = result.client.take_datagrams()
    assert goodbye[0] == ContentType.tls12_cid
    events = result.server.receive_datagram(goodbye, 1.0)
    assert result.server.state is SessionState.CLOSED, events
    (answer,) = result.server.take_datagrams()
    assert answer[0] == ContentType.tls12_cid


# -- the record format against vectors -----------------------------------------------------------


def test_a_cid_record_matches_a_vector_computed_by_hand() -> None:
    """AES-128-GCM, epoch 1, sequence 5, CID 0a0b0c, content "hi", real type 23, 2 bytes of
    padding; the §5.3 additional data written out byte by byte."""
    suite = aead_suite(GCM)
    assert suite is not None
    key, iv = bytes(range(16)), bytes.fromhex("a0a1a2a3")
    protection = RecordProtection(
        suite,
        epoch=1,
        read_key=key,
        read_iv=iv,
        write_key=key,
        write_iv=iv,
        next_sequence=5,
        write_cid=b"\x0a\x0b\x0c",
        read_cid=b"\x0a\x0b\x0c",
    )
    inner = b"hi" + b"\x17" + b"\0\0"
    sealed = protection._seal_cid(
        protection._write_aead, iv, int.from_bytes(iv, "big"), 5, b"\x0a\x0b\x0c", inner
    )
    additional = bytes.fromhex(
        "ffffffffffffffff"  # seq_num_placeholder
        "19"  # tls12_cid
        "03"  # cid_length
        "19"  # tls12_cid
        "fefd"  # DTLS 1.2
        "0001"  # epoch
        "000000000005"  # sequence number
        "0a0b0c"  # cid
        "0005"  # length of the DTLSInnerPlaintext
    )
    assert cid_additional_data(0xFEFD, 1, 5, b"\x0a\x0b\x0c", 5) == additional
    explicit = bytes.fromhex("0001000000000005")
    ciphertext = AESGCM(key).encrypt(iv + explicit, inner, additional)
    header = bytes.fromhex("19fefd0001000000000005") + b"\x0a\x0b\x0c"
    expected = header + (8 + len(ciphertext)).to_bytes(2, "big") + explicit + ciphertext
    assert sealed == expected
    (record,) = parse_records_with_cid(expected, 3)
    assert isinstance(record, CidRecord)
    assert protection.decrypt_cid(0xFEFD, 5, record.cid, record.fragment) == (23, b"hi")


def _pion_vector() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(VECTOR.read_text())
    return loaded


def _pion_protection(vector: dict[str, object], *, as_server: bool) -> RecordProtection:
    suite = aead_suite(GCM)
    assert suite is not None
    client_key, server_key, client_iv, server_iv = derive_key_block(
        suite,
        bytes.fromhex(str(vector["master_secret"])),
        bytes.fromhex(str(vector["client_random"])),
        bytes.fromhex(str(vector["server_random"])),
    )
    server_cid = bytes.fromhex(str(vector["server_cid"]))
    client_cid = bytes.fromhex(str(vector["client_cid"]))
    if as_server:
        return RecordProtection(
            suite,
            epoch=1,
            read_key=client_key,
            read_iv=client_iv,
            write_key=server_key,
            write_iv=server_iv,
            next_sequence=0,
            read_cid=server_cid,
            write_cid=client_cid,
        )
    return RecordProtection(
        suite,
        epoch=1,
        read_key=server_key,
        read_iv=server_iv,
        write_key=client_key,
        write_iv=client_iv,
        next_sequence=0,
        read_cid=client_cid,
        write_cid=server_cid,
    )


def _pion_cid_records(
    vector: dict[str, object], direction: str, cid_length: int
) -> list[CidRecord]:
    datagrams = vector["datagrams"]
    assert isinstance(datagrams, list)
    records = []
    for datagram in datagrams:
        if datagram["direction"] != direction:
            continue
        for record in parse_records_with_cid(bytes.fromhex(datagram["hex"]), cid_length):
            if isinstance(record, CidRecord):
                records.append(record)
    return records


def test_our_record_layer_opens_pions_cid_records_both_ways() -> None:
    """pion/dtls v3.0.7's records (its Finished with 3 bytes of padding, data, close_notify)
    open with our keys, AAD and inner-plaintext parsing, as the server and as the client."""
    vector = _pion_vector()
    server = _pion_protection(vector, as_server=True)
    client = _pion_protection(vector, as_server=False)
    from_client = _pion_cid_records(vector, "client_to_server", len(server.read_cid))
    opened = [
        server.open_cid_record(r.version, r.sequence_number, r.cid, r.fragment) for r in from_client
    ]
    assert None not in opened
    types = [item[0] for item in opened if item is not None]
    assert types[0] == ContentType.handshake and types[-1] == 21  # Finished ... close_notify
    data = [item[1].decode() for item in opened if item is not None and item[0] == 23]
    application = vector["application_data"]
    assert isinstance(application, dict)
    assert data == application["client_to_server"]
    from_server = _pion_cid_records(vector, "server_to_client", len(client.read_cid))
    opened_by_client = [
        client.open_cid_record(r.version, r.sequence_number, r.cid, r.fragment) for r in from_server
    ]
    assert None not in opened_by_client
    assert [item[1].decode() for item in opened_by_client if item and item[0] == 23] == (
        application["server_to_client"]
    )
    # What we seal with the same keys, pion's server would open: our record of pion's
    # client's next sequence number decrypts with the server's side of the keys.
    client.next_sequence = 100
    ours = client.seal(ContentType.application_data, b"from us")
    (record,) = parse_records_with_cid(ours, len(server.read_cid))
    assert isinstance(record, CidRecord)
    assert server.open_cid_record(record.version, 100, record.cid, record.fragment) == (
        23,
        b"from us",
    )


def test_pions_cid_finished_translates_to_the_standard_record_openssl_reads() -> None:
    vector = _pion_vector()
    server = _pion_protection(vector, as_server=True)
    finished = _pion_cid_records(vector, "client_to_server", len(server.read_cid))[0]
    standard = server.reseal_peer_standard(
        finished.version, finished.sequence_number, finished.cid, finished.fragment
    )
    assert standard is not None
    (record,) = parse_records(standard)
    assert (record.content_type, record.epoch, record.sequence_number) == (22, 1, 0)
    plain = server.decrypt(22, record.version, 0, record.fragment)
    opened = server.decrypt_cid(finished.version, 0, finished.cid, finished.fragment)
    assert opened is not None and plain == opened[1]
    assert plain[:1] == b"\x14"  # a Finished message


def test_records_are_named_as_records() -> None:
    assert isinstance(parse_records_with_cid(b"\x17\xfe\xfd" + bytes(8) + b"\0\0", 4)[0], Record)


# -- the server over UDP -------------------------------------------------------------------------


async def echo(connection: object) -> None:
    from trio_dtls_server import DTLSConnection

    assert isinstance(connection, DTLSConnection)
    async for data in connection:
        await connection.send(b"echo: " + data)


class NatRelay:
    """client <-> front socket [relay] upstream socket <-> server; :meth:`rebind` replaces the
    upstream socket (a new port, or a new host), as a NAT whose mapping changed.  Keeps every
    datagram it forwarded to the server (for replays)."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self.front = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        self.upstream: trio.socket.SocketType | None = None
        self.client: Address | None = None
        self.to_server: list[bytes] = []
        self._scope = trio.CancelScope()

    @property
    def front_address(self) -> Address:
        host, port = self.front.getsockname()[:2]
        return str(host), int(port)

    @property
    def upstream_address(self) -> Address:
        assert self.upstream is not None
        host, port = self.upstream.getsockname()[:2]
        return str(host), int(port)

    async def rebind(self, nursery: trio.Nursery, host: str = "127.0.0.1") -> Address:
        self._scope.cancel()
        old = self.upstream
        self.upstream = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await self.upstream.bind((host, 0))
        if old is not None:
            old.close()
        self._scope = trio.CancelScope()
        nursery.start_soon(self._back, self.upstream, self._scope)
        return self.upstream_address

    async def _forth(self) -> None:
        while True:
            data, source = await self.front.recvfrom(65_535)
            self.client = (str(source[0]), int(source[1]))
            self.to_server.append(data)
            assert self.upstream is not None
            await self.upstream.sendto(data, self.server)

    async def _back(self, sock: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                data, _ = await sock.recvfrom(65_535)
                if self.client is not None:
                    await self.front.sendto(data, self.client)


@asynccontextmanager
async def nat_relay(server: Address) -> AsyncIterator[tuple[NatRelay, trio.Nursery]]:
    relay = NatRelay(server)
    await relay.front.bind(("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        await relay.rebind(nursery)
        nursery.start_soon(relay._forth)
        try:
            yield relay, nursery
        finally:
            nursery.cancel_scope.cancel()
    relay.front.close()
    if relay.upstream is not None:
        relay.upstream.close()


@asynccontextmanager
async def cid_client_behind_nat(
    running: support.RunningServer,
) -> AsyncIterator[tuple[NatRelay, trio.Nursery, DTLSClient]]:
    """A :class:`NatRelay` in front of ``running``, and our client offering a CID through it."""
    async with nat_relay((running.host, running.port)) as (relay, nursery):
        host, port = relay.front_address
        async with await DTLSClient.connect(
            host, port, identity=IDENTITY, key=KEY, connection_id=True, on_event=quiet
        ) as client:
            yield relay, nursery, client


@pytest.mark.parametrize("new_host", ["127.0.0.1", "127.0.0.2"])
async def test_our_client_keeps_its_association_across_a_nat_rebinding(new_host: str) -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=echo)
    async with support.serving(server) as running:
        async with cid_client_behind_nat(running) as (relay, nursery, client):
            assert client.server_connection_id is not None
            assert len(client.server_connection_id) == 6  # the default --cid-length
            assert client.connection_id == b""  # send-only
            assert await talk(client, b"before") == b"echo: before"
            old = relay.upstream_address
            new = await relay.rebind(nursery, new_host)
            assert await talk(client, b"after") == b"echo: after"
            assert await talk(client, b"again") == b"echo: again"
            event = await running.events.wait_for("peer_moved")
        stats = server.statistics()
    assert event.peer == new
    assert event.severity == "info"
    assert event.message == f"({old[0]}:{old[1]}) moved to ({new[0]}:{new[1]})"
    assert (stats.handshakes_started, stats.handshakes_completed) == (1, 1)
    assert (stats.connection_id_associations, stats.peer_moves) == (1, 1)
    assert len(running.events.with_code("peer_moved")) == 1


async def test_a_client_asking_for_a_cid_gets_tls12_cid_records_from_the_server() -> None:
    """Our client with ``connection_id=4``: the server's records carry a 4-byte CID."""
    server = DTLSServer({IDENTITY: KEY}, handler=echo, config=ServerConfig(connection_id_length=8))
    async with (
        support.serving(server) as running,
        await DTLSClient.connect(
            running.host, running.port, identity=IDENTITY, key=KEY, connection_id=4, on_event=quiet
        ) as client,
    ):
        assert client.connection_id is not None and len(client.connection_id) == 4
        assert client.server_connection_id is not None
        assert len(client.server_connection_id) == 8
        assert await talk(client, b"x") == b"echo: x"
        assert support.protection_of(client._session).read_cid == client.connection_id


async def test_a_replayed_cid_record_from_a_new_address_moves_nothing() -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=echo)
    async with (
        support.serving(server) as running,
        cid_client_behind_nat(running) as (relay, _, client),
    ):
        assert await talk(client, b"one") == b"echo: one"
        captured = relay.to_server[-1]
        assert captured[0] == ContentType.tls12_cid
        with support.RawSocket.bind("127.0.0.2") as attacker:
            attacker.send(captured, (running.host, running.port))
            await running.events.wait_for(
                where=lambda e: e.code == "replayed_record" or "replayed" in e.message
            )
        assert await talk(client, b"two") == b"echo: two"
        stats = server.statistics()
    assert stats.peer_moves == 0
    assert stats.drops.get(DropReason.REPLAY, 0) >= 1
    assert running.events.with_code("peer_moved") == []


async def test_forged_cid_records_from_many_addresses_move_nothing_and_are_counted() -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=echo)
    forgeries = 40
    async with (
        support.serving(server) as running,
        cid_client_behind_nat(running) as (relay, _, client),
    ):
        assert await talk(client, b"one") == b"echo: one"
        genuine = relay.to_server[-1]
        for number in range(forgeries):
            forged = bytearray(genuine)
            forged[5:11] = (1000 + number).to_bytes(6, "big")  # newer, never seen
            forged[-1] ^= 0x55  # the tag fails
            with support.RawSocket.bind(f"127.0.0.{2 + number % 20}") as attacker:
                attacker.send(bytes(forged), (running.host, running.port))
        # The peer's inbox is in arrival order: once "two" is answered, every
        # forgery sent before it has been tried.
        assert await talk(client, b"two") == b"echo: two"
        stats = server.statistics()
    assert stats.drops[DropReason.AUTHENTICATION] == forgeries
    assert stats.peer_moves == 0
    assert running.events.with_code("peer_moved") == []


async def test_an_unknown_cid_is_dropped_and_counted() -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=echo)
    async with support.serving(server) as running:
        with support.RawSocket.bind() as stranger:
            stranger.send(
                bytes.fromhex("19fefd0001000000000007") + b"NOSUCH" + b"\0\x20" + bytes(32),
                (running.host, running.port),
            )
            event = await running.events.wait_for("unknown_connection_id")
    assert server.statistics().drops["unknown connection id"] == 1
    assert "unknown connection ID" in event.message


async def test_a_client_offering_cid_gets_a_full_handshake_and_one_without_still_resumes() -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=echo)
    async with support.serving(server) as running:
        async with await connect(running, IDENTITY, KEY) as plain:
            assert await talk(plain, b"a") == b"echo: a"
        assert plain.tls_session is not None
        # The same valid session, presented by a client that also offers a CID: a full
        # handshake, with a CID (OpenSSL's custom extensions are skipped on resumption).
        async with await connect(
            running, IDENTITY, KEY, tls_session=plain.tls_session, connection_id=True
        ) as with_cid:
            assert with_cid.resumed is False
            assert with_cid.server_connection_id is not None
            assert await talk(with_cid, b"b") == b"echo: b"
        assert with_cid.tls_session is not None
        # Its own session, presented again with the offer: still a full handshake, with CID.
        async with await connect(
            running, IDENTITY, KEY, tls_session=with_cid.tls_session, connection_id=True
        ) as again:
            assert again.resumed is False
            assert again.server_connection_id is not None
        # A client without CID still resumes.
        async with await connect(running, IDENTITY, KEY, tls_session=plain.tls_session) as resumed:
            assert resumed.resumed is True
            assert resumed.server_connection_id is None
            assert await talk(resumed, b"c") == b"echo: c"
        stats = server.statistics()
    assert (stats.handshakes_completed, stats.handshakes_resumed) == (4, 1)
    assert stats.connection_id_associations == 2


async def test_cid_length_zero_serves_cid_clients_as_before() -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=echo, config=ServerConfig(connection_id_length=0))
    async with (
        support.serving(server) as running,
        await connect(running, IDENTITY, KEY, connection_id=True) as client,
    ):
        assert client.server_connection_id is None
        assert await talk(client, b"x") == b"echo: x"
    assert server.statistics().connection_id_associations == 0


async def test_a_move_to_an_address_another_peer_holds_is_refused() -> None:
    """The other association is not ended by a CID record (an on-path attacker could replay
    a fresh record from any address); the mover's record is still delivered."""
    server = DTLSServer({IDENTITY: KEY}, handler=echo)
    async with support.serving(server) as running:
        address = (running.host, running.port)
        async with (
            await DTLSClient.connect(
                *address, identity=IDENTITY, key=KEY, connection_id=True, on_event=quiet
            ) as mover,
            await DTLSClient.connect(
                *address, identity=IDENTITY, key=KEY, on_event=quiet
            ) as holder,
        ):
            assert await talk(mover, b"m") == b"echo: m"
            assert await talk(holder, b"h") == b"echo: h"
            # The mover's next record, sent from the holder's socket.
            mover._session.send(b"moved?")
            (datagram,) = mover._session.take_datagrams()
            holder._transport.send_nowait(datagram, address, None)
            event = await running.events.wait_for("peer_move_refused")
            assert await talk(holder, b"h2") == b"echo: h2"
            # Delivered all the same, and answered at the mover's old address.
            with trio.fail_after(support.WAIT_LIMIT):
                assert await mover.receive() == b"echo: moved?"
            assert await talk(mover, b"m2") == b"echo: m2"
            stats = server.statistics()
    assert (stats.peer_moves, stats.peer_moves_refused) == (0, 1)
    assert "another association holds that address" in event.message


@pytest.mark.parametrize("bad", [-1, 256, True, 2.5])
def test_the_cid_length_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig(connection_id_length=bad)  # type: ignore[arg-type]
    assert "connection_id_length" in str(caught.value)


# -- the command line ------------------------------------------------------------------------------


def test_cid_length_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_dtls_server._cli import build_parser, config_from_arguments

    arguments = build_parser().parse_args(["serve", "--cid-length", "0"])
    assert config_from_arguments(arguments).connection_id_length == 0
    default = config_from_arguments(build_parser().parse_args(["serve"]))
    assert default.connection_id_length == 6
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--cid-length", "256"])
    assert exited.value.code == 2
    assert "--cid-length: 256 must be at most 255" in capsys.readouterr().err


def test_client_cid_against_serve_cid_length_over_the_command_line() -> None:
    """``client --cid`` against ``serve --cid-length 4``: the pings the server decrypts came
    in tls12_cid records (``19 fe fd`` ...) carrying a 4-byte CID."""
    from cli_support import HEX, Program, command, start_serve

    server, port = start_serve("--psk-hex", "1a2b3c4d5e6f", "--cid-length", "4")
    with server:
        with Program(
            command("client", "127.0.0.1", str(port), "--pings", "2", "--interval", "0.1", "--cid")
        ) as client:
            assert client.wait() == 0, client.stdout.text + client.stderr.text
        for ping in range(2):
            line = server.stdout.wait_for(
                rf"^A message from \(127\.0\.0\.1:\d+\) DTLS datagram: ({HEX}) "
                rf"As plain text: I am Alice \(clone number 0\), please, accept our ping {ping}$"
            )
            # type 25, DTLS 1.2, epoch 1, a sequence number, then the 4-byte CID.
            assert line.group(1).startswith("19 fe fd 00 01 "), line.group(1)
            assert len(line.group(1).split()) > 13 + 4
        server.send_signal(signal.SIGINT)
        assert server.wait() == 0


async def test_the_server_counts_a_record_without_its_cid_and_serves_on() -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=echo)
    async with support.serving(server) as running:
        async with await DTLSClient.connect(
            running.host, running.port, identity=IDENTITY, key=KEY, connection_id=True,
            on_event=quiet,
        ) as client:  # fmt: skip
            assert await talk(client, b"one") == b"echo: one"
            protection = support.protection_of(client._session)
            assert protection.write_cid
            cid, protection.write_cid = protection.write_cid, b""
            standard = protection.seal(ContentType.application_data, b"without")
            protection.write_cid = cid
            await client._send_all([standard])
            event = await running.events.wait_for("record_without_connection_id")
            assert await talk(client, b"two") == b"echo: two"
        stats = server.statistics()
    assert stats.drops[DropReason.MISSING_CID] == 1
    assert event.message.endswith("record without its connection id, dropped")
