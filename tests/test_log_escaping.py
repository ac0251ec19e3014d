"""Nothing from the network reaches a log line raw.

A PSK identity is whatever bytes the client put in its ClientKeyExchange.  Logged raw, an
identity holding a newline starts a line of its own -- ``Connection with (127.0.0.1:1)
encrypted ...``, a handshake that never happened -- and one holding ESC sequences rewrites the
operator's terminal.  Messages quote peer-supplied text (``_text.quote_peer_text``: printable
ASCII, everything else escaped, long texts cut), and the event hub makes sure no message it
logs or hands out holds an unprintable character at all.
"""

from __future__ import annotations

import ast
import logging

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from auth_support import self_signed
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hostile_support import KEY, serving_psk
from hypothesis import given

from trio_dtls_server import DTLSClient, DTLSServer, HandshakeError, InfoEvent, ServerEvent
from trio_dtls_server._certificates import describe_subject
from trio_dtls_server._codes import EventCode
from trio_dtls_server._connection import PeerSlot
from trio_dtls_server._display import ColourMode, Display
from trio_dtls_server._events import EventHub
from trio_dtls_server._session import PskIdentity
from trio_dtls_server._text import PEER_TEXT_LIMIT, printable, quote_peer_text

LOGGER = "trio_dtls_server"

FORGED = b"Connection with (127.0.0.1:1) encrypted. Session cipher: PSK-AES128-GCM-SHA256"
#: A newline, a forged line, ANSI colour and a terminal title escape, CR, a quote, a backslash
#: and bytes that are not ASCII.
HOSTILE_IDENTITY = b"mallory\n" + FORGED + b"\x1b[31m\x1b]0;owned\x07\r'\\\xc3\xa9\xff"
HOSTILE_QUOTED = r"'mallory\n" + FORGED.decode() + r"\x1b[31m\x1b]0;owned\x07\r\'\\\xc3\xa9\xff'"

UNPRINTABLE = [chr(code) for code in (*range(0x20), 0x7F, 0x85, 0x9B, 0x2028, 0x2029, 0x202E)]


def assert_one_safe_line(text: str) -> None:
    """``text`` has no control, separator or other unprintable character."""
    assert text.isprintable(), repr(text)
    assert not any(character in text for character in UNPRINTABLE), repr(text)


def forged_lines(records: list[logging.LogRecord], events: list[ServerEvent]) -> list[str]:
    """Every logged or emitted line that starts with the forged text."""
    lines = [record.getMessage() for record in records] + [event.message for event in events]
    return [
        line
        for text in lines
        for line in text.splitlines()
        if line.startswith("Connection with (127.0.0.1:1)")
    ]


# -- quote_peer_text ------------------------------------------------------------------------------


def test_a_plain_identity_reads_as_before() -> None:
    assert quote_peer_text(b"Alice (clone number 0)") == "'Alice (clone number 0)'"


def test_a_hostile_identity_is_one_quoted_line() -> None:
    assert quote_peer_text(HOSTILE_IDENTITY) == HOSTILE_QUOTED
    assert_one_safe_line(HOSTILE_QUOTED)


def test_a_long_identity_is_cut_and_says_how_long_it_was() -> None:
    quoted = quote_peer_text(b"A" * 300)
    assert quoted == "'" + "A" * PEER_TEXT_LIMIT + "'... (300 bytes)"
    assert quote_peer_text("\u00e9" * 200, limit=3) == r"'\xe9\xe9\xe9'... (200 characters)"


@given(st.binary(max_size=300))
def test_any_identity_bytes_make_one_printable_ascii_literal(identity: bytes) -> None:
    quoted = quote_peer_text(identity)
    assert quoted.isascii()
    assert_one_safe_line(quoted)
    if len(identity) <= PEER_TEXT_LIMIT:
        # Unambiguous: the quoted text is a Python bytes literal of exactly the identity.
        assert ast.literal_eval("b" + quoted) == identity
    else:
        assert quoted.endswith(f"'... ({len(identity)} bytes)")


@given(st.text(max_size=200))
def test_any_text_makes_one_printable_ascii_literal(text: str) -> None:
    quoted = quote_peer_text(text, limit=1000)
    assert quoted.isascii()
    assert_one_safe_line(quoted)
    assert ast.literal_eval(quoted) == text


@given(st.text())
def test_printable_leaves_nothing_unprintable_and_printable_text_alone(text: str) -> None:
    safe = printable(text)
    assert_one_safe_line(safe)
    if text.isprintable():
        assert safe == text


# -- the hub: the last line of defence ------------------------------------------------------------


