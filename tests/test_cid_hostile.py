"""Connection ID floods (issue 12): nobody but the key holder moves or mutes a CID association.

A ``tls12_cid`` datagram finds its association by the CID in its header, whatever address it
comes from, so an attacker does not even need to spoof the victim's address: any address will
do.  The floods here come from many addresses at once:

* **random CIDs**: well-framed ``tls12_cid`` records whose CID matches no association: dropped
  by the reader unread, counted under ``"unknown connection id"``;
* **valid CID, bad MAC**: the victim's own CID and record shape with fresh sequence numbers and
  a flipped tag bit: they reach the victim's session (a CID is no secret: it is on the wire),
  fail authentication, are counted, and move nothing;
* **replays**: the victim's own authentic record, resent from other addresses: dropped by the
  replay check before any cryptography, moving nothing (RFC 9146 §6: only a record newer than
  any before may move an association).

Meanwhile the victim pings once a second and each ping must be answered within 0.1 s of fake
time, at the victim's own address (the canary, as in ``test_offpath.py``).  Once on the fake
network (Trio's autojump clock, 3,000 datagrams a second for 13 s), once over real loopback UDP
(bounded counts).
"""

from __future__ import annotations

import random
from collections import Counter

import trio
import trio.testing
from fakenet import Address, FakeNetwork
from hostile_support import first_ping, flood, forged_record
from support import EventRecorder, RawSocket

from trio_dtls_server import DTLSClient, DTLSServer, ServerConfig
from trio_dtls_server._codes import DropReason
from trio_dtls_server._wire import (
    ContentType,
)

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
SERVER: Address = ("127.0.0.1", 5684)
UNKNOWN_CID = "unknown connection id"
KINDS = ("random cid", "bad mac", "replay")
EXPECTED_REASON = {
    "random cid": UNKNOWN_CID,
    "bad mac": DropReason.AUTHENTICATION,
    "replay": DropReason.REPLAY,
}


def random_cid_record(rng: random.Random, cid_length: int, sequence: int) -> bytes:
    """A well-framed tls12_cid record with a random CID and a random body."""
    body = rng.randbytes(rng.randrange(24, 80))
    return (
        bytes((ContentType.tls12_cid, 0xFE, 0xFD, 0, 1))
        + sequence.to_bytes(6, "big")
        + rng.randbytes(cid_length)
        + len(body).to_bytes(2, "big")
        + body
    )


def cid_forgery(authentic: bytes, sequence: int) -> bytes:
    """The victim's CID record with a fresh sequence number and a flipped tag bit.

    (:func:`hostile_support.forged_record` rewrites bytes 5..11, the sequence number, which a
    tls12_cid header keeps in the same place.)
    """
    return forged_record(authentic, sequence)


class Flooder:
    def __init__(self, authentic: bytes, cid_length: int, seed: int) -> None:
        self.authentic = authentic
        self.cid_length = cid_length
        self.rng = random.Random(seed)

    def make(self, kind: str, n: int) -> bytes:
        if kind == "random cid":
            return random_cid_record(self.rng, self.cid_length, 10_000 + n)
        if kind == "bad mac":
            return cid_forgery(self.authentic, 100_000 + n)
        assert kind == "replay"
        return self.authentic

    def source(self) -> Address:
        """A random address: CID records need no spoofing of the victim's own."""
        return (
            f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.1",
            40_000 + self.rng.randrange(20_000),
        )


async def test_cid_floods_from_many_addresses_on_the_fake_network_cost_the_canary_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork(seed=3)
    server = DTLSServer(psk=KEY, config=ServerConfig(idle_timeout=30.0))
    async with trio.open_nursery() as nursery:
        events = (await EventRecorder.start(nursery, server, max_buffer=1_000_000)).events
        await nursery.start(server.serve_on, network.endpoint(SERVER))
        endpoint = network.endpoint()
        victim_address = endpoint.local_address
        victim = await DTLSClient.connect_over(
            endpoint, SERVER, identity="victim", key=KEY, connection_id=True
        )
        assert victim.server_connection_id is not None
        ack, authentic = await first_ping(
            network, victim, victim_address, SERVER, ContentType.tls12_cid
        )
        before = server.statistics()
        sent: Counter[str] = Counter()
        stop = trio.Event()
        flooder = Flooder(authentic, len(victim.server_connection_id), seed=4)
        nursery.start_soon(
            flood,
            network,
            SERVER,
            KINDS,
            lambda kind, n: (flooder.source(), flooder.make(kind, n)),
            sent,
            stop,
        )
        # 13 pings, one a second, under the flood: every one answered at once, and at the
        # victim's own address (nothing moved it).
        for index in range(1, 14):
            await trio.sleep(1.0)
            await victim.send(f"ping {index}".encode())
            with trio.fail_after(0.1):
                assert await victim.receive() == ack
        stop.set()
        await trio.sleep(0.5)
        stats = server.statistics()
        nursery.cancel_scope.cancel()
    assert sum(sent.values()) >= 13 * 3_000
    new_drops = {
        reason: count - before.drops.get(reason, 0)
        for reason, count in stats.drops.items()
        if count != before.drops.get(reason, 0)
    }
    assert new_drops == {EXPECTED_REASON[kind]: count for kind, count in sent.items()}
    assert (stats.peer_moves, stats.peer_moves_refused) == (0, 0)
    assert [e for e in events if e.code == "peer_moved"] == []
    assert stats.messages_received == 14
    assert stats.peers == 1


async def test_cid_floods_over_loopback_udp_move_nothing_and_are_counted() -> None:
    server = DTLSServer(psk=KEY)
    async with trio.open_nursery() as nursery:
        events = (await EventRecorder.start(nursery, server, max_buffer=1_000_000)).events
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        victim = await DTLSClient.connect(
            host, port, identity="victim", key=KEY, connection_id=True
        )
        # The victim's first record, kept for the forgeries and replays.
        victim._session.send(b"capture")
        (authentic,) = victim._session.take_datagrams()
        await victim._send_all([authentic])
        with trio.fail_after(5):
            first_reply = await victim.receive()
        assert first_reply.endswith(b"ACK")
        assert victim.server_connection_id is not None
        flooder = Flooder(authentic, len(victim.server_connection_id), seed=5)
        sent: Counter[str] = Counter()
        sockets = [RawSocket.bind(f"127.0.0.{2 + i}") for i in range(8)]
        try:
            worst = 0.0
            for round_number in range(5):
                for n in range(150):
                    kind = KINDS[n % len(KINDS)]
                    sockets[n % len(sockets)].send(
                        flooder.make(kind, round_number * 1_000 + n), (host, port)
                    )
                    sent[kind] += 1
                started = trio.current_time()
                await victim.send(f"ping {round_number}".encode())
                with trio.fail_after(5):
                    assert (await victim.receive()).endswith(b"ACK")
                worst = max(worst, trio.current_time() - started)
        finally:
            for sock in sockets:
                sock.close()
        stats = server.statistics()
        await victim.aclose()
        nursery.cancel_scope.cancel()
    # The pings were sent after each burst: by their answers, every forgery was judged.
    assert stats.drops[UNKNOWN_CID] == sent["random cid"]
    assert stats.drops[DropReason.AUTHENTICATION] == sent["bad mac"]
    assert stats.drops[DropReason.REPLAY] == sent["replay"]
    assert (stats.peer_moves, stats.peer_moves_refused) == (0, 0)
    assert [e for e in events if e.code == "peer_moved"] == []
    assert worst < 2.0, f"the canary waited {worst:.3f} s for an answer"
