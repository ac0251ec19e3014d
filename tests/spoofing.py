"""Sending UDP datagrams with someone else's source address, as an off-path attacker does.

DTLS runs over UDP, so anyone can send a datagram that claims to come from a peer's address and
port; nothing but the records' own authentication tells it apart.  Tests that want the attacker
on real sockets use :func:`send_spoofed`: a raw IPv4 socket (``IPPROTO_RAW``) on which we write
the whole IPv4 and UDP headers ourselves, source included.  That needs root (CAP_NET_RAW), which
CI has; elsewhere :data:`SPOOFING_MISSING` says why the test skips.  IPv4 only: an IPv6 raw
socket does not let us write the IP header.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

__all__ = ["SPOOFING_MISSING", "needs_spoofing", "send_spoofed", "spoofed_packet"]


def _spoofing_missing() -> str | None:
    if not hasattr(socket, "IPPROTO_RAW") or os.name != "posix":
        return "raw IP sockets are not available on this platform"
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
    except PermissionError:
        return "spoofing a source address needs a raw socket: run as root (CI does)"
    except OSError as error:
        return f"no raw IP socket here: {error}"
    return None


#: Why spoofed datagrams cannot be sent here, or None if they can.
SPOOFING_MISSING = _spoofing_missing()
needs_spoofing = pytest.mark.skipif(SPOOFING_MISSING is not None, reason=SPOOFING_MISSING or "")


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def spoofed_packet(datagram: bytes, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The IPv4 packet carrying ``datagram`` in UDP from ``source`` to ``destination``."""
    source_ip, destination_ip = socket.inet_aton(source[0]), socket.inet_aton(destination[0])
    udp_length = 8 + len(datagram)
    udp = struct.pack("!HHHH", source[1], destination[1], udp_length, 0) + datagram
    pseudo_header = (
        source_ip + destination_ip + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    )
    # A real checksum (0 would mean "none" on IPv4), so the packet is one a stack must accept.
    udp_checksum = _checksum(pseudo_header + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_checksum) + udp[8:]
    ip_header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, header of 5 words
        0,
        20 + udp_length,
        0,  # identification
        0,  # no fragmentation
        64,  # TTL
        socket.IPPROTO_UDP,
        0,  # the kernel fills in the header checksum for IPPROTO_RAW
        source_ip,
        destination_ip,
    )
    return ip_header + udp


def send_spoofed(datagram: bytes, source: tuple[str, int], destination: tuple[str, int]) -> None:
    """Send ``datagram`` over UDP to ``destination`` (IPv4) as if it came from ``source``."""
    packet = spoofed_packet(datagram, source, destination)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(packet, (destination[0], 0))
