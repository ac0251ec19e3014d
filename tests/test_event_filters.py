"""Subscriptions that take only some events, and events nobody takes never being built.

A quiet command line throws away every info line; before filters it still subscribed to all of
them, so each handshake formatted half a dozen messages, queued them and woke the printing task
for nothing (about 9 % of a handshake's CPU under the native load generator).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import support
import trio
from support import KEY, drain_events

import trio_dtls_server._connection as connection_module
import trio_dtls_server._server as server_module
from trio_dtls_server import (
    DatagramReceived,
    DTLSClient,
    DTLSServer,
    ErrorEvent,
    EventFilter,
    InfoEvent,
    ServerEvent,
    WarningEvent,
)
from trio_dtls_server._codes import EventCode
from trio_dtls_server._display import Display
from trio_dtls_server._events import EventHub

QUIET = EventFilter(frozenset({"error", "warning"}), frozenset({"listening"}))


async def test_a_filtered_subscriber_gets_only_what_it_asked_for() -> None:
    hub = EventHub()
    quiet = hub.subscribe(10, QUIET)
    everything = hub.subscribe(10)
    sent = [
        InfoEvent(EventCode.HANDSHAKE_PROGRESS, "in progress"),
        InfoEvent(EventCode.LISTENING, "listening"),
        WarningEvent(EventCode.COOKIE_REJECTED, "bad cookie"),
        ErrorEvent(EventCode.HANDSHAKE_FAILED, "failed"),
    ]
    for event in sent:
        hub.emit(event)
    assert drain_events(quiet) == sent[1:]
    assert drain_events(everything) == sent
    assert hub.dropped == 0


async def test_wants_follows_the_subscribers_filters(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trio_dtls_server")
    hub = EventHub()
    assert not hub.wants("info", "handshake_complete")
    quiet = hub.subscribe(10, QUIET)
    assert not hub.wants("info", "handshake_complete")
    assert hub.wants("info", "listening")
    assert hub.wants("info")  # some info code is taken: without a code, assume it may be
    assert hub.wants("warning", "cookie_rejected")
    everything = hub.subscribe(10)
    assert hub.wants("info", "handshake_complete")
    everything.close()
    hub.emit(InfoEvent(EventCode.HANDSHAKE_PROGRESS, "in progress"))  # finds it gone, forgets it
    assert not hub.wants("info", "handshake_complete")
    quiet.close()
    hub.emit(
        WarningEvent(EventCode.COOKIE_REJECTED, "bad cookie")
    )  # logged; the channel is forgotten
    assert not hub.wants("info", "listening")
    caplog.set_level(logging.INFO, logger="trio_dtls_server")
    assert hub.wants("info", "handshake_complete")  # the logger takes it now


def test_the_quiet_display_subscribes_to_exactly_what_it_shows() -> None:
    assert Display(quiet=False).event_filter() is None
    display = Display(quiet=True, always_show=frozenset({"listening", "summary"}))
    wanted = display.event_filter()
    assert wanted is not None
    samples: list[ServerEvent] = [
        InfoEvent(EventCode.HANDSHAKE_COMPLETE, "done"),
        InfoEvent(EventCode.LISTENING, "listening"),
        InfoEvent(EventCode.SUMMARY, "summary"),
        WarningEvent(EventCode.COOKIE_REJECTED, "bad cookie"),
        ErrorEvent(EventCode.HANDSHAKE_FAILED, "failed"),
    ]
    assert [wanted.takes(e) for e in samples] == [display.wants(e) for e in samples]


async def test_a_quiet_subscriber_costs_no_info_event_per_handshake(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_dtls_server")
    built: list[str] = []

    def counting_info_event(code: EventCode, *args: Any, **kwargs: Any) -> InfoEvent:
        built.append(code)
        return InfoEvent(code, *args, **kwargs)

    def counting_datagram_event(code: EventCode, *args: Any, **kwargs: Any) -> DatagramReceived:
        built.append(code)
        return DatagramReceived(code, *args, **kwargs)

    monkeypatch.setattr(server_module, "InfoEvent", counting_info_event)
    monkeypatch.setattr(connection_module, "InfoEvent", counting_info_event)
    monkeypatch.setattr(connection_module, "DatagramReceived", counting_datagram_event)
    server = DTLSServer(psk=KEY)
    async with trio.open_nursery() as nursery, server.events(wanted=QUIET) as stream:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        assert [e.code for e in drain_events(stream)] == ["listening"]
        built.clear()
        client = await DTLSClient.connect(host, port, identity=support.IDENTITY, key=KEY)
        await client.send(b"ping")
        assert await client.receive()
        await client.aclose()
        with trio.fail_after(5):  # the server's side of the goodbye, on real sockets
            while server.statistics().remote_closed < 1:
                await trio.sleep(0.01)
        assert drain_events(stream) == []
        assert server.statistics().handshakes_completed == 1
        # Not one info event was built for the handshake, the message or the goodbye.
        assert built == []
        nursery.cancel_scope.cancel()
