"""Where a result came from: the code (git commit, and whether the tree had changes), the date, the CPU and which
earlier invocation wrote any part that was reused."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import uuid
from pathlib import Path

from synthaug.version import __version__

PACKAGE = Path(__file__).resolve().parent


def git_state(path: Path = PACKAGE) -> dict:
    """The commit of the git checkout synthaug runs from (``path``: its package folder, directly under the checkout's
    root), and whether its tracked files differ from it ("dirty"); both None when synthaug was installed from a
    wheel (even into a virtual environment inside some other repository), or git is missing."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != path.parent:  # not synthaug's own checkout (e.g. a venv in a user's repository)
        return {"commit": None, "dirty": None}
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def cpu_flags() -> list[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere): numbers can differ in the last bits with them."""
    try:
        line = next(line for line in open("/proc/cpuinfo") if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return []
    return sorted(line.split(":", 1)[1].split())


def recipe_sha256(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def invocation_record(recipe: dict, command: str) -> dict:
    """One invocation of a command: a fresh id, the code, the date (UTC), the recipe's sha256 and the command line."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"id": uuid.uuid4().hex[:12], "synthaug": __version__, **git_state(), "date": now,
            "recipe_sha256": recipe_sha256(recipe), "command": command}
