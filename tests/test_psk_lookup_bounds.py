"""PSK lookups are bounded: one per handshake, one answer kept, identities OpenSSL would take.

Before, every epoch-0 ClientKeyExchange with a new identity in a verified handshake made the
asynchronous store look it up (each up to ``psk_lookup_timeout``), and every answer was kept
for the whole handshake: 300 datagrams from one verified port made 300 lookups.  Now the store
is asked once, for the ClientKeyExchange OpenSSL will process; an identity longer than OpenSSL
takes (256 bytes since OpenSSL 1.1.0; 257 are refused with ``decode_error``) is refused by the
parser, counted, and never looked up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import support
import trio
from auth_support import ConnectionLog, make_credentials, quiet

from trio_dtls_server import CertificateConfig, DTLSClient, DTLSServer
from trio_dtls_server._wire import (
    ContentType,
    HandshakeType,
    parse_records,
    split_records,
)


class CountingStore:
    """An asynchronous store that records every identity it is asked about."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    async def lookup(self, identity: bytes) -> bytes | None:
        self.asked.append(identity)
        await trio.lowlevel.checkpoint()
        return support.KEY if identity == support.IDENTITY.encode() else None


@asynccontextmanager
async def verified_port(
    running: support.RunningServer,
) -> AsyncIterator[tuple[support.RawSocket, support.MemoryBioClient, list[bytes]]]:
    """A real client, by hand, up to its ClientKeyExchange: (socket, client, its flight's
    records: ClientKeyExchange, ChangeCipherSpec, Finished), nothing of the flight sent yet."""
    client = support.MemoryBioClient()
    with support.RawSocket.bind() as sock:
        sock.send(client.start(), running.address)
        hello_verify_request, _ = await sock.receive()
        [hello] = client.feed(hello_verify_request)
        sock.send(hello, running.address)
        flight: list[bytes] = []
        while not flight:
            datagram, _ = await sock.receive()
            flight = client.feed(datagram)
        records = [record for datagram in flight for record in split_records(datagram)]
        assert records[0][13] == HandshakeType.client_key_exchange
        yield sock, client, records


def key_exchange_like(real: bytes, identity: bytes) -> bytes:
    """A ClientKeyExchange record like ``real`` (same record and message numbers) naming
    ``identity``: the shape OpenSSL would process, if it had not processed ``real`` already."""
    body = len(identity).to_bytes(2, "big") + identity
    length = len(body).to_bytes(3, "big")
    header = bytes((HandshakeType.client_key_exchange,)) + length + real[17:19] + bytes(3) + length
    message = header + body
    return real[:11] + len(message).to_bytes(2, "big") + message


async def test_one_psk_lookup_per_handshake_whatever_the_client_sends() -> None:
    store = CountingStore()
    server = DTLSServer(store, handler=ConnectionLog())
    async with support.serving(server) as running, verified_port(running) as (sock, client, flight):
        key_exchange, *rest = flight
        sock.send(key_exchange, running.address)
        await support.settle()
        # 299 more, each naming a new 100-byte identity: OpenSSL processes none of them.
        for batch in range(13):
            for index in range(batch * 23, min(batch * 23 + 23, 299)):
                identity = f"forged-{index:03d}-".encode().ljust(100, b"x")
                sock.send(key_exchange_like(key_exchange, identity), running.address)
            await support.settle()
        assert store.asked == [support.IDENTITY.encode()]
        # The real handshake still completes.
        sock.send(b"".join(rest), running.address)
        with trio.fail_after(support.WAIT_LIMIT):
            while not client.established:
                datagram, _ = await sock.receive()
                client.feed(datagram)
        await running.events.wait_for("handshake_complete")
        assert store.asked == [support.IDENTITY.encode()]
        assert server.statistics().drops.get("malformed ClientKeyExchange", 0) == 0


@pytest.mark.parametrize("length", [256, 257])
async def test_identities_longer_than_openssl_takes_are_never_looked_up(length: int) -> None:
    """OpenSSL 1.1.0 and later take PSK identities of up to 256 bytes (PSK_MAX_IDENTITY_LEN)."""
    store = CountingStore()
    server = DTLSServer(store, handler=ConnectionLog())
    identity = b"i" * length
    async with support.serving(server) as running, verified_port(running) as (sock, _, flight):
        sock.send(key_exchange_like(flight[0], identity), running.address)
        # Either way OpenSSL refuses the handshake with a fatal alert, at once.
        with trio.fail_after(support.WAIT_LIMIT):
            while True:
                datagram, _ = await sock.receive()
                alerts = [r for r in parse_records(datagram) if r.content_type == ContentType.alert]
                if alerts:
                    break
        assert alerts[0].fragment[0] == 2  # fatal
        await running.events.wait_for("handshake_failed")
        stats = server.statistics()
        if length == 256:
            assert store.asked == [identity]
            assert alerts[0].fragment[1] == 115  # unknown_psk_identity
            assert "malformed ClientKeyExchange" not in stats.drops
        else:
            assert store.asked == []
            assert alerts[0].fragment[1] == 50  # decode_error: OpenSSL refuses it too
            assert stats.drops["malformed ClientKeyExchange"] == 1
            [warning] = running.events.with_code("malformed_client_key_exchange")
            assert warning.message.endswith(
                "malformed ClientKeyExchange: PSK identity of 257 bytes exceeds OpenSSL's limit "
                "of 256; no PSK lookup"
            )


async def test_a_certificate_handshake_never_asks_the_psk_store(tmp_path: Path) -> None:
    """On a server with both, a certificate client's ClientKeyExchange is not read as PSK."""
    credentials = make_credentials(tmp_path)
    store = CountingStore()
    server = DTLSServer(
        store, certificate=CertificateConfig(credentials.server_pem), handler=ConnectionLog()
    )
    async with support.serving(server) as running:
        async with await DTLSClient.connect(
            running.host, running.port, ca=credentials.ca, on_event=quiet
        ) as client:
            assert client.cipher.startswith("ECDHE-ECDSA-")
            await client.send(b"ping")
            assert await client.receive() == b"echo: ping"
        async with await DTLSClient.connect(
            running.host, running.port, identity=support.IDENTITY, key=support.KEY, on_event=quiet
        ) as device:
            assert "PSK" in device.cipher
        assert store.asked == [support.IDENTITY.encode()]  # the PSK device's, only
        assert server.statistics().drops == {}
