"""PSK stores and the parsers behind ``--psk-hex`` and ``--psk-file``."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_dtls_server import (
    MappingStore,
    PskFileError,
    PskStore,
    SingleKeyStore,
    load_psk_file,
    parse_psk_file,
    parse_psk_hex,
)
from trio_dtls_server._psk import MAX_PSK_LENGTH, as_psk_store

# -- parse_psk_hex ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("1a2b3c4d5e6f", bytes.fromhex("1a2b3c4d5e6f")),
        ("1A2B3C4D5E6F", bytes.fromhex("1a2b3c4d5e6f")),
        ("0x1a2b3c4d5e6f", bytes.fromhex("1a2b3c4d5e6f")),
        ("0X00ff", b"\x00\xff"),
        ("  1a2b \n", b"\x1a\x2b"),
        ("1a 2b 3c", b"\x1a\x2b\x3c"),  # bytes.fromhex allows spaces between bytes
        ("ab" * MAX_PSK_LENGTH, b"\xab" * MAX_PSK_LENGTH),
    ],
)
def test_parse_psk_hex_accepts(text: str, key: bytes) -> None:
    assert parse_psk_hex(text) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--psk-hex: the key is empty"),
        ("   ", "--psk-hex: the key is empty"),
        ("0x", "--psk-hex: the key is empty"),
        ("abc", "--psk-hex: 'abc' is not an even-length hex string"),
        ("zz", "--psk-hex: 'zz' is not an even-length hex string"),
        (" 12g4 ", "--psk-hex: '12g4' is not an even-length hex string"),
        ("ab" * (MAX_PSK_LENGTH + 1), "--psk-hex: the key is 513 bytes; at most 512"),
    ],
)
def test_parse_psk_hex_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PskFileError) as error:
        parse_psk_hex(text)
    assert str(error.value) == message


def test_parse_psk_hex_names_where_the_key_came_from() -> None:
    with pytest.raises(PskFileError) as error:
        parse_psk_hex("xyz", where="keys.txt, line 3")
    assert str(error.value) == "keys.txt, line 3: 'xyz' is not an even-length hex string"


def test_psk_file_error_is_a_value_error() -> None:
    assert issubclass(PskFileError, ValueError)


# -- parse_psk_file ---------------------------------------------------------------------------


def test_parse_psk_file_reads_identities_keys_comments_and_blank_lines() -> None:
    text = (
        "# devices of the demo\n"
        "\n"
        "Alice (clone number 0),1a2b3c4d5e6f\n"
        "   sensor-17 , 0x00112233  \n"
        "  # an indented comment\n"
        "name, with a comma,abcd\n"
        "Zoë,ff\n"
    )
    assert parse_psk_file(text) == {
        b"Alice (clone number 0)": bytes.fromhex("1a2b3c4d5e6f"),
        b"sensor-17": bytes.fromhex("00112233"),
        b"name, with a comma": b"\xab\xcd",
        "Zoë".encode(): b"\xff",
    }


def test_parse_psk_file_accepts_windows_line_endings() -> None:
    assert parse_psk_file("a,01\r\nb,02\r\n") == {b"a": b"\x01", b"b": b"\x02"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,01\nno comma here\n", "keys.txt, line 2: expected 'identity,hexkey', found no comma"),
        ("\n\n ,01\n", "keys.txt, line 3: the identity is empty"),
        ("a,01\n# c\na,02\n", "keys.txt, line 3: identity 'a' appears twice"),
        ("a,01\nb,\n", "keys.txt, line 2: the key is empty"),
        ("a,0x\n", "keys.txt, line 1: the key is empty"),
        ("a,01\nb,0g\n", "keys.txt, line 2: '0g' is not an even-length hex string"),
        ("a,123\n", "keys.txt, line 1: '123' is not an even-length hex string"),
        (f"a,{'00' * 513}\n", "keys.txt, line 1: the key is 513 bytes; at most 512"),
        ("", "keys.txt: no 'identity,hexkey' lines"),
        ("# only comments\n\n   \n", "keys.txt: no 'identity,hexkey' lines"),
    ],
)
def test_parse_psk_file_names_the_line_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(PskFileError) as error:
        parse_psk_file(text, source="keys.txt")
    assert str(error.value) == message


def test_parse_psk_file_default_source_name() -> None:
    with pytest.raises(PskFileError) as error:
        parse_psk_file("nothing")
    assert str(error.value) == "PSK file, line 1: expected 'identity,hexkey', found no comma"


# -- load_psk_file ----------------------------------------------------------------------------


def test_load_psk_file_gives_a_mapping_store(tmp_path: Path) -> None:
    path = tmp_path / "keys.psk"
    path.write_text("Alice (clone number 0),1a2b3c4d5e6f\nbob,0102\n", encoding="utf-8")
    for argument in (path, str(path)):
        store = load_psk_file(argument)
        assert isinstance(store, MappingStore)
        assert len(store) == 2
        assert store.lookup(b"Alice (clone number 0)") == bytes.fromhex("1a2b3c4d5e6f")
        assert store.lookup(b"bob") == b"\x01\x02"
        assert store.lookup(b"carol") is None


def test_load_psk_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.psk"
    path.write_text("alice,01\nbob 02\n", encoding="utf-8")
    with pytest.raises(PskFileError) as error:
        load_psk_file(path)
    assert str(error.value) == f"{path}, line 2: expected 'identity,hexkey', found no comma"


def test_load_psk_file_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "missing.psk"
    with pytest.raises(PskFileError) as error:
        load_psk_file(path)
    message = str(error.value)
    assert message.startswith(f"cannot read PSK file {str(path)!r}: ")
    assert "No such file or directory" in message


def test_load_psk_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.psk"
    path.write_bytes("Zoë,01\n".encode("latin-1"))
    with pytest.raises(PskFileError) as error:
        load_psk_file(path)
    message = str(error.value)
    assert message.startswith(f"cannot read PSK file {str(path)!r}: ")
    assert "utf-8" in message


# -- the stores -------------------------------------------------------------------------------


def test_single_key_store_answers_every_identity() -> None:
    store = SingleKeyStore(b"\x1a\x2b")
    assert store.lookup(b"Alice (clone number 0)") == b"\x1a\x2b"
    assert store.lookup(b"") == b"\x1a\x2b"
    assert isinstance(store, PskStore)


def test_mapping_store_matches_text_identities_as_utf8() -> None:
    store = MappingStore({"Zoë": b"\x01", "plain": b"\x02"})
    assert store.lookup("Zoë".encode()) == b"\x01"
    assert store.lookup("Zoë".encode("latin-1")) is None
    assert store.lookup(b"plain") == b"\x02"
    assert store.lookup(b"Plain") is None
    assert len(store) == 2
    assert isinstance(store, PskStore)


def test_mapping_store_takes_bytes_identities_and_bytearray_keys() -> None:
    raw_keys: dict[bytes, bytes] = {b"\xff\x00raw": bytearray(b"\x07")}  # type: ignore[dict-item]
    store = MappingStore(raw_keys)
    key = store.lookup(b"\xff\x00raw")
    assert key == b"\x07"
    assert type(key) is bytes


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (b"", ValueError, "single key: a PSK must be 1 to 512 bytes, not 0"),
        (b"\x00" * 513, ValueError, "single key: a PSK must be 1 to 512 bytes, not 513"),
        ("1a2b", TypeError, "single key: a PSK must be bytes, not str"),
    ],
)
def test_single_key_store_rejects_bad_keys(
    key: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        SingleKeyStore(key)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_mapping_store_names_the_identity_with_a_bad_key() -> None:
    with pytest.raises(ValueError) as raised:
        MappingStore({"good": b"\x01", "bad": b""})
    assert str(raised.value) == "identity 'bad': a PSK must be 1 to 512 bytes, not 0"
    with pytest.raises(TypeError) as wrong_type:
        MappingStore({b"dev": "00ff"})  # type: ignore[arg-type]
    assert str(wrong_type.value) == "identity b'dev': a PSK must be bytes, not str"


def test_a_512_byte_key_is_the_largest_accepted() -> None:
    assert SingleKeyStore(b"\x01" * 512).lookup(b"x") == b"\x01" * 512


# -- as_psk_store -----------------------------------------------------------------------------


def test_as_psk_store_wraps_bytes_in_a_single_key_store() -> None:
    store = as_psk_store(b"\x1a\x2b")
    assert isinstance(store, SingleKeyStore)
    assert store.lookup(b"anyone") == b"\x1a\x2b"


def test_as_psk_store_wraps_mappings_in_a_mapping_store() -> None:
    store = as_psk_store({"alice": b"\x01"})
    assert isinstance(store, MappingStore)
    assert store.lookup(b"alice") == b"\x01"
    assert store.lookup(b"bob") is None


def test_as_psk_store_passes_any_store_through() -> None:
    class Upper:
        def lookup(self, identity: bytes) -> bytes | None:
            return identity.upper() or None

    custom = Upper()
    assert as_psk_store(custom) is custom
    mapping = MappingStore({"a": b"\x01"})
    assert as_psk_store(mapping) is mapping


@pytest.mark.parametrize("source", ["1a2b3c", 42, None, [b"\x01"]])
def test_as_psk_store_rejects_other_things(source: object) -> None:
    with pytest.raises(TypeError) as error:
        as_psk_store(source)  # type: ignore[arg-type]
    assert str(error.value) == f"not a PSK source: {type(source).__name__}"
