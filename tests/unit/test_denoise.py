import numpy as np

from inspector import noise as nz
from inspector.denoise import adaptive_median, median3
from inspector.synthetic import ImpellerGenerator


def _psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


def test_adaptive_median_leaves_clean_pixels_alone():
    clean = ImpellerGenerator(seed=4).sample(0).image
    noisy = nz.salt_pepper(clean, 0.1, np.random.default_rng(0))
    out = adaptive_median(noisy)
    untouched = (noisy != 0) & (noisy != 255)
    np.testing.assert_array_equal(out[untouched], noisy[untouched])
    assert not ((out == 0) | (out == 255)).any()


def test_adaptive_median_is_identity_on_clean_frames():
    clean = ImpellerGenerator(seed=4).sample(1).image
    np.testing.assert_array_equal(adaptive_median(clean), clean)


def test_adaptive_median_beats_median3_at_every_report_level():
    clean = ImpellerGenerator(seed=4).sample(2).image
    for density in (0.05, 0.10, 0.20):
        noisy = nz.salt_pepper(clean, density, np.random.default_rng(1))
        assert _psnr(adaptive_median(noisy), clean) > _psnr(median3(noisy), clean) + 1.0
