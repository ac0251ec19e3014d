"""``DTLSServer(on_event=...)``: events seen at once, in causal order with the peers' own.

A subscriber of :meth:`DTLSServer.events` reads a channel in a task of its own, so it may print
a ping's line after the server already sent the ACK and the client printed it.  ``on_event`` is
called inside :meth:`EventHub.emit`, like a Qt signal's direct connection: the server's line
for a datagram exists before the reply to it is sent, whatever Trio schedules next.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from hostile_support import KEY, LOOPBACK
from support import EventRecorder

from trio_dtls_server import DTLSClient, DTLSServer, ServerEvent
from trio_dtls_server._codes import EventCode

LOGGER = "trio_dtls_server"


async def _ping_pong(
    server: DTLSServer, seen: list[str], *, clients: int, pings: int
) -> list[tuple[int, int]]:
    """Run ``clients`` clients, ``pings`` pings each, no pause; the clients' local ports."""
    ports: list[tuple[int, int]] = []

    async def one(number: int, port: int) -> None:
        def on_client_event(event: ServerEvent) -> None:
            seen.append(f"client {number}: {event.code}")

        client = await DTLSClient.connect(
            LOOPBACK, port, identity=f"client {number}", key=KEY, on_event=on_client_event
        )
        ports.append((number, client.local_address[1]))
        async with client:
            for ping in range(pings):
                await client.send(f"ping {ping}".encode())
            for _ in range(pings):
                await client.receive()

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve, LOOPBACK, 0)
        async with trio.open_nursery() as clients_nursery:
            for number in range(clients):
                clients_nursery.start_soon(one, number, port)
        nursery.cancel_scope.cancel()
    return ports


async def test_on_event_sees_each_datagram_before_its_reply_and_the_identity_first() -> None:
    seen: list[str] = []

    def on_server_event(event: ServerEvent) -> None:
        if event.code == "psk_identity":
            seen.append(f"server: {event.message}")
        elif event.peer is not None:
            seen.append(f"server {event.peer[1]}: {event.code}")

    server = DTLSServer(KEY, on_event=on_server_event)
    ports = await _ping_pong(server, seen, clients=3, pings=8)
    for number, port in ports:
        shown = acked = 0
        for line in seen:
            if line == f"server {port}: datagram":
                shown += 1
            elif line == f"client {number}: datagram":
                acked += 1
                assert shown >= acked, seen
        assert (shown, acked) == (8, 8)
        identity = seen.index(
            f"server: PSK callback, received a client's identity: 'client {number}'"
        )
        assert identity < seen.index(f"server {port}: handshake_complete")
        assert identity < seen.index(f"client {number}: handshake_complete")


async def test_on_event_and_subscribers_see_the_same_events() -> None:
    observed: list[ServerEvent] = []
    server = DTLSServer(KEY, on_event=observed.append)
    async with trio.open_nursery() as nursery:
        log = await EventRecorder.start(nursery, server)
        await _ping_pong(server, [], clients=1, pings=2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert observed == log.events
    assert [e.code for e in observed].count(EventCode.DATAGRAM) == 2


async def test_a_callback_that_raises_is_logged_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    calls: list[str] = []

    def broken(event: ServerEvent) -> None:
        calls.append(event.code)
        raise RuntimeError("the display is gone")

    server = DTLSServer(KEY, on_event=broken)
    seen: list[str] = []
    await _ping_pong(server, seen, clients=1, pings=3)
    assert seen.count("client 0: datagram") == 3  # every ping was answered
    failures = [r for r in caplog.records if "on_event callback raised" in r.getMessage()]
    assert len(failures) == len(calls) == server._hub.observer_errors > 3
    assert failures[0].exc_info is not None  # the first one with its traceback
    assert not any(r.exc_info for r in failures[1:])
