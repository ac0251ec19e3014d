"""Text from the network, made safe for one line of a log or a terminal.

A PSK identity, a certificate subject, a plaintext: the peer chooses every byte.  Written raw
into a log message, a newline would let it start a line of its own -- a forged ``Connection
with (127.0.0.1:1) encrypted ...`` line that a reader (or a log parser) takes for the server's --
and an ESC would let it recolour or rewrite the operator's terminal.  This module is the one
owner of how such text is written:

* :func:`quote_peer_text` -- for peer-supplied text inside a message (PSK identities, names):
  a quoted literal in printable ASCII only, ``'Alice (clone number 0)'``.  The backslash and
  the quote are escaped (``\\\\``, ``\\'``), ``\\n`` ``\\r`` ``\\t`` are named, every other byte
  outside printable ASCII is ``\\xNN`` (characters beyond Latin-1 ``\\uNNNN``), so the text is
  unambiguous and can be read back; past ``limit`` bytes it is cut, and the mark after the
  closing quote says how long it was: ``'AAAA...AAAA'... (300 bytes)``.
* :func:`printable` -- for a whole message: every character that is not printable (controls,
  line and paragraph separators, bidirectional overrides, ...) becomes an escape; printable
  text, backslashes included, is left alone.  :class:`~._events.EventHub` applies it to every
  message it logs or hands out, so no event message can carry a raw control character whatever
  the code that built it forgot.
* :func:`escape_control_characters` -- for raw text shown on a terminal (the CLI's plaintext
  column): control characters and the backslash escaped, other characters (``café``) kept.
"""

from __future__ import annotations

__all__ = [
    "PEER_TEXT_LIMIT",
    "escape_control_characters",
    "printable",
    "quote_peer_text",
]

#: How much of a peer-supplied text goes into a message (bytes, or characters for ``str``).
#: RFC 4279 lets a PSK identity be 65,535 bytes long; a log line does not need them all.
PEER_TEXT_LIMIT = 128


def _byte_escapes() -> tuple[str, ...]:
    table = [chr(code) if 0x20 <= code < 0x7F else f"\\x{code:02x}" for code in range(256)]
    table[ord("\\")] = "\\\\"
    table[ord("'")] = "\\'"
    table[ord("\n")] = "\\n"
    table[ord("\r")] = "\\r"
    table[ord("\t")] = "\\t"
    return tuple(table)


_BYTE_ESCAPES = _byte_escapes()


def _escape_code_point(code: int) -> str:
    if code < 0x100:
        return _BYTE_ESCAPES[code]
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def quote_peer_text(data: bytes | str, limit: int = PEER_TEXT_LIMIT) -> str:
    """``data`` as a quoted, single-line, printable-ASCII literal (see the module doc).

    >>> quote_peer_text(b"Alice")
    "'Alice'"
    >>> quote_peer_text(b"evil\\nConnection with \\x1b[31m")
    "'evil\\\\nConnection with \\\\x1b[31m'"
    """
    shown = data[:limit] if limit >= 0 else data
    if isinstance(shown, bytes):
        body = "".join([_BYTE_ESCAPES[byte] for byte in shown])
        unit = "bytes"
    else:
        body = "".join([_escape_code_point(ord(character)) for character in shown])
        unit = "characters"
    if len(shown) < len(data):
        return f"'{body}'... ({len(data)} {unit})"
    return f"'{body}'"


def printable(text: str) -> str:
    """``text`` with every non-printable character written as ``\\xNN``/``\\uNNNN``/``\\U...``.

    Printable characters, the backslash included, are kept: this is for messages that are
    already safe by construction, as a last line of defence.
    """
    if text.isprintable():
        return text
    return "".join(
        [
            character if character.isprintable() else _escape_code_point(ord(character))
            for character in text
        ]
    )


def _control_character_table() -> dict[int, str]:
    table = {code: f"\\x{code:02x}" for code in range(0x20)}
    table.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"})
    # DEL and the C1 controls (0x9b is a one-byte CSI on some terminals).
    table.update({code: f"\\x{code:02x}" for code in range(0x7F, 0xA0)})
    return table


_CONTROL_CHARACTERS = _control_character_table()


def escape_control_characters(text: str) -> str:
    """``text`` with every control character (and the backslash) written as an escape."""
    return text.translate(_CONTROL_CHARACTERS)
