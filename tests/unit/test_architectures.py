"""The five defect classifiers: standard topologies, width and input size as knobs, 1-channel input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.architectures import ARCHS, Bottleneck, InceptionV3, backbone
from engines.models import DefectNet, count_flops, param_count

# Published sizes with 1000 classes and 3 input channels; ours have 2 classes and 1 channel, so slightly fewer.
PUBLISHED = {"alexnet": (56.9e6, 61.1e6), "resnet50": (23.4e6, 25.6e6), "inceptionv3": (21.7e6, 23.9e6)}


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_width_one_has_the_published_size(arch):
    lo, hi = PUBLISHED[arch]
    n = param_count(backbone(arch, 1, 2, 1.0))
    assert lo <= n <= hi, f"{arch}: {n / 1e6:.2f} M parameters"


def test_resnet50_is_bottlenecks_3_4_6_3_and_inception_has_its_blocks():
    r = backbone("resnet50", 1, 2, 0.25)
    assert sum(isinstance(m, Bottleneck) for m in r.modules()) == 3 + 4 + 6 + 3
    # 1 stem conv + 16 blocks x 3 convs + 4 projection shortcuts + the FC = 50 weighted layers.
    convs = [m for m in r.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) - 4 + 1 == 50
    inc = backbone("inceptionv3", 1, 2, 0.25)
    assert isinstance(inc, InceptionV3)
    # stem (7 layers) + A x3 + B + C x4 + D + E x2
    assert len(inc.features) == 7 + 3 + 1 + 4 + 1 + 2


def test_resnet50_flops_at_224_match_the_published_figure():
    # ~4.1 G multiply-adds with 3 channels at 224 px; the 1-channel stem saves a little.
    f = count_flops(
        DefectNet(width=1.0, input_size=224, arch="resnet50"), torch.zeros(1, 1, 224, 224, dtype=torch.uint8)
    )
    assert 7.8e9 < f < 8.3e9


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("size", "width"), [(80, 0.0625), (150, 0.125)])
def test_every_arch_takes_uint8_frames_of_any_size(arch, size, width):
    model = DefectNet(width=width, input_size=size, arch=arch).eval()
    for shape in ((3, 1, 300, 300), (1, 1, 240, 320)):
        with torch.no_grad():
            out = model(torch.randint(0, 256, shape, dtype=torch.uint8))
        assert out.shape == (shape[0], 2)
        assert torch.isfinite(out).all()


def test_width_scales_every_layer():
    small, big = (param_count(backbone("resnet50", 1, 2, w)) for w in (0.125, 0.25))
    assert 3.0 < big / small < 4.5  # conv weights scale with width squared


def test_unknown_arch_and_too_small_inception_input_are_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'; valid: cnn, alexnet"):
        DefectNet(arch="vgg19")
    with pytest.raises(ValueError, match="at least 75 px"):
        DefectNet(input_size=64, arch="inceptionv3")


def test_vgg16_avgmax_head_sees_a_single_hot_cell_that_an_average_dilutes():
    from engines.architectures import AvgMaxPool, pooled_head

    x = torch.zeros(2, 3, 6, 6)
    x[1, :, 4, 2] = 36.0  # one cell of a 6x6 map lit
    pooled = AvgMaxPool()(x)
    assert pooled.shape == (2, 6, 1, 1)
    assert torch.allclose(pooled[1, :3, 0, 0], torch.ones(3))  # average: 36 / 36
    assert torch.allclose(pooled[1, 3:, 0, 0], torch.full((3,), 36.0))  # max keeps it
    assert pooled_head(3, 8, 2, 0.0, "avgmax")[2].in_features == 6
    model = DefectNet(width=0.0625, input_size=64, pool="avgmax").eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 300, 300, dtype=torch.uint8)).shape == (2, 2)
    with pytest.raises(ValueError, match="unknown pooling 'sum'"):
        pooled_head(3, 8, 2, 0.0, "sum")
