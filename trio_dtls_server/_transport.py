"""Datagram transports: what the server and client read from and write to.

The server and client never touch a socket API directly; they use a :class:`DatagramTransport`.
:class:`UDPTransport` is the real one (a non-blocking UDP socket driven with Trio's
``wait_readable``/``wait_writable``).  Tests plug in an in-memory network instead, so loss,
duplication, reordering and delay run deterministically under Trio's ``MockClock``.

Why not ``trio.socket``?  Its ``recvfrom`` and ``sendto`` each pass through a checkpoint, and two
tasks waiting to send on one socket at the same time raise ``BusyResourceError``.  The reader
drains every datagram that is ready with plain non-blocking calls and only then waits, and a
send that finds the socket buffer full is the only one that waits (under a lock).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdlib_socket
from typing import Any, Protocol

import trio

__all__ = ["Address", "DatagramTransport", "UDPTransport", "bind_udp"]

Address = tuple[str, int]


class DatagramTransport(Protocol):
    """A bound datagram endpoint, used from one Trio run."""

    @property
    def local_address(self) -> Address: ...

    @property
    def is_ipv6(self) -> bool: ...

    def receive_nowait(self, max_size: int) -> tuple[bytes, Address] | None:
        """One datagram that is already here (at most ``max_size`` bytes), or None.

        A datagram longer than ``max_size`` is returned truncated to ``max_size`` bytes, so a
        caller that asks for one byte more than it accepts can tell it was oversized.
        """
        ...

    async def wait_readable(self) -> None:
        """Return when :meth:`receive_nowait` may have something (always a checkpoint)."""
        ...

    def send_nowait(self, datagram: bytes, address: Address) -> bool:
        """Send now if possible; False means "buffer full, wait and retry"."""
        ...

    async def wait_writable(self) -> None: ...

    def close(self) -> None: ...


def _normalise(address: Any) -> Address:
    # IPv6 addresses come as (host, port, flowinfo, scope_id); the host text already carries
    # any %scope, so (host, port) identifies the peer.
    return (address[0], address[1])


class UDPTransport:
    """A real, non-blocking UDP socket."""

    def __init__(self, sock: stdlib_socket.socket) -> None:
        sock.setblocking(False)
        self._socket = sock
        self._local_address = _normalise(sock.getsockname())
        self._is_ipv6 = sock.family == stdlib_socket.AF_INET6
        #: Socket errors seen on reads (ICMP unreachable reports about earlier sends, ...).
        self.read_errors = 0
        #: Sends the kernel refused for a reason other than a full buffer.
        self.send_errors = 0

    @property
    def local_address(self) -> Address:
        return self._local_address

    @property
    def is_ipv6(self) -> bool:
        return self._is_ipv6

    def receive_nowait(self, max_size: int) -> tuple[bytes, Address] | None:
        while True:
            try:
                datagram, address = self._socket.recvfrom(max_size)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                # Linux reports an earlier send's ICMP error ("port unreachable") on the next
                # call; it concerns no datagram waiting here, so note it and read on.
                self.read_errors += 1
                continue
            return datagram, _normalise(address)

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._socket)

    def send_nowait(self, datagram: bytes, address: Address) -> bool:
        try:
            self._socket.sendto(datagram, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            # An ICMP error about an earlier datagram, or an unroutable peer: UDP promised
            # nothing, and retrying would not help.
            self.send_errors += 1
        return True

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self._socket)

    def close(self) -> None:
        self._socket.close()


async def bind_udp(host: str, port: int, *, buffer_size: int = 4 << 20) -> UDPTransport:
    """Bind a UDP socket on ``host``:``port`` (IPv4 or IPv6; port 0 picks a free one).

    Raises :class:`OSError` whose message names the address and the OS reason.
    """
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=stdlib_socket.SOCK_DGRAM, flags=stdlib_socket.AI_PASSIVE
        )
    except OSError as error:
        raise OSError(
            error.errno or errno.EINVAL, f"cannot bind UDP {host}:{port}: {error.strerror or error}"
        ) from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = stdlib_socket.socket(family, type_, proto)
    try:
        for option in (stdlib_socket.SO_RCVBUF, stdlib_socket.SO_SNDBUF):
            # The kernel caps these; a smaller buffer only means earlier drops.
            with contextlib.suppress(OSError):
                sock.setsockopt(stdlib_socket.SOL_SOCKET, option, buffer_size)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        reason = error.strerror or os.strerror(error.errno or errno.EINVAL)
        raise OSError(
            error.errno or errno.EINVAL, f"cannot bind UDP {host}:{port}: {reason}"
        ) from None
    return UDPTransport(sock)
