"""The OpenSSL floor: what one established server-side DTLS connection costs by itself.

``python -m benchmarks.floor --suite SUITE --connections N [--no-release-buffers]`` runs in a
fresh process, completes N handshakes entirely in memory (pyOpenSSL on memory BIOs, no sockets,
no Trio), keeps the N server-side connections and drops each client as soon as its handshake
is done (so the next client reuses its memory), then prints per-connection growth of RSS, of
glibc malloc (where OpenSSL's allocations go) and of pymalloc (the Python objects).
``--no-handshake`` measures connections straight out of ``SSL_new`` instead.

This is the part of "memory per peer" no server written on this OpenSSL can go below; the
rest of a server's per-peer bytes is its own bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL

from trio_dtls_server._openssl import DTLS_1_2

from .common import (
    BENCH_MTU,
    ECDHE_PSK_SUITE,
    install_fixed_server_psk,
    new_client_context,
    new_trio_server_context,
    self_memory_report,
)

__all__ = ["measure_floor"]


def _server_context(suite: str, release_buffers: bool) -> SSL.Context:
    if release_buffers:
        return new_trio_server_context(suite)  # our options, fixed-key PSK
    # The same, minus MODE_RELEASE_BUFFERS (pyOpenSSL can only add modes, so build it anew).
    context = SSL.Context(SSL.DTLS_SERVER_METHOD)
    context.set_min_proto_version(DTLS_1_2)
    context.set_max_proto_version(DTLS_1_2)
    context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION)
    context.set_cipher_list(suite.encode("ascii"))
    install_fixed_server_psk(context)
    return context


def _pump(source: SSL.Connection, sink: SSL.Connection) -> None:
    try:
        data = source.bio_read(65_536)
    except SSL.WantReadError:
        return
    sink.bio_write(data)


def _handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    for _ in range(20):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
        _pump(client, server)
        _pump(server, client)
        if done == 2:
            return
    raise RuntimeError("in-memory handshake did not complete")


def _pair(server_context: SSL.Context, client_context: SSL.Context) -> SSL.Connection:
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    server.set_ciphertext_mtu(BENCH_MTU)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    client.set_ciphertext_mtu(BENCH_MTU)
    _handshake(server, client)
    # Exchange one record each way, as an established peer would have done.
    client.write(b"ping")
    _pump(client, server)
    server.read(64)
    server.write(b"pong")
    _pump(server, client)
    client.read(64)
    return server


def _unused(server_context: SSL.Context) -> SSL.Connection:
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    server.set_ciphertext_mtu(BENCH_MTU)
    return server


def measure_floor(
    suite: str, connections: int, release_buffers: bool, *, handshake: bool = True
) -> dict[str, Any]:
    """Per-connection growth for ``connections`` server connections (established, or new)."""
    server_context = _server_context(suite, release_buffers)
    client_context = new_client_context(suite)
    for _ in range(16):  # warm up allocator pools and lazily loaded ciphers
        _pair(server_context, client_context)
    before = self_memory_report(0, 0, {})
    if handshake:
        kept = [_pair(server_context, client_context) for _ in range(connections)]
    else:
        kept = [_unused(server_context) for _ in range(connections)]
    after = self_memory_report(1, len(kept), {})
    result: dict[str, Any] = {
        "library": "wheel",
        "openssl": SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode(),
        "suite": suite,
        "connections": connections,
        "release_buffers": release_buffers,
        "stage": "established" if handshake else "new (SSL_new, no handshake)",
        "rss_kib_per_connection": round((after.rss_kib - before.rss_kib) / connections, 2),
        "pid": os.getpid(),
    }
    for field in ("malloc_in_use", "pymalloc_in_use"):
        first, last = getattr(before, field), getattr(after, field)
        if first is not None and last is not None:
            result[f"{field}_kib_per_connection"] = round((last - first) / 1024 / connections, 2)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="per-connection memory of OpenSSL itself")
    parser.add_argument("--suite", default=ECDHE_PSK_SUITE)
    parser.add_argument("--connections", type=int, default=2_000)
    parser.add_argument("--no-release-buffers", action="store_true")
    parser.add_argument("--no-handshake", action="store_true", help="measure fresh connections")
    arguments = parser.parse_args(argv)
    result = measure_floor(
        arguments.suite,
        arguments.connections,
        not arguments.no_release_buffers,
        handshake=not arguments.no_handshake,
    )
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
