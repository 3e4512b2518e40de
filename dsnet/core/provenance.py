"""Where a saved number came from: the commit it ran at (and whether tracked files differed), the
command and the date, written the same way into every artifact."""

from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Revision:
    commit: str  # short hash, "" outside a git checkout
    dirty: bool  # tracked files differ from the commit

    def describe(self) -> str:
        if not self.commit:
            return "a working tree"
        return f"{self.commit}{' + local changes' if self.dirty else ''}"


def revision(root: Path = REPO) -> Revision:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short=7", "HEAD")
    return Revision(commit, bool(commit) and bool(git("status", "--porcelain", "--untracked-files=no")))


def artifact_header(argv: list[str] | None, tool: str) -> dict:
    """What every saved artifact starts with: the command (``tool``: a module run with -m, or a
    script path ending in .py), the commit and whether tracked files differed from it, the date."""
    prefix = f"python {tool}" if tool.endswith(".py") else f"python -m {tool}"
    rev = revision()
    return {
        "command": f"{prefix} " + shlex.join(sys.argv[1:] if argv is None else argv),
        "commit": rev.commit,
        "dirty": rev.dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
