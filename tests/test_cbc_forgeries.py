"""Forged records against CBC sessions: dropped and counted, never fatal (``_etm.py``).

OpenSSL negotiates encrypt-then-MAC (RFC 7366) with every peer that offers it, and its DTLS
record layer then fails the association on a record whose MAC is wrong or that is shorter than
the MAC.  Anyone can send such a record with the peer's address, so the session checks the MAC
first (:class:`~trio_dtls_server._etm.EtmGuard`).  These tests run sessions in memory, one
handshake per CBC suite of the ``compat`` profile, server and client side; the same attack on
real sockets, with spoofed source addresses, is in ``test_spoofed_cbc.py``.
"""

from __future__ import annotations

import pytest
import support
from auth_support import ConnectionLog, Credentials, quiet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from session_support import begin_pair
from support import IDENTITY, InMemoryHandshake

from trio_dtls_server import PROFILES, CertificateConfig, DTLSClient, DTLSServer, ServerConfig
from trio_dtls_server._codes import DropReason
from trio_dtls_server._etm import EtmGuard, etm_in_server_hello, mac_hash
from trio_dtls_server._session import (
    ApplicationData,
    RecordsDropped,
    SessionState,
)
from trio_dtls_server._wire import (
    ContentType,
    parse_records,
)

#: The CBC suites of the compat profile a PSK server negotiates (all eight of them).
CBC_SUITES = [suite for suite in PROFILES["compat"].psk if "CBC" in suite]
NOW = 0.0
#: OpenSSL's SSL_OP_NO_ENCRYPT_THEN_MAC (the bindings have no constant for it).
OP_NO_ENCRYPT_THEN_MAC = 1 << 19


def header(content_type: int, epoch: int, sequence: int, length: int) -> bytes:
    """A DTLS 1.2 record header."""
    return (
        bytes([content_type, 0xFE, 0xFD])
        + epoch.to_bytes(2, "big")
        + sequence.to_bytes(6, "big")
        + length.to_bytes(2, "big")
    )


def record(content_type: int, epoch: int, sequence: int, fragment: bytes) -> bytes:
    return header(content_type, epoch, sequence, len(fragment)) + fragment


def forgeries(authentic: bytes) -> dict[str, bytes]:
    """Datagrams an off-path attacker can make, each of which OpenSSL alone found fatal
    (``authentic``: a real record of the victim's peer, which the attacker may have seen)."""
    sequence = int.from_bytes(authentic[5:11], "big") + 7
    tampered = bytearray(authentic)
    tampered[20] ^= 1
    return {
        # The datagram of the issue: 13 bytes of header and 16 bytes, shorter than any MAC.
        "29-byte": record(ContentType.application_data, 1, sequence, bytes(16)),
        "empty-fragment": record(ContentType.application_data, 1, sequence, b""),
        "wrong-mac": record(ContentType.application_data, 1, sequence, bytes(80)),
        "fatal-alert": record(ContentType.alert, 1, sequence, bytes(64)),
        "handshake": record(ContentType.handshake, 1, sequence, bytes(64)),
        "bit-flipped": bytes(tampered),
        "truncated-mac": (
            authentic[:11] + (len(authentic) - 14).to_bytes(2, "big") + authentic[13:-1]
        ),
        "two-forged-records": record(ContentType.application_data, 1, sequence, bytes(16))
        + record(ContentType.alert, 1, sequence + 1, bytes(48)),
    }


def cbc_pair(suite: str) -> InMemoryHandshake:
    result = support.exchange(begin_pair(suite))
    assert support.established(result.client, result.server), result.server_events
    assert result.server.cipher == result.client.cipher == suite
    return result


def assert_data_flows(result: InMemoryHandshake, label: bytes) -> None:
    """Both directions still carry data, and the sessions are established."""
    # A forged protected handshake record looks like the peer's retransmitted Finished, which
    # the session answers with its final flight (a bounded number of times): not our subject.
    result.server.take_datagrams()
    result.client.take_datagrams()
    to_server, to_client = b"ping " + label, b"ACK " + label
    assert result.server.receive_datagram(support.seal_one(result.client, to_server), NOW) == [
        ApplicationData(to_server)
    ]
    assert result.client.receive_datagram(support.seal_one(result.server, to_client), NOW) == [
        ApplicationData(to_client)
    ]
    assert support.established(result.client, result.server)


