"""Bridging decoder: instances by per-pixel box voting on top of the semantic segmentation
(../shared/papers/bridging-category-instance.txt, Wu, Shen and van den Hengel, Sec. 2.1-2.2).

* **Head** (``BridgingHead``): PanoNet's instance decoder (``icnet.ICNetDecoder``) with 4 channels per thing class
  ("we do not regress bounding-boxes for background pixels, thus there are only eighty channels", Sec. 2.3: 4 x 20
  classes). Channels 4 t .. 4 t + 3 belong to ``thing_ids[t]`` (sorted) and hold (dx, dy, w, h): the offset from
  the pixel to the centre of its instance's box and the box width and height, in pixels of the output grid
  (pixel (i, j) has its centre at x = j, y = i). The paper lists "vertical and horizontal offsets ... and also the
  height and width" without units or order; x comes first here as in PanoNet's coordinate channels. Departure:
  the paper's localisation network is a separate FCRN (Sec. 2.1: "we train the two networks separately").
* **Targets** (``bridging_targets``): the tight box of each instance on the grid, from its extreme pixel centres:
  width = x_max - x_min + 1 (a one-pixel instance is a 1 x 1 box), centre = (x_min + x_max) / 2. An instance's
  class is the most frequent semantic class of its pixels; instances of no thing class get no target.
* **Loss** (``bridging_loss``): smooth-L1 (Fast R-CNN, beta = 1 grid pixel) summed over the 4 targets of the
  pixel's own class. "To balance the contributions of instances in different sizes, we re-weight their pixels
  ... according to their heights and widths ... pixels in the same instance have the same loss weight" (Sec.
  2.1): the paper gives no formula; here weight = 1 / (w h) of the instance's box, and the loss is the weighted
  mean over the kept pixels, so every instance that fills its box counts the same. Online bootstrapping (Sec.
  2.2): a pixel is "easy" when the IoU between its predicted box and its true box reaches the threshold; easy
  pixels are dropped, keeping at least a share of each crop's hardest (lowest-IoU) pixels: the semantic branch's
  ``losses.bootstrapped_pixels`` applied to -log IoU.
* **Decoding** (``decode_bridging``, Sec. 2.1 steps 3-6): for each thing class, the pixels of its mask (the top-n
  masks: pixels whose score for the class is among their n highest, ``top_n``; n = 1 is the semantic argmax; mask
  k of the n masks holds the pixels with the class among their top k) each vote the box their regression gives;
  NMS (``torchvision.ops.batched_nms``, one batch per class and mask) over these pixel boxes keeps the
  locally highest-scoring pixels (score = the pixel's softmax probability of the class); each kept pixel and the
  pixels it suppressed (each suppressed pixel's suppressor is the first kept box, in NMS order, overlapping it by
  more than ``iou_threshold``: exactly what greedy NMS did) form one instance, whose score is the mean semantic
  score of its pixels; then region NMS (SDS, the paper's ref. [8]) by mask IoU, per class, removes instances
  overlapping a higher-scoring one by more than ``region_iou_threshold`` (instances from one mask never overlap,
  so this acts only with top_n > 1). The paper gives neither threshold; 0.5 for both is our choice. Predicted
  widths and heights are clamped to >= 1 pixel (an instance has at least one pixel; a zero-area box overlaps
  nothing and would be an instance of its own).
* **One id per pixel** (our addition: the panoptic output needs non-overlapping instances, the paper's AP
  evaluation did not): where instances still overlap, a pixel goes to the highest-scoring one.

Decode time against PanoNet's mean shift: the ``panoptic_ros.decoders`` package docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..losses import CASCADE_WEIGHTS, bootstrapped_pixels
from ..models.icnet import ICNetDecoder
from ..postprocess import InstanceMap
from .common import cascade_sum, instance_pixels, majority, pixel_grid

_PAIRS = 1 << 22  # kept boxes x pixel boxes IoUs held at once


class BridgingHead(ICNetDecoder):
    """The box-regression head on ICNet encoder features (1/8, 1/16, 1/32): ``forward`` returns the
    [B, 4 T, ~H/4, ~W/4] regressions (dx, dy, w, h per thing class) and, in training, the cascade guidance
    outputs at 1/8 and 1/16 (``ICNetDecoder``'s contract, so it stands in for PanoNet's ``embedding_decoder``)."""

    def __init__(self, encoder_channels: tuple[int, int, int], num_thing_classes: int, width: float = 1.0):
        if num_thing_classes < 1:
            raise ValueError(f"num_thing_classes must be >= 1, got {num_thing_classes}")
        super().__init__(encoder_channels, 4 * num_thing_classes, width)


@dataclass
class ScoredInstanceMap(InstanceMap):
    """An ``InstanceMap`` with scores [K] float32: the mean semantic score of each instance's pixels (Sec. 2.1)."""

    scores: Tensor


