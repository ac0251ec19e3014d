"""What a half-open handshake costs the server, in RSS, on loopback.

``python -m benchmarks.half_open_memory [--peers N] [--scenario junk|lookup]`` starts a server
in this process, then N clients on plain UDP sockets do the cookie exchange and receive the
server's first flight, and then never finish:

* ``junk``: each sends 40 well-framed epoch-1 records of 16,000 bytes (handshake and
  application data, alternately) that will never authenticate (``--pace 0.002`` spaces them
  so that they reach the session rather than meeting a full inbox);
* ``lookup``: the server's PSK store is asynchronous and never answers in time; each client
  sends its real flight (the lookup starts and the peer task waits for it), then 64 datagrams of
  16,000 bytes of the same junk, which wait in its inbox.

It prints the RSS per half-open peer before the junk (the handshake state itself) and what the
junk added.  Bounded: at most a few hundred peers, each sending a fixed number of datagrams.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import struct
import sys

import trio

from trio_dtls_server import DTLSServer, ServerConfig
from trio_dtls_server._psk import AsyncFunctionStore
from trio_dtls_server._wire import pack_datagrams, split_records

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import support  # the tests' MemoryBioClient and RawSocket

JUNK_RECORDS = 40
INBOX_DATAGRAMS = 64
JUNK_SIZE = 16_000


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def junk(sequence: int, content_type: int) -> bytes:
    body = random.Random(sequence).randbytes(JUNK_SIZE)
    header = struct.pack("!BHH", content_type, 0xFEFD, 1) + sequence.to_bytes(6, "big")
    return header + len(body).to_bytes(2, "big") + body


async def half_open(port: int, scenario: str) -> tuple[support.RawSocket, bytes]:
    """One client up to the server's first flight; returns its socket and its own flight."""
    sock = support.RawSocket.bind()
    client = support.MemoryBioClient()
    server = ("127.0.0.1", port)
    sock.send(client.start(), server)
    verify, _ = await sock.receive()
    (hello,) = client.feed(verify)
    sock.send(hello, server)
    flight: list[bytes] = []
    while not flight:
        datagram, _ = await sock.receive()
        flight = client.feed(datagram)
    raw = b"".join(flight)
    return sock, b"".join(pack_datagrams(split_records(raw), 1400))


async def main(peers: int, scenario: str, pace: float) -> None:
    async def never(identity: bytes) -> bytes | None:
        await trio.sleep_forever()
        return None

    config = ServerConfig(max_handshakes=max(peers, 1), psk_lookup_timeout=300.0)
    if scenario == "lookup":
        server = DTLSServer(psk=AsyncFunctionStore(never), config=config)
    else:
        server = DTLSServer({support.IDENTITY: support.KEY}, config=config)
    async with support.serving(server) as running:
        gc.collect()
        await trio.sleep(0.2)
        before = rss()
        clients = [await half_open(running.port, scenario) for _ in range(peers)]
        gc.collect()
        await trio.sleep(0.5)
        handshaking = rss()
        target = ("127.0.0.1", running.port)
        for index, (sock, flight) in enumerate(clients):
            if scenario == "lookup":
                sock.send(flight, target)
                await trio.sleep(0)
                count = INBOX_DATAGRAMS
            else:
                count = JUNK_RECORDS
            for sequence in range(count):
                sock.send(junk(index * 1000 + sequence, 22 if sequence % 2 else 23), target)
                if pace:
                    await trio.sleep(pace)
                elif sequence % 8 == 7:
                    await trio.sleep(0.001)
        await trio.sleep(2.0)
        gc.collect()
        after = rss()
        statistics = server.statistics()
        print(f"scenario {scenario}, {peers} half-open peers")
        print(f"  handshake state: {(handshaking - before) / peers / 1024:8.1f} KiB per peer")
        print(f"  junk added:      {(after - handshaking) / peers / 1024:8.1f} KiB per peer")
        print(f"  total:           {(after - before) / peers / 1024:8.1f} KiB per peer")
        print(f"  handshaking {statistics.handshaking}, drops {dict(statistics.drops)}")
        for sock, _ in clients:
            sock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--scenario", choices=["junk", "lookup"], default="junk")
    parser.add_argument(
        "--pace", type=float, default=0.0, help="seconds between one peer's junk datagrams"
    )
    arguments = parser.parse_args()
    trio.run(main, min(arguments.peers, 1_000), arguments.scenario, max(arguments.pace, 0.0))
