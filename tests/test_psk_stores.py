"""PSK stores beyond the basics: the reloadable file store, SIGHUP, and asynchronous stores.

The basic stores and the file parser are in ``test_psk.py``.  Here: :class:`PskFileStore`
reloads atomically and keeps its old keys on a bad file; ``reload_on_signal`` and
``DTLSServer.reload_psk_on_signal`` react to a real SIGHUP; an async store's slow lookup does
not hold up another client; a failed, late or negative lookup reaches the client as a fatal
``unknown_psk_identity`` alert long before its handshake timeout.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import support
import trio
from auth_support import IDENTITY, KEY, ConnectionLog, connect

from trio_dtls_server import (
    AsyncFunctionStore,
    AsyncPskStore,
    DTLSServer,
    HandshakeError,
    MappingStore,
    PskFileError,
    PskFileStore,
    ServerConfig,
    reload_on_signal,
)
from trio_dtls_server._psk import as_psk_store, is_async_store, store_generation

OTHER_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100")
UNKNOWN_IDENTITY_ALERT = "unknown_psk_identity (115)"


def write_keys(path: Path, keys: dict[str, bytes]) -> None:
    path.write_text("".join(f"{name},{key.hex()}\n" for name, key in keys.items()))


# -- the file store ------------------------------------------------------------------------------


def test_file_store_reads_the_file_when_made(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    path.write_text("# devices\nsensor-1,0011\nAlice (clone number 0),1a2b3c4d5e6f\n")
    store = PskFileStore(path)
    assert len(store) == 2
    assert store.path == path
    assert store.generation == 0
    assert store.lookup(b"sensor-1") == b"\x00\x11"
    assert store.lookup(b"Alice (clone number 0)") == bytes.fromhex("1a2b3c4d5e6f")
    assert store.lookup(b"sensor-2") is None


def test_file_store_refuses_a_bad_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    path.write_text("sensor-1,zz\n")
    with pytest.raises(PskFileError) as error:
        PskFileStore(path)
    assert str(error.value) == (f"{path}, line 1: 'zz' is not an even-length hex string")


def test_reload_swaps_every_key_and_counts_a_generation(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    write_keys(path, {"a": b"\x01", "b": b"\x02"})
    store = PskFileStore(path)
    write_keys(path, {"b": b"\x22", "c": b"\x03"})
    assert store.reload() is True
    assert store.generation == 1
    assert (store.lookup(b"a"), store.lookup(b"b"), store.lookup(b"c")) == (None, b"\x22", b"\x03")
    # The same content again is not a change: sessions stay resumable.
    assert store.reload() is False
    assert store.generation == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("a,01\na,02\n", "line 2: identity 'a' appears twice"),
        ("a,01\nb\n", "line 2: expected 'identity,hexkey', found no comma"),
        ("# only a comment\n", "no 'identity,hexkey' lines"),
    ],
)
def test_a_bad_reload_keeps_the_old_keys(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "keys.csv"
    write_keys(path, {"a": b"\x01"})
    store = PskFileStore(path)
    path.write_text(content)
    with pytest.raises(PskFileError) as error:
        store.reload()
    assert problem in str(error.value)
    assert store.lookup(b"a") == b"\x01"
    assert store.generation == 0


def test_a_vanished_file_keeps_the_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    write_keys(path, {"a": b"\x01"})
    store = PskFileStore(path)
    path.unlink()
    with pytest.raises(PskFileError, match="cannot read PSK file"):
        store.reload()
    assert store.lookup(b"a") == b"\x01"


async def test_sighup_reloads_the_store_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    write_keys(path, {"a": b"\x01"})
    store = PskFileStore(path)
    reports: list[tuple[bool, str]] = []
    reported = trio.Semaphore(0)

    def on_reload(ok: bool, message: str) -> None:
        reports.append((ok, message))
        reported.release()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: reload_on_signal(
                store, on_reload=on_reload, task_status=task_status
            )
        )
        write_keys(path, {"a": b"\x01", "b": b"\x02"})
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            await reported.acquire()
        path.write_text("not a key file\n")
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(10):
            await reported.acquire()
        nursery.cancel_scope.cancel()
    assert reports[0] == (True, f"PSK file {str(path)!r} reloaded: 2 identities, keys changed")
    assert reports[1][0] is False
    assert reports[1][1].startswith("PSK file not reloaded, the old keys stay: ")
    assert store.lookup(b"b") == b"\x02"


# -- converting what DTLSServer(psk=...) accepts --------------------------------------------------


def test_as_psk_store_knows_paths_and_async_functions(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    write_keys(path, {"a": b"\x01"})
    from_path = as_psk_store(path)
    assert isinstance(from_path, PskFileStore)
    assert from_path.lookup(b"a") == b"\x01"

    async def lookup(identity: bytes) -> bytes | None:
        return None

    from_function = as_psk_store(lookup)
    assert isinstance(from_function, AsyncFunctionStore)
    assert is_async_store(from_function)
    assert not is_async_store(from_path)
    assert not is_async_store(MappingStore({"a": b"\x01"}))


def test_an_object_with_an_async_lookup_is_an_async_store() -> None:
    class Database:
        async def lookup(self, identity: bytes) -> bytes | None:
            return None

    database = Database()
    assert isinstance(database, AsyncPskStore)
    assert as_psk_store(database) is database
    assert is_async_store(database)


def test_store_generation_is_read_only_from_stores_that_keep_one(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    write_keys(path, {"a": b"\x01"})
    assert store_generation(PskFileStore(path)) == 0
    assert store_generation(MappingStore({"a": b"\x01"})) is None
    assert store_generation(None) is None


async def test_async_function_store_checks_the_keys_it_returns() -> None:
    async def bad(identity: bytes) -> bytes | None:
        return b""

    with pytest.raises(ValueError, match="a PSK must be 1 to 512 bytes, not 0"):
        await AsyncFunctionStore(bad).lookup(b"x")


def test_psk_lookup_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="psk_lookup_timeout must be positive, not 0"):
        ServerConfig(psk_lookup_timeout=0)


# -- the file store behind a running server ------------------------------------------------------


async def test_hot_reload_on_sighup_keeps_established_peers(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    write_keys(path, {IDENTITY: KEY})
    log = ConnectionLog()
    server = DTLSServer(PskFileStore(path), handler=log)
    async with support.serving(server) as running, trio.open_nursery() as signals:
        await signals.start(server.reload_psk_on_signal)
        established = await connect(running)
        old_session = established.tls_session
        # The device's key is replaced and a new device appears.
        write_keys(path, {IDENTITY: OTHER_KEY, "device-2": KEY})
        os.kill(os.getpid(), signal.SIGHUP)
        reloaded = await running.events.wait_for("psk_reloaded")
        assert reloaded.message == (f"PSK file {str(path)!r} reloaded: 2 identities, keys changed")
        # The peer that was already in keeps talking under its old keys.
        await established.send(b"still here")
        assert await established.receive() == b"echo: still here"
        # New handshakes see the new keys: the old key fails, the new ones work.
        with pytest.raises(HandshakeError) as refused:
            await connect(running)
        assert refused.value.alert == "bad_record_mac (20)"
        # Its old session is not resumed under the new keys (a full handshake, which fails).
        with pytest.raises(HandshakeError):
            await connect(running, tls_session=old_session)
        for identity, key in ((IDENTITY, OTHER_KEY), ("device-2", KEY)):
            async with await connect(running, identity, key) as client:
                assert client.resumed is False
                await client.send(b"hello")
                assert await client.receive() == b"echo: hello"
        # A broken file is reported and changes nothing.
        path.write_text("garbage\n")
        os.kill(os.getpid(), signal.SIGHUP)
        failed = await running.events.wait_for("psk_reload_failed")
        assert "expected 'identity,hexkey', found no comma" in failed.message
        async with await connect(running, "device-2", KEY) as client:
            await client.send(b"after a bad reload")
            assert await client.receive() == b"echo: after a bad reload"
        await established.aclose()
        stats = server.statistics()
        assert stats.handshakes_completed == 4
        assert stats.handshakes_resumed == 0
        assert stats.handshakes_failed == {"wrong key": 2}
        signals.cancel_scope.cancel()


async def test_reload_on_signal_needs_a_file_store() -> None:
    server = DTLSServer({IDENTITY: KEY})
    with pytest.raises(TypeError, match="needs a PskFileStore"):
        await server.reload_psk_on_signal()


# -- async stores --------------------------------------------------------------------------------


class HeldDatabase:
    """An async store whose lookups for ``slow_identity`` wait until the test releases them."""

    def __init__(self, slow_identity: bytes) -> None:
        self.slow_identity = slow_identity
        self.release = trio.Event()
        self.slow_lookup_started = trio.Event()
        self.asked: list[bytes] = []

    async def lookup(self, identity: bytes) -> bytes | None:
        self.asked.append(identity)
        if identity == self.slow_identity:
            self.slow_lookup_started.set()
            await self.release.wait()
        return {b"slow": KEY, b"fast": OTHER_KEY}.get(identity)


async def test_a_slow_lookup_does_not_delay_another_client() -> None:
    database = HeldDatabase(b"slow")
    server = DTLSServer(database, handler=ConnectionLog())
    order: list[str] = []
    async with support.serving(server) as running, trio.open_nursery() as clients:

        async def slow_client() -> None:
            async with await connect(running, "slow", KEY) as client:
                order.append("slow connected")
                await client.send(b"at last")
                order.append((await client.receive()).decode())

        clients.start_soon(slow_client)
        with trio.fail_after(20):
            await database.slow_lookup_started.wait()
        # The slow client's lookup is pending; a second client comes, goes and talks.
        async with await connect(running, "fast", OTHER_KEY) as fast:
            await fast.send(b"quick")
            order.append((await fast.receive()).decode())
        assert not database.release.is_set()
        assert server.statistics().handshaking == 1  # the slow one, still waiting
        database.release.set()
    assert order == ["echo: quick", "slow connected", "echo: at last"]
    # Each identity was looked up once, although the slow client retransmitted meanwhile.
    assert sorted(database.asked) == [b"fast", b"slow"]
    assert server.statistics().handshakes_completed == 2


@pytest.mark.parametrize(
    ("behaviour", "reason", "kind"),
    [
        ("unknown", "unknown PSK identity 'device-1'", "unknown identity"),
        (
            "raises",
            "PSK lookup for 'device-1' failed: the store raised ConnectionError: database is down",
            "PSK lookup failed",
        ),
        ("hangs", "PSK lookup for 'device-1' failed: no answer within 5 s", "PSK lookup failed"),
    ],
)
async def test_a_failed_lookup_sends_the_client_a_fatal_alert(
    autojump_clock: trio.testing.MockClock, behaviour: str, reason: str, kind: str
) -> None:
    async def lookup(identity: bytes) -> bytes | None:
        if behaviour == "raises":
            raise ConnectionError("database is down")
        if behaviour == "hangs":
            await trio.sleep_forever()
        return None

    server = DTLSServer(lookup, config=ServerConfig(psk_lookup_timeout=5.0))
    async with support.serving(server) as running:
        started = trio.current_time()
        with pytest.raises(HandshakeError) as error:
            await connect(running, handshake_timeout=30.0)
        elapsed = trio.current_time() - started
        assert error.value.alert == UNKNOWN_IDENTITY_ALERT
        assert str(error.value) == (
            f"{IDENTITY}: handshake error - tlsv1 alert unknown psk identity "
            f"(fatal alert from the server: {UNKNOWN_IDENTITY_ALERT})"
        )
        # The alert ends the client's wait: after the lookup timeout, long before its own.
        assert elapsed < (6.0 if behaviour == "hangs" else 1.0)
        failed = await running.events.wait_for("handshake_failed")
        assert reason in failed.message
        assert failed.message.endswith(f"fatal alert sent: {UNKNOWN_IDENTITY_ALERT}")
        assert server.statistics().handshakes_failed == {kind: 1}
        code = "unknown_identity" if behaviour == "unknown" else "psk_lookup_failed"
        assert len(running.events.with_code(code)) == 1


@pytest.mark.parametrize(
    "identity", ["psk lookup failed", "a certificate from an unknown ca", "bad record mac alert"]
)
async def test_an_identity_cannot_pick_its_own_failure_bucket(
    autojump_clock: trio.testing.MockClock, identity: str
) -> None:
    """The statistics bucket is set where the failure is decided, never read out of the message,
    which quotes the peer's identity: these identities are still just unknown."""
    server = DTLSServer({"device-1": KEY})
    async with support.serving(server) as running:
        with pytest.raises(HandshakeError):
            await connect(running, identity, KEY)
        failed = await running.events.wait_for("handshake_failed")
        assert repr(identity) in failed.message
        assert server.statistics().handshakes_failed == {"unknown identity": 1}
