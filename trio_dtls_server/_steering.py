"""Steering by Connection ID (RFC 9146) across the workers of a group (``--workers N``).

With ``SO_REUSEPORT`` the kernel picks each datagram's socket by a hash of its addresses and
ports.  A client that changes address (a NAT rebinding) is hashed afresh and usually reaches
another worker, which does not know its association: the Connection ID was negotiated for
exactly this case and would be wasted.  So every worker puts its **index** in the first byte of
the CIDs it issues (:func:`worker_connection_id_prefix`), and the supervisor attaches a classic
BPF program to the group (``SO_ATTACH_REUSEPORT_CBPF``) that reads that byte back:

* a datagram whose first byte is ``tls12_cid`` (25) and that is long enough to hold the whole
  CID (11 header bytes before it, :data:`CID_OFFSET`) goes to the socket whose index is the
  CID's first byte, if there is such a worker;
* every other datagram -- ClientHellos, handshake records, short or foreign ones, CIDs naming
  no worker -- goes where it went before: the program returns :data:`HASH_FALLBACK`, an index
  no group can have, and Linux then falls back to its hash (``reuseport_select_sock`` in
  ``net/core/sock_reuseport.c``: "no bpf or invalid bpf result: fall back to hash usage").

nginx's ``quic_bpf`` does the same for QUIC with an eBPF program; a classic one is enough here,
needs no privilege and no map (the index *is* the socket's place in the group).

Facts the design rests on (checked in the kernel's sources and by ``tests/test_steering.py``):

* For UDP the program sees the **payload**: the kernel pulls the 8-byte UDP header before it
  runs the program (``hdr_len = sizeof(struct udphdr)``), so offset 0 is the record's content
  type and ``BPF_LEN`` is the payload's length.
* A load past the end of the packet aborts a classic program with the return value 0: every
  such datagram would go to socket 0.  The program therefore checks the length first.
* A socket's index is its place in the group: the order the sockets were bound.  When a socket
  of the group closes, the **last** socket takes its place (the array is compacted by a swap),
  so indices move.  The supervisor keeps every socket open for its whole life and restarts a
  worker on the same socket, so worker K's socket keeps index K - 1.
* Attaching needs no privilege (classic BPF, unlike ``SO_ATTACH_REUSEPORT_EBPF``) and may be
  done on any socket of the group, once it is bound: the program belongs to the group.

Limits, decided here:

* One byte names at most :data:`MAX_STEERED_WORKERS` (255) workers: indices 0-254.  Workers
  beyond get the prefix :data:`UNSTEERED_PREFIX` (255), which the program sends to the hash as
  it does any index it does not steer -- without a reserved value their random first bytes
  would pull their own, unmoved clients to other workers.  Their clients that change address
  handshake again, as without CIDs.
* The prefix costs the CID one random byte.  CIDs shorter than
  :data:`MIN_STEERED_CONNECTION_ID_LENGTH` (4) bytes keep all their bytes random (a worker
  holds up to ``max_peers`` associations, 20,000 by default, and every CID must be unique), and
  the group is not steered.
"""

from __future__ import annotations

import ctypes
import socket as stdlib_socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CID_OFFSET",
    "HASH_FALLBACK",
    "MAX_STEERED_WORKERS",
    "MIN_STEERED_CONNECTION_ID_LENGTH",
    "SO_ATTACH_REUSEPORT_CBPF",
    "TLS12_CID",
    "UNSTEERED_PREFIX",
    "Instruction",
    "SteeringPlan",
    "SteeringUnsupportedError",
    "attach_program",
    "build_program",
    "pack_program",
    "plan_steering",
    "worker_connection_id_prefix",
]

