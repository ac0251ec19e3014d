"""An Mbed TLS DTLS 1.2 PSK client (through ``python-mbedtls``) as a test peer.

Mbed TLS is the TLS/DTLS library of most microcontroller SDKs (Zephyr, ESP-IDF, Mbed OS,
Nordic's nRF Connect, the Pico SDK, ...), so it is the client a DTLS server for devices is most
likely to meet.  ``python-mbedtls`` wraps the library itself (its wheel bundles Mbed TLS 2.28)
without a Python reimplementation of anything: what goes on the wire is Mbed TLS's own.

``tests/test_interop_mbedtls.py`` runs it as a subprocess::

    python mbedtls_client.py PORT HOST MESSAGE IDENTITY HEXKEY [--ciphers A,B] [--pings N]
                             [--burst] [--mtu BYTES]

HOST is ``127.0.0.1`` or ``::1``.  ``--ciphers`` takes Mbed TLS suite names
(``TLS-PSK-WITH-AES-128-CCM``); without it the client offers every suite of its build, in
Mbed TLS's own order.  It handshakes, sends MESSAGE ``--pings`` times (``%n`` in MESSAGE
becomes the ping's number, from 0), each after the previous reply came -- or all at once with
``--burst`` -- and then closes with close_notify.  ``--mtu`` makes Mbed TLS fit every datagram
it sends in that many bytes, cutting handshake messages into fragments (all but its
ClientHello, which Mbed TLS always sends whole).  Lines::

    connected cipher=<Mbed TLS suite name>
    reply: <plaintext, UTF-8>            (one per reply, in arrival order)
    error: <why>

Exit status: 0 after every reply, 1 on a handshake or TLS failure, 2 on a bad command line,
3 when the run limit passed first.  The whole process is killed by ``SIGALRM`` (whose default
action ends it, whatever it is doing, even inside C) a little after the run limit.

How it drives Mbed TLS.  ``python-mbedtls`` offers a blocking ``TLSWrappedSocket`` that never
looks at a timer (a lost datagram would hang it), so the script uses the sans-I/O
``TLSWrappedBuffer`` instead: ``do_handshake`` runs one step of Mbed TLS's handshake and raises
``WantWriteError`` when it wrote something (sent here at once, see :meth:`flush`) or
``WantReadError`` when it needs the server's next flight; ``receive_from_network`` feeds it one
datagram.  Mbed TLS's retransmission timer (``mbedtls_timing_set_delay``, wall clock, 1 s
doubling up to ``HANDSHAKE_TIMEOUT_MAX``) is checked inside ``do_handshake``, so the loop calls
it again at least every ``POLL_INTERVAL`` while nothing arrives: when the timer expired, Mbed
TLS resends its last flight (and gives up with ``MBEDTLS_ERR_SSL_TIMEOUT`` past the maximum).

The cookie exchange needs nothing from the caller: ``HelloVerifyRequest`` (the exception) is
what Mbed TLS raises on the *server* side when it wants a cookie; a client that receives a
HelloVerifyRequest answers it by itself with a second ClientHello carrying the cookie.

Mbed TLS reports a received fatal alert only as "a fatal alert message was received", without
the alert's description.  The script reads it from the wire: the server's alert during the
handshake is a plaintext (epoch 0) alert record, so its two bytes are in the datagram.
"""

from __future__ import annotations

import argparse
import enum
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Protocol, cast

from mbedtls import tls
from mbedtls.exceptions import TLSError

#: Graceful limit of the whole run: past it the script says so and exits 3.
RUN_LIMIT = 12.0
#: Hard limit: SIGALRM's default action kills the process, whatever it is doing.
HARD_LIMIT_SECONDS = 14
#: Mbed TLS's handshake retransmission timer: 1 s, 2 s, then it gives up (after about 7 s).
HANDSHAKE_TIMEOUT_MIN = 1.0
HANDSHAKE_TIMEOUT_MAX = 4.0
#: Longest wait for the socket before giving Mbed TLS a chance to look at its timer.
POLL_INTERVAL = 0.05
#: Larger than any datagram the server sends (its MTU is at most 1472 during handshakes; a
#: record after it is at most 2^14 bytes of plaintext plus overhead).
RECEIVE_SIZE = 65_536

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RUN_LIMIT = 3

