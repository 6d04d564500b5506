"""The defect classifiers the study compared, beside VGG16: a small CNN, AlexNet, ResNet50, InceptionV3.

torchvision cannot be installed beside the pinned CPU torch, so the standard
topologies are written here in plain torch. Every backbone takes float input
``(N, C, S, S)`` and has the same knobs as :class:`engines.models.VGG16`: the
number of input channels (1 here: grayscale), the number of classes, and a
channel ``width`` multiplier (1.0 is the published network; every layer's
channels scale with it, never below 4). The input size is the caller's
(:class:`engines.models.DefectNet` resizes inside the graph). All of them use
batch norm after every convolution (AlexNet did not have it; short CPU
training runs need it) and a global-average-pool or fixed-pool head, so any
input size from 75 px (InceptionV3's minimum) upwards works.

| arch         | topology                                                               |
|--------------|------------------------------------------------------------------------|
| cnn          | the study's baseline: 3 blocks of two 3x3 convs (64, 128, 256), max-pool, dense head |
| alexnet      | 5 conv (11x11/4, 5x5, 3x3 x3; 64-192-384-256-256), 3 max-pools, 6x6 pool, FC 4096-4096 |
| vgg16        | 13 3x3 conv in 5 blocks, max-pooling (``engines.models.VGG16``)         |
| resnet50     | 7x7/2 stem, bottleneck blocks 3-4-6-3 (64..512 x4), stride on the 3x3 (v1.5) |
| inceptionv3  | its stem, Inception A x3, B, C x4, D, E x2 (no auxiliary head)          |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def scaled(channels: int, width: float) -> int:
    return max(round(channels * width), 4)


class ConvBN(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class AvgMaxPool(nn.Module):
    """Global average and global max pool, concatenated: ``(N, C, H, W)`` -> ``(N, 2C, 1, 1)``.

    The max keeps a defect that lights up one cell of the last feature map; an
    average alone divides it by the map's area (36 cells at 192 px).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)], dim=1)


POOLS = ("avg", "avgmax")


