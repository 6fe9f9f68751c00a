"""DCME instance decoder: Distance to Centre of Mass Encoding (../shared/papers/dcme-instance-as-annotation.txt,
Watanabe and Wolf, Sec. III-IV; the encoding itself is their earlier DCME paper, ref. [1]).

Every pixel of an instance regresses the 2-D vector from itself to its instance's centre of mass (CM); the head is
class-agnostic. Pixels then vote for centres (pixel + vector), and votes that meet form one instance.

* **Head** (``DCMEHead``): PanoNet's instance decoder (two CFF units and the 1/4 head, ``icnet.ICNetDecoder``) with
  2 output channels, (dx, dy), on the shared ICNet encoder features. Output [B, 2, H/4, W/4] like the embedding
  head. Departure: the paper uses a DeepLabv3+ decoder on a VGG encoder (Sec. V).
* **Units.** Vectors are in pixels of the output grid they are predicted on (x to the right, y down; pixel (i, j)
  has its centre at x = j, y = i). The paper does not normalise them: "changing the image resolution directly
  affect[s] vectors sizes" and the clip amplitude A "must be adjusted according to the input image resolution"
  (Sec. IV). A = 4 was chosen for 512 x 1024 inputs; on our 1/4 grid a vector is 4 times shorter than in input
  pixels, so the same A clips errors of fewer input pixels. A cascade guidance output at 1/8 or 1/16 is trained
  in its own grid's pixels (``dcme_targets`` at that resolution).
* **Targets** (``dcme_targets``): CM = mean of the instance's pixel coordinates on the output grid (the instance
  map resized by ``losses.downsample_nearest``), vector = CM - pixel; pixels of no instance get (0, 0), as the
  DCME encoding leaves them. The CM of a concave or split instance may lie outside it; every part still points to
  it, which is how DCME handles partial occlusion (Sec. VI).
* **Loss** (``dcme_loss``, Sec. IV-A/B): MSE = 1/(2N) sum (Y - Y_hat)^2 (Eq. 4) over both channels of every output
  pixel, N = 2 n r c (Eq. 5). Pixels flagged not ``valid`` (e.g. void labels) are left out and N counts the
  others (departure only where such pixels exist). The error is clipped before backpropagation, not the output:
  "the error values (gradients) were clipped before the backpropagation ... The loss function output is
  calculated with the full error values" (Sec. IV-B). So the loss *value* is Eq. 4 with the full errors, and its
  gradient with respect to each output is f(e) / N, e = Y_hat - Y, f(x) = A (sigmoid(x) - 0.5) (Eq. 6), A = 4
  (Sec. V) instead of e / N. Since f'(0) = A / 4, A = 4 keeps the exact MSE gradient for small errors and caps it
  at A / 2 = 2 (the "clip amplitude of two"). This gradient is that of (A / N) sum log cosh(e / 2), which is how it
  is computed. (f applied to the network output instead would cap every predicted vector at 2 pixels, unable to
  reach the centre of any object wider than 4 pixels.)
* **Decoding** (``decode_dcme``). The paper does not say how votes become instances (its 4.4 s per image decoding
  is not described; Sec. V). Chosen here: thing pixels (by the semantic map) vote at pixel + vector; votes are
  counted per grid cell (rounded, half to even) into a heat map smoothed by the 3 x 3 binomial kernel; centres
  are the local maxima of the heat map within ``peak_radius`` cells (ties: the first cell of the window in
  row-major order, which max pooling returns) holding at least ``min_votes`` votes in that window; every voting pixel joins the centre nearest its vote (none if farther than
  ``max_distance``). All of it is a few dense tensor operations; no loop over pixels or instances.
* **Class**: the most frequent semantic class among an instance's pixels (ties: the smaller class id). Departure:
  the paper classifies instances with a grid classifier on the encoder output (Sec. III, Eq. 1-3), reading the
  class of the grid block that holds the instance's CM. Here the semantic branch already labels every pixel.
  Pixels of an instance whose own class differs stay in it (the panoptic merge, ``postprocess.assign_thing_pixels``,
  then gives pixels of another thing class an instance of their own class).

Decode time against PanoNet's mean shift: the ``panoptic_ros.decoders`` package docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import CASCADE_WEIGHTS
from ..models.icnet import ICNetDecoder
from ..postprocess import InstanceMap
from .common import cascade_sum, instance_pixels, majority, pixel_grid

DCME_AMPLITUDE = 4.0  # A of Eq. 6 (Sec. V)
_PAIRS = 1 << 22  # votes x centres distances held at once


class DCMEHead(ICNetDecoder):
    """The DCME vector head on ICNet encoder features (1/8, 1/16, 1/32): ``forward`` returns the [B, 2, ~H/4, ~W/4]
    vectors (dx, dy) and, in training, the cascade guidance vectors at 1/8 and 1/16 (``ICNetDecoder``'s contract,
    so it stands in for PanoNet's ``embedding_decoder``)."""

    def __init__(self, encoder_channels: tuple[int, int, int], width: float = 1.0):
        super().__init__(encoder_channels, 2, width)


def dcme_targets(instance_ids: Tensor, ignore_index: int = -1) -> Tensor:
    """DCME encoding of instance maps: [B, h, w] integer ids (``ignore_index`` = no instance) -> [B, 2, h, w]
    float32, (CM_x - x, CM_y - y) for the pixels of an instance, (0, 0) elsewhere; CM in grid coordinates."""
    groups = instance_pixels(instance_ids, ignore_index)
    b, h, w = instance_ids.shape
    out = torch.zeros(2, b * h * w, dtype=torch.float32, device=instance_ids.device)
    if groups.num_instances:
        out[0, groups.pixel] = (groups.mean(groups.x)[groups.instance] - groups.x).float()
        out[1, groups.pixel] = (groups.mean(groups.y)[groups.instance] - groups.y).float()
    return out.view(2, b, h, w).transpose(0, 1)


def clipped_error(x: Tensor, amplitude: float = DCME_AMPLITUDE) -> Tensor:
    """Eq. 6: f(x) = A (sigmoid(x) - 0.5) = (A / 2) tanh(x / 2)."""
    return amplitude * (torch.sigmoid(x) - 0.5)


def dcme_loss(vectors: Tensor, instance_ids: Tensor, valid: Tensor | None = None,
              amplitude: float | None = DCME_AMPLITUDE, ignore_index: int = -1) -> Tensor:
    """Eq. 4 with N of Eq. 5, backpropagating the clipped errors of Eq. 6 (see the module docstring).

    Value: sum_valid (Y - Y_hat)^2 / (2 N), N = 2 * (valid pixels) (= 2 n r c when all are valid). Gradient with
    respect to Y_hat: f(Y_hat - Y) / N at valid pixels, 0 elsewhere; ``amplitude=None`` gives the plain MSE gradient
    (Y_hat - Y) / N. No valid pixel: 0, still in the graph of ``vectors``.

    Args:
        vectors: [B, 2, h, w] predicted (dx, dy) in pixels of this grid.
        instance_ids: [B, h, w] instance ids at this resolution (``ignore_index`` = no instance: target (0, 0)).
        valid: optional [B, h, w] bool, pixels that count.
    Returns:
        scalar tensor.
    """
    if vectors.dim() != 4 or vectors.shape[1] != 2 or instance_ids.shape != (vectors.shape[0], *vectors.shape[2:]):
        raise ValueError(f"vectors must be [B, 2, h, w] and instance_ids [B, h, w]; got {tuple(vectors.shape)} and "
                         f"{tuple(instance_ids.shape)}")
    if valid is not None and valid.shape != instance_ids.shape:
        raise ValueError(f"valid must be [B, h, w] = {tuple(instance_ids.shape)}, got {tuple(valid.shape)}")
    if amplitude is not None and not amplitude > 0:
        raise ValueError(f"amplitude A of Eq. 6 must be > 0 (or None for no clipping), got {amplitude}")
    error = vectors.float() - dcme_targets(instance_ids, ignore_index)
    weight = torch.ones_like(instance_ids, dtype=error.dtype) if valid is None else valid.to(error.dtype)
    weight = weight[:, None]
    n = 2 * weight.sum()
    if float(n) == 0:
        return vectors.sum() * 0.0
    value = (error.square() * weight).sum() / (2 * n)
    if amplitude is None:
        return value
    half = error.abs() / 2  # log cosh(e / 2) = |e| / 2 + log(1 + exp(-|e|)) - log 2, stable for any e
    log_cosh = half + torch.log1p(torch.exp(-2 * half)) - math.log(2.0)
    surrogate = amplitude * (log_cosh * weight).sum() / n  # d/de = (A / 2) tanh(e / 2) / N = f(e) / N
    return value.detach() + (surrogate - surrogate.detach())


def dcme_cascade_loss(outputs: Tensor | Sequence[Tensor], instance_ids: Tensor, valid: Tensor | None = None,
                      amplitude: float | None = DCME_AMPLITUDE, ignore_index: int = -1,
                      weights: Sequence[float] = CASCADE_WEIGHTS) -> Tensor:
    """``dcme_loss`` per output scale (finest first) with PanoNet's cascade weights (Eq. 6);
    ``instance_ids`` and ``valid`` at full resolution [B, H, W], resized to each scale."""
    maps = [instance_ids] if valid is None else [instance_ids, valid]
    return cascade_sum(lambda out, ids, ok=None: dcme_loss(out, ids, ok, amplitude, ignore_index), outputs, maps,
                       weights)


def decode_dcme(vectors: Tensor, semantic: Tensor, thing_ids: Sequence[int], *, peak_radius: int = 2,
                min_votes: int = 3, max_distance: float | None = 5.0, min_pixels: int = 1) -> InstanceMap:
    """Instances from DCME vectors and a semantic map (see the module docstring for the rule and its sources).

    Instances are numbered by class, then by size (most pixels first); instances with fewer than ``min_pixels``
    pixels are dropped (their pixels get -1).

    Args:
        vectors: [2, h, w] (dx, dy) in pixels of this grid.
        semantic: [h, w] integer class per pixel (the semantic branch's argmax at the same resolution).
        thing_ids: the thing class ids; only their pixels vote.
        peak_radius: a centre is a maximum of the smoothed vote map over (2 r + 1)^2 cells.
        min_votes: votes a centre needs within that window.
        max_distance: pixels whose vote is farther than this (grid pixels) from every centre get no instance
            (``None``: every voting pixel joins its nearest centre). Such thing pixels are left to the panoptic
            merge (``postprocess.assign_thing_pixels``), which joins them to an adjacent instance of their class
            or makes a new one, rather than letting a tiny object without a centre join a distant instance.
    Returns:
        ``InstanceMap`` (ids [h, w] int64, -1 = none; classes [K] int64) on the device of ``vectors``.
    """
    if vectors.dim() != 3 or vectors.shape[0] != 2 or semantic.shape != vectors.shape[1:]:
        raise ValueError(f"vectors must be [2, h, w] and semantic [h, w] of the same h, w; got "
                         f"{tuple(vectors.shape)} and {tuple(semantic.shape)}")
    if semantic.is_floating_point():
        raise ValueError(f"semantic must hold integer class ids, got {semantic.dtype}")
    if int(peak_radius) != peak_radius or peak_radius < 0:
        raise ValueError(f"peak_radius must be an integer >= 0, got {peak_radius}")
    if not min_votes >= 1:
        raise ValueError(f"min_votes must be >= 1, got {min_votes}")
    device = vectors.device
    h, w = semantic.shape
    semantic = semantic.to(device=device, dtype=torch.int64)
    things = torch.as_tensor(sorted(set(int(c) for c in thing_ids)), dtype=torch.int64, device=device)
    ids = torch.full((h, w), -1, dtype=torch.int64, device=device)
    empty = InstanceMap(ids, torch.zeros(0, dtype=torch.int64, device=device))
    thing = torch.isin(semantic, things).flatten()
    pixel = torch.nonzero(thing).flatten()
    if len(pixel) == 0:
        return empty
    xs, ys = pixel_grid(h, w, device)
    field = vectors.detach().float().flatten(1)
    votes = torch.stack([xs.flatten()[pixel] + field[0, pixel], ys.flatten()[pixel] + field[1, pixel]], 1)
    finite = torch.isfinite(votes).all(1)  # a non-finite vector votes nowhere: its pixel gets no instance
    pixel, votes = pixel[finite], votes[finite]

    cell = torch.round(votes)
    inside = (cell[:, 0] >= 0) & (cell[:, 0] <= w - 1) & (cell[:, 1] >= 0) & (cell[:, 1] <= h - 1)
    cell = cell[inside].long()
    counts = torch.bincount(cell[:, 1] * w + cell[:, 0], minlength=h * w).view(h, w)
    padded = F.pad(counts.float()[None, None], (1, 1, 1, 1))[0, 0]
    rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    heat = rows[:-2] + 2 * rows[1:-1] + rows[2:]  # 3 x 3 binomial sum: whole numbers, exact in float32
    r = int(peak_radius)
    _, first_max = F.max_pool2d(heat[None, None], 2 * r + 1, stride=1, padding=r, return_indices=True)
    own = torch.arange(h * w, device=device).view(h, w)
    peaks = torch.nonzero((first_max[0, 0] == own) & (heat > 0))  # [K, 2] (row, col), ties: first in the window
    integral = F.pad(counts.cumsum(0).cumsum(1), (1, 0, 1, 0))
    y0, x0 = (peaks - r).clamp(min=0).unbind(1)
    y1, x1 = (peaks[:, 0] + r + 1).clamp(max=h), (peaks[:, 1] + r + 1).clamp(max=w)
    window_votes = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    peaks = peaks[window_votes >= min_votes]
    if len(peaks) == 0:
        return empty
    centres = peaks.flip(1).float()  # (x, y)

    nearest = torch.empty(len(votes), dtype=torch.int64, device=device)
    distance = torch.empty(len(votes), dtype=torch.float32, device=device)
    step = max(1, _PAIRS // len(centres))
    for s in range(0, len(votes), step):
        distance[s:s + step], nearest[s:s + step] = torch.cdist(votes[s:s + step], centres).min(1)
    if max_distance is not None:
        nearest = torch.where(distance <= max_distance, nearest, -1)

    member = nearest >= 0
    pixel, nearest = pixel[member], nearest[member]
    k = len(centres)
    size_of = torch.bincount(nearest, minlength=k)
    class_index = torch.searchsorted(things, semantic.flatten()[pixel])
    class_of = things[majority(nearest, class_index, k, len(things))]
    kept = size_of >= max(1, min_pixels)
    order = torch.argsort(size_of, descending=True, stable=True)
    order = order[torch.argsort(class_of[order], stable=True)]
    order = order[kept[order]]
    number = torch.full((k,), -1, dtype=torch.int64, device=device)
    number[order] = torch.arange(len(order), device=device)
    ids.view(-1)[pixel] = number[nearest]
    return InstanceMap(ids, class_of[order])
