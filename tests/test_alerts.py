"""Authenticated alerts after the handshake: what ends an association and what does not.

RFC 5246 §7.2.2 calls some alert descriptions "always fatal" (``bad_record_mac``,
``internal_error``, ...).  A peer that sends one at *warning* level is broken or probing; OpenSSL
reads such a warning without a word and carries on, and so did our record layer.  Here both
record layers (ours, and OpenSSL's when it keeps the connection: ``release_openssl=False``, or
a suite we do not protect ourselves) end the association as if the alert were fatal, on the
server and on the client, while the alerts that may be warnings change nothing.

And RFC 6347 §4.2.8's replacement: while a new handshake from a known address runs, the
established association is kept aside; its client's authenticated close_notify (or fatal
alert) must still reach it, not only the new handshake that cannot read it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hostile_support import ack_for, connect, replay_a_foreign_hello, serving_psk
from hypothesis import HealthCheck, given, settings
from support import (
    InMemoryHandshake,
    begin_handshake_in_memory,
    handshake_in_memory,
    protection_of,
    seal_one,
    settle,
)

from trio_dtls_server import ConnectionClosed, DTLSConnection, ServerConfig
from trio_dtls_server._session import (
    ApplicationData,
    ConnectionFailed,
    DTLSSession,
    HandshakeProgress,
    RemoteClosed,
    SessionEvent,
    SessionState,
)
from trio_dtls_server._wire import (
    FATAL_ONLY_ALERTS,
    AlertDescription,
    AlertLevel,
    ContentType,
)

IDENTITY = b"Alice (clone number 0)"

#: RFC 5246 §7.2.2, read description by description: "This message is always fatal" (or, for
#: handshake_failure, "This is a fatal error"); decryption_failed was always fatal in RFC 2246
#: and must never be sent since RFC 5246.
RFC_5246_ALWAYS_FATAL = {
    "unexpected_message",
    "bad_record_mac",
    "decryption_failed",
    "record_overflow",
    "decompression_failure",
    "handshake_failure",
    "illegal_parameter",
    "unknown_ca",
    "access_denied",
    "decode_error",
    "decrypt_error",
    "protocol_version",
    "insufficient_security",
    "internal_error",
    "unsupported_extension",
}

#: Alerts a peer may send as warnings: they must change nothing.  (no_renegotiation is one too,
#: but OpenSSL ends its connection on it; see test_no_renegotiation_is_left_to_each_layer.)
WARNINGS_THAT_STAY_WARNINGS = [
    AlertDescription.user_canceled,
    AlertDescription.bad_certificate,
    AlertDescription.certificate_expired,
    AlertDescription.certificate_unknown,
    AlertDescription.unrecognized_name,
    200,  # a description no RFC defines
]


def session_pair(*, client_releases: bool, server_releases: bool) -> InMemoryHandshake:
    """A client and a server session, established in memory, each keeping OpenSSL or not."""
    result = handshake_in_memory(client_releases=client_releases, server_releases=server_releases)
    assert result.client.state is result.server.state is SessionState.ESTABLISHED
    assert result.client.openssl_released is client_releases
    assert result.server.openssl_released is server_releases
    return result


def sender_and_receiver(
    receiver_side: str, receiver_keeps_openssl: bool
) -> tuple[DTLSSession, DTLSSession]:
    """The sender always uses our record layer (so the test can write any alert it likes)."""
    pair = session_pair(
        client_releases=receiver_side == "server" or not receiver_keeps_openssl,
        server_releases=receiver_side == "client" or not receiver_keeps_openssl,
    )
    if receiver_side == "server":
        return pair.client, pair.server
    return pair.server, pair.client


def alert(sender: DTLSSession, level: int, description: int) -> bytes:
    """An authentic protected alert from ``sender``, as one datagram."""
    return protection_of(sender).seal(ContentType.alert, bytes((level, description)))


RECEIVERS = pytest.mark.parametrize(
    ("receiver_side", "keeps_openssl"),
    [("server", False), ("server", True), ("client", False), ("client", True)],
    ids=["server-our-records", "server-openssl", "client-our-records", "client-openssl"],
)


def test_the_fatal_only_set_is_rfc_5246s() -> None:
    assert {AlertDescription(d).name for d in FATAL_ONLY_ALERTS} == RFC_5246_ALWAYS_FATAL
    for warning in ("close_notify", "user_canceled", "no_renegotiation", "bad_certificate"):
        assert AlertDescription[warning] not in FATAL_ONLY_ALERTS


@RECEIVERS
@pytest.mark.parametrize("description", sorted(FATAL_ONLY_ALERTS), ids=lambda d: d.name)
def test_a_fatal_only_description_at_warning_level_ends_the_association(
    receiver_side: str, keeps_openssl: bool, description: AlertDescription
) -> None:
    sender, receiver = sender_and_receiver(receiver_side, keeps_openssl)
    events = receiver.receive_datagram(alert(sender, AlertLevel.warning, description), 0.0)
    assert events == [
        ConnectionFailed(
            f"the peer sent the alert {description.name} ({description.value}) at warning "
            "level; it is always fatal (RFC 5246 §7.2.2)"
        )
    ]
    assert receiver.state is SessionState.FAILED
    # Nothing the peer sends afterwards is delivered, and nothing more can be sent.
    assert receiver.receive_datagram(seal_one(sender, b"still there?"), 0.0) == []
    with pytest.raises(RuntimeError):
        receiver.send(b"hello?")


@RECEIVERS
@pytest.mark.parametrize("description", WARNINGS_THAT_STAY_WARNINGS, ids=str)
def test_alerts_that_may_be_warnings_change_nothing(
    receiver_side: str, keeps_openssl: bool, description: int
) -> None:
    sender, receiver = sender_and_receiver(receiver_side, keeps_openssl)
    # Nothing to report: not a drop either (the record was authentic).
    assert receiver.receive_datagram(alert(sender, AlertLevel.warning, description), 0.0) == []
    assert receiver.state is SessionState.ESTABLISHED
    assert receiver.receive_datagram(seal_one(sender, b"reading"), 0.0) == [
        ApplicationData(b"reading")
    ]


@RECEIVERS
def test_a_fatal_alert_still_ends_the_association(receiver_side: str, keeps_openssl: bool) -> None:
    sender, receiver = sender_and_receiver(receiver_side, keeps_openssl)
    events = receiver.receive_datagram(
        alert(sender, AlertLevel.fatal, AlertDescription.internal_error), 0.0
    )
    assert len(events) == 1 and isinstance(events[0], ConnectionFailed)
    assert receiver.state is SessionState.FAILED


@RECEIVERS
def test_nothing_after_a_fatal_only_warning_in_the_same_datagram_counts(
    receiver_side: str, keeps_openssl: bool
) -> None:
    sender, receiver = sender_and_receiver(receiver_side, keeps_openssl)
    before = seal_one(sender, b"before")
    warning = alert(sender, AlertLevel.warning, AlertDescription.bad_record_mac)
    after = seal_one(sender, b"after")
    goodbye = alert(sender, AlertLevel.warning, AlertDescription.close_notify)
    events = receiver.receive_datagram(before + warning + after + goodbye, 0.0)
    assert [type(event) for event in events] == [ApplicationData, ConnectionFailed]
    assert events[0] == ApplicationData(b"before")
    assert receiver.state is SessionState.FAILED


@pytest.mark.parametrize("client_releases", [True, False], ids=["our-records", "openssl"])
def test_a_fatal_only_warning_that_overtakes_the_finished_ends_the_association(
    client_releases: bool,
) -> None:
    """The server's data and alert reach the client before the server's final flight."""
    pair = begin_handshake_in_memory(client_releases=client_releases, server_releases=True)
    client, server = pair.client, pair.server
    for datagram in server.take_datagrams():
        client.receive_datagram(datagram, 0.0)
    for datagram in client.take_datagrams():
        server.receive_datagram(datagram, 0.0)
    assert server.state is SessionState.ESTABLISHED
    final_flight = server.take_datagrams()
    early = seal_one(server, b"hello") + alert(
        server, AlertLevel.warning, AlertDescription.bad_record_mac
    )
    assert client.receive_datagram(early, 0.0) == [HandshakeProgress()]
    for datagram in final_flight:
        client.receive_datagram(datagram, 0.0)
    assert client.openssl_released is client_releases
    events = client.take_early_events()
    assert [type(event) for event in events] == [ApplicationData, ConnectionFailed]
    assert events[0] == ApplicationData(b"hello")
    assert "bad_record_mac (20) at warning level" in str(events[1])
    assert client.state is SessionState.FAILED


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(description=st.integers(0, 255).filter(lambda d: d != AlertDescription.no_renegotiation))
def test_both_record_layers_agree_on_every_warning(description: int) -> None:
    """For any description at warning level, OpenSSL's layer and ours end or keep alike."""
    outcomes: list[tuple[SessionState, list[type[SessionEvent]]]] = []
    for keeps_openssl in (False, True):
        sender, receiver = sender_and_receiver("server", keeps_openssl)
        events = receiver.receive_datagram(alert(sender, AlertLevel.warning, description), 0.0)
        outcomes.append((receiver.state, [type(event) for event in events]))
    assert outcomes[0] == outcomes[1]
    if description == AlertDescription.close_notify:
        assert outcomes[0] == (SessionState.CLOSED, [RemoteClosed])
    elif description in FATAL_ONLY_ALERTS:
        assert outcomes[0] == (SessionState.FAILED, [ConnectionFailed])
    else:
        assert outcomes[0] == (SessionState.ESTABLISHED, [])


