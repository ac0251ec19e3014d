"""A fault in one peer never stops the server.

An application handler that raises, a PSK store that raises (synchronous and asynchronous, on
a full and on a resumed handshake), a client certificate that OpenSSL verifies but
``cryptography`` cannot parse (see ``lenient_certificates.py``), and any other exception in a
peer's handshake: each ends only that peer — with a fatal alert where one fits, an error event
naming the peer and the exception, and a counter — while a second client is served throughout.
:class:`DTLSClient` turns the same faults into :class:`HandshakeError`.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import support
import trio
import trustme
from auth_support import IDENTITY, KEY, ConnectionLog, connect, quiet
from cryptography import x509
from lenient_certificates import issue_lenient_certificate
from OpenSSL import SSL, crypto
from support import talk

from trio_dtls_server import (
    CertificateConfig,
    ConnectionClosed,
    DTLSClient,
    DTLSConnection,
    DTLSServer,
    ErrorEvent,
    HandshakeError,
)
from trio_dtls_server import _client as client_module
from trio_dtls_server._openssl import new_dtls_context
from trio_dtls_server._profiles import client_cipher_string
from trio_dtls_server._session import DTLSSession, RetransmitPolicy, SessionState
from trio_dtls_server._wire import parse_psk_identity_from_flight

OPENSSL = shutil.which("openssl")
FAULTY = "faulty-device"
OTHER_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100")
INTERNAL_ERROR_ALERT = "internal_error (80)"
UNKNOWN_IDENTITY_ALERT = "unknown_psk_identity (115)"


def from_port(client: DTLSClient) -> object:
    """An event ``where=`` that matches events about ``client``'s port."""
    port = client.local_address[1]
    return lambda event: event.peer is not None and event.peer[1] == port


# -- the application's handler -------------------------------------------------------------------


async def echo_unless_faulty(connection: DTLSConnection) -> None:
    """Echoes, but raises on the first datagram of FAULTY's connection."""
    async for data in connection:
        if connection.psk_identity == FAULTY.encode():
            raise RuntimeError("the handler broke")
        await connection.send(b"echo: " + data)


async def test_a_handler_that_raises_ends_only_its_own_peer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = DTLSServer({IDENTITY: KEY, FAULTY: KEY}, handler=echo_unless_faulty)
    caplog.set_level(logging.ERROR, logger="trio_dtls_server")
    async with support.serving(server) as running:
        async with await connect(running) as healthy:
            assert await talk(healthy) == b"echo: ping"
            async with await connect(running, FAULTY) as faulty:
                await faulty.send(b"break it")
                # The peer learns at once: close_notify, not a silent timeout.
                with trio.fail_after(support.WAIT_LIMIT), pytest.raises(ConnectionClosed) as end:
                    await faulty.receive()
                assert end.value.reason == "the server sent close_notify"
            failed = await running.events.wait_for("handler_failed")
            assert isinstance(failed, ErrorEvent)
            assert failed.peer is not None and failed.peer[1] == faulty.local_address[1]
            assert "the handler raised RuntimeError: the handler broke" in failed.message
            assert isinstance(failed.exception, RuntimeError)
            # The other peer never noticed; a new one is welcome.
            assert await talk(healthy, b"still here") == b"echo: still here"
            async with await connect(running) as newcomer:
                assert await talk(newcomer) == b"echo: ping"
        stats = server.statistics()
        assert stats.peer_failures == {"handler": 1}
        assert stats.handshakes_failed == {}
    # The log has the traceback, as logging.exception would write it.
    [record] = [r for r in caplog.records if "the handler raised" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "echo_unless_faulty" in caplog.text  # the frame that raised


async def test_a_handler_whose_nursery_sees_its_connection_close_ends_normally() -> None:
    """A group of nothing but ConnectionClosed (a handler with a nursery) is a normal end."""

    async def handler(connection: DTLSConnection) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.receive)
            await connection.receive()

    server = DTLSServer({IDENTITY: KEY}, handler=handler)
    async with support.serving(server) as running:
        client = await connect(running)
        await client.aclose()
        await running.events.wait_for("remote_closed")
        await support.settle()
        assert running.events.with_code("handler_failed") == []
        assert server.statistics().peer_failures == {}