@pytest.mark.parametrize("suite", CBC_SUITES)
def test_forged_records_are_dropped_by_a_cbc_session_on_both_sides(suite: str) -> None:
    result = cbc_pair(suite)
    # Our client and our server both offer encrypt-then-MAC, so OpenSSL negotiates it.
    assert result.server.encrypt_then_mac and result.client.encrypt_then_mac
    from_client = support.seal_one(result.client, b"seen by the attacker")
    from_server = support.seal_one(result.server, b"seen by the attacker too")
    for receiver, authentic in ((result.server, from_client), (result.client, from_server)):
        for name, forged in forgeries(authentic).items():
            assert receiver.receive_datagram(forged, NOW) == [
                RecordsDropped(DropReason.AUTHENTICATION)
            ], name
    # Not a single forgery moved the replay window: the authentic records still open.
    assert result.server.receive_datagram(from_client, NOW) == [
        ApplicationData(b"seen by the attacker")
    ]
    assert result.client.receive_datagram(from_server, NOW) == [
        ApplicationData(b"seen by the attacker too")
    ]
    assert_data_flows(result, suite.encode())


# -- during the handshake -----------------------------------------------------------------------

#: Forged epoch-1 records an off-path attacker can send while a handshake runs.
HANDSHAKE_FORGERIES = {
    "29-byte-data": record(ContentType.application_data, 1, 5, bytes(16)),
    "long-data": record(ContentType.application_data, 1, 6, bytes(96)),
    "alert": record(ContentType.alert, 1, 7, bytes(48)),
    "finished": record(ContentType.handshake, 1, 8, bytes(64)),
}


@pytest.mark.parametrize("forgery", HANDSHAKE_FORGERIES)
@pytest.mark.parametrize("suite", ["PSK-AES128-CBC-SHA256", "ECDHE-PSK-AES256-CBC-SHA384"])
def test_forged_records_during_the_handshake_do_not_end_the_association(
    suite: str, forgery: str
) -> None:
    """OpenSSL keeps next-epoch records that come before the ChangeCipherSpec and checks them
    once it has the keys: before the fix, each of these made the first read after the
    handshake fail (``length too short`` or ``bad record mac``), on the side that got it.
    Now no forged record reaches OpenSSL with a MAC it would fail on: each is dropped (when it
    can be judged) or kept until the keys exist and then dropped, and counted either way."""
    forged = HANDSHAKE_FORGERIES[forgery]
    result = begin_pair(suite)
    # The server has sent its first flight and has no keys yet.
    result.server.receive_datagram(forged, NOW)
    support.carry(result.server.take_datagrams(), result.client)
    # The client holds the keys, and its final flight is on its way.
    result.client.receive_datagram(forged, NOW)
    final_flight = result.client.take_datagrams()
    # Still without its keys: the server reads them from the client's final flight.
    result.server.receive_datagram(forged, NOW)
    assert result.server.state is result.client.state is SessionState.HANDSHAKING
    support.carry(final_flight, result.server)
    support.exchange(result)
    assert support.established(result.client, result.server)
    assert result.server.take_early_events() == result.client.take_early_events() == []
    assert result.server.encrypt_then_mac and result.client.encrypt_then_mac
    # Every forgery was dropped and counted: two on the server, one on the client.
    assert sum(result.server.handshake_drops.values()) == 2
    assert sum(result.client.handshake_drops.values()) == 1
    assert_data_flows(result, forgery.encode())


def test_a_forgery_next_to_the_final_flight_costs_only_itself() -> None:
    result = begin_pair("PSK-AES128-CBC-SHA256")
    support.carry(result.server.take_datagrams(), result.client)
    [final_flight] = result.client.take_datagrams()
    forged = HANDSHAKE_FORGERIES["29-byte-data"]
    result.server.receive_datagram(final_flight + forged, NOW)
    support.exchange(result)
    assert support.established(result.client, result.server)
    assert result.server.take_early_events() == []
    assert sum(result.server.handshake_drops.values()) == 1
    assert_data_flows(result, b"next to the final flight")


def test_a_wrong_key_still_gets_our_bad_record_mac_alert_with_cbc() -> None:
    """The client's Finished fails our MAC check now, before OpenSSL's: same answer as for
    AEAD suites, a fatal ``bad_record_mac`` alert, and the handshake fails on both sides."""
    result = begin_pair("PSK-AES128-CBC-SHA256")
    assert result.client._driver is not None
    result.client._driver._psk_credentials = (IDENTITY.encode(), b"another key")
    support.exchange(result)
    assert result.server.state is result.client.state is SessionState.FAILED
    assert result.server.alert_sent == "bad_record_mac (20)"
    assert result.client.alert_received == "bad_record_mac (20)"
    assert result.server.failure_reason is not None
    assert result.server.failure_reason.startswith("the peer's Finished failed authentication")


