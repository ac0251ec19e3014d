"""Giving the C heap back to the system once a wave of handshakes is over.

A handshake in flight holds one OpenSSL connection: about 80 KB of C memory in many blocks
(record buffers, handshake hashes, the flight kept for retransmission).  When the handshakes of
a wave end -- completed (an AEAD session then lets its connection go) or abandoned at the
deadline -- every block is freed at once (see ``HandshakeDriver.__init__``: nothing waits for the
cycle collector).  glibc's malloc keeps freed memory for reuse, though, and gives it back to
the system only from the top of the heap: with other blocks allocated above them the freed
megabytes stay in the process, and the RSS stays at the wave's peak.  Measured with
``benchmarks/churn_memory.py`` (waves of 300 abandoned handshakes): after each wave the heap
holds 7.0 MB in use, exactly as before the first wave, and 25 MB free; ``malloc_trim(0)`` brings
the RSS from 65-72 MB down to 47-49 MB (in 2-6 ms), and the next wave's peak is the same either
way (65 MB).

So when the last handshake in flight ends, after enough of them ended to be worth it, the
server asks glibc to return its free pages (``malloc_trim(0)``; a few milliseconds for tens of
MB), at most once per ``min_interval``.  Elsewhere (musl, macOS, Windows) there is no such
call and nothing happens; under steady churn, where handshakes never all end, the freed memory
is simply reused by the next ones, as it should be.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Callable

import trio

__all__ = ["HeapTrimmer", "malloc_trim"]


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the process's own C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


#: ``malloc_trim(pad)``: give free heap pages back to the system (None: not glibc).
malloc_trim = _find_malloc_trim()


class HeapTrimmer:
    """Decides when the freed memory of ended handshakes is given back; counts what it did.

    The server calls :meth:`handshake_ended` each time a handshake ends, with how many are
    still in flight; when it answers True the server runs :meth:`trim` -- once the ending
    task has finished, so that its own session is freed too.  A trim is due when no handshake
    is in flight any more, at least ``min_ended`` ended since the last trim (fewer free too
    little to matter) and ``min_interval`` seconds have passed since it (so a server whose
    handshakes keep ending one at a time never trims more than once per interval).
    """

    def __init__(
        self,
        trim: Callable[[int], int] | None = malloc_trim,
        *,
        min_ended: int = 64,
        min_interval: float = 1.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._trim = trim
        self.min_ended = min_ended
        self.min_interval = min_interval
        self._clock = clock
        self._ended = 0
        self._last = -math.inf
        self._pending = False
        #: Trims done, and the seconds the last one took.
        self.trims = 0
        self.last_duration = 0.0

    def handshake_ended(self, in_flight: int) -> bool:
        """Count one ended handshake; True when the caller should schedule :meth:`trim`."""
        self._ended += 1
        if self._trim is None or self._pending or in_flight > 0 or self._ended < self.min_ended:
            return False
        if self._clock() - self._last < self.min_interval:
            return False
        self._pending = True
        return True

    def trim(self) -> None:
        """Give the free heap pages back now."""
        self._pending = False
        self._ended = 0
        self._last = self._clock()
        if self._trim is None:
            return
        started = time.perf_counter()
        self._trim(0)
        self.last_duration = time.perf_counter() - started
        self.trims += 1
