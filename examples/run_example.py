"""The example runner: Qt's DTLS server and K of Qt's DTLS clients, side by side, in one nursery.

    python examples/run_example.py                 # 3 clients, 3 pings each, 0.5 s apart
    python examples/run_example.py --clients 5 --pings 10 --interval 0.1

It starts the server of ``secure_udp_server.py`` on a free loopback port, then K associations
of ``secure_udp_client.py``; every line is prefixed with the side that printed it
(``server |`` or ``client |``).  Both sides print from ``on_event`` callbacks, which run at
the moment things happen (before the server sends the reply to a ping, before it sends its
last handshake flight), so the lines read in causal order: a ping's ``A message from`` line
comes before the client's ACK line, the server's PSK-identity line before the client's
``encrypted`` line.  Once every client has its replies, the clients close (each
sends close_notify), the server stops, and a summary counts handshakes, messages, ACKs and
errors.  The exit status is 0 only if every ping was answered with the exact
``to (addr:port): ACK`` and no error was reported.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import trio
from secure_udp_client import describe as describe_client_event
from secure_udp_client import run_association
from secure_udp_server import describe as describe_server_event

from trio_dtls_server import (
    DTLSServer,
    HandshakeError,
    ServerEvent,
)
from trio_dtls_server.qt import QT_DEMO_IDENTITY_HINT, QT_DEMO_KEY

#: Enough of each DTLS datagram to see its record header (type, version, epoch, sequence).
HEX_BYTES = 13


@dataclass
class Tally:
    """What the runner counts while it prints."""

    pings_expected: int
    acks: int = 0
    server_errors: int = 0
    client_errors: int = 0
    problems: list[str] = field(default_factory=list)
    #: Associations that completed their pings and closed, and how many close_notify the server
    #: has reported: the runner stops the server once it has seen them all.
    clients_closed: int = 0
    closes_seen: int = 0
    all_closes_seen: trio.Event = field(default_factory=trio.Event)

    def note_close(self) -> None:
        if self.closes_seen >= self.clients_closed:
            self.all_closes_seen.set()


def say(side: str, line: str) -> None:
    print(f"{side:>7} | {line}", flush=True)


async def run(host: str, clients: int, pings: int, interval: float) -> Tally:
    """Server and clients in one nursery; returns the counts (the summary is printed)."""
    tally = Tally(pings_expected=clients * pings)

    def on_server_event(event: ServerEvent) -> None:
        say("server", describe_server_event(event, hex_bytes=HEX_BYTES))
        if event.severity == "error":
            tally.server_errors += 1
        if event.code == "remote_closed":  # a client's close_notify
            tally.closes_seen += 1
            tally.note_close()

    # on_event, not a task reading server.events(): a task would print a ping's line only
    # when it next runs, by which time the client may have printed the ACK.
    server = DTLSServer(QT_DEMO_KEY, identity_hint=QT_DEMO_IDENTITY_HINT, on_event=on_server_event)

    def on_client_event(event: ServerEvent) -> None:
        say("client", describe_client_event(event, hex_bytes=HEX_BYTES))
        if event.severity == "error":
            tally.client_errors += 1

    async def one_client(number: int, port: int) -> None:
        name = f"Alice (clone number {number})"
        try:
            local_port, replies = await run_association(
                host, port, name, pings=pings, interval=interval, on_event=on_client_event
            )
        except HandshakeError as error:
            tally.problems.append(str(error))
            return
        tally.clients_closed += 1
        # The server names the client's address as it saw it: on loopback, the server's host.
        expected = f"to ({host}:{local_port}): ACK".encode()
        tally.acks += replies.count(expected)
        tally.problems.extend(f"{name}: unexpected reply {r!r}" for r in replies if r != expected)
        if len(replies) < pings:
            tally.problems.append(f"{name}: only {len(replies)} of {pings} replies")

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve, host, 0)
        async with trio.open_nursery() as client_nursery:
            for number in range(clients):
                client_nursery.start_soon(one_client, number, port)
        # Let the server report every client's close_notify, then stop it.
        tally.note_close()
        with trio.move_on_after(5):
            await tally.all_closes_seen.wait()
        statistics = server.statistics()
        await server.aclose()
        nursery.cancel_scope.cancel()

    failed = sum(statistics.handshakes_failed.values())
    errors = tally.server_errors + tally.client_errors
    say("summary", f"handshakes: {statistics.handshakes_completed} completed, {failed} failed")
    say(
        "summary",
        f"messages:   {statistics.messages_received} pings received by the server, "
        f"{statistics.messages_sent} answered",
    )
    say("summary", f"ACKs:       {tally.acks} of {tally.pings_expected} pings answered")
    say(
        "summary",
        f"errors:     {errors} (server {tally.server_errors}, client {tally.client_errors})",
    )
    for problem in tally.problems:
        say("summary", f"  {problem}")
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Qt's DTLS server and client examples, side by side, on loopback."
    )
    parser.add_argument("--clients", type=int, default=3, help="client associations (3)")
    parser.add_argument("--pings", type=int, default=3, help="pings per client (3)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between pings (0.5)")
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) or ::1")
    arguments = parser.parse_args()
    if arguments.clients < 1 or arguments.pings < 1 or arguments.interval < 0:
        parser.error("--clients and --pings must be at least 1, --interval at least 0")
    tally = trio.run(run, arguments.host, arguments.clients, arguments.pings, arguments.interval)
    everything_acked = tally.acks == tally.pings_expected and not tally.problems
    no_errors = tally.server_errors == 0 and tally.client_errors == 0
    return 0 if everything_acked and no_errors else 1


if __name__ == "__main__":
    sys.exit(main())
