"""trio_dtls_server: a DTLS 1.2 server (and client) for Trio, on pyOpenSSL.

Start here:

* :class:`DTLSServer` — ``await nursery.start(server.serve, host, port)``;
* :class:`DTLSConnection` — what your handler gets for each verified, handshaken peer;
* :class:`DTLSClient` — ``await DTLSClient.connect(host, port, identity=..., key=...)``;
* :class:`ServerConfig` — limits, timers and the cipher profile (:data:`PROFILES`);
* :func:`serve_workers` / :class:`Supervisor` — several worker processes on one port (Linux);
* PSK stores (:class:`MappingStore`, :class:`PskFileStore`, :class:`AsyncFunctionStore`, ...)
  and :class:`CertificateConfig` — the credentials;
* :mod:`trio_dtls_server.qt` -- the Qt example's demo key, identity hint and ACK handler;
* the events (:class:`InfoEvent`, :class:`WarningEvent`, :class:`ErrorEvent`,
  :class:`DatagramReceived`) and :meth:`DTLSServer.statistics`.
"""

import typing as _typing
import warnings as _warnings

from . import qt
from ._certificates import CertificateConfig, CertificateError, ClientCertificateMode
from ._client import DTLSClient, HandshakeError
from ._codes import DropReason, EventCode, FailureKind
from ._config import DEFAULT_CIPHERS, DEFAULT_PORT, ServerConfig
from ._connection import ConnectionClosed, DTLSConnection
from ._errors import ConfigError, DTLSError
from ._events import (
    DatagramReceived,
    ErrorEvent,
    EventFilter,
    InfoEvent,
    ServerEvent,
    WarningEvent,
    peer_info,
)
from ._metrics import METRICS, StatisticsCollector, metrics_registry, serve_metrics
from ._probe import ProbeFailure, ProbeResult, probe
from ._profiles import PROFILES, CipherConfigError, CipherProfile, CipherSelection
from ._psk import (
    AsyncFunctionStore,
    AsyncPskStore,
    MappingStore,
    PskFileError,
    PskFileStore,
    PskStore,
    SingleKeyStore,
    load_psk_file,
    parse_psk_file,
    parse_psk_hex,
    reload_on_signal,
)
from ._server import DTLSServer, Handler, ServerBindError
from ._session import RetransmitPolicy
from ._stats import StatisticsSnapshot
from ._supervisor import (
    Supervisor,
    WorkerExited,
    WorkerStartError,
    WorkersUnsupportedError,
    serve_workers,
)
from ._transport import DatagramTransport
from ._worker import DisplaySettings

__version__ = "0.1.0"

#: Names that left the top level for :mod:`trio_dtls_server.qt`; still reachable here, with a
#: DeprecationWarning, until the next minor release.
_MOVED_TO_QT = frozenset(qt.__all__)

if not _typing.TYPE_CHECKING:  # type checkers should report the old names as missing

    def __getattr__(name: str) -> object:
        if name in _MOVED_TO_QT:
            _warnings.warn(
                f"trio_dtls_server.{name} is deprecated: import it from trio_dtls_server.qt",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(qt, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_CIPHERS",
    "DEFAULT_PORT",
    "METRICS",
    "PROFILES",
    "AsyncFunctionStore",
    "AsyncPskStore",
    "CertificateConfig",
    "CertificateError",
    "CipherConfigError",
    "CipherProfile",
    "CipherSelection",
    "ClientCertificateMode",
    "ConfigError",
    "ConnectionClosed",
    "DTLSClient",
    "DTLSConnection",
    "DTLSError",
    "DTLSServer",
    "DatagramReceived",
    "DatagramTransport",
    "DisplaySettings",
    "DropReason",
    "ErrorEvent",
    "EventCode",
    "EventFilter",
    "FailureKind",
    "Handler",
    "HandshakeError",
    "InfoEvent",
    "MappingStore",
    "ProbeFailure",
    "ProbeResult",
    "PskFileError",
    "PskFileStore",
    "PskStore",
    "RetransmitPolicy",
    "ServerBindError",
    "ServerConfig",
    "ServerEvent",
    "SingleKeyStore",
    "StatisticsCollector",
    "StatisticsSnapshot",
    "Supervisor",
    "WarningEvent",
    "WorkerExited",
    "WorkerStartError",
    "WorkersUnsupportedError",
    "load_psk_file",
    "metrics_registry",
    "parse_psk_file",
    "parse_psk_hex",
    "peer_info",
    "probe",
    "reload_on_signal",
    "serve_metrics",
    "serve_workers",
]
