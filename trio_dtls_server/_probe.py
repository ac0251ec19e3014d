"""A health check: one real handshake and one message, as a load balancer or Kubernetes asks.

``trio-dtls-server probe HOST PORT`` (and :func:`probe` for Trio programs) answers one
question — *would a device be served right now?* — the only way that question can be answered
for DTLS: by being a device.  It handshakes with the credentials it is given, sends one
message, waits for one reply and says goodbye with close_notify, all within one time budget.

Why not just check that the port is open?  UDP has no "open": a server whose process is alive
but whose peer table is full, whose PSK file lost the probe's key, or whose event loop is stuck
still has a bound socket.  Open-source nginx's stream module never marks a dead UDP backend
down by itself, so something outside has to ask — this is that something.

Every way a probe can fail maps to one :class:`ProbeFailure` and one line of text:

* ``refused``: the kernel answered "port unreachable" — nothing listens there;
* ``no_answer``: no handshake within the budget (server gone, stuck, or filtered);
* ``handshake_failed``: the server answered and refused (the fatal alert is named);
* ``no_reply``: the handshake worked but the message got no reply in time;
* ``closed``: the server ended the connection instead of replying;
* ``unexpected_reply``: a reply came, but without the text the probe was told to expect.
"""

from __future__ import annotations

import enum
import socket as stdlib_socket
from dataclasses import dataclass
from pathlib import PurePath

import trio

from ._client import DTLSClient, HandshakeError
from ._connection import ConnectionClosed
from ._events import ServerEvent
from ._transport import Address, UDPTransport

__all__ = ["ProbeFailure", "ProbeResult", "probe"]


class ProbeFailure(enum.Enum):
    """Why a probe found the server unhealthy (see the module docstring)."""

    REFUSED = "refused"
    NO_ANSWER = "no_answer"
    HANDSHAKE_FAILED = "handshake_failed"
    NO_REPLY = "no_reply"
    CLOSED = "closed"
    UNEXPECTED_REPLY = "unexpected_reply"


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found.  ``healthy`` is ``failure is None``; ``line`` says it in one line."""

    server: Address
    failure: ProbeFailure | None
    #: Why, in words (empty when healthy).
    reason: str = ""
    #: Seconds from the first ClientHello to the finished handshake (None if it never finished).
    handshake_seconds: float | None = None
    #: Seconds from sending the message to its reply (None without a reply).
    reply_seconds: float | None = None
    cipher: str | None = None

    @property
    def healthy(self) -> bool:
        return self.failure is None

    @property
    def line(self) -> str:
        """``healthy: ...`` or ``unhealthy (kind): ...``, always one line."""
        where = _address_text(self.server)
        if self.failure is None:
            assert self.handshake_seconds is not None and self.reply_seconds is not None
            return (
                f"healthy: {where} handshake {self.handshake_seconds * 1000:.1f} ms "
                f"({self.cipher}), reply {self.reply_seconds * 1000:.1f} ms"
            )
        return " ".join(f"unhealthy ({self.failure.value}): {where} {self.reason}".split())


class _ProbeTransport(UDPTransport):
    """A *connected* UDP socket, so that the kernel's "port unreachable" reaches us.

    An unconnected socket (what :class:`DTLSClient` normally uses) never hears of ICMP errors
    on Linux; a connected one gets ``ECONNREFUSED`` on its next read, and a probe of a port
    with nothing behind it then fails at once instead of after the whole budget.
    """

    def __init__(self, sock: stdlib_socket.socket, server: Address) -> None:
        sock.connect(server)
        super().__init__(sock)
        self._server = server

    def receive_nowait(self, max_size: int) -> tuple[bytes, Address] | None:
        try:
            datagram = self._socket.recv(max_size)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionRefusedError:
            raise  # out through the client, to probe(): nothing listens there
        except OSError:
            self.read_errors += 1
            return None
        return datagram, self._server


def _address_text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ignore_event(event: ServerEvent) -> None:
    """A probe prints one line at the end, not the handshake's progress."""


