"""Panoptic merges for the accuracy mode: a semantic map and scored instance masks from a detector in, the fast
mode's panoptic representation out (``postprocess.merge_panoptic``: panoptic ids, segments sorted by id, the
int16 segment map).

* ``merge_panoptic_fpn``: the Panoptic FPN heuristic (Kirillov et al., as in detectron2's
  ``combine_semantic_and_instance_outputs``): instances by score, each dropped when it overlaps those already
  placed too much; then stuff from the semantic map, with a minimum area.
* ``fuse_panoptic``: the fusion scheme of ../shared/papers/fusion-scheme.txt, Sec. 3: the semantic map decides
  foreground and background, instance pixels are kept only where they agree with it, breadth-first region growing
  fills the uncovered foreground, isolated leftovers become new instances.

``merge_detections`` takes a detector's raw output (boxes and 28 x 28 box-relative masks) to the image: it pastes
the masks as Mask R-CNN does and calls one of the two.

All are pure functions over tensors (any device for the tensor work; connected components run in OpenCV on the
CPU) and loop over instances, never over pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from torchvision.models.detection.roi_heads import paste_masks_in_image

from .classes import ClassTable
from .config import MERGES
from .postprocess import PanopticResult, merge_panoptic


@dataclass
class MergedPanoptic:
    """A merge's result. semantic [H, W] int64 class per pixel after the merge (what a Prediction's semantic map
    is); instances [H, W] int64 index into ``classes`` / ``scores`` (-1 where none); classes [K] int64 thing class
    ids; scores [K] float32; panoptic: ``merge_panoptic`` of the above (the fast mode's representation)."""

    semantic: Tensor
    instances: Tensor
    classes: Tensor
    scores: Tensor
    panoptic: PanopticResult


def merge_panoptic_fpn(semantic: Tensor, masks: Tensor, scores: Tensor, classes: Tensor, table: ClassTable, *,
                       score_threshold: float = 0.5, overlap_threshold: float = 0.5, stuff_min_area: int = 4096,
                       mask_threshold: float = 0.5) -> MergedPanoptic:
    """Panoptic FPN's merge (Kirillov et al. 2019, Sec. 3; detectron2's defaults).

    1. Detections scoring at least ``score_threshold`` are visited by decreasing score (ties: lower index first).
       A detection's pixels are those of its mask above ``mask_threshold`` (or the mask itself when bool). It is
       dropped when it has no pixel, or when the share of its pixels already taken by placed instances exceeds
       ``overlap_threshold`` (a share exactly at the threshold is kept); otherwise it takes its pixels not yet
       taken.
    2. Every other pixel takes its class from ``semantic``: stuff classes whose remaining area is at least
       ``stuff_min_area`` pixels become stuff segments; thing classes (no instance there), smaller stuff regions
       and ``table.ignore_id`` become void (``merge_panoptic``).

    Args:
        semantic: [H, W] integer class ids.
        masks: [N, H, W] mask probabilities (float) or binary masks (bool), pasted at the image's resolution.
        scores: [N] detection scores; classes: [N] dataset thing class ids.
        table: the model's class table.
    Returns:
        ``MergedPanoptic``; its ``semantic`` is ``semantic`` unchanged (as int64) and its instances are the placed
        detections in placement order.
    """
    binary, scores, classes = _check_detections(semantic, masks, scores, classes, table, mask_threshold)
    taken = torch.zeros(semantic.shape, dtype=torch.bool, device=semantic.device)
    ids = torch.full(semantic.shape, -1, dtype=torch.int64, device=semantic.device)
    placed: list[int] = []
    for i in _by_score(scores, score_threshold):
        mask = binary[i]
        area = int(mask.sum())
        if area == 0:
            continue
        overlap = int((mask & taken).sum())
        if overlap > overlap_threshold * area:
            continue
        ids[mask & ~taken] = len(placed)
        taken |= mask
        placed.append(i)
    return _result(semantic.to(torch.int64), ids, classes[placed], scores[placed], table, stuff_min_area)


def fuse_panoptic(semantic: Tensor, masks: Tensor, scores: Tensor, classes: Tensor, table: ClassTable, *,
                  score_threshold: float = 0.5, mask_threshold: float = 0.5,
                  categories: Sequence[int] | None = None, min_new_area: int = 1,
                  stuff_min_area: int = 0) -> MergedPanoptic:
    """The output fusion of ../shared/papers/fusion-scheme.txt, Sec. 3.

    1. Foreground is every pixel whose semantic class is a thing class; background pixels keep their semantic
       class (stuff, or void for ``table.ignore_id`` and unknown ids).
    2. Detections scoring at least ``score_threshold`` are visited by decreasing score (ties: lower index first);
       each keeps the pixels of its mask (above ``mask_threshold``) that are foreground, whose semantic category
       equals its class's category, and that no earlier detection kept. The paper does not say how overlapping
       masks share pixels; here the higher score wins. A detection that keeps no pixel is dropped.
    3. Region growing: breadth-first, one ring of 8-neighbours per step, every uncovered foreground pixel joins
       the instance that reaches it first along a path of foreground pixels of its category (the paper's
       "closest labeled pixel with direct semantic path"); pixels reached in the same step by several instances
       join the highest-scoring one.
    4. Foreground pixels still uncovered (isolated from every instance) become new instances of their semantic
       class, one per 8-connected component of at least ``min_new_area`` pixels (smaller ones become void), with
       score 0 (no detection backs them).

    ``categories`` gives the semantic category of each class id (e.g. Cityscapes' "vehicle" for car, truck and
    bus): the semantic map then only decides the category, and instance pixels take their detection's class (the
    paper's sub-category). Default: each class is its own category, so the semantic map decides the class.

    Args:
        semantic: [H, W] integer class ids.
        masks: [N, H, W] mask probabilities (float) or binary masks (bool) at the image's resolution.
        scores: [N] detection scores; classes: [N] dataset thing class ids.
        table: the model's class table; ``stuff_min_area`` as in ``merge_panoptic``.
    Returns:
        ``MergedPanoptic``: detections kept in visiting order, then the new instances; ``semantic`` with instance
        pixels set to their instance's class.
    """
    binary, scores, classes = _check_detections(semantic, masks, scores, classes, table, mask_threshold)
    device = semantic.device
    n_cls = len(table)
    category_of = torch.as_tensor(range(n_cls) if categories is None else list(categories), dtype=torch.int64,
                                  device=device)
    if category_of.shape != (n_cls,) or bool((category_of < 0).any()):
        raise ValueError(f"categories must give one category >= 0 per class ({n_cls}), got {list(categories)}")
    is_thing = torch.tensor([c.is_thing for c in table.classes], dtype=torch.bool, device=device)
    semantic = semantic.to(torch.int64)
    known = (semantic >= 0) & (semantic < n_cls) & (semantic != table.ignore_id)
    clamped = semantic.clamp(0, n_cls - 1)
    foreground = known & is_thing[clamped]
    category = torch.where(foreground, category_of[clamped], -1)  # -1: background, never matches a detection

    ids = torch.full(semantic.shape, -1, dtype=torch.int64, device=device)
    kept: list[int] = []
    for i in _by_score(scores, score_threshold):
        pixels = binary[i] & (category == category_of[classes[i]]) & (ids < 0)
        if bool(pixels.any()):
            ids[pixels] = len(kept)
            kept.append(i)
    ids = _grow(ids, category)
    classes, scores = classes[kept], scores[kept]

    leftover = foreground & (ids < 0)
    new_classes = []
    for class_id in torch.unique(semantic[leftover]).tolist():
        count, components, stats, _ = cv2.connectedComponentsWithStats(
            (leftover & (semantic == class_id)).cpu().numpy().astype(np.uint8), connectivity=8)
        big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_new_area) + 1
        lookup = np.full(count, -1, np.int64)
        lookup[big] = len(classes) + len(new_classes) + np.arange(len(big))
        new_ids = torch.from_numpy(lookup[components]).to(device)
        ids = torch.where(new_ids >= 0, new_ids, ids)
        new_classes += [class_id] * len(big)
    classes = torch.cat([classes, torch.tensor(new_classes, dtype=torch.int64, device=device)])
    scores = torch.cat([scores, scores.new_zeros(len(new_classes))])
    fused = torch.where(ids >= 0, torch.cat([classes, classes.new_zeros(1)])[ids], semantic)
    return _result(fused, ids, classes, scores, table, stuff_min_area)