# -- PSK stores that raise -----------------------------------------------------------------------


@dataclass
class FlakyStore:
    """A synchronous store that raises while ``broken``."""

    keys: dict[bytes, bytes]
    broken: bool = False

    def lookup(self, identity: bytes) -> bytes | None:
        if self.broken:
            raise ConnectionError("database is down")
        return self.keys.get(identity)


@dataclass
class FlakyAsyncStore:
    """The same, asynchronous."""

    keys: dict[bytes, bytes]
    broken: bool = False

    async def lookup(self, identity: bytes) -> bytes | None:
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise ConnectionError("database is down")
        return self.keys.get(identity)


@pytest.mark.parametrize("store_kind", [FlakyStore, FlakyAsyncStore], ids=["sync", "async"])
@pytest.mark.parametrize("handshake", ["full", "resumed"])
async def test_a_psk_store_that_raises_fails_only_that_handshake(
    store_kind: type[FlakyStore], handshake: str
) -> None:
    store = store_kind({IDENTITY.encode(): KEY, FAULTY.encode(): OTHER_KEY})
    server = DTLSServer(store, handler=ConnectionLog())
    async with support.serving(server) as running:
        healthy = await connect(running)
        assert await talk(healthy) == b"echo: ping"
        session = None
        if handshake == "resumed":
            async with await connect(running, FAULTY, OTHER_KEY) as first:
                assert await talk(first) == b"echo: ping"
                session = first.tls_session
        store.broken = True
        if handshake == "full":
            with pytest.raises(HandshakeError) as refused:
                await connect(running, FAULTY, OTHER_KEY)
            # A fatal alert, at once: the client does not wait out its handshake timeout.
            assert refused.value.alert == UNKNOWN_IDENTITY_ALERT
        else:
            # The abbreviated handshake finishes on the client first; then the server, unable
            # to confirm the identity, says goodbye.
            async with await connect(running, FAULTY, OTHER_KEY, tls_session=session) as resumed:
                assert resumed.resumed is True
                with trio.fail_after(support.WAIT_LIMIT), pytest.raises(ConnectionClosed):
                    await resumed.receive()
        failed = await running.events.wait_for("handshake_failed")
        assert failed.peer is not None
        assert "the store raised ConnectionError: database is down" in failed.message
        # Established peers never touch the store: the healthy one goes on.
        assert await talk(healthy, b"still here") == b"echo: still here"
        store.broken = False
        async with await connect(running, FAULTY, OTHER_KEY) as again:
            assert await talk(again) == b"echo: ping"
        await healthy.aclose()
        stats = server.statistics()
        assert stats.handshakes_failed == {"PSK lookup failed": 1}
        assert stats.peer_failures == {}


# -- any other fault during a handshake ------------------------------------------------------------


