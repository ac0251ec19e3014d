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
import sys
from pathlib import Path
from typing import Any, Protocol

import trio

__all__ = [
    "Address",
    "DatagramTransport",
    "ReplySource",
    "UDPTransport",
    "bind_reuseport_group",
    "bind_udp",
    "receive_buffer_cap",
    "reuseport_balances",
]

Address = tuple[str, int]

#: Where a reply must come from: one ``sendmsg`` ancillary item ``(level, type, data)``, as
#: :meth:`DatagramTransport.reply_source` returns it.  Opaque to everyone but the transport.
ReplySource = tuple[int, int, bytes]


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

    def reply_source(self) -> ReplySource | None:
        """How to answer the datagram :meth:`receive_nowait` returned last from the address it
        was sent to, as ``source`` for :meth:`send_nowait`; None when nothing is needed."""
        ...

    async def wait_readable(self) -> None:
        """Return when :meth:`receive_nowait` may have something (always a checkpoint)."""
        ...

    def send_nowait(
        self, datagram: bytes, address: Address, source: ReplySource | None = None
    ) -> bool:
        """Send now if possible; False means "buffer full, wait and retry"."""
        ...

    async def wait_writable(self) -> None: ...

    def close(self) -> None: ...


def _normalise(address: Any) -> Address:
    # IPv6 addresses come as (host, port, flowinfo, scope_id); the host text already carries
    # any %scope, so (host, port) identifies the peer.
    return (address[0], address[1])


class UDPTransport:
    """A real, non-blocking UDP socket.

    Bound to a wildcard address (``0.0.0.0`` or ``::``) on a host with several addresses, the
    kernel would pick each reply's source address by route, and a client that wrote to
    another of the host's addresses would see the reply come from a stranger (a connected
    client socket, like Qt's, drops it: the handshake never completes).  So on a wildcard
    socket the transport asks for each datagram's destination address (``IP_PKTINFO`` /
    ``IPV6_RECVPKTINFO``) and the server answers from it (:meth:`reply_source`).
    """

    def __init__(self, sock: stdlib_socket.socket) -> None:
        sock.setblocking(False)
        self._socket = sock
        self._local_address = _normalise(sock.getsockname())
        self._is_ipv6 = sock.family == stdlib_socket.AF_INET6
        self._last_source: ReplySource | None = None
        self._packet_info = self._local_address[0] in ("0.0.0.0", "::") and _enable_packet_info(
            sock
        )
        #: Socket errors seen on reads (ICMP unreachable reports about earlier sends, ...).
        self.read_errors = 0
        #: Sends the kernel refused for a reason other than a full buffer.
        self.send_errors = 0

    @property
    def local_address(self) -> Address:
        return self._local_address

    @property
    def receive_buffer(self) -> int:
        """The receive buffer the kernel granted, as it reports it (Linux reports twice the
        size asked for, the other half being its own bookkeeping allowance)."""
        return self._socket.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF)

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped for this socket (a full receive buffer), or None where
        the platform does not tell (see :func:`_kernel_drops`)."""
        if self._socket.fileno() < 0:
            return None
        return _kernel_drops(os.fstat(self._socket.fileno()).st_ino, self._is_ipv6)

    @property
    def is_ipv6(self) -> bool:
        return self._is_ipv6

    def receive_nowait(self, max_size: int) -> tuple[bytes, Address] | None:
        while True:
            try:
                if self._packet_info:
                    datagram, ancillary, _, address = self._socket.recvmsg(max_size, 64)
                    self._last_source = _reply_source(ancillary)
                else:
                    datagram, address = self._socket.recvfrom(max_size)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                # Linux reports an earlier send's ICMP error ("port unreachable") on the next
                # call; it concerns no datagram waiting here, so note it and read on.
                self.read_errors += 1
                continue
            return datagram, _normalise(address)

    def reply_source(self) -> ReplySource | None:
        return self._last_source

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self._socket)

    def send_nowait(
        self, datagram: bytes, address: Address, source: ReplySource | None = None
    ) -> bool:
        try:
            if source is None:
                self._socket.sendto(datagram, address)
            else:
                self._socket.sendmsg([datagram], [source], 0, address)
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


# Python 3.11's socket module lacks the constant on Linux; 8 is Linux's value (<linux/in.h>).
# Elsewhere, without the constant, IPv4 replies keep the kernel's choice of source.
_IP_PKTINFO: int | None = getattr(
    stdlib_socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None
)


def _enable_packet_info(sock: stdlib_socket.socket) -> bool:
    """Ask the kernel for each datagram's destination address; False where it cannot."""
    try:
        if sock.family == stdlib_socket.AF_INET6:
            sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_RECVPKTINFO, 1)
        elif _IP_PKTINFO is not None:
            sock.setsockopt(stdlib_socket.IPPROTO_IP, _IP_PKTINFO, 1)
        else:
            return False
    except (OSError, AttributeError):  # not Linux-like: replies keep the kernel's choice
        return False
    return True


def _reply_source(ancillary: list[tuple[int, int, bytes]]) -> ReplySource | None:
    """The ``sendmsg`` item that makes a reply leave from where the datagram arrived."""
    for level, kind, data in ancillary:
        if level == stdlib_socket.IPPROTO_IP and kind == _IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo {ifindex; spec_dst; addr}: send from addr, any interface.
            return (level, kind, bytes(4) + data[8:12] + bytes(4))
        if (
            level == stdlib_socket.IPPROTO_IPV6
            and kind == stdlib_socket.IPV6_PKTINFO
            and len(data) >= 20
        ):
            # struct in6_pktinfo {addr; ifindex}: keep the interface (link-local addresses).
            return (level, kind, data[:20])
    return None


