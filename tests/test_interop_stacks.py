"""Interop with DTLS stacks that devices really run, none of them written here.

* **Qt's own client** (``QDtls`` on OpenSSL, through PySide6): ``tests/peers/qt_dtls_client.py``
  is Qt's ``DtlsAssociation`` example without its window.  Its second ClientHello carries a
  padding extension the first one lacks (``SSL_OP_ALL`` includes ``SSL_OP_TLSEXT_PADDING``), so
  a cookie bound to the extensions -- ``trio.DTLSEndpoint``'s -- locks every Qt client out.
  The tests watch that padding arrive and the cookie accept it, get Qt's exact ACKs back, see
  a Qt client restarting from the same port re-handshake (RFC 6347 section 4.2.8; Qt's own
  server locks such a client out), and see a wrong key end in our fatal alert at once.
* **node-dtls-client** (pure JavaScript, npm; ``tests/peers/node_dtls_client.js``): version
  2 offers plain-PSK suites only, CBC first (3DES, AES-CBC), then AES-GCM, AES-CCM and CCM_8.
  Its default offer works with ``default``; configured with CBC suites alone (as gateway
  examples do) it needs ``compat`` and is refused by ``default`` with an alert.  Its default
  offer against ``compat`` shows that the server's order decides: it stays on AES-GCM
  although it lists CBC suites first.
* **tinydtls** (``DTLSSocket``, the binding aiocoap uses; ``tests/peers/tinydtls_client.py``):
  offers exactly ``TLS_PSK_WITH_AES_128_CCM_8`` and ``TLS_PSK_WITH_AES_128_CCM``, so it gets
  the 16-byte-tag CCM suite from ``default`` and ``iot`` alike (the server's order prefers it
  to CCM_8), and a ``handshake_failure`` alert from a server without CCM.

The server runs in the test's own Trio run on loopback (port 0); each peer is a subprocess
with a bounded lifetime, killed by its handle if it outlives the test's limit.  A stack that is
not installed skips its tests with the reason (``.ci/run`` installs all three: PySide6 and
DTLSSocket come with the ``interop`` extra, node-dtls-client with ``npm install`` in
tests/peers).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest
import support
from cli_support import free_udp_port
from interop_support import (
    IDENTITY,
    PEERS,
    AckLog,
    PeerRun,
    ack_for,
    client_hellos,
    run_peer,
)

from trio_dtls_server import (
    DatagramReceived,
    DTLSServer,
    ServerConfig,
)
from trio_dtls_server._wire import (
    ExtensionType,
)
from trio_dtls_server.qt import QT_DEMO_IDENTITY_HINT, QT_DEMO_KEY

pytestmark = pytest.mark.interop

# -- which stacks are here --------------------------------------------------------------------


def _qt_missing() -> str | None:
    """Why Qt's client cannot run here, or None if it can."""
    if importlib.util.find_spec("PySide6") is None:
        return "PySide6 is not installed (pip install PySide6-Essentials, or the interop extra)"
    check = "from PySide6.QtNetwork import QSslSocket as S; print(S.supportsSsl())"
    probe = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        return f"PySide6 does not load: {probe.stderr.strip().splitlines()[-1:]}"
    if not probe.stdout.startswith("True"):
        return "Qt has no TLS backend here (QSslSocket.supportsSsl() is false: no libssl3?)"
    return None


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PEERS / "node_modules" / "node-dtls-client").is_dir():
        return "node-dtls-client is not installed (run `npm install` in tests/peers)"
    return None


def _tinydtls_missing() -> str | None:
    if importlib.util.find_spec("DTLSSocket") is None:
        return (
            "DTLSSocket (tinydtls) is not installed: pip install DTLSSocket "
            "(builds C; needs gcc, autoconf and automake)"
        )
    return None


QT_MISSING = _qt_missing()
needs_qt = pytest.mark.skipif(QT_MISSING is not None, reason=QT_MISSING or "")
needs_node = pytest.mark.skipif(_node_missing() is not None, reason=_node_missing() or "")
needs_tinydtls = pytest.mark.skipif(
    _tinydtls_missing() is not None, reason=_tinydtls_missing() or ""
)


# -- running the server and the peers -----------------------------------------------------------


def qt_client(host: str, port: int, *options: str) -> list[str]:
    return [sys.executable, str(PEERS / "qt_dtls_client.py"), host, str(port), *options]


def node_client(
    port: int, message: str, *, key: bytes = QT_DEMO_KEY, ciphers: str = ""
) -> list[str]:
    script = str(PEERS / "node_dtls_client.js")
    command = ["node", script, "127.0.0.1", str(port), IDENTITY, key.hex(), message]
    return [*command, ciphers] if ciphers else command


def tinydtls_client(port: int, message: str, *, key: bytes = QT_DEMO_KEY) -> list[str]:
    script = str(PEERS / "tinydtls_client.py")
    return [sys.executable, script, "127.0.0.1", str(port), IDENTITY, key.hex(), message]


