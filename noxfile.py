"""Nox sessions: ``tests`` (lint, types, the suite), ``docs``, ``demo`` (the example runner),
``bench``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11", "3.12", "3.13"]
TOOLS = ["ruff>=0.6", "mypy>=1.11", "nox"]
#: The other DTLS stacks of tests/test_interop_stacks.py (the ``interop`` extra).
INTEROP_PEERS: list[str] = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))[
    "project"
]["optional-dependencies"]["interop"]


@nox.session
def tests(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy --strict, then the whole pytest suite."""
    session.install("-e", ".[test]", *TOOLS)
    # One at a time, and a failure is not fatal: a stack that does not install here (no wheel
    # for this platform, no C toolchain for DTLSSocket) only makes its interop tests skip,
    # each with the reason.
    for peer in INTEROP_PEERS:
        session.install(peer, success_codes=[0, 1])
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict")
    session.run("pytest", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The Sphinx site under docs/ (API reference from the docstrings); warnings are errors."""
    session.install("-e", ".", "sphinx>=7", "myst-parser>=3")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: Qt's server and three example clients, side by side, on loopback."""
    session.install("-e", ".")
    session.run("python", "examples/run_example.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against trio.DTLSEndpoint, measured in the same run (see benchmarks/).

    The native scenarios use dtlsload: ``$DTLSLOAD``, else built from ../shared/tools/dtlsload
    into build/dtlsload (needs make, gcc, libssl-dev); without it they are skipped, with the
    reason in the report.  ``nox -s bench -- --quick`` is the smoke run.
    """
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks", *session.posargs)
