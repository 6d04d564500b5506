import numpy as np

from inspector.tools.synthetic import DEFECT_KINDS, FRAME_SIZE, ImpellerGenerator


def test_frames_are_300x300_uint8_and_in_range():
    s = ImpellerGenerator(seed=5).sample(0)
    assert s.image.shape == (FRAME_SIZE, FRAME_SIZE)
    assert s.image.dtype == np.uint8
    # The generator keeps clear of 0 and 255: saturated pixels belong to the noise models.
    assert s.image.min() >= 8 and s.image.max() <= 245


def test_same_seed_same_frames_in_any_order():
    a = ImpellerGenerator(seed=7)
    b = ImpellerGenerator(seed=7)
    forward = [a.sample(i).image for i in range(4)]
    backward = [b.sample(i).image for i in reversed(range(4))][::-1]
    for x, y in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_differ():
    x = ImpellerGenerator(seed=1).sample(0).image
    y = ImpellerGenerator(seed=2).sample(0).image
    assert np.abs(x.astype(int) - y.astype(int)).mean() > 1.0


def test_forced_labels_and_defect_records():
    g = ImpellerGenerator(seed=3)
    bad = g.sample(10, defective=True)
    good = g.sample(10, defective=False)
    assert bad.defective and 1 <= len(bad.defects) <= 3
    assert all(d.kind in DEFECT_KINDS for d in bad.defects)
    assert not good.defective and good.defects == []
    # Same part, same pose: the defect is the only difference, and it is visible.
    diff = np.abs(bad.image.astype(int) - good.image.astype(int))
    assert diff.max() >= 20


def test_defect_rate_is_respected():
    _, labels = ImpellerGenerator(seed=11, defect_rate=0.25).batch(0, 400)
    assert 0.18 < labels.mean() < 0.32


def test_every_defect_kind_appears():
    g = ImpellerGenerator(seed=2)
    kinds = {d.kind for i in range(60) for d in g.sample(i, defective=True).defects}
    assert kinds == set(DEFECT_KINDS)


def test_every_defect_records_how_many_pixels_it_changed():
    gen = ImpellerGenerator(seed=11)
    defects = [d for i in range(40) for d in gen.sample(i, defective=True).defects]
    assert defects and all(d.visible_px >= 0 for d in defects)
    assert sum(d.visible_px > 20 for d in defects) > 0.8 * len(defects)  # most are plainly drawn
