"""Pure-PyTorch reference of Instance Mask Projection: the test oracle and the explicit fallback.

Slow on purpose (a Python loop over detections) and written to read like the definition in
:func:`panoptic_ros.ops.project_instance_masks`. Its float32 arithmetic for cell indices repeats
``panoptic_ros/ops/csrc/imp_geometry.h`` step for step, so the compiled kernels must match it bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _cells_along(size: int, lo: Tensor, length: Tensor, cells: int) -> Tensor:
    """Cell index of every canvas pixel along one axis: floor(((p + 0.5) - lo) * cells / length) in float32.

    Operands are materialised at full length so that every step is a plain IEEE elementwise op (a 0-dim divisor
    may be turned into a multiplication by its reciprocal).
    """
    t = (torch.arange(size, dtype=torch.float32) + 0.5) - torch.full((size,), lo.item(), dtype=torch.float32)
    t = t * torch.full((size,), float(cells), dtype=torch.float32)
    t = t / torch.full((size,), length.item(), dtype=torch.float32)
    return t.clamp(-1.0, float(cells)).floor().long()


def project_instance_masks_reference(
    masks: Tensor,
    scores: Tensor,
    classes: Tensor,
    boxes: Tensor,
    canvas_size: tuple[int, int, int],
    box_scale: float = 1.0,
) -> Tensor:
    """Reference IMP forward; differentiable with respect to ``masks`` and ``scores`` through autograd.

    Same arguments, result and rules as :func:`panoptic_ros.ops.project_instance_masks`.
    """
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
        row_cells = _cells_along(height, y_lo, y_len, mask_h)
        col_cells = _cells_along(width, x_lo, x_len, mask_w)
        rows = torch.nonzero((row_cells >= 0) & (row_cells < mask_h)).flatten()
        cols = torch.nonzero((col_cells >= 0) & (col_cells < mask_w)).flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            continue
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        projected = values[n][row_cells[r0:r1].to(device)][:, col_cells[c0:c1].to(device)] * weights[n]
        current = canvas[c, r0:r1, c0:c1]
        # Strictly greater: on ties the earlier detection keeps the pixel (and its gradient).
        canvas[c, r0:r1, c0:c1] = torch.where(projected > current, projected, current)
    return canvas.to(masks.dtype)
