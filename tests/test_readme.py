"""The README is the front door: short, its example code runs, and what it sends readers to exists.

The Python block under the heading ``## A minimal server`` is cut out of ``README.md`` and run
as a program of its own in a subprocess (with a timeout; ``subprocess.run`` kills it if it
outlives that).  It must end by itself and print exactly one line: Qt's ACK.  The block under
``## A minimal handler`` is run the same way, with a few lines that serve its ``echo`` handler
and talk to it.  The README stays within 250 lines; what moved out of it into ``docs/`` is
checked there, and every page it links to exists and is in the Sphinx site.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: The front door's length limit (issue 10: "at most ~250 lines").
MAX_README_LINES = 250

#: Generous: the program itself takes a fraction of a second, but the machine may be loaded.
RUN_LIMIT = 60.0


def python_block_under(heading: str, markdown: str) -> str:
    """The first ```python block in the section that starts with ``heading``."""
    start = markdown.index(f"\n{heading}\n")
    section_end = markdown.find("\n## ", start + 1)
    section = markdown[start : section_end if section_end != -1 else None]
    match = re.search(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no python code block under {heading!r}"
    return match.group(1)


def test_the_section_is_found_and_holds_the_whole_program() -> None:
    code = python_block_under("## A minimal server", README.read_text(encoding="utf-8"))
    assert code.startswith("import trio\n")
    assert code.rstrip().endswith("trio.run(main)")
    compile(code, "README.md", "exec")


def test_the_minimal_server_example_runs_and_prints_the_ack(tmp_path: Path) -> None:
    code = python_block_under("## A minimal server", README.read_text(encoding="utf-8"))
    finished = run_program(code, tmp_path, "minimal_server.py")
    assert finished.returncode == 0, finished.stderr
    assert re.fullmatch(r"to \(127\.0\.0\.1:\d+\): ACK\n", finished.stdout), finished.stdout
    assert finished.stderr == ""


def run_program(
    code: str, tmp_path: Path, name: str = "readme_example.py"
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as the script ``name`` in ``tmp_path``, output captured, within RUN_LIMIT."""
    script = tmp_path / name
    script.write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        check=False,
    )


#: Serves the README's ``echo`` handler on a free loopback port and talks to it once.
ECHO_DRIVER = """

async def _drive() -> None:
    from trio_dtls_server import DTLSClient

    assert callable(serve_and_watch)  # defined by the README's block, not run (port 5684)
    server = DTLSServer(psk=KEYS, handler=echo)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve, "127.0.0.1", 0)
        key = KEYS["sensor-17"]
        async with await DTLSClient.connect(host, port, identity="sensor-17", key=key) as client:
            await client.send(b"echo me")
            print((await client.receive()).decode())
        nursery.cancel_scope.cancel()


trio.run(_drive)
"""


def test_the_minimal_handler_example_echoes(tmp_path: Path) -> None:
    code = python_block_under("## A minimal handler", README.read_text(encoding="utf-8"))
    assert code.startswith("import trio\n")  # self-contained: it can be pasted as it is
    finished = run_program(code + ECHO_DRIVER, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == "echo me\n"
    assert finished.stderr == ""


def test_the_readme_is_a_short_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    for needed in (
        "The two commands",
        "A minimal server",
        "A minimal handler",
        "Where to read more",
    ):
        assert needed in headings
    assert "python3 -m nox -s demo" in text and "python3 -m nox -s tests" in text


def test_every_page_the_readme_links_exists_and_is_in_the_site() -> None:
    text = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[^)#]+)", text))
    assert linked, "the README links no documentation page"
    toctree = (DOCS / "index.md").read_text(encoding="utf-8")
    for target in linked:
        path = ROOT / target
        assert path.is_file(), target
        if path.name != "index.md":
            assert re.search(rf"^{re.escape(path.stem)}$", toctree, re.MULTILINE), target


#: What moved out of the README, and a line of it that must still be found where it went.
MOVED = [
    ("demo.md", " client | Alice (clone number 0): starting a handshake"),
    ("demo.md", "summary | ACKs:       9 of 9 pings answered"),
    ("demo.md", "`examples/secure_udp_client.py` — Qt's client"),
    ("security.md", "| an off-path attacker who knows a peer's address and port, and... |"),
    ("security.md", "An established AEAD peer holds about 18 KiB"),
    ("robustness.md", "**No state before a cookie.**"),
    ("deployment.md", "hash $remote_addr$remote_port consistent;"),
    ("deployment.md", "`dtls_handshake_duration_seconds`"),
    ("deployment.md", "lb_kind DR"),
    ("architecture.md", "| `_peers.py` | **the peer table**"),
    ("performance.md", "python3 -m nox -s bench"),
]


@pytest.mark.parametrize(("page", "line"), MOVED)
def test_what_left_the_readme_is_in_the_docs(page: str, line: str) -> None:
    assert line in (DOCS / page).read_text(encoding="utf-8")
