"""Where pre-shared keys come from.

A *PSK store* answers one question: "which key belongs to this identity?" — a ``bytes`` key, or
``None`` for an identity it does not know (the handshake then fails with the
``unknown_psk_identity`` alert and a logged reason).  Identities arrive from the network as raw
bytes; stores built from text compare them as UTF-8.

Built in:

* :class:`SingleKeyStore` — one key for every identity (what Qt's example does);
* :class:`MappingStore` — an identity → key mapping;
* :func:`load_psk_file` — ``identity,hexkey`` lines, into a :class:`MappingStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "MAX_PSK_LENGTH",
    "MappingStore",
    "PskFileError",
    "PskSource",
    "PskStore",
    "SingleKeyStore",
    "as_psk_store",
    "load_psk_file",
    "parse_psk_file",
    "parse_psk_hex",
]

#: OpenSSL accepts keys of at most 512 bytes (PSK_MAX_PSK_LEN).
MAX_PSK_LENGTH = 512


@runtime_checkable
class PskStore(Protocol):
    """Anything with ``lookup(identity) -> key or None``; it must be quick and must not block."""

    def lookup(self, identity: bytes) -> bytes | None: ...


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


PskSource = PskStore | bytes | Mapping[str, bytes] | Mapping[bytes, bytes]


def as_psk_store(source: PskSource) -> PskStore:
    """Accept a store, one key for everyone (``bytes``), or a mapping of identity to key."""
    if isinstance(source, bytes | bytearray):
        return SingleKeyStore(bytes(source))
    if isinstance(source, Mapping):
        return MappingStore(source)
    if isinstance(source, PskStore):
        return source
    raise TypeError(f"not a PSK source: {type(source).__name__}")


class PskFileError(ValueError):
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


def load_psk_file(path: str | Path) -> MappingStore:
    """Read a PSK file into a :class:`MappingStore` (see :func:`parse_psk_file`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PskFileError(f"cannot read PSK file {str(path)!r}: {error}") from None
    return MappingStore(parse_psk_file(text, source=str(path)))
