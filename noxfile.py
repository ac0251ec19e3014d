"""Nox sessions: ``tests`` (lint, types, the suite), ``docs``, ``demo`` (the example runner),
``bench``, and ``mutants`` (mutation testing; run on demand, not by default)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11", "3.12", "3.13"]
TOOLS = ["ruff>=0.6", "mypy>=1.11", "nox"]
_PROJECT = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
#: The other DTLS stacks of tests/test_interop_stacks.py (the ``interop`` extra).
INTEROP_PEERS: list[str] = _PROJECT["optional-dependencies"]["interop"]
#: What the package and its tests need, for a session that must not install the package itself.
RUNTIME_AND_TEST: list[str] = [
    *_PROJECT["dependencies"],
    *_PROJECT["optional-dependencies"]["test"],
]


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


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the modules that judge untrusted bytes, with their own tests.

    Which modules and which tests: ``[tool.mutmut]`` in pyproject.toml (``only_mutate`` and
    ``pytest_add_cli_args_test_selection``).  Not in the default sessions: a full run (944
    mutants) took 7 to 17 minutes on two shared cores.  Ends with the counts per module; ``mutmut
    results`` lists the survivors and ``mutmut show NAME`` shows one (run them in this venv).
    Arguments go to ``mutmut run``: mutant names or globs, e.g. ``'trio_dtls_server._cookie*'``.
    """
    # mutmut runs pytest in its own process, so the test dependencies go in the same venv; the
    # package itself is not installed: mutmut imports its mutated copy from mutants/.
    session.install("mutmut>=3.8,<4", *RUNTIME_AND_TEST)
    session.run("mutmut", "run", *session.posargs)
    session.run("mutmut", "export-cicd-stats")
    session.run("python", "-c", _MUTANT_SCORES)


#: killed / survived / total per module, from mutmut's ``mutants/**/*.py.meta`` files and its own
#: reading of their exit codes (``export-cicd-stats`` only gives the sum over all modules).
_MUTANT_SCORES = """
import collections, json, pathlib
from mutmut.stats import status_by_exit_code
for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"].values()
    count = collections.Counter(status_by_exit_code[code] for code in codes)
    rest = ", ".join(f"{n} {s}" for s, n in count.items() if s not in ("killed", "survived"))
    print(f"{meta.name[:-5]}: {count['killed']} killed, {count['survived']} survived,"
          f" {len(codes)} in all" + (f" ({rest})" if rest else ""))
"""
