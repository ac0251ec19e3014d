"""Where pre-shared keys come from.

A *PSK store* answers one question: "which key belongs to this identity?" — a ``bytes`` key, or
``None`` for an identity it does not know (the handshake then fails with the
``unknown_psk_identity`` alert and a logged reason).  Identities arrive from the network as raw
bytes; stores built from text compare them as UTF-8.

Built in:

* :class:`SingleKeyStore` — one key for every identity (what Qt's example does);
* :class:`MappingStore` — an identity → key mapping;
* :class:`PskFileStore` — ``identity,hexkey`` lines from a file, re-read by
  :meth:`PskFileStore.reload` (for example on SIGHUP, see :func:`reload_on_signal`);
* :func:`load_psk_file` — the same file format, read once into a :class:`MappingStore`;
* :class:`AsyncFunctionStore` — wraps ``async def lookup(identity)`` for keys that live in a
  database or behind a remote service.

Synchronous stores (:class:`PskStore`) are asked from inside OpenSSL's PSK callback, so their
``lookup`` must answer at once.  Asynchronous stores (:class:`AsyncPskStore`) may take their
time: the server reads the identity from the client's plaintext ClientKeyExchange, awaits the
lookup in that peer's own task (other peers keep flowing), and only then hands the flight to
OpenSSL, whose callback finds the key already there.

Keys are read only during handshakes, so replacing a store's keys never disturbs established
peers.  A store may expose an integer ``generation`` that changes whenever its keys change (as
:class:`PskFileStore` does): the server then refuses to *resume* sessions made under an older
generation, so a changed or revoked key also ends abbreviated handshakes.
"""

from __future__ import annotations

import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path, PurePath
from typing import Protocol, TypeAlias, runtime_checkable

import trio

from ._errors import DTLSError

__all__ = [
    "MAX_PSK_LENGTH",
    "AnyPskStore",
    "AsyncFunctionStore",
    "AsyncPskStore",
    "MappingStore",
    "PskFileError",
    "PskFileStore",
    "PskSource",
    "PskStore",
    "SingleKeyStore",
    "as_psk_store",
    "is_async_store",
    "load_psk_file",
    "parse_psk_file",
    "parse_psk_hex",
    "reload_on_signal",
    "store_generation",
]

logger = logging.getLogger("trio_dtls_server")

#: OpenSSL accepts keys of at most 512 bytes (PSK_MAX_PSK_LEN).
MAX_PSK_LENGTH = 512


@runtime_checkable
class PskStore(Protocol):
    """Anything with ``lookup(identity) -> key or None``; it must be quick and must not block.

    Raising fails that one handshake as a failed lookup (``handshakes_failed["PSK lookup
    failed"]``, the reason names the exception; ``unknown_psk_identity`` alert on a full
    handshake, close_notify on a resumed one); it never stops the server.
    """

    def lookup(self, identity: bytes) -> bytes | None: ...


@runtime_checkable
class AsyncPskStore(Protocol):
    """Anything with ``async def lookup(identity) -> key or None``.

    The server awaits it (bounded by ``ServerConfig.psk_lookup_timeout``) in the handshaking
    peer's own task.  Raising, or not answering in time, fails that one handshake with the
    ``unknown_psk_identity`` alert and a logged reason; it never stops the server.
    """

    async def lookup(self, identity: bytes) -> bytes | None: ...


#: A store of either kind.
AnyPskStore: TypeAlias = PskStore | AsyncPskStore


def _check_key(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"{what}: a PSK must be bytes, not {type(key).__name__}")
    if not 1 <= len(key) <= MAX_PSK_LENGTH:
        raise ValueError(f"{what}: a PSK must be 1 to {MAX_PSK_LENGTH} bytes, not {len(key)}")
    return bytes(key)


def _identity_bytes(identity: str | bytes) -> bytes:
    return identity.encode("utf-8") if isinstance(identity, str) else bytes(identity)


