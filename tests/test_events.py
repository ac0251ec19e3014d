"""Events: Qt's four signals as dataclasses, the hub that fans them out, and its limits."""

from __future__ import annotations

import logging

import pytest
import support
import trio
import trio.testing
from support import KEY, RawSocket, drain_events, serving

from trio_dtls_server import (
    DatagramReceived,
    DTLSClient,
    DTLSServer,
    ErrorEvent,
    InfoEvent,
    ServerEvent,
    WarningEvent,
    peer_info,
)
from trio_dtls_server._codes import EventCode
from trio_dtls_server._events import EventHub

LOGGER = "trio_dtls_server"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hub_with(clock: FakeClock, *, rate: float = 1.0, burst: float = 3.0) -> EventHub:
    return EventHub(clock=clock, warning_rate=rate, warning_burst=burst)


def warning(number: int, code: EventCode = EventCode.UNEXPECTED_DATAGRAM) -> WarningEvent:
    return WarningEvent(code, f"garbage number {number}", ("127.0.0.1", 5000 + number))


# -- peer_info and the event classes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "text"),
    [
        (("127.0.0.1", 5555), "(127.0.0.1:5555)"),
        (("192.0.2.200", 22334), "(192.0.2.200:22334)"),
        (("::1", 5555), "(::1:5555)"),  # Qt prints IPv6 without brackets
        (("2001:db8::17", 1), "(2001:db8::17:1)"),
        (("fe80::1%eth0", 40000), "(fe80::1%eth0:40000)"),
    ],
)
def test_peer_info_is_qts_text(peer: tuple[str, int], text: str) -> None:
    assert peer_info(peer) == text


def test_each_event_class_has_its_severity() -> None:
    assert ErrorEvent(EventCode.LISTENING, "m").severity == "error"
    assert WarningEvent(EventCode.LISTENING, "m").severity == "warning"
    assert InfoEvent(EventCode.LISTENING, "m").severity == "info"
    assert DatagramReceived(EventCode.LISTENING, "m").severity == "message"
    assert ServerEvent(EventCode.LISTENING, "m").severity == "info"


def test_events_are_frozen_values() -> None:
    event = DatagramReceived(
        EventCode.DATAGRAM, "A message", ("::1", 1), ciphertext=b"c", plaintext=b"p"
    )
    assert event == DatagramReceived(EventCode.DATAGRAM, "A message", ("::1", 1), b"c", b"p")
    assert isinstance(event, ServerEvent)
    with pytest.raises(AttributeError):
        event.plaintext = b"changed"  # type: ignore[misc]


# -- fan-out and bounded subscribers ----------------------------------------------------------


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = hub_with(FakeClock())
    first = hub.subscribe(10)
    second = hub.subscribe(10)
    sent = [
        InfoEvent(EventCode.LISTENING, "one"),
        ErrorEvent(EventCode.HANDSHAKE_FAILED, "two"),
        warning(3),
    ]
    for event in sent:
        hub.emit(event)
    assert drain_events(first) == sent
    assert drain_events(second) == sent
    assert hub.dropped == 0


async def test_a_full_subscriber_loses_events_and_they_are_counted() -> None:
    hub = hub_with(FakeClock())
    slow = hub.subscribe(2)
    fast = hub.subscribe(100)
    sent = [InfoEvent(EventCode.VERIFIED, f"event {n}") for n in range(7)]
    for event in sent:
        hub.emit(event)  # never blocks, never raises
    assert drain_events(slow) == sent[:2]
    assert drain_events(fast) == sent
    assert hub.dropped == 5
    # Once it has room again it gets new events.
    hub.emit(InfoEvent(EventCode.VERIFIED, "later"))
    assert drain_events(slow) == [InfoEvent(EventCode.VERIFIED, "later")]
    assert hub.dropped == 5


async def test_a_subscriber_that_went_away_is_forgotten() -> None:
    hub = hub_with(FakeClock())
    gone = hub.subscribe(1)
    staying = hub.subscribe(10)
    gone.close()
    for number in range(3):
        hub.emit(InfoEvent(EventCode.VERIFIED, f"event {number}"))
    # Not counted as drops: nobody was there to lose them.
    assert hub.dropped == 0
    assert len(drain_events(staying)) == 3


async def test_close_ends_every_subscription() -> None:
    hub = hub_with(FakeClock())
    stream = hub.subscribe(10)
    hub.emit(InfoEvent(EventCode.VERIFIED, "last"))
    hub.close()
    received = [event async for event in stream]
    assert received == [InfoEvent(EventCode.VERIFIED, "last")]
    hub.emit(InfoEvent(EventCode.VERIFIED, "after close"))  # nobody left: fine
    assert hub.dropped == 0


# -- rate limiting ----------------------------------------------------------------------------


async def test_rate_limit_lets_a_burst_through_then_holds_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = FakeClock()
    hub = hub_with(clock, rate=1.0, burst=3.0)
    stream = hub.subscribe(100)

    for number in range(5):
        hub.emit(warning(number), rate_limited=True)
    assert drain_events(stream) == [warning(0), warning(1), warning(2)]
    assert hub.suppressed == 2

    clock.now = 0.5  # half a token: still held back
    hub.emit(warning(5), rate_limited=True)
    assert drain_events(stream) == []
    assert hub.suppressed == 3

    clock.now = 1.0  # a whole token again: the next one passes and says what was held back
    hub.emit(warning(6), rate_limited=True)
    assert drain_events(stream) == [warning(6)]
    assert hub.suppressed == 3
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "garbage number 0",
        "garbage number 1",
        "garbage number 2",
        "garbage number 6 (3 more like this were not logged)",
    ]


