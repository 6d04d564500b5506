"""``inspector archive list|show|export|prune``: the reject archive from a shell."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inspector.archive.store import VERDICTS, Archive, Filters, parse_time
from inspector.terminal import printable


def add_parser(sub: Any, config_args: Any) -> None:
    p = sub.add_parser(
        "archive",
        help="the reject archive: list, show, export, prune",
        description="Every FAIL, ERROR, TIMEOUT and DROPPED verdict the daemon published (and a sample of PASS, "
        "archive.pass_sample), with the frame received and the frame the defect classifier saw. The folder is "
        "archive.dir from the configuration ($STATE_DIRECTORY/archive under systemd), or --dir.",
        epilog="examples:\n"
        "  inspector archive list --verdict FAIL --since 2h\n"
        "  inspector archive show 1234 --evidence\n"
        "  inspector archive export --camera cam1 --since 2026-12-01T06:00 --until 2026-12-01T14:00 --out shift.zip\n"
        "  inspector archive prune --older-than 7d",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, what in (
        ("list", "entries, newest first, one line each"),
        ("show", "one entry: its verdict JSON and image files"),
        ("export", "entries as PNGs + verdicts.jsonl, into a folder or a .zip"),
        ("prune", "remove entries now (retention also runs inside the daemon)"),
    ):
        a = asub.add_parser(name, help=what, description=what)
        config_args(a)
        a.add_argument("--dir", type=Path, default=None, help="archive folder (default: archive.dir)")
        if name == "show":
            a.add_argument("id", type=int, help="entry id (first column of list)")
            a.add_argument(
                "--evidence",
                action="store_true",
                help="also compute where the defect classifier looked (occlusion map with the entry's engine "
                "set, a second or two) and write it beside the images",
            )
            a.add_argument(
                "--engines", type=Path, default=None, help="engine set for --evidence (default: engines.path)"
            )
            continue
        if name == "prune":
            a.add_argument(
                "--older-than", default=None, help="age, e.g. 7d, 12h (default: archive.max_age_days)"
            )
            a.add_argument(
                "--max-mb", type=float, default=None, help="total size cap (default: archive.max_mb)"
            )
            continue
        a.add_argument("--camera", default=None, help="one camera id")
        a.add_argument("--verdict", action="append", choices=VERDICTS, default=[], help="repeatable")
        a.add_argument("--since", default=None, help="ISO 8601 time (UTC unless given) or an age: 2h, 7d")
        a.add_argument("--until", default=None, help="ISO 8601 time or an age")
        a.add_argument("--engine-version", default=None, help="model_version of the engine set")
        if name == "list":
            a.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
            a.add_argument("--json", action="store_true", help="JSON lines instead of a table")
        else:
            a.add_argument("--out", type=Path, required=True, help="folder, or a file ending in .zip")


def _filters(a: argparse.Namespace) -> Filters:
    return Filters(
        camera=a.camera,
        verdicts=tuple(a.verdict),
        since_ns=parse_time(a.since) if a.since else None,
        until_ns=parse_time(a.until) if a.until else None,
        model_version=a.engine_version,
        limit=getattr(a, "limit", None),
    )


def run(a: argparse.Namespace) -> int:
    from inspector.config import ConfigError, load_settings

    try:
        settings = load_settings(a.config, a.overrides)
        root = a.dir or settings.archive.folder()
        if root is None:
            raise ValueError("no archive folder: give --dir, or set archive.dir (or run under systemd)")
        store = Archive(
            root, readonly=a.action in ("list", "show", "export") and not getattr(a, "evidence", False)
        )
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"inspector archive: {exc}", file=sys.stderr)
        return 2
    try:
        if a.action == "list":
            return _list(store, a)
        if a.action == "show":
            return _show(store, a, settings)
        if a.action == "export":
            n = store.export(_filters(a), a.out)
            print(f"exported {n} entries to {a.out}")
            return 0
        age = parse_time(a.older_than) if a.older_than else None
        max_age_s = (
            (datetime.now(UTC).timestamp() - age / 1e9) if age else settings.archive.max_age_days * 86400
        )
        r = store.prune(max_age_s, (a.max_mb if a.max_mb is not None else settings.archive.max_mb) * 1e6)
        swept = store.sweep()
        print(f"removed {r['removed']} entries ({r['freed_bytes'] / 1e6:.1f} MB), {swept} stray files")
        return 0
    except ValueError as exc:
        print(f"inspector archive: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _list(store: Archive, a: argparse.Namespace) -> int:
    f = _filters(a)
    rows = list(store.query(f))
    if a.json:
        for r in rows:
            print(
                json.dumps(
                    {k: v for k, v in r.items() if k != "body"} | {"verdict_json": json.loads(r["body"])},
                    allow_nan=False,
                )
            )
        return 0
    print(
        f"{'id':>7}  {'time (UTC)':23}  {'camera':10} {'frame':>10}  {'verdict':8} {'score':>6} {'thr':>6}  {'noise':11} reason"
    )
    for r in rows:
        score = f"{r['defect_score']:.3f}" if r["defect_score"] is not None else "-"
        thr = f"{r['threshold']:.3f}" if r["threshold"] is not None else "-"
        # ids and reasons are a sender's text: control characters are printed as escapes
        cam, frame = printable(r["camera_id"])[:10], printable(r["frame_id"])[:10]
        print(
            f"{r['id']:>7}  {_when(r['published_ns']):23}  {cam:10} {frame:>10}  "
            f"{printable(r['verdict']):8} {score:>6} {thr:>6}  {printable(r['noise_type'] or '-'):11} "
            f"{printable(r['reason'] or '')}"
        )
    print(f"{len(rows)} shown of {store.count(dataclasses.replace(f, limit=None))} matching")
    return 0


def _show(store: Archive, a: argparse.Namespace, settings: Any) -> int:
    e = store.get(a.id)
    if e is None:
        print(f"inspector archive: no entry {a.id}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(e["body"]), indent=2, allow_nan=False))
    for kind in ("received", "inspected"):
        p = store.path(e, kind)
        print(
            f"{kind:9} {p if p is not None else '(none: ' + ('no pixels for this verdict' if kind == 'received' else 'the classifier saw the frame as received') + ')'}"
        )
    if a.evidence:
        src = store.path(e, "inspected") or store.path(e, "received")
        if src is None:
            print("evidence  (none: no pixels for this verdict)")
            return 0
        from inspector.archive.evidence import evidence_png

        engines = a.engines or settings.engines.path
        out = store.path(e, "evidence")
        assert out is not None
        score = evidence_png(engines, src, out)
        print(f"evidence  {out} (occlusion map with {engines}; defect score {score:.3f})")
    return 0