@dataclass
class BridgingTargets:
    """Shapes: boxes [B, 4, h, w] float32 (dx, dy, w, h; 0 where no target), thing [B, h, w] int64 index into the
    sorted thing ids of the pixel's instance class (-1: no target), weight [B, h, w] float32 1 / (w h) of the
    pixel's instance box (0: no target)."""

    boxes: Tensor
    thing: Tensor
    weight: Tensor


def _sorted_things(thing_ids: Sequence[int], device) -> Tensor:
    things = sorted(set(int(c) for c in thing_ids))
    if not things or things[0] < 0:
        raise ValueError(f"thing_ids must be non-empty class ids >= 0, got {list(thing_ids)}")
    return torch.tensor(things, dtype=torch.int64, device=device)


def bridging_targets(instance_ids: Tensor, semantic: Tensor, thing_ids: Sequence[int],
                     ignore_index: int = -1) -> BridgingTargets:
    """Box targets (Sec. 2.1) of [B, h, w] instance ids (``ignore_index`` = none) with their [B, h, w] classes."""
    if semantic.shape != instance_ids.shape:
        raise ValueError(f"semantic and instance_ids must have the same shape [B, h, w]; got "
                         f"{tuple(semantic.shape)} and {tuple(instance_ids.shape)}")
    groups = instance_pixels(instance_ids, ignore_index)
    b, h, w = instance_ids.shape
    device = instance_ids.device
    things = _sorted_things(thing_ids, device)
    boxes = torch.zeros(4, b * h * w, dtype=torch.float32, device=device)
    thing = torch.full((b * h * w,), -1, dtype=torch.int64, device=device)
    weight = torch.zeros(b * h * w, dtype=torch.float32, device=device)
    n = groups.num_instances
    if n:
        labels = semantic.reshape(-1)[groups.pixel].long()
        lookup = torch.full((max(int(labels.max()), int(things.max())) + 2,), -1, dtype=torch.int64, device=device)
        lookup[things] = torch.arange(len(things), device=device)
        index = lookup[labels.clamp(min=-1)]  # -1 for stuff, void and negative labels
        t = majority(groups.instance, index + 1, n, len(things) + 1) - 1  # the "none" vote counts too
        extremes = []
        for coord in (groups.x, groups.y):
            low = coord.new_full((n,), float("inf")).scatter_reduce_(0, groups.instance, coord, "amin")
            high = coord.new_full((n,), -float("inf")).scatter_reduce_(0, groups.instance, coord, "amax")
            extremes.append((low, high))
        (x0, x1), (y0, y1) = extremes
        size_w, size_h = x1 - x0 + 1, y1 - y0 + 1
        has = t[groups.instance] >= 0
        pixel, inst = groups.pixel[has], groups.instance[has]
        boxes[0, pixel] = ((x0 + x1)[inst] / 2 - groups.x[has]).float()
        boxes[1, pixel] = ((y0 + y1)[inst] / 2 - groups.y[has]).float()
        boxes[2, pixel] = size_w[inst].float()
        boxes[3, pixel] = size_h[inst].float()
        thing[pixel] = t[inst]
        weight[pixel] = (1.0 / (size_w * size_h))[inst].float()
    return BridgingTargets(boxes.view(4, b, h, w).transpose(0, 1), thing.view(b, h, w), weight.view(b, h, w))


