"""The shell commands of docs/OPERATIONS.md's ``console`` blocks, for the tests that run them as
written (tests/test_ops.py: the cluster recipes; tests/test_runbook.py: the runbook). No tests here."""

from __future__ import annotations

import re
from pathlib import Path

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "OPERATIONS.md"


def console_blocks(text: str | None = None) -> list[str]:
    """Every ``console`` block of ``text`` (default: docs/OPERATIONS.md), in order."""
    return re.findall(r"```console\n(.*?)```", OPERATIONS.read_text(encoding="utf-8") if text is None else text, re.S)


def commands_of(block: str) -> str:
    """The ``$ `` lines of a console block and their continuation lines, as one script (an
    output line is left out, and so is a ``  # `` comment after a command)."""
    lines, going_on = [], False
    for line in block.splitlines():
        if line.startswith("$ ") or going_on:
            command = line[2:] if line.startswith("$ ") else line
            lines.append(command.split("  # ")[0].rstrip())
            going_on = command.rstrip().endswith("\\")
    return "\n".join(lines)


def section(title: str) -> str:
    """The text of the ``## <title>`` section of docs/OPERATIONS.md, up to the next ``## ``."""
    text = OPERATIONS.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]
