"""The command line: ``trio-dtls-server serve`` (Qt's server example) and ``client`` (Qt's client).

``serve`` runs a :class:`~trio_dtls_server.DTLSServer` in the foreground and prints its events,
one per line (:mod:`._display`).  ``client`` runs Qt's ``DtlsAssociation`` example: K
associations, each pinging the server and printing the replies.

Both stop the Trio way: a signal receiver task cancels the nursery, and everything inside shuts
down as cancellation unwinds -- the server sends close_notify to every peer, each client
association sends close_notify to the server.  ``serve --psk-file`` also listens for SIGHUP and
re-reads the file (:meth:`DTLSServer.reload_psk_on_signal`): established peers keep their
sessions, and a file that does not parse leaves the old keys in force.

Credentials: ``serve`` uses PSKs (``--psk-hex``, ``--psk-file``; Qt's public demo key when
neither is given) and/or a certificate (``--certificate`` ...).  With a certificate and no PSK
option it serves certificate clients only, and says so.  ``client`` likewise uses Qt's demo key
unless it is given ``--ca`` (verify the server's certificate) without ``--psk-hex``: then it
offers certificate suites only.

Exit codes (the same for both commands):

* 0 -- ``serve`` stopped by SIGINT/SIGTERM; ``client`` got every reply it waited for;
* 1 -- a failure at run time: bind failure, a handshake that failed or timed out, a missing
  reply, a close_notify from the server;
* 2 -- the command line is wrong: unknown option, malformed ``--psk-hex`` or ``--psk-file``,
  a certificate, key or CA file that cannot be used, options that contradict each other, a
  cipher choice that leaves no suite, a limit out of range;
* 130 / 143 -- ``client`` interrupted by SIGINT / SIGTERM (128 + the signal number, as shells
  report it): the associations were closed with close_notify before their pings were done.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import trio
from OpenSSL import SSL
from prometheus_client import CollectorRegistry

from ._certificates import (
    CertificateConfig,
    CertificateError,
    ClientCertificateMode,
    use_client_credentials,
)
from ._client import DTLSClient, HandshakeError
from ._codes import EventCode
from ._config import (
    DEFAULT_PORT,
    ServerConfig,
)
from ._connection import ConnectionClosed
from ._display import Display
from ._errors import ConfigError
from ._events import ErrorEvent, InfoEvent, ServerEvent, WarningEvent
from ._metrics import metrics_registry, serve_metrics
from ._openssl import new_dtls_context, openssl_error_reason
from ._probe import probe
from ._profiles import CipherConfigError, CipherStringError, client_cipher_string
from ._psk import PskFileError, PskFileStore, PskSource, parse_psk_hex
from ._server import DTLSServer, ServerBindError
from ._session import RetransmitPolicy
from ._supervisor import Supervisor, WorkerStartError, available_cpus, unsupported_message
from ._transport import reuseport_balances
from ._worker import DisplaySettings
from .qt import QT_DEMO_IDENTITY_HINT, QT_DEMO_KEY

__all__ = ["build_parser", "main"]

PROGRAM = "trio-dtls-server"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Qt's client names its associations from this template; ``%1`` is the clone number.
QT_IDENTITY_TEMPLATE = "Alice (clone number %1)"
#: Qt's client pings every 5 seconds.
QT_PING_INTERVAL = 5.0

_UNSET: Any = object()


class UsageError(Exception):
    """A command-line value that cannot be used; printed as one line, exit code 2."""


# -- argument types ----------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 0 and 65535")
    return port


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, separator, port_text = text.rpartition(":")
    if not separator:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", _port(port_text)


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _whole_number(text: str, minimum: int, requirement: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be {requirement}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


def _connection_id_length(text: str) -> int:
    """``--cid-length``: 0 (off) to 255 bytes (RFC 9146's ``opaque cid<0..255>``)."""
    value = _whole_number(text, 0, "0 or more")
    if value > 255:
        raise argparse.ArgumentTypeError(f"{value} must be at most 255 (0 turns CIDs off)")
    return value


def _on_off(text: str) -> bool:
    value = text.lower()
    if value in {"on", "yes", "true", "1"}:
        return True
    if value in {"off", "no", "false", "0"}:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not 'on' or 'off'")


def _float_or_none(text: str) -> float | None:
    return None if text.lower() in {"none", "never", "off"} else _non_negative_float(text)


def _int_or_auto(text: str) -> int | None:
    return None if text.lower() == "auto" else _positive_int(text)


def _workers(text: str) -> int:
    """``--workers``: a count, or ``auto`` for the CPUs this process may use."""
    return available_cpus() if text.lower() == "auto" else _positive_int(text)


# -- the ServerConfig options ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigOption:
    """One ``serve`` option that sets a :class:`ServerConfig` (or :class:`RetransmitPolicy`)
    field; ``target`` is the field name, ``retransmit.<name>`` for the policy's fields."""

    flag: str
    target: str
    parse: Callable[[str], Any]
    metavar: str
    help: str


#: Every ServerConfig field except ``identity_hint`` (which has Qt's default, see ``serve``).
CONFIG_OPTIONS: tuple[ConfigOption, ...] = (
    ConfigOption(
        "--ciphers",
        "ciphers",
        str,
        "LIST",
        "a cipher profile ('default': AEAD suites only; 'iot': adds RFC 7925's CCM_8; "
        "'compat': adds CBC suites) or an OpenSSL cipher string",
    ),
    ConfigOption(
        "--mtu",
        "mtu",
        _int_or_auto,
        "BYTES",
        "largest handshake datagram we send; 'auto' = 1472 on IPv4, 1452 on IPv6",
    ),
    ConfigOption(
        "--retransmit-initial",
        "retransmit.initial",
        _non_negative_float,
        "SECONDS",
        "first handshake retransmission after this long (then doubling)",
    ),
    ConfigOption(
        "--retransmit-max",
        "retransmit.maximum",
        _non_negative_float,
        "SECONDS",
        "longest wait between handshake retransmissions",
    ),
    ConfigOption(
        "--retransmit-count",
        "retransmit.max_retransmissions",
        _non_negative_int,
        "N",
        "unanswered retransmissions before a handshake fails",
    ),
    ConfigOption(
        "--handshake-timeout",
        "handshake_timeout",
        _non_negative_float,
        "SECONDS",
        "a handshake not finished this long after the verified ClientHello fails",
    ),
    ConfigOption(
        "--idle-timeout",
        "idle_timeout",
        _float_or_none,
        "SECONDS",
        "close (with close_notify) a peer silent this long; 'none' = never",
    ),
    ConfigOption("--max-peers", "max_peers", _positive_int, "N", "peers held at once"),
    ConfigOption(
        "--max-handshakes", "max_handshakes", _positive_int, "N", "handshakes in flight at once"
    ),
    ConfigOption(
        "--evict-idle-after",
        "evict_idle_after",
        _float_or_none,
        "SECONDS",
        "when the peer table is full, a new client may evict a peer idle this long; "
        "'none' = never evict",
    ),
    ConfigOption(
        "--peer-queue-size",
        "peer_queue_size",
        _positive_int,
        "N",
        "datagrams queued per peer before more are dropped",
    ),
    ConfigOption(
        "--max-datagram-size",
        "max_datagram_size",
        _positive_int,
        "BYTES",
        "larger datagrams are dropped unread",
    ),
    ConfigOption(
        "--receive-buffer",
        "receive_buffer",
        _positive_int,
        "BYTES",
        "the socket's receive buffer, room for bursts (Linux caps it at net.core.rmem_max)",
    ),
    ConfigOption(
        "--cookie-rotation",
        "cookie_rotation",
        _non_negative_float,
        "SECONDS",
        "how often the cookie secret changes (the previous one stays valid one more period)",
    ),
    ConfigOption(
        "--max-auth-failures",
        "max_auth_failures",
        _positive_int,
        "N",
        "records failing authentication from one peer's address per window before the "
        "server warns of forgeries (then counts without logging each; the peer is still "
        "served)",
    ),
    ConfigOption(
        "--auth-failure-window",
        "auth_failure_window",
        _non_negative_float,
        "SECONDS",
        "the window of --max-auth-failures (and how long its warning quiets the log)",
    ),
    ConfigOption(
        "--psk-lookup-timeout",
        "psk_lookup_timeout",
        _non_negative_float,
        "SECONDS",
        "how long an asynchronous PSK store may take to answer",
    ),
    ConfigOption(
        "--session-resumption",
        "session_resumption",
        _on_off,
        "on|off",
        "let returning clients resume their session (an abbreviated handshake)",
    ),
    ConfigOption(
        "--session-lifetime",
        "session_lifetime",
        _non_negative_float,
        "SECONDS",
        "an older session is not resumed",
    ),
    ConfigOption(
        "--release-openssl",
        "release_openssl",
        _on_off,
        "on|off",
        "after an AEAD handshake, free OpenSSL's connection and protect records ourselves",
    ),
    ConfigOption(
        "--cid-length",
        "connection_id_length",
        _connection_id_length,
        "BYTES",
        "RFC 9146 connection IDs: length of the CID issued to clients that offer one (their "
        "association then survives an address change); 0 turns them off",
    ),
    ConfigOption(
        "--event-buffer",
        "event_buffer",
        _positive_int,
        "N",
        "events buffered for the display; beyond it events are dropped (and counted)",
    ),
)


def _dest(option: ConfigOption) -> str:
    return option.flag.removeprefix("--").replace("-", "_")


def _default_of(target: str) -> Any:
    if target.startswith("retransmit."):
        return getattr(RetransmitPolicy(), target.removeprefix("retransmit."))
    return getattr(ServerConfig(), target)


def _describe_default(value: Any, option: ConfigOption) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "auto" if option.parse is _int_or_auto else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_from_arguments(arguments: argparse.Namespace) -> ServerConfig:
    """A :class:`ServerConfig` from the parsed ``serve`` options (defaults where not given)."""
    settings: dict[str, Any] = {}
    retransmit: dict[str, Any] = {}
    for option in CONFIG_OPTIONS:
        value = getattr(arguments, _dest(option))
        if value is _UNSET:
            continue
        if option.target.startswith("retransmit."):
            retransmit[option.target.removeprefix("retransmit.")] = value
        else:
            settings[option.target] = value
    hint = arguments.identity_hint
    settings["identity_hint"] = hint or None
    try:
        if retransmit:
            try:
                settings["retransmit"] = RetransmitPolicy(**retransmit)
            except ConfigError as error:  # its fields are ServerConfig's retransmit.*
                fields = tuple(f"retransmit.{field}" for field in error.fields)
                raise ConfigError(fields, error.problem) from None
        return ServerConfig(**settings)
    except ConfigError as error:
        raise UsageError(_name_the_option(error)) from None


def _name_the_option(error: ConfigError) -> str:
    """ServerConfig's complaint, naming the option(s) of the field(s) it names."""
    flags = [
        option.flag for field in error.fields for option in CONFIG_OPTIONS if option.target == field
    ]
    if not flags:
        return str(error)
    if len(flags) == 1:
        return f"{flags[0]} {error.problem}"
    return f"{'/'.join(flags)}: {error.problem}"


# -- the parser --------------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


def _add_display_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="'text': one line per event, coloured like Qt's window on a terminal (never "
        "when NO_COLOR is set); 'json': one JSON object per line with time, severity, code, "
        "message, peer (default: text)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings and errors (and the listening line / the summary)",
    )
    parser.add_argument(
        "--hex-limit",
        type=_non_negative_int,
        default=0,
        metavar="BYTES",
        help="show at most this many bytes of each DTLS datagram in hex; 0 = all, as Qt "
        "(default: 0)",
    )