def qt_server() -> tuple[DTLSServer, AckLog]:
    """Qt's example server: one key for every identity, Qt's hint, Qt's ACK."""
    log = AckLog()
    return DTLSServer(QT_DEMO_KEY, identity_hint=QT_DEMO_IDENTITY_HINT, handler=log), log


def extension_types(extensions: bytes) -> list[int]:
    """The extension types of a ClientHello's extensions block, in order."""
    types: list[int] = []
    position = 0
    while position + 4 <= len(extensions):
        types.append(int.from_bytes(extensions[position : position + 2], "big"))
        position += 4 + int.from_bytes(extensions[position + 2 : position + 4], "big")
    return types


def replies(run: PeerRun) -> list[str]:
    """The plaintexts Qt's client printed, one per ``received a DTLS datagram`` line."""
    marker = " As plain text: "
    return [line.split(marker, 1)[1] for line in run.lines if " received a DTLS datagram: " in line]


# -- Qt ------------------------------------------------------------------------------------------


@needs_qt
@pytest.mark.parametrize("host", support.LOOPBACK_HOSTS)
async def test_qt_client_passes_our_cookie_and_gets_qt_acks(host: str) -> None:
    server, log = qt_server()
    async with support.serving_recorded(server, host) as (running, transport):
        run = await run_peer(qt_client(host, running.port, "--pings", "3", "--interval", "50"))
        assert run.returncode == 0, run.text
        await running.events.wait_for("remote_closed")  # the example's close_notify
        await support.settle()

        [connection] = log.connections
        assert replies(run) == [ack_for(connection.peer)] * 3
        assert [event.plaintext for event in running.events.of_type(DatagramReceived)] == [
            f"I am {IDENTITY}, please, accept our ping {n}".encode() for n in range(3)
        ]
        assert connection.psk_identity == IDENTITY.encode()
        assert f"{IDENTITY}: session cipher {connection.cipher}, DTLS 1.2" in run.lines
        assert connection.cipher in server.cipher_selection.suites

        # What locks Qt out of trio.DTLSEndpoint: the hello that carries the cookie also
        # carries a padding extension the first one did not.  Same random (RFC 6347 4.2.1).
        hellos = client_hellos(transport.received_from, connection.peer)
        first, cookied = hellos[0], [hello for hello in hellos if hello.cookie]
        assert first.cookie == b""
        assert ExtensionType.padding not in extension_types(first.extensions)
        assert cookied, hellos
        for hello in cookied:
            assert ExtensionType.padding in extension_types(hello.extensions)
            assert hello.random == first.random

        statistics = server.statistics()
        assert statistics.cookies_verified >= 1
        assert statistics.cookies_rejected == 0
        assert statistics.handshakes_completed == 1
        # Qt's AEAD suite: after the handshake our own record layer talked to Qt's OpenSSL.
        assert statistics.openssl_released == 1
        assert statistics.handshakes_failed == {}
        assert statistics.messages_received == 3
        assert statistics.messages_sent == 3
        assert statistics.remote_closed == 1
        assert statistics.peers == 0


@needs_qt
async def test_qt_client_restarting_on_its_port_handshakes_again() -> None:
    """A device that crashed (no close_notify) and came back on the same port gets in again.

    Qt's own server sends the new ClientHello to the old association, where OpenSSL drops it:
    that address:port stays locked out until the server restarts.  RFC 6347 4.2.8 asks for a
    new handshake; the old association goes once the new hello proves its cookie.
    """
    server, log = qt_server()
    local_port = free_udp_port()
    device = ("127.0.0.1", local_port)
    async with support.serving(server) as running:
        command = qt_client(
            "127.0.0.1", running.port, "--local-port", str(local_port), "--no-close-notify"
        )
        before = await run_peer(command)
        assert before.returncode == 0, before.text
        after = await run_peer(command)
        assert after.returncode == 0, after.text
        assert replies(before) == replies(after) == [ack_for(device)]

        ended = await running.events.wait_for("peer_ended")
        assert ended.message == (
            f"(127.0.0.1:{local_port}): replaced by a new handshake from the same address"
        )
        await support.settle()
        assert [connection.peer for connection in log.connections] == [device, device]
        statistics = server.statistics()
        assert statistics.handshakes_completed == 2
        assert statistics.cookies_verified == 2
        assert statistics.replacements == 1
        assert statistics.remote_closed == 0
        assert statistics.peers == 1  # the restarted client only


@needs_qt
async def test_qt_client_with_a_wrong_key_gets_our_fatal_alert() -> None:
    """Against Qt's server a wrong key retransmits forever; ours ends it with an alert."""
    server, _ = qt_server()
    async with support.serving(server) as running:
        run = await run_peer(qt_client("127.0.0.1", running.port, "--psk-hex", "0102030405"))
        assert run.returncode == 1, run.text
        assert run.lines[-1].startswith(f"error: {IDENTITY}: handshake error - ")
        assert run.lines[-1].endswith("alert bad record mac"), run.lines[-1]
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith("fatal alert sent: bad_record_mac (20)")
        assert server.statistics().handshakes_failed == {"wrong key": 1}


# -- node-dtls-client ----------------------------------------------------------------------------