#: DTLS record layer: content type of alerts, and the header length (type, version, epoch,
#: sequence number, length).
CONTENT_ALERT = 21
RECORD_HEADER_LENGTH = 13
ALERT_LEVEL_FATAL = 2
#: Descriptions of the alerts a DTLS 1.2 PSK handshake can end with (RFC 5246 7.2, RFC 4279).
ALERT_NAMES = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    80: "internal_error",
    100: "no_renegotiation",
    115: "unknown_psk_identity",
}


class MbedTlsBuffer(Protocol):
    """The part of python-mbedtls's ``TLSWrappedBuffer`` used here, typed as it behaves.

    The package ships stubs, but in 2.10.1 they disagree with its compiled code in three places
    this script touches: ``cipher()`` returns ``str`` (stub: ``bytes``); ``readinto`` needs a
    writable buffer (stub: ``bytes``, which nothing could be read into); and the
    ``HandshakeStep`` members are enum members (stub: ``int``).  One cast where the buffer is
    made puts the true types here, instead of an ignore at each call.
    """

    @property
    def _handshake_state(self) -> enum.Enum: ...
    def do_handshake(self) -> None: ...
    def receive_from_network(self, data: bytes) -> None: ...
    def peek_outgoing(self, amt: int) -> bytes: ...
    def consume_outgoing(self, amt: int) -> None: ...
    def write(self, buffer: bytes) -> int: ...
    def readinto(self, buffer: bytearray, amt: int) -> int: ...
    def cipher(self) -> str | None: ...
    def shutdown(self) -> None: ...
    def setmtu(self, mtu: int) -> None: ...


class PeerFailed(Exception):
    """The run cannot go on; the message is the ``error:`` line's text."""

    def __init__(self, reason: str, exit_status: int = EXIT_FAILED) -> None:
        super().__init__(reason)
        self.exit_status = exit_status


def say(line: str) -> None:
    """One line on stdout, flushed at once: the test reads it while we still run."""
    print(line, flush=True)


def plaintext_alerts(datagram: bytes) -> list[tuple[int, int]]:
    """``(level, description)`` of every unprotected (epoch 0) alert record in ``datagram``."""
    alerts: list[tuple[int, int]] = []
    position = 0
    while position + RECORD_HEADER_LENGTH <= len(datagram):
        content_type = datagram[position]
        epoch = int.from_bytes(datagram[position + 3 : position + 5], "big")
        length = int.from_bytes(datagram[position + 11 : position + 13], "big")
        body = datagram[position + RECORD_HEADER_LENGTH : position + RECORD_HEADER_LENGTH + length]
        if content_type == CONTENT_ALERT and epoch == 0 and len(body) == 2:
            alerts.append((body[0], body[1]))
        position += RECORD_HEADER_LENGTH + length
    return alerts


def pack_records(stream: bytes, mtu: int) -> list[bytes]:
    """Whole DTLS records from ``stream``, packed in order into datagrams of at most ``mtu``.

    ``mtu`` 0 means no limit (one datagram).  A record larger than ``mtu`` (Mbed TLS never
    writes one) still goes alone in its own datagram rather than being cut.
    """
    if not mtu:
        return [stream]
    datagrams: list[bytes] = []
    current = b""
    position = 0
    while position < len(stream):
        length = int.from_bytes(stream[position + 11 : position + 13], "big")
        record = stream[position : position + RECORD_HEADER_LENGTH + length]
        position += len(record)
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


def describe(error: TLSError) -> str:
    """Mbed TLS's own text for an error (``SSL - ...``) and its code (``MBEDTLS_ERR_...``)."""
    code = getattr(error, "err", None)  # set by the compiled class; missing from its stub
    return f"{error.msg} (mbedtls error -0x{code:04x})" if isinstance(code, int) else error.msg