def _add_certificate_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "certificates",
        "A certificate adds certificate suites; each client picks PSK or certificate by the "
        "suites it offers.  Without --psk-hex or --psk-file the server then serves "
        "certificate clients only.",
    )
    group.add_argument(
        "--certificate",
        metavar="PEM",
        default=None,
        help="the server's certificate; certificates after the first in the file are sent as "
        "its chain, and the file may hold the private key too (default: none: PSK only)",
    )
    group.add_argument(
        "--private-key",
        metavar="PEM",
        default=None,
        help="the certificate's private key (default: read from the --certificate file)",
    )
    group.add_argument(
        "--chain",
        metavar="PEM",
        default=None,
        help="more intermediate certificates to send with it (default: none)",
    )
    group.add_argument(
        "--client-certificates",
        choices=["none", "optional", "required"],
        default="none",
        help="'none': never ask certificate clients for a certificate; 'optional': ask, and "
        "verify one if sent; 'required': refuse a certificate client without a valid one.  "
        "PSK clients are never asked (their key authenticates them) (default: none)",
    )
    group.add_argument(
        "--client-ca",
        metavar="PEM",
        default=None,
        help="CA bundle that client certificates must chain to; needed by 'optional' and "
        "'required' (default: none)",
    )


def _add_server_address(parser: argparse.ArgumentParser) -> None:
    """``HOST [PORT]``: the server a ``client`` or ``probe`` talks to."""
    parser.add_argument("host", metavar="HOST", help="the server's address or name")
    parser.add_argument(
        "port",
        metavar="PORT",
        type=_port,
        nargs="?",
        default=DEFAULT_PORT,
        help=f"the server's port (default: {DEFAULT_PORT})",
    )


