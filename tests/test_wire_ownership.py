"""``_wire.py`` owns every wire byte: no other module of the package indexes record bytes.

Issue 10, item 4.  A record-header peek written inline (``datagram[3:5] == b"\\0\\0"``,
``int.from_bytes(raw[5:11], "big")``, ``fragment[:1] == ...``) is a parser of untrusted bytes
outside the one module whose contract is "every length checked, only MalformedDatagram
escapes", and a copy of the layout that the next change to it will miss.  So such peeks are
``_wire`` functions (``single_record_header``, ``looks_like_client_hello``,
``handshake_type``, ``read_own_record``, ...), and this test keeps it that way: it scans the
package's modules other than ``_wire.py`` for a numeric index or slice of a variable holding
DTLS bytes, and for ``int.from_bytes`` of a slice of one, and lists every ``file:line`` found.

"Holding DTLS bytes" is decided by the variable's name (:data:`BYTES_NAMES`): the names the
package gives datagrams, records, fragments and hellos.  Indexing a tuple, an address or a
DER structure (``_openssl.py``'s session parser) is not a wire peek and is not matched.
"""

from __future__ import annotations

import re
from pathlib import Path

import trio_dtls_server

PACKAGE = Path(trio_dtls_server.__file__).parent

#: Names (the last part of a dotted name) that hold datagrams, records or their parts.
BYTES_NAMES = (
    "body",
    "datagram",
    "flight",
    "fragment",
    "header",
    "packet",
    "plaintext",
    "raw",
    "record",
    "single_record",
    "translated",
    "verified_client_hello",
    "_completing",
    "_peer_finished",
)
_NAME = r"(?<![\w])(?:\w+\.)*(?:" + "|".join(BYTES_NAMES) + r")\b"
#: A literal index (``[0]``, ``[13]``) or a slice with a literal bound (``[3:5]``, ``[:1]``,
#: ``[13:]``).
_LITERAL_SUBSCRIPT = r"\[\s*(?:-?\d+\s*(?::\s*-?\d*\s*)?|:\s*-?\d+\s*)\]"
PATTERNS = (
    re.compile(_NAME + r"\s*" + _LITERAL_SUBSCRIPT),
    re.compile(r"from_bytes\(\s*" + _NAME + r"\s*\["),
)


def raw_byte_peeks(source: str) -> list[tuple[int, str]]:
    """``(line number, line)`` for each line of ``source`` that indexes DTLS bytes itself."""
    found = []
    for number, line in enumerate(source.splitlines(), start=1):
        code = line.split("#", 1)[0]
        if any(pattern.search(code) for pattern in PATTERNS):
            found.append((number, line.strip()))
    return found


def test_no_module_but_wire_indexes_record_bytes() -> None:
    offences = [
        f"{path.name}:{number}: {line}"
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name != "_wire.py"
        for number, line in raw_byte_peeks(path.read_text(encoding="utf-8"))
    ]
    assert not offences, "raw record-byte peeks outside _wire.py:\n" + "\n".join(offences)


def test_the_scan_finds_the_peeks_it_forbids() -> None:
    """The scan is not vacuous: each shape of peek the package once had is found..."""
    peeks = [
        "if datagram[0] == CONTENT_TLS12_CID and self.config.connection_id_length:",
        'if raw[3:5] == b"\\0\\0" or keys is None:',
        'sequence = int.from_bytes(record[5:11], "big")',
        'hello_message_seq = int.from_bytes(verified_client_hello[17:19], "big")',
        'self._peer_finished_sequence = int.from_bytes(self._peer_finished[5:11], "big")',
        "plaintext = protection.decrypt(23, version, sequence, datagram[13:])",
        "if not plaintext_handshake or fragment[:1] != _SERVER_HELLO:",
        "and record.fragment[:1] in _BEFORE_CHANGE_CIPHER_SPEC",
        'if len(datagram) < 13 or int.from_bytes(datagram[11:13], "big") != len(datagram) - 13:',
        "and header[0] == CONTENT_APPLICATION_DATA",
    ]
    assert [number for number, _ in raw_byte_peeks("\n".join(peeks))] == list(
        range(1, len(peeks) + 1)
    )


def test_the_scan_leaves_other_indexing_alone() -> None:
    """...and indexing that is not of wire bytes is not."""
    others = [
        "first = records[0]",
        'elif request_line[0] != b"GET":',
        "if not outer or outer[0][0] != 0x30:  # SEQUENCE",
        'self._packet_info = self._local_address[0] in ("0.0.0.0", "::")',
        "read_key=keys[0],",
        "host, port = peer[0], peer[1]",
        "if lengths is not None and not lengths[0] <= len(record.fragment) <= lengths[1]:",
        "mac_input = mac_pseudo_header(raw, size) + raw[RECORD_HEADER_LENGTH:content_end]",
        "# a comment about datagram[3:5]",
    ]
    assert raw_byte_peeks("\n".join(others)) == []
