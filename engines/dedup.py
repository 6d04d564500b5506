"""Byte-identical photographs, augmented copies, and leak-free splits.

The public casting set's 300x300 photographs were made from 1300 originals by
augmentation (turns, mirror images, shifts, zoom), so one photograph can appear
several times, at another angle, in ``train`` and in ``test``; 64 ``ok_front``
files are even byte-identical across the two.

**The copy test** (``copy_score``): ORB keypoints on the part, matched
against the photograph and its mirror image, a rotation+shift+scale fit with
RANSAC refined with ECC, then the texture of the part's face that every part
of the mould does not share (``_residual``) correlated. Copies of one
photograph, and shots of one part in one pose under one light, score near 1;
another part from the mould scores far lower, and the same part turned under
the light near the threshold. ``COPY_MIN`` sits in the gap the probe
(``python -m engines.dedup``, ``docs/dedup-probe.json``) shows. A cheap
rotation- and mirror-invariant descriptor (the photograph in polar
coordinates about the hub, the magnitude of its Fourier transform along the
angle) ranks a photograph's copies first, so each photograph is scored
against its nearest few only. The test decides which test photographs leak
from ``train`` (``leaked_test``) and links ``train`` into groups of copies
(``copy_groups``) that validation and calibration are carved by
(``engines.splits``). (An earlier keypoint-count test carved them before: it
matched the mould's shape, not one photograph, and its carve leaked.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm


def part_centre(frame: np.ndarray) -> tuple[float, float]:
    """The centre of the part's dark hub: the centroid of the dark pixels (Otsu) inside a window about
    the image centre, moved onto that centroid three times (the table around the part is left out)."""
    h, w = frame.shape
    g = cv2.GaussianBlur(frame, (0, 0), 2)
    t, _ = cv2.threshold(g, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = (g < t).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = w / 2, h / 2
    for _ in range(3):
        window = dark * (((xx - cx) ** 2 + (yy - cy) ** 2) <= (0.3 * min(h, w)) ** 2)
        mass = window.sum()
        if mass <= 0:
            break
        cx, cy = float((window * xx).sum() / mass), float((window * yy).sum() / mass)
    return cx, cy


def descriptor(frame: np.ndarray) -> np.ndarray:
    """Unit-norm rotation- and mirror-invariant descriptor of a (H, W) uint8 photograph."""
    h, w = frame.shape
    cx, cy = part_centre(frame)
    # Polar resampling with explicit maps (cv2.warpPolar read uninitialised memory here: its output
    # changed from call to call on the same photograph).
    theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)[:, None]
    radius = np.linspace(0, 0.48 * min(h, w), 48)[None, :]
    map_x = (cx + radius * np.cos(theta)).astype(np.float32)
    map_y = (cy + radius * np.sin(theta)).astype(np.float32)
    polar = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    spec = np.abs(np.fft.rfft(polar.astype(np.float64), axis=0))[1:25]
    v = np.log1p(spec).ravel()
    v -= v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-12)


def descriptors(frames: np.ndarray) -> np.ndarray:
    return np.stack([descriptor(f) for f in frames])


Features = tuple[np.ndarray, np.ndarray | None]  # keypoint coordinates (N, 2), ORB descriptors (N, 32)


def keypoints(frame: np.ndarray) -> tuple[Features, Features]:
    """ORB keypoints on the part (a disc about its hub) of ``frame`` and of its mirror image."""
    orb = cv2.ORB_create(nfeatures=300, fastThreshold=10)  # type: ignore[attr-defined]
    out = []
    for img in (frame, np.ascontiguousarray(frame[:, ::-1])):
        cx, cy = part_centre(img)
        mask = np.zeros_like(img)
        cv2.circle(mask, (round(cx), round(cy)), int(0.45 * min(img.shape)), 255, -1)
        kps, desc = orb.detectAndCompute(img, mask)
        out.append((np.array([k.pt for k in kps], np.float32).reshape(-1, 2), desc))
    return out[0], out[1]


def _candidates(query: np.ndarray, pool: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    out = []
    for i in range(0, len(query), 512):
        sim = np.round(query[i : i + 512] @ pool.T, 6)
        if exclude_self:
            sim[np.arange(len(sim)), np.arange(i, i + len(sim))] = -np.inf
        out.append(np.argsort(-sim, axis=1, kind="stable")[:, :k])
    return np.concatenate(out)


# The copy test: an augmented copy of one photograph, told apart from another photograph of a part
# cast in the same mould (docs/dedup-probe.json).

COPY_MIN = 0.85
COPY_CANDIDATES = 8
GROUP_CANDIDATES = 48
GROUP_MISSES = 2
ALIGN_MIN_INLIERS = 12
HIST_BINS = [-1.0, 0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0]
FACE = (0.233, 0.373)  # the part's machined face: radii about the hub, as fractions of the frame size


def _align(a: Features, b: Features, matcher: Any) -> tuple[int, np.ndarray | None]:
    """RANSAC inlier count and the rotation+shift+scale matrix taking ``a``'s keypoints onto ``b``'s."""
    if a[1] is None or b[1] is None or len(a[0]) < 5 or len(b[0]) < 5:
        return 0, None
    matches = matcher.match(a[1], b[1])
    if len(matches) < 5:
        return 0, None
    pa = a[0][[m.queryIdx for m in matches]]
    pb = b[0][[m.trainIdx for m in matches]]
    cv2.setRNGSeed(0)  # RANSAC draws from OpenCV's generator: seeded, so results never move
    m, inl = cv2.estimateAffinePartial2D(pa, pb, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    return (0, None) if inl is None else (int(inl.sum()), m)


def _face(img: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """The part's face in polar coordinates about (cx, cy): 720 angles by 56 radii."""
    h, w = img.shape
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)[:, None]
    radius = np.linspace(FACE[0] * min(h, w), FACE[1] * min(h, w), 56)[None, :]
    map_x = (cx + radius * np.cos(theta)).astype(np.float32)
    map_y = (cy + radius * np.sin(theta)).astype(np.float32)
    return cv2.remap(img.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _residual(face: np.ndarray) -> np.ndarray:
    """What every part of the mould shares taken out of a polar face: the mean of each radius (the
    turned rings) and slow change along the angle (the light's sweep)."""
    p = face - face.mean(axis=0, keepdims=True)
    wrapped = np.pad(p, ((90, 90), (0, 0)), mode="wrap")  # the angle goes round: blur across 0/360
    return p - cv2.GaussianBlur(wrapped, (1, 0), sigmaX=0.1, sigmaY=30)[90:-90]


def copy_score(
    a: np.ndarray,
    b: np.ndarray,
    fa: tuple[Features, Features] | None = None,
    fb: tuple[Features, Features] | None = None,
) -> float:
    """How surely photograph ``b`` is an augmented copy of photograph ``a`` (turned, mirrored, shifted,
    zoomed), in [-1, 1]; at ``COPY_MIN`` or above it is one.

    ``b`` is aligned onto ``a`` (or onto ``a``'s mirror image) from ORB matches, the alignment refined
    with ECC (a homography), and the residual texture of the two faces (``_residual``) correlated. A
    copy of one photograph keeps every pore, scratch and reflection and scores near 1; another part from
    the same mould scores far lower; the same physical part photographed again, turned under the light,
    lands near ``COPY_MIN``. ``fa`` / ``fb``: ``keypoints`` of the two, when the caller has them.
    """
    fa = keypoints(a) if fa is None else fa
    fb = keypoints(b) if fb is None else fb
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    (n0, m0), (n1, m1) = _align(fa[0], fb[0], matcher), _align(fa[1], fb[0], matcher)
    mirrored = n1 > n0
    n, m = (n1, m1) if mirrored else (n0, m0)
    if m is None or n < ALIGN_MIN_INLIERS:
        return -1.0
    ref = np.ascontiguousarray(a[:, ::-1]) if mirrored else a
    h, w = ref.shape
    back = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(b, m, (w, h), flags=back)
    valid = cv2.warpAffine(np.full_like(b, 255), m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    try:
        _, hom = cv2.findTransformECC(
            ref.astype(np.float32),
            moved.astype(np.float32),
            np.eye(3, dtype=np.float32),
            cv2.MOTION_HOMOGRAPHY,
            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5),
            (valid > 0).astype(np.uint8),
            5,
        )
        moved = cv2.warpPerspective(moved, hom, (w, h), flags=back)
        valid = cv2.warpPerspective(valid, hom, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    except cv2.error:  # ECC did not converge: judge on the keypoint alignment alone
        pass
    cx, cy = part_centre(ref)
    inside = _face(valid, cx, cy) > 254
    if inside.sum() < 1000:
        return -1.0
    x = _residual(_face(ref, cx, cy))[inside]
    y = _residual(_face(moved, cx, cy))[inside]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (np.sqrt(float((x * x).sum()) * float((y * y).sum())) + 1e-9))


def copies_in(
    query: np.ndarray,
    pool: np.ndarray,
    progress: bool = False,
    desc: str = "copies",
    k: int = COPY_CANDIDATES,
) -> np.ndarray:
    """For each ``query`` photograph, its best ``copy_score`` against the ``k`` photographs of ``pool``
    the descriptor ranks nearest (checked nearest first, stopping at the first copy). The descriptor
    ranks a photograph's copies ahead of every other photograph (docs/dedup-probe.json), so the nearest
    few hold a copy if the pool has one."""
    cand = _candidates(descriptors(query), descriptors(pool), min(k, len(pool)), exclude_self=False)
    pool_feats: dict[int, tuple[Features, Features]] = {}
    best = np.full(len(query), -1.0)
    for i in tqdm(range(len(query)), desc=desc, disable=not progress, leave=False):
        mine = keypoints(query[i])
        for j in map(int, cand[i]):
            if j not in pool_feats:
                pool_feats[j] = keypoints(pool[j])
            best[i] = max(best[i], copy_score(query[i], pool[j], mine, pool_feats[j]))
            if best[i] >= COPY_MIN:
                break
    return best


def copy_groups(frames: np.ndarray, progress: bool = False, desc: str = "copy groups") -> np.ndarray:
    """A group id per photograph: photographs linked by the copy test share one (union-find).

    Each photograph is scored against the ``GROUP_CANDIDATES`` the descriptor ranks nearest, nearest
    first; a candidate already in its group is skipped (no score needed), and the ``GROUP_MISSES``-th
    candidate that is not a copy ends the photograph's turn (copies rank ahead of other photographs,
    docs/dedup-probe.json). The window is wide because a family of hundreds of copies splits into
    cliques under a few nearest neighbours (8 left a quarter of the validation photographs with copies
    in training). About 0.1 s per score on one core; linking needs at most one score per photograph
    joined, plus the misses."""
    n = len(frames)
    parent = np.arange(n)
    if n < 2:
        return parent

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    d = descriptors(frames)
    cand = _candidates(d, d, min(GROUP_CANDIDATES, n - 1), exclude_self=True)
    feats: dict[int, tuple[Features, Features]] = {}

    def feat(i: int) -> tuple[Features, Features]:
        if i not in feats:
            feats[i] = keypoints(frames[i])
        return feats[i]

    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False, mininterval=5):
        misses = 0
        for j in map(int, cand[i]):
            a, b = find(i), find(j)
            if a == b:
                continue
            if copy_score(frames[i], frames[j], feat(i), feat(j)) >= COPY_MIN:
                parent[max(a, b)] = min(a, b)
                continue
            misses += 1
            if misses >= GROUP_MISSES:
                break
    return np.array([find(i) for i in range(n)])


