"""The reject archive on disk: a SQLite index (WAL) and PNG files beside it.

Layout under the archive folder::

    index.sqlite3                     one row per archived verdict
    frames/YYYY-MM-DD/<seq>-<ts>.received.png   (.jpg: a JPEG the daemon resized, kept as the camera sent it)
    frames/YYYY-MM-DD/<seq>-<ts>.inspected.png   (where a denoiser changed the frame, or it was resized)
    frames/YYYY-MM-DD/<seq>-<ts>.evidence.png    (occlusion map, made on demand)

Crash safety (a SIGKILL at any instant): images are written to ``*.tmp`` and
renamed into place *before* the row that names them is committed, and a row is
deleted *before* its files are unlinked. So the index never names a missing or
half-written file; what a kill can leave is a file no row names, which
:meth:`Archive.sweep` removes on the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

INDEX = "index.sqlite3"
FRAMES = "frames"
KINDS = ("received", "inspected", "evidence")
VERDICTS = ("PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    daemon_id TEXT,
    published_ns INTEGER NOT NULL,
    camera_id TEXT,
    frame_id TEXT,
    verdict TEXT NOT NULL,
    reason TEXT,
    defect_score REAL,
    threshold REAL,
    noise_type TEXT,
    denoiser TEXT,
    model_version TEXT,
    received TEXT,
    inspected TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_time ON entries (published_ns);
CREATE INDEX IF NOT EXISTS entries_camera ON entries (camera_id, published_ns);
CREATE INDEX IF NOT EXISTS entries_verdict ON entries (verdict, published_ns);
"""
COLUMNS = (
    "id",
    "seq",
    "daemon_id",
    "published_ns",
    "camera_id",
    "frame_id",
    "verdict",
    "reason",
    "defect_score",
    "threshold",
    "noise_type",
    "denoiser",
    "model_version",
    "received",
    "inspected",
    "bytes",
    "body",
)


