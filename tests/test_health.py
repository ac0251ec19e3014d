"""Issue 4, item 5: the health report.

``DTLSServer.statistics()`` returns a frozen :class:`StatisticsSnapshot`; ``as_dict()`` is what
an operator exports (JSON, a metrics system).  The limit, flood and fuzz tests assert the
counters that concern them; here the report as a whole: every field the issue names is there,
it serialises, and the traffic counters match, byte for byte, what the clients really sent and
received.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio
import trio.testing
from hostile_support import (
    KEY,
    WatchedClient,
    ack_for,
    connect,
    cookie_round_trip,
    drain,
    real_client_hello,
    serving_psk,
    udp_socket,
    udp_sockets,
)
from support import RecordingTransport, settle

from trio_dtls_server import DTLSClient, HandshakeError, StatisticsSnapshot

#: What the issue lists, by field: datagrams and bytes in and out; handshakes started,
#: completed and failed by reason; cookies sent, verified, rejected; drops by reason; peers now
#: and at peak; evictions; queue overflows.
ISSUE_FIELDS = {
    "datagrams_in": int,
    "datagrams_out": int,
    "bytes_in": int,
    "bytes_out": int,
    "handshakes_started": int,
    "handshakes_completed": int,
    "handshakes_failed": dict,
    "cookies_sent": int,
    "cookies_verified": int,
    "cookies_rejected": int,
    "drops": dict,
    "peers": int,
    "peak_peers": int,
    "evictions": int,
    "queue_overflows": int,
}


async def test_the_report_has_every_field_serialises_and_counts_traffic_exactly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keys = {"good": KEY, "wrong-key": KEY}
    async with serving_psk(psk=keys) as served:
        empty = served.server.statistics().as_dict()
        assert json.loads(json.dumps(empty)) == empty
        assert {name: type(empty[name]) for name in ISSUE_FIELDS} == ISSUE_FIELDS

        # Traffic of every kind, each from a transport that records what it sent and got.
        good = await connect(served.address, identity="good")
        for index in range(3):
            await good.round_trip(f"reading {index}".encode(), ack_for(good.address))
        failures: list[RecordingTransport] = []
        for identity, key in (("stranger", KEY), ("wrong-key", b"not the right key")):
            transport = RecordingTransport.over_socket(udp_socket(), served.address)
            failures.append(transport)
            with pytest.raises(HandshakeError):
                await DTLSClient.connect_over(transport, served.address, identity=identity, key=key)
        with udp_sockets(2) as [cookie_owner, thief]:
            # The owner's cookie exchange: one hello in, one HelloVerifyRequest out.
            stolen = await cookie_round_trip(cookie_owner, served.address)
            thief.sendto(stolen, served.address)  # a cookie for another port: rejected
            thief.sendto(b"\x17\xfe\xfd" + bytes(20), served.address)  # garbage: dropped
            thief.sendto(b"", served.address)  # empty: dropped
            await settle()
            [stolen_reply] = drain(thief)  # a HelloVerifyRequest, like any cookieless hello
        await good.client.aclose()
        await settle()

        report = served.server.statistics().as_dict()
        assert json.loads(json.dumps(report)) == report
        assert {name: type(report[name]) for name in ISSUE_FIELDS} == ISSUE_FIELDS
        assert set(report) == {field.name for field in dataclasses.fields(StatisticsSnapshot)}

    transports = [good.transport, *failures]
    sent = [datagram for transport in transports for datagram in transport.sent]
    received = [datagram for transport in transports for datagram in transport.received]
    owner_hello, hello_verify_request = len(real_client_hello()), 44
    thief_sent = [len(stolen), 23, 0]
    assert len(stolen_reply) == hello_verify_request
    assert (report["datagrams_in"], report["bytes_in"]) == (
        len(sent) + 1 + len(thief_sent),
        sum(map(len, sent)) + owner_hello + sum(thief_sent),
    )
    # The server answers the good client's close_notify with its own (RFC 5246 §7.2.1); it
    # arrives after the client closed its socket, so the recording transport never sees it.
    assert good.client.cipher == "ECDHE-PSK-CHACHA20-POLY1305"
    close_notify_answer = 13 + 2 + 16  # record header, the alert, the Poly1305 tag
    assert (report["datagrams_out"], report["bytes_out"]) == (
        len(received) + 2 + 1,
        sum(map(len, received)) + 2 * hello_verify_request + close_notify_answer,
    )
    assert report["handshakes_started"] == 3
    assert report["handshakes_completed"] == 1
    assert report["handshakes_failed"] == {"unknown identity": 1, "wrong key": 1}
    assert report["cookies_verified"] == 3
    assert report["cookies_rejected"] == 1
    assert report["cookies_sent"] == 3 + 1 + 1  # three clients, the cookie owner, the thief
    assert report["drops"] == {
        "not a ClientHello from an unknown peer": 1,
        "empty datagram": 1,
    }
    # At the peak: the good client and one of the failing handshakes.
    assert (report["peers"], report["peak_peers"], report["handshaking"]) == (0, 2, 0)
    assert (report["evictions"], report["queue_overflows"]) == (0, 0)
    assert (report["messages_received"], report["messages_sent"]) == (3, 3)
    assert report["remote_closed"] == 1


async def test_peers_now_and_at_peak() -> None:
    async with serving_psk() as served:
        clients: list[WatchedClient] = [await connect(served.address) for _ in range(3)]
        assert (served.server.statistics().peers, served.server.statistics().peak_peers) == (3, 3)
        for watched in clients[:2]:
            await watched.client.aclose()
        await settle()
        stats = served.server.statistics()
        assert (stats.peers, stats.peak_peers, stats.remote_closed) == (1, 3, 2)
        await clients[2].round_trip(b"still here", ack_for(clients[2].address))
        await clients[2].client.aclose()


async def test_a_snapshot_is_a_frozen_copy() -> None:
    async with serving_psk() as served:
        watched = await connect(served.address)
        snapshot = served.server.statistics()
        with pytest.raises(dataclasses.FrozenInstanceError):
            snapshot.peers = 5  # type: ignore[misc]
        snapshot.drops["made up"] = 1  # the server's own counters do not change
        await watched.round_trip(b"hi", ack_for(watched.address))
        later = served.server.statistics()
        assert "made up" not in later.drops
        assert later.messages_received == snapshot.messages_received + 1
        assert snapshot.as_dict()["messages_received"] == later.messages_received - 1
        await watched.client.aclose()