async def test_rate_limit_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    hub = hub_with(clock, rate=10.0, burst=3.0)
    stream = hub.subscribe(100)
    clock.now = 1_000.0  # a long quiet spell does not bank more than the burst
    for number in range(10):
        hub.emit(warning(number), rate_limited=True)
    assert len(drain_events(stream)) == 3
    clock.now += 0.2  # 10 per second: two more tokens
    for number in range(10):
        hub.emit(warning(number), rate_limited=True)
    assert len(drain_events(stream)) == 2
    assert hub.suppressed == 15


async def test_each_code_has_its_own_budget_and_unlimited_events_always_pass() -> None:
    hub = hub_with(FakeClock(), rate=1.0, burst=1.0)
    stream = hub.subscribe(100)
    hub.emit(warning(1, EventCode.EMPTY_DATAGRAM), rate_limited=True)
    hub.emit(warning(2, EventCode.EMPTY_DATAGRAM), rate_limited=True)  # held back
    hub.emit(warning(3, EventCode.OVERSIZED_DATAGRAM), rate_limited=True)  # another code: passes
    for number in range(5):
        hub.emit(ErrorEvent(EventCode.HANDSHAKE_FAILED, f"failure {number}"))  # not rate limited
    received = drain_events(stream)
    assert [event.code for event in received] == ["empty_datagram", "oversized_datagram"] + [
        "handshake_failed"
    ] * 5
    assert hub.suppressed == 1


# -- the logging mirror -----------------------------------------------------------------------


async def test_events_are_logged_at_their_severity_with_the_event_attached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    hub = hub_with(FakeClock())
    events: list[ServerEvent] = [
        ErrorEvent(EventCode.HANDSHAKE_FAILED, "(127.0.0.1:1): handshake failed: x"),
        WarningEvent(EventCode.EMPTY_DATAGRAM, "(127.0.0.1:1): empty datagram"),
        InfoEvent(EventCode.VERIFIED, "(127.0.0.1:1): verified, starting a handshake"),
        DatagramReceived(EventCode.DATAGRAM, "A message from (127.0.0.1:1)", plaintext=b"hi"),
    ]
    for event in events:
        hub.emit(event)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (LOGGER, logging.ERROR, "(127.0.0.1:1): handshake failed: x"),
        (LOGGER, logging.WARNING, "(127.0.0.1:1): empty datagram"),
        (LOGGER, logging.INFO, "(127.0.0.1:1): verified, starting a handshake"),
        (LOGGER, logging.INFO, "A message from (127.0.0.1:1)"),
    ]
    assert [getattr(r, "dtls_event", None) for r in caplog.records] == events


async def test_a_quiet_logger_still_feeds_subscribers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    hub = hub_with(FakeClock())
    stream = hub.subscribe(10)
    hub.emit(InfoEvent(EventCode.VERIFIED, "not logged at WARNING"))
    hub.emit(WarningEvent(EventCode.EMPTY_DATAGRAM, "logged"))
    assert [r.getMessage() for r in caplog.records] == ["logged"]
    assert len(drain_events(stream)) == 2


# -- the server's events, end to end ----------------------------------------------------------


async def test_the_server_logs_qts_messages(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        client = await DTLSClient.connect(
            running.host, running.port, identity=support.IDENTITY, key=KEY
        )
        port = client.local_address[1]
        await client.send(b"I am Alice (clone number 0), please, accept our ping 0")
        await client.receive()
        await client.aclose()
        await running.events.wait_for("remote_closed")
    peer = f"(127.0.0.1:{port})"
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    expected_in_order = [
        f"Server is listening on address 127.0.0.1 and port {running.port}",
        f"{peer}: not verified yet",
        f"{peer}: verified, starting a handshake",
        f"{peer}: handshake is in progress ...",
        "PSK callback, received a client's identity: 'Alice (clone number 0)'",
        f"Connection with {peer} encrypted. Session cipher: {client.cipher}; "
        "session protocol: DTLS 1.2.",
        f"A message from {peer}",
        f"{peer}: The DTLS connection has been shutdown",
        "Server is not accepting new connections",
    ]
    positions = [messages.index(message) for message in expected_in_order]
    assert positions == sorted(positions), messages


async def test_a_flood_of_garbage_is_counted_in_full_but_reported_within_the_budget(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """200 bad datagrams: 200 drops, but only the burst (50) of warnings while time stands still.

    The autojump clock only moves when every task is idle, so the whole flood arrives "at
    once" on the server's clock; one second later the next warning reports what was held back.
    """
    caplog.set_level(logging.WARNING, logger=LOGGER)
    server = DTLSServer(psk=KEY)
    async with serving(server) as running:
        with RawSocket.bind() as sock:
            for _ in range(200):
                sock.send(b"garbage", running.address)
            await support.settle()
            assert server.statistics().drops == {"not a ClientHello from an unknown peer": 200}
            assert len(running.events.with_code("unexpected_datagram")) == 50

            await trio.sleep(1.0)  # on the mock clock: ten more tokens (10 per second)
            sock.send(b"garbage", running.address)
            await running.events.wait_for("unexpected_datagram", count=51)
    logged = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(logged) == 51
    assert logged[-1].endswith(
        "not a ClientHello and no association, dropped (150 more like this were not logged)"
    )