async def probe(
    host: str,
    port: int,
    *,
    identity: str | bytes | None = None,
    key: bytes | None = None,
    message: bytes = b"probe",
    expect: bytes | None = None,
    timeout: float = 5.0,
    ciphers: str = "default",
    ca: str | PurePath | None = None,
    server_hostname: str | None = None,
    certificate: str | PurePath | None = None,
    private_key: str | PurePath | None = None,
) -> ProbeResult:
    """Handshake with ``host``:``port``, send ``message``, wait for one reply; never raises for
    an unhealthy server, and always returns within ``timeout`` seconds (plus name resolution).

    Credentials are :meth:`DTLSClient.connect_over`'s: ``identity`` and ``key`` for a PSK
    server, ``ca`` (and optionally ``certificate``/``private_key``) for a certificate server.
    ``expect``, when given, must appear in the reply (``b"ACK"`` for Qt's handler).  A bad
    argument (an identity without a key, an unreadable CA file) raises as it would for the
    client; a name that does not resolve raises :class:`OSError`.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_DGRAM)
    family, type_, proto, _, sockaddr = infos[0]
    server: Address = (str(sockaddr[0]), int(sockaddr[1]))
    sock = stdlib_socket.socket(family, type_, proto)
    try:
        transport = _ProbeTransport(sock, server)
    except OSError:
        sock.close()
        raise
    started = trio.current_time()
    handshake_done: float | None = None
    with trio.move_on_after(timeout):
        try:
            client = await DTLSClient.connect_over(
                transport,
                server,
                identity=identity,
                key=key,
                ciphers=ciphers,
                ca=ca,
                server_hostname=server_hostname if server_hostname is not None else host,
                certificate=certificate,
                private_key=private_key,
                # Longer than the budget: our own deadline is the one that fires, so a
                # HandshakeError always means the server answered and refused.
                handshake_timeout=timeout + 1,
                on_event=_ignore_event,
                display_name="probe",
            )
        except ConnectionRefusedError:
            why = "nothing listens there (port unreachable)"
            return ProbeResult(server, ProbeFailure.REFUSED, why)
        except HandshakeError as error:
            why = f"the server sent {error.alert}" if error.alert else str(error)
            return ProbeResult(server, ProbeFailure.HANDSHAKE_FAILED, f"handshake failed: {why}")
        handshake_done = trio.current_time()
        async with client:  # close_notify on the way out, whatever happens
            try:
                await client.send(message)
                reply = await client.receive()
            except ConnectionRefusedError:
                return ProbeResult(
                    server, ProbeFailure.REFUSED, "refused after the handshake: the server went"
                )
            except ConnectionClosed as closed:
                return ProbeResult(
                    server,
                    ProbeFailure.CLOSED,
                    f"closed the connection instead of replying: {closed.reason}",
                    handshake_done - started,
                    cipher=client.cipher,
                )
            replied = trio.current_time()
        if expect is not None and expect not in reply:
            return ProbeResult(
                server,
                ProbeFailure.UNEXPECTED_REPLY,
                f"replied {reply[:60]!r}, without {expect!r}",
                handshake_done - started,
                replied - handshake_done,
                client.cipher,
            )
        return ProbeResult(
            server,
            None,
            handshake_seconds=handshake_done - started,
            reply_seconds=replied - handshake_done,
            cipher=client.cipher,
        )
    # The budget ran out (connect_over closed the transport if it was still handshaking).
    transport.close()
    if handshake_done is None:
        return ProbeResult(server, ProbeFailure.NO_ANSWER, f"no handshake within {timeout:g} s")
    return ProbeResult(
        server,
        ProbeFailure.NO_REPLY,
        f"no reply to the probe message within {timeout:g} s",
        handshake_done - started,
    )
