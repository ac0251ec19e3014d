"""Interop with wolfSSL: Debian's ``libwolfssl-dev`` (5.5) behind a small C client.

``tests/peers/wolfssl_client.c`` is compiled with gcc once per test session.  It connects with
wolfSSL's default offer (or a cipher list it is given), sends its message a few times, prints
every reply and the suite and curve it negotiated, and says with its exit status what failed.

* wolfSSL's default offer lists X25519 before P-256 among its groups, and wolfSSL 5.5 fails
  ECDHE-PSK with X25519 (``-352 Bad ECC Peer Key``).  Our server prefers P-256 (RFC 7925's
  curve; ``_openssl.GROUPS``), so with ``default`` and ``iot`` it gets
  ECDHE-PSK-CHACHA20-POLY1305 on P-256 and our record layer carries the ACKs.
* Offering CBC alone against ``compat`` (Debian's build has no plain-PSK CBC suite; its one
  ECDHE-PSK CBC suite is ECDHE-PSK-AES128-CBC-SHA256), wolfSSL negotiates encrypt-then-MAC,
  which the server checks itself before OpenSSL (``_etm.py``): the ACKs show that wolfSSL's
  MACs pass.
* A wrong key ends in our fatal ``bad_record_mac`` alert, which wolfSSL reports.

Without gcc or wolfSSL's headers the tests skip with the reason (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import support
from interop_support import PEERS, AckLog, ack_for, run_peer

from trio_dtls_server import (
    DatagramReceived,
    DTLSServer,
    ServerConfig,
)
from trio_dtls_server.qt import QT_DEMO_KEY

pytestmark = pytest.mark.interop

IDENTITY = "Alice (clone number 0)"
SOURCE = PEERS / "wolfssl_client.c"
PINGS = 3

#: The client's exit statuses (see wolfssl_client.c).
EXIT_HANDSHAKE = 4


@pytest.fixture(scope="session")
def wolfssl_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled client; skips if gcc or wolfSSL's development files are missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (Debian package 'gcc')")
    program = tmp_path_factory.mktemp("wolfssl") / "wolfssl_client"
    build = subprocess.run(
        [gcc, "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-O1",
         "-o", str(program), str(SOURCE), "-lwolfssl"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if build.returncode != 0:
        if "wolfssl/options.h: No such file" in build.stderr or "-lwolfssl" in build.stderr:
            pytest.skip("wolfSSL's development files are missing (Debian package libwolfssl-dev)")
        pytest.fail(f"wolfssl_client.c does not build:\n{build.stderr}")
    return program


def wolfssl_command(
    program: Path, port: int, message: str, *, key: bytes = QT_DEMO_KEY, ciphers: str = ""
) -> list[str]:
    command = [str(program), "127.0.0.1", str(port), IDENTITY, key.hex(), message, str(PINGS)]
    return [*command, ciphers] if ciphers else command


@pytest.mark.parametrize(
    ("profile", "offer", "suite", "group"),
    [
        ("default", "", "ECDHE-PSK-CHACHA20-POLY1305", "SECP256R1"),
        ("iot", "", "ECDHE-PSK-CHACHA20-POLY1305", "SECP256R1"),
        ("compat", "ECDHE-PSK-AES128-CBC-SHA256", "ECDHE-PSK-AES128-CBC-SHA256", "SECP256R1"),
    ],
    ids=["its-default-offer-with-default", "its-default-offer-with-iot", "cbc-only-with-compat"],
)
async def test_wolfssl_client(
    wolfssl_client: Path, profile: str, offer: str, suite: str, group: str
) -> None:
    log = AckLog()
    server = DTLSServer({IDENTITY: QT_DEMO_KEY}, config=ServerConfig(ciphers=profile), handler=log)
    async with support.serving(server) as running:
        message = f"hello from wolfSSL ({profile})"
        run = await run_peer(wolfssl_command(wolfssl_client, running.port, message, ciphers=offer))
        assert run.returncode == 0, run.text
        [connection] = log.connections
        assert run.lines == [
            f"connected cipher={suite} group={group}",
            *[f"reply: {ack_for(connection.peer)}"] * PINGS,
        ]
        assert connection.cipher == suite
        assert connection.psk_identity == IDENTITY.encode()
        assert [event.plaintext for event in running.events.of_type(DatagramReceived)] == [
            message.encode()
        ] * PINGS
        await running.events.wait_for("remote_closed")  # its close_notify
        statistics = server.statistics()
        assert statistics.handshakes_failed == {}
        assert statistics.drops == {}
        if "CBC" in suite:
            # OpenSSL keeps CBC records; wolfSSL's encrypt-then-MAC tags passed our own check.
            assert statistics.openssl_released == 0
            assert connection._session.encrypt_then_mac
        else:
            assert statistics.openssl_released == 1  # AEAD: our record layer


@pytest.mark.parametrize("profile", ["default", "iot"])
async def test_wolfssl_client_with_a_wrong_key_gets_our_fatal_alert(
    wolfssl_client: Path, profile: str
) -> None:
    server = DTLSServer({IDENTITY: QT_DEMO_KEY}, config=ServerConfig(ciphers=profile))
    async with support.serving(server) as running:
        run = await run_peer(
            wolfssl_command(wolfssl_client, running.port, "never sent", key=bytes.fromhex("0102"))
        )
        assert run.returncode == EXIT_HANDSHAKE, run.text
        # wolfSSL's error -313 is "received alert fatal error"; 20 is bad_record_mac.
        assert run.lines == ["error: handshake: -313 received alert fatal error; alert 20 received"]
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith("fatal alert sent: bad_record_mac (20)")
        assert server.statistics().handshakes_failed == {"wrong key": 1}
