import math

import numpy as np
import pytest

from inspector import noise as nz


@pytest.fixture
def flat():
    return np.full((300, 300), 128, np.uint8)


def test_gaussian_sigma(flat):
    out = nz.gaussian(flat, 25, np.random.default_rng(0)).astype(float)
    assert abs(out.std() - 25) < 0.5
    assert abs(out.mean() - 128) < 0.5


def test_salt_pepper_density_and_balance(flat):
    out = nz.salt_pepper(flat, 0.10, np.random.default_rng(0))
    salt, pepper = (out == 255).mean(), (out == 0).mean()
    assert abs(salt + pepper - 0.10) < 0.005
    assert abs(salt - pepper) < 0.005
    assert ((out == 128) | (out == 0) | (out == 255)).all()


def test_periodic_peak_at_its_frequency(flat):
    s = nz.Sinusoid(amplitude=0.2, cycles=20, theta=0.0, phase=0.3)
    out = nz.periodic(flat, [s]).astype(float)
    spec = np.abs(np.fft.fft2(out - out.mean()))
    ky, kx = np.unravel_index(spec.argmax(), spec.shape)
    assert (ky, min(kx, 300 - kx)) == (0, 20)
    assert abs((out.max() - out.min()) / 2 - 0.2 * 255) < 1.5


def test_report_levels_have_one_main_level_per_type():
    mains = [lv.kind for lv in nz.REPORT_LEVELS if lv.main]
    assert sorted(mains) == sorted(nz.NOISE_TYPES)


def test_apply_level_is_seeded(flat):
    lv = nz.REPORT_LEVELS[2]
    a = nz.apply_level(flat, lv, np.random.default_rng(5))
    b = nz.apply_level(flat, lv, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_random_ranges(flat):
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = nz.random_sinusoid(rng)
        assert 0.05 <= s.amplitude <= 0.30 and 4 <= s.cycles <= 60 and 0 <= s.theta <= math.pi


def test_parse_mix():
    mix = nz.parse_mix("clean=3, gaussian=1")
    assert mix == {"clean": 0.75, "gaussian": 0.25}
    with pytest.raises(ValueError, match="unknown noise type"):
        nz.parse_mix("speckle=1")
    with pytest.raises(ValueError, match="not a number"):
        nz.parse_mix("clean=x")
    with pytest.raises(ValueError, match="no positive weight"):
        nz.parse_mix("clean=0")