def merge_detections(semantic: Tensor, boxes: Tensor, masks: Tensor, scores: Tensor, classes: Tensor,
                     table: ClassTable, *, merge: str = "panoptic_fpn", box_scale: tuple[float, float] = (1.0, 1.0),
                     score_threshold: float = 0.5, mask_threshold: float = 0.5, overlap_threshold: float = 0.5,
                     stuff_min_area: int = 64, min_new_area: int = 20, chunk: int = 16) -> MergedPanoptic:
    """A detector's raw detections merged with a semantic map at the image's resolution.

    Detections scoring at least ``score_threshold`` have their boxes scaled by ``box_scale`` (x, y: network input
    to image pixels) and their box-relative masks pasted into the image with torchvision's
    ``paste_masks_in_image`` (Mask R-CNN's pasting: the mask resized bilinearly to its box, one cell of padding),
    cut at ``mask_threshold``; then ``merge_panoptic_fpn`` (``merge="panoptic_fpn"``) or ``fuse_panoptic``
    (``merge="fusion"``). Masks are pasted ``chunk`` at a time, so a float [N, H, W] never exists at once.

    Args:
        semantic: [H, W] integer class ids at the image's resolution.
        boxes: [N, 4] float (x1, y1, x2, y2); masks: [N, S, S] float probabilities of each box's cells;
        scores: [N]; classes: [N] dataset thing class ids.
    """
    if merge not in MERGES:
        raise ValueError(f"merge {merge!r} is not allowed: expected one of {MERGES}")
    keep = scores >= score_threshold
    boxes, masks, scores, classes = boxes[keep], masks[keep], scores[keep], classes[keep]
    sx, sy = box_scale
    boxes = boxes * boxes.new_tensor([sx, sy, sx, sy])
    size = tuple(semantic.shape)
    binary = torch.zeros((len(boxes), *size), dtype=torch.bool, device=semantic.device)
    for start in range(0, len(boxes), chunk):
        pasted = paste_masks_in_image(masks[start:start + chunk, None].float(), boxes[start:start + chunk], size,
                                      padding=1)
        binary[start:start + chunk] = pasted[:, 0].to(semantic.device) > mask_threshold
    if merge == "panoptic_fpn":
        return merge_panoptic_fpn(semantic, binary, scores, classes, table, score_threshold=score_threshold,
                                  overlap_threshold=overlap_threshold, stuff_min_area=stuff_min_area)
    return fuse_panoptic(semantic, binary, scores, classes, table, score_threshold=score_threshold,
                         min_new_area=min_new_area, stuff_min_area=stuff_min_area)


