"""Benchmark stages on disk, each under a name derived from everything that determines it.

    <out>/stages/judge/<key>/           the judge classifier (weights + info.json)
    <out>/stages/synthetic/<key>/       a synthetic shard set (generate's folder layout)
    <out>/stages/quality/<key>.json     FID/KID, conditioning accuracy, faces and memorization of one set
    <out>/stages/classifiers/<key>.json one classifier run: an arm, a seed, its score

A key is the sha256 of the stage's inputs (weights sha256, sampling settings, which images, classifier
settings, seed, synthaug version), so a re-run reuses every stage whose inputs are unchanged and redoes
only the ones a change touches. Files appear complete or not at all (atomic writes), so a killed
benchmark resumes from what it finished; a stage file carries the sha256 of its contents, and one that was
changed or damaged is computed again. ``<out>/stages/store.json`` marks the folder as the store, which is the
only ``stages/`` folder the benchmark writes into or (``--fresh``) deletes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from synthaug.version import __version__
from synthaug.errors import SynthaugError
from synthaug.files import write_text_atomic

log = logging.getLogger(__name__)

KINDS = ("judge", "synthetic", "quality", "classifiers")
MARKER = "store.json"
CHECKSUM = "stage_sha256"  # the key, in a stage file, of the sha256 of the rest of it
# what a store written before the marker existed holds in each kind's folder: keys, a swap's .old, temporaries
STAGE_NAME = re.compile(r"[0-9a-f]{24}(\.json|\.png|\.old)?|\..*\.tmp")


def stage_key(*parts) -> str:
    """A short sha256 of ``parts`` (anything JSON can write, keys sorted) and the synthaug version."""
    text = json.dumps([__version__, *parts], sort_keys=True, separators=(",", ":"))  # a non-JSON part is a bug: no default
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def content_sha256(value: dict) -> str:
    """The sha256 of a stage's contents as JSON writes them (keys sorted), so it survives a write and a read."""
    text = json.dumps(json.loads(json.dumps(value, default=float)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class StageStore:
    """The finished stages of one benchmark folder."""

    def __init__(self, out: Path):
        self.root = Path(out) / "stages"
        self.invocation: dict | None = None  # this invocation (see :meth:`begin`); stages it writes carry its id
        self.reused: dict[str, dict[str, int]] = {}  # kind -> id of the invocation that wrote it -> stages reused

    def begin(self, invocation: dict) -> None:
        """Start an invocation (the first process, holding the lock): recorded in the store's marker with the earlier
        ones, so a stage reused later can name the code and recipe that made it."""
        self.invocation = invocation
        marker = self.marker()
        marker.setdefault("invocations", {})[invocation["id"]] = invocation
        write_text_atomic(self.root / MARKER, json.dumps(marker, indent=1) + "\n")

    def join(self) -> None:
        """The other processes of an invocation take the first one's (the latest in the marker)."""
        invocations = self.marker().get("invocations", {})
        self.invocation = list(invocations.values())[-1] if invocations else None

    def marker(self) -> dict:
        """The store's marker (what wrote it, the invocations so far); a new one's content when it is unreadable."""
        try:
            value = json.loads((self.root / MARKER).read_text())
        except (OSError, ValueError):
            value = None
        return value if isinstance(value, dict) else {"synthaug": __version__, "what": "benchmark stages"}

    def note(self, kind: str, written_by: str | None) -> None:
        """Count a stage this invocation reads that another one wrote."""
        if self.invocation is not None and written_by != self.invocation["id"]:
            by_kind = self.reused.setdefault(kind, {})
            by_kind[written_by or "unknown"] = by_kind.get(written_by or "unknown", 0) + 1

    def folder_stage(self, kind: str, key: str) -> Path:
        """A stage kept as a folder (the judge, a synthetic set): its folder. A sidecar ``<key>.json`` names the
        invocation that wrote it: call :meth:`mark_folder` once it is complete."""
        folder, sidecar = self.folder(kind, key), self.file(kind, key)
        if folder.is_dir() and sidecar.is_file():
            try:
                self.note(kind, json.loads(sidecar.read_text()).get("written_by"))
            except (OSError, ValueError, AttributeError):
                self.note(kind, None)
        return folder

    def mark_folder(self, kind: str, key: str) -> None:
        sidecar = self.file(kind, key)
        if not sidecar.is_file() and self.invocation is not None:
            write_text_atomic(sidecar, json.dumps({"written_by": self.invocation["id"]}) + "\n")

    def reused_summary(self) -> list[dict]:
        """Per kind and earlier invocation, how many stages this invocation reused, with that invocation's record."""
        known = self.marker().get("invocations", {})
        return [{"kind": kind, "stages": n, "invocation": known.get(by, {"id": by})}
                for kind, by_id in sorted(self.reused.items()) for by, n in sorted(by_id.items())]

    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def file(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def load(self, kind: str, key: str) -> dict | None:
        """A finished stage's result, or None (absent, unreadable, or changed since it was written: then it is
        done again)."""
        path = self.file(kind, key)
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text())
            digest = value.pop(CHECKSUM)
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            log.warning("Stage file %s is unreadable or carries no sha256; running that stage again.", path)
            return None
        if digest != content_sha256(value):
            log.warning("Stage file %s was changed or damaged since it was written (its sha256 does not match); running "
                        "that stage again.", path)
            return None
        self.note(kind, value.pop("written_by", None))
        return value

    def save(self, kind: str, key: str, value: dict) -> dict:
        stored = {**value, "written_by": self.invocation["id"] if self.invocation else None}
        write_text_atomic(self.file(kind, key), json.dumps({**stored, CHECKSUM: content_sha256(stored)}, indent=1,
                                                           default=float) + "\n")
        return value

    def check_ours(self) -> None:
        """Refuse a ``stages/`` folder synthaug did not write: one without the store's marker that holds anything
        but stages (a store written before the marker existed is recognised by its layout)."""
        if not self.root.exists() or (self.root / MARKER).is_file():
            return
        if not self.root.is_dir():
            raise SynthaugError(f"{self.root} is a file, not the benchmark's stage folder; move it, or choose another --out.")
        foreign = sorted(p.name for p in self.root.iterdir() if not (
            (p.is_dir() and p.name in KINDS and all(STAGE_NAME.fullmatch(q.name) for q in p.iterdir()))
            or re.fullmatch(rf"\.{re.escape(MARKER)}\..*\.tmp", p.name)))  # the marker, half written
        if foreign:
            raise SynthaugError(f"{self.root} holds files synthaug did not write ({', '.join(foreign[:3])}"
                                f"{', ...' if len(foreign) > 3 else ''}), so the benchmark neither keeps its stages in it "
                                "nor deletes it; move them, or choose another --out.")

    def open(self) -> None:
        """Make (or adopt) the store: called, holding the benchmark folder's lock, before any stage is written."""
        self.check_ours()
        if not (self.root / MARKER).is_file():
            write_text_atomic(self.root / MARKER, json.dumps(self.marker()) + "\n")

    def clear(self) -> None:
        """Forget every stage (``synthaug benchmark --fresh``); a folder synthaug did not write is refused."""
        self.check_ours()
        shutil.rmtree(self.root, ignore_errors=True)
        self.open()
