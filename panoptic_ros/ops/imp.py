"""Instance Mask Projection (IMP): the Python face of the compiled ``panoptic_ros::imp_forward`` operator.

IMP paper (../shared/papers/imp-panoptic-fpn-imp.txt), Sec. 3.1 and Algorithm 1. The schema and the CPU kernel
live in ``csrc/imp.cpp``, the CUDA kernel in ``csrc/cuda/imp_cuda.cu``; this module adds the fake (meta)
implementation for ``torch.compile`` / ``torch.export`` and the autograd formula.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from ._reference import SAMPLING, project_instance_masks_reference

_log = logging.getLogger(__name__)

#: Set to ``1`` to run the (slow) pure-PyTorch reference when the compiled extension is missing.
FALLBACK_ENV = "PANOPTIC_ROS_IMP_FALLBACK"

try:
    from . import _C  # noqa: F401  (importing registers the panoptic_ros::imp_* operators)

    _LOAD_ERROR: ImportError | None = None
except ImportError as error:  # the extension was not built, or was built against another torch
    _LOAD_ERROR = error

_warned_fallback = False


def extension_available() -> bool:
    """True when the compiled IMP operators are registered with torch."""
    return _LOAD_ERROR is None


def project_instance_masks(
    masks: Tensor,
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    canvas_size: tuple[int, int, int],
    box_scale: float = 1.0,
    sampling: str = "overlap",
) -> Tensor:
    """Project scored instance masks onto a per-class canvas (IMP, Sec. 3.1, Algorithm 1).

    Args:
        masks: ``[N, S_h, S_w]`` floating mask probabilities (Mask R-CNN: 28 x 28), any S, any strides.
        scores: ``[N]`` detection scores, same dtype as ``masks``.
        classes: ``[N]`` integer canvas plane of each detection. Detections whose class lies outside
            ``[0, C)`` are ignored, so ``-1`` can pad a fixed-size batch of detections.
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)`` in image pixels (any floating dtype; used as float32).
        canvas_size: ``(C, H, W)`` of the canvas.
        box_scale: canvas pixels per image pixel (``0.25`` for a canvas at stride 4).
        sampling: which mask cells a canvas pixel reads. ``"overlap"`` (default, Algorithm 1): every cell whose
            rectangle overlaps the pixel with positive area, so a cell smaller than a pixel still lands on the
            pixel it falls in. ``"centre"``: the one cell under the pixel centre (cheaper; cells smaller than a
            pixel may project nothing: at stride 4 every 28 x 28 mask of a box under 112 image pixels).

    Returns:
        ``[C, H, W]`` canvas in the dtype of ``masks``:
        ``canvas[c, i, j] = max(0, max over detections n of class c and cells (u, v) that (i, j) reads of
        masks[n, u, v] * scores[n])``.

    Rules, identical in the CPU kernel, the CUDA kernel and the reference:

    * Geometry. Canvas pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``; its centre is ``(j + 0.5, i + 0.5)``.
      A box is scaled to ``(x1, y1, x2, y2) * box_scale`` and split into ``S_h x S_w`` equal cells; cell column
      ``v`` spans ``[v, v + 1)`` in cell units ``e(x) = (x - x1) * S_w / (x2 - x1)`` (rows alike). Each step of
      ``e`` is rounded to float32, in that order.
      ``centre``: column ``j`` reads cell ``v = floor(e(j + 0.5))`` when ``0 <= v < S_w`` (its centre lies in
      the half-open box). ``overlap``: column ``j`` reads cells ``max(0, floor(e(j)))`` to
      ``min(S_w - 1, ceil(e(j + 1)) - 1)``, those overlapping ``[j, j + 1)`` with positive length (in a box so
      wide that float32 makes ``e(j) == e(j + 1)``, the cell ``floor(e(j))`` holding that point). A pixel reads
      the cells in both its row and its column range and takes the largest value; on ties within a detection,
      the first cell in row-major order.
    * Invalid detections project nothing: non-finite box coordinates, ``x2 <= x1`` or ``y2 <= y1``, boxes that
      no pixel reads (e.g. fully outside), classes outside ``[0, C)``.
    * Values are ``float(mask) * float(score)`` (float64 for float64 inputs), maximised in that precision and
      rounded once to the output dtype. The canvas starts at 0, so negative and NaN values never appear.
    * Ties: the detection with the smallest index keeps the pixel.
    * Gradient: ``d canvas[c, i, j]`` flows only to the winning cell ``(n, u, v)`` of that pixel:
      ``d masks[n, u, v] += g * scores[n]`` and ``d scores[n] += g * masks[n, u, v]``. Pixels no detection set
      pass no gradient. ``classes`` and ``boxes`` get none.

    Raises:
        ValueError: ``sampling`` is not one of ``SAMPLING``.
        RuntimeError: the compiled extension is missing and ``PANOPTIC_ROS_IMP_FALLBACK=1`` is not set; or an
            argument has the wrong shape, dtype or device (the message names it).
    """
    if sampling not in SAMPLING:
        raise ValueError(f"imp: sampling must be one of {SAMPLING}, got {sampling!r}")
    num_classes, height, width = (int(v) for v in canvas_size)
    if not extension_available():
        return _fallback(masks, scores, classes, boxes, (num_classes, height, width), box_scale, sampling)
    # The winner index (8 bytes per canvas pixel) is only needed to route gradients.
    with_winner = torch.is_grad_enabled() and (masks.requires_grad or scores.requires_grad)
    canvas, _ = torch.ops.panoptic_ros.imp_forward(
        masks, scores, classes.long(), boxes, num_classes, height, width, float(box_scale), sampling == "overlap",
        with_winner,
    )
    return canvas


def _fallback(masks, scores, classes, boxes, canvas_size, box_scale, sampling) -> Tensor:
    global _warned_fallback
    if os.environ.get(FALLBACK_ENV) != "1":
        raise RuntimeError(
            "panoptic_ros IMP extension (panoptic_ros.ops._C) is not available: "
            f"{_LOAD_ERROR}. Build it with `make setup` (or `pip install -e . --no-build-isolation`) against the "
            f"installed torch {torch.__version__}, or set {FALLBACK_ENV}=1 to use the slow pure-PyTorch reference."
        )
    if not _warned_fallback:
        _log.warning(
            "IMP extension unavailable (%s); %s=1, so using the pure-PyTorch reference (much slower).",
            _LOAD_ERROR,
            FALLBACK_ENV,
        )
        _warned_fallback = True
    return project_instance_masks_reference(masks, scores, classes, boxes, canvas_size, box_scale, sampling)


if extension_available():

    @torch.library.register_fake("panoptic_ros::imp_forward")
    def _imp_forward_fake(masks, scores, classes, boxes, num_classes, height, width, box_scale, overlap, with_winner):
        torch._check(masks.dim() == 3, lambda: f"imp: masks must be [N, S_h, S_w], got {tuple(masks.shape)}")
        canvas = masks.new_empty((num_classes, height, width))
        winner_shape = (num_classes, height, width) if with_winner else (0,)
        return canvas, masks.new_empty(winner_shape, dtype=torch.long)

    @torch.library.register_fake("panoptic_ros::imp_backward")
    def _imp_backward_fake(grad_canvas, winner, masks, scores, classes, boxes, box_scale, overlap):
        return torch.empty_like(masks), torch.empty_like(scores)

    def _setup_context(ctx, inputs, output):
        masks, scores, classes, boxes, _, _, _, box_scale, overlap, _ = inputs
        _, winner = output
        ctx.save_for_backward(masks, scores, classes, boxes, winner)
        ctx.box_scale, ctx.overlap = box_scale, overlap
        ctx.mark_non_differentiable(winner)

    def _backward(ctx, grad_canvas, _grad_winner):
        masks, scores, classes, boxes, winner = ctx.saved_tensors
        grad_masks, grad_scores = torch.ops.panoptic_ros.imp_backward(
            grad_canvas, winner, masks, scores, classes, boxes, ctx.box_scale, ctx.overlap
        )
        return grad_masks, grad_scores, None, None, None, None, None, None, None, None

    torch.library.register_autograd("panoptic_ros::imp_forward", _backward, setup_context=_setup_context)
