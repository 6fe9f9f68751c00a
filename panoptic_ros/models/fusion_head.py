"""The fusion scheme's semantic head (../shared/papers/fusion-scheme.txt, Costea, Petrovai and Nedevschi, Sec. 2
"Unified network architecture"; the paper's output fusion is ``panoptic_merge``'s business).

One segmentation head per encoder level, then a refinement pyramid:

* at 1/32 and 1/16, an atrous spatial pyramid (ASP): "one 1x1 convolution and three 3 x 3 dilated convolutions
  having dilation rates of 6, 12 and 18. The resulting feature maps are concatenated and passed through 128 1 x 1
  filters" (no image-pooling branch: the paper lists none);
* at 1/8 and 1/4, "two 3x3 convolutions" to 128 channels;
* refinement pyramid (RP): "starting with the highest scale layer, the feature maps are upsampled two times and are
  added to the output of the following layer" (p16 = h16 + up(p32), p8 = h8 + up(p16), p4 = h4 + up(p8));
* "the fused outputs are upsampled and concatenated into 512 feature maps at 1/4. Finally, a 1 x 1 convolution is
  used to generate the class predictions."

Every convolution but the classifier is conv + BatchNorm + ReLU (``icnet.conv_bn_relu``; the paper names no
normalisation). Upsampling is bilinear (align_corners=False) to the next level's size, so odd sizes work.

Inputs: encoder features finest first, at strides 4, 8, 16, 32 (the paper's FPN: 256 channels each; ``in_channels``
sets them). ICNet's encoder (PanoNet's backbone) has no 1/4 level: it returns (1/8, 1/16, 1/32) features with
``ICNetEncoder.channels`` channels. Given three levels, the head runs without the 1/4 level: p4 = up(p8), and the
concatenation at 1/4 holds 3 x 128 = 384 channels (departure from the paper's 512, forced by the backbone).
``forward`` returns ``(logits [B, K, h4, w4], [])`` (h4, w4: the 1/4 features' size, or twice the 1/8 size
without them, as ``ICNetDecoder`` does), ``ICNetDecoder``'s contract with no cascade guidance outputs (the paper
has none), so it can stand in for PanoNet's ``semantic_decoder`` with a cascade of one scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .icnet import conv_bn_relu

ASP_DILATIONS = (6, 12, 18)


def _upsample(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AtrousSpatialPyramid(nn.Module):
    """1x1 conv and one 3x3 conv per dilation, concatenated, then a 1x1 conv to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int = 128, dilations: Sequence[int] = ASP_DILATIONS):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, out_channels, kernel=1)] +
                                      [conv_bn_relu(in_channels, out_channels, 3, dilation=d) for d in dilations])
        self.project = conv_bn_relu(out_channels * (1 + len(dilations)), out_channels, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], 1))


class FusionSemanticHead(nn.Module):
    """Semantic head of the fusion scheme (Sec. 2). ``in_channels``: channels of the encoder levels, finest first,
    four (strides 4, 8, 16, 32) or three (8, 16, 32; see the module docstring)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 128,
                 dilations: Sequence[int] = ASP_DILATIONS):
        super().__init__()
        in_channels = tuple(int(c) for c in in_channels)
        if len(in_channels) not in (3, 4) or min(in_channels) < 1:
            raise ValueError(f"in_channels must give 4 levels (strides 4, 8, 16, 32) or 3 (8, 16, 32) of >= 1 "
                             f"channels, got {in_channels}")
        if num_classes < 1 or channels < 1:
            raise ValueError(f"num_classes and channels must be >= 1, got {num_classes} and {channels}")
        self.in_channels = in_channels
        *fine, c16, c32 = in_channels
        self.fine = nn.ModuleList([nn.Sequential(conv_bn_relu(c, channels), conv_bn_relu(channels, channels))
                                   for c in fine])  # 1/4 (if given) and 1/8
        self.asp16 = AtrousSpatialPyramid(c16, channels, dilations)
        self.asp32 = AtrousSpatialPyramid(c32, channels, dilations)
        self.classifier = nn.Conv2d(4 * channels if len(in_channels) == 4 else 3 * channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if len(features) != len(self.in_channels) or any(f.dim() != 4 or f.shape[1] != c for f, c in
                                                         zip(features, self.in_channels)):
            raise ValueError(f"expected {len(self.in_channels)} feature maps [B, C, h, w] with C = "
                             f"{self.in_channels}, got {[tuple(f.shape) for f in features]}")
        *fine, f16, f32 = features
        heads = [module(f) for module, f in zip(self.fine, fine)] + [self.asp16(f16), self.asp32(f32)]
        refined = [heads[-1]]  # coarsest first
        for h in reversed(heads[:-1]):
            refined.append(h + _upsample(refined[-1], h.shape[-2:]))
        size = fine[0].shape[-2:] if len(fine) == 2 else (2 * fine[0].shape[-2], 2 * fine[0].shape[-1])
        fused = torch.cat([_upsample(p, size) if p.shape[-2:] != size else p for p in reversed(refined)], 1)
        return self.classifier(fused), []
