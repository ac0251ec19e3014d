"""The health check: ``probe()`` and ``trio-dtls-server probe`` against real servers on loopback.

Each way a server can be unhealthy is produced for real — a port with nothing behind it, a
socket that never answers, a wrong key, an unknown identity, a handler that closes, one that
never replies, one that replies something else — and the probe must name it, within its
budget, in one line.
"""

from __future__ import annotations

import socket as stdlib_socket
import sys

import pytest
import trio
import trio.testing
from support import IDENTITY, KEY, LOOPBACK_HOSTS, serving

from trio_dtls_server import DTLSConnection, DTLSServer, ProbeFailure, probe


async def _ack(connection: DTLSConnection) -> None:
    async for _ in connection:
        await connection.send(b"to you: ACK")


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_a_serving_server_is_healthy(host: str) -> None:
    async with serving(DTLSServer(psk={IDENTITY: KEY}, handler=_ack), host) as running:
        result = await probe(host, running.port, identity=IDENTITY, key=KEY, expect=b"ACK")
        assert result.healthy, result.line
        assert result.failure is None
        assert result.cipher == "ECDHE-PSK-CHACHA20-POLY1305"
        assert result.handshake_seconds is not None and result.reply_seconds is not None
        assert result.line.startswith("healthy: ")
        # The probe said goodbye: the server saw one handshake and one close_notify.
        with trio.fail_after(5):
            while running.server.statistics().remote_closed < 1:
                await trio.sleep(0.01)
        stats = running.server.statistics()
        assert stats.handshakes_completed == 1
        assert stats.messages_received == 1


async def test_nothing_listening_is_refused_at_once() -> None:
    sock = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # the port is now (almost certainly) closed: the kernel answers unreachable
    started = trio.current_time()
    result = await probe("127.0.0.1", port, identity=IDENTITY, key=KEY, timeout=10)
    assert result.failure is ProbeFailure.REFUSED, result.line
    assert trio.current_time() - started < 5  # not the whole budget
    assert "nothing listens there" in result.line


async def test_a_socket_that_never_answers_fails_within_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    silent = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        started = trio.current_time()
        result = await probe(
            "127.0.0.1", silent.getsockname()[1], identity=IDENTITY, key=KEY, timeout=3
        )
        assert trio.current_time() - started == pytest.approx(3)
    finally:
        silent.close()
    assert result.failure is ProbeFailure.NO_ANSWER
    assert result.line.endswith("no handshake within 3 s")


@pytest.mark.parametrize(
    ("identity", "key", "alert"),
    [
        (IDENTITY, b"\x00" * 16, "bad_record_mac (20)"),
        ("nobody", KEY, "unknown_psk_identity (115)"),
    ],
)
async def test_a_refused_handshake_names_the_alert(identity: str, key: bytes, alert: str) -> None:
    async with serving(DTLSServer(psk={IDENTITY: KEY}, handler=_ack)) as running:
        result = await probe("127.0.0.1", running.port, identity=identity, key=key)
    assert result.failure is ProbeFailure.HANDSHAKE_FAILED
    assert alert in result.line


async def _close_at_once(connection: DTLSConnection) -> None:
    await connection.receive()
    await connection.aclose()


async def _never_reply(connection: DTLSConnection) -> None:
    async for _ in connection:
        pass


async def _reply_busy(connection: DTLSConnection) -> None:
    async for _ in connection:
        await connection.send(b"busy, go away")


async def test_a_handler_that_closes_instead_of_replying_is_unhealthy() -> None:
    async with serving(DTLSServer(psk={IDENTITY: KEY}, handler=_close_at_once)) as running:
        result = await probe("127.0.0.1", running.port, identity=IDENTITY, key=KEY)
    assert result.failure is ProbeFailure.CLOSED
    assert "close_notify" in result.line
    assert result.handshake_seconds is not None


async def test_a_handler_that_never_replies_is_unhealthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(DTLSServer(psk={IDENTITY: KEY}, handler=_never_reply)) as running:
        result = await probe("127.0.0.1", running.port, identity=IDENTITY, key=KEY, timeout=4)
    assert result.failure is ProbeFailure.NO_REPLY
    assert result.line.endswith("no reply to the probe message within 4 s")


async def test_a_reply_without_the_expected_text_is_unhealthy() -> None:
    async with serving(DTLSServer(psk={IDENTITY: KEY}, handler=_reply_busy)) as running:
        result = await probe("127.0.0.1", running.port, identity=IDENTITY, key=KEY, expect=b"ACK")
        unchecked = await probe("127.0.0.1", running.port, identity=IDENTITY, key=KEY)
    assert result.failure is ProbeFailure.UNEXPECTED_REPLY
    assert "busy, go away" in result.line
    assert unchecked.healthy


async def _run_cli(*arguments: str) -> tuple[int, str, str]:
    completed = await trio.run_process(
        [sys.executable, "-m", "trio_dtls_server", "probe", *arguments],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return completed.returncode, completed.stdout.decode(), completed.stderr.decode()


async def test_the_command_prints_one_line_and_exits_by_health() -> None:
    key_hex = KEY.hex()
    async with serving(DTLSServer(psk={"sensor-1": KEY})) as running:
        port = str(running.port)
        code, out, err = await _run_cli(
            "127.0.0.1", port, "--identity", "sensor-1", "--psk-hex", key_hex, "--expect", "ACK"
        )
        assert (code, err) == (0, "")
        assert out.startswith("healthy: 127.0.0.1:") and out.count("\n") == 1
        code, out, err = await _run_cli("127.0.0.1", port, "--identity", "intruder")
        assert (code, out) == (1, "")
        assert err.startswith("unhealthy (handshake_failed): ") and err.count("\n") == 1
        assert "unknown_psk_identity" in err
    code, out, err = await _run_cli("127.0.0.1", port, "--timeout", "3")
    assert (code, out) == (1, "")
    assert err.startswith("unhealthy (refused): ")
    code, out, err = await _run_cli("127.0.0.1", port, "--timeout", "0")
    assert code == 2  # argparse's usage, then one error line naming the option
    assert "error: argument --timeout: '0' must be more than 0" in err.splitlines()[-1]