async def _resolve_udp(host: str, port: int) -> tuple[int, int, int, tuple[Any, ...]]:
    """The family, type, protocol and address to bind ``host``:``port`` with (the first
    ``getaddrinfo`` answer); raises :class:`OSError` naming the address if it has none."""
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=stdlib_socket.SOCK_DGRAM, flags=stdlib_socket.AI_PASSIVE
        )
    except OSError as error:
        raise OSError(
            error.errno or errno.EINVAL, f"cannot bind UDP {host}:{port}: {error.strerror or error}"
        ) from None
    family, type_, proto, _, sockaddr = infos[0]
    return family, type_, proto, sockaddr


def _set_buffer_sizes(
    sock: stdlib_socket.socket, buffer_size: int, receive_buffer: int | None
) -> None:
    """Ask for the socket buffers (``receive_buffer``, when given, for the receive side).

    The kernel caps these; a smaller buffer only means earlier drops, so a refusal is ignored.
    """
    sizes = {
        stdlib_socket.SO_RCVBUF: buffer_size if receive_buffer is None else receive_buffer,
        stdlib_socket.SO_SNDBUF: buffer_size,
    }
    for option, size in sizes.items():
        with contextlib.suppress(OSError):
            sock.setsockopt(stdlib_socket.SOL_SOCKET, option, size)


def _bind_error(host: str, port: int, error: OSError) -> OSError:
    """``error`` from binding ``host``:``port``, reworded to name the address."""
    reason = error.strerror or os.strerror(error.errno or errno.EINVAL)
    return OSError(error.errno or errno.EINVAL, f"cannot bind UDP {host}:{port}: {reason}")


async def bind_udp(
    host: str, port: int, *, buffer_size: int = 4 << 20, receive_buffer: int | None = None
) -> UDPTransport:
    """Bind a UDP socket on ``host``:``port`` (IPv4 or IPv6; port 0 picks a free one).

    ``buffer_size`` is asked for both socket buffers, ``receive_buffer`` (when given) for the
    receive side instead; the kernel caps both (``net.core.rmem_max``/``wmem_max`` on Linux),
    and :attr:`UDPTransport.receive_buffer` says what it granted.  Raises :class:`OSError`
    whose message names the address and the OS reason.
    """
    family, type_, proto, sockaddr = await _resolve_udp(host, port)
    sock = stdlib_socket.socket(family, type_, proto)
    try:
        _set_buffer_sizes(sock, buffer_size, receive_buffer)
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        raise _bind_error(host, port, error) from None
    return UDPTransport(sock)


def reuseport_balances() -> bool:
    """Whether the kernel spreads one port's datagrams over ``SO_REUSEPORT`` sockets.

    Linux (3.9 and later) hashes each datagram's addresses and ports to pick one socket of the
    group, so a client stays on one socket.  BSDs and macOS have the option but hand every
    datagram to the last socket bound; Windows has no such option.
    """
    return sys.platform.startswith("linux") and hasattr(stdlib_socket, "SO_REUSEPORT")


async def bind_reuseport_group(
    host: str,
    port: int,
    count: int,
    *,
    buffer_size: int = 4 << 20,
    receive_buffer: int | None = None,
) -> list[stdlib_socket.socket]:
    """``count`` UDP sockets bound to one ``host``:``port`` with ``SO_REUSEPORT`` (Linux).

    The kernel then hands each datagram to one socket of the group, chosen by a hash of the
    datagram's source and destination, so one client always reaches the same socket for as
    long as the group's membership does not change.

    Anyone on the machine running as the same user can join a group by binding the port with
    ``SO_REUSEPORT`` too, and would then take a share of the traffic.  So the port is first
    bound *without* the option: if something already holds it (another server, with or
    without ``SO_REUSEPORT``) this fails with "Address already in use", as a single server
    would; port 0 picks a free port this way.  That probe is closed and the group bound on
    its port right away.  Raises :class:`OSError` naming the address and the OS reason.
    """
    if count < 1:
        raise ValueError(f"a socket group needs at least one socket, not {count}")
    family, type_, proto, sockaddr = await _resolve_udp(host, port)
    sockets: list[stdlib_socket.socket] = []
    try:
        with stdlib_socket.socket(family, type_, proto) as probe:
            probe.bind(sockaddr)
            chosen = probe.getsockname()[1]
        address = (sockaddr[0], chosen, *sockaddr[2:])
        for _ in range(count):
            sock = stdlib_socket.socket(family, type_, proto)
            sockets.append(sock)
            if count > 1:
                # Before bind: the kernel admits a socket to the group only if every member,
                # this one included, had the option when it was bound.  One socket needs no
                # group (and works where the option does not exist).
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
            _set_buffer_sizes(sock, buffer_size, receive_buffer)
            sock.bind(address)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise _bind_error(host, port, error) from None
    return sockets


def receive_buffer_cap() -> int | None:
    """Linux's ``net.core.rmem_max``: the most a process without CAP_NET_ADMIN may ask for."""
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


def _kernel_drops(inode: int, ipv6: bool) -> int | None:
    """The ``drops`` column of our socket's line in ``/proc/net/udp`` (or ``udp6``).

    The kernel counts there every datagram it threw away for this socket — above all those
    that found the receive buffer full — before any code of ours could see them.  None where
    the file does not exist (not Linux) or the socket is not listed.
    """
    try:
        table = Path("/proc/net/udp6" if ipv6 else "/proc/net/udp").read_text(encoding="ascii")
    except OSError:
        return None
    wanted = str(inode)
    for line in table.splitlines()[1:]:
        fields = line.split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        if len(fields) >= 13 and fields[9] == wanted:
            try:
                return int(fields[12])
            except ValueError:
                return None
    return None