def test_no_renegotiation_is_left_to_each_layer() -> None:
    """RFC 5246 says no_renegotiation is always a warning: our layer ignores it.  OpenSSL ends
    the connection on it (it only expects one after asking to renegotiate, which we never
    do); a peer that sends it unasked gets what its stack gives it.  Written down, not fixed."""
    sender, ours = sender_and_receiver("server", False)
    warning = alert(sender, AlertLevel.warning, AlertDescription.no_renegotiation)
    assert ours.receive_datagram(warning, 0.0) == []
    sender, openssl = sender_and_receiver("server", True)
    warning = alert(sender, AlertLevel.warning, AlertDescription.no_renegotiation)
    assert [type(e) for e in openssl.receive_datagram(warning, 0.0)] == [ConnectionFailed]


# -- the server and the client, over real sockets -----------------------------------------------


@pytest.mark.parametrize("release_openssl", [True, False], ids=["our-records", "openssl"])
async def test_the_server_ends_a_connection_on_a_fatal_only_warning(
    release_openssl: bool, autojump_clock: trio.testing.MockClock
) -> None:
    async with serving_psk(ServerConfig(release_openssl=release_openssl)) as served:
        good = await connect(served.address)
        await good.round_trip(b"ping", ack_for(good.address))
        good.transport.send_raw(
            alert(good.client._session, AlertLevel.warning, AlertDescription.decode_error)
        )
        await settle()
        [failed] = served.events.with_code("connection_failed")
        assert failed.peer == good.address
        assert "decode_error (50) at warning level" in failed.message
        assert served.server.statistics().peers == 0
        # The association is gone: a later record gets no answer.
        await good.client.send(b"anyone?")
        await settle()
        assert served.server.statistics().messages_received == 1


