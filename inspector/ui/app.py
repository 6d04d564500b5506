"""The operator page's routes (Starlette): the page, its assets and its JSON API.

Reads: ``GET /`` (the page), ``/static/<asset>``, ``/api/state`` (shift totals
from the daemon's counters, rates, heartbeat, bounded camera table, the CSRF
token), ``/api/rejects`` (archive entries by camera, verdict, time and review
mark, paged, with a total), ``/api/image/<id>/<received|inspected|evidence>``
(a PNG that exists, or 404: a GET never computes anything) and
``/api/reviews/<id>`` (an entry's review history).

Writes, each a POST with the CSRF token (:mod:`inspector.ui.guard`):
``/api/image/<id>/evidence`` (the occlusion map, one at a time),
``/api/reviews/<id>`` (a review mark with who and a note, into the page's own
``reviews.sqlite``) and ``/api/export`` (the entries matching the filters as a
zip: PNGs, ``verdicts.jsonl``, ``reviews.jsonl``, ``selection.json``).

Every time in the API is ISO 8601 with its UTC offset.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import threading
import time
import zipfile
from dataclasses import replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from inspector.archive.store import KINDS, VERDICTS, Archive, Filters, parse_time
from inspector.ui.guard import FailedTokens, Guard
from inspector.ui.live import LiveState, iso
from inspector.ui.reviews import MARKS, Reviews

ASSETS = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "index.html": "text/html",
    "icon.svg": "image/svg+xml",
}
REJECT_KINDS = ("FAIL", "ERROR", "TIMEOUT", "DROPPED")
REVIEW_FILTERS = ("any", "unreviewed", "reviewed", *MARKS)
MAX_FIELDS = 24
MAX_BODY = 16_384
BODY_TIMEOUT_S = 10.0
EXPORT_MAX = 5000
CAMERA_RE = re.compile(r"[\w.:-]{1,64}")
ID_RE = re.compile(r"\d{1,12}")
AGE_RE = re.compile(r"\d{1,6}(?:\.\d{1,3})?[smhd]")


def error(code: int, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(code, message, headers)


class Page:
    """The page's state: live counts, the archive (read-only), the review store, the locks for slow work."""

    def __init__(
        self,
        state: LiveState,
        archive_dir: Path | None,
        engines: Path | None,
        reviews: Reviews | None,
        csrf: str,
    ) -> None:
        self.state = state
        self.archive_dir = archive_dir
        self.engines = engines
        self.reviews = reviews
        self.csrf = csrf
        self._archive: Archive | None = None
        self.archive_lock = threading.Lock()  # one sqlite connection, used from the thread pool
        self.evidence_lock = threading.Lock()  # one occlusion map at a time: a few hundred inferences
        self.export_lock = threading.Lock()
        self.assets = {
            name: resources.files("inspector.ui").joinpath("static", name).read_bytes() for name in ASSETS
        }

    def archive(self) -> Archive | None:
        """The archive, opened read-only on first need (it may not exist until the first reject)."""
        if self._archive is None and self.archive_dir is not None:
            try:
                self._archive = Archive(self.archive_dir, readonly=True)
            except FileNotFoundError:
                return None
        return self._archive

    def entry(self, e: dict[str, Any], review: dict[str, Any] | None) -> dict[str, Any]:
        """An archive entry as the API shows it."""
        out = Archive.summary(e)
        out["published"] = iso(e["published_ns"])
        out["review"] = review_json(review) if review else None
        try:
            ev = self._archive.path(e, "evidence") if self._archive is not None else None
        except ValueError:  # a row naming a file outside the archive: its images are refused too
            ev = None
            out["has_received"] = out["has_inspected"] = False
        out["has_evidence"] = bool(ev is not None and ev.is_file())
        return out


def review_json(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "mark": r["mark"],
        "label": MARKS.get(r["mark"], r["mark"]),
        "note": r["note"],
        "by": r["by"],
        "at": iso(r["at_ns"]),
        "entry_id": r["entry_id"],
        "entry_published": iso(r["entry_published_ns"]),
    }


