"""The command line, end to end: ``serve`` and ``client`` as real subprocesses on loopback.

Every process is started through :class:`cli_support.Program`, which collects its output in
reader threads, lets a test wait (with a timeout) for a pattern to appear, and always ends the
process by its handle when the ``with`` block exits.

The second half tests the pieces in-process: the parser (every ServerConfig field has an
option, every option documents its default), the one-line errors, and the display.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import signal
from pathlib import Path

import pytest
from cli_support import (
    HEX,
    Program,
    command,
    free_udp_port,
    start_serve,
    subcommands,
)

from trio_dtls_server import (
    DatagramReceived,
    ErrorEvent,
    InfoEvent,
    RetransmitPolicy,
    ServerConfig,
    WarningEvent,
)
from trio_dtls_server._cli import CONFIG_OPTIONS, build_parser, config_from_arguments, main
from trio_dtls_server._codes import EventCode
from trio_dtls_server._display import (
    ColourMode,
    Display,
    colour_mode_for,
    escape_control_characters,
    hex_dump,
)
from trio_dtls_server.qt import QT_DEMO_IDENTITY_HINT


def check_dtls_record(hex_text: str) -> None:
    """``hex_text`` is one DTLS 1.2 application-data record, length field included."""
    record = bytes.fromhex(hex_text.replace(" ", ""))
    assert record[0] == 23  # application_data
    assert record[1:3] == b"\xfe\xfd"  # DTLS 1.2
    assert record[3:5] == b"\x00\x01"  # epoch 1: encrypted
    assert int.from_bytes(record[11:13], "big") == len(record) - 13


# -- serve + client ----------------------------------------------------------------------------


def test_three_clients_three_pings_every_ping_acked() -> None:
    server, port = start_serve("--psk-hex", "1a2b3c4d5e6f")
    with server:
        with Program(
            command(
                "client", "127.0.0.1", str(port), "--connections", "3", "--pings", "3",
                "--interval", "0.2",
            )
        ) as client:  # fmt: skip
            assert client.wait() == 0, client.stdout.text + client.stderr.text
        client_lines = client.stdout.text.splitlines()
        assert client_lines[-1] == (
            "Summary: 3 association(s), 3 handshake(s), 9 ping(s) sent, 9 repl(ies) received, "
            "0 failed"
        )
        # Qt's client line for each reply: the DTLS record in hex and Qt's exact ACK text.
        reply = re.compile(
            rf"^Alice \(clone number (\d)\) received a DTLS datagram: ({HEX}) "
            r"As plain text: to \(127\.0\.0\.1:(\d+)\): ACK$"
        )
        ports: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
        replies = [match for line in client_lines if (match := reply.match(line))]
        assert len(replies) == 9
        for match in replies:
            ports[int(match.group(1))].add(int(match.group(3)))
            check_dtls_record(match.group(2))
        assert all(len(seen) == 1 for seen in ports.values()), ports
        client_port = {number: seen.pop() for number, seen in ports.items()}
        assert len(set(client_port.values())) == 3  # one socket per association
        for number in range(3):
            name = f"Alice (clone number {number})"
            assert f"{name}: starting a handshake" in client_lines
            assert f"{name}: encrypted connection established!" in client_lines

        # The server saw every ping, from the port its ACK named, and each client's goodbye.
        for number, peer_port in client_port.items():
            for ping in range(3):
                server.stdout.wait_for(
                    rf"^A message from \(127\.0\.0\.1:{peer_port}\) DTLS datagram: {HEX} "
                    rf"As plain text: I am Alice \(clone number {number}\), please, "
                    rf"accept our ping {ping}$"
                )
            server.stdout.wait_for(
                rf"^\(127\.0\.0\.1:{peer_port}\): The DTLS connection has been shutdown$"
            )
            assert (
                f"PSK callback, received a client's identity: 'Alice (clone number {number})'"
                in server.stdout.text
            )
        server.send_signal(signal.SIGINT)
        assert server.wait() == 0
        assert server.stdout.text.splitlines()[-2:] == [
            "SIGINT received: shutting down, close_notify to 0 peer(s)",
            "Server is not accepting new connections",
        ]
        assert server.stderr.text == ""


def test_sigint_to_serve_sends_close_notify_to_running_clients() -> None:
    server, port = start_serve()
    with server, Program(
        command(
            "client", "127.0.0.1", str(port), "--connections", "2", "--pings", "100000",
            "--interval", "0.2",
        )
    ) as client:  # fmt: skip
        for number in range(2):
            client.stdout.wait_for(
                rf"^Alice \(clone number {number}\) received a DTLS datagram: .* ACK$"
            )
        server.send_signal(signal.SIGINT)
        assert server.wait() == 0
        server.stdout.wait_for(r"^SIGINT received: shutting down, close_notify to 2 peer\(s\)$")
        assert client.wait() == 1
        lines = client.stdout.text.splitlines()
        for number in range(2):
            assert f"error: Alice (clone number {number}): shutdown alert received" in lines
        assert lines[-1].startswith("Summary: 2 association(s), 2 handshake(s), ")
        assert lines[-1].endswith(", 2 failed")


def test_serve_exits_zero_on_sigterm_and_bind_failure_is_one_line() -> None:
    server, port = start_serve()
    with server:
        # The port is taken: one line on stderr naming the address and the reason.
        with Program(command("serve", "--port", str(port))) as second:
            assert second.wait() == 1
        assert second.stderr.text == (
            f"trio-dtls-server: error: cannot bind UDP 127.0.0.1:{port}: Address already in use\n"
        )
        assert "Server is listening" not in second.stdout.text

        # serve's first two lines: Qt's listening line, then the demo-key warning.
        assert server.stdout.text.splitlines()[:2] == [
            f"Server is listening on address 127.0.0.1 and port {port}",
            "warning: using Qt's demo key 1a2b3c4d5e6f: it is public, anyone can connect; "
            "give --psk-hex or --psk-file for anything but a demo",
        ]
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
        assert "SIGTERM received: shutting down, close_notify to 0 peer(s)" in server.stdout.text


def test_client_ctrl_c_closes_with_close_notify_and_exits_130() -> None:
    server, port = start_serve()
    with server, Program(command("client", "127.0.0.1", str(port), "--interval", "0.2")) as client:
        match = client.stdout.wait_for(r"As plain text: to \(127\.0\.0\.1:(\d+)\): ACK$")
        client.send_signal(signal.SIGINT)
        assert client.wait() == 130
        assert (
            "SIGINT received: closing 1 association(s) with close_notify"
            in client.stdout.text.splitlines()
        )
        server.stdout.wait_for(
            rf"^\(127\.0\.0\.1:{match.group(1)}\): The DTLS connection has been shutdown$"
        )


def test_unknown_identity_is_refused_with_a_reason_on_both_sides(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "# only the sensors may talk to us\nsensor-0,1a2b3c4d5e6f\nsensor-1,0011223344\n"
    )
    server, port = start_serve("--psk-file", str(keys))
    with server:
        with Program(command("client", "127.0.0.1", str(port), "--pings", "1")) as stranger:
            assert stranger.wait() == 1
        failure = stranger.stdout.wait_for(
            r"^error: Alice \(clone number 0\): handshake error - (.*)$"
        )
        assert "unknown psk identity" in failure.group(1).lower()
        server.stdout.wait_for(
            r"^error: \(127\.0\.0\.1:\d+\): unknown PSK identity 'Alice \(clone number 0\)'$"
        )
        assert "demo key" not in server.stdout.text  # a PSK file means no demo-key warning

        # Identities from the file get in, each with its own key; "%1" is the clone number.
        clients = [
            ("sensor-0", ["--identity", "sensor-%1", "--psk-hex", "1a2b3c4d5e6f"]),
            ("sensor-1", ["--identity", "sensor-1", "--psk-hex", "0011223344"]),
        ]
        for name, options in clients:
            args = command("client", "127.0.0.1", str(port), "--pings", "1", *options)
            with Program(args) as sensor:
                assert sensor.wait() == 0, sensor.stdout.text
            sensor.stdout.wait_for(
                rf"^{name} received a DTLS datagram: .* As plain text: to \(.*\): ACK$"
            )
            server.stdout.wait_for(rf"^PSK callback, received a client's identity: '{name}'$")


def _acks_to(name: str) -> str:
    """Qt's client line for one ACK received by association ``name``; group 1: its port."""
    return (
        rf"^{re.escape(name)} received a DTLS datagram: {HEX} "
        r"As plain text: to \(127\.0\.0\.1:(\d+)\): ACK$"
    )


