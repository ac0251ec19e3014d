"""One wave of half-open clients for the churn scenario (:func:`benchmarks.native.run_churn`).

Each client is a real DTLS 1.2 client (pyOpenSSL on a memory BIO, the benchmark's fixed PSK)
on its own UDP socket: it sends its ClientHello, answers the HelloVerifyRequest with the
ClientHello that carries the cookie, waits for the server's first flight (proof the server
verified the cookie and started a handshake) and then goes silent: it never sends its second
flight.  The sockets stay open (so the server's retransmissions meet no ICMP error that could
end the handshake early) until the caller's :class:`contextlib.ExitStack` closes them, after
the server's ``--handshake-timeout`` has cleaned the wave up.

dtlsload cannot do this (it always finishes its handshakes), hence this small Python client;
it measures memory, not speed, so its own CPU cost does not matter.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from typing import Any

from OpenSSL import SSL

from .common import BENCH_MTU, new_client_context

__all__ = ["half_open_wave"]

#: A ClientHello or its cookie reply that got no answer is sent again after this long.
RESEND_AFTER = 1.0

_WAIT_COOKIE, _HELLO_SENT, _FLIGHT_SEEN = 0, 1, 2


def _flight(connection: SSL.Connection) -> bytes:
    """Advance the handshake and return what OpenSSL wants sent (b"" when nothing)."""
    with contextlib.suppress(SSL.WantReadError):
        connection.do_handshake()
    try:
        return connection.bio_read(65_536)
    except SSL.WantReadError:
        return b""


def half_open_wave(
    port: int,
    suite: str,
    clients: int,
    stack: contextlib.ExitStack,
    *,
    host: str = "127.0.0.1",
    limit: float = 20.0,
) -> dict[str, Any]:
    """Start ``clients`` half-open handshakes against ``host:port``; return the counts.

    ``hello_verified``: clients that sent the ClientHello with the cookie;
    ``server_flight``: of those, the ones whose server answered with its first flight (the
    server holds a handshake for each).  The sockets are closed by ``stack``.
    """
    context = new_client_context(suite)
    selector = selectors.DefaultSelector()
    stack.callback(selector.close)
    sockets: list[socket.socket] = []
    connections: list[SSL.Connection] = []
    states: list[int] = []
    last_sent: list[bytes] = []
    sent_at: list[float] = []
    for index in range(clients):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stack.callback(sock.close)
        sock.setblocking(False)
        sock.connect((host, port))
        connection = SSL.Connection(context, None)
        # A memory BIO cannot tell OpenSSL the path MTU: without one, DTLS refuses to write.
        connection.set_ciphertext_mtu(BENCH_MTU)
        connection.set_connect_state()
        hello = _flight(connection)
        sock.send(hello)
        selector.register(sock, selectors.EVENT_READ, index)
        sockets.append(sock)
        connections.append(connection)
        states.append(_WAIT_COOKIE)
        last_sent.append(hello)
        sent_at.append(time.monotonic())
    deadline = time.monotonic() + limit
    waiting = clients
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(0.1):
            index = int(key.data)
            try:
                data = sockets[index].recv(65_536)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            if states[index] == _WAIT_COOKIE:
                connections[index].bio_write(data)
                reply = _flight(connections[index])
                if reply:
                    sockets[index].send(reply)
                    states[index] = _HELLO_SENT
                    last_sent[index] = reply
                    sent_at[index] = time.monotonic()
            else:
                # The server's first flight: the handshake is held.  Go silent: never read
                # again (its retransmissions just wait in our socket's buffer).
                states[index] = _FLIGHT_SEEN
                selector.unregister(sockets[index])
                waiting -= 1
        now = time.monotonic()
        for index, state in enumerate(states):
            if state != _FLIGHT_SEEN and now - sent_at[index] > RESEND_AFTER:
                with contextlib.suppress(OSError):
                    sockets[index].send(last_sent[index])
                sent_at[index] = now
    return {
        "clients": clients,
        "hello_verified": sum(1 for state in states if state >= _HELLO_SENT),
        "server_flight": sum(1 for state in states if state == _FLIGHT_SEEN),
    }
