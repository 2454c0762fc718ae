"""Benchmark stages on disk, each under a name derived from everything that determines it.

    <out>/stages/judge/<key>/           the judge classifier (weights + info.json)
    <out>/stages/synthetic/<key>/       a synthetic shard set (generate's folder layout)
    <out>/stages/quality/<key>.json     FID/KID, conditioning accuracy, faces and memorization of one set
    <out>/stages/classifiers/<key>.json one classifier run: an arm, a seed, its score

A key is the sha256 of the stage's inputs (weights sha256, sampling settings, which images, classifier
settings, seed, synthaug version), so a re-run reuses every stage whose inputs are unchanged and redoes
only the ones a change touches. Files appear complete or not at all (atomic writes), so a killed
benchmark resumes from what it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from synthaug import __version__
from synthaug.files import write_text_atomic

log = logging.getLogger(__name__)


def stage_key(*parts) -> str:
    """A short sha256 of ``parts`` (anything JSON can write, keys sorted) and the synthaug version."""
    text = json.dumps([__version__, *parts], sort_keys=True, separators=(",", ":"))  # a non-JSON part is a bug: no default
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class StageStore:
    """The finished stages of one benchmark folder."""

    def __init__(self, out: Path):
        self.root = Path(out) / "stages"

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def file(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def load(self, kind: str, key: str) -> dict | None:
        """A finished stage's result, or None (absent, or unreadable: then it is done again)."""
        path = self.file(kind, key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("Stage file %s is unreadable; running that stage again.", path)
            return None

    def save(self, kind: str, key: str, value: dict) -> dict:
        write_text_atomic(self.file(kind, key), json.dumps(value, indent=1, default=float) + "\n")
        return value

    def clear(self) -> None:
        """Forget every stage (``synthaug benchmark --fresh``)."""
        shutil.rmtree(self.root, ignore_errors=True)