class MbedTlsClient:
    """One Mbed TLS client context on memory buffers, and the connected UDP socket under it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        identity: str,
        key: bytes,
        ciphers: Sequence[str] | None,
        mtu: int,
        deadline: float,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_DGRAM)
        self.socket.connect((host, port))  # only the server's datagrams reach us
        self.deadline = deadline
        configuration = tls.DTLSConfiguration(
            pre_shared_key=(identity, key),
            ciphers=tuple(ciphers) if ciphers else None,
            lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
            highest_supported_version=tls.DTLSVersion.DTLSv1_2,
            validate_certificates=False,  # PSK only: there is no certificate to check
            handshake_timeout_min=HANDSHAKE_TIMEOUT_MIN,
            handshake_timeout_max=HANDSHAKE_TIMEOUT_MAX,
        )
        context = tls.ClientContext(configuration)
        self.buffer = cast(MbedTlsBuffer, context.wrap_buffers(None))  # see MbedTlsBuffer
        self.mtu = mtu
        if mtu:
            self.buffer.setmtu(mtu)
        #: Unprotected alerts the server sent, as ``(level, description)``, in arrival order.
        self.alerts_seen: list[tuple[int, int]] = []

    # -- the datagram side ------------------------------------------------------------------

    def flush(self) -> None:
        """Send whatever Mbed TLS wrote since the last call, in datagrams as it meant them.

        The memory buffer keeps bytes, not datagram boundaries, so they are rebuilt: whole
        records, packed in order into datagrams of at most ``mtu`` bytes -- what Mbed TLS does
        itself (each record it writes fits the MTU, and it packs records while they fit).
        Without an MTU everything goes in one datagram; this runs after every step, so that
        is one flight.
        """
        pending = self.buffer.peek_outgoing(RECEIVE_SIZE)
        if not pending:
            return
        self.buffer.consume_outgoing(len(pending))
        for datagram in pack_records(pending, self.mtu):
            try:
                self.socket.send(datagram)
            except OSError as error:  # e.g. ICMP port unreachable from an earlier datagram
                raise PeerFailed(f"cannot send: {error}") from error

    def receive(self, wait: float) -> bool:
        """Feed Mbed TLS the next datagram if one arrives within ``wait``; say whether one did."""
        readable, _, _ = select.select([self.socket], [], [], max(0.0, wait))
        if not readable:
            return False
        try:
            datagram = self.socket.recv(RECEIVE_SIZE)
        except OSError as error:  # ConnectionRefusedError: nobody listens on that port
            raise PeerFailed(f"cannot receive: {error}") from error
        self.alerts_seen += plaintext_alerts(datagram)
        self.buffer.receive_from_network(datagram)
        return True

    def time_left(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PeerFailed(f"no {what} within the run limit", EXIT_RUN_LIMIT)
        return left

    def failure(self, during: str, error: TLSError) -> PeerFailed:
        """The error line for a TLS failure; names the alert the server sent, if any."""
        self.flush()  # the alert Mbed TLS itself may have written, so the server hears it too
        reason = f"{during} failed: {describe(error)}"
        fatal = [number for level, number in self.alerts_seen if level == ALERT_LEVEL_FATAL]
        if fatal:
            reason += (
                f"; fatal alert received: {ALERT_NAMES.get(fatal[-1], 'unknown')} ({fatal[-1]})"
            )
        return PeerFailed(reason)

    # -- the steps --------------------------------------------------------------------------

    def handshake(self) -> str:
        """Run the handshake to its end; return the suite Mbed TLS settled on."""
        while self.buffer._handshake_state.name != "HANDSHAKE_OVER":
            try:
                self.buffer.do_handshake()
            except tls.WantWriteError:
                pass  # it wrote a flight: sent just below
            except tls.WantReadError:
                # Nothing to do until the server answers -- or the retransmission timer
                # fires, which only a later do_handshake() notices.
                self.flush()
                self.receive(min(POLL_INTERVAL, self.time_left("handshake")))
                continue
            except TLSError as error:  # HelloVerifyRequest included: a server-side error only
                raise self.failure("handshake", error) from error
            self.flush()
        return self.buffer.cipher() or "?"

    def send(self, plaintext: bytes) -> None:
        try:
            self.buffer.write(plaintext)
        except TLSError as error:
            raise self.failure("write", error) from error
        self.flush()

    def replies(self, count: int) -> list[bytes]:
        """The next ``count`` application-data records from the server, in arrival order."""
        received: list[bytes] = []
        chunk = bytearray(RECEIVE_SIZE)
        while len(received) < count:
            if not self.receive(self.time_left("reply")):
                continue
            # One datagram may hold several records: read until Mbed TLS has no more.
            while True:
                try:
                    length = self.buffer.readinto(chunk, len(chunk))
                except tls.WantReadError:
                    break  # a record without application data (or nothing left)
                except tls.RaggedEOF as error:
                    raise PeerFailed("the server ended the connection") from error
                except TLSError as error:
                    raise self.failure("read", error) from error
                finally:
                    self.flush()  # Mbed TLS may answer something (an alert) while reading
                received.append(bytes(chunk[:length]))
        return received

    def close(self) -> None:
        """Send close_notify (Mbed TLS writes it on ``shutdown``) and close the socket."""
        try:
            self.buffer.shutdown()
            self.flush()
        finally:
            self.socket.close()


def show_replies(replies: list[bytes]) -> None:
    for reply in replies:
        say(f"reply: {reply.decode('utf-8', 'replace')}")


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A one-shot Mbed TLS DTLS 1.2 PSK client.")
    parser.add_argument("port", type=int)
    parser.add_argument("host", help="127.0.0.1 or ::1")
    parser.add_argument("message", help="sent once per ping; %%n becomes the ping number")
    parser.add_argument("identity")
    parser.add_argument("key_hex")
    parser.add_argument("--ciphers", default="", help="Mbed TLS suite names, comma-separated")
    parser.add_argument("--pings", type=int, default=1)
    parser.add_argument(
        "--mtu", type=int, default=0, help="largest datagram Mbed TLS may send (0: no limit)"
    )
    parser.add_argument(
        "--burst", action="store_true", help="send every ping at once, then read the replies"
    )
    return parser.parse_args(argv)


def run(arguments: argparse.Namespace) -> int:
    ciphers = [name for name in arguments.ciphers.split(",") if name]
    unknown = sorted(set(ciphers) - set(tls.ciphers_available()))
    if unknown:
        say(f"error: this Mbed TLS build has no suite {', '.join(unknown)}")
        return EXIT_USAGE
    client = MbedTlsClient(
        arguments.host,
        arguments.port,
        identity=arguments.identity,
        key=bytes.fromhex(arguments.key_hex),
        ciphers=ciphers or None,
        mtu=arguments.mtu,
        deadline=time.monotonic() + RUN_LIMIT,
    )
    try:
        say(f"connected cipher={client.handshake()}")
        pings = [
            arguments.message.replace("%n", str(number)).encode()
            for number in range(arguments.pings)
        ]
        if arguments.burst:
            for ping in pings:
                client.send(ping)
            show_replies(client.replies(len(pings)))
        else:
            for ping in pings:  # each ping after the previous one's reply, printed at once
                client.send(ping)
                show_replies(client.replies(1))
    except PeerFailed as failed:
        client.socket.close()
        say(f"error: {failed}")
        return failed.exit_status
    client.close()
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    # Whatever happens below (a C call that never returns included), the kernel ends us.
    signal.alarm(HARD_LIMIT_SECONDS)
    try:
        arguments = parse_arguments(argv)
    except SystemExit as exit_request:  # argparse already printed why
        return EXIT_USAGE if exit_request.code else EXIT_OK
    return run(arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