def _grow(ids: Tensor, category: Tensor) -> Tensor:
    """Step 3 of ``fuse_panoptic``: [H, W] instance ids (-1 none) grown breadth-first into the pixels of
    ``category`` >= 0 without an instance, through 8-neighbours of the same category; in one step a pixel joins
    the lowest-numbered instance that reaches it (instances are numbered by decreasing score)."""
    n = int(ids.max()) + 1 if ids.numel() else 0
    if n == 0:
        return ids
    # Priority n - id (larger wins), 0 for none; a neighbour passes its priority only within its category.
    priority = torch.where(ids >= 0, n - ids, 0)
    open_ = (category >= 0) & (ids < 0)
    padded_category = F.pad(category, (1, 1, 1, 1), value=-1)
    h, w = ids.shape
    shifts = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1)]
    same = [padded_category[dy:dy + h, dx:dx + w] == category for dy, dx in shifts]  # [H, W] per neighbour
    while bool(open_.any()):
        padded = F.pad(priority, (1, 1, 1, 1))
        best = torch.zeros_like(priority)
        for (dy, dx), ok in zip(shifts, same):
            best = torch.maximum(best, torch.where(ok, padded[dy:dy + h, dx:dx + w], 0))
        reached = open_ & (best > 0)
        if not bool(reached.any()):
            break
        priority = torch.where(reached, best, priority)
        open_ &= ~reached
    return torch.where(priority > 0, n - priority, -1)


def _by_score(scores: Tensor, threshold: float) -> list[int]:
    """Indices of ``scores`` at least ``threshold``, by decreasing score (ties: lower index first)."""
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices.tolist()
    values = scores.cpu().tolist()
    return [i for i in order if values[i] >= threshold]


def _check_detections(semantic: Tensor, masks: Tensor, scores: Tensor, classes: Tensor, table: ClassTable,
                      mask_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Validated (binary masks [N, H, W] bool, scores [N] float32, classes [N] int64) on ``semantic``'s device."""
    if semantic.dim() != 2 or masks.dim() != 3 or masks.shape[1:] != semantic.shape:
        raise ValueError(f"semantic must be [H, W] and masks [N, H, W] of the same H, W; got "
                         f"{tuple(semantic.shape)} and {tuple(masks.shape)}")
    device = semantic.device
    scores = torch.as_tensor(scores).to(device=device, dtype=torch.float32).flatten()
    classes = torch.as_tensor(classes).to(device=device, dtype=torch.int64).flatten()
    if not len(scores) == len(classes) == len(masks):
        raise ValueError(f"got {len(masks)} masks, {len(scores)} scores and {len(classes)} classes")
    things = set(table.thing_ids)
    if not set(classes.tolist()) <= things:
        raise ValueError(f"classes must be thing class ids {sorted(things)}, got {classes.tolist()}")
    binary = masks if masks.dtype == torch.bool else masks > mask_threshold
    return binary.to(device), scores, classes


def _result(semantic: Tensor, ids: Tensor, classes: Tensor, scores: Tensor, table: ClassTable,
            stuff_min_area: int) -> MergedPanoptic:
    panoptic = merge_panoptic(semantic, ids, classes, table, stuff_min_area=stuff_min_area,
                              instance_scores=scores)
    return MergedPanoptic(semantic, ids, classes, scores, panoptic)


__all__ = ["MERGES", "MergedPanoptic", "fuse_panoptic", "merge_detections", "merge_panoptic_fpn"]
