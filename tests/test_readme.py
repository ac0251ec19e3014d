"""The README's example code runs, and prints what the README says it prints.

The Python block under the heading ``## A minimal server`` is cut out of ``README.md`` and run
as a program of its own in a subprocess (with a timeout; ``subprocess.run`` kills it if it
outlives that).  It must end by itself and print exactly one line: Qt's ACK.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

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
    script = tmp_path / "minimal_server.py"
    script.write_text(code, encoding="utf-8")
    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert re.fullmatch(r"to \(127\.0\.0\.1:\d+\): ACK\n", finished.stdout), finished.stdout
    assert finished.stderr == ""
