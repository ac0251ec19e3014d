"""One exception root: every exception the library raises on purpose is a ``DTLSError``, and
each keeps the standard base callers already catch it by."""

from __future__ import annotations

import pytest
import trio
from support import IDENTITY, KEY, serving

import trio_dtls_server
from trio_dtls_server import (
    CertificateError,
    CipherConfigError,
    ConfigError,
    ConnectionClosed,
    DTLSClient,
    DTLSConnection,
    DTLSError,
    DTLSServer,
    HandshakeError,
    PskFileError,
    RetransmitPolicy,
    ServerBindError,
    ServerConfig,
    WorkerStartError,
    WorkersUnsupportedError,
)
from trio_dtls_server._wire import MalformedDatagram

STANDARD_BASE: dict[type[BaseException], type[BaseException] | None] = {
    CertificateError: ValueError,
    CipherConfigError: ValueError,
    ConfigError: ValueError,
    PskFileError: ValueError,
    MalformedDatagram: ValueError,
    ServerBindError: OSError,
    WorkersUnsupportedError: RuntimeError,
    WorkerStartError: RuntimeError,
    ConnectionClosed: trio.BrokenResourceError,
    HandshakeError: None,
}


@pytest.mark.parametrize("error", list(STANDARD_BASE), ids=lambda e: e.__name__)
def test_every_exception_is_a_dtls_error_and_keeps_its_standard_base(
    error: type[BaseException],
) -> None:
    assert issubclass(error, DTLSError)
    base = STANDARD_BASE[error]
    if base is not None:
        assert issubclass(error, base)


def test_every_exported_exception_has_the_root() -> None:
    exported = [getattr(trio_dtls_server, name) for name in trio_dtls_server.__all__]
    errors = [item for item in exported if isinstance(item, type) and issubclass(item, Exception)]
    assert set(errors) == {DTLSError, *STANDARD_BASE} - {MalformedDatagram}
    assert all(issubclass(error, DTLSError) for error in errors)


def test_a_bind_failure_is_still_an_oserror_with_its_errno() -> None:
    error = ServerBindError(98, "cannot bind UDP 127.0.0.1:1: Address already in use")
    assert error.errno == 98
    assert error.strerror == "cannot bind UDP 127.0.0.1:1: Address already in use"


async def test_a_closed_connection_is_caught_as_trio_broken_resource_error() -> None:
    """What ``trio.DTLSChannel`` users write, ``except trio.BrokenResourceError``, works."""
    seen: list[str] = []

    async def handler(connection: DTLSConnection) -> None:
        try:
            while True:
                await connection.receive()
        except trio.BrokenResourceError as error:
            assert isinstance(error, ConnectionClosed)
            seen.append(error.reason)

    async with serving(DTLSServer(psk={IDENTITY: KEY}, handler=handler)) as running:
        client = await DTLSClient.connect(*running.address, identity=IDENTITY, key=KEY)
        await client.aclose()  # close_notify
        with trio.fail_after(10):
            while not seen:
                await trio.sleep(0.01)
    assert seen == ["the peer sent close_notify"]


@pytest.mark.parametrize(
    ("settings", "fields"),
    [
        ({"mtu": 5}, ("mtu",)),
        ({"max_peers": 0}, ("max_peers",)),
        ({"idle_timeout": -1.0}, ("idle_timeout",)),
        ({"receive_buffer": 1}, ("receive_buffer",)),
        ({"max_datagram_size": 1}, ("max_datagram_size",)),
    ],
)
def test_a_refused_setting_names_its_field(
    settings: dict[str, object], fields: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as refused:
        ServerConfig(**settings)  # type: ignore[arg-type]
    assert refused.value.fields == fields
    assert str(refused.value) == f"{fields[0]} {refused.value.problem}"


def test_a_pair_of_timers_is_named_together() -> None:
    with pytest.raises(ConfigError) as refused:
        RetransmitPolicy(initial=5.0, maximum=1.0)
    assert refused.value.fields == ("initial", "maximum")
    assert str(refused.value) == "retransmission timers need 0 < initial <= maximum"