def _add_server_check_options(parser: argparse.ArgumentParser) -> None:
    """How a ``client`` or ``probe`` checks a certificate server, and what it shows it."""
    certificates = parser.add_argument_group("certificates")
    certificates.add_argument(
        "--ca",
        metavar="PEM",
        default=None,
        help="CA bundle the server's certificate must chain to; offers certificate suites "
        "(default: none: PSK suites only, and a server certificate is never accepted)",
    )
    certificates.add_argument(
        "--server-name",
        metavar="NAME",
        default=None,
        help="with --ca: the name (or IP address) the server's certificate must carry "
        "(default: HOST)",
    )
    certificates.add_argument(
        "--certificate",
        metavar="PEM",
        default=None,
        help="our own certificate, for servers that ask for one; needs --ca (default: none)",
    )
    certificates.add_argument(
        "--private-key",
        metavar="PEM",
        default=None,
        help="that certificate's private key (default: read from the --certificate file)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``trio-dtls-server`` argument parser, with its ``serve`` and ``client`` commands."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="A DTLS 1.2 PSK server and client on Trio: Qt's DTLS server and client "
        "examples, on the command line.",
        epilog="Exit codes: 0 success (serve: stopped by SIGINT/SIGTERM); 1 run-time failure "
        "(bind, handshake, missing reply, close_notify from the server); 2 bad command line, "
        "key or certificate; 130/143 client interrupted by SIGINT/SIGTERM.",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the server in the foreground (Qt's DTLS server example)",
        description="Run the DTLS server in the foreground.  It prints Qt's line 'Server is "
        "listening on address H and port P' once bound, then one event per line.  SIGINT "
        "(Ctrl-C) or SIGTERM sends close_notify to every peer and exits 0.  With --psk-file, "
        "SIGHUP re-reads the file: established peers stay connected, new handshakes use the "
        "new keys, and a file that does not parse is reported and the old keys stay.",
        formatter_class=_Formatter,
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind, IPv4 or IPv6 (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"UDP port; 0 picks a free one (default: {DEFAULT_PORT}, Qt's)",
    )
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument(
        "--psk-hex",
        metavar="HEX",
        help="one pre-shared key, in hex, for every identity (default: Qt's public demo key "
        f"{QT_DEMO_KEY.hex()}, with a warning; no PSK at all when --certificate is given)",
    )
    keys.add_argument(
        "--psk-file",
        metavar="PATH",
        help="'identity,hexkey' lines (blank lines and # comments skipped); identities not "
        "in the file are refused.  SIGHUP re-reads the file without dropping established peers",
    )
    serve.add_argument(
        "--identity-hint",
        default=QT_DEMO_IDENTITY_HINT,
        metavar="TEXT",
        help="PSK identity hint sent to clients; '' sends none "
        f"(default: {QT_DEMO_IDENTITY_HINT!r}, Qt's)",
    )
    serve.add_argument(
        "--metrics",
        type=_host_port,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: none)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="worker processes on the one address and port (Linux SO_REUSEPORT: the kernel "
        "keeps each client on one worker); a supervisor process owns the sockets, restarts a "
        "worker that dies on the same socket, and passes SIGTERM/SIGINT/SIGHUP to every worker. "
        "'auto' = the CPUs this process may use.  The limits below apply per worker, and each "
        "worker's lines start with [worker K] (default: 1: no supervisor)",
    )
    serve.add_argument(
        "--stats-interval",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="print the server's statistics every SECONDS; 0 = never (default: 0)",
    )
    _add_certificate_options(serve)
    _add_display_options(serve)
    limits = serve.add_argument_group(
        "limits and timers (ServerConfig)",
        "With --workers N every worker has these limits of its own: --max-peers 20000 with 4 "
        "workers holds up to 80000 peers in all.",
    )
    for option in CONFIG_OPTIONS:
        default = _describe_default(_default_of(option.target), option)
        limits.add_argument(
            option.flag,
            dest=_dest(option),
            type=option.parse,
            default=_UNSET,
            metavar=option.metavar,
            help=f"{option.help} (default: {default})",
        )

    client = commands.add_parser(
        "client",
        help="run Qt's DTLS client example: K associations pinging a server",
        description="Qt's DtlsAssociation example: each association has its own UDP socket, "
        "uses its name as PSK identity, pings the server every --interval seconds with 'I am "
        "<name>, please, accept our ping <n>' and prints every reply.  Exit 0 when every "
        "association got its --pings replies; 1 on a handshake failure or timeout, a missing "
        "reply or a close_notify from the server; SIGINT (Ctrl-C) / SIGTERM close every "
        "association with close_notify and exit 130 / 143.",
        formatter_class=_Formatter,
    )
    _add_server_address(client)
    client.add_argument(
        "--connections",
        type=_positive_int,
        default=1,
        metavar="K",
        help="associations to run at once, each with its own socket (default: 1)",
    )
    client.add_argument(
        "--identity",
        default=QT_IDENTITY_TEMPLATE,
        metavar="TEMPLATE",
        help="PSK identity and display name; %%1 becomes the clone number, from 0 "
        f"(default: {QT_IDENTITY_TEMPLATE.replace('%', '%%')!r})",
    )
    client.add_argument(
        "--psk-hex",
        metavar="HEX",
        default=None,
        help=f"the pre-shared key in hex (default: Qt's demo key {QT_DEMO_KEY.hex()}; with "
        "--ca and no --psk-hex the client uses no PSK and offers certificate suites only)",
    )
    client.add_argument(
        "--interval",
        type=_non_negative_float,
        default=QT_PING_INTERVAL,
        metavar="SECONDS",
        help="seconds between pings; ping 0 goes right after the handshake "
        f"(default: {QT_PING_INTERVAL:g}, as Qt)",
    )
    client.add_argument(
        "--pings",
        type=_positive_int,
        default=None,
        metavar="P",
        help="pings per association, then close and exit (default: forever, as Qt)",
    )
    client.add_argument(
        "--handshake-timeout",
        type=_non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="give up a handshake after this long; it retransmits after 1 s, 2 s, 4 s, ... "
        "meanwhile (default: 30)",
    )
    client.add_argument(
        "--reply-timeout",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="with --pings: fail if the replies are not all in this long after the last ping "
        "(default: 10)",
    )
    client.add_argument(
        "--ciphers",
        default="default",
        metavar="LIST",
        help="a cipher profile ('default', 'iot', 'compat': its PSK suites when there is a "
        "key, its certificate suites with --ca) or an OpenSSL cipher string to offer "
        "(default: 'default', the AEAD suites)",
    )
    client.add_argument(
        "--cid",
        action="store_true",
        help="offer RFC 9146 connection IDs (send-only: we put the server's CID on our "
        "records, so the association survives a change of our address or port) (default: off)",
    )
    _add_server_check_options(client)
    _add_display_options(client)

    probe = commands.add_parser(
        "probe",
        help="health check: one handshake and one message; exit 0 if served",
        description="Check that a server serves: handshake with the given credentials, send "
        "one message, wait for one reply, close with close_notify, all within --timeout.  "
        "Prints one line, 'healthy: ...' (exit 0) or 'unhealthy (KIND): ...' naming the cause "
        "(exit 1): refused (nothing listens there), no_answer, handshake_failed (the alert is "
        "named), no_reply, closed, unexpected_reply.  For load balancers and Kubernetes.",
        formatter_class=_Formatter,
    )
    _add_server_address(probe)
    probe.add_argument(
        "--identity",
        default="probe",
        metavar="ID",
        help="PSK identity (default: 'probe'; give one the server's store knows)",
    )
    probe.add_argument(
        "--psk-hex",
        metavar="HEX",
        default=None,
        help=f"the pre-shared key in hex (default: Qt's demo key {QT_DEMO_KEY.hex()}; with "
        "--ca and no --psk-hex the probe offers certificate suites only)",
    )
    probe.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="the whole probe's budget: handshake, message and reply (default: 5)",
    )
    probe.add_argument(
        "--message",
        default="probe",
        metavar="TEXT",
        help="the message to send (default: 'probe')",
    )
    probe.add_argument(
        "--expect",
        default=None,
        metavar="TEXT",
        help="text the reply must contain, e.g. ACK for Qt's handler (default: any reply)",
    )
    probe.add_argument(
        "--ciphers",
        default="default",
        metavar="LIST",
        help="a cipher profile or an OpenSSL cipher string to offer (default: 'default')",
    )
    _add_server_check_options(probe)
    return parser


