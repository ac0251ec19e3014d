"""Session resumption: on by default, counted, bounded in lifetime, and never a way around a
revoked key.  Shown with our client (``tls_session=``) and with ``openssl s_client -sess_out`` /
``-sess_in``, which prints ``Reused`` when the server resumed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import support
import trio
from auth_support import (
    CLIENT_SUBJECT,
    IDENTITY,
    KEY,
    ConnectionLog,
    Credentials,
    connect,
    quiet,
)
from support import talk

from trio_dtls_server import (
    CertificateConfig,
    ConnectionClosed,
    DTLSClient,
    DTLSServer,
    ServerConfig,
)


async def test_our_client_resumes_and_the_server_counts_it() -> None:
    log = ConnectionLog()
    server = DTLSServer({IDENTITY: KEY}, handler=log)
    async with support.serving(server) as running:
        async with await connect(running) as first:
            assert await talk(first) == b"echo: ping"
            assert first.resumed is False
            assert first.tls_session is not None
        async with await connect(running, tls_session=first.tls_session) as second:
            assert await talk(second) == b"echo: ping"
            assert second.resumed is True
            assert second.cipher == first.cipher
        full, resumed = log.connections
        assert (full.resumed, resumed.resumed) == (False, True)
        # A resumed handshake never asks for the key, yet the identity is known.
        assert resumed.psk_identity == IDENTITY.encode()
        stats = server.statistics()
        assert (stats.handshakes_completed, stats.handshakes_resumed) == (2, 1)
        event = await running.events.wait_for("session_resumed")
        assert len(running.events.with_code("session_resumed")) == 1
        assert event.message.endswith("resumed an earlier session (abbreviated handshake)")


async def test_resumption_can_be_turned_off() -> None:
    log = ConnectionLog()
    server = DTLSServer({IDENTITY: KEY}, handler=log, config=ServerConfig(session_resumption=False))
    async with support.serving(server) as running:
        async with await connect(running) as first:
            assert await talk(first) == b"echo: ping"
        async with await connect(running, tls_session=first.tls_session) as second:
            assert await talk(second) == b"echo: ping"
            assert second.resumed is False
        stats = server.statistics()
        assert (stats.handshakes_completed, stats.handshakes_resumed) == (2, 0)
        assert [c.resumed for c in log.connections] == [False, False]


def test_session_lifetime_becomes_openssls_session_timeout() -> None:
    assert DTLSServer({IDENTITY: KEY})._context.get_timeout() == 3600
    short = DTLSServer({IDENTITY: KEY}, config=ServerConfig(session_lifetime=90.5))
    assert short._context.get_timeout() == 91
    with pytest.raises(ValueError, match="session_lifetime must be positive, not -1"):
        ServerConfig(session_lifetime=-1)


async def test_a_session_from_another_server_is_not_resumed() -> None:
    one = DTLSServer({IDENTITY: KEY})
    other = DTLSServer({IDENTITY: KEY})
    async with support.serving(one) as first_server, support.serving(other) as second_server:
        async with await connect(first_server) as first:
            pass
        async with await connect(second_server, tls_session=first.tls_session) as second:
            assert second.resumed is False
    assert other.statistics().handshakes_resumed == 0
    assert other.statistics().handshakes_completed == 1


async def test_certificate_sessions_resume_with_their_verified_certificate(
    credentials: Credentials,
) -> None:
    log = ConnectionLog()
    config = CertificateConfig(
        credentials.server_pem, client_certificates="required", client_ca=credentials.ca
    )
    server = DTLSServer(certificate=config, handler=log)
    options = {"ca": credentials.ca, "certificate": credentials.client_pem, "on_event": quiet}
    async with support.serving(server) as running:
        async with await DTLSClient.connect(running.host, running.port, **options) as first:  # type: ignore[arg-type]
            assert await talk(first) == b"echo: ping"
        async with await DTLSClient.connect(
            running.host,
            running.port,
            tls_session=first.tls_session,
            **options,  # type: ignore[arg-type]
        ) as second:
            assert await talk(second) == b"echo: ping"
            assert second.resumed is True
            assert second.peer_certificate == first.peer_certificate
        assert [c.peer_subject for c in log.connections] == [CLIENT_SUBJECT, CLIENT_SUBJECT]
        assert log.connections[1].resumed is True
        assert log.connections[1].psk_identity is None


class RevocableStore:
    """A store whose keys can be withdrawn, with no ``generation`` to announce it."""

    def __init__(self) -> None:
        self.keys = {IDENTITY.encode(): KEY}

    def lookup(self, identity: bytes) -> bytes | None:
        return self.keys.get(identity)


class RevocableAsyncStore(RevocableStore):
    async def lookup(self, identity: bytes) -> bytes | None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        return self.keys.get(identity)


@pytest.mark.parametrize("store_kind", [RevocableStore, RevocableAsyncStore])
async def test_a_revoked_identity_cannot_live_on_through_resumption(
    store_kind: type[RevocableStore],
) -> None:
    store = store_kind()
    log = ConnectionLog()
    server = DTLSServer(store, handler=log)
    async with support.serving(server) as running:
        async with await connect(running) as first:
            assert await talk(first) == b"echo: ping"
        del store.keys[IDENTITY.encode()]
        # The abbreviated handshake completes on the client, then the server says goodbye.
        async with await connect(running, tls_session=first.tls_session) as second:
            assert second.resumed is True
            with pytest.raises(ConnectionClosed) as closed:
                await second.receive()
            assert closed.value.reason == "the server sent close_notify"
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith(
            f"handshake failed: resumed session of PSK identity '{IDENTITY}' refused: "
            "the identity is no longer known"
        )
        stats = server.statistics()
        assert stats.handshakes_failed == {"unknown identity": 1}
        assert (stats.handshakes_completed, stats.handshakes_resumed) == (1, 0)
        assert len(log.connections) == 1  # the handler never saw the refused peer


# -- with OpenSSL's own client -------------------------------------------------------------------

OPENSSL = shutil.which("openssl")


async def _s_client(port: int, *session_options: str) -> str:
    command = [
        OPENSSL or "openssl",
        "s_client",
        "-dtls1_2",
        "-connect",
        f"127.0.0.1:{port}",
        "-psk",
        KEY.hex(),
        "-psk_identity",
        IDENTITY,
        *session_options,
    ]
    # stdin is empty: s_client handshakes, reads EOF, says close_notify and exits.
    with trio.fail_after(20):
        result = await trio.run_process(
            command,
            stdin=b"",
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    output: str = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output
    return output


@pytest.mark.interop
@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
async def test_openssl_s_client_resumes_with_sess_out_and_sess_in(tmp_path: Path) -> None:
    server = DTLSServer({IDENTITY: KEY})
    saved = tmp_path / "session.pem"
    async with support.serving(server) as running:
        first = await _s_client(running.port, "-sess_out", str(saved))
        assert "New, TLSv1.2, Cipher is " in first
        assert saved.read_text().startswith("-----BEGIN SSL SESSION PARAMETERS-----")
        second = await _s_client(running.port, "-sess_in", str(saved))
        assert "Reused, TLSv1.2, Cipher is " in second
        await running.events.wait_for("session_resumed")
        stats = server.statistics()
        assert (stats.handshakes_completed, stats.handshakes_resumed) == (2, 1)
