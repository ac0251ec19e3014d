"""Certificates on the command line: ``serve --certificate ...`` and ``client --ca ...``.

End to end, as subprocesses on loopback (the helpers of ``cli_support.py``), with certificates
made by ``trustme`` when the module starts (``auth_support.make_credentials``):

* a certificate-only server (a certificate and no PSK option) says so, answers a client that
  verifies it with ``--ca``, and refuses a PSK client with the reason on both sides;
* ``--client-certificates required``: a certificate client without a certificate is refused
  with the reason on both sides, one with a certificate (key in the same file or in its own
  ``--private-key`` file) gets its ACKs, and a PSK client still gets in;
* every misconfiguration is one line on stderr naming the problem, and exit code 2 (checked
  in-process through ``main``, which fails before it binds anything).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from auth_support import Credentials
from cli_support import HEX, Program, command, start_serve

from trio_dtls_server._cli import main

KEY = "00112233445566778899aabbccddeeff"


@pytest.fixture(scope="module")
def client_key_and_certificate(credentials: Credentials) -> tuple[Path, Path]:
    """The good client certificate split into a key file and a certificate file."""
    text = credentials.client_pem.read_text()
    blocks = re.findall(r"-----BEGIN ([A-Z ]+)-----", text)
    assert blocks == ["EC PRIVATE KEY", "CERTIFICATE"]  # what trustme writes, in this order
    key_end = text.index("-----BEGIN CERTIFICATE-----")
    key = credentials.directory / "client.key"
    certificate = credentials.directory / "client.crt"
    key.write_text(text[:key_end])
    certificate.write_text(text[key_end:])
    return key, certificate


def _ack(name: str) -> str:
    return (
        rf"^{re.escape(name)} received a DTLS datagram: {HEX} "
        r"As plain text: to \(127\.0\.0\.1:(\d+)\): ACK$"
    )


def _summary(replies: int, failed: int) -> str:
    handshakes = 1 - failed
    return (
        f"Summary: 1 association(s), {handshakes} handshake(s), {replies} ping(s) sent, "
        f"{replies} repl(ies) received, {failed} failed"
    )


def test_certificate_only_server_answers_a_client_that_verifies_it(
    credentials: Credentials,
) -> None:
    server, port = start_serve("--certificate", str(credentials.server_pem))
    with server:
        server.stdout.wait_for("^No --psk-hex")
        assert server.stdout.text.splitlines()[:2] == [
            f"Server is listening on address 127.0.0.1 and port {port}",
            "No --psk-hex or --psk-file: serving certificate clients only (PSK clients are "
            "refused); client certificates: none",
        ]
        with Program(
            command(
                "client", "127.0.0.1", str(port), "--ca", str(credentials.ca), "--pings", "2",
                "--interval", "0.2",
            )
        ) as client:  # fmt: skip
            assert client.wait() == 0, client.stdout.text + client.stderr.text
        lines = client.stdout.text.splitlines()
        assert len([line for line in lines if re.match(_ack("Alice (clone number 0)"), line)]) == 2
        assert lines[-1] == _summary(2, 0)
        client_port = re.search(_ack("Alice (clone number 0)"), client.stdout.text, re.M)
        assert client_port is not None
        server.stdout.wait_for(
            rf"^Connection with \(127\.0\.0\.1:{client_port.group(1)}\) encrypted\. "
            r"Session cipher: ECDHE-ECDSA-AES256-GCM-SHA384; session protocol: DTLS 1\.2\.$"
        )
        # A certificate-only server has no PSK: no identity is asked for, no demo key.
        assert "PSK callback" not in server.stdout.text
        assert "demo key" not in server.stdout.text

        # A PSK client (Qt's demo key, no --ca) shares no suite with it: refused, both say why.
        with Program(command("client", "127.0.0.1", str(port), "--pings", "1")) as psk_client:
            assert psk_client.wait() == 1
        assert psk_client.stdout.text.splitlines()[-2:] == [
            "error: Alice (clone number 0): handshake error - tls alert handshake failure "
            "(fatal alert from the server: handshake_failure (40))",
            _summary(0, 1),
        ]
        server.stdout.wait_for(
            r"^error: \(127\.0\.0\.1:\d+\): handshake failed: no shared cipher; "
            r"fatal alert sent: handshake_failure \(40\)$"
        )


def test_required_client_certificates(
    credentials: Credentials, client_key_and_certificate: tuple[Path, Path]
) -> None:
    client_key, client_certificate = client_key_and_certificate
    server, port = start_serve(
        "--certificate", str(credentials.server_certificate),
        "--private-key", str(credentials.server_key),
        "--client-certificates", "required", "--client-ca", str(credentials.ca),
        "--psk-hex", KEY,
    )  # fmt: skip
    with server:
        # A certificate client with no certificate of its own: refused, the reason on both sides.
        with Program(
            command("client", "127.0.0.1", str(port), "--ca", str(credentials.ca), "--pings", "1")
        ) as anonymous:
            assert anonymous.wait() == 1
        assert anonymous.stdout.text.splitlines()[-2:] == [
            "error: Alice (clone number 0): handshake error - tls alert handshake failure "
            "(fatal alert from the server: handshake_failure (40))",
            _summary(0, 1),
        ]
        server.stdout.wait_for(
            r"^error: \(127\.0\.0\.1:\d+\): handshake failed: peer did not return a "
            r"certificate; fatal alert sent: handshake_failure \(40\)$"
        )

        # With a certificate (key and certificate in one file, then in two): ACKs.
        for number, certificate_options in enumerate(
            [
                ["--certificate", str(credentials.client_pem)],
                ["--certificate", str(client_certificate), "--private-key", str(client_key)],
            ]
        ):
            name = f"device {number}"
            with Program(
                command(
                    "client", "127.0.0.1", str(port), "--ca", str(credentials.ca),
                    *certificate_options, "--identity", name, "--pings", "1",
                )
            ) as device:  # fmt: skip
                assert device.wait() == 0, device.stdout.text + device.stderr.text
            device_port = device.stdout.wait_for(_ack(name)).group(1)
            assert device.stdout.text.splitlines()[-1] == _summary(1, 0)
            server.stdout.wait_for(
                rf"^Connection with \(127\.0\.0\.1:{device_port}\) encrypted\. "
                r"Session cipher: ECDHE-ECDSA-\S+; session protocol: DTLS 1\.2\.$"
            )

        # "required" concerns certificate suites only: a PSK client is never asked for one.
        with Program(
            command("client", "127.0.0.1", str(port), "--psk-hex", KEY, "--pings", "1")
        ) as psk_client:
            assert psk_client.wait() == 0, psk_client.stdout.text
        psk_port = psk_client.stdout.wait_for(_ack("Alice (clone number 0)")).group(1)
        server.stdout.wait_for(
            rf"^Connection with \(127\.0\.0\.1:{psk_port}\) encrypted\. "
            r"Session cipher: \S*PSK\S*; session protocol: DTLS 1\.2\.$"
        )
    assert server.stderr.text == ""


def _run_in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("--private-key {server_key}", "--private-key needs --certificate"),
        ("--chain {ca}", "--chain needs --certificate"),
        (
            "--client-certificates required",
            "--client-certificates required needs --certificate",
        ),
        (
            "--certificate {server_pem} --client-certificates optional",
            "--client-certificates optional needs --client-ca",
        ),
        (
            "--certificate {server_pem} --client-ca {ca}",
            "--client-ca needs --client-certificates optional or required",
        ),
        (
            "--certificate {directory}/missing.pem",
            "cannot read the certificate file '{directory}/missing.pem': No such file",
        ),
        (
            "--certificate {server_certificate}",
            "the private key file '{server_certificate}' holds no usable private key",
        ),
        (
            "--certificate {server_certificate} --private-key {client_pem}",
            "the private key in '{client_pem}' does not belong to the certificate in "
            "'{server_certificate}'",
        ),
        (
            "--certificate {server_key}",
            "the certificate file '{server_key}' holds no PEM certificate",
        ),
        (
            "--certificate {server_pem} --client-certificates required --client-ca {server_key}",
            "the client CA file '{server_key}' holds no PEM certificate",
        ),
        (
            "--certificate {server_pem} --ciphers PSK-AES128-GCM-SHA256",
            "cannot configure the server: no cipher suite of 'PSK-AES128-GCM-SHA256' can be "
            "negotiated with the configured credentials: PSK-AES128-GCM-SHA256: a PSK suite, "
            "and no PSK store is configured",
        ),
    ],
    ids=[
        "key-without-certificate",
        "chain-without-certificate",
        "client-mode-without-certificate",
        "client-mode-without-ca",
        "client-ca-without-mode",
        "unreadable-certificate",
        "certificate-without-key",
        "mismatched-key",
        "key-as-certificate",
        "bad-client-ca",
        "psk-suite-without-psk",
    ],
)
def test_serve_misconfiguration_is_one_line_and_exit_code_2(
    credentials: Credentials, options: str, problem: str
) -> None:
    paths = {
        "directory": credentials.directory,
        "ca": credentials.ca,
        "server_pem": credentials.server_pem,
        "server_key": credentials.server_key,
        "server_certificate": credentials.server_certificate,
        "client_pem": credentials.client_pem,
    }
    argv = ["serve", "--port", "0", *(word.format(**paths) for word in options.split())]
    code, out, err = _run_in_process(argv)
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert line.startswith(f"trio-dtls-server: error: {problem.format(**paths)}"), line


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("--private-key {client_pem}", "--private-key needs --certificate"),
        ("--certificate {client_pem}", "--certificate needs --ca"),
        ("--server-name server.test", "--server-name needs --ca"),
        ("--ca {directory}/missing.pem", "cannot read the CA file '{directory}/missing.pem'"),
        ("--ca {server_key}", "the CA file '{server_key}' holds no PEM certificate"),
        (
            "--ca {ca} --certificate {server_certificate} --private-key {client_pem}",
            "the private key in '{client_pem}' does not belong to the certificate in "
            "'{server_certificate}'",
        ),
        ("--ciphers NO-SUCH-SUITE", "--ciphers: OpenSSL refuses 'NO-SUCH-SUITE': no cipher match"),
    ],
    ids=[
        "key-without-certificate",
        "certificate-without-ca",
        "server-name-without-ca",
        "unreadable-ca",
        "not-a-ca-file",
        "mismatched-key",
        "unknown-cipher",
    ],
)
def test_client_misconfiguration_is_one_line_and_exit_code_2(
    credentials: Credentials, options: str, problem: str
) -> None:
    paths = {
        "directory": credentials.directory,
        "ca": credentials.ca,
        "server_key": credentials.server_key,
        "server_certificate": credentials.server_certificate,
        "client_pem": credentials.client_pem,
    }
    argv = ["client", "127.0.0.1", "9", *(word.format(**paths) for word in options.split())]
    code, out, err = _run_in_process(argv)
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert line.startswith(f"trio-dtls-server: error: {problem.format(**paths)}"), line


def test_the_client_checks_the_server_name(credentials: Credentials) -> None:
    """HOST (127.0.0.1, an IP SAN of the test certificate) is checked by default; --server-name
    checks another name, and a certificate that does not carry it is refused."""
    server, port = start_serve("--certificate", str(credentials.server_pem))
    with server:
        server.stdout.wait_for("^No --psk-hex")
        base = ["client", "127.0.0.1", str(port), "--ca", str(credentials.ca), "--pings", "1"]
        with Program(command(*base, "--server-name", "server.test")) as named:
            assert named.wait() == 0, named.stdout.text + named.stderr.text
        with Program(command(*base, "--server-name", "intruder.test")) as intruder:
            assert intruder.wait() == 1
        assert "certificate verify failed" in intruder.stdout.text