# -- serve ---------------------------------------------------------------------------------------


def _certificate_config(arguments: argparse.Namespace) -> CertificateConfig | None:
    """The ``--certificate`` family as a :class:`CertificateConfig` (None without one).

    Contradictions are refused here, in the words of the command line; the files themselves
    are read and checked by :class:`DTLSServer` (a :class:`CertificateError` naming the file).
    """
    mode: ClientCertificateMode = arguments.client_certificates
    if arguments.certificate is None:
        for flag, value in (
            ("--private-key", arguments.private_key),
            ("--chain", arguments.chain),
            ("--client-ca", arguments.client_ca),
        ):
            if value is not None:
                raise UsageError(f"{flag} needs --certificate (the server's own certificate)")
        if mode != "none":
            raise UsageError(
                f"--client-certificates {mode} needs --certificate: only certificate suites "
                "ask clients for a certificate"
            )
        return None
    if mode != "none" and arguments.client_ca is None:
        raise UsageError(
            f"--client-certificates {mode} needs --client-ca, the CA bundle client "
            "certificates must chain to"
        )
    if mode == "none" and arguments.client_ca is not None:
        raise UsageError("--client-ca needs --client-certificates optional or required")
    return CertificateConfig.from_options(
        certificate=arguments.certificate,
        private_key=arguments.private_key,
        chain=arguments.chain,
        client_certificates=mode,
        client_ca=arguments.client_ca,
    )


