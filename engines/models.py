"""The three networks of the build step, each a plain ``nn.Module`` apart from the training loop.

Every exported network takes ``uint8`` frames shaped ``(N, 1, H, W)``: the
conversion to float, the resize and (stage 1) the spectrum live inside the
graph, so training and serving cannot disagree about preprocessing.

- :class:`VGG16` - the VGG16 topology (13 3x3 convolutions in 5 blocks with
  max-pooling, then a classifier head) with a channel ``width`` multiplier and
  an ``input_size``; width 1 at 224x224 is the study's VGG16 (with batch norm
  and a global-average-pool head).
- :class:`NoiseTypeNet` - stage 1: log-magnitude spectrum (DFT as constant
  cos/sin MatMuls) plus three spatial impulse channels, into a VGG16.
- :class:`DenoiseAE` - stage 2: a fully convolutional encoder/decoder with
  skip connections that predicts the noise residual; any frame size.
- :class:`DefectNet` - stage 3: a VGG16 (or another of ``engines.architectures``)
  on the resized frame, ok/defective.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nn.Module):
    """VGG16 topology on float input ``(N, C, S, S)``; ``width`` scales every layer's channels.

    ``pool`` picks the head's global pooling: ``avg`` (the noise classifier, engine sets before
    2026-11-25 evening) or ``avgmax`` (average and max concatenated: the defect classifier).
    """

    def __init__(
        self, in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.3, pool: str = "avg"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for block in VGG16_BLOCKS:
            for c in block:
                c_out = max(round(c * width), 4)
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        from engines.architectures import pooled_head

        self.head = pooled_head(c_in, max(round(512 * width), 16), num_classes, dropout, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.to(torch.float32) * (1.0 / 255.0)


# The defect stage's input normalisation: "fixed" (one mean and scale for every frame: engine sets
# before 2026-12-06) or "frame" (each frame standardised by its own mean and deviation).
NORMS = ("fixed", "frame")


class DefectNet(nn.Module):
    """Stage 3: uint8 ``(N, 1, H, W)`` -> logits ``(N, 2)`` for (ok, defective).

    The frame is resized (bilinear; for 300 -> 150 that is exactly a 2x2 mean)
    to ``input_size`` inside the graph, then normalised (``norm``, see ``NORMS``).
    """

    classes = ("ok", "defective")

    def __init__(
        self,
        width: float = 0.125,
        input_size: int = 150,
        arch: str = "vgg16",
        pool: str = "avg",
        norm: str = "fixed",
    ) -> None:
        from engines.architectures import InceptionV3, backbone

        super().__init__()
        if arch == "inceptionv3" and input_size < InceptionV3.MIN_INPUT:
            raise ValueError(
                f"inceptionv3 needs an input size of at least {InceptionV3.MIN_INPUT} px, not {input_size}"
            )
        if norm not in NORMS:
            raise ValueError(f"unknown input normalisation {norm!r}; valid: {', '.join(NORMS)}")
        self.input_size = input_size
        self.width = width
        self.arch = arch
        self.pool = pool
        self.norm = norm
        self.backbone = backbone(arch, 1, 2, width, input_size, pool)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        x = _to_float(frames)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if self.norm == "frame":
            # Each frame to zero mean and unit deviation: a lamp that dims or brightens (a gain) or a
            # change of contrast about the mean (an affine map) then gives the network the same input,
            # up to clipping and rounding. The floor (0.01 of full scale) keeps a flat frame finite.
            mean = x.mean(dim=(2, 3), keepdim=True)
            centred = x - mean
            return centred * torch.rsqrt((centred * centred).mean(dim=(2, 3), keepdim=True) + 1e-4)
        return (x - 0.45) / 0.25

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(frames))


def dft_matrices(n: int, shift: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of the n-point DFT matrix; with ``shift`` the rows are fft-shifted."""
    k = np.arange(n)
    if shift:
        k = np.fft.fftshift(k)
    ang = -2.0 * np.pi * np.outer(k, np.arange(n)) / n
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