async def test_an_unexpected_exception_in_a_handshake_ends_it_with_internal_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever breaks inside a peer's handshake: that peer gets ``internal_error``."""
    receive_datagram = DTLSSession.receive_datagram

    def breaks_on_faulty_key_exchange(
        self: DTLSSession, datagram: bytes, now: float
    ) -> list[object]:
        if (
            self.state is SessionState.HANDSHAKING
            and datagram[:1] == b"\x16"
            and parse_psk_identity_from_flight(datagram) == FAULTY.encode()
        ):
            raise RuntimeError("injected fault")
        return receive_datagram(self, datagram, now)  # type: ignore[return-value]

    monkeypatch.setattr(DTLSSession, "receive_datagram", breaks_on_faulty_key_exchange)
    caplog.set_level(logging.ERROR, logger="trio_dtls_server")
    server = DTLSServer({IDENTITY: KEY, FAULTY: KEY}, handler=ConnectionLog())
    async with support.serving(server) as running:
        async with await connect(running) as healthy:
            started = trio.current_time()
            with pytest.raises(HandshakeError) as refused:
                await connect(running, FAULTY)
            assert refused.value.alert == INTERNAL_ERROR_ALERT
            assert trio.current_time() - started < 5.0  # no retransmission was needed
            failed = await running.events.wait_for("handshake_failed")
            assert isinstance(failed, ErrorEvent)
            assert failed.message.endswith(
                "handshake failed: internal error: RuntimeError: injected fault; "
                f"fatal alert sent: {INTERNAL_ERROR_ALERT}"
            )
            assert isinstance(failed.exception, RuntimeError)
            assert await talk(healthy) == b"echo: ping"
        await support.settle()
        stats = server.statistics()
        assert stats.handshakes_failed == {"internal error": 1}
        assert stats.peer_failures == {"handshake": 1}
        assert (stats.peers, stats.handshaking) == (0, 0)  # the table entry went with it
    assert any(r.exc_info is not None for r in caplog.records)


async def test_the_client_turns_an_unexpected_exception_into_handshake_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receive_datagram = DTLSSession.receive_datagram

    def breaks_on_the_client(self: DTLSSession, datagram: bytes, now: float) -> list[object]:
        driver = self._driver  # (the handshake's, while it runs)
        if driver is not None and not driver._is_server:
            raise RuntimeError("injected fault")
        return receive_datagram(self, datagram, now)  # type: ignore[return-value]

    server = DTLSServer({IDENTITY: KEY})
    async with support.serving(server) as running:
        monkeypatch.setattr(DTLSSession, "receive_datagram", breaks_on_the_client)
        with pytest.raises(HandshakeError) as refused:
            await connect(running)
        assert str(refused.value) == (
            f"{IDENTITY}: handshake error - internal error: RuntimeError: injected fault"
        )
        assert isinstance(refused.value.__cause__, RuntimeError)


# -- certificates ``cryptography`` cannot parse ----------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_pem: Path
    lenient_client_pem: Path
    lenient_server_pem: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("lenient")
    ca = trustme.CA(organization_name="an old device CA")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("server.test", "127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    return Pki(
        ca=directory / "ca.pem",
        server_pem=directory / "server.pem",
        lenient_client_pem=issue_lenient_certificate(ca, "old-device", directory / "old.pem"),
        lenient_server_pem=issue_lenient_certificate(
            ca, "old-server", directory / "old-server.pem", ip_address="127.0.0.1"
        ),
    )


def test_the_lenient_certificates_are_what_they_claim(pki: Pki) -> None:
    """OpenSSL verifies them against the CA; cryptography refuses to parse them."""
    store = crypto.X509Store()
    store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, pki.ca.read_bytes()))
    for path in (pki.lenient_client_pem, pki.lenient_server_pem):
        pem = path.read_bytes()
        certificate = crypto.load_certificate(crypto.FILETYPE_PEM, pem)
        crypto.X509StoreContext(store, certificate).verify_certificate()  # raises if refused
        with pytest.raises(ValueError, match="EncodedDefault"):
            x509.load_pem_x509_certificate(pem)
        if OPENSSL is not None:
            command = [OPENSSL, "verify", "-CAfile", str(pki.ca), str(path)]
            verdict = subprocess.run(command, capture_output=True, text=True, timeout=20)
            assert verdict.returncode == 0, verdict.stderr
            assert verdict.stdout.strip() == f"{path}: OK"


def certificate_ciphers() -> str:
    return client_cipher_string("default", psk=False, verify_server=True)