def test_a_forged_record_next_to_an_authentic_one_costs_only_itself() -> None:
    result = cbc_pair("PSK-AES128-CBC-SHA256")
    authentic = support.seal_one(result.client, b"real")
    forged = record(ContentType.application_data, 1, 99, bytes(16))
    assert result.server.receive_datagram(forged + authentic, NOW) == [ApplicationData(b"real")]
    assert_data_flows(result, b"after")


def test_garbage_that_is_not_records_never_reaches_openssl() -> None:
    result = cbc_pair("PSK-AES128-CBC-SHA256")
    # A whole record, then half a header: OpenSSL would read the record and fail on it.
    garbage = record(ContentType.application_data, 1, 5, bytes(16)) + b"\x17\xfe\xfd"
    assert result.server.receive_datagram(garbage, NOW) == [RecordsDropped(DropReason.MALFORMED)]
    assert_data_flows(result, b"after garbage")


def test_records_of_other_epochs_still_go_to_openssl_which_drops_them() -> None:
    result = cbc_pair("PSK-AES256-CBC-SHA384")
    for epoch in (0, 2, 65535):
        for content_type in (
            ContentType.application_data,
            ContentType.alert,
            ContentType.handshake,
        ):
            events = result.server.receive_datagram(record(content_type, epoch, 3, bytes(16)), NOW)
            assert len(events) == 1 and isinstance(events[0], RecordsDropped), events
    assert_data_flows(result, b"after other epochs")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content_type=st.sampled_from(
        [ContentType.application_data, ContentType.alert, ContentType.handshake]
    ),
    sequence=st.integers(0, 2**48 - 1),
    fragment=st.binary(max_size=200),
    to_client=st.booleans(),
)
def test_any_forged_record_of_the_current_epoch_is_dropped_silently(
    content_type: int, sequence: int, fragment: bytes, to_client: bool
) -> None:
    result = cbc_pair("PSK-AES128-CBC-SHA")
    receiver = result.client if to_client else result.server
    forged = record(content_type, 1, sequence, fragment)
    assert receiver.receive_datagram(forged, NOW) == [RecordsDropped(DropReason.AUTHENTICATION)]
    assert_data_flows(result, b"survived")


def test_a_resumed_cbc_session_is_guarded_too() -> None:
    client_context = support.client_context(CBC_SUITES[0])
    server_context = support.server_context(ciphers=CBC_SUITES[0])
    server_context.set_session_id(b"cbc-resumption")
    first = support.exchange(
        begin_pair(CBC_SUITES[0], client_ssl=client_context, server_ssl=server_context)
    )
    assert first.client.ssl_session is not None
    again = support.exchange(
        begin_pair(
            CBC_SUITES[0],
            client_ssl=client_context,
            server_ssl=server_context,
            resume=first.client.ssl_session,
        )
    )
    assert again.server.resumed and again.client.resumed
    assert again.server.encrypt_then_mac and again.client.encrypt_then_mac
    forged = record(ContentType.application_data, 1, 40, bytes(16))
    assert again.server.receive_datagram(forged, NOW) == [RecordsDropped(DropReason.AUTHENTICATION)]
    assert again.client.receive_datagram(forged, NOW) == [RecordsDropped(DropReason.AUTHENTICATION)]
    assert_data_flows(again, b"resumed")


def test_a_mac_then_encrypt_peer_gets_no_guard_and_openssl_drops_forgeries_itself() -> None:
    """A peer without encrypt-then-MAC (node-dtls-client, say): OpenSSL's MAC-then-encrypt
    path discards bad records silently on its own, and our check would be wrong there."""
    client_context = support.client_context("PSK-AES128-CBC-SHA256")
    client_context.set_options(OP_NO_ENCRYPT_THEN_MAC)
    result = support.exchange(begin_pair("PSK-AES128-CBC-SHA256", client_ssl=client_context))
    assert support.established(result.client, result.server)
    assert not result.server.encrypt_then_mac and not result.client.encrypt_then_mac
    authentic = support.seal_one(result.client, b"x")
    for name, forged in forgeries(authentic).items():
        events = result.server.receive_datagram(forged, NOW)
        assert len(events) == 1 and isinstance(events[0], RecordsDropped), (name, events)
    assert result.server.receive_datagram(authentic, NOW) == [ApplicationData(b"x")]
    assert_data_flows(result, b"mte")