# -- parameters ---------------------------------------------------------------------------------


def query(request: Request) -> dict[str, list[str]]:
    try:
        return parse_qs(
            request.scope.get("query_string", b"").decode("latin-1"),
            keep_blank_values=True,
            max_num_fields=MAX_FIELDS,
        )
    except ValueError as exc:  # too many fields
        raise error(400, str(exc)) from None


def one(q: dict[str, list[str]], name: str) -> str | None:
    vals = q.get(name)
    if not vals or vals == [""]:
        return None
    if len(vals) > 1:
        raise error(400, f"give {name} at most once")
    return vals[0]


def int_param(q: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    v = one(q, name)
    if v is None:
        return default
    if not re.fullmatch(r"\d{1,13}", v) or not lo <= int(v) <= hi:
        raise error(400, f"{name} must be one integer in [{lo}, {hi}]")
    return int(v)


def time_param(q: dict[str, list[str]], name: str) -> int | None:
    """ns since the epoch from ISO 8601 *with* a zone (``...Z``, ``...+01:00``) or an age (``90m``, ``2h``)."""
    v = one(q, name)
    if v is None:
        return None
    v = v.strip()
    if len(v) > 40:
        raise error(400, f"{name} is too long")
    if not AGE_RE.fullmatch(v):
        try:
            t = datetime.fromisoformat(v)
        except ValueError:
            raise error(
                400, f"{name} must be ISO 8601 with a zone (2026-12-01T06:00+01:00) or an age (2h)"
            ) from None
        if t.tzinfo is None:
            raise error(400, f"{name} needs a zone (Z or an offset such as +01:00): {v!r} is ambiguous")
    try:
        return parse_time(v)
    except (ValueError, OverflowError) as exc:
        raise error(400, f"{name}: {exc}") from None


def filters(page: Page, q: dict[str, list[str]]) -> tuple[Filters, dict[str, Any]]:
    """Filters from the query string (shared by the listing and the export), and the selection as given."""
    camera = one(q, "camera")
    if camera is not None and not CAMERA_RE.fullmatch(camera):
        raise error(400, "camera must be one id of at most 64 characters [A-Za-z0-9_.:-]")
    verdicts = [v for v in q.get("verdict", []) if v]
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad or len(verdicts) != len(set(verdicts)):
        raise error(400, f"verdict must be some of {', '.join(VERDICTS)}, each once")
    since, until = time_param(q, "since"), time_param(q, "until")
    review = one(q, "review") or "any"
    if review not in REVIEW_FILTERS:
        raise error(400, f"review must be one of {', '.join(REVIEW_FILTERS)}")
    max_id = int_param(q, "max_id", 0, 0, 10**12) or None
    f = Filters(
        camera=camera,
        verdicts=tuple(verdicts) or REJECT_KINDS,
        since_ns=since,
        until_ns=until,
        max_id=max_id,
    )
    if review != "any":
        if page.reviews is None:
            raise error(409, "review marks are off on this page (no writable --state-dir)")
        if review == "unreviewed":
            f = replace(f, exclude_ids=page.reviews.entry_ids())
        else:
            f = replace(f, ids=page.reviews.entry_ids(None if review == "reviewed" else review))
    selection = {
        "camera": camera,
        "verdicts": list(f.verdicts),
        "since": iso(since),
        "until": iso(until),
        "review": review,
    }
    return f, selection


async def read_json(request: Request) -> dict[str, Any]:
    """A small JSON object body, read within a deadline (a body trickled in slowly is refused, not waited on)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise error(415, "send application/json")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise error(413, f"the body must be at most {MAX_BODY} bytes")
    chunks, size = [], 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise error(413, f"the body must be at most {MAX_BODY} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise error(408, "the body took too long") from None
    try:
        body = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise error(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise error(400, "the body must be a JSON object")
    return body


def entry_id(request: Request) -> int:
    raw = request.path_params["entry"]
    if not ID_RE.fullmatch(raw):
        raise error(404, "no such entry")
    return int(raw)


# -- routes ---------------------------------------------------------------------------------------


def build(page: Page, *, allowed_hosts: list[str], token: str | None, failures: FailedTokens) -> Starlette:
    """The ASGI application: the routes below behind :class:`inspector.ui.guard.Guard`."""

    async def in_archive(fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with page.archive_lock:
                return fn(*args)

        return await run_in_threadpool(locked)

    def asset(name: str) -> Response:
        data = page.assets[name]
        if name == "index.html":
            data = data.replace(b"{{csrf}}", page.csrf.encode())
        return Response(data, media_type=ASSETS[name] + "; charset=utf-8")

    async def index(request: Request) -> Response:
        return asset("index.html")

    async def favicon(request: Request) -> Response:
        return asset("icon.svg")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise error(404, "not found")
        return asset(name)

    async def state(request: Request) -> Response:
        query(request)
        snap = page.state.snapshot(time.time())
        snap |= {
            "csrf": page.csrf,
            "archive": page.archive_dir is not None,
            "reviews": page.reviews is not None,
            "evidence": page.engines is not None,
            "marks": MARKS,
        }
        return JSONResponse(snap)

    async def rejects(request: Request) -> Response:
        q = query(request)
        limit = int_param(q, "limit", 12, 1, 100)
        offset = int_param(q, "offset", 0, 0, 1_000_000)
        f, selection = filters(page, q)

        def listing() -> dict[str, Any]:
            store = page.archive()
            if store is None:
                return {"archive": False, "entries": [], "total": 0, "offset": 0, "limit": limit, "max_id": 0}
            pinned = f if f.max_id is not None else replace(f, max_id=store.max_id())
            rows, total = store.page(pinned, offset, limit)
            reviews = page.reviews.latest(rows) if page.reviews is not None else {}
            return {
                "archive": True,
                "entries": [page.entry(e, reviews.get(e["id"])) for e in rows],
                "total": total,
                "offset": offset,
                "limit": limit,
                "max_id": pinned.max_id,
                "selection": selection,
                "cameras": store.cameras(),
            }

        return JSONResponse(await in_archive(listing))

    async def get_entry(n: int) -> tuple[Archive, dict[str, Any]]:
        def find() -> tuple[Archive | None, dict[str, Any] | None]:
            store = page.archive()
            return store, (store.get(n) if store is not None else None)

        store, e = await in_archive(find)
        if store is None or e is None:
            raise error(404, "no such entry")
        return store, e

    async def image(request: Request) -> Response:
        n, kind = entry_id(request), request.path_params["kind"]
        if kind not in KINDS:
            raise error(404, f"kind must be one of {', '.join(KINDS)}")
        store, e = await get_entry(n)
        try:
            path = store.path(e, kind)
        except ValueError as exc:
            raise error(403, str(exc)) from None
        if path is None or not path.is_file():
            if kind == "evidence":
                raise error(
                    404, f"no evidence map for entry {n} yet (POST /api/image/{n}/evidence makes one)"
                )
            raise error(404, f"no {kind} image for entry {n}")
        media = "image/jpeg" if path.suffix == ".jpg" else "image/png"  # a received JPEG is kept as sent
        return Response(path.read_bytes(), media_type=media, headers={"cache-control": "max-age=3600"})

    async def make_evidence(request: Request) -> Response:
        n = entry_id(request)
        if page.engines is None:
            raise error(409, "evidence needs the engine set (--engines)")
        store, e = await get_entry(n)
        try:
            out = store.path(e, "evidence")
            src = store.path(e, "inspected") or store.path(e, "received")
        except ValueError as exc:
            raise error(403, str(exc)) from None
        if out is None or src is None or not src.is_file():
            raise error(404, f"entry {n} has no pixels to look at")
        if not page.evidence_lock.acquire(blocking=False):
            raise error(429, "another evidence map is being computed; try again", {"retry-after": "2"})
        try:
            if not out.is_file():
                from inspector.archive.evidence import evidence_png

                assert page.engines is not None
                try:
                    await run_in_threadpool(evidence_png, page.engines, src, out)
                except OSError as exc:
                    raise error(503, f"cannot write the evidence map: {exc}") from None
        finally:
            page.evidence_lock.release()
        return JSONResponse({"id": n, "url": f"/api/image/{n}/evidence"})

    async def get_reviews(request: Request) -> Response:
        n = entry_id(request)
        if page.reviews is None:
            raise error(409, "review marks are off on this page (no writable --state-dir)")
        _, e = await get_entry(n)
        return JSONResponse({"id": n, "reviews": [review_json(r) for r in page.reviews.history(e)]})

    async def post_review(request: Request) -> Response:
        n = entry_id(request)
        if page.reviews is None:
            raise error(409, "review marks are off on this page (no writable --state-dir)")
        body = await read_json(request)
        mark, note, by = body.get("mark"), body.get("note", ""), body.get("by")
        if mark not in MARKS:
            raise error(400, f"mark must be one of {', '.join(MARKS)}")
        if not isinstance(note, str) or len(note) > 500:
            raise error(400, "note must be text of at most 500 characters")
        if not isinstance(by, str) or not 1 <= len(by.strip()) <= 64:
            raise error(400, "by (who marks it) is required: a name of 1 to 64 characters")
        clean = "".join(c for c in note if c.isprintable() or c == "\n").strip()
        _, e = await get_entry(n)
        r = await run_in_threadpool(page.reviews.add, e, mark, clean, by.strip())
        return JSONResponse({"id": n, "review": review_json(r)})

    async def export(request: Request) -> Response:
        f, selection = filters(page, query(request))
        if not page.export_lock.acquire(blocking=False):
            raise error(429, "another export is being written; try again", {"retry-after": "5"})
        try:

            def write() -> tuple[str, int]:
                # A connection of its own: a long export must not hold up the listing's.
                if page.archive_dir is None:
                    raise error(404, "no archive on this page (archive.dir unset)")
                try:
                    store = Archive(page.archive_dir, readonly=True)
                except FileNotFoundError:
                    raise error(404, "no archive yet") from None
                try:
                    pinned = f if f.max_id is not None else replace(f, max_id=store.max_id())
                    n = store.count(pinned)
                    if n > EXPORT_MAX:
                        raise error(
                            413,
                            f"{n} entries match; export at most {EXPORT_MAX} at once (narrow the filters)",
                        )
                    fd, name = tempfile.mkstemp(prefix="inspector-export-", suffix=".zip")
                    os.close(fd)
                    try:
                        store.export(pinned, Path(name))
                        entries = list(store.query(pinned))
                    except BaseException:
                        os.unlink(name)
                        raise
                finally:
                    store.close()
                reviews = page.reviews.dump(entries) if page.reviews is not None else []
                with zipfile.ZipFile(name, "a", zipfile.ZIP_DEFLATED) as zf:
                    zf.writestr(
                        "reviews.jsonl",
                        "".join(json.dumps(review_json(r), allow_nan=False) + "\n" for r in reviews),
                    )
                    zf.writestr(
                        "selection.json",
                        json.dumps(
                            selection | {"entries": n, "exported": iso(time.time_ns())},
                            indent=2,
                            allow_nan=False,
                        ),
                    )
                return name, n

            name, n = await run_in_threadpool(write)
        finally:
            page.export_lock.release()
        stamp = datetime.now().astimezone().strftime("%Y%m%d-%H%M%S%z")
        return FileResponse(
            name,
            media_type="application/zip",
            filename=f"rejects-{stamp}.zip",
            headers={"x-entries": str(n)},
            background=BackgroundTask(os.unlink, name),
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/index.html", index, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/api/rejects", rejects, methods=["GET"]),
        Route("/api/image/{entry}/evidence", make_evidence, methods=["POST"]),
        Route("/api/image/{entry}/{kind}", image, methods=["GET"]),
        Route("/api/reviews/{entry}", get_reviews, methods=["GET"]),
        Route("/api/reviews/{entry}", post_review, methods=["POST"]),
        Route("/api/export", export, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(Guard, allowed_hosts=allowed_hosts, token=token, csrf=page.csrf, failures=failures)
        ],
        exception_handlers={HTTPException: http_error},
    )