class LogMagnitudeSpectrum(nn.Module):
    """``log1p(|fftshift(fft2(x))| / n)`` for square float input ``(N, 1, n, n)``, as four MatMuls.

    F = W X W^T with W = C + iS (C, S real), so Re F = C X C^T - S X S^T and
    Im F = C X S^T + S X C^T. This exports to every runtime (no DFT op needed).
    """

    c: torch.Tensor
    s: torch.Tensor
    ct: torch.Tensor
    st: torch.Tensor

    def __init__(self, n: int) -> None:
        super().__init__()
        c, s = dft_matrices(n)
        self.n = n
        self.register_buffer("c", torch.from_numpy(c), persistent=False)
        self.register_buffer("s", torch.from_numpy(s), persistent=False)
        self.register_buffer("ct", torch.from_numpy(np.ascontiguousarray(c.T)), persistent=False)
        self.register_buffer("st", torch.from_numpy(np.ascontiguousarray(s.T)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cx = torch.matmul(self.c, x)
        sx = torch.matmul(self.s, x)
        re = torch.matmul(cx, self.ct) - torch.matmul(sx, self.st)
        im = torch.matmul(cx, self.st) + torch.matmul(sx, self.ct)
        mag = torch.sqrt(re * re + im * im + 1e-12)
        return torch.log1p(mag * (1.0 / self.n))


class NoiseTypeNet(nn.Module):
    """Stage 1: uint8 ``(N, 1, H, W)`` -> logits ``(N, 4)`` over clean / gaussian / salt_pepper / periodic.

    The frame is subsampled (nearest neighbour, which keeps every pixel's noise
    as it was: impulses stay impulses, white noise stays white, and periodic
    noise up to 60 cycles per frame stays below Nyquist at 128) to ``input_size``.
    The network sees four channels: the log-magnitude spectrum (the study's
    frequency-domain input) and three spatial channels - the frame itself and
    the maps of pixels at exactly 0 and 255. Why the extra channels: Gaussian
    and salt-and-pepper noise are both white, so their magnitude spectra differ
    only in level, and their training ranges overlap in power; the impulse maps
    separate them at no measurable cost.
    """

    classes = ("clean", "gaussian", "salt_pepper", "periodic")

    def __init__(self, width: float = 0.125, input_size: int = 128) -> None:
        super().__init__()
        self.input_size = input_size
        self.width = width
        self.spectrum = LogMagnitudeSpectrum(input_size)
        self.backbone = VGG16(4, 4, width)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(torch.float32)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="nearest")
        spec = self.spectrum(x * (1.0 / 255.0))
        zeros = (x == 0.0).to(torch.float32)
        sats = (x == 255.0).to(torch.float32)
        img = x * (1.0 / 255.0)
        return torch.cat([(spec - 0.5) * 2.0, (img - 0.45) * 4.0, zeros * 4.0, sats * 4.0], dim=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.features(frames))


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True))


class DenoiseAE(nn.Module):
    """Stage 2: uint8 ``(N, 1, H, W)`` -> denoised uint8 ``(N, 1, H, W)``, any H and W.

    A U-Net-style fully convolutional autoencoder: four scales (max-pool down,
    upsample + conv up), additive skip connections at every scale, and a
    residual output (the network predicts the noise, which is subtracted).
    Additive skips instead of concatenation halve the decoder's cost at full
    resolution; ceil-mode pooling and size-matched upsampling accept any frame
    size with no padding logic in the graph.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 48, 64)) -> None:
        super().__init__()
        self.channels = channels
        c = channels
        self.stem = nn.Conv2d(1, c[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i in range(len(c)):
            c_in = c[0] if i == 0 else c[i - 1]
            self.enc.append(nn.Sequential(_conv(c_in, c[i]), _conv(c[i], c[i])) if i else _conv(c[0], c[0]))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(c) - 1, 0, -1):
            self.up.append(nn.Conv2d(c[i], c[i - 1], 1))
            self.dec.append(nn.Sequential(_conv(c[i - 1], c[i - 1]), _conv(c[i - 1], c[i - 1])))
        self.out = nn.Conv2d(c[0], 1, 3, padding=1)

    def denoise_float(self, x: torch.Tensor) -> torch.Tensor:
        """Float in [0, 1] -> float in [0, 1]."""
        h = F.relu(self.stem(x - 0.5))
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                h = F.max_pool2d(h, 2, ceil_mode=True)
            h = block(h)
            skips.append(h)
        for j, (up, dec) in enumerate(zip(self.up, self.dec, strict=True)):
            skip = skips[-2 - j]
            h = F.interpolate(up(h), size=skip.shape[-2:], mode="nearest")
            h = dec(h + skip)
        return x - self.out(h)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        y = self.denoise_float(_to_float(frames))
        return torch.round(torch.clamp(y, 0.0, 1.0) * 255.0).to(torch.uint8)


def count_flops(model: nn.Module, frames: torch.Tensor) -> float:
    """Multiply-accumulates x 2 of every Conv2d, Linear and MatMul in one forward pass, per frame."""
    total = 0.0
    hooks = []

    def conv_hook(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2.0 * k * out.numel()

    def linear_hook(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += 2.0 * m.in_features * out.numel()

    def spectrum_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, LogMagnitudeSpectrum)
        images = inp[0].numel() / (m.n * m.n)
        total += images * 6 * 2.0 * m.n**3  # six n x n x n matmuls

    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, LogMagnitudeSpectrum):
            hooks.append(mod.register_forward_hook(spectrum_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(frames)
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total / frames.shape[0]


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflop(x: float) -> float:
    return round(x / 1e9, 4)


__all__ = [
    "VGG16",
    "DefectNet",
    "DenoiseAE",
    "LogMagnitudeSpectrum",
    "NoiseTypeNet",
    "count_flops",
    "dft_matrices",
    "gflop",
    "param_count",
]
