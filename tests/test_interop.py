"""Interop with DTLS stacks nobody here wrote: Debian's ``openssl`` and GnuTLS's ``gnutls-cli``.

* ``openssl s_client`` against our ``serve`` (IPv4 and IPv6): handshake, a line from its
  stdin, Qt's ACK back, close_notify when its stdin ends;
* ``openssl s_client -CAfile`` against ``serve --certificate`` (no PSK): it verifies our
  certificate (made by ``trustme`` at test time) and gets Qt's ACK;
* our ``client`` against ``openssl s_server -nocert -psk``: s_server prints what it receives
  and sends what is written on its stdin, so the test answers the ping through s_server;
* ``gnutls-cli --udp`` with plain PSK against our ``serve`` (gnutls-cli 3.7.9 crashes by itself
  after ECDHE-PSK and DHE-PSK handshakes, so the priority string allows plain PSK only).

A missing program skips its tests with the reason (``.ci/run`` installs ``openssl`` and
``gnutls-bin``).  The process helpers come from ``cli_support.py``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from auth_support import make_credentials
from cli_support import HEX, Program, command, free_udp_port, start_serve

pytestmark = pytest.mark.interop

KEY = "1a2b3c4d5e6f"  # Qt's demo key
IDENTITY = "Alice (clone number 0)"


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (Debian package {package!r})")
    return path


def _peer(host: str) -> str:
    """``host`` as Qt writes a peer address: IPv6 without brackets."""
    return re.escape(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_openssl_s_client_against_serve(host: str) -> None:
    openssl = _require("openssl", "openssl")
    server, port = start_serve("--host", host, "--psk-hex", KEY)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with server, Program(
        [openssl, "s_client", "-dtls1_2", "-psk", KEY, "-psk_identity", IDENTITY,
         "-connect", target],
        stdin=True,
    ) as s_client:  # fmt: skip
        cipher = s_client.stdout.wait_for(r"^New, TLSv1\.2, Cipher is (\S+)$").group(1)
        s_client.write("hello from openssl s_client\n")
        ack = s_client.stdout.wait_for(rf"to \({_peer(host)}:(\d+)\): ACK")
        peer_port = ack.group(1)
        peer = rf"\({_peer(host)}:{peer_port}\)"
        server.stdout.wait_for(
            rf"^Connection with {peer} encrypted\. Session cipher: {re.escape(cipher)}; "
            r"session protocol: DTLS 1\.2\.$"
        )
        server.stdout.wait_for(
            rf"^PSK callback, received a client's identity: '{re.escape(IDENTITY)}'$"
        )
        # s_client sends the line with its newline; the display shows it escaped.
        server.stdout.wait_for(
            rf"^A message from {peer} DTLS datagram: 17 fe fd {HEX} "
            r"As plain text: hello from openssl s_client\\n$"
        )
        s_client.close_stdin()  # end of input: s_client sends close_notify and exits
        assert s_client.wait() == 0
        server.stdout.wait_for(rf"^{peer}: The DTLS connection has been shutdown$")


def test_openssl_s_client_verifies_the_certificate_of_serve(tmp_path: Path) -> None:
    openssl = _require("openssl", "openssl")
    credentials = make_credentials(tmp_path)
    server, port = start_serve("--certificate", str(credentials.server_pem))
    with server, Program(
        [openssl, "s_client", "-dtls1_2", "-CAfile", str(credentials.ca), "-verify_return_error",
         "-connect", f"127.0.0.1:{port}"],
        stdin=True,
    ) as s_client:  # fmt: skip
        cipher = s_client.stdout.wait_for(r"^New, TLSv1\.2, Cipher is (\S+)$").group(1)
        assert cipher.startswith("ECDHE-ECDSA-"), cipher
        s_client.stdout.wait_for(r"^\s*Verify return code: 0 \(ok\)$")
        s_client.write("hello, certificate\n")
        peer_port = s_client.stdout.wait_for(r"to \(127\.0\.0\.1:(\d+)\): ACK").group(1)
        peer = rf"\(127\.0\.0\.1:{peer_port}\)"
        server.stdout.wait_for(
            rf"^Connection with {peer} encrypted\. Session cipher: {re.escape(cipher)}; "
            r"session protocol: DTLS 1\.2\.$"
        )
        server.stdout.wait_for(
            rf"^A message from {peer} DTLS datagram: 17 fe fd {HEX} "
            r"As plain text: hello, certificate\\n$"
        )
        s_client.close_stdin()
        assert s_client.wait() == 0
        server.stdout.wait_for(rf"^{peer}: The DTLS connection has been shutdown$")
    assert "PSK callback" not in server.stdout.text  # certificate only: no PSK was involved


def test_our_client_against_openssl_s_server() -> None:
    openssl = _require("openssl", "openssl")
    port = free_udp_port()
    with Program(
        [openssl, "s_server", "-dtls1_2", "-nocert", "-psk", KEY, "-accept", f"127.0.0.1:{port}"],
        stdin=True,
    ) as s_server:
        s_server.stdout.wait_for(r"^ACCEPT$")
        with Program(command("client", "127.0.0.1", str(port), "--pings", "1")) as client:
            # s_server prints what it decrypts (our ping has no newline of its own).
            s_server.stdout.wait_for(re.escape(f"I am {IDENTITY}, please, accept our ping 0"))
            s_server.write("pong from s_server\n")
            assert client.wait() == 0, client.stdout.text + client.stderr.text
        lines = client.stdout.text.splitlines()
        assert f"{IDENTITY}: encrypted connection established!" in lines
        replies = [line for line in lines if " received a DTLS datagram: " in line]
        assert len(replies) == 1
        assert re.fullmatch(
            rf"{re.escape(IDENTITY)} received a DTLS datagram: 17 fe fd {HEX} "
            r"As plain text: pong from s_server\\n",
            replies[0],
        ), replies[0]
        assert lines[-1] == (
            "Summary: 1 association(s), 1 handshake(s), 1 ping(s) sent, 1 repl(ies) received, "
            "0 failed"
        )
        # Our client said goodbye: s_server read the close_notify (its "DONE", printed right
        # after the data it received).
        s_server.stdout.wait_for(r"accept our ping 0DONE$")
        assert f"PSK warning: client identity not what we expected (got '{IDENTITY}'" in (
            s_server.stdout.text + s_server.stderr.text
        )


def test_gnutls_cli_against_serve() -> None:
    gnutls_cli = _require("gnutls-cli", "gnutls-bin")
    server, port = start_serve("--psk-hex", KEY)
    identity = "Alice (clone number 1)"
    with server, Program(
        [gnutls_cli, "--udp", "--pskusername", identity, "--pskkey", KEY,
         "--priority", "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK",
         "-p", str(port), "127.0.0.1"],
        stdin=True,
    ) as gnutls:  # fmt: skip
        gnutls.stdout.wait_for(r"^- Handshake was completed$")
        gnutls.stdout.wait_for(r"^- PSK authentication\. PSK hint 'Qt DTLS example server'$")
        gnutls.write("hello from gnutls\n")
        peer_port = gnutls.stdout.wait_for(r"to \(127\.0\.0\.1:(\d+)\): ACK").group(1)
        peer = rf"\(127\.0\.0\.1:{peer_port}\)"
        server.stdout.wait_for(
            rf"^Connection with {peer} encrypted\. Session cipher: PSK-\S+; "
            r"session protocol: DTLS 1\.2\.$"
        )
        server.stdout.wait_for(
            rf"^A message from {peer} DTLS datagram: 17 fe fd {HEX} "
            r"As plain text: hello from gnutls\\n$"
        )
        gnutls.close_stdin()  # end of input: gnutls-cli says bye (close_notify) and exits
        assert gnutls.wait() == 0
        server.stdout.wait_for(rf"^{peer}: The DTLS connection has been shutdown$")
