"""Interoperability of the authentication features with Debian's DTLS clients.

``openssl s_client`` (OpenSSL 3.0) with certificates, with a client certificate, with a CA that
does not match, with RFC 7925's ``PSK-AES128-CCM8`` against the ``iot`` profile (and refused by
``default``); GnuTLS ``gnutls-cli`` with plain PSK (its ECDHE-PSK/DHE-PSK paths crash the
Debian build, so they are not used), with CCM_8 against ``iot``, and receiving our alerts for a
wrong key and an unknown identity.

The server runs in the test's own Trio run on 127.0.0.1 (port 0); each client is a subprocess
with a bounded lifetime, killed by its handle if it outlives the test's timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

import pytest
import support
import trio
from auth_support import (
    CLIENT_SUBJECT,
    IDENTITY,
    KEY,
    ConnectionLog,
    Credentials,
)
from interop_support import kill_and_reap

from trio_dtls_server import CertificateConfig, DTLSServer, ServerConfig

OPENSSL = shutil.which("openssl")
GNUTLS = shutil.which("gnutls-cli")

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
needs_gnutls = pytest.mark.skipif(GNUTLS is None, reason="gnutls-cli is not installed")

pytestmark = pytest.mark.interop

#: Longest any one external client may run.
CLIENT_LIMIT = 20.0


async def converse(
    command: Sequence[str], *, send: bytes | None = None, expect: bytes | None = None
) -> str:
    """Run ``command``; write ``send`` and keep stdin open until ``expect`` shows in its
    output; then close stdin (the client says goodbye and exits).  Returns the output (stdout
    and stderr together).  The process is killed if it is still running when we leave."""
    process = await trio.lowlevel.open_process(
        list(command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdin is not None and process.stdout is not None
    output = bytearray()
    try:
        with trio.fail_after(CLIENT_LIMIT):
            if send is not None:
                await process.stdin.send_all(send)
            while expect is not None and expect not in output:
                chunk = await process.stdout.receive_some(65536)
                if not chunk:
                    break
                output += chunk
            await process.stdin.aclose()
            while chunk := await process.stdout.receive_some(65536):
                output += chunk
            await process.wait()
    finally:
        await kill_and_reap(process)
    return output.decode(errors="replace")


def s_client(port: int, *options: str) -> list[str]:
    return [OPENSSL or "openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}", *options]


def s_client_psk(port: int, *options: str, identity: str = IDENTITY, key: bytes = KEY) -> list[str]:
    return s_client(port, "-psk", key.hex(), "-psk_identity", identity, *options)


def gnutls_cli(
    port: int, priority: str, *, identity: str = IDENTITY, key: bytes = KEY
) -> list[str]:
    return [
        GNUTLS or "gnutls-cli",
        "--udp",
        "--port",
        str(port),
        "--priority",
        priority,
        "--pskusername",
        identity,
        "--pskkey",
        key.hex(),
        "127.0.0.1",
    ]


#: Plain PSK over DTLS 1.2 only.
GNUTLS_PSK = "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK"


# -- openssl s_client ----------------------------------------------------------------------------


@needs_openssl
async def test_s_client_verifies_our_ecdsa_certificate(credentials: Credentials) -> None:
    log = ConnectionLog()
    server = DTLSServer(certificate=CertificateConfig(credentials.server_pem), handler=log)
    async with support.serving(server) as running:
        output = await converse(
            s_client(running.port, "-CAfile", str(credentials.ca), "-verify_return_error"),
            send=b"hello\n",
            expect=b"echo: hello",
        )
        assert "Verify return code: 0 (ok)" in output
        assert "Cipher is ECDHE-ECDSA-AES256-GCM-SHA384" in output
        assert "echo: hello" in output
        assert log.connections[0].cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"


@needs_openssl
async def test_s_client_with_a_client_certificate_is_seen_by_subject(
    credentials: Credentials,
) -> None:
    log = ConnectionLog()
    config = CertificateConfig(
        credentials.server_certificate,
        credentials.server_key,
        client_certificates="required",
        client_ca=credentials.ca,
    )
    server = DTLSServer({IDENTITY: KEY}, certificate=config, handler=log)
    async with support.serving(server) as running:
        output = await converse(
            s_client(
                running.port,
                "-CAfile",
                str(credentials.ca),
                "-cert",
                str(credentials.client_pem),
                "-key",
                str(credentials.client_pem),
            ),
            send=b"who am I\n",
            expect=b"echo: who am I",
        )
        assert "echo: who am I" in output
        assert log.connections[0].peer_subject == CLIENT_SUBJECT


@needs_openssl
async def test_s_client_refuses_a_server_its_ca_did_not_sign(credentials: Credentials) -> None:
    server = DTLSServer(certificate=CertificateConfig(credentials.server_pem))
    async with support.serving(server) as running:
        output = await converse(
            s_client(running.port, "-CAfile", str(credentials.untrusted_ca), "-verify_return_error")
        )
        assert "certificate verify failed" in output
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith("the client sent the fatal alert unknown_ca (48)")


@needs_openssl
async def test_s_client_ccm8_against_the_iot_profile() -> None:
    log = ConnectionLog()
    server = DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers="iot"), handler=log)
    async with support.serving(server) as running:
        output = await converse(
            # @SECLEVEL=0 because OpenSSL >= 3.2 refuses CCM_8 without it (3.0 does not mind).
            s_client_psk(running.port, "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0"),
            send=b"tiny device\n",
            expect=b"echo: tiny device",
        )
        assert "Cipher is PSK-AES128-CCM8" in output
        assert "echo: tiny device" in output
        assert log.connections[0].cipher == "PSK-AES128-CCM8"
        assert log.connections[0].psk_identity == IDENTITY.encode()


@needs_openssl
async def test_s_client_ccm8_is_refused_by_the_default_profile() -> None:
    server = DTLSServer({IDENTITY: KEY})
    async with support.serving(server) as running:
        output = await converse(
            s_client_psk(running.port, "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0")
        )
        assert "alert handshake failure" in output
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith("no shared cipher; fatal alert sent: handshake_failure (40)")


@needs_openssl
async def test_s_client_with_an_unknown_identity_gets_the_alert() -> None:
    server = DTLSServer({IDENTITY: KEY})
    async with support.serving(server) as running:
        output = await converse(s_client_psk(running.port, identity="intruder"))
        assert "alert unknown psk identity" in output
        failed = await running.events.wait_for("handshake_failed")
        assert "unknown PSK identity 'intruder'" in failed.message


# -- GnuTLS --------------------------------------------------------------------------------------


@needs_gnutls
async def test_gnutls_plain_psk() -> None:
    log = ConnectionLog()
    server = DTLSServer({IDENTITY: KEY}, handler=log)
    async with support.serving(server) as running:
        output = await converse(
            gnutls_cli(running.port, GNUTLS_PSK), send=b"from gnutls\n", expect=b"echo: from"
        )
        assert "- Handshake was completed" in output
        assert f"- PSK authentication. Connected as '{IDENTITY}'" in output
        assert "echo: from gnutls" in output
        assert log.connections[0].cipher == "PSK-AES256-GCM-SHA384"


@needs_gnutls
async def test_gnutls_ccm8_against_the_iot_profile() -> None:
    log = ConnectionLog()
    server = DTLSServer({IDENTITY: KEY}, config=ServerConfig(ciphers="iot"), handler=log)
    async with support.serving(server) as running:
        output = await converse(
            gnutls_cli(running.port, f"{GNUTLS_PSK}:-CIPHER-ALL:+AES-128-CCM-8"),
            send=b"ccm8\n",
            expect=b"echo: ccm8",
        )
        assert "(PSK)-(AES-128-CCM-8)" in output
        assert log.connections[0].cipher == "PSK-AES128-CCM8"


@needs_gnutls
@pytest.mark.parametrize(
    ("identity", "key", "alert"),
    [
        (IDENTITY, bytes(16), "*** Received alert [20]: Bad record MAC"),
        ("intruder", KEY, "*** Received alert [115]: The SRP/PSK username is missing or not known"),
    ],
    ids=["wrong-key", "unknown-identity"],
)
async def test_gnutls_receives_our_fatal_alerts(identity: str, key: bytes, alert: str) -> None:
    server = DTLSServer({IDENTITY: KEY})
    async with support.serving(server) as running:
        output = await converse(gnutls_cli(running.port, GNUTLS_PSK, identity=identity, key=key))
        assert alert in output
        await running.events.wait_for("handshake_failed")
        kind = "wrong key" if identity == IDENTITY else "unknown identity"
        assert server.statistics().handshakes_failed == {kind: 1}