class SingleKeyStore:
    """Every identity gets the same key (Qt's example behaviour)."""

    def __init__(self, key: bytes) -> None:
        self._key = _check_key(key, "single key")

    def lookup(self, identity: bytes) -> bytes | None:
        return self._key


class MappingStore:
    """Keys by identity; identities given as ``str`` are matched as their UTF-8 bytes."""

    def __init__(self, keys: Mapping[str, bytes] | Mapping[bytes, bytes]) -> None:
        self._keys: dict[bytes, bytes] = {
            _identity_bytes(name): _check_key(key, f"identity {name!r}")
            for name, key in keys.items()
        }

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, identity: bytes) -> bytes | None:
        return self._keys.get(identity)


class AsyncFunctionStore:
    """An :class:`AsyncPskStore` made of one ``async def lookup(identity) -> key or None``.

    >>> async def from_database(identity: bytes) -> bytes | None:   # doctest: +SKIP
    ...     row = await db.fetch_one("SELECT key FROM devices WHERE id = $1", identity)
    ...     return None if row is None else row.key
    >>> server = DTLSServer(psk=AsyncFunctionStore(from_database))   # doctest: +SKIP

    A returned key is checked like any other (1 to 512 bytes); a bad one counts as a failed
    lookup.
    """

    def __init__(self, lookup: Callable[[bytes], Awaitable[bytes | None]]) -> None:
        if not callable(lookup):
            raise TypeError("AsyncFunctionStore needs an async function")
        self._lookup = lookup

    async def lookup(self, identity: bytes) -> bytes | None:
        key = await self._lookup(identity)
        return None if key is None else _check_key(key, f"key for {identity!r}")


PskSource: TypeAlias = (
    PskStore
    | AsyncPskStore
    | bytes
    | Mapping[str, bytes]
    | Mapping[bytes, bytes]
    | PurePath
    | Callable[[bytes], Awaitable[bytes | None]]
)


def is_async_store(store: object) -> bool:
    """True if ``store.lookup`` is an ``async def`` (the server must await it)."""
    lookup = getattr(store, "lookup", None)
    return lookup is not None and inspect.iscoroutinefunction(lookup)


def store_generation(store: object) -> int | None:
    """The store's ``generation`` counter, if it keeps one (see the module docstring)."""
    generation = getattr(store, "generation", None)
    return generation if isinstance(generation, int) else None


def as_psk_store(source: PskSource) -> AnyPskStore:
    """Turn what ``DTLSServer(psk=...)`` accepts into a store.

    * ``bytes``: one key for everyone (:class:`SingleKeyStore`);
    * a mapping of identity to key (:class:`MappingStore`);
    * a path (:class:`pathlib.Path`): a PSK file (:class:`PskFileStore`);
    * an ``async def`` function of the identity (:class:`AsyncFunctionStore`);
    * any object with a ``lookup`` method, synchronous or ``async``.
    """
    if isinstance(source, bytes | bytearray):
        return SingleKeyStore(bytes(source))
    if isinstance(source, Mapping):
        return MappingStore(source)
    if isinstance(source, PurePath):
        return PskFileStore(source)
    if isinstance(source, PskStore | AsyncPskStore):
        return source
    if inspect.iscoroutinefunction(source):
        return AsyncFunctionStore(source)
    raise TypeError(f"not a PSK source: {type(source).__name__}")


class PskFileError(DTLSError, ValueError):
    """A PSK file or hex key that cannot be used; the message names the line and the problem."""


def parse_psk_hex(text: str, *, where: str = "--psk-hex") -> bytes:
    """A key written in hex (``1a2b3c4d5e6f``); :class:`PskFileError` names what is wrong."""
    cleaned = text.strip()
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    if not cleaned:
        raise PskFileError(f"{where}: the key is empty")
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise PskFileError(f"{where}: {text.strip()!r} is not an even-length hex string") from None
    if len(key) > MAX_PSK_LENGTH:
        raise PskFileError(f"{where}: the key is {len(key)} bytes; at most {MAX_PSK_LENGTH}")
    return key


