"""Sending UDP datagrams with a forged source address, as an off-path attacker does.

:func:`send_spoofed` writes the IPv4 and UDP headers itself on a raw socket, so the datagram
arrives at ``destination`` claiming to come from ``source`` -- any address and port, such as an
established client's.  That needs root (``CAP_NET_RAW``); :data:`CAN_SPOOF` says whether this
process has it, and :data:`needs_raw_socket` skips a test where it does not (CI runs as root).
IPv4 only; loopback is all the tests use.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

__all__ = ["CAN_SPOOF", "SpoofingSocket", "needs_raw_socket", "send_spoofed", "udp_over_ipv4"]

Address = tuple[str, int]


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): the one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_over_ipv4(datagram: bytes, source: Address, destination: Address) -> bytes:
    """An IPv4 packet carrying ``datagram`` in UDP from ``source`` to ``destination``."""
    source_ip = socket.inet_aton(source[0])
    destination_ip = socket.inet_aton(destination[0])
    udp_length = 8 + len(datagram)
    pseudo_header = (
        source_ip + destination_ip + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    )
    header = struct.pack("!HHHH", source[1], destination[1], udp_length, 0)
    # A computed 0 is sent as 0xFFFF (RFC 768: 0 means "no checksum").
    udp_checksum = _checksum(pseudo_header + header + datagram) or 0xFFFF
    udp = struct.pack("!HHHH", source[1], destination[1], udp_length, udp_checksum) + datagram
    total_length = 20 + len(udp)
    ip_header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, header of 5 words
        0,
        total_length,
        0,  # identification: the kernel fills it in
        0x4000,  # don't fragment
        64,  # TTL
        socket.IPPROTO_UDP,
        0,  # header checksum: computed below (the kernel would too)
        source_ip,
        destination_ip,
    )
    ip_header = ip_header[:10] + struct.pack("!H", _checksum(ip_header)) + ip_header[12:]
    return ip_header + udp


class SpoofingSocket:
    """A raw IPv4 socket that sends UDP datagrams from any source address; needs root."""

    def __init__(self) -> None:
        # IPPROTO_RAW implies IP_HDRINCL: we write the whole IP header.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, datagram: bytes, source: Address, destination: Address) -> None:
        self._socket.sendto(udp_over_ipv4(datagram, source, destination), (destination[0], 0))

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> SpoofingSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def send_spoofed(datagram: bytes, source: Address, destination: Address) -> None:
    """Send one UDP datagram to ``destination`` that claims to come from ``source``."""
    with SpoofingSocket() as raw:
        raw.send(datagram, source, destination)


def _can_spoof() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    try:
        SpoofingSocket().close()
    except OSError:
        return False
    return True


#: True where this process may open a raw socket (root, or CAP_NET_RAW).
CAN_SPOOF = _can_spoof()

#: Marks a test that sends spoofed datagrams: skipped, with the reason, where that is not allowed.
needs_raw_socket = pytest.mark.skipif(
    not CAN_SPOOF, reason="spoofing a source address needs a raw socket (run as root)"
)