def test_aead_sessions_have_no_guard() -> None:
    result = support.exchange(begin_pair("PSK-AES128-GCM-SHA256", server_releases=False))
    assert not result.server.encrypt_then_mac and not result.client.encrypt_then_mac


@pytest.mark.parametrize(
    ("suite", "expected"),
    [
        ("PSK-AES128-CBC-SHA", "sha1"),
        ("PSK-AES128-CBC-SHA256", "sha256"),
        ("ECDHE-PSK-AES256-CBC-SHA384", "sha384"),
        ("ECDHE-ECDSA-AES128-SHA", "sha1"),
        ("ECDHE-RSA-AES256-SHA384", "sha384"),
        ("PSK-AES128-GCM-SHA256", None),
        ("ECDHE-PSK-CHACHA20-POLY1305", None),
        ("PSK-AES128-CCM8", None),
    ],
)
def test_mac_hash_by_suite_name(suite: str, expected: str | None) -> None:
    assert mac_hash(suite) == expected


@given(st.binary(max_size=120))
def test_the_guard_screens_any_bytes_without_raising(datagram: bytes) -> None:
    guard = EtmGuard(epoch=0, read_mac_key=bytes(32), hash_name="sha256")
    assert guard.screen(datagram) in (None, datagram)


# -- certificate suites, over loopback ----------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "key_type"),
    [
        ("ECDHE-ECDSA-AES128-SHA", "ecdsa"),
        ("ECDHE-ECDSA-AES256-SHA384", "ecdsa"),
        ("ECDHE-RSA-AES128-SHA256", "rsa"),
    ],
)
async def test_certificate_cbc_suites_are_guarded_too(
    credentials: Credentials, suite: str, key_type: str
) -> None:
    """The MAC keys of these suites come from the same key block (SHA-1, SHA-256 and SHA-384
    MACs; a SHA-384 PRF for the last): both sides prove them on the Finished records."""
    pem = credentials.server_pem if key_type == "ecdsa" else credentials.server_rsa_pem
    log = ConnectionLog()
    server = DTLSServer(
        certificate=CertificateConfig(pem), config=ServerConfig(ciphers="compat"), handler=log
    )
    async with (
        support.serving(server) as running,
        await DTLSClient.connect(
            running.host, running.port, ca=credentials.ca, ciphers=suite, on_event=quiet
        ) as client,
    ):
        await client.send(b"hello")
        assert await client.receive() == b"echo: hello"
        assert client._session.encrypt_then_mac
        [connection] = log.connections
        assert connection.cipher == suite
        assert connection._session.encrypt_then_mac


# -- reading the ServerHello ----------------------------------------------------------------------


def _first_flight(client_options: int = 0, suite: str = "PSK-AES128-CBC-SHA256") -> list[bytes]:
    client_context = support.client_context(suite)
    client_context.set_options(client_options)
    return begin_pair(suite, client_ssl=client_context).server.take_datagrams()


def test_the_server_hello_says_whether_encrypt_then_mac_was_agreed() -> None:
    assert etm_in_server_hello(_first_flight()) is True
    assert etm_in_server_hello(_first_flight(OP_NO_ENCRYPT_THEN_MAC)) is False
    # No encrypt-then-MAC with an AEAD suite, even though our client offers it.
    assert etm_in_server_hello(_first_flight(suite="PSK-AES128-GCM-SHA256")) is False
    assert etm_in_server_hello([]) is None


def test_a_fragment_of_a_server_hello_is_not_read() -> None:
    [flight] = _first_flight()
    hello = parse_records(flight)[0]
    fragment = bytearray(hello.fragment)
    fragment[9:12] = (int.from_bytes(fragment[9:12], "big") - 1).to_bytes(3, "big")
    shortened = record(ContentType.handshake, 0, 1, bytes(fragment[:-1]))
    assert etm_in_server_hello([shortened]) is None


@given(st.binary(max_size=200))
def test_any_bytes_as_a_server_hello_give_an_answer_not_an_exception(body: bytes) -> None:
    fragment = bytes([2]) + len(body).to_bytes(3, "big") + bytes(5) + len(body).to_bytes(3, "big")
    assert etm_in_server_hello([record(ContentType.handshake, 0, 1, fragment + body)]) in (
        True,
        False,
        None,
    )