def _server_credentials(
    arguments: argparse.Namespace,
) -> tuple[PskSource | None, CertificateConfig | None, list[ServerEvent]]:
    """The PSK source, the certificate, and the notes to show after the listening line.

    The default is Qt's public demo key (with a warning), unless a certificate is given: a
    server that was handed a certificate and no key serves certificate clients only.
    """
    certificate = _certificate_config(arguments)
    if arguments.psk_file is not None:
        # A store that reloads: see reload_psk_on_signal in run_serve.
        return PskFileStore(arguments.psk_file), certificate, []
    if arguments.psk_hex is not None:
        return parse_psk_hex(arguments.psk_hex), certificate, []
    if certificate is not None:
        note = InfoEvent(
            EventCode.CERTIFICATE_ONLY,
            "No --psk-hex or --psk-file: serving certificate clients only (PSK clients are "
            f"refused); client certificates: {certificate.client_certificates}",
        )
        return None, certificate, [note]
    warning = WarningEvent(
        EventCode.DEMO_KEY,
        f"using Qt's demo key {QT_DEMO_KEY.hex()}: it is public, anyone can connect; "
        "give --psk-hex or --psk-file for anything but a demo",
    )
    return QT_DEMO_KEY, None, [warning]


async def _print_events(
    stream: trio.MemoryReceiveChannel[ServerEvent],
    display: Display,
    listening_shown: trio.Event,
    after_listening: Sequence[ServerEvent] = (),
) -> None:
    """Print the event stream; ``after_listening`` right after Qt's listening line (which
    scripts wait for), before whatever the server said next, so the order never varies."""
    async for event in stream:
        display.show(event)
        if event.code == EventCode.LISTENING:
            for note in after_listening:
                display.show(note)
            listening_shown.set()