#: What people who copy gateway examples configure: AES-CBC with HMAC only.
NODE_CBC_ONLY = "TLS_PSK_WITH_AES_128_CBC_SHA256,TLS_PSK_WITH_AES_128_CBC_SHA"


@needs_node
@pytest.mark.parametrize(
    ("profile", "offer", "suite", "suite_id"),
    [
        ("default", "", "PSK-AES256-GCM-SHA384", "0x00a9"),
        ("compat", NODE_CBC_ONLY, "PSK-AES128-CBC-SHA256", "0x00ae"),
    ],
    ids=["its-default-offer-with-default", "cbc-only-with-compat"],
)
async def test_node_dtls_client(profile: str, offer: str, suite: str, suite_id: str) -> None:
    log = AckLog()
    server = DTLSServer({IDENTITY: QT_DEMO_KEY}, config=ServerConfig(ciphers=profile), handler=log)
    async with support.serving(server) as running:
        run = await run_peer(node_client(running.port, "hello from node", ciphers=offer))
        assert run.returncode == 0, run.text
        [connection] = log.connections
        assert run.lines == [f"connected cipher={suite_id}", f"reply: {ack_for(connection.peer)}"]
        assert connection.cipher == suite
        assert connection.psk_identity == IDENTITY.encode()
        [received] = running.events.of_type(DatagramReceived)
        assert received.plaintext == b"hello from node"
        await running.events.wait_for("remote_closed")  # its close_notify
        # AES-GCM records went through our record layer, CBC ones through OpenSSL.
        assert server.statistics().openssl_released == (0 if "CBC" in suite else 1)


@needs_node
async def test_node_dtls_client_with_cbc_only_is_refused_by_default() -> None:
    server = DTLSServer({IDENTITY: QT_DEMO_KEY})
    async with support.serving(server) as running:
        run = await run_peer(node_client(running.port, "cbc please", ciphers=NODE_CBC_ONLY))
        assert run.returncode == 1, run.text
        assert run.lines == ["error: received fatal alert: handshake_failure"]
        failed = await running.events.wait_for("handshake_failed")
        assert failed.message.endswith("no shared cipher; fatal alert sent: handshake_failure (40)")
        assert server.statistics().handshakes_failed == {"no shared cipher": 1}


@needs_node
async def test_compat_keeps_an_aead_capable_client_on_aead() -> None:
    log = AckLog()
    server = DTLSServer({IDENTITY: QT_DEMO_KEY}, config=ServerConfig(ciphers="compat"), handler=log)
    async with support.serving(server) as running:
        run = await run_peer(node_client(running.port, "any suite will do"))
        assert run.returncode == 0, run.text
        # It offers 3DES and AES-CBC first, then AES-GCM, AES-CCM and CCM_8.
        assert "CBC" not in log.connections[0].cipher, log.connections[0].cipher


# -- tinydtls ------------------------------------------------------------------------------------


@needs_tinydtls
@pytest.mark.parametrize(
    ("profile", "suite"),
    # tinydtls offers CCM_8 and CCM; the server prefers its own order, and both profiles list
    # the 16-byte-tag CCM suite before CCM_8 (the CCM_8 path is shown with openssl s_client and
    # gnutls-cli restricted to it, in test_interop_auth.py).
    [("iot", "PSK-AES128-CCM"), ("default", "PSK-AES128-CCM")],
)
async def test_tinydtls_client(profile: str, suite: str) -> None:
    log = AckLog()
    server = DTLSServer({IDENTITY: QT_DEMO_KEY}, config=ServerConfig(ciphers=profile), handler=log)
    async with support.serving(server) as running:
        run = await run_peer(tinydtls_client(running.port, "hello from tinydtls"))
        assert run.returncode == 0, run.text
        [connection] = log.connections
        assert run.lines == ["tinydtls: connected", f"reply: {ack_for(connection.peer)}"]
        assert connection.cipher == suite
        assert connection.psk_identity == IDENTITY.encode()
        [received] = running.events.of_type(DatagramReceived)
        assert received.plaintext == b"hello from tinydtls"
        await running.events.wait_for("remote_closed")  # its close_notify
        assert server.statistics().openssl_released == 1  # AES-CCM: our record layer


@needs_tinydtls
@pytest.mark.parametrize(
    ("ciphers", "key", "alert", "kind"),
    [
        ("PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384", QT_DEMO_KEY, 40, "no shared cipher"),
        ("iot", bytes.fromhex("0102030405"), 20, "wrong key"),
    ],
    ids=["server-without-ccm", "wrong-key"],
)
async def test_tinydtls_client_gets_our_fatal_alert(
    ciphers: str, key: bytes, alert: int, kind: str
) -> None:
    server = DTLSServer({IDENTITY: QT_DEMO_KEY}, config=ServerConfig(ciphers=ciphers))
    async with support.serving(server) as running:
        run = await run_peer(tinydtls_client(running.port, "never sent", key=key))
        assert run.returncode == 1, run.text
        assert run.lines == [f"error: fatal alert {alert} received"]
        await running.events.wait_for("handshake_failed")
        assert server.statistics().handshakes_failed == {kind: 1}