def parse_psk_file(text: str, *, source: str = "PSK file") -> dict[bytes, bytes]:
    """Parse ``identity,hexkey`` lines; blank lines and ``#`` comments are skipped.

    The identity is everything before the *last* comma (identities such as Qt's
    ``Alice (clone number 0)`` contain spaces, and may contain commas); surrounding
    white space is stripped.  A repeated identity is an error, not a silent override.
    """
    keys: dict[bytes, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source}, line {number}"
        identity, comma, hexkey = stripped.rpartition(",")
        if not comma:
            raise PskFileError(f"{where}: expected 'identity,hexkey', found no comma")
        name = identity.strip().encode("utf-8")
        if not name:
            raise PskFileError(f"{where}: the identity is empty")
        if name in keys:
            raise PskFileError(f"{where}: identity {identity.strip()!r} appears twice")
        keys[name] = parse_psk_hex(hexkey, where=where)
    if not keys:
        raise PskFileError(f"{source}: no 'identity,hexkey' lines")
    return keys


def _read_psk_file(path: str | PurePath) -> dict[bytes, bytes]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PskFileError(f"cannot read PSK file {str(path)!r}: {error}") from None
    return parse_psk_file(text, source=str(path))


def load_psk_file(path: str | PurePath) -> MappingStore:
    """Read a PSK file into a :class:`MappingStore` (see :func:`parse_psk_file`)."""
    return MappingStore(_read_psk_file(path))


class PskFileStore:
    """Keys from an ``identity,hexkey`` file (see :func:`parse_psk_file`), reloadable.

    The file is read when the store is made (a bad file raises :class:`PskFileError` at once)
    and again by each :meth:`reload`.  A reload parses the whole new file first and swaps the
    mapping in one assignment, so a handshake sees either all old keys or all new ones; a bad
    file raises :class:`PskFileError` and the old keys stay in force.  Established peers are
    never affected: keys are only read during handshakes.

    :attr:`generation` goes up by one each time a reload changes any key; the server uses it to
    stop resuming sessions that were made with keys that are no longer in the file.
    """

    def __init__(self, path: str | PurePath) -> None:
        self._path = Path(path)
        self._keys: dict[bytes, bytes] = _read_psk_file(self._path)
        #: Changes whenever :meth:`reload` changes the keys (starts at 0).
        self.generation = 0

    @property
    def path(self) -> Path:
        return self._path

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, identity: bytes) -> bytes | None:
        return self._keys.get(identity)

    def reload(self) -> bool:
        """Re-read the file; True if any key changed.  :class:`PskFileError` keeps the old keys."""
        fresh = _read_psk_file(self._path)
        if fresh == self._keys:
            return False
        self._keys = fresh
        self.generation += 1
        return True


async def reload_on_signal(
    store: PskFileStore,
    signum: int = signal.SIGHUP,
    *,
    on_reload: Callable[[bool, str], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload ``store`` each time the process gets ``signum`` (SIGHUP), until cancelled.

    Run it in a nursery: ``await nursery.start(reload_on_signal, store)`` returns once the
    signal handler is installed.  Each reload is logged (``trio_dtls_server`` logger) and
    reported to ``on_reload(ok, message)``; a bad file is reported and the old keys stay.
    Must run in the main thread (Python delivers signals only there).
    """
    with trio.open_signal_receiver(signum) as signals:
        task_status.started()
        async for _ in signals:
            try:
                changed = store.reload()
            except PskFileError as error:
                ok, message = False, f"PSK file not reloaded, the old keys stay: {error}"
                logger.error("%s", message)
            else:
                ok = True
                what = "keys changed" if changed else "no change"
                message = f"PSK file {str(store.path)!r} reloaded: {len(store)} identities, {what}"
                logger.info("%s", message)
            if on_reload is not None:
                on_reload(ok, message)
