"""Helpers shared by the proposal-free instance decoders (``dcme``, ``bridging``): instance statistics from an
instance-id map, the pixel grid, the majority vote of labels per group, and the cascade sum over output scales.

Coordinates are those of the decoder's output grid: pixel (i, j) of an [h, w] map has its centre at x = j, y = i.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import CASCADE_WEIGHTS, downsample_nearest


@dataclass
class InstancePixels:
    """The labelled pixels of a batch of instance-id maps [B, h, w].

    Shapes: ``pixel`` [P] flat index into B * h * w of each labelled pixel, ``instance`` [P] its instance
    0..N-1 (distinct (image, id) pairs), ``x``, ``y`` [P] float64 grid coordinates, ``count`` [N] pixels per
    instance."""

    pixel: Tensor
    instance: Tensor
    x: Tensor
    y: Tensor
    count: Tensor

    @property
    def num_instances(self) -> int:
        return len(self.count)

    def mean(self, values: Tensor) -> Tensor:
        """[P] -> [N] mean of ``values`` over each instance's pixels (float64)."""
        sums = values.new_zeros(self.num_instances, dtype=torch.float64).index_add_(0, self.instance, values.double())
        return sums / self.count


def instance_pixels(instance_ids: Tensor, ignore_index: int = -1) -> InstancePixels:
    """Group the pixels of [B, h, w] integer instance ids by (image, id), ``ignore_index`` marking no instance.
    Ids are any integers, per image (the same id in two images is two instances)."""
    if instance_ids.dim() != 3 or instance_ids.is_floating_point():
        raise ValueError(f"instance_ids must be an integer tensor [B, h, w], got {instance_ids.dtype} "
                         f"{tuple(instance_ids.shape)}")
    b, h, w = instance_ids.shape
    flat = instance_ids.reshape(-1).long()
    pixel = torch.nonzero(flat != ignore_index).flatten()
    ids = flat[pixel]
    image = pixel // (h * w)
    if len(ids):
        key = image * (int(ids.max()) - int(ids.min()) + 1) + (ids - ids.min())
        _, instance = torch.unique(key, return_inverse=True)
    else:
        instance = ids
    count = torch.bincount(instance).double() if len(ids) else torch.zeros(0, dtype=torch.float64,
                                                                           device=flat.device)
    within = pixel % (h * w)
    return InstancePixels(pixel, instance, (within % w).double(), (within // w).double(), count)


def pixel_grid(height: int, width: int, device=None) -> tuple[Tensor, Tensor]:
    """x [h, w] and y [h, w] float32 coordinates of the pixel centres of the output grid."""
    ys = torch.arange(height, device=device, dtype=torch.float32)
    xs = torch.arange(width, device=device, dtype=torch.float32)
    return xs.expand(height, width), ys[:, None].expand(height, width)


def majority(group: Tensor, label: Tensor, num_groups: int, num_labels: int) -> Tensor:
    """[P] group index and [P] label in 0..num_labels-1 -> [num_groups] most frequent label per group (ties: the
    smallest label; a group without members gets 0)."""
    votes = torch.bincount(group * num_labels + label, minlength=num_groups * num_labels)
    return votes.view(num_groups, num_labels).argmax(1)


def cascade_sum(loss: Callable[..., Tensor], outputs: Tensor | Sequence[Tensor], label_maps: Sequence[Tensor],
                weights: Sequence[float] = CASCADE_WEIGHTS) -> Tensor:
    """sum_t lambda_t loss(output_t, *label_maps resized to output_t), PanoNet Eq. 6's cascade weighting.

    ``outputs``: one [B, C, h_t, w_t] tensor per scale, finest first, paired with ``weights``; a single tensor is
    one scale of weight 1. ``label_maps``: [B, H, W] maps (instance ids, classes, masks) resized to each scale by
    ``losses.downsample_nearest``."""
    if isinstance(outputs, Tensor):
        outputs, weights = [outputs], [1.0]
    if len(outputs) != len(weights) or not outputs:
        raise ValueError(f"got {len(outputs)} cascade outputs but {len(weights)} weights {tuple(weights)}")
    return sum(lam * loss(out, *(downsample_nearest(m, out.shape[-2:]) for m in label_maps))
               for out, lam in zip(outputs, weights))