#: The record content type of RFC 9146 records (``tls12_cid``).
TLS12_CID = 25
#: Where the CID starts in a ``tls12_cid`` record: type(1) version(2) epoch(2) sequence(6).
CID_OFFSET = 11
#: Workers a one-byte index can steer to: indices 0-254 (255 is :data:`UNSTEERED_PREFIX`).
MAX_STEERED_WORKERS = 255
#: The prefix byte of workers the program does not steer to (index 255 and beyond).
UNSTEERED_PREFIX = 255
#: Shorter CIDs are all random, and the group is not steered (see the module's docstring).
MIN_STEERED_CONNECTION_ID_LENGTH = 4
#: What the program returns for "not mine, use the kernel's hash": more than a group's 65,535
#: sockets, so never a valid index whatever joins the group.
HASH_FALLBACK = 0xFFFF_FFFF
#: ``setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, struct sock_fprog)``: Linux 4.5 and later.
SO_ATTACH_REUSEPORT_CBPF: int = getattr(stdlib_socket, "SO_ATTACH_REUSEPORT_CBPF", 51)

# Classic BPF opcodes (<linux/filter.h>, <linux/bpf_common.h>): class | size | mode | op | src.
_BPF_LD, _BPF_JMP, _BPF_RET = 0x00, 0x05, 0x06
_BPF_W, _BPF_B = 0x00, 0x10
_BPF_ABS, _BPF_LEN = 0x20, 0x80
_BPF_JEQ, _BPF_JGE = 0x10, 0x30
_BPF_K, _BPF_A = 0x00, 0x10

#: ``A = length of the payload``.
LD_LEN = _BPF_LD | _BPF_W | _BPF_LEN
#: ``A = payload[k]`` (one byte; aborts the program with 0 past the end).
LD_BYTE = _BPF_LD | _BPF_B | _BPF_ABS
#: ``if A == k goto +jt else goto +jf``.
JEQ = _BPF_JMP | _BPF_JEQ | _BPF_K
#: ``if A >= k goto +jt else goto +jf`` (unsigned).
JGE = _BPF_JMP | _BPF_JGE | _BPF_K
#: ``return k``.
RET_K = _BPF_RET | _BPF_K
#: ``return A``.
RET_A = _BPF_RET | _BPF_A


class SteeringUnsupportedError(OSError):
    """This platform cannot attach a reuseport BPF program (Linux only)."""


class Instruction(NamedTuple):
    """One ``struct sock_filter``: jumps are relative to the next instruction."""

    code: int
    jt: int
    jf: int
    k: int


def build_program(workers: int, connection_id_length: int) -> tuple[Instruction, ...]:
    """The steering program for a group of ``workers`` sockets and CIDs of that length.

    ::

        0  ld   len                 A = payload length
        1  jge  #11+L, 2, 6         too short to hold the CID: hash
        2  ldb  [0]                 A = content type
        3  jeq  #25, 4, 6           not tls12_cid: hash
        4  ldb  [11]                A = the CID's first byte: the worker's index
        5  jge  #S, 6, 7            no worker steered there (S = min(workers, 255)): hash
        6  ret  #0xffffffff         HASH_FALLBACK: the kernel's usual hash
        7  ret  a                   the socket with that index

    The length check comes first: a load past the end would end the program with 0 (socket 0).
    """
    if workers < 1:
        raise ValueError(f"a group has at least one worker, not {workers}")
    if not 1 <= connection_id_length <= 255:
        raise ValueError(f"a CID has 1 to 255 bytes, not {connection_id_length}")
    steered = min(workers, MAX_STEERED_WORKERS)
    return (
        Instruction(LD_LEN, 0, 0, 0),
        Instruction(JGE, 0, 4, CID_OFFSET + connection_id_length),
        Instruction(LD_BYTE, 0, 0, 0),
        Instruction(JEQ, 0, 2, TLS12_CID),
        Instruction(LD_BYTE, 0, 0, CID_OFFSET),
        Instruction(JGE, 0, 1, steered),
        Instruction(RET_K, 0, 0, HASH_FALLBACK),
        Instruction(RET_A, 0, 0, 0),
    )


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [
        ("len", ctypes.c_ushort),
        ("filter", ctypes.POINTER(_SockFilter)),
    ]


