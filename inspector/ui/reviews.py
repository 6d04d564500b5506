"""Review marks: what an operator concluded about an archived entry, with who and when.

Stored in a SQLite file of the page's own (``reviews.sqlite`` in ``--state-dir``),
never in the daemon's archive index, which the page opens read-only. Marks are
appended, never overwritten: an entry's mark is its latest review, and its
history stays. Each review keeps the entry's id *and* its publication time,
camera, frame and verdict, so a review still says what it was about after
retention has removed the entry, and a row id that the archive reuses (after
the archive was wiped) is never taken for the old entry.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

MARKS = {
    "confirmed_defect": "confirmed defect",
    "false_reject": "false reject",
    "unsure": "unsure",
}
FILE = "reviews.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY,
    entry_id INTEGER NOT NULL,
    entry_published_ns INTEGER NOT NULL,
    camera_id TEXT,
    frame_id TEXT,
    verdict TEXT,
    mark TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    by TEXT NOT NULL,
    at_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_entry ON reviews (entry_id, id);
"""
FIELDS = (
    "id",
    "entry_id",
    "entry_published_ns",
    "camera_id",
    "frame_id",
    "verdict",
    "mark",
    "note",
    "by",
    "at_ns",
)
# The latest review of each entry (the highest review id per entry and publication time).
LATEST = (
    "SELECT r.* FROM reviews r JOIN (SELECT MAX(id) AS id FROM reviews GROUP BY entry_id, entry_published_ns) m"
    " ON r.id = m.id"
)
# Restricts ``r`` to the (entry id, publication time) pairs given as one JSON parameter.
PAIRS = (
    "JOIN json_each(?) j ON r.entry_id = json_extract(j.value, '$[0]')"
    " AND r.entry_published_ns = json_extract(j.value, '$[1]')"
)


class Reviews:
    """The page's review store: one writer (this process), many readers (its request threads)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / FILE
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def add(
        self, entry: dict[str, Any], mark: str, note: str, by: str, at_ns: int | None = None
    ) -> dict[str, Any]:
        """Append one review of archive ``entry``; returns it as stored."""
        if mark not in MARKS:
            raise ValueError(f"mark must be one of {', '.join(MARKS)}")
        row = (
            int(entry["id"]),
            int(entry["published_ns"]),
            entry.get("camera_id"),
            entry.get("frame_id"),
            entry.get("verdict"),
            mark,
            note,
            by,
            at_ns if at_ns is not None else time.time_ns(),
        )
        with self.lock, self.db:
            cur = self.db.execute(
                "INSERT INTO reviews (entry_id, entry_published_ns, camera_id, frame_id, verdict, mark, note, by,"
                " at_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                row,
            )
        return dict(zip(FIELDS, (cur.lastrowid, *row), strict=True))

    def latest(self, entries: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Each entry's latest review, by entry id (entries never reviewed are absent)."""
        if not entries:
            return {}
        with self.lock:
            rows = self.db.execute(f"{LATEST} {PAIRS}", (_pairs(entries),)).fetchall()
        return {int(r[1]): dict(zip(FIELDS, r, strict=True)) for r in rows}

    def history(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """Every review of ``entry``, oldest first."""
        with self.lock:
            rows = self.db.execute(
                f"SELECT {','.join(FIELDS)} FROM reviews WHERE entry_id = ? AND entry_published_ns = ? ORDER BY id",
                (int(entry["id"]), int(entry["published_ns"])),
            ).fetchall()
        return [dict(zip(FIELDS, r, strict=True)) for r in rows]

    def entry_ids(self, mark: str | None = None) -> tuple[int, ...]:
        """Ids of the entries whose latest review is ``mark`` (any mark when None): a filter's selection."""
        sql, args = f"SELECT entry_id FROM ({LATEST})", []
        if mark is not None:
            sql += " WHERE mark = ?"
            args.append(mark)
        with self.lock:
            return tuple(int(r[0]) for r in self.db.execute(sql, args))

    def dump(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every review of these entries (for an export's ``reviews.jsonl``), oldest first."""
        if not entries:
            return []
        with self.lock:
            rows = self.db.execute(
                f"SELECT r.* FROM reviews r {PAIRS} ORDER BY r.id", (_pairs(entries),)
            ).fetchall()
        return [dict(zip(FIELDS, r, strict=True)) for r in rows]


def _pairs(entries: list[dict[str, Any]]) -> str:
    return json.dumps([[int(e["id"]), int(e["published_ns"])] for e in entries])