@given(st.text())
def test_no_message_leaves_the_hub_with_an_unprintable_character(message: str) -> None:
    logger = logging.getLogger(LOGGER)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(logging.INFO)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        hub = EventHub(clock=lambda: 0.0)
        stream = hub.subscribe(4)
        hub.emit(InfoEvent(EventCode.PSK_IDENTITY, message, ("127.0.0.1", 1)))
        event = stream.receive_nowait()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert len(seen) == 1
    assert_one_safe_line(seen[0])
    assert_one_safe_line(event.message)
    assert (event.code, event.peer) == ("psk_identity", ("127.0.0.1", 1))
    if message.isprintable():
        assert event.message == seen[0] == message


# -- end to end: a real handshake with a hostile identity ----------------------------------------


async def test_a_hostile_psk_identity_cannot_forge_a_log_line(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with serving_psk() as served:
        client = await DTLSClient.connect(*served.address, identity=HOSTILE_IDENTITY, key=KEY)
        async with client:
            await client.send(b"hello")
            with trio.fail_after(5):
                await client.receive()
        await trio.sleep(1)
        events = served.events.events
    [identity_event] = [event for event in events if event.code == "psk_identity"]
    assert identity_event.message == (
        f"PSK callback, received a client's identity: {HOSTILE_QUOTED}"
    )
    assert forged_lines(caplog.records, events) == []
    for record in caplog.records:
        assert_one_safe_line(record.getMessage())
    for event in events:
        assert_one_safe_line(event.message)
    assert [r.getMessage() for r in caplog.records].count(identity_event.message) == 1


async def test_an_unknown_hostile_identity_is_quoted_in_every_failure_message(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with serving_psk(psk={b"the only one": KEY}) as served:
        with pytest.raises(HandshakeError):
            await DTLSClient.connect(*served.address, identity=HOSTILE_IDENTITY, key=KEY)
        await trio.sleep(1)
        events = served.events.events
    [unknown] = [event for event in events if event.code == "unknown_identity"]
    assert unknown.message.endswith(f": unknown PSK identity {HOSTILE_QUOTED}")
    [failed] = [event for event in events if event.code == "handshake_failed"]
    assert f"unknown PSK identity {HOSTILE_QUOTED}" in failed.message
    assert forged_lines(caplog.records, events) == []
    for record in caplog.records:
        assert_one_safe_line(record.getMessage())


# -- certificate subjects and the CLI's display ---------------------------------------------------


def _certificate_named(common_name: str) -> x509.Certificate:
    return self_signed(ec.generate_private_key(ec.SECP256R1()), common_name, "Example, Inc.")


def test_a_certificate_subject_is_safe_to_log_and_still_rfc_4514() -> None:
    certificate = _certificate_named("evil\nConnection with (127.0.0.1:1) J\u00fcrgen\x1b[2J")
    subject = describe_subject(certificate)
    assert subject == (
        r"O=Example\, Inc.,CN=evil\0AConnection with (127.0.0.1:1) J\C3\BCrgen\1B[2J"
    )
    assert subject.isascii()
    assert_one_safe_line(subject)
    assert x509.Name.from_rfc4514_string(subject) == certificate.subject


def test_a_plain_certificate_subject_is_unchanged() -> None:
    certificate = _certificate_named("device-7")
    assert describe_subject(certificate) == certificate.subject.rfc4514_string()
    assert describe_subject(certificate) == r"O=Example\, Inc.,CN=device-7"


def test_the_display_does_not_escape_a_quoted_identity_twice() -> None:
    display = Display(side="server", colour=ColourMode.NONE)
    message = f"PSK callback, received a client's identity: {HOSTILE_QUOTED}"
    assert display.text_line(InfoEvent(EventCode.PSK_IDENTITY, message)) == message


@given(identity=st.binary(min_size=1, max_size=300), known=st.booleans())
def test_the_servers_identity_messages_hold_no_control_character(
    identity: bytes, known: bool
) -> None:
    """The server's own code path for the PSK callback's report, for any identity bytes."""
    server = DTLSServer(KEY)
    stream = server._hub.subscribe(8)
    send, receive = trio.open_memory_channel[bytes](1)
    slot = PeerSlot(("127.0.0.1", 5555), b"\0" * 32, send, receive)
    server._report_handshake(slot, [PskIdentity(identity, known)])
    seen = []
    while True:
        try:
            seen.append(stream.receive_nowait())
        except trio.WouldBlock:
            break
    assert [event.code for event in seen] == (
        ["psk_identity"] if known else ["psk_identity", "unknown_identity"]
    )
    for event in seen:
        assert_one_safe_line(event.message)
        assert quote_peer_text(identity) in event.message
