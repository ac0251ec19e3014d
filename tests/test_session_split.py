"""The seams of a session: record protectors behind one interface, the handshake driver let go.

``_session.DTLSSession`` is a facade: a ``_handshake.HandshakeDriver`` while the handshake runs,
then a ``_protection.RecordProtector`` (our AEAD layer, with or without connection IDs, or the
OpenSSL connection kept).  These tests use each protector through the interface alone (seal,
open, screen, goodbye), check that an established session keeps no handshake driver (nor any
cycle that would keep one alive), that the handshake's outcome is one frozen value, and that
the owner hands a PSK over through :meth:`DTLSSession.provide_psk`.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import support
from session_support import cid_handshake
from support import IDENTITY, KEY

from trio_dtls_server import RetransmitPolicy
from trio_dtls_server._codes import DropReason, FailureKind
from trio_dtls_server._protection import (
    AeadProtector,
    CidAeadProtector,
    OpenSSLProtector,
    RecordProtector,
)
from trio_dtls_server._session import (
    ApplicationData,
    DTLSSession,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeOutcome,
    RemoteClosed,
    SessionState,
)

CBC = "PSK-AES128-CBC-SHA256"
#: Each way records get protected, and the class that must do it.
KINDS = {
    "aead": AeadProtector,
    "aead with connection IDs": CidAeadProtector,
    "openssl kept (AEAD suite)": OpenSSLProtector,
    "openssl kept (CBC suite)": OpenSSLProtector,
}


def established_pair(kind: str) -> support.InMemoryHandshake:
    if kind == "aead":
        result = support.handshake_in_memory()
    elif kind == "aead with connection IDs":
        result = cid_handshake()
    elif kind == "openssl kept (AEAD suite)":
        result = support.handshake_in_memory(client_releases=False, server_releases=False)
    else:
        result = support.handshake_in_memory(ciphers=CBC)
    assert support.established(result.client, result.server)
    assert result.client.take_early_events() == result.server.take_early_events() == []
    return result


def protectors(kind: str) -> tuple[RecordProtector, RecordProtector]:
    """The client's and the server's record protectors, once established."""
    result = established_pair(kind)
    client, server = result.client._protector, result.server._protector
    assert client is not None and server is not None
    assert type(client) is type(server) is KINDS[kind]
    return client, server


@pytest.mark.parametrize("kind", KINDS)
def test_what_one_protector_seals_the_other_opens(kind: str) -> None:
    client, server = protectors(kind)
    answers: list[bytes] = []
    for text in (b"one", b"two" * 500, b"three"):
        assert server.open(client.seal(text), answers) == [ApplicationData(text)]
    assert client.open(server.seal(b"back"), answers) == [ApplicationData(b"back")]
    assert answers == []
    assert client.ending is None and server.ending is None


@pytest.mark.parametrize("kind", KINDS)
def test_screen_judges_headers_and_changes_nothing(kind: str) -> None:
    client, server = protectors(kind)
    datagram = client.seal(b"reading")
    assert server.screen(datagram) is None
    assert server.screen(b"\x17\xfe\xfd") == DropReason.MALFORMED
    # A standard record of the next epoch: not ours yet, or not even a CID record.
    later_epoch = support.garbage_record(epoch=2, length=40)
    cid = kind == "aead with connection IDs"
    assert server.screen(later_epoch) == (DropReason.MISSING_CID if cid else DropReason.WRONG_EPOCH)
    assert server.screen(datagram) is None  # screening marked nothing
    assert server.open(datagram, []) == [ApplicationData(b"reading")]
    # Our record layer knows the copy is a replay; OpenSSL's window is not ours to judge by.
    replay = DropReason.REPLAY if isinstance(server, AeadProtector) else None
    assert server.screen(datagram) == replay


@pytest.mark.parametrize("kind", KINDS)
def test_goodbye_ends_the_peer_which_answers_it(kind: str) -> None:
    client, server = protectors(kind)
    goodbye: list[bytes] = []
    client.goodbye(goodbye)
    assert len(goodbye) == 1
    answers: list[bytes] = []
    assert server.open(goodbye[0], answers) == [RemoteClosed()]
    assert server.ending == RemoteClosed()
    assert len(answers) == 1  # RFC 5246 §7.2.1: close_notify is answered with one
    assert client.open(answers[0], []) == [RemoteClosed()]
    assert client.ending == RemoteClosed()


@pytest.mark.parametrize("kind", KINDS)
def test_the_facade_reports_which_protector_it_uses(kind: str) -> None:
    result = established_pair(kind)
    for session in (result.client, result.server):
        released = KINDS[kind] is not OpenSSLProtector
        assert session.openssl_released is released
        assert (session.connection is None) is released
        assert session.encrypt_then_mac is (kind == "openssl kept (CBC suite)")


@contextmanager
def no_cycle_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("releases", [True, False])
def test_an_established_session_lets_its_handshake_driver_go(releases: bool) -> None:
    with no_cycle_collector():
        started = support.begin_handshake_in_memory(
            client_releases=releases, server_releases=releases
        )
        assert started.server._driver is not None and started.client._driver is not None
        drivers = [weakref.ref(started.server._driver), weakref.ref(started.client._driver)]
        result = support.exchange(started)
        assert support.established(result.client, result.server)
        assert result.server._driver is None and result.client._driver is None
        assert [driver() for driver in drivers] == [None, None]  # no cycle keeps one
        assert support.seal_one(result.client, b"still") and result.server.cipher != "unknown"


def test_a_failed_handshake_keeps_its_driver_for_the_diagnosis() -> None:
    failed = support.handshake_in_memory(keys={IDENTITY.encode(): b"\x00" * 16})
    assert failed.server.state is SessionState.FAILED
    assert failed.server._driver is not None and failed.server._protector is None
    assert failed.server.alert_sent == "bad_record_mac (20)"
    assert failed.client.alert_received == "bad_record_mac (20)"


def test_the_handshake_outcome_is_one_frozen_value() -> None:
    result = support.handshake_in_memory()
    server, client = result.server.outcome, result.client.outcome
    assert server is not None and client is not None
    assert server == HandshakeOutcome(
        cipher=result.server.cipher,
        protocol="DTLSv1.2",
        resumed=False,
        peer_certificate=None,
        tls_session=None,  # only a client keeps the TLS session
        max_plaintext=2**14,
        psk_identity=IDENTITY.encode(),
        connection_id=None,
        peer_connection_id=None,
    )
    assert client.tls_session is not None and client.tls_session is result.client.ssl_session
    assert (client.cipher, client.protocol) == (server.cipher, server.protocol)
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.cipher = "anything"  # type: ignore[misc]
    assert cid_handshake().server.outcome is not None
    outcome = cid_handshake().server.outcome
    assert outcome is not None and (outcome.connection_id, outcome.peer_connection_id) == (
        b"SRVCID",
        b"\x01\x02\x03",
    )


def server_without_a_lookup() -> tuple[DTLSSession, DTLSSession]:
    """A client and a server whose keys come only from :meth:`DTLSSession.provide_psk`."""
    policy = RetransmitPolicy()
    client = DTLSSession.client(
        support.client_context(),
        now=0.0,
        mtu=1400,
        policy=policy,
        identity=IDENTITY.encode(),
        key=KEY,
    )
    first = client.take_datagrams()
    client.receive_datagram(support.hello_verify_request_for(first[0]), 0.0)
    server = DTLSSession.server(
        support.server_context(),
        client.take_datagrams()[0],
        now=0.0,
        mtu=1400,
        policy=policy,
        psk_lookup=None,
    )
    support.carry(server.take_datagrams(), client)
    return client, server


def test_the_owner_hands_the_looked_up_key_over_with_a_method() -> None:
    client, server = server_without_a_lookup()
    events = []
    for datagram in client.take_datagrams():
        identity = server.psk_identity_to_prefetch(datagram)
        if identity is not None:
            assert identity == IDENTITY.encode()
            server.provide_psk(identity, KEY)
            server.provide_psk(identity, b"\x00" * 16)  # one answer per handshake: ignored
            assert server.psk_identity_to_prefetch(datagram) is None  # and no second lookup
        events += server.receive_datagram(datagram, 0.0)
    assert any(isinstance(e, HandshakeComplete) for e in events), events
    support.carry(server.take_datagrams(), client)
    assert support.established(client, server)
    assert server.psk_identity == IDENTITY.encode()


def test_a_failed_lookup_handed_over_names_its_cause() -> None:
    client, server = server_without_a_lookup()
    events = []
    for datagram in client.take_datagrams():
        identity = server.psk_identity_to_prefetch(datagram)
        if identity is not None:
            server.provide_psk(identity, None, "the store timed out")
        events += server.receive_datagram(datagram, 0.0)
    (failed,) = [e for e in events if isinstance(e, HandshakeFailed)]
    assert failed.kind is FailureKind.PSK_LOOKUP_FAILED
    assert "the store timed out" in failed.reason
    assert server.psk_lookup_failure == "the store timed out"