def _show_queued(stream: trio.MemoryReceiveChannel[ServerEvent], display: Display) -> None:
    """Show the events still queued in ``stream`` once its printer was cancelled.

    The shutdown itself reports events (each peer's close_notify, the socket closing) after
    the printer task is gone; without this they would be lost from the output.
    """
    while True:
        try:
            display.show(stream.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return


async def _print_statistics(server: DTLSServer, display: Display, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        display.show_statistics(server.statistics())


async def run_serve(arguments: argparse.Namespace, display: Display, errors: TextIO) -> int:
    """The ``serve`` command; returns the exit code."""
    try:
        psk, certificate, startup_notes = _server_credentials(arguments)
        config = config_from_arguments(arguments)
        server = DTLSServer(psk, config=config, certificate=certificate)
    except (PskFileError, UsageError, CertificateError) as error:
        _one_line(errors, str(error))
        return EXIT_USAGE
    except CipherStringError as error:  # a cipher string OpenSSL does not understand
        _one_line(errors, f"--ciphers: OpenSSL refuses {config.ciphers!r}: {error}")
        return EXIT_USAGE
    except SSL.Error as error:  # OpenSSL refused a credential (rare: the files were checked)
        _one_line(errors, f"cannot configure the server: {openssl_error_reason(error)}")
        return EXIT_USAGE
    except ValueError as error:  # a configuration the server refuses (e.g. no usable suite)
        _one_line(errors, f"cannot configure the server: {error}")
        return EXIT_USAGE
    if arguments.workers > 1:
        if not reuseport_balances():
            _one_line(errors, unsupported_message(arguments.workers))
            return EXIT_USAGE
        return await _run_supervisor(
            arguments, display, errors, psk, certificate, config, startup_notes
        )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server.events(wanted=display.event_filter()) as stream:
            async with trio.open_nursery() as nursery:
                listening_shown = trio.Event()
                nursery.start_soon(_print_events, stream, display, listening_shown, startup_notes)
                if isinstance(psk, PskFileStore):
                    # Installed before the listening line: a script that waits for that line
                    # may send SIGHUP at once, and SIGHUP's default action ends the process.
                    await nursery.start(server.reload_psk_on_signal)
                try:
                    await nursery.start(server.serve, arguments.host, arguments.port)
                except ServerBindError as error:
                    nursery.cancel_scope.cancel()
                    _one_line(errors, error.strerror or str(error))
                    return EXIT_FAILURE
                if arguments.metrics is not None:
                    registry = metrics_registry(lambda: [server.statistics()])
                    if not await _start_metrics(nursery, registry, arguments, display, errors):
                        return EXIT_FAILURE
                if arguments.stats_interval > 0:
                    nursery.start_soon(_print_statistics, server, display, arguments.stats_interval)
                async for signal_number in signals:
                    name = signal.Signals(signal_number).name
                    display.show(
                        InfoEvent(
                            EventCode.SHUTDOWN,
                            f"{name} received: shutting down, close_notify to "
                            f"{server.peer_count} peer(s)",
                        )
                    )
                    break
                # Cancels the server's nursery: each peer task sends its close_notify as it
                # unwinds, then the socket closes.  aclose() returns once serve() has.
                await server.aclose()
                nursery.cancel_scope.cancel()
            _show_queued(stream, display)
    return EXIT_OK


async def _start_metrics(
    nursery: trio.Nursery,
    registry: CollectorRegistry,
    arguments: argparse.Namespace,
    display: Display,
    errors: TextIO,
) -> bool:
    """``--metrics``: serve ``registry`` in ``nursery``; False (and one error line) if it
    cannot listen, after cancelling ``nursery``."""
    host, port = arguments.metrics
    try:
        bound = await nursery.start(serve_metrics, registry, host, port)
    except OSError as error:
        nursery.cancel_scope.cancel()
        _one_line(errors, f"--metrics: cannot listen on {host}:{port}: {error.strerror or error}")
        return False
    display.show(
        InfoEvent(
            EventCode.METRICS,
            f"Prometheus metrics on http://{_url_host(bound[0])}:{bound[1]}/metrics",
        )
    )
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _run_supervisor(
    arguments: argparse.Namespace,
    display: Display,
    errors: TextIO,
    psk: PskSource | None,
    certificate: CertificateConfig | None,
    config: ServerConfig,
    startup_notes: list[ServerEvent],
) -> int:
    """``serve --workers N`` (N > 1): this process supervises, N children serve.

    The supervisor prints the listening line once every worker serves, its own events
    (workers started and restarted) and the shutdown; each worker prints its events itself,
    on the same standard output, labelled ``[worker K]``.
    """
    supervisor = Supervisor(
        psk,
        workers=arguments.workers,
        config=config,
        certificate=certificate,
        display=DisplaySettings(
            log_format=arguments.log_format,
            quiet=arguments.quiet,
            hex_limit=arguments.hex_limit,
            stats_interval=arguments.stats_interval,
        ),
    )
    display.in_group = True
    signals_wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    with trio.open_signal_receiver(*signals_wanted) as signals:
        async with supervisor.events() as stream:
            async with trio.open_nursery() as nursery:
                listening_shown = trio.Event()
                group_note = InfoEvent(
                    EventCode.WORKERS,
                    f"{arguments.workers} workers on one SO_REUSEPORT port; limits are per worker",
                )
                nursery.start_soon(
                    _print_events, stream, display, listening_shown, [group_note, *startup_notes]
                )
                try:
                    await nursery.start(supervisor.serve, arguments.host, arguments.port)
                except (ServerBindError, WorkerStartError) as error:
                    nursery.cancel_scope.cancel()
                    text = error.strerror if isinstance(error, OSError) else None
                    _one_line(errors, text or str(error))
                    return EXIT_FAILURE
                with trio.move_on_after(1.0):
                    await listening_shown.wait()
                if arguments.metrics is not None:
                    registry = metrics_registry(
                        supervisor.worker_statistics,
                        retired=supervisor.retired_statistics,
                        worker_restarts=lambda: supervisor.restarts,
                    )
                    if not await _start_metrics(nursery, registry, arguments, display, errors):
                        return EXIT_FAILURE  # the cancelled nursery stops the workers
                async for signal_number in signals:
                    name = signal.Signals(signal_number).name
                    if signal_number == signal.SIGHUP:
                        if supervisor.reloads_psk:
                            count = supervisor.reload_psk()
                            message = f"{name} received: {count} worker(s) re-read the PSK file"
                        else:
                            message = f"{name} received: no --psk-file to re-read"
                        display.show(InfoEvent(EventCode.RELOAD, message))
                        continue
                    display.show(
                        InfoEvent(
                            EventCode.SHUTDOWN,
                            f"{name} received: shutting down {arguments.workers} workers, "
                            "each sends close_notify to its peers",
                        )
                    )
                    break
                await supervisor.aclose()
                nursery.cancel_scope.cancel()
            _show_queued(stream, display)
    return EXIT_OK


def _one_line(errors: TextIO, message: str) -> None:
    """The single error line of a failed start: ``trio-dtls-server: error: <problem>``."""
    text = " ".join(message.split())  # never more than one line, whatever the OS said
    errors.write(f"{PROGRAM}: error: {text}\n")
    errors.flush()


# -- client ---------------------------------------------------------------------------------------


@dataclass
class AssociationResult:
    """How one client association went."""

    name: str
    pings_sent: int = 0
    replies: int = 0
    established: bool = False
    failure: str | None = None


@dataclass
class ClientRun:
    """Everything the associations share."""

    host: str
    port: int
    #: The PSK; None for a certificate-only client (``--ca`` without ``--psk-hex``).
    key: bytes | None
    interval: float
    pings: int | None
    handshake_timeout: float
    reply_timeout: float
    ciphers: str
    display: Display
    ca: str | None = None
    server_name: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    #: ``--cid``: offer RFC 9146 connection IDs (send-only).
    connection_id: bool = False
    results: list[AssociationResult] = field(default_factory=list)


def _association_name(template: str, number: int) -> str:
    return template.replace("%1", str(number))


async def _run_association(run: ClientRun, result: AssociationResult) -> None:
    """One of Qt's ``DtlsAssociation``: handshake, ping every interval, count the replies."""
    name, show = result.name, run.display.show
    try:
        client = await DTLSClient.connect(
            run.host,
            run.port,
            identity=name if run.key is not None else None,
            key=run.key,
            ciphers=run.ciphers,
            ca=run.ca,
            server_hostname=run.server_name or run.host,
            certificate=run.certificate,
            private_key=run.private_key,
            handshake_timeout=run.handshake_timeout,
            on_event=show,
            display_name=name,
            connection_id=run.connection_id,
        )
    except HandshakeError as error:  # already shown through on_event
        result.failure = str(error)
        return
    except OSError as error:
        result.failure = f"{name}: cannot reach {run.host}:{run.port}: {error.strerror or error}"
        show(ErrorEvent(EventCode.SOCKET_ERROR, result.failure))
        return
    result.established = True
    async with client:  # leaving it (also by cancellation) sends close_notify
        with trio.CancelScope() as replies_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ping, run, client, result, replies_scope)
                try:
                    while run.pings is None or result.replies < run.pings:
                        await client.receive()  # on_event shows it
                        result.replies += 1
                except ConnectionClosed as closed:
                    # The server's close_notify (shown by on_event as "shutdown alert
                    # received") or a fatal alert.
                    result.failure = f"{name}: {closed.reason}"
                nursery.cancel_scope.cancel()
        if replies_scope.cancelled_caught:
            missing = (run.pings or 0) - result.replies
            result.failure = (
                f"{name}: {missing} of {run.pings} pings not answered within "
                f"{run.reply_timeout:g} s of the last one"
            )
            show(ErrorEvent(EventCode.REPLY_TIMEOUT, result.failure))


async def _ping(
    run: ClientRun,
    client: DTLSClient,
    result: AssociationResult,
    replies_scope: trio.CancelScope,
) -> None:
    """Qt's ping timer: ping 0 at once, then one every ``interval`` seconds."""
    start = trio.current_time()
    number = 0
    while run.pings is None or number < run.pings:
        await trio.sleep_until(start + number * run.interval)
        message = f"I am {result.name}, please, accept our ping {number}"
        try:
            await client.send(message.encode("latin-1"))
        except ConnectionClosed:
            return  # the receiving side reports why
        result.pings_sent += 1
        number += 1
    replies_scope.deadline = trio.current_time() + run.reply_timeout


async def run_client(arguments: argparse.Namespace, display: Display, errors: TextIO) -> int:
    """The ``client`` command; returns the exit code."""
    usable, key = _checked_client_key(arguments, errors)
    if not usable:
        return EXIT_USAGE
    names = [_association_name(arguments.identity, n) for n in range(arguments.connections)]
    for name in names:
        try:
            name.encode("latin-1")
        except UnicodeEncodeError:
            _one_line(errors, f"--identity: {name!r} is not Latin-1 text (Qt's identities are)")
            return EXIT_USAGE
    run = ClientRun(
        host=arguments.host,
        port=arguments.port,
        key=key,
        interval=arguments.interval,
        pings=arguments.pings,
        handshake_timeout=arguments.handshake_timeout,
        reply_timeout=arguments.reply_timeout,
        ciphers=arguments.ciphers,
        display=display,
        results=[AssociationResult(name) for name in names],
        ca=arguments.ca,
        server_name=arguments.server_name,
        certificate=arguments.certificate,
        private_key=arguments.private_key,
        connection_id=arguments.cid,
    )
    interrupted: int | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal interrupted
                async for signal_number in signals:
                    interrupted = signal_number
                    open_count = sum(1 for r in run.results if r.established and not r.failure)
                    display.show(
                        InfoEvent(
                            EventCode.INTERRUPTED,
                            f"{signal.Signals(signal_number).name} received: closing "
                            f"{open_count} association(s) with close_notify",
                        )
                    )
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            async with trio.open_nursery() as associations:
                for result in run.results:
                    associations.start_soon(_run_association, run, result)
            nursery.cancel_scope.cancel()
    return _client_summary(run, interrupted)


def _checked_client_key(arguments: argparse.Namespace, errors: TextIO) -> tuple[bool, bytes | None]:
    """The key of a ``client`` or ``probe``, with every credential checked before anything
    runs: ``(True, key)``, or ``(False, None)`` after one error line (exit code 2)."""
    try:
        key = _client_key(arguments)
        _check_client_credentials(arguments, psk=key is not None)
    except (PskFileError, UsageError, CertificateError) as error:
        _one_line(errors, str(error))
    except CipherConfigError as error:
        _one_line(errors, f"--ciphers: {error}")
    except SSL.Error as error:  # OpenSSL refused a credential (rare: the files were checked)
        _one_line(errors, f"cannot use the client's credentials: {openssl_error_reason(error)}")
    else:
        return True, key
    return False, None


def _client_key(arguments: argparse.Namespace) -> bytes | None:
    """``--psk-hex``; Qt's demo key by default, no key for a ``--ca`` client without one."""
    if arguments.psk_hex is not None:
        return parse_psk_hex(arguments.psk_hex)
    return None if arguments.ca is not None else QT_DEMO_KEY


def _check_client_credentials(arguments: argparse.Namespace, *, psk: bool) -> None:
    """Read the certificate files and build the cipher list once, before any association
    starts, so a bad file or option is one line and exit code 2 rather than K failures."""
    if arguments.private_key is not None and arguments.certificate is None:
        raise UsageError("--private-key needs --certificate (the client's own certificate)")
    if arguments.certificate is not None and arguments.ca is None:
        raise UsageError(
            "--certificate needs --ca: a client certificate is only sent in certificate "
            "suites, and those need a CA to verify the server with"
        )
    if arguments.server_name is not None and arguments.ca is None:
        raise UsageError("--server-name needs --ca: it is checked against the server's certificate")
    cipher_string = client_cipher_string(
        arguments.ciphers, psk=psk, verify_server=arguments.ca is not None
    )
    try:
        context = new_dtls_context(server=False, ciphers=cipher_string)
    except SSL.Error as error:
        raise UsageError(
            f"--ciphers: OpenSSL refuses {arguments.ciphers!r}: {openssl_error_reason(error)}"
        ) from None
    use_client_credentials(
        context,
        ca=arguments.ca,
        certificate=arguments.certificate,
        private_key=arguments.private_key,
    )


def _client_summary(run: ClientRun, interrupted: int | None) -> int:
    results = run.results
    sent = sum(r.pings_sent for r in results)
    replies = sum(r.replies for r in results)
    failed = [r for r in results if r.failure is not None]
    summary = (
        f"Summary: {len(results)} association(s), "
        f"{sum(r.established for r in results)} handshake(s), "
        f"{sent} ping(s) sent, {replies} repl(ies) received, {len(failed)} failed"
    )
    run.display.show(InfoEvent(EventCode.SUMMARY, summary))
    if interrupted is not None:
        return 128 + interrupted
    if failed:
        return EXIT_FAILURE
    return EXIT_OK


# -- probe ----------------------------------------------------------------------------------------


async def run_probe(arguments: argparse.Namespace, out: TextIO, errors: TextIO) -> int:
    """The ``probe`` command: one line, exit 0 when served, 1 when not, 2 for a bad command."""
    usable, key = _checked_client_key(arguments, errors)
    if not usable:
        return EXIT_USAGE
    try:
        result = await probe(
            arguments.host,
            arguments.port,
            identity=arguments.identity if key is not None else None,
            key=key,
            message=arguments.message.encode("utf-8"),
            expect=None if arguments.expect is None else arguments.expect.encode("utf-8"),
            timeout=arguments.timeout,
            ciphers=arguments.ciphers,
            ca=arguments.ca,
            server_hostname=arguments.server_name,
            certificate=arguments.certificate,
            private_key=arguments.private_key,
        )
    except OSError as error:  # the name does not resolve, or no route to it
        errors.write(
            f"unhealthy (unreachable): {arguments.host}:{arguments.port} "
            f"{' '.join((error.strerror or str(error)).split())}\n"
        )
        return EXIT_FAILURE
    stream = out if result.healthy else errors
    stream.write(result.line + "\n")
    stream.flush()
    return EXIT_OK if result.healthy else EXIT_FAILURE


# -- entry point --------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return the exit code."""
    out = sys.stdout if stdout is None else stdout
    errors = sys.stderr if stderr is None else stderr
    arguments = build_parser().parse_args(argv)
    if arguments.command == "probe":
        return trio.run(run_probe, arguments, out, errors)
    # Events reach the terminal through the Display; keep the library's logging records from
    # also landing on stderr through logging's last-resort handler.
    library_logger = logging.getLogger("trio_dtls_server")
    silencer = logging.NullHandler()
    library_logger.addHandler(silencer)
    propagate, library_logger.propagate = library_logger.propagate, False
    display = Display(
        out,
        side="server" if arguments.command == "serve" else "client",
        log_format=arguments.log_format,
        quiet=arguments.quiet,
        hex_limit=arguments.hex_limit,
        always_show=frozenset({"listening", "summary"}),
    )
    command = run_serve if arguments.command == "serve" else run_client
    try:
        return trio.run(command, arguments, display, errors)
    except KeyboardInterrupt:
        # Ctrl-C before the signal receiver was installed (or after it was removed).
        return 128 + signal.SIGINT
    finally:
        # main() is also called in-process (tests, embedding): leave logging as it was.
        library_logger.removeHandler(silencer)
        library_logger.propagate = propagate
