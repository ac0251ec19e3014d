"""Qt's own DTLS client (``QDtls``, OpenSSL backend), headless, as a test peer.

A port of the ``DtlsAssociation`` class of Qt's "DTLS client" example
(``examples/network/secureudpclient/association.cpp``) to PySide6, without the window: one
``QUdpSocket`` connected to the server, one ``QDtls`` in client mode with
``QSslConfiguration::defaultDtlsConfiguration()`` and ``VerifyNone``, the identity
``Alice (clone number N)`` and Qt's key ``1a2b3c4d5e6f`` given when ``pskRequired`` fires,
``handshakeTimeout`` answered with ``handleTimeout`` (Qt's 1 s, 2 s, 4 s, ... retransmission),
and after the handshake the pings ``I am <name>, please, accept our ping <n>`` (ping 0 at once,
then one every ``--interval`` milliseconds).

``tests/test_interop_stacks.py`` runs it as a subprocess::

    python qt_dtls_client.py HOST PORT --pings 3 --interval 100

Output, one line each, in the words of Qt's example (its GUI lines become plain text)::

    Alice (clone number 0): starting a handshake
    Alice (clone number 0): providing pre-shared key ...
    Alice (clone number 0): encrypted connection established!
    Alice (clone number 0): session cipher ECDHE-PSK-CHACHA20-POLY1305, protocol DTLS 1.2
    Alice (clone number 0) received a DTLS datagram: 17 fe fd ... As plain text: to (...): ACK

Exit status: 0 once ``--pings`` replies arrived (after sending close_notify, as the example's
destructor does, unless ``--no-close-notify`` asks to vanish like a crashed device); 1 on a
handshake or write error, or a close_notify from the server; 2 if Qt has no TLS backend; 3 if
``--run-limit`` seconds passed first.  ``--local-port`` binds the socket to a fixed port first,
so a second process can play the same device restarting (RFC 6347 section 4.2.8).
"""

from __future__ import annotations

import argparse
import sys

from PySide6.QtCore import QByteArray, QCoreApplication, QTimer
from PySide6.QtNetwork import (
    QDtls,
    QDtlsError,
    QHostAddress,
    QSsl,
    QSslConfiguration,
    QSslPreSharedKeyAuthenticator,
    QSslSocket,
    QUdpSocket,
)

#: Qt's example key (``association.cpp``), and the name template of ``mainwindow.cpp``.
QT_DEMO_KEY = bytes.fromhex("1a2b3c4d5e6f")
NAME_TEMPLATE = "Alice (clone number {})"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_TLS = 2
EXIT_RUN_LIMIT = 3


def say(line: str) -> None:
    """One line on stdout, flushed at once: the test reads it while we still run."""
    print(line, flush=True)


