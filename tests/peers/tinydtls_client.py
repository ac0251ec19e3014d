"""A tinydtls client (through the ``DTLSSocket`` binding, the one aiocoap uses) as a test peer.

tinydtls is the DTLS stack of many microcontroller SDKs (RIOT, Contiki, Zephyr's samples,
aiocoap on Linux).  Its client offers exactly ``TLS_PSK_WITH_AES_128_CCM_8`` and
``TLS_PSK_WITH_AES_128_CCM`` (plus the ECDHE-ECDSA CCM suites when it has an ECDSA key, which
this binding never gives it), always with the extended master secret and renegotiation_info
extensions.

``tests/test_interop_stacks.py`` runs it as a subprocess::

    python tinydtls_client.py HOST PORT IDENTITY HEXKEY MESSAGE

It handshakes, sends MESSAGE once, prints the reply and closes with close_notify.  Lines::

    tinydtls: connected
    reply: <text>
    error: <why>

Exit status: 0 after a reply, 1 on a fatal alert or a failure of tinydtls, 3 when the run
limit passed first.  tinydtls only speaks IPv6 sockets (the binding asserts ``AF_INET6``), so
an IPv4 server is reached through its IPv4-mapped address ``::ffff:a.b.c.d``.

The binding's ``DTLSSocket`` class is built for aiocoap's event loop (and shares its table of
connections between instances); this script drives the lower ``DTLSSocket.dtls.DTLS`` object
directly: tinydtls calls ``write`` to send, ``read`` with decrypted data and ``event`` for
alerts and state changes, and ``checkRetransmit`` resends a lost flight when it is due.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import sys
import time

from DTLSSocket import dtls

#: tinydtls's internal event "handshake finished" (``DTLS_EVENT_CONNECTED`` in alert.h).
EVENT_CONNECTED = 0x01DE
#: Alert levels as tinydtls reports them to the event callback.
ALERT_LEVEL_FATAL = 2

RUN_LIMIT = 15.0
#: How often to let tinydtls look at its retransmission queue while nothing arrives.
POLL_INTERVAL = 0.05

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_RUN_LIMIT = 3


def say(line: str) -> None:
    print(line, flush=True)


def mapped(host: str) -> str:
    """The IPv6 text tinydtls needs: IPv4 literals become ``::ffff:a.b.c.d``."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv4Address):
        return f"::ffff:{address}"
    return str(address)


class TinyDtlsClient:
    """One tinydtls context with one peer, and the UDP socket under it."""

    def __init__(self, identity: bytes, key: bytes) -> None:
        self.socket = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.bind(("::", 0))
        self.replies: list[bytes] = []
        self.connected = False
        self.fatal: str | None = None
        self.context = dtls.DTLS(
            read=self._read,
            write=self._write,
            event=self._event,
            pskId=identity,
            pskStore={identity: key},
        )

    # -- tinydtls callbacks ---------------------------------------------------------------------

    def _write(self, address: tuple[str, int], data: bytes) -> int:
        return self.socket.sendto(data, (address[0], address[1], 0, 0))

    def _read(self, address: tuple[str, int], data: bytes) -> int:
        self.replies.append(data)
        return len(data)

    def _event(self, level: int, code: int) -> None:
        if code == EVENT_CONNECTED:
            self.connected = True
        elif level == ALERT_LEVEL_FATAL:
            self.fatal = f"fatal alert {code} received"

    # -- driving it --------------------------------------------------------------------------

    def pump(self, until: float) -> None:
        """Feed arriving datagrams to tinydtls (and let it retransmit) for a short while."""
        wait = max(0.0, min(POLL_INTERVAL, until - time.monotonic()))
        readable, _, _ = select.select([self.socket], [], [], wait)
        if readable:
            data, source = self.socket.recvfrom(65_536)
            status = self.context.handleMessageAddr(source[0], source[1], data)
            if status < 0 and self.fatal is None:
                self.fatal = f"tinydtls refused a datagram (status {status})"
        self.context.checkRetransmit()

    def run(self, host: str, port: int, message: bytes) -> int:
        deadline = time.monotonic() + RUN_LIMIT
        peer = self.context.connect(mapped(host), port)
        if peer is None:
            say("error: tinydtls could not start a handshake")
            return EXIT_FAILED
        while not self.connected:
            if self.fatal is not None:
                say(f"error: {self.fatal}")
                return EXIT_FAILED
            if time.monotonic() >= deadline:
                say("error: no handshake within the run limit")
                return EXIT_RUN_LIMIT
            self.pump(deadline)
        say("tinydtls: connected")
        self.context.write(peer, message)
        while not self.replies:
            if self.fatal is not None:
                say(f"error: {self.fatal}")
                return EXIT_FAILED
            if time.monotonic() >= deadline:
                say("error: no reply within the run limit")
                return EXIT_RUN_LIMIT
            self.pump(deadline)
        say(f"reply: {self.replies[0].decode('utf-8', 'replace')}")
        self.context.close(peer)  # close_notify
        return EXIT_OK


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        say("error: usage: tinydtls_client.py HOST PORT IDENTITY HEXKEY MESSAGE")
        return 2
    host, port, identity, hex_key, message = argv
    client = TinyDtlsClient(identity.encode(), bytes.fromhex(hex_key))
    try:
        return client.run(host, int(port), message.encode())
    finally:
        client.socket.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
