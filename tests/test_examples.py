"""The examples run as a newcomer runs them: real scripts, real sockets on loopback.

``run_example.py`` is what ``nox -s demo`` runs; ``secure_udp_server.py`` and
``secure_udp_client.py`` are the two halves it is built from.  The process helpers come from
``cli_support.py``.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

from cli_support import LISTENING, Program
from support import needs_ipv6_loopback

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def _check_runner_output(text: str, host: str, clients: int, pings: int) -> None:
    lines = text.splitlines()
    assert all(re.match(r"^ (server|client) \| |^summary \| ", line) for line in lines), text
    assert lines[-4:] == [
        f"summary | handshakes: {clients} completed, 0 failed",
        f"summary | messages:   {clients * pings} pings received by the server, "
        f"{clients * pings} answered",
        f"summary | ACKs:       {clients * pings} of {clients * pings} pings answered",
        "summary | errors:     0 (server 0, client 0)",
    ]
    assert lines[0].startswith(f" server | Server is listening on address {host} and port ")
    host_pattern = re.escape(host)
    for number in range(clients):
        acks = re.findall(
            rf"^ client \| Alice \(clone number {number}\) received a DTLS datagram: "
            rf"17 fe fd .* As plain text: 'to \({host_pattern}:(\d+)\): ACK'$",
            text,
            re.MULTILINE,
        )
        assert len(acks) == pings and len(set(acks)) == 1, acks
        pings_seen = re.findall(
            rf"^ server \| A message from \({host_pattern}:{acks[0]}\) DTLS datagram: .* "
            rf"As plain text: 'I am Alice \(clone number {number}\), please, "
            r"accept our ping (\d+)'$",
            text,
            re.MULTILINE,
        )
        assert sorted(int(n) for n in pings_seen) == list(range(pings))
        assert f" server | ({host}:{acks[0]}): The DTLS connection has been shutdown" in lines
    assert " server | Server is not accepting new connections" in lines
    _check_causal_order(lines, host, clients)


def _check_causal_order(lines: list[str], host: str, clients: int) -> None:
    """Every line comes after the lines of what caused it.

    A client's k-th ACK line needs at least k of the server's "A message from" lines for that
    client before it (each ACK answers one ping the server has shown); the server's
    PSK-identity line for a client comes before its "Connection with ... encrypted" line and
    before the client's own "encrypted connection established!" (the server reads the
    identity before it sends its last flight).
    """
    for number in range(clients):
        name = f"Alice (clone number {number})"
        ack_lines = [
            index
            for index, line in enumerate(lines)
            if line.startswith(f" client | {name} received a DTLS datagram: ")
        ]
        port = re.search(rf"'to \({re.escape(host)}:(\d+)\): ACK'$", lines[ack_lines[0]])
        assert port is not None
        peer = f"({host}:{port.group(1)})"
        shown = 0
        acked = 0
        for index, line in enumerate(lines):
            if line.startswith(f" server | A message from {peer} "):
                shown += 1
            elif index in ack_lines:
                acked += 1
                assert shown >= acked, (
                    f"{name}'s ACK number {acked} (line {index + 1}) came before the server "
                    f"showed that many of its pings ({shown}):\n" + "\n".join(lines)
                )
        identity = lines.index(f" server | PSK callback, received a client's identity: '{name}'")
        encrypted = lines.index(f" client | {name}: encrypted connection established!")
        [server_encrypted] = [
            index
            for index, line in enumerate(lines)
            if line.startswith(f" server | Connection with {peer} encrypted.")
        ]
        assert identity < server_encrypted < encrypted, "\n".join(lines)


def test_run_example_with_its_defaults() -> None:
    """What ``nox -s demo`` runs: 3 clients, 3 pings each, 0.5 s apart."""
    with Program(example("run_example.py")) as runner:
        assert runner.wait() == 0, runner.stdout.text + runner.stderr.text
    _check_runner_output(runner.stdout.text, "127.0.0.1", clients=3, pings=3)
    assert runner.stderr.text == ""


def test_run_example_reads_in_causal_order_without_pauses() -> None:
    """No pause between pings: server and clients busy at once, where a printer task lags."""
    args = ("--clients", "3", "--pings", "6", "--interval", "0")
    with Program(example("run_example.py", *args)) as runner:
        assert runner.wait() == 0, runner.stdout.text + runner.stderr.text
    _check_runner_output(runner.stdout.text, "127.0.0.1", clients=3, pings=6)


@needs_ipv6_loopback
def test_run_example_over_ipv6() -> None:
    args = ("--host", "::1", "--clients", "2", "--pings", "2", "--interval", "0.1")
    with Program(example("run_example.py", *args)) as runner:
        assert runner.wait() == 0, runner.stdout.text + runner.stderr.text
    _check_runner_output(runner.stdout.text, "::1", clients=2, pings=2)


def test_run_example_refuses_nonsense_options() -> None:
    with Program(example("run_example.py", "--clients", "0")) as runner:
        assert runner.wait() == 2
    assert "--clients and --pings must be at least 1" in runner.stderr.text


def test_server_and_client_examples_side_by_side() -> None:
    with Program(example("secure_udp_server.py", "--port", "0")) as server:
        port = server.stdout.wait_for(LISTENING).group(2)
        args = ("127.0.0.1", port, "--clients", "2", "--pings", "2", "--interval", "0.1")
        with Program(example("secure_udp_client.py", *args)) as client:
            assert client.wait() == 0, client.stdout.text + client.stderr.text
        lines = client.stdout.text.splitlines()
        assert "Alice (clone number 0): 2 replies" in lines
        assert "Alice (clone number 1): 2 replies" in lines
        acks = re.findall(
            r"As plain text: 'to \(127\.0\.0\.1:\d+\): ACK'$", client.stdout.text, re.M
        )
        assert len(acks) == 4
        server.stdout.wait_for(r"The DTLS connection has been shutdown$", count=2)
        server.send_signal(signal.SIGINT)
        assert server.wait() == 0
    server_lines = server.stdout.text.splitlines()
    assert server_lines[-2:] == ["Server is not accepting new connections", "Stopped."]
    assert sum(1 for line in server_lines if "please, accept our ping" in line) == 4, (
        server.stdout.text
    )
    assert server.stderr.text == ""


def test_example_server_says_goodbye_to_a_client_that_pings_forever() -> None:
    with Program(example("secure_udp_server.py", "--port", "0")) as server:
        port = server.stdout.wait_for(LISTENING).group(2)
        with Program(example("secure_udp_client.py", "127.0.0.1", port, "--interval", "0.1")) as c:
            c.stdout.wait_for(r"ACK'$", count=2)
            server.send_signal(signal.SIGTERM)
            assert server.wait() == 0
            # The close_notify ends the client's iteration: it reports and exits normally.
            assert c.wait() == 0
        c.stdout.wait_for(r"^Alice \(clone number 0\): shutdown alert received$")
        c.stdout.wait_for(r"^Alice \(clone number 0\): \d+ replies$")