async def test_a_client_certificate_cryptography_cannot_parse_is_refused_alone(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CertificateConfig(pki.server_pem, client_certificates="required", client_ca=pki.ca)
    server = DTLSServer({IDENTITY: KEY}, certificate=config, handler=ConnectionLog())
    # The device's client: OpenSSL reads its certificate file, as the device's own stack would
    # (our DTLSClient checks its files with cryptography, which refuses this one).
    context = new_dtls_context(server=False, ciphers=certificate_ciphers())
    context.load_verify_locations(str(pki.ca))
    context.set_verify(SSL.VERIFY_PEER)
    context.use_certificate_file(str(pki.lenient_client_pem))
    context.use_privatekey_file(str(pki.lenient_client_pem))
    async with support.serving(server) as running:
        async with await connect(running) as healthy:
            assert await talk(healthy) == b"echo: ping"
            with monkeypatch.context() as patch:
                patch.setattr(client_module, "_client_context", lambda *args: context)
                started = trio.current_time()
                with pytest.raises(HandshakeError) as refused:
                    await DTLSClient.connect(running.host, running.port, ca=pki.ca, on_event=quiet)
            assert trio.current_time() - started < 5.0
            assert refused.value.alert == "bad_certificate (42)"  # told at once, and why
            failed = await running.events.wait_for("handshake_failed")
            assert "not DER-encoded" in failed.message
            assert "EncodedDefault" in failed.message  # cryptography's own words
            assert f"fatal alert sent: {refused.value.alert}" in failed.message
            assert await talk(healthy, b"still here") == b"echo: still here"
        stats = server.statistics()
        assert stats.handshakes_failed == {"bad certificate": 1}
        assert stats.peer_failures == {}


async def test_the_client_refuses_a_server_certificate_cryptography_cannot_parse(
    pki: Pki,
) -> None:
    """DTLSClient: a clear HandshakeError, never cryptography's ValueError."""
    context = new_dtls_context(server=True, ciphers=certificate_ciphers())
    context.use_certificate_file(str(pki.lenient_server_pem))
    context.use_privatekey_file(str(pki.lenient_server_pem))
    context.set_cookie_generate_callback(lambda connection: b"\x5a" * 16)
    context.set_cookie_verify_callback(lambda connection, cookie: True)
    with support.RawSocket.bind() as server_socket:

        async def serve_one_handshake() -> None:
            first, client = await server_socket.receive()
            server_socket.send(support.hello_verify_request_for(first), client)
            hello, _ = await server_socket.receive()
            session = DTLSSession.server(
                context,
                hello,
                now=trio.current_time(),
                mtu=1400,
                policy=RetransmitPolicy(),
                psk_lookup=None,
            )
            while session.state is SessionState.HANDSHAKING:
                for datagram in session.take_datagrams():
                    server_socket.send(datagram, client)
                datagram, _ = await server_socket.receive()
                session.receive_datagram(datagram, trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one_handshake)
            with pytest.raises(HandshakeError) as refused:
                await DTLSClient.connect(
                    *server_socket.address, ca=pki.ca, on_event=quiet, handshake_timeout=30.0
                )
            nursery.cancel_scope.cancel()
    assert "not DER-encoded" in str(refused.value)


# -- the reader ------------------------------------------------------------------------------------


async def test_a_datagram_the_reader_chokes_on_is_dropped_and_the_reader_reads_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = DTLSServer({IDENTITY: KEY}, handler=ConnectionLog())
    async with support.serving(server) as running:
        on_client_hello = server._on_client_hello

        def chokes_on_one_port(datagram: bytes, address: tuple[str, int], *rest: object) -> None:
            if address[1] == victim.address[1]:
                raise RuntimeError("injected fault")
            on_client_hello(datagram, address, *rest)  # type: ignore[arg-type]

        monkeypatch.setattr(server, "_on_client_hello", chokes_on_one_port)
        with support.RawSocket.bind() as victim:
            victim.send(support.MemoryBioClient().start(), running.address)
            failed = await running.events.wait_for("datagram_failed")
        assert isinstance(failed, ErrorEvent)
        assert failed.message.endswith(
            "internal error, datagram dropped: RuntimeError: injected fault"
        )
        assert isinstance(failed.exception, RuntimeError)
        async with await connect(running) as client:
            assert await talk(client) == b"echo: ping"
        assert server.statistics().drops == {"internal error": 1}