async def _serve_then_alert(connection: DTLSConnection) -> None:
    """A handler that answers the first datagram with a warning-level bad_record_mac."""
    await connection.receive()
    session = connection._session
    datagram = protection_of(session).seal(
        ContentType.alert, bytes((AlertLevel.warning, AlertDescription.bad_record_mac))
    )
    await connection._transmit([datagram])
    await trio.sleep_forever()


@pytest.mark.parametrize("release_openssl", [True, False], ids=["our-records", "openssl"])
async def test_the_client_ends_a_connection_on_a_fatal_only_warning(
    release_openssl: bool, autojump_clock: trio.testing.MockClock
) -> None:
    handler: Callable[[DTLSConnection], Awaitable[None]] = _serve_then_alert
    async with serving_psk(handler=handler) as served:
        good = await connect(served.address, release_openssl=release_openssl)
        assert good.client._session.openssl_released is release_openssl
        await good.client.send(b"ping")
        with trio.fail_after(5), pytest.raises(ConnectionClosed, match="bad_record_mac"):
            await good.client.receive()
        assert good.client.closed
        with pytest.raises(ConnectionClosed):
            await good.client.send(b"again")
        await good.client.aclose()


# -- the association kept aside during a replacement --------------------------------------------


@pytest.mark.parametrize(
    ("level", "description", "code"),
    [
        (AlertLevel.warning, AlertDescription.close_notify, "remote_closed"),
        (AlertLevel.fatal, AlertDescription.internal_error, "connection_failed"),
        (AlertLevel.warning, AlertDescription.bad_record_mac, "connection_failed"),
    ],
    ids=["close_notify", "fatal", "fatal-only-warning"],
)
@pytest.mark.parametrize("release_openssl", [True, False], ids=["our-records", "openssl"])
async def test_the_association_kept_aside_still_hears_its_clients_alerts(
    level: int,
    description: int,
    code: str,
    release_openssl: bool,
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(handshake_timeout=10.0, release_openssl=release_openssl)
    async with serving_psk(config) as served:
        good = await connect(served.address)
        await good.round_trip(b"before", ack_for(good.address))

        # Another client's cookie'd hello from the victim's address (a replay, or a restart
        # whose handshake will not finish): the established association goes aside.
        await replay_a_foreign_hello(good)
        assert served.server.statistics().handshaking == 1

        # The real client says goodbye (or fails) with its established keys.
        good.transport.send_raw(alert(good.client._session, level, description))
        await settle()
        [ended] = served.events.with_code(code)
        assert ended.peer == good.address

        # The new handshake never finishes; at its deadline nothing is left of either.
        await trio.sleep(10.5)
        stats = served.server.statistics()
        assert stats.handshakes_failed == {"deadline": 1}
        assert (stats.peers, stats.handshaking, stats.replacements) == (0, 0, 0)
        assert not served.events.with_code("replacement_failed")