def pack_program(program: Sequence[Instruction]) -> bytes:
    """The instructions as the kernel's ``struct sock_filter`` array (native byte order)."""
    return b"".join(bytes(_SockFilter(*instruction)) for instruction in program)


def attach_program(sock: stdlib_socket.socket, program: Sequence[Instruction]) -> None:
    """Attach ``program`` to the ``SO_REUSEPORT`` group ``sock`` (bound) belongs to.

    The group has one program: attaching again replaces it.  Raises
    :class:`SteeringUnsupportedError` off Linux, :class:`OSError` when the kernel refuses
    (EINVAL: not bound with ``SO_REUSEPORT``, or a kernel before 4.5; ENOMEM: over
    ``net.core.optmem_max``).
    """
    if not sys.platform.startswith("linux"):
        raise SteeringUnsupportedError(
            f"steering by connection id needs Linux's SO_ATTACH_REUSEPORT_CBPF, not {sys.platform}"
        )
    filters = (_SockFilter * len(program))(*(_SockFilter(*i) for i in program))
    fprog = _SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    # The kernel copies the struct and then the array it points to, during the call: `filters`
    # is alive until the call returns.
    sock.setsockopt(stdlib_socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def worker_connection_id_prefix(index: int) -> bytes:
    """The first CID byte of worker ``index`` (0-based: its socket's place in the group).

    Workers past :data:`MAX_STEERED_WORKERS` share :data:`UNSTEERED_PREFIX`, which the program
    never steers (see the module's docstring).
    """
    if index < 0:
        raise ValueError(f"a worker index is not negative: {index}")
    return bytes([index if index < MAX_STEERED_WORKERS else UNSTEERED_PREFIX])


@dataclass(frozen=True, slots=True)
class SteeringPlan:
    """Whether a group steers by CID, and what each worker puts first in its CIDs.

    ``enabled`` False: no program, every worker's prefix is empty (all CID bytes random).
    ``warning`` says, for the operator, why a group that uses CIDs is not (fully) steered.
    """

    workers: int
    connection_id_length: int
    enabled: bool
    warning: str | None = None

    def prefix(self, index: int) -> bytes:
        """Worker ``index``'s CID prefix (0-based index); ``b""`` when not steering."""
        return worker_connection_id_prefix(index) if self.enabled else b""

    def program(self) -> tuple[Instruction, ...]:
        """The program to attach (only when ``enabled``)."""
        return build_program(self.workers, self.connection_id_length)

    def disabled(self, warning: str) -> SteeringPlan:
        """The same group, not steered (the program could not be attached)."""
        return SteeringPlan(self.workers, self.connection_id_length, False, warning)


def plan_steering(workers: int, connection_id_length: int) -> SteeringPlan:
    """Decide for a group of ``workers`` whose servers issue CIDs of that length (0: none).

    Nothing to steer with one worker or without CIDs.  CIDs too short for a prefix: not
    steered, with a warning.  More than 255 workers: steered up to the 255th, with a warning.
    """
    if workers <= 1 or connection_id_length <= 0:
        return SteeringPlan(workers, connection_id_length, False)
    if connection_id_length < MIN_STEERED_CONNECTION_ID_LENGTH:
        return SteeringPlan(
            workers,
            connection_id_length,
            False,
            f"connection ids of {connection_id_length} byte(s) are too short to name the "
            f"worker (at least {MIN_STEERED_CONNECTION_ID_LENGTH} needed): a client that "
            "changes address may reach another worker and must handshake again",
        )
    warning = None
    if workers > MAX_STEERED_WORKERS:
        warning = (
            f"a connection id names at most {MAX_STEERED_WORKERS} workers: clients of workers "
            f"{MAX_STEERED_WORKERS + 1}-{workers} that change address must handshake again"
        )
    return SteeringPlan(workers, connection_id_length, True, warning)