def test_sighup_reloads_the_psk_file_without_dropping_established_peers(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sensor-0,1a2b3c4d5e6f\n")
    server, port = start_serve("--psk-file", str(keys))
    veteran_args = command(
        "client", "127.0.0.1", str(port), "--identity", "sensor-0", "--psk-hex", "1a2b3c4d5e6f",
        "--pings", "100000", "--interval", "0.2",
    )  # fmt: skip
    newcomer_args = command(
        "client", "127.0.0.1", str(port), "--identity", "newcomer", "--psk-hex", "c0ffee",
        "--pings", "1",
    )  # fmt: skip
    with server, Program(veteran_args) as veteran:
        veteran_port = veteran.stdout.wait_for(_acks_to("sensor-0"), count=2).group(1)

        # Not in the file yet: refused, with the reason on both sides.
        with Program(newcomer_args) as newcomer:
            assert newcomer.wait() == 1
        failure = newcomer.stdout.wait_for(r"^error: newcomer: handshake error - (.*)$")
        assert "unknown psk identity" in failure.group(1).lower()
        server.stdout.wait_for(r"^error: \(127\.0\.0\.1:\d+\): unknown PSK identity 'newcomer'$")

        keys.write_text("sensor-0,1a2b3c4d5e6f\nnewcomer,c0ffee\n")
        server.send_signal(signal.SIGHUP)
        reloaded = f"PSK file {str(keys)!r} reloaded: 2 identities, keys changed"
        server.stdout.wait_for(f"^{re.escape(reloaded)}$")

        with Program(newcomer_args) as newcomer:
            assert newcomer.wait() == 0, newcomer.stdout.text + newcomer.stderr.text
        newcomer.stdout.wait_for(_acks_to("newcomer"))
        server.stdout.wait_for(r"^PSK callback, received a client's identity: 'newcomer'$")

        # The veteran's association lives on: more of its pings are answered after the reload.
        acked_so_far = len(re.findall(_acks_to("sensor-0"), veteran.stdout.text, re.MULTILINE))
        veteran.stdout.wait_for(_acks_to("sensor-0"), count=acked_so_far + 2)
        veteran.send_signal(signal.SIGINT)
        assert veteran.wait() == 130
        server.stdout.wait_for(
            rf"^\(127\.0\.0\.1:{veteran_port}\): The DTLS connection has been shutdown$"
        )
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0

    # One handshake for the veteran, on both sides, and every reply came to the same port.
    veteran_lines = veteran.stdout.text.splitlines()
    assert veteran_lines.count("sensor-0: starting a handshake") == 1
    assert veteran_lines.count("sensor-0: encrypted connection established!") == 1
    assert not [line for line in veteran_lines if line.startswith(("error:", "warning:"))]
    ports = set(re.findall(_acks_to("sensor-0"), veteran.stdout.text, re.MULTILINE))
    assert ports == {veteran_port}
    summary = re.fullmatch(
        r"Summary: 1 association\(s\), 1 handshake\(s\), (\d+) ping\(s\) sent, "
        r"(\d+) repl\(ies\) received, 0 failed",
        veteran_lines[-1],
    )
    assert summary is not None, veteran_lines[-1]
    assert int(summary.group(2)) >= acked_so_far + 2
    server_text = server.stdout.text
    assert server_text.count("PSK callback, received a client's identity: 'sensor-0'") == 1
    assert server_text.count(f"Connection with (127.0.0.1:{veteran_port}) encrypted.") == 1
    # ... and the server itself answered the veteran's pings after it reloaded the file.
    after_reload = server_text[server_text.index(reloaded) :]
    assert after_reload.count(f"A message from (127.0.0.1:{veteran_port}) ") >= 2
    assert server.stderr.text == ""


def test_sighup_with_a_broken_psk_file_keeps_the_old_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sensor-0,1a2b3c4d5e6f\n")
    server, port = start_serve("--psk-file", str(keys))
    with server:
        keys.write_text("sensor-0,1a2b3c4d5e6f\nnewcomer c0ffee\n")
        server.send_signal(signal.SIGHUP)
        failure = server.stdout.wait_for(r"^error: PSK file not reloaded.*$")
        assert failure.group(0) == (
            f"error: PSK file not reloaded, the old keys stay: {keys}, line 2: "
            "expected 'identity,hexkey', found no comma"
        )
        # Still serving, with the keys it had.
        with Program(
            command(
                "client", "127.0.0.1", str(port), "--identity", "sensor-0", "--psk-hex",
                "1a2b3c4d5e6f", "--pings", "1",
            )
        ) as sensor:  # fmt: skip
            assert sensor.wait() == 0, sensor.stdout.text + sensor.stderr.text
        sensor.stdout.wait_for(_acks_to("sensor-0"))
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    errors = [line for line in server.stdout.text.splitlines() if line.startswith("error:")]
    assert errors == [failure.group(0)]
    assert server.stderr.text == ""


def test_client_without_a_server_retransmits_then_gives_up() -> None:
    port = free_udp_port()
    with Program(
        command("client", "127.0.0.1", str(port), "--handshake-timeout", "1.5", "--pings", "1")
    ) as client:
        assert client.wait() == 1
    lines = client.stdout.text.splitlines()
    assert lines == [
        "Alice (clone number 0): starting a handshake",
        "warning: Alice (clone number 0): handshake timeout, trying to re-transmit",
        "error: Alice (clone number 0): handshake not finished within 1.5 s",
        "Summary: 1 association(s), 0 handshake(s), 0 ping(s) sent, 0 repl(ies) received, 1 failed",
    ]


def test_json_log_format_and_statistics() -> None:
    server, port = start_serve("--log-format", "json", "--stats-interval", "0.2")
    with server:
        with Program(
            command("client", "127.0.0.1", str(port), "--pings", "1", "--log-format", "json")
        ) as client:
            assert client.wait() == 0
        server.stdout.wait_for(r'"code": "remote_closed"')
        server.stdout.wait_for(r'"code": "statistics".*"messages_received": 1\b')
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0

    server_records = [json.loads(line) for line in server.stdout.text.splitlines()]
    for record in server_records:
        assert {"time", "severity", "code", "message", "peer"} <= record.keys()
    assert (
        server_records[0]["message"] == f"Server is listening on address 127.0.0.1 and port {port}"
    )
    assert server_records[-1]["code"] == "stopped"
    (message,) = [r for r in server_records if r["code"] == "datagram"]
    assert message["severity"] == "message"
    assert message["plaintext"] == "I am Alice (clone number 0), please, accept our ping 0"
    check_dtls_record(bytes.fromhex(message["ciphertext"]).hex(" "))
    assert message["peer"][0] == "127.0.0.1"
    statistics = [r for r in server_records if r["code"] == "statistics"]
    assert statistics[-1]["statistics"]["handshakes_completed"] == 1

    client_records = [json.loads(line) for line in client.stdout.text.splitlines()]
    (reply,) = [r for r in client_records if r["code"] == "datagram"]
    assert reply["plaintext"] == f"to (127.0.0.1:{message['peer'][1]}): ACK"
    assert reply["peer"] == ["127.0.0.1", port]


def test_quiet_shows_only_the_listening_line_warnings_and_errors() -> None:
    server, port = start_serve("--quiet")
    with server:
        with Program(command("client", "127.0.0.1", str(port), "--pings", "1", "--quiet")) as c:
            assert c.wait() == 0
        assert c.stdout.text.splitlines() == [
            "Summary: 1 association(s), 1 handshake(s), 1 ping(s) sent, 1 repl(ies) received, "
            "0 failed"
        ]
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert server.stdout.text.splitlines() == [
        f"Server is listening on address 127.0.0.1 and port {port}",
        "warning: using Qt's demo key 1a2b3c4d5e6f: it is public, anyone can connect; "
        "give --psk-hex or --psk-file for anything but a demo",
    ]


# -- colour ------------------------------------------------------------------------------------

ESCAPE = "\x1b["


def test_no_colour_when_output_is_not_a_terminal() -> None:
    server, port = start_serve()
    with server:
        with Program(command("client", "127.0.0.1", str(port), "--pings", "1")) as client:
            assert client.wait() == 0
        server.stdout.wait_for("The DTLS connection has been shutdown")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    for text in (server.stdout.text, server.stderr.text, client.stdout.text):
        assert ESCAPE not in text
    assert "warning: using Qt's demo key" in server.stdout.text


@pytest.mark.parametrize(
    ("environment", "listening_colour", "warning_colour"),
    [
        ({"TERM": "xterm-256color"}, "\x1b[38;5;18m", "\x1b[38;5;208m"),
        ({"TERM": "xterm-256color", "COLORTERM": "truecolor"}, "\x1b[38;2;0;0;139m", None),
    ],
    ids=["256-colours", "truecolor"],
)
def test_colour_on_a_terminal(
    environment: dict[str, str | None], listening_colour: str, warning_colour: str | None
) -> None:
    server, port = start_serve(env=environment, terminal=True)
    with server:
        server.stdout.wait_for("demo key")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    text = server.stdout.text
    expected = f"{listening_colour}Server is listening on address 127.0.0.1 and port {port}\x1b[0m"
    assert expected in text
    if warning_colour:
        assert f"{warning_colour}using Qt's demo key" in text
    assert "warning: " not in text  # the colour says it


@pytest.mark.parametrize("value", ["1", ""], ids=["NO_COLOR=1", "NO_COLOR-empty"])
def test_no_colour_on_a_terminal_when_no_color_is_set(value: str) -> None:
    env = {"TERM": "xterm-256color", "COLORTERM": "truecolor", "NO_COLOR": value}
    server, port = start_serve(env=env, terminal=True)
    with server:
        server.stdout.wait_for("demo key")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    assert ESCAPE not in server.stdout.text
    assert f"Server is listening on address 127.0.0.1 and port {port}" in server.stdout.text


def test_client_colours_replies_dark_magenta_on_a_terminal() -> None:
    server, port = start_serve("--psk-hex", "1a2b3c4d5e6f")
    with (
        server,
        Program(
            command("client", "127.0.0.1", str(port), "--pings", "1"),
            env={"TERM": "xterm-256color", "COLORTERM": "truecolor"},
            terminal=True,
        ) as client,
    ):
        assert client.wait() == 0
        client.stdout.wait_for(
            r"\x1b\[38;2;139;0;139mAlice \(clone number 0\) received a DTLS datagram: "
        )


# -- bad keys: one line, exit code 2 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("12345", "--psk-hex: '12345' is not an even-length hex string"),
        ("1a2b3g", "--psk-hex: '1a2b3g' is not an even-length hex string"),
        ("", "--psk-hex: the key is empty"),
    ],
)
def test_bad_psk_hex_is_one_line_and_exit_code_2(value: str, problem: str) -> None:
    with Program(command("serve", "--port", "0", "--psk-hex", value)) as server:
        assert server.wait() == 2
    assert server.stderr.text == f"trio-dtls-server: error: {problem}\n"
    assert server.stdout.text == ""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("Bob,1a2b\nAlice (clone number 0) 1a2b\n", "line 2: expected 'identity,hexkey'"),
        ("Bob,xyz\n", "line 1: 'xyz' is not an even-length hex string"),
        ("Bob,1a2b\nBob,3c4d\n", "line 2: identity 'Bob' appears twice"),
        (",1a2b\n", "line 1: the identity is empty"),
        ("# nothing\n\n", "no 'identity,hexkey' lines"),
    ],
)
def test_bad_psk_file_is_one_line_and_exit_code_2(
    tmp_path: Path, content: str, problem: str
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(content)
    out, err = io.StringIO(), io.StringIO()
    assert main(["serve", "--port", "0", "--psk-file", str(keys)], stdout=out, stderr=err) == 2
    assert out.getvalue() == ""
    (line,) = err.getvalue().splitlines()
    assert line.startswith(f"trio-dtls-server: error: {keys}")
    assert problem in line


def test_bad_psk_file_through_the_real_command(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("Alice (clone number 0) 1a2b3c\n")
    with Program(command("serve", "--port", "0", "--psk-file", str(keys))) as server:
        assert server.wait() == 2
    assert server.stderr.text == (
        f"trio-dtls-server: error: {keys}, line 1: expected 'identity,hexkey', found no comma\n"
    )


def test_missing_psk_file_and_bad_client_key() -> None:
    err = io.StringIO()
    assert main(["serve", "--psk-file", "/nonexistent/keys"], stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith("trio-dtls-server: error: cannot read PSK file ")
    assert len(err.getvalue().splitlines()) == 1
    err = io.StringIO()
    assert main(["client", "127.0.0.1", "--psk-hex", "xyz"], stdout=io.StringIO(), stderr=err) == 2
    assert (
        err.getvalue()
        == "trio-dtls-server: error: --psk-hex: 'xyz' is not an even-length hex string\n"
    )


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (["--mtu", "100"], "--mtu must be between 256 and 65507, not 100"),
        (["--retransmit-initial", "0"], "--retransmit-initial/--retransmit-max: "),
        (["--ciphers", "NO-SUCH-SUITE"], "--ciphers: OpenSSL refuses 'NO-SUCH-SUITE'"),
    ],
)
def test_bad_limits_are_one_line_and_exit_code_2(options: list[str], problem: str) -> None:
    err = io.StringIO()
    assert main(["serve", "--port", "0", *options], stdout=io.StringIO(), stderr=err) == 2
    (line,) = err.getvalue().splitlines()
    assert line.startswith(f"trio-dtls-server: error: {problem}")


# -- the parser ------------------------------------------------------------------------------------


def test_every_server_config_field_has_an_option() -> None:
    targets = {option.target for option in CONFIG_OPTIONS}
    config_fields = {f.name for f in dataclasses.fields(ServerConfig)}
    policy_fields = {f"retransmit.{f.name}" for f in dataclasses.fields(RetransmitPolicy)}
    # identity_hint is --identity-hint (Qt's default); retransmit is its three fields.
    assert targets == (config_fields - {"identity_hint", "retransmit"}) | policy_fields


def test_help_explains_every_option_with_its_default() -> None:
    without_default = {"help", "quiet", "psk_file", "host"}  # host: HOST, the client's target
    for name, subparser in subcommands().items():
        for action in subparser._actions:
            assert action.help, (name, action.dest)
            if action.dest not in without_default or (name, action.dest) == ("serve", "host"):
                assert "(default: " in action.help, (name, action.dest)
    serve_help = subcommands()["serve"].format_help()
    for option in CONFIG_OPTIONS:
        assert f"{option.flag} {option.metavar}" in serve_help
    assert "(default: 20000)" in serve_help  # --max-peers
    client_help = subcommands()["client"].format_help()
    assert "(default: 'Alice (clone number %1)')" in client_help
    assert "(default: 5, as Qt)" in client_help  # --interval


def test_options_build_the_server_config() -> None:
    defaults = build_parser().parse_args(["serve"])
    assert config_from_arguments(defaults) == ServerConfig(identity_hint=QT_DEMO_IDENTITY_HINT)
    arguments = build_parser().parse_args(
        [
            "serve", "--identity-hint", "", "--ciphers", "PSK-AES128-GCM-SHA256", "--mtu", "1200",
            "--retransmit-initial", "0.5", "--retransmit-max", "4", "--retransmit-count", "2",
            "--handshake-timeout", "7", "--idle-timeout", "none", "--max-peers", "10",
            "--max-handshakes", "3", "--evict-idle-after", "never", "--peer-queue-size", "8",
            "--max-datagram-size", "2000", "--cookie-rotation", "60", "--max-auth-failures", "4",
            "--auth-failure-window", "2", "--event-buffer", "16",
        ]
    )  # fmt: skip
    assert config_from_arguments(arguments) == ServerConfig(
        identity_hint=None,
        ciphers="PSK-AES128-GCM-SHA256",
        mtu=1200,
        retransmit=RetransmitPolicy(initial=0.5, maximum=4.0, max_retransmissions=2),
        handshake_timeout=7.0,
        idle_timeout=None,
        max_peers=10,
        max_handshakes=3,
        evict_idle_after=None,
        peer_queue_size=8,
        max_datagram_size=2000,
        cookie_rotation=60.0,
        max_auth_failures=4,
        auth_failure_window=2.0,
        event_buffer=16,
    )


def test_usage_errors_exit_with_code_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--port", "70000"])
    assert exit_info.value.code == 2


# -- the display -----------------------------------------------------------------------------------


class _FakeStream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self._terminal = terminal

    def isatty(self) -> bool:
        return self._terminal


@pytest.mark.parametrize(
    ("terminal", "environment", "expected"),
    [
        (False, {}, ColourMode.NONE),
        (True, {}, ColourMode.PALETTE_256),
        (True, {"COLORTERM": "truecolor"}, ColourMode.TRUECOLOR),
        (True, {"COLORTERM": "24bit"}, ColourMode.TRUECOLOR),
        (True, {"NO_COLOR": ""}, ColourMode.NONE),
        (True, {"NO_COLOR": "0", "COLORTERM": "truecolor"}, ColourMode.NONE),
        (True, {"TERM": "dumb"}, ColourMode.NONE),
    ],
)
def test_colour_mode(terminal: bool, environment: dict[str, str], expected: ColourMode) -> None:
    assert colour_mode_for(_FakeStream(terminal), environment) is expected


def test_qt_colours_for_each_severity() -> None:
    stream = _FakeStream(True)
    display = Display(stream, colour=ColourMode.TRUECOLOR)
    display.show(ErrorEvent(EventCode.SOCKET_ERROR, "failed"))
    display.show(WarningEvent(EventCode.DROPPED, "odd"))
    display.show(InfoEvent(EventCode.SUMMARY, "fine"))
    display.show(
        DatagramReceived(
            EventCode.DATAGRAM, "A message from (::1:5555)", ("::1", 5555), b"\x17\xfe", b"hi"
        )
    )
    assert stream.getvalue().splitlines() == [
        "\x1b[38;2;220;20;60mfailed\x1b[0m",  # Crimson
        "\x1b[38;2;255;140;0modd\x1b[0m",  # DarkOrange
        "\x1b[38;2;0;0;139mfine\x1b[0m",  # DarkBlue
        "\x1b[38;2;139;0;139m"  # DarkMagenta
        "A message from (::1:5555) DTLS datagram: 17 fe As plain text: hi\x1b[0m",
    ]


def test_peer_text_cannot_reach_the_terminal_raw() -> None:
    stream = _FakeStream(False)
    display = Display(stream, side="client", colour=ColourMode.NONE)
    # ESC, CR/LF, a backslash, a C1 CSI (U+009B, as UTF-8) and a byte that is not UTF-8.
    hostile = b"\x1b[2Jgotcha\r\nline two\\\xc2\x9b\xff"
    display.show(
        DatagramReceived(
            EventCode.DATAGRAM, "Alice received a DTLS datagram", None, b"\x01", hostile
        )
    )
    display.show(InfoEvent(EventCode.PSK_IDENTITY, "identity: 'evil\x1b]0;title\x07'"))
    assert stream.getvalue().splitlines() == [
        "Alice received a DTLS datagram: 01 As plain text: "
        "\\x1b[2Jgotcha\\r\\nline two\\\\\\x9b\ufffd",
        "identity: 'evil\\x1b]0;title\\x07'",
    ]
    assert escape_control_characters("caf\u00e9 ok") == "caf\u00e9 ok"


def test_hex_dump_like_qt_and_shortened() -> None:
    assert hex_dump(b"\x17\xfe\xfd\x00") == "17 fe fd 00"
    assert hex_dump(bytes(range(20)), 4) == "00 01 02 03 ... (20 bytes)"
    assert hex_dump(b"\x01\x02", 4) == "01 02"