class DtlsAssociation:
    """Qt's ``DtlsAssociation``: one socket, one ``QDtls``, pings on a timer."""

    def __init__(
        self,
        app: QCoreApplication,
        address: QHostAddress,
        port: int,
        *,
        name: str,
        key: bytes,
        pings: int,
        interval_ms: int,
        local_port: int | None,
        close_notify: bool,
    ) -> None:
        self.app = app
        self.name = name
        self.key = key
        self.pings_wanted = pings
        self.close_notify = close_notify
        self.pings_sent = 0
        self.replies = 0
        self.finished = False

        self.socket = QUdpSocket()
        if local_port is not None and not self.socket.bind(address, local_port):
            self.fail(f"{name}: cannot bind port {local_port} - {self.socket.errorString()}")
            return
        # Connected, as in the example: Qt then also takes the path MTU from the socket.
        self.socket.connectToHost(address.toString(), port)

        configuration = QSslConfiguration.defaultDtlsConfiguration()
        configuration.setPeerVerifyMode(QSslSocket.PeerVerifyMode.VerifyNone)
        self.crypto = QDtls(QSslSocket.SslMode.SslClientMode)
        self.crypto.setPeer(address, port)
        self.crypto.setDtlsConfiguration(configuration)
        self.crypto.handshakeTimeout.connect(self.handshake_timeout)
        self.crypto.pskRequired.connect(self.psk_required)
        self.socket.readyRead.connect(self.read_datagram)

        self.ping_timer = QTimer()
        self.ping_timer.setInterval(interval_ms)
        self.ping_timer.timeout.connect(self.ping)

    # -- the example's slots ------------------------------------------------------------------

    def start_handshake(self) -> None:
        if self.finished:
            return
        if not self.crypto.doHandshake(self.socket):
            self.fail(f"{self.name}: failed to start a handshake - {self.crypto.dtlsErrorString()}")
            return
        say(f"{self.name}: starting a handshake")

    def read_datagram(self) -> None:
        # The example reads one datagram per readyRead; reading every pending one is the
        # same on loopback and cannot leave a datagram stranded in the socket.
        while self.socket.hasPendingDatagrams() and not self.finished:
            size = self.socket.pendingDatagramSize()
            if size <= 0:
                # Read it anyway (one byte buffer): an unread empty datagram wedges Qt sockets.
                self.socket.readDatagram(1)
                say(f"warning: {self.name}: spurious read notification?")
                continue
            datagram = self.socket.readDatagram(size)[0]
            self.handle_datagram(bytes(datagram.data()))

    def handle_datagram(self, datagram: bytes) -> None:
        if not self.crypto.isConnectionEncrypted():
            if not self.crypto.doHandshake(self.socket, datagram):
                self.fail(f"{self.name}: handshake error - {self.crypto.dtlsErrorString()}")
                return
            if self.crypto.isConnectionEncrypted():
                self.established()
            else:
                say(f"{self.name}: continuing with handshake ...")
            return
        plaintext = bytes(self.crypto.decryptDatagram(self.socket, datagram).data())
        if plaintext:
            self.server_response(datagram, plaintext)
        elif self.crypto.dtlsError() == QDtlsError.RemoteClosedConnectionError:
            self.fail(f"{self.name}: shutdown alert received")
        else:
            say(f"warning: {self.name}: zero-length datagram received?")

    def established(self) -> None:
        say(f"{self.name}: encrypted connection established!")
        protocol = self.crypto.sessionProtocol()
        protocol_name = "DTLS 1.2" if protocol == QSsl.SslProtocol.DtlsV1_2 else str(protocol)
        say(f"{self.name}: session cipher {self.crypto.sessionCipher().name()}, {protocol_name}")
        self.ping_timer.start()
        self.ping()  # ping 0 goes at once, as in the example

    def handshake_timeout(self) -> None:
        say(f"warning: {self.name}: handshake timeout, trying to re-transmit")
        if not self.crypto.handleTimeout(self.socket):
            self.fail(f"{self.name}: failed to re-transmit - {self.crypto.dtlsErrorString()}")

    def psk_required(self, authenticator: QSslPreSharedKeyAuthenticator) -> None:
        say(f"{self.name}: providing pre-shared key ...")
        authenticator.setIdentity(QByteArray(self.name.encode("latin-1")))
        authenticator.setPreSharedKey(QByteArray(self.key))

    def ping(self) -> None:
        if self.pings_sent >= self.pings_wanted or self.finished:
            self.ping_timer.stop()
            return
        message = f"I am {self.name}, please, accept our ping {self.pings_sent}"
        written = self.crypto.writeDatagramEncrypted(self.socket, message.encode("latin-1"))
        if written <= 0:
            self.fail(f"{self.name}: failed to send a ping - {self.crypto.dtlsErrorString()}")
            return
        self.pings_sent += 1

    def server_response(self, ciphertext: bytes, plaintext: bytes) -> None:
        hex_text = ciphertext.hex(" ")
        text = plaintext.decode("latin-1")
        say(f"{self.name} received a DTLS datagram: {hex_text} As plain text: {text}")
        self.replies += 1
        if self.replies >= self.pings_wanted:
            self.finish()

    # -- ending ---------------------------------------------------------------------------------

    def finish(self) -> None:
        """All replies are in: close_notify (the example's destructor) and exit 0."""
        self.finished = True
        self.ping_timer.stop()
        if self.close_notify and self.crypto.isConnectionEncrypted():
            self.crypto.shutdown(self.socket)
            say(f"{self.name}: close_notify sent")
        self.app.exit(EXIT_OK)

    def fail(self, line: str) -> None:
        say(f"error: {line}")
        self.finished = True
        self.app.exit(EXIT_FAILED)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", help="the server's IP address")
    parser.add_argument("port", type=int, help="the server's UDP port")
    parser.add_argument("--clone-number", type=int, default=0, help="N in 'Alice (clone number N)'")
    parser.add_argument("--psk-hex", default=QT_DEMO_KEY.hex(), help="the key (Qt's by default)")
    parser.add_argument("--pings", type=int, default=1, help="replies to wait for, then exit 0")
    parser.add_argument("--interval", type=int, default=5000, help="ms between pings (Qt: 5000)")
    parser.add_argument("--local-port", type=int, default=None, help="bind this port first")
    parser.add_argument(
        "--no-close-notify",
        dest="close_notify",
        action="store_false",
        help="exit without close_notify, like a device that crashed",
    )
    parser.add_argument("--run-limit", type=float, default=15.0, help="give up after SECONDS")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    app = QCoreApplication([sys.argv[0]])
    if not QSslSocket.supportsSsl():
        say("error: Qt has no usable TLS backend (QSslSocket.supportsSsl() is false)")
        return EXIT_NO_TLS
    say(f"Qt {QSslSocket.sslLibraryVersionString()} backend {QSslSocket.activeBackend()}")

    association = DtlsAssociation(
        app,
        QHostAddress(arguments.host),
        arguments.port,
        name=NAME_TEMPLATE.format(arguments.clone_number),
        key=bytes.fromhex(arguments.psk_hex),
        pings=arguments.pings,
        interval_ms=arguments.interval,
        local_port=arguments.local_port,
        close_notify=arguments.close_notify,
    )
    if association.finished:  # failed while setting up (bind error)
        return EXIT_FAILED

    def run_limit_reached() -> None:
        say(f"error: {association.name}: no {arguments.pings} replies within the run limit")
        app.exit(EXIT_RUN_LIMIT)

    QTimer.singleShot(int(arguments.run_limit * 1000), run_limit_reached)
    QTimer.singleShot(0, association.start_handshake)
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