def file_hashes(files: tuple[Path, ...] | list[Path]) -> list[str]:
    return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]


def leaked_test(
    test_frames: np.ndarray,
    test_files: tuple[Path, ...] | list[Path],
    train_frames: np.ndarray,
    train_files: tuple[Path, ...] | list[Path],
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Which test photographs also sit in ``train``: byte-identical, or an augmented copy of a training
    photograph (``copy_score`` >= ``COPY_MIN``). ``score``: the best copy score found."""
    train_hashes = set(file_hashes(train_files))
    identical = np.array([h in train_hashes for h in file_hashes(test_files)], bool)
    score = np.full(len(test_frames), 1.0)
    rest = np.nonzero(~identical)[0]
    if len(rest):
        score[rest] = copies_in(test_frames[rest], train_frames, progress, "test leakage")
    near = (score >= COPY_MIN) & ~identical
    return {"identical": identical, "near": near, "score": score}


def probe(
    frames: np.ndarray, queries: int, seed: int = 0, window: int = 400, progress: bool = False
) -> dict[str, Any]:
    """How well the copy test separates copies from other photographs of the mould's parts: ``queries``
    photographs drawn at random, each scored against the ``window`` photographs the descriptor ranks
    nearest. A test that works shows a gap: copies near 1, everything else well below ``COPY_MIN``; and
    the descriptor ranks the copies first (``copies_within_rank`` = ``copies``), which is what lets
    ``copies_in`` look at a few candidates only."""
    d = descriptors(frames)
    window = min(window, len(frames) - 1)
    cand = _candidates(d, d, window, exclude_self=True)
    picks = np.sort(np.random.default_rng([seed, 7]).choice(len(frames), size=queries, replace=False))
    rows = []
    for i in tqdm(picks.tolist(), desc="copy scores", disable=not progress, leave=False):
        mine = keypoints(frames[i])
        score = np.array([copy_score(frames[i], frames[j], mine) for j in cand[i]])
        copy = score >= COPY_MIN
        rank = np.nonzero(copy)[0]
        rows.append(
            {
                "index": int(i),
                "copies": int(copy.sum()),
                "copies_within_rank": int(rank.max() + 1) if len(rank) else 0,
                "lowest_copy_score": round(float(score[copy].min()), 4) if copy.any() else None,
                "highest_other_score": round(float(score[~copy].max()), 4) if (~copy).any() else None,
                "histogram": np.histogram(score, bins=HIST_BINS)[0].tolist(),
                "scores": [round(float(x), 3) for x in np.sort(score)[::-1]],
            }
        )
    copies = [int(r["copies"]) for r in rows]
    lows = [r["lowest_copy_score"] for r in rows if r["lowest_copy_score"] is not None]
    highs = [r["highest_other_score"] for r in rows if r["highest_other_score"] is not None]
    return {
        "photographs": len(frames),
        "queries": queries,
        "seed": seed,
        "window": window,
        "copy_min": COPY_MIN,
        "histogram_bins": HIST_BINS,
        "copies_per_photograph_min_median_max": [int(x) for x in np.percentile(copies, [0, 50, 100])],
        "lowest_copy_score": min(lows) if lows else None,
        "highest_other_score": max(highs) if highs else None,
        "copies_ranked_first": sum(int(r["copies_within_rank"]) == int(r["copies"]) for r in rows),
        "expected_copies_per_original": round(7348 / 1300, 2),
        "rows": rows,
    }


def probe_gaps(result: dict[str, Any]) -> list[float | None]:
    """Per probed photograph: its lowest copy score minus the highest score of any other photograph
    (None without a copy in the window). Positive: the threshold sits in a gap for that photograph."""
    t = result["copy_min"]
    out: list[float | None] = []
    for row in result["rows"]:
        copies = [x for x in row["scores"] if x >= t]
        others = [x for x in row["scores"] if x < t]
        out.append(round(min(copies) - max(others), 3) if copies and others else None)
    return out


def _carved_copies(
    data: str, seed: int, name: str, sample: int | None, k: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    from engines.data import _folder, folder_parts

    frames = _folder(data, "train")[0]
    parts = folder_parts(data, seed)
    idx = parts[name]
    if sample is not None and sample < len(idx):
        idx = np.sort(np.random.default_rng([seed, 41]).choice(idx, size=sample, replace=False))
    return idx, copies_in(frames[idx], frames[parts["train"]], progress, f"{name} copies in train", k=k)


def carve_copies(
    data: str, seed: int, progress: bool = False, sample: int | None = None, k: int = COPY_CANDIDATES
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For the carved validation and calibration splits (engines.data.folder_parts), or a seeded
    ``sample`` of each: their photographs' indices into ``train`` and each one's best copy score against
    its ``k`` nearest photographs of the carved training split (the two splits in two processes)."""
    from concurrent.futures import ProcessPoolExecutor

    names = ("val", "calib")
    with ProcessPoolExecutor(2) as pool:
        got = pool.map(
            _carved_copies, *zip(*[(data, seed, n, sample, k, progress) for n in names], strict=True)
        )
        return dict(zip(names, got, strict=True))


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    from inspector.tools.folder import FolderDataset

    ap = argparse.ArgumentParser(
        prog="python -m engines.dedup",
        description="Probe the copy test: score QUERIES random train photographs against the WINDOW photographs "
        "the descriptor ranks nearest (about 30 s each on 2 cores), and write the scores as JSON. The README's "
        "dedup paragraph is generated from that file (python -m engines.readme); whether the carved splits "
        "hold copies of training photographs is counted by python -m engines.unseen.",
    )
    ap.add_argument(
        "--data", required=True, help="the casting data set (the folder holding train/ and test/)"
    )
    ap.add_argument("--queries", type=int, default=12, help="photographs to probe (default 12)")
    ap.add_argument(
        "--window", type=int, default=400, help="nearest photographs scored per query (default 400)"
    )
    ap.add_argument("--seed", type=int, default=0, help="draws the queries (default 0)")
    ap.add_argument("--out", type=Path, default=Path("docs/dedup-probe.json"))
    a = ap.parse_args(argv)
    bar = sys.stderr.isatty()
    frames, _ = FolderDataset.scan(Path(a.data), "train").load()
    result: dict[str, Any] = {
        "command": f"python -m engines.dedup --data DATA --queries {a.queries} --window {a.window} --seed {a.seed}"
    }
    result.update(probe(frames, a.queries, a.seed, a.window, progress=bar))
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"wrote {a.out}: copies per photograph (min/median/max) {result['copies_per_photograph_min_median_max']}, "
        f"lowest copy score {result['lowest_copy_score']}, highest other score {result['highest_other_score']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
