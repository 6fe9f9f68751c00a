"""Pure-PyTorch reference of Instance Mask Projection: the test oracle and the explicit fallback.

Slow on purpose (a Python loop over detections) and written to read like the definition in
:func:`panoptic_ros.ops.project_instance_masks`. Its float32 arithmetic for cell indices repeats
``panoptic_ros/ops/csrc/imp_geometry.h`` step for step, so the compiled kernels must match it bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The sampling rules: ``overlap`` (Algorithm 1: every cell overlapping a pixel) and ``centre`` (the cell under it).
SAMPLING = ("overlap", "centre")


def _affine(points: Tensor, lo: Tensor, length: Tensor, cells: int) -> Tensor:
    """((points - lo) * cells) / length in float32, step by step. Operands are materialised at full length so that
    every step is a plain IEEE elementwise op (a 0-dim divisor may be turned into a multiplication by its
    reciprocal)."""
    size = points.numel()
    t = points - torch.full((size,), lo.item(), dtype=torch.float32)
    t = t * torch.full((size,), float(cells), dtype=torch.float32)
    return t / torch.full((size,), length.item(), dtype=torch.float32)


def cell_ranges(size: int, lo: Tensor, length: Tensor, cells: int, overlap: bool) -> tuple[Tensor, Tensor]:
    """The cells ``[low, high]`` (int64, per pixel along one axis of ``size`` pixels) that each pixel reads.

    Centre rule: ``floor(((p + 0.5) - lo) * cells / length)`` clamped to ``[-1, cells]``, the same cell twice
    (outside the box when not in ``[0, cells)``). Overlap rule: with ``edge(q) = ((q - lo) * cells) / length``
    clamped to ``[-1, cells + 1]``, ``low = max(0, floor(edge(p)))`` and ``high = min(cells - 1,
    max(ceil(edge(p + 1)) - 1, floor(edge(p))))``: the cells overlapping ``[p, p + 1)`` with positive length
    (none when low > high); a pixel that float32 shrinks to a point reads the cell holding it.
    """
    pixels = torch.arange(size, dtype=torch.float32)
    if not overlap:
        cell = _affine(pixels + 0.5, lo, length, cells).clamp(-1.0, float(cells)).floor().long()
        return cell, cell
    point = _affine(pixels, lo, length, cells).clamp(-1.0, cells + 1.0).floor().long()
    high = _affine(pixels + 1, lo, length, cells).clamp(-1.0, cells + 1.0).ceil().long() - 1
    return point.clamp(min=0), torch.maximum(high, point).clamp(max=cells - 1)


def _first_max(values: Tensor, member: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Maximum of ``values`` over ``dim`` among ``member`` entries (NaN never wins; -inf where there is none) and
    the index of its first occurrence. The value is gathered, so autograd routes the gradient to that entry only."""
    candidates = torch.where(member & ~values.isnan(), values, torch.full_like(values, float("-inf")))
    index = candidates.detach().argmax(dim=dim, keepdim=True)
    return candidates.gather(dim, index).squeeze(dim), index.squeeze(dim)


def project_instance_masks_reference(
    masks: Tensor,
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    canvas_size: tuple[int, int, int],
    box_scale: float = 1.0,
    sampling: str = "overlap",
) -> Tensor:
    """Reference IMP forward; differentiable with respect to ``masks`` and ``scores`` through autograd.

    Same arguments, result and rules as :func:`panoptic_ros.ops.project_instance_masks`.
    """
    if sampling not in SAMPLING:
        raise ValueError(f"imp: sampling must be one of {SAMPLING}, got {sampling!r}")
    overlap = sampling == "overlap"
    num_classes, height, width = canvas_size
    n_inst, mask_h, mask_w = masks.shape
    acc = torch.float64 if masks.dtype == torch.float64 else torch.float32
    device = masks.device
    values = masks.to(acc)
    weights = scores.to(acc)
    geometry = boxes.detach().to("cpu", torch.float32) * torch.tensor(box_scale, dtype=torch.float32)
    labels = classes.detach().to("cpu", torch.int64)
    canvas = torch.zeros((num_classes, height, width), dtype=acc, device=device)
    for n in range(n_inst):
        c = int(labels[n])
        x_lo, y_lo = geometry[n, 0], geometry[n, 1]
        x_len, y_len = geometry[n, 2] - x_lo, geometry[n, 3] - y_lo
        spans = torch.stack([x_lo, y_lo, x_len, y_len])
        if not (0 <= c < num_classes and bool(torch.isfinite(spans).all()) and x_len > 0 and y_len > 0):
            continue
        row_lo, row_hi = cell_ranges(height, y_lo, y_len, mask_h, overlap)
        col_lo, col_hi = cell_ranges(width, x_lo, x_len, mask_w, overlap)
        rows = torch.nonzero((row_lo <= row_hi) & (row_hi >= 0) & (row_lo < mask_h)).flatten()
        cols = torch.nonzero((col_lo <= col_hi) & (col_hi >= 0) & (col_lo < mask_w)).flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            continue
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        cell_rows, cell_cols = torch.arange(mask_h), torch.arange(mask_w)
        reads_col = (cell_cols[None] >= col_lo[c0:c1, None]) & (cell_cols[None] <= col_hi[c0:c1, None])  # [w, S_w]
        reads_row = (cell_rows[None] >= row_lo[r0:r1, None]) & (cell_rows[None] <= row_hi[r0:r1, None])  # [h, S_h]
        products = values[n] * weights[n]  # [S_h, S_w]
        # Separable maximum: over each pixel column's cells in every mask row (first column on ties), then over
        # each pixel row's cells (first row on ties): the first cell in row-major order holding the maximum.
        row_max, _ = _first_max(products[:, None, :].expand(-1, c1 - c0, -1), reads_col[None].to(device), dim=2)
        projected, _ = _first_max(row_max[None].expand(r1 - r0, -1, -1), reads_row[:, :, None].to(device), dim=1)
        current = canvas[c, r0:r1, c0:c1]
        # Strictly greater: on ties the earlier detection keeps the pixel (and its gradient).
        canvas[c, r0:r1, c0:c1] = torch.where(projected > current, projected, current)
    return canvas.to(masks.dtype)