def paired_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes given as (cx, cy, w, h) along dim 1 of [B, 4, ...] tensors, pair by pair -> [B, ...]; widths
    and heights below 0 count as 0."""
    aw, ah, bw, bh = a[:, 2].clamp(min=0), a[:, 3].clamp(min=0), b[:, 2].clamp(min=0), b[:, 3].clamp(min=0)
    iw = (torch.minimum(a[:, 0] + aw / 2, b[:, 0] + bw / 2) - torch.maximum(a[:, 0] - aw / 2, b[:, 0] - bw / 2))
    ih = (torch.minimum(a[:, 1] + ah / 2, b[:, 1] + bh / 2) - torch.maximum(a[:, 1] - ah / 2, b[:, 1] - bh / 2))
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = aw * ah + bw * bh - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def bridging_loss(regression: Tensor, instance_ids: Tensor, semantic: Tensor, thing_ids: Sequence[int], *,
                  bootstrap_threshold: float = 1.0, bootstrap_min_kept: float = 0.0, size_weighted: bool = True,
                  beta: float = 1.0, ignore_index: int = -1) -> Tensor:
    """Smooth-L1 box regression with size weighting and IoU bootstrapping (Sec. 2.1, 2.2; module docstring).

    loss = sum_p omega_p sum_k smoothL1_beta(pred_pk - target_pk) / sum_p omega_p over the kept pixels p of an
    instance of a thing class, omega_p = 1 / (w h) of p's instance box (1 with ``size_weighted=False``). A pixel is
    kept when the IoU of its predicted box (from its class's channels; sizes below 0 count as 0) and its true box is
    below ``bootstrap_threshold`` or it is among the ``bootstrap_min_kept`` share of its crop's lowest-IoU pixels
    (``losses.bootstrapped_pixels``; threshold 1 keeps all). No such pixel: 0, still in the graph.

    Args:
        regression: [B, 4 T, h, w] head output, T = len(thing_ids).
        instance_ids, semantic: [B, h, w] at the same resolution.
    Returns:
        scalar tensor.
    """
    things = _sorted_things(thing_ids, regression.device)
    b, c, h, w = regression.shape if regression.dim() == 4 else (0, 0, 0, 0)
    if regression.dim() != 4 or c != 4 * len(things) or instance_ids.shape != (b, h, w):
        raise ValueError(f"regression must be [B, 4 T, h, w] with T = {len(things)} thing classes and instance_ids "
                         f"[B, h, w]; got {tuple(regression.shape)} and {tuple(instance_ids.shape)}")
    targets = bridging_targets(instance_ids, semantic, thing_ids, ignore_index)
    has = targets.thing >= 0
    channel = (4 * targets.thing.clamp(min=0))[:, None] + torch.arange(4, device=regression.device)[None, :, None, None]
    pred = regression.float().gather(1, channel)
    per_pixel = F.smooth_l1_loss(pred, targets.boxes, beta=beta, reduction="none").sum(1)
    xs, ys = pixel_grid(h, w, regression.device)
    origin = torch.stack([xs, ys, torch.zeros_like(xs), torch.zeros_like(xs)])[None]
    iou = paired_box_iou((pred.detach() + origin), targets.boxes + origin)
    keep = bootstrapped_pixels(-torch.log(iou.clamp(min=torch.finfo(iou.dtype).tiny)), has, bootstrap_threshold,
                               bootstrap_min_kept)
    omega = (targets.weight if size_weighted else has.float()) * keep
    norm = omega.sum()
    if float(norm) == 0:
        return regression.sum() * 0.0
    return (per_pixel * omega).sum() / norm


def bridging_cascade_loss(outputs: Tensor | Sequence[Tensor], instance_ids: Tensor, semantic: Tensor,
                          thing_ids: Sequence[int], weights: Sequence[float] = CASCADE_WEIGHTS, **kwargs) -> Tensor:
    """``bridging_loss`` per output scale (finest first) with PanoNet's cascade weights (Eq. 6); ``instance_ids``
    and ``semantic`` at full resolution [B, H, W], resized to each scale; ``kwargs`` as ``bridging_loss``."""
    return cascade_sum(lambda out, ids, sem: bridging_loss(out, ids, sem, thing_ids, **kwargs), outputs,
                       [instance_ids, semantic], weights)


def decode_bridging(regression: Tensor, probabilities: Tensor, thing_ids: Sequence[int], *, top_n: int = 1,
                    iou_threshold: float = 0.5, region_iou_threshold: float = 0.5,
                    min_pixels: int = 1) -> ScoredInstanceMap:
    """Instances by pixel box voting, NMS and region NMS (Sec. 2.1; the module docstring has the rule).

    Instances are numbered by class, then by score (highest first); instances left with fewer than ``min_pixels``
    pixels after overlaps are resolved are dropped.

    Args:
        regression: [4 T, h, w] (dx, dy, w, h) per thing class, T = len(thing_ids), classes in increasing id.
        probabilities: [C, h, w] softmax class probabilities (the semantic scores), C > max(thing_ids).
        top_n: masks per class (Sec. 2.1's top-n masks; 1 = the argmax map).
    Returns:
        ``ScoredInstanceMap`` (ids [h, w] int64, -1 = none; classes [K] int64; scores [K] float32) on the device of
        ``regression``.
    """
    device = regression.device
    things = _sorted_things(thing_ids, device)
    t_count = len(things)
    if regression.dim() != 3 or regression.shape[0] != 4 * t_count or probabilities.dim() != 3 or \
            probabilities.shape[1:] != regression.shape[1:]:
        raise ValueError(f"regression must be [4 T, h, w] with T = {t_count} thing classes and probabilities "
                         f"[C, h, w] of the same h, w; got {tuple(regression.shape)} and "
                         f"{tuple(probabilities.shape)}")
    n_classes, h, w = probabilities.shape
    if int(things.max()) >= n_classes:
        raise ValueError(f"thing id {int(things.max())} has no channel in probabilities of {n_classes} classes")
    if not 1 <= top_n <= n_classes:
        raise ValueError(f"top_n must be in [1, {n_classes}], got {top_n}")
    for name, value in (("iou_threshold", iou_threshold), ("region_iou_threshold", region_iou_threshold)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    probs = probabilities.detach().to(device=device, dtype=torch.float32).flatten(1)
    field = regression.detach().float().flatten(1).view(t_count, 4, h * w)

    # Entries: (pixel, thing index, mask k) for every class among a pixel's top k, k = 1..n.
    lookup = torch.full((n_classes,), -1, dtype=torch.int64, device=device)
    lookup[things] = torch.arange(t_count, device=device)
    top = lookup[probs.topk(top_n, dim=0).indices]  # [n, h w] thing index of each rank, -1 if not a thing
    entries = [torch.nonzero(top[:k + 1] >= 0, as_tuple=True) for k in range(top_n)]  # mask k: ranks 0..k
    k = torch.cat([torch.full_like(p, level) for level, (_, p) in enumerate(entries)])
    t = torch.cat([top[r, p] for r, p in entries])
    pixel = torch.cat([p for _, p in entries])
    empty = ScoredInstanceMap(torch.full((h, w), -1, dtype=torch.int64, device=device),
                              torch.zeros(0, dtype=torch.int64, device=device),
                              torch.zeros(0, dtype=torch.float32, device=device))
    if len(pixel) == 0:
        return empty
    score = probs[things[t], pixel]
    dx, dy, bw, bh = field[t, :, pixel].unbind(1)
    cx, cy = (pixel % w).float() + dx, (pixel // w).float() + dy
    bw, bh = bw.clamp(min=1.0), bh.clamp(min=1.0)
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    finite = torch.isfinite(boxes).all(1)  # a non-finite regression votes no box: its pixel gets no instance
    if not bool(finite.all()):
        pixel, t, k, score, boxes = pixel[finite], t[finite], k[finite], score[finite], boxes[finite]
        if len(pixel) == 0:
            return empty
    group = t * top_n + k
    kept = batched_nms(boxes, score, group, iou_threshold)  # in decreasing score: NMS order

    # Each entry joins the first kept box of its group (NMS order) that overlaps it by more than the threshold.
    cluster = torch.empty(len(pixel), dtype=torch.int64, device=device)
    kept_group = group[kept]
    for g in torch.unique(kept_group).tolist():  # every group keeps its best box
        members = torch.nonzero(group == g).flatten()
        heads = torch.nonzero(kept_group == g).flatten()  # positions in ``kept``, in NMS order
        step = max(1, _PAIRS // len(heads))
        for s in range(0, len(members), step):
            iou = box_iou(boxes[kept[heads]], boxes[members[s:s + step]])
            over = iou > iou_threshold
            cluster[members[s:s + step]] = heads[torch.where(over.any(0), over.int().argmax(0), iou.argmax(0))]
    cluster[kept] = torch.arange(len(kept), device=device)
    n_inst = len(kept)
    size = torch.bincount(cluster, minlength=n_inst)
    inst_score = torch.zeros(n_inst, dtype=torch.float64, device=device).index_add_(0, cluster, score.double())
    inst_score = (inst_score / size).float()
    inst_t = t[kept]

    alive = torch.ones(n_inst, dtype=torch.bool, device=device)
    if top_n > 1:
        alive = _region_nms(pixel * t_count + t, cluster, size, inst_score, region_iou_threshold, top_n)

    # One instance per pixel: the highest-scoring surviving instance holding it.
    by_score = torch.argsort(inst_score, descending=True, stable=True)
    position = torch.empty_like(by_score)
    position[by_score] = torch.arange(n_inst, device=device)
    live = alive[cluster]
    best = torch.full((h * w,), n_inst, dtype=torch.int64, device=device).scatter_reduce_(
        0, pixel[live], position[cluster[live]], "amin")
    covered = best < n_inst
    owner = torch.full((h * w,), -1, dtype=torch.int64, device=device)
    owner[covered] = by_score[best[covered]]
    area = torch.bincount(owner[covered], minlength=n_inst)
    order = by_score[area[by_score] >= max(1, min_pixels)]
    order = order[torch.argsort(inst_t[order], stable=True)]
    number = torch.full((n_inst + 1,), -1, dtype=torch.int64, device=device)
    number[order] = torch.arange(len(order), device=device)
    return ScoredInstanceMap(number[owner].view(h, w), things[inst_t[order]], inst_score[order])


def _region_nms(key: Tensor, cluster: Tensor, size: Tensor, score: Tensor, threshold: float, max_run: int) -> Tensor:
    """Greedy NMS on mask IoU among instances of one class (SDS): [E] entry key (pixel and class), [E] instance of
    each entry, [I] pixels and scores per instance -> [I] bool, survivors. Entries of one key (at most
    ``max_run``, one per mask) give the intersections, as sparse pairs; the greedy pass loops over the instances
    that overlap another by more than ``threshold``, not over pixels."""
    n = len(size)
    order = torch.argsort(key, stable=True)
    key, cluster = key[order], cluster[order]
    pairs = []
    for d in range(1, max_run):
        same = key[d:] == key[:-d]
        a, b = cluster[:-d][same], cluster[d:][same]
        pairs += [a * n + b, b * n + a]
    alive = np.ones(n, dtype=bool)
    if not pairs:
        return torch.from_numpy(alive).to(key.device)
    pair, inter = torch.unique(torch.cat(pairs), return_counts=True)
    a, b = pair // n, pair % n
    over = (a != b) & (inter > threshold * (size[a] + size[b] - inter))  # IoU > threshold
    a, b = a[over], b[over]  # both directions of each overlapping pair, sorted by a
    rank = torch.empty(n, dtype=torch.int64, device=key.device)
    rank[torch.argsort(score, descending=True, stable=True)] = torch.arange(n, device=key.device)
    starts = torch.searchsorted(a, torch.arange(n + 1, device=key.device)).cpu().numpy()
    b = b.cpu().numpy()
    involved = torch.unique(a)
    for i in involved[torch.argsort(rank[involved])].tolist():  # the overlapping instances, best first
        if alive[i]:  # it suppresses the lower-scoring instances it overlaps
            alive[b[starts[i]:starts[i + 1]]] = False
            alive[i] = True
    return torch.from_numpy(alive).to(key.device)