@dataclass(frozen=True)
class Filters:
    """What ``list``/``export``/the page ask for; every field optional."""

    camera: str | None = None
    verdicts: tuple[str, ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None
    model_version: str | None = None
    limit: int | None = None
    # Paging and selections (the operator page): pin a listing to the entries stored up to ``max_id`` so
    # its pages do not shift as rejects arrive; keep only ``ids`` (None: no such restriction), leave out
    # ``exclude_ids`` (e.g. the entries marked, or not yet marked, in the page's review store).
    max_id: int | None = None
    ids: tuple[int, ...] | None = None
    exclude_ids: tuple[int, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.camera is not None:
            clauses.append("camera_id = ?")
            args.append(self.camera)
        if self.verdicts:
            clauses.append(f"verdict IN ({','.join('?' * len(self.verdicts))})")
            args.extend(self.verdicts)
        if self.since_ns is not None:
            clauses.append("published_ns >= ?")
            args.append(self.since_ns)
        if self.until_ns is not None:
            clauses.append("published_ns < ?")
            args.append(self.until_ns)
        if self.model_version is not None:
            clauses.append("model_version = ?")
            args.append(self.model_version)
        if self.max_id is not None:
            clauses.append("id <= ?")
            args.append(self.max_id)
        # One JSON parameter whatever the number of ids (SQLite caps bound parameters).
        if self.ids is not None:
            clauses.append("id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps([int(i) for i in self.ids]))
        if self.exclude_ids:
            clauses.append("id NOT IN (SELECT value FROM json_each(?))")
            args.append(json.dumps([int(i) for i in self.exclude_ids]))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def evidence_of(received: str) -> str:
    """Where an entry's evidence map lives: beside its received image (``.received.png|jpg``)."""
    stem, sep, _ext = received.rpartition(".received.")
    return f"{stem}.evidence.png" if sep else received + ".evidence.png"


def parse_time(text: str, now: float | None = None) -> int:
    """ns since the epoch from ISO 8601 (``2026-12-01T10:00``, UTC unless it says) or an age (``90m``, ``2h``, ``7d``)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return int(((now if now is not None else time.time()) - secs) * 1e9)
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO 8601 such as 2026-12-01T10:00, or an age such as 2h)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1e9)


class Archive:
    """One archive folder. Writers: the archive worker only; readers: the CLI and the page (WAL)."""

    def __init__(self, root: str | Path, readonly: bool = False) -> None:
        self.root = Path(root)
        self.readonly = readonly
        if readonly:
            if not (self.root / INDEX).is_file():
                raise FileNotFoundError(f"no archive at {self.root} (no {INDEX}); is archive.dir set?")
            self.db = sqlite3.connect(f"file:{self.root / INDEX}?mode=ro", uri=True, check_same_thread=False)
        else:
            (self.root / FRAMES).mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.root / INDEX, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self.db.close()

    # -- writing (the archive worker) ---------------------------------------------------------
    def add(
        self,
        body: dict[str, Any],
        frame: np.ndarray | None,
        inspected: np.ndarray | None,
        original: tuple[str, bytes] | None = None,
    ) -> int:
        """Store one verdict with its images; returns the row id. Files first, then the row.

        ``original``: (format, payload) of a frame the daemon resized on arrival - ``png`` / ``jpeg`` bytes
        are kept as sent, ``raw:HxW`` pixels as a PNG - stored as the received image; the resized ``frame``
        then stands as what the classifier saw, unless a denoiser's output (``inspected``) does."""
        ts = int(body.get("published_ns") or time.time_ns())
        day = datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%d")
        stem = f"{FRAMES}/{day}/{int(body.get('seq') or 0):012d}-{ts}"
        paths: dict[str, str | None] = {"received": None, "inspected": None}
        size = 0
        if original is not None:
            fmt, payload = original
            if fmt in ("png", "jpeg"):
                rel = f"{stem}.received.{'png' if fmt == 'png' else 'jpg'}"
                size += self._write_bytes(rel, payload)
            else:
                h, w = (int(x) for x in fmt.removeprefix("raw:").split("x"))
                rel = f"{stem}.received.png"
                size += self._write_png(rel, np.frombuffer(payload, np.uint8).reshape(h, w))
            paths["received"] = rel
            frame, inspected = None, inspected if inspected is not None else frame
        for kind, img in (("received", frame), ("inspected", inspected)):
            if img is None:
                continue
            rel = f"{stem}.{kind}.png"
            size += self._write_png(rel, img)
            paths[kind] = rel
        with self.db:
            cur = self.db.execute(
                "INSERT INTO entries (seq, daemon_id, published_ns, camera_id, frame_id, verdict, reason,"
                " defect_score, threshold, noise_type, denoiser, model_version, received, inspected, bytes, body)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    body.get("seq"),
                    body.get("daemon_id"),
                    ts,
                    body.get("camera_id"),
                    None if body.get("frame_id") is None else str(body.get("frame_id")),
                    body.get("verdict"),
                    body.get("reason"),
                    body.get("defect_score"),
                    body.get("threshold"),
                    body.get("noise_type"),
                    body.get("denoiser"),
                    body.get("model_version"),
                    paths["received"],
                    paths["inspected"],
                    size,
                    json.dumps(body, separators=(",", ":"), allow_nan=False),
                ),
            )
        return int(cur.lastrowid or 0)

    def _write_png(self, rel: str, img: np.ndarray) -> int:
        ok, data = cv2.imencode(".png", img)
        if not ok:
            raise ValueError(f"could not encode {rel} as PNG")
        return self._write_bytes(rel, data.tobytes())

    def _write_bytes(self, rel: str, data: bytes) -> int:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: the file is whole or absent
        return len(data)

    def delete(self, ids: list[int]) -> int:
        """Remove entries: rows first (committed), then their files. Returns bytes freed."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT received, inspected, bytes FROM entries WHERE id IN ({marks})", ids
        ).fetchall()
        with self.db:
            self.db.execute(f"DELETE FROM entries WHERE id IN ({marks})", ids)
        for received, inspected, _ in rows:
            files = [f for f in (received, inspected) if f] + ([evidence_of(received)] if received else [])
            for rel in files:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / rel).unlink()
        return sum(int(b) for *_, b in rows)

    def prune(
        self, max_age_s: float | None, max_bytes: float | None, now_ns: int | None = None
    ) -> dict[str, int]:
        """Retention: drop entries older than ``max_age_s``, then the oldest until under ``max_bytes``."""
        now_ns = now_ns if now_ns is not None else time.time_ns()
        removed = freed = 0
        if max_age_s is not None:
            cutoff = now_ns - int(max_age_s * 1e9)
            while True:
                ids = [
                    r[0]
                    for r in self.db.execute(
                        "SELECT id FROM entries WHERE published_ns < ? ORDER BY id LIMIT 500", (cutoff,)
                    )
                ]
                if not ids:
                    break
                freed += self.delete(ids)
                removed += len(ids)
        if max_bytes is not None:
            total = self.total_bytes()
            while total > max_bytes:
                rows = list(
                    self.db.execute("SELECT id, bytes FROM entries ORDER BY published_ns, id LIMIT 200")
                )
                if not rows:
                    break
                take, excess = [], total - max_bytes
                for rid, b in rows:
                    take.append(rid)
                    excess -= b
                    if excess <= 0:
                        break
                f = self.delete(take)
                freed += f
                removed += len(take)
                total -= f
        return {"removed": removed, "freed_bytes": freed}

    def sweep(self) -> int:
        """Remove files no row names (what a kill between a write and its commit leaves); returns the count."""
        named = set()
        for rec, insp in self.db.execute("SELECT received, inspected FROM entries"):
            for rel in (rec, insp):
                if rel:
                    named.add(rel)
            if rec:
                named.add(evidence_of(rec))
        removed = 0
        for path in (self.root / FRAMES).rglob("*"):
            if path.is_file() and path.relative_to(self.root).as_posix() not in named:
                path.unlink()
                removed += 1
        for d in sorted((self.root / FRAMES).glob("*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        return removed

    # -- reading (CLI, page) ----------------------------------------------------------------------
    def total_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0])

    def count(self, f: Filters | None = None) -> int:
        where, args = (f or Filters()).where()
        return int(self.db.execute(f"SELECT COUNT(*) FROM entries{where}", args).fetchone()[0])

    def query(self, f: Filters | None = None) -> Iterator[dict[str, Any]]:
        """Entries, newest first."""
        f = f or Filters()
        where, args = f.where()
        sql = f"SELECT {','.join(COLUMNS)} FROM entries{where} ORDER BY published_ns DESC, id DESC"
        if f.limit is not None:
            sql += " LIMIT ?"
            args.append(int(f.limit))
        for row in self.db.execute(sql, args):
            yield dict(zip(COLUMNS, row, strict=True))

    def page(self, f: Filters, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """One page of entries matching ``f`` (newest first, ``limit`` from ``offset``) and how many match."""
        where, args = f.where()
        sql = f"SELECT {','.join(COLUMNS)} FROM entries{where} ORDER BY published_ns DESC, id DESC LIMIT ? OFFSET ?"
        rows = self.db.execute(sql, [*args, int(limit), int(offset)]).fetchall()
        return [dict(zip(COLUMNS, r, strict=True)) for r in rows], self.count(f)

    def max_id(self) -> int:
        """The newest row id (0 when empty): what a listing pins its pages to (``Filters.max_id``)."""
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM entries").fetchone()[0])

    def cameras(self, limit: int = 256) -> list[str]:
        """Camera ids in the archive (at most ``limit``, by name), for a filter's choices."""
        # A skip-scan over the camera index: one lookup per camera, not a pass over every row.
        rows = self.db.execute(
            "WITH RECURSIVE c(x) AS (SELECT MIN(camera_id) FROM entries UNION ALL"
            " SELECT (SELECT MIN(camera_id) FROM entries WHERE camera_id > x) FROM c WHERE x IS NOT NULL)"
            " SELECT x FROM c WHERE x IS NOT NULL LIMIT ?",
            (int(limit),),
        )
        return [str(r[0]) for r in rows]

    @staticmethod
    def summary(e: dict[str, Any]) -> dict[str, Any]:
        """An entry without its stored body and paths: what a page or a listing shows."""
        out = {k: e[k] for k in COLUMNS if k not in ("body", "received", "inspected", "daemon_id", "bytes")}
        return out | {"has_received": bool(e["received"]), "has_inspected": bool(e["inspected"])}

    def get(self, entry_id: int) -> dict[str, Any] | None:
        row = self.db.execute(
            f"SELECT {','.join(COLUMNS)} FROM entries WHERE id = ?", (int(entry_id),)
        ).fetchone()
        return dict(zip(COLUMNS, row, strict=True)) if row else None

    def path(self, entry: dict[str, Any], kind: str) -> Path | None:
        """The file of ``kind`` for ``entry``, only ever inside the archive folder (None if absent)."""
        if kind not in KINDS:
            raise ValueError(f"unknown image kind {kind!r}; one of {KINDS}")
        rel = entry.get("received") if kind == "evidence" else entry.get(kind)
        if not rel:
            return None
        if kind == "evidence":
            rel = evidence_of(str(rel))
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root.resolve() / FRAMES):
            raise ValueError(f"entry {entry.get('id')} names a file outside the archive: refused")
        return path

    def export(self, f: Filters, out: Path) -> int:
        """PNGs + ``verdicts.jsonl`` into a folder, or a zip when ``out`` ends in .zip; returns entries."""
        import zipfile

        n = 0
        zf = zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) if out.suffix == ".zip" else None
        if zf is None:
            out.mkdir(parents=True, exist_ok=True)
        lines = []
        try:
            for e in self.query(f):
                files = {}
                for kind in ("received", "inspected"):
                    p = self.path(e, kind)
                    if p is None or not p.is_file():
                        continue
                    name = f"{e['id']:08d}-{e['verdict']}-{kind}{p.suffix}"  # a received JPEG stays one
                    files[kind] = name
                    if zf is not None:
                        zf.write(p, name)
                    else:
                        shutil.copyfile(p, out / name)
                lines.append(
                    json.dumps(
                        {"id": e["id"], "files": files, "verdict": json.loads(e["body"])}, allow_nan=False
                    )
                )
                n += 1
            text = "\n".join(lines) + ("\n" if lines else "")
            if zf is not None:
                zf.writestr("verdicts.jsonl", text)
            else:
                (out / "verdicts.jsonl").write_text(text)
        finally:
            if zf is not None:
                zf.close()
        return n

    def disk_free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
