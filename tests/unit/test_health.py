"""Camera health: the alarm rises with the noise mix or brightness and clears when it falls back."""

from __future__ import annotations

from inspector.daemon.health import Cameras, HealthLimits

LIM = HealthLimits(window=100, min_frames=50, max_noisy_share=0.2, max_type_share=0.1)


def test_a_rising_gaussian_share_raises_the_alarm_with_a_reason_and_it_clears():
    cams = Cameras(LIM)
    for _ in range(100):
        assert not cams.add("cam0", "clean", 0.99, 120.0, 40.0)
    assert cams.cams["cam0"].state == "ok"
    changes = []
    for i in range(100):  # the lens gets grainy: every third frame is called gaussian
        kind = "gaussian" if i % 3 == 0 else "clean"
        if cams.add("cam0", kind, 0.9, 120.0, 40.0):
            changes.append(i)
    cam = cams.cams["cam0"]
    assert cam.state == "alarm" and len(changes) == 1
    assert "gaussian share" in cam.reason and "limit 10%" in cam.reason and "noisy share" in cam.reason
    for _ in range(100):
        cams.add("cam0", "clean", 0.99, 120.0, 40.0)
    assert cam.state == "ok" and cam.reason is None
    summary = cams.summary()["cam0"]
    assert summary["state"] == "ok" and summary["noisy_share"] == 0.0 and summary["frames"] == 100


def test_brightness_and_contrast_limits_and_the_minimum_window():
    cams = Cameras(LIM)
    for _ in range(49):
        cams.add("dark", "clean", 0.99, 10.0, 40.0)
    assert cams.cams["dark"].state == "ok"  # not judged before min_frames
    cams.add("dark", "clean", 0.99, 10.0, 40.0)
    assert cams.cams["dark"].state == "alarm" and "mean brightness 10" in cams.cams["dark"].reason
    for _ in range(60):
        cams.add("flat", "clean", 0.99, 120.0, 2.0)
    assert "mean contrast 2.0" in cams.cams["flat"].reason


def test_cameras_are_bounded():
    cams = Cameras(LIM, max_cameras=3)
    for i in range(10):
        cams.add(f"c{i}", "clean", 1.0, 100.0, 30.0)
    assert len(cams.cams) == 3
