"""Camera health: a maintenance alarm per camera, from the frames it sends (never a verdict).

A camera that slowly goes bad - a dirty lens, a new interference source, a
failing light - shows up as a drift of the noise-type mix or of the image's
brightness long before the reject rate climbs. Per camera, over its last
``window`` inspected frames, the publisher tracks the share of frames the
noise classifier called something other than clean, the mean noise
confidence, and the mean brightness and contrast (mean and standard deviation
of the pixels). Past a configured limit the camera's state turns ``alarm``
with a reason a maintenance technician can act on, e.g. "gaussian share 42%
over the last 500 frames, limit 10%"; it clears when the window is back within
the limits. Frames keep being inspected either way.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HealthLimits:
    window: int = 500
    min_frames: int = 100  # judge a camera only once its window holds this many frames
    max_noisy_share: float = 0.2  # frames called gaussian / salt_pepper / periodic
    max_type_share: float = 0.1  # any one noise type
    brightness_min: float = 30.0
    brightness_max: float = 225.0
    contrast_min: float = 8.0


@dataclass
class CameraHealth:
    limits: HealthLimits
    noise: deque[str] = field(default_factory=deque)
    brightness: deque[float] = field(default_factory=deque)
    contrast: deque[float] = field(default_factory=deque)
    confidence: deque[float] = field(default_factory=deque)
    state: str = "ok"
    reason: str | None = None

    def add(self, noise_type: str, confidence: float, brightness: float, contrast: float) -> bool:
        """Count one inspected frame; True when the state changed."""
        for q, v in (
            (self.noise, noise_type),
            (self.confidence, confidence),
            (self.brightness, brightness),
            (self.contrast, contrast),
        ):
            q.append(v)  # type: ignore[arg-type]
            if len(q) > self.limits.window:
                q.popleft()
        before = self.state
        self.reason = self._assess()
        self.state = "alarm" if self.reason else "ok"
        return self.state != before

    def _assess(self) -> str | None:
        lim, n = self.limits, len(self.noise)
        if n < lim.min_frames:
            return None
        reasons = []
        kinds = Counter(self.noise)
        noisy = n - kinds.get("clean", 0)
        if noisy / n > lim.max_noisy_share:
            reasons.append(
                f"noisy share {noisy / n:.0%} over the last {n} frames, limit {lim.max_noisy_share:.0%}"
            )
        for kind, count in sorted(kinds.items()):
            if kind != "clean" and count / n > lim.max_type_share:
                reasons.append(
                    f"{kind} share {count / n:.0%} over the last {n} frames, limit {lim.max_type_share:.0%}"
                )
        b = sum(self.brightness) / n
        if not lim.brightness_min <= b <= lim.brightness_max:
            reasons.append(
                f"mean brightness {b:.0f} over the last {n} frames, limits {lim.brightness_min:g}..{lim.brightness_max:g}"
            )
        c = sum(self.contrast) / n
        if c < lim.contrast_min:
            reasons.append(f"mean contrast {c:.1f} over the last {n} frames, limit {lim.contrast_min:g}")
        return "; ".join(reasons) or None

    def summary(self) -> dict[str, object]:
        n = len(self.noise)
        kinds = Counter(self.noise)
        return {
            "state": self.state,
            "reason": self.reason,
            "frames": n,
            "noisy_share": round((n - kinds.get("clean", 0)) / n, 4) if n else None,
            "mean_confidence": round(sum(self.confidence) / n, 4) if n else None,
            "brightness": round(sum(self.brightness) / n, 2) if n else None,
            "contrast": round(sum(self.contrast) / n, 2) if n else None,
        }


class Cameras:
    """Health per camera id (at most ``max_cameras``, so a hostile sender cannot grow it forever)."""

    def __init__(self, limits: HealthLimits, max_cameras: int = 64) -> None:
        self.limits = limits
        self.max_cameras = max_cameras
        self.cams: dict[str, CameraHealth] = {}

    def add(
        self, camera_id: str, noise_type: str, confidence: float, brightness: float, contrast: float
    ) -> bool:
        cam = self.cams.get(camera_id)
        if cam is None:
            if len(self.cams) >= self.max_cameras:
                return False
            cam = self.cams[camera_id] = CameraHealth(self.limits)
        return cam.add(noise_type, confidence, brightness, contrast)

    def summary(self) -> dict[str, dict[str, object]]:
        return {cid: cam.summary() for cid, cam in self.cams.items()}