def pooled_head(c_in: int, hidden: int, num_classes: int, dropout: float, pool: str = "avg") -> nn.Sequential:
    """Global pool (average, or average and max), one hidden FC layer with dropout, the class logits."""
    if pool not in POOLS:
        raise ValueError(f"unknown pooling {pool!r}; valid: {', '.join(POOLS)}")
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1) if pool == "avg" else AvgMaxPool(),
        nn.Flatten(),
        nn.Linear(c_in * (1 if pool == "avg" else 2), hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class SmallCNN(nn.Module):
    """The study's baseline CNN: three conv-conv-pool blocks (VGG's first three widths) and a dense head.

    The study does not give its CNN's widths; 64-128-256 are VGG16's first three blocks, so at a
    given width multiplier the baseline differs from VGG16 only in depth.
    """

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in (64, 128, 256):
            c_out = scaled(c, width)
            layers += [ConvBN(c_in, c_out, 3, padding=1), ConvBN(c_out, c_out, 3, padding=1), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = pooled_head(c_in, scaled(256, width), num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class AlexNet(nn.Module):
    """AlexNet (the torchvision single-tower layout), with batch norm."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: float = 1.0,
        input_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 192, 384, 256, 256))
        side = (input_size + 4 - 11) // 4 + 1
        for _ in range(3):
            side = (side - 3) // 2 + 1
        pool = max(min(6, side), 1)  # 6x6 at 224 px as published; smaller inputs keep what they have
        self.features = nn.Sequential(
            ConvBN(in_channels, c1, 11, stride=4, padding=2),
            nn.MaxPool2d(3, 2),
            ConvBN(c1, c2, 5, padding=2),
            nn.MaxPool2d(3, 2),
            ConvBN(c2, c3, 3, padding=1),
            ConvBN(c3, c4, 3, padding=1),
            ConvBN(c4, c5, 3, padding=1),
            nn.MaxPool2d(3, 2),
        )
        hidden = scaled(4096, width)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c5 * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus the shortcut."""

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        c_out = planes * 4
        self.body = nn.Sequential(
            ConvBN(c_in, planes, 1),
            ConvBN(planes, planes, 3, stride=stride, padding=1),
            nn.Conv2d(planes, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet50: stem, then bottleneck stages of 3, 4, 6 and 3 blocks, global average pool, FC."""

    STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c = scaled(64, width)
        layers: list[nn.Module] = [
            ConvBN(in_channels, c, 7, stride=2, padding=3),
            nn.MaxPool2d(3, 2, padding=1),
        ]
        for planes, blocks, stride in self.STAGES:
            p = scaled(planes, width)
            for i in range(blocks):
                layers.append(Bottleneck(c, p, stride if i == 0 else 1))
                c = p * 4
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
        for m in self.modules():  # zero-init the last BN of each block: every block starts as the identity
            if isinstance(m, Bottleneck):
                bn = m.body[-1]
                assert isinstance(bn, nn.BatchNorm2d)
                nn.init.zeros_(bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Branches(nn.Module):
    """Parallel branches concatenated on channels; ``out_channels`` is their sum."""

    def __init__(self, branches: list[nn.Module], out_channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


def _pool_branch(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.AvgPool2d(3, 1, padding=1), ConvBN(c_in, c_out, 1))


def inception_a(c_in: int, pool_features: int, w: Callable[[int], int]) -> _Branches:
    b1, b5a, b5, b3a, b3, bp = w(64), w(48), w(64), w(64), w(96), w(pool_features)
    return _Branches(
        [
            ConvBN(c_in, b1, 1),
            nn.Sequential(ConvBN(c_in, b5a, 1), ConvBN(b5a, b5, 5, padding=2)),
            nn.Sequential(ConvBN(c_in, b3a, 1), ConvBN(b3a, b3, 3, padding=1), ConvBN(b3, b3, 3, padding=1)),
            _pool_branch(c_in, bp),
        ],
        b1 + b5 + b3 + bp,
    )


def inception_b(c_in: int, w: Callable[[int], int]) -> _Branches:
    b3, d1, d2 = w(384), w(64), w(96)
    return _Branches(
        [
            ConvBN(c_in, b3, 3, stride=2),
            nn.Sequential(ConvBN(c_in, d1, 1), ConvBN(d1, d2, 3, padding=1), ConvBN(d2, d2, 3, stride=2)),
            nn.MaxPool2d(3, 2),
        ],
        b3 + d2 + c_in,
    )


def inception_c(c_in: int, c7: int, w: Callable[[int], int]) -> _Branches:
    b, m = w(192), w(c7)
    return _Branches(
        [
            ConvBN(c_in, b, 1),
            nn.Sequential(
                ConvBN(c_in, m, 1), ConvBN(m, m, (1, 7), padding=(0, 3)), ConvBN(m, b, (7, 1), padding=(3, 0))
            ),
            nn.Sequential(
                ConvBN(c_in, m, 1),
                ConvBN(m, m, (7, 1), padding=(3, 0)),
                ConvBN(m, m, (1, 7), padding=(0, 3)),
                ConvBN(m, m, (7, 1), padding=(3, 0)),
                ConvBN(m, b, (1, 7), padding=(0, 3)),
            ),
            _pool_branch(c_in, b),
        ],
        4 * b,
    )


def inception_d(c_in: int, w: Callable[[int], int]) -> _Branches:
    b, b3 = w(192), w(320)
    return _Branches(
        [
            nn.Sequential(ConvBN(c_in, b, 1), ConvBN(b, b3, 3, stride=2)),
            nn.Sequential(
                ConvBN(c_in, b, 1),
                ConvBN(b, b, (1, 7), padding=(0, 3)),
                ConvBN(b, b, (7, 1), padding=(3, 0)),
                ConvBN(b, b, 3, stride=2),
            ),
            nn.MaxPool2d(3, 2),
        ],
        b3 + b + c_in,
    )


class _SplitPair(nn.Module):
    """InceptionE's split: one input, a (1x3) and a (3x1) conv side by side."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.a = ConvBN(c_in, c_out, (1, 3), padding=(0, 1))
        self.b = ConvBN(c_in, c_out, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


def inception_e(c_in: int, w: Callable[[int], int]) -> _Branches:
    b1, b3, bd, bp = w(320), w(384), w(448), w(192)
    return _Branches(
        [
            ConvBN(c_in, b1, 1),
            nn.Sequential(ConvBN(c_in, b3, 1), _SplitPair(b3, b3)),
            nn.Sequential(ConvBN(c_in, bd, 1), ConvBN(bd, b3, 3, padding=1), _SplitPair(b3, b3)),
            _pool_branch(c_in, bp),
        ],
        b1 + 2 * b3 + 2 * b3 + bp,
    )


class InceptionV3(nn.Module):
    """InceptionV3: stem, Inception A x3 (pool features 32, 64, 64), B, C x4 (c7 128, 160, 160, 192),
    D, E x2, global average pool, dropout, FC. Needs at least 75 px of input."""

    MIN_INPUT = 75

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()

        def w(c: int) -> int:
            return scaled(c, width)

        stem = [
            ConvBN(in_channels, w(32), 3, stride=2),
            ConvBN(w(32), w(32), 3),
            ConvBN(w(32), w(64), 3, padding=1),
            nn.MaxPool2d(3, 2),
            ConvBN(w(64), w(80), 1),
            ConvBN(w(80), w(192), 3),
            nn.MaxPool2d(3, 2),
        ]
        blocks: list[_Branches] = []
        c = w(192)
        for pf in (32, 64, 64):
            blocks.append(inception_a(c, pf, w))
            c = blocks[-1].out_channels
        blocks.append(inception_b(c, w))
        c = blocks[-1].out_channels
        for c7 in (128, 160, 160, 192):
            blocks.append(inception_c(c, c7, w))
            c = blocks[-1].out_channels
        blocks.append(inception_d(c, w))
        c = blocks[-1].out_channels
        for _ in range(2):
            blocks.append(inception_e(c, w))
            c = blocks[-1].out_channels
        self.features = nn.Sequential(*stem, *blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def backbone(
    arch: str, in_channels: int, num_classes: int, width: float, input_size: int = 224, pool: str = "avg"
) -> nn.Module:
    """The classifier ``arch`` (one of :data:`ARCHS`) on float input; ``pool`` is VGG16's global pooling."""
    from engines.models import VGG16

    builders: dict[str, Callable[[], nn.Module]] = {
        "cnn": lambda: SmallCNN(in_channels, num_classes, width),
        "alexnet": lambda: AlexNet(in_channels, num_classes, width, input_size),
        "vgg16": lambda: VGG16(in_channels, num_classes, width, pool=pool),
        "resnet50": lambda: ResNet50(in_channels, num_classes, width),
        "inceptionv3": lambda: InceptionV3(in_channels, num_classes, width),
    }
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    return builders[arch]()


ARCHS = ("cnn", "alexnet", "vgg16", "resnet50", "inceptionv3")
