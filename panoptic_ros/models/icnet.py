"""ICNet (Zhao et al., "ICNet for Real-Time Semantic Segmentation on High-Resolution Images", ECCV 2018): the
backbone of PanoNet (PanoNet Sec. III-A, ref. [21]).

Three resolutions share the work. The full-resolution branch is three stride-2 convolutions (1/8). The 1/2-resolution
image runs through the ResNet/PSPNet trunk up to its second stage (1/16). Those features, halved again, run through
the dilated stages and pyramid pooling (1/32). Cascade feature fusion (CFF) units merge 1/32 into 1/16 and then into
1/8, and the head predicts at 1/4. In training, each CFF unit also emits a cascade label guidance output (1/16, 1/8)
next to the main output (1/4): the three scales weighted by lambda = (1, 0.4, 0.16) in PanoNet Eq. 1 and 6.

``width`` scales every channel count and ``depths`` sets the bottleneck blocks per trunk stage:
``width=1, depths=(3, 4, 6, 3)`` is ICNet's ResNet-50 trunk; small widths and depths give variants that train on a CPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def bottleneck_stage(in_channels: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    """ResNet stage of torchvision bottlenecks (output channels = 4 * planes); dilated instead of strided in ICNet's
    1/32 branch, as in PSPNet."""
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
    layers = [Bottleneck(in_channels, planes, stride, downsample, dilation=dilation)]
    layers += [Bottleneck(out_channels, planes, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def bilinear_sources(size: int, coarse: int, device=None,
                     dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """For each of ``size`` output positions of ``F.interpolate(mode="bilinear", align_corners=False)`` from
    ``coarse`` inputs: the two source indices and the weight of the second (source coordinate
    max(0, (i + 0.5) * coarse / size - 0.5) in ``dtype``, indices clamped to the input)."""
    src = ((torch.arange(size, device=device, dtype=dtype) + 0.5) * (coarse / size) - 0.5).clamp_(min=0)
    first = src.floor().long().clamp_(max=coarse - 1)
    return first, (first + 1).clamp_(max=coarse - 1), src - first


def adaptive_pool_matrix(size: int, bins: int, device=None, dtype=torch.float32) -> Tensor:
    """[bins, size]: row i averages bin i of ``F.adaptive_avg_pool1d`` from ``size`` to ``bins`` cells, the cells
    floor(i * size / bins) to ceil((i + 1) * size / bins) - 1 (bins overlap where ``bins`` does not divide
    ``size``)."""
    i = torch.arange(bins, device=device)
    start, end = i * size // bins, ((i + 1) * size + bins - 1) // bins
    j = torch.arange(size, device=device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def upsample_matrix(size: int, bins: int, device=None, dtype=torch.float32) -> Tensor:
    """[size, bins]: ``F.interpolate(mode="linear", align_corners=False)`` from ``bins`` to ``size`` cells (each
    output the weighted sum of its two ``bilinear_sources``)."""
    first, second, weight = bilinear_sources(size, bins, device, dtype)
    k = torch.arange(bins, device=device)
    weight = weight[:, None]
    return (k == first[:, None]).to(dtype) * (1 - weight) + (k == second[:, None]).to(dtype) * weight


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling as ICNet uses it: pooled context at several bin sizes, upsampled and summed.

    Each bin size b adds ``F.interpolate(F.adaptive_avg_pool2d(x, b), x's size, mode="bilinear")``, computed as
    the linear map it is: with the per-axis [b, H] pooling and [H, b] upsampling matrices
    (``adaptive_pool_matrix``, ``upsample_matrix``), the flattened [C, H W] map times the Kronecker product of the
    pooling matrices gives the [C, b b] bins, and those times the Kronecker product of the upsampling matrices give
    the [C, H W] context; every bin size's matrices are stacked, so the whole module is two matrix products.
    Equal to the pooling and interpolation ops up to float rounding (``test/models/test_icnet.py``). Exported, the
    ops were the problem: ``torch.onnx.export`` decomposed adaptive pooling with bins that do not divide the map into
    some 200 gather, where and split nodes, 16 ms of a 90 ms ONNX Runtime frame at 1024x512 (2-core CPU); the two
    products take about 1 ms there (4 ms for separable per-axis products, whose batched small matrices ONNX Runtime
    runs slowly).
    """

    def __init__(self, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = bins

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        # Eager calls reuse the matrices of a map size (building them took 5 ms of a 15 ms call at 16 x 32); traced
        # and exported graphs build them, so they become constants of the graph.
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        pool, up = (pyramid_matrices if tracing else _cached_pyramid_matrices)(h, w, self.bins, x.device, x.dtype)
        return x + ((x.reshape(*x.shape[:-2], h * w) @ pool.t()) @ up.t()).reshape(x.shape)


def pyramid_matrices(h: int, w: int, bins: tuple[int, ...], device, dtype) -> tuple[Tensor, Tensor]:
    """``PyramidPooling``'s [sum b^2, H W] pooling and [H W, sum b^2] upsampling matrices of an H x W map: per bin
    size, the Kronecker products of the per-axis matrices, stacked."""
    pool = torch.cat([torch.kron(adaptive_pool_matrix(h, b, device, dtype), adaptive_pool_matrix(w, b, device, dtype))
                      for b in bins])
    up = torch.cat([torch.kron(upsample_matrix(h, b, device, dtype), upsample_matrix(w, b, device, dtype))
                    for b in bins], 1)
    return pool, up


@functools.lru_cache(maxsize=16)
def _cached_pyramid_matrices(h: int, w: int, bins: tuple[int, ...], device, dtype) -> tuple[Tensor, Tensor]:
    with torch.inference_mode(False):  # a first call under inference mode (the Predictor) must not leave matrices
        return pyramid_matrices(h, w, bins, device, dtype)  # that training's autograd then refuses


class CascadeFeatureFusion(nn.Module):
    """CFF unit (ICNet Fig. 3): upsample the coarse features 2x, dilated 3x3 conv; 1x1 conv on the fine features;
    sum and ReLU. The guidance classifier predicts labels from the upsampled coarse features."""

    def __init__(self, coarse_channels: int, fine_channels: int, out_channels: int, num_outputs: int):
        super().__init__()
        self.coarse = nn.Sequential(
            nn.Conv2d(coarse_channels, out_channels, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.fine = nn.Sequential(nn.Conv2d(fine_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.guide = nn.Conv2d(coarse_channels, num_outputs, 1)

    def forward(self, coarse: Tensor, fine: Tensor) -> tuple[Tensor, Tensor | None]:
        up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        fused = F.relu(self.coarse(up) + self.fine(fine))
        return fused, (self.guide(up) if self.training else None)


class ICNetEncoder(nn.Module):
    """The three-resolution trunk: returns features at 1/8 (full-res branch), 1/16 and 1/32 of the input.

    Inputs need at least ``MIN_INPUT_SIZE`` pixels per side: the 1/2 image goes through three stride-2 steps
    (ceil each) to 1/16, which must keep 2 pixels for the 1/32 branch (floor(n / 2) >= 9, so n >= 18).
    Sides that are multiples of ``INPUT_DIVISOR`` give every branch exactly 1/8, 1/16 and 1/32 of the input, so
    the cascade's 2x upsamplings (``CascadeFeatureFusion``) put each coarse cell on the fine cells it covers;
    other sizes round the branches differently (ceil in the stride-2 steps, floor in the resizes) and the fused
    maps are shifted against each other by a fraction of a coarse cell. Training crops are such multiples
    (352 x 480); on CamVid val, whole 360 x 480 frames resized to 352 x 480 score mIoU 63.7 and PQ 54.9 where the
    360 x 480 frames themselves score 63.0 and 54.1 (``models.network_input_size`` picks them).
    """

    MIN_INPUT_SIZE = 18
    INPUT_DIVISOR = 32

    def __init__(self, in_channels: int = 3, width: float = 1.0, depths: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()

        def w(c: int) -> int:
            return max(4, int(round(c * width)))

        self.sub1 = nn.Sequential(
            conv_bn_relu(in_channels, w(32), stride=2), conv_bn_relu(w(32), w(32), stride=2), conv_bn_relu(w(32), w(64), stride=2)
        )
        self.stem = nn.Sequential(
            conv_bn_relu(in_channels, w(32), stride=2), conv_bn_relu(w(32), w(32)), conv_bn_relu(w(32), w(64)),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        planes = [w(64), w(128), w(256), w(512)]
        self.stage1 = bottleneck_stage(w(64), planes[0], depths[0], stride=1, dilation=1)
        self.stage2 = bottleneck_stage(4 * planes[0], planes[1], depths[1], stride=2, dilation=1)
        self.stage3 = bottleneck_stage(4 * planes[1], planes[2], depths[2], stride=1, dilation=2)
        self.stage4 = bottleneck_stage(4 * planes[2], planes[3], depths[3], stride=1, dilation=4)
        self.ppm = PyramidPooling()
        self.reduce = conv_bn_relu(4 * planes[3], w(256), kernel=1)
        self.channels = (w(64), 4 * planes[1], w(256))  # at 1/8, 1/16, 1/32

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f8 = self.sub1(x)
        half = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        f16 = self.stage2(self.stage1(self.stem(half)))
        quarter = F.interpolate(f16, scale_factor=0.5, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        f32 = self.reduce(self.ppm(self.stage4(self.stage3(quarter))))
        return f8, f16, f32


class ICNetDecoder(nn.Module):
    """Two CFF units and the 1/4-resolution head. Returns the main output and, in training, the guidance outputs."""

    def __init__(self, encoder_channels: tuple[int, int, int], out_channels: int, width: float = 1.0):
        super().__init__()
        fused = max(4, int(round(128 * width)))
        c8, c16, c32 = encoder_channels
        self.cff16 = CascadeFeatureFusion(c32, c16, fused, out_channels)
        self.cff8 = CascadeFeatureFusion(fused, c8, fused, out_channels)
        self.head = nn.Conv2d(fused, out_channels, 1)

    def forward(self, features: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, list[Tensor]]:
        f8, f16, f32 = features
        x16, guide16 = self.cff16(f32, f16)
        x8, guide8 = self.cff8(x16, f8)
        x4 = F.interpolate(x8, scale_factor=2.0, mode="bilinear", align_corners=False)
        out = self.head(x4)
        return out, [g for g in (guide8, guide16) if g is not None]


class ICNet(nn.Module):
    """ICNet: encoder + decoder. ``forward`` returns ``{"out": [B, K, ~H/4, ~W/4]}`` and, in training,
    ``"guidance": [1/8 output, 1/16 output]`` (cascade label guidance)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 19, width: float = 1.0,
                 depths: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        self.encoder = ICNetEncoder(in_channels, width, depths)
        self.decoder = ICNetDecoder(self.encoder.channels, out_channels, width)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        out, guidance = self.decoder(self.encoder(x))
        return {"out": out, "guidance": guidance} if self.training else {"out": out}
