"""PanoNet post-processing (paper Sec. III-D): class-wise mean-shift clustering and the panoptic merge.

Pure functions over tensors; they run on the device of their inputs with the same code on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from .classes import ClassTable

VOID_ID = -1  # panoptic id maps: no segment
MAX_SEGMENTS = 32767  # the segment map is int16 on the device (uint16 in messages, msg/PanopticSegmentation.msg)
INSTANCE_OFFSET = 1000  # msg/PanopticSegmentation.msg INSTANCE_OFFSET: thing id = class_id * 1000 + k
_KEY_LIMIT = 2 ** 31  # merge_codes' int32 keys, code + number of codes x row (or column), stay below it

_CHUNK_ELEMENTS = 1 << 18  # seeds x points distances held at once: 2 MiB in float64 stays in L2 cache
_DENSE_PAIRS = 1 << 18  # up to this many seeds x points, mean shift scans every point (``_DensePoints``)


@dataclass
class MeanShiftResult:
    """Shapes: labels [N] int64 in 0..K-1, centres [K, E] float64, intensities [K] int64 (points within the
    bandwidth of each centre at its last iteration; centres are sorted by it, descending, as sklearn sorts them)."""

    labels: Tensor
    centres: Tensor
    intensities: Tensor


def cluster_embeddings(points: Tensor, bandwidth: float, *, max_iter: int = 300) -> Tensor:
    """Mean-shift clustering with a flat kernel and bin seeding (paper Sec. III-D).

    Same partition as ``sklearn.cluster.MeanShift(bandwidth=bandwidth, bin_seeding=True, min_bin_freq=1,
    cluster_all=True, max_iter=max_iter)``; see ``mean_shift`` for the algorithm and the few differences.

    Args:
        points: [N, E] embeddings of one class's pixels (any float dtype, any device).
    Returns:
        [N] int64 cluster labels 0..K-1 on ``points.device``; label 0 is the densest mode.
    """
    return mean_shift(points, bandwidth, max_iter=max_iter).labels


def mean_shift(points: Tensor, bandwidth: float, *, max_iter: int = 300) -> MeanShiftResult:
    """Flat-kernel mean shift with bin seeding, in vectorised torch (float64 throughout).

    sklearn's ``MeanShift(bin_seeding=True)`` step by step:
      1. Seeds: one per distinct grid cell round(x / bandwidth) (round half to even), in order of first
         appearance, at cell * bandwidth computed in float32 (as sklearn's ``get_bin_seeds``); when every point
         has its own cell, the points themselves.
      2. Every seed moves to the mean of the points within ``bandwidth`` (||x - m||^2 <= bandwidth^2) until it
         moves by <= 1e-3 * bandwidth or ``max_iter`` iterations are done; a seed with no point within bandwidth
         is dropped. All seeds iterate together; converged seeds leave the active set, and seeds that reach the
         same mean share one computation from then on (identical inputs give identical trajectories).
      3. Centres (exact duplicates merged, the later seed's count kept, as sklearn's dict does) are sorted by
         (points within, centre coordinates) descending; going down the list, each kept centre removes the later
         ones within ``bandwidth``.
      4. Each point takes the label of its nearest centre.
    To avoid the dense seeds x points work, points are grouped (connected grid cells) and a mean only looks at
    groups whose bounding sphere comes within ``bandwidth`` of it; a group wholly inside the ball adds its sum.
    Distances use ||x||^2 - 2 m.x + ||m||^2 in chunks of seeds x points.

    Differences from sklearn: float64 rounding differs (sums in another order, the distance expansion above),
    which only matters for points within ~1e-12 of the bandwidth or centres tied to ~1e-12 (relative to the
    squared distances of the points from their mean: points 1e6 from it with bandwidth 1e-3, far outside what an
    embedding looks like, can lose seeds that sklearn keeps); where sklearn raises
    "No point was within bandwidth" (every bin seed is isolated, possible for E > 4), the points are used as seeds.

    Args:
        points: [N, E]. N = 0 gives empty results.
        bandwidth: flat-kernel radius, > 0.
    Returns:
        ``MeanShiftResult`` on ``points.device``.
    """
    return mean_shifts([(points, bandwidth)], max_iter=max_iter)[0]


def mean_shifts(problems: list[tuple[Tensor, float]], *, max_iter: int = 300) -> list[MeanShiftResult]:
    """``mean_shift`` of several independent (points, bandwidth) problems, the small ones climbing together.

    Step 2 costs about thirty small tensor operations per iteration whatever the size, a large part of the time
    for the few hundred points of one class in a frame. Problems of up to ``_DENSE_PAIRS`` seeds x points climb
    in one loop, each seed with its own bandwidth and problem, the means of each problem summing its points in
    one matrix product per iteration (``_DensePoints``): a frame's classes share the loop's bookkeeping and take
    as many iterations as the slowest of them, not their sum. A seed's arithmetic is that of ``mean_shift`` on
    its problem alone, so the results are the separate runs' (a product's rows may come in another order).
    Larger problems climb alone, with ``_PointIndex``.
    """
    prepared = [_prepare(points, bandwidth) for points, bandwidth in problems]
    climbed: list[tuple[Tensor, Tensor] | None] = [None] * len(prepared)
    dense = [i for i, p in enumerate(prepared) if p is not None and p.dense]
    if dense:
        parts = [prepared[i] for i in dense]
        index = _DensePoints([p.x for p in parts])
        seeds = torch.cat([p.seeds for p in parts])
        bandwidths = torch.cat([torch.full((len(p.seeds),), p.bandwidth, dtype=seeds.dtype, device=seeds.device)
                                for p in parts])
        problem = torch.cat([torch.full((len(p.seeds),), k, device=seeds.device) for k, p in enumerate(parts)])
        centres, counts = _climb(index, seeds, bandwidths, problem, max_iter)
        offset = 0
        for i, part in zip(dense, parts):
            climbed[i] = centres[offset:offset + len(part.seeds)], counts[offset:offset + len(part.seeds)]
            offset += len(part.seeds)
    results = []
    for i, p in enumerate(prepared):
        if p is None:  # no points
            points = problems[i][0]
            empty = torch.zeros(0, dtype=torch.int64, device=points.device)
            results.append(MeanShiftResult(empty, points.new_zeros(0, points.shape[1], dtype=torch.float64), empty))
            continue
        index = None if climbed[i] else _index(p)
        centres, counts = climbed[i] or _climb_alone(index, p.seeds, p.bandwidth, max_iter)
        if not bool((counts > 0).any()):  # every bin seed isolated: the points are the seeds
            centres, counts = _climb_alone(index or _index(p), p.x, p.bandwidth, max_iter)
        results.append(_finish(p, centres, counts))
    return results


@dataclass
class _Problem:
    """One mean-shift problem after step 1: points ``x`` [N, E] float64 less their mean ``origin``, the bin
    ``seeds`` [S, E] (less ``origin`` too), each point's grid cell, and whether it climbs with ``_DensePoints``."""

    x: Tensor
    origin: Tensor
    seeds: Tensor
    bandwidth: float
    cell_of_point: Tensor
    n_cells: int
    dense: bool


def _prepare(points: Tensor, bandwidth: float) -> _Problem | None:
    """Step 1 of ``mean_shift`` (None for no points)."""
    if points.dim() != 2:
        raise ValueError(f"points must be [N, E], got shape {tuple(points.shape)}")
    if not bandwidth > 0 or bandwidth == float("inf"):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth}")
    device = points.device
    x = points.detach().to(torch.float64)
    n = len(x)
    if n == 0:
        return None
    cells = (x / bandwidth).round_()
    cell_of_point, first_seen = _unique_rows(cells, integral=True)
    n_cells = len(first_seen)
    if n_cells == n:
        seeds = x
    else:
        bw32 = torch.tensor(bandwidth, dtype=torch.float32, device=device)
        seeds = (cells[torch.sort(first_seen).values].float() * bw32).double()
    origin = x.mean(0)  # translation does not change mean shift; small magnitudes keep the expansion accurate
    return _Problem(x - origin, origin, seeds - origin, bandwidth, cell_of_point, n_cells,
                    dense=n * len(seeds) <= _DENSE_PAIRS)


def _index(p: _Problem):
    """The ball-sum index a problem climbs with alone."""
    return _DensePoints([p.x]) if p.dense else _PointIndex(p.x, p.cell_of_point, p.n_cells, p.bandwidth)


def _climb_alone(index, seeds: Tensor, bandwidth: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """``_climb`` of one problem's seeds."""
    return _climb(index, seeds, seeds.new_full((len(seeds),), bandwidth),
                  torch.zeros(len(seeds), dtype=torch.int64, device=seeds.device), max_iter)


def _finish(p: _Problem, centres: Tensor, counts: Tensor) -> MeanShiftResult:
    """Steps 3 and 4 of ``mean_shift`` on the climbed ``centres`` and their ``counts``."""
    device, bandwidth, x, origin = p.x.device, p.bandwidth, p.x, p.origin
    n = len(x)
    centres, counts = centres[counts > 0], counts[counts > 0]

    # sklearn keeps centres in a dict keyed by their coordinates: equal centres merge, the later seed's count wins.
    centres = centres + origin
    which, first = _unique_rows(centres)
    centres = centres[first]
    last = torch.full((len(centres),), -1, dtype=torch.int64, device=device).scatter_reduce_(
        0, which, torch.arange(len(which), device=device), "amax")
    counts = counts[last]
    order = torch.arange(len(centres), device=device)
    for key in [*centres.t().flip(0), counts]:  # lexicographic (count, c_0, ..., c_E-1), descending
        order = order[torch.sort(key[order], descending=True, stable=True).indices]
    centres, counts = centres[order], counts[order]

    near = (_sq_distances(centres, centres) <= bandwidth * bandwidth).cpu().numpy()
    keep = np.ones(len(centres), dtype=bool)
    for i in range(len(centres)):
        if keep[i]:
            keep[near[i]] = False
            keep[i] = True
    keep = torch.from_numpy(keep).to(device)
    centres, counts = centres[keep], counts[keep]

    labels = torch.empty(n, dtype=torch.int64, device=device)
    step = max(1, _CHUNK_ELEMENTS // len(centres))
    shifted = centres - origin
    for s in range(0, n, step):
        labels[s:s + step] = _sq_distances(x[s:s + step], shifted).argmin(1)
    return MeanShiftResult(labels, centres, counts)


class _DensePoints:
    """Ball sums over all points at once, for small problems (seeds x points <= ``_DENSE_PAIRS``), where building a
    ``_PointIndex`` costs more than it prunes; for one problem or several (``mean_shifts``), each mean summing the
    points of its own problem. Same within-ball test as ``_PointIndex.ball_sums``."""

    def __init__(self, parts: list[Tensor]):
        self.points = [torch.cat([x, x.new_ones(len(x), 1)], 1) for x in parts]  # [N, E + 1]: the ones count
        self.sq_norms = [_sq_norms(x) for x in parts]

    def ball_sums(self, means: Tensor, bandwidth: Tensor, problem: Tensor) -> Tensor:
        """[U, E] means with their [U] bandwidths and problems -> [U, E + 1]: sum of the points of its problem
        within the bandwidth of each mean, and their count. The means of a problem go through one matrix product
        with its points, as if it were alone."""
        if len(self.points) == 1:
            return self._sums(0, means, bandwidth)
        order = torch.argsort(problem, stable=True)
        means, bandwidth = means.index_select(0, order), bandwidth.index_select(0, order)
        sums, start = [], 0
        for k, size in enumerate(torch.bincount(problem, minlength=len(self.points)).tolist()):
            if size:
                sums.append(self._sums(k, means[start:start + size], bandwidth[start:start + size]))
                start += size
        return sums[0].new_empty(len(order), sums[0].shape[1]).index_copy_(0, order, torch.cat(sums))

    def _sums(self, k: int, means: Tensor, bandwidth: Tensor) -> Tensor:
        threshold = (bandwidth * bandwidth - (means * means).sum(1))[:, None]
        t = torch.addmm(self.sq_norms[k][None], means, self.points[k][:, :-1].t(), alpha=-2.0)
        return torch.le(t, threshold, out=t) @ self.points[k]


class _PointIndex:
    """Points sorted into groups (connected grid cells) with a bounding sphere each, for pruned ball sums."""

    MAX_CELLS_TO_GROUP = 4096

    def __init__(self, x: Tensor, cell_of_point: Tensor, n_cells: int, bandwidth: float):
        # index_select, not x[index]: advanced indexing of rows was 5-25x slower on the CPU
        n, dim = x.shape
        sq_norms = _sq_norms(x)
        counts = torch.bincount(cell_of_point, minlength=n_cells).to(x.dtype)
        sums = torch.cat([x.new_zeros(n_cells, dim).index_add_(0, cell_of_point, x), counts[:, None]], 1)
        if n_cells <= self.MAX_CELLS_TO_GROUP:
            # Cells as spheres of their root-mean-square radius (from the sums of squared norms: no pass over the
            # points' distances); the groups only prune, so any partition is correct.
            centres = sums[:, :-1] / counts[:, None]
            mean_sq = x.new_zeros(n_cells).index_add_(0, cell_of_point, sq_norms) / counts
            group_of_cell = _connected_spheres(centres, (mean_sq - _sq_norms(centres)).clamp_(min=0).sqrt_(), bandwidth)
        else:
            group_of_cell = torch.zeros(n_cells, dtype=torch.int64, device=x.device)
        n_groups = int(group_of_cell.max()) + 1
        self.sums = x.new_zeros(n_groups, dim + 1).index_add_(0, group_of_cell, sums)  # [G, E + 1]
        self.centres = self.sums[:, :-1] / self.sums[:, -1:]
        group = group_of_cell.index_select(0, cell_of_point)
        # The exact radius (farthest point from the group's centre), not a bound from the cells' spheres: after the
        # first climbing step most means lie close enough to a group's centre for its ball to hold it whole.
        self.radii = x.new_zeros(n_groups).scatter_reduce_(
            0, group, _norms(x - self.centres.index_select(0, group)), "amax")
        order = torch.argsort(group.to(torch.int16), stable=True)  # n_groups <= MAX_CELLS_TO_GROUP: int16 sorts faster
        self.points = x.new_empty(n, dim + 1)  # [N, E + 1]: the points by group, and ones that count them
        torch.index_select(x, 0, order, out=self.points[:, :-1])
        self.points[:, -1] = 1
        self.sq_norms = sq_norms.index_select(0, order)
        ends = torch.cumsum(torch.bincount(group, minlength=n_groups), 0).tolist()
        self.bounds = list(zip([0, *ends[:-1]], ends))
        self.dim = dim

    def ball_sums(self, means: Tensor, bandwidth: Tensor, problem: Tensor) -> Tensor:
        """[U, E] means with their [U] bandwidths -> [U, E + 1]: sum of the points within the bandwidth of each
        mean, and their count (one problem: ``problem`` is not read)."""
        r2 = bandwidth * bandwidth
        bandwidth = bandwidth[:, None]
        out = means.new_zeros(len(means), self.dim + 1)
        gap = torch.cdist(means, self.centres)  # [U, G]
        slack = 1e-9 * (1.0 + self.radii + bandwidth)  # keeps the pruning conservative under rounding
        touches = gap <= bandwidth + self.radii + slack
        inside = gap + self.radii <= bandwidth - slack
        out += inside.to(means.dtype) @ self.sums
        partial = (touches & ~inside).t().contiguous()
        for g in torch.nonzero(partial.any(1)).flatten().tolist():
            rows = torch.nonzero(partial[g]).flatten()
            m = means[rows]
            threshold = (r2[rows] - (m * m).sum(1))[:, None]
            a, b = self.bounds[g]
            acc = means.new_zeros(len(rows), self.dim + 1)
            step = max(1, _CHUNK_ELEMENTS // len(rows))
            for s in range(a, b, step):
                pts = self.points[s:min(b, s + step)]
                t = torch.addmm(self.sq_norms[s:min(b, s + step)][None], m, pts[:, :-1].t(), alpha=-2.0)
                acc.addmm_(torch.le(t, threshold, out=t), pts)  # t becomes the 0/1 within-ball weights
            out.index_add_(0, rows, acc)
        return out


def _sq_norms(rows: Tensor) -> Tensor:
    """[P, E] -> [P] squared Euclidean norms of the rows (einsum: 5x faster than ``square().sum(1)`` on the CPU,
    a reduction along the short axis)."""
    return torch.einsum("ij,ij->i", rows, rows)


def _norms(rows: Tensor) -> Tensor:
    """[P, E] -> [P] Euclidean norms of the rows."""
    return torch.linalg.vector_norm(rows, dim=1)


def _connected_spheres(centres: Tensor, radii: Tensor, bandwidth: float) -> Tensor:
    """[C] component 0..G-1 of each sphere, linking spheres that come within ``bandwidth`` of each other."""
    n = len(centres)
    reach = bandwidth + radii
    # ||c_i - c_j||^2 <= (reach_i + r_j)^2 expanded, as one product of [c, reach] and [c, r]: -2 (c_i.c_j + reach_i
    # r_j) + ||c_j||^2 - r_j^2 <= reach_i^2 - ||c_i||^2. Any partition is correct (groups only prune), so its
    # rounding does no harm; each sphere is linked to itself whatever the rounding.
    sq = _sq_norms(centres)
    linked = torch.addmm((sq - radii.square())[None], torch.cat([centres, reach[:, None]], 1),
                         torch.cat([centres, radii[:, None]], 1).t(), alpha=-2.0) <= (reach.square() - sq)[:, None]
    linked.fill_diagonal_(True)
    label = torch.arange(n, dtype=torch.int32, device=centres.device)
    while True:
        new = torch.where(linked, label[None, :], n).amin(1)
        new = new[new.long()]
        if torch.equal(new, label):
            return torch.unique(label, return_inverse=True)[1]
        label = new.to(torch.int32)


def _climb(index, seeds: Tensor, bandwidth: Tensor, problem: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Step 2 of ``mean_shift``: [S, E] seeds with their [S] bandwidths and problems (``mean_shifts``) -> final means
    [S, E] and points within at the last step [S]."""
    means = seeds.clone()
    counts = torch.zeros(len(seeds), dtype=torch.int64, device=seeds.device)
    active = torch.ones(len(seeds), dtype=torch.bool, device=seeds.device)
    stop = 1e-3 * bandwidth
    iteration = 0
    while True:
        rows = torch.nonzero(active).flatten()
        if rows.numel() == 0:
            return means, counts
        if iteration == 0:  # seeds are distinct grid cells (or the points, each in a cell of its own)
            shared, first = torch.arange(len(rows), device=rows.device), rows
        else:  # seeds at one mean share its computation; the problem is part of the key
            shared, first = _unique_rows(torch.cat([means[rows], problem[rows, None].to(means.dtype)], 1))
            first = rows[first]
        distinct = means[first]
        sums = index.ball_sums(distinct, bandwidth[first], problem[first])
        within = sums[:, -1]
        empty = within == 0
        new = torch.where(empty[:, None], distinct, sums[:, :-1] / within.clamp(min=1)[:, None])
        done = empty | (torch.linalg.vector_norm(new - distinct, dim=1) <= stop[first]) | (iteration == max_iter)
        means[rows] = new[shared]
        counts[rows] = within[shared].long()
        active[rows] = ~done[shared]
        iteration += 1


def _unique_rows(rows: Tensor, integral: bool = False) -> tuple[Tensor, Tensor]:
    """Exactly equal rows of [R, E]: (index 0..U-1 of each row's distinct value [R], its first row [U]).

    ``integral``: the values are whole numbers (grid cells), keyed by ``_integral_key``. Float rows are first
    grouped by a wrapping integer hash of their bit patterns, which is used only when every row equals its group's
    first row; otherwise each column is replaced by its values' ranks and keyed as whole numbers. Only 1-D sorts:
    torch.unique(dim=0) is much slower.
    """
    if len(rows) == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=rows.device)
        return empty, empty
    if not integral:
        bits = (rows.to(torch.float64) + 0.0).view(torch.int64)  # + 0.0 turns -0.0 into 0.0
        mix = torch.arange(1, 2 * rows.shape[1], 2, dtype=torch.int64, device=rows.device) * _GOLDEN
        inverse, first = _groups((bits * mix).sum(1))
        if torch.equal(rows.index_select(0, first.index_select(0, inverse)), rows):
            return inverse, first
        rows = _column_ranks(rows)
    return _groups(_integral_key(rows))


_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # 2^64 / golden ratio, as a signed int64 multiplier


def _integral_key(rows: Tensor) -> Tensor:
    """[R, E] whole numbers -> [R] int64, equal exactly where the rows are equal.

    Blocks of columns are read as the digits of a number in base ``span`` (max - min + 1 over all of ``rows``) by
    a float64 matrix-vector product, exact while below 2^53; block keys are combined in int64, each re-ranked
    first when the product would overflow. (Per-column minima and folding column by column cost 5x more on the
    CPU: reductions and passes over [R, E] along its short axis.)
    """
    low, high = torch.aminmax(rows)
    span = int(high - low) + 1
    if span > 1 << 52:  # not moderate whole numbers: their ranks are
        rows = _column_ranks(rows)
        low, span = rows.new_zeros(()), len(rows)
    shifted = rows - low
    per_block = rows.shape[1]
    while span ** per_block > 1 << 53:
        per_block -= 1
    key, key_span = None, 1
    for start in range(0, rows.shape[1], per_block):
        block = shifted[:, start:start + per_block]
        digits = torch.tensor([float(span ** k) for k in range(block.shape[1])], dtype=rows.dtype, device=rows.device)
        part, part_span = (block @ digits).long(), span ** block.shape[1]
        if key is None:
            key, key_span = part, part_span
            continue
        if key_span * part_span >= 1 << 62:
            key = _groups(key)[0]
            key_span = int(key.max()) + 1
            if key_span * part_span >= 1 << 62:
                part = _groups(part)[0]
                part_span = int(part.max()) + 1
        key, key_span = key * part_span + part, key_span * part_span
    return key


def _column_ranks(rows: Tensor) -> Tensor:
    """[R, E] -> [R, E] float64: each value's rank among the distinct values of its column (whole numbers < R)."""
    return torch.stack([_groups(column.contiguous())[0] for column in rows.t()], 1).double()


def _groups(key: Tensor) -> tuple[Tensor, Tensor]:
    """[R] keys -> (group 0..U-1 of each key, numbered in increasing key order [R], the first row of each [U])."""
    sorted_key, order = torch.sort(key, stable=True)
    starts = torch.ones(len(key), dtype=torch.bool, device=key.device)
    starts[1:] = sorted_key[1:] != sorted_key[:-1]
    inverse = torch.empty_like(order).scatter_(0, order, torch.cumsum(starts, 0) - 1)
    return inverse, order[starts]


def _sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """[P, E], [Q, E] -> [P, Q] squared Euclidean distances (expanded form, clamped at 0)."""
    return torch.addmm(_sq_norms(b)[None], a, b.t(), alpha=-2.0).add_(_sq_norms(a)[:, None]).clamp_(min=0)


@dataclass
class InstanceMap:
    """Class-wise clustering result. Shapes: ids [H, W] int64, -1 where no instance, else 0..K-1;
    classes [K] int64, the class of each instance."""

    ids: Tensor
    classes: Tensor


def cluster_instances(embedding: Tensor, semantic: Tensor, bandwidths: dict[int, float], min_pixels: int = 1,
                      *, max_iter: int = 300) -> InstanceMap:
    """Instances of each thing class by mean shift over its pixels' embeddings (paper Sec. III-D).

    For each class in ``bandwidths`` (the thing classes, each with its own bandwidth) present in ``semantic``, in
    increasing class id, the class's pixels are clustered by ``mean_shift`` (all classes in one ``mean_shifts``);
    clusters with fewer than ``min_pixels`` pixels are dropped. Instances are numbered globally by class, then by
    cluster label (densest first).

    Args:
        embedding: [E, H, W] instance embeddings.
        semantic: [H, W] integer class per pixel.
    Returns:
        ``InstanceMap`` on the device of ``embedding``.
    """
    if embedding.dim() != 3 or semantic.shape != embedding.shape[1:]:
        raise ValueError(f"embedding must be [E, H, W] and semantic [H, W] of the same H, W; "
                         f"got {tuple(embedding.shape)} and {tuple(semantic.shape)}")
    device = embedding.device
    semantic = semantic.to(device)
    ids = torch.full(semantic.shape, -1, dtype=torch.int64, device=device)
    classes: list[Tensor] = []
    n_instances = 0
    counts = torch.bincount(semantic[semantic >= 0]).tolist()  # pixels per class: which classes are present
    class_ids = sorted(c for c in bandwidths if 0 <= c < len(counts) and counts[c])
    masks = [semantic == class_id for class_id in class_ids]
    results = mean_shifts([(embedding[:, mask].t(), bandwidths[class_id]) for class_id, mask in zip(class_ids, masks)],
                          max_iter=max_iter)
    for class_id, mask, result in zip(class_ids, masks, results):
        labels = result.labels
        keep = torch.bincount(labels) >= min_pixels
        renumber = torch.where(keep, torch.cumsum(keep, 0) - 1 + n_instances, -1)
        ids[mask] = renumber[labels]
        kept = int(keep.sum())
        classes.append(torch.full((kept,), class_id, dtype=torch.int64, device=device))
        n_instances += kept
    all_classes = torch.cat(classes) if classes else torch.zeros(0, dtype=torch.int64, device=device)
    return InstanceMap(ids, all_classes)


def coarse_cell_index(size: int, coarse: int, device=None) -> Tensor:
    """[size] index of the coarse cell holding each fine pixel centre: ``floor((i + 0.5) * coarse / size)``, the
    nearest-exact rule, computed exactly in integers as ``((2 i + 1) * coarse) // (2 * size)``.
    ``F.interpolate(mode="nearest-exact")`` rounds the same expression through float32 and differs where it is
    an integer or within rounding of one (e.g. pixel 11 of 23 from 14 cells: exactly 7); a float64 version
    differed from the exact index for 179 of 10,019 (size, coarse) pairs tried."""
    return (2 * torch.arange(size, device=device) + 1) * coarse // (2 * size)


def assign_thing_pixels(semantic: Tensor, coarse_ids: Tensor, instance_classes: Tensor, thing_ids, *,
                        max_distance: int = 2, min_new_area: int = 1) -> tuple[Tensor, Tensor]:
    """The instance of every thing pixel of a full-resolution semantic map, with no void rims.

    PanoNet's two branches "can be merged into panoptic segmentation directly" (Sec. III, Fig. 2), but the
    semantic map is upsampled bilinearly from 1/4 while instances come from the 1/4 clustering, so along object
    borders a pixel's full-resolution class can disagree with the instance of its coarse cell (about 4% of thing
    pixels on street frames). Such pixels are not voided:

    1. A pixel of thing class c takes the class-c instance of its own coarse cell (nearest-exact); otherwise the
       class-c instance that reaches its cell first when every class-c instance grows by one cell (3 x 3) at a
       time, up to ``max_distance`` cells (ties: the higher index).
    2. Pixels of a thing class still without an instance form new instances of that class, one per connected
       component (8-connectivity) of at least ``min_new_area`` pixels, numbered after the given ones; smaller
       components stay without an instance (void in the panoptic map).

    Args:
        semantic: [H, W] integer class ids at full resolution.
        coarse_ids: [h, w] int64 instance index per coarse cell, -1 for none.
        instance_classes: [K] int64 class of each instance.
        thing_ids: the thing class ids.
    Returns:
        ids [H, W] int64 (-1 where none) and classes [K'] int64, K' >= K (the new instances appended).
    """
    if semantic.dim() != 2 or coarse_ids.dim() != 2:
        raise ValueError(f"semantic and coarse_ids must be [H, W] and [h, w]; got {tuple(semantic.shape)} and "
                         f"{tuple(coarse_ids.shape)}")
    device = semantic.device
    semantic = semantic.to(torch.int64)
    coarse_ids = coarse_ids.to(device=device, dtype=torch.int64)
    classes = torch.as_tensor(instance_classes, dtype=torch.int64).to(device)
    things = torch.as_tensor(list(thing_ids), dtype=torch.int64, device=device)
    (height, width), (h, w) = semantic.shape, coarse_ids.shape
    if len(things) == 0:
        return torch.full(semantic.shape, -1, dtype=torch.int64, device=device), classes
    # [T, h, w]: 1 + index of the class-t instance reaching each cell, 0 where none.
    class_of_cell = torch.cat([classes, classes.new_full((1,), -1)])[coarse_ids]  # -1 ids index the sentinel
    reach = torch.where(class_of_cell[None] == things[:, None, None], coarse_ids[None] + 1, 0)
    for _ in range(max_distance):
        reach = torch.where(reach > 0, reach, _max3x3(reach))
    slot_of_class = torch.full((int(max(int(semantic.max()), int(things.max()))) + 2,), -1, dtype=torch.int64,
                               device=device)
    slot_of_class[things] = torch.arange(len(things), device=device)
    slot = slot_of_class[semantic.clamp(min=-1)]  # -1 (not a thing) for stuff, void and negative ids
    rows, cols = coarse_cell_index(height, h, device), coarse_cell_index(width, w, device)
    planes = reach.int().index_select(1, rows).index_select(2, cols)  # [T, H, W], nearest-exact
    ids = torch.where(slot >= 0, planes.gather(0, slot.clamp(min=0)[None])[0].long() - 1, -1)

    leftover = (slot >= 0) & (ids < 0)
    if not bool(leftover.any()):
        return ids, classes
    new_classes = [classes]
    n = len(classes)
    for class_id in torch.unique(semantic[leftover]).tolist():
        mask = (leftover & (semantic == class_id)).cpu().numpy().astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_new_area) + 1
        if len(big) == 0:
            continue
        lookup = np.full(count, -1, np.int64)
        lookup[big] = n + np.arange(len(big))
        new_ids = torch.from_numpy(lookup[components]).to(device)
        ids = torch.where(new_ids >= 0, new_ids, ids)
        new_classes.append(torch.full((len(big),), class_id, dtype=torch.int64, device=device))
        n += len(big)
    return ids, torch.cat(new_classes)


def _max3x3(planes: Tensor) -> Tensor:
    """The maximum over each 3 x 3 neighbourhood of [T, h, w] non-negative planes (outside counts as 0): as
    ``F.max_pool2d(planes, 3, stride=1, padding=1)``, in two separable passes of shifted maxima (5x faster on the
    CPU, and exact for any integer dtype)."""
    rows = planes.clone()
    torch.maximum(rows[:, :, 1:], planes[:, :, :-1], out=rows[:, :, 1:])
    torch.maximum(rows[:, :, :-1], planes[:, :, 1:], out=rows[:, :, :-1])
    grown = rows.clone()
    torch.maximum(grown[:, 1:], rows[:, :-1], out=grown[:, 1:])
    torch.maximum(grown[:, :-1], rows[:, 1:], out=grown[:, :-1])
    return grown


@dataclass
class Segment:
    """One segment of a panoptic result, as msg/Segment.msg: bbox is (x, y, width, height) in pixels."""

    id: int
    class_id: int
    class_name: str
    is_thing: bool
    score: float
    area: int
    bbox: tuple[int, int, int, int]


@dataclass
class PanopticResult:
    """panoptic [H, W] int32 segment ids (VOID_ID where none), its segments sorted by id, and segment_map [H, W]
    int16 holding index + 1 into ``segments`` (0 where void; read it as uint16, msg/PanopticSegmentation.msg)."""

    panoptic: Tensor
    segments: list[Segment]
    segment_map: Tensor


def ids_from_segment_map(segment_map: np.ndarray, segment_ids: Sequence[int]) -> np.ndarray:
    """Panoptic ids [H, W] int32 (``VOID_ID`` where 0) of a segment map: pixel v > 0 is ``segment_ids[v - 1]``
    (msg/PanopticSegmentation.msg). Raises ``ValueError`` for an index past the segments."""
    lut = np.array([VOID_ID, *segment_ids], np.int32)
    index = np.asarray(segment_map).astype(np.uint16, copy=False)
    if index.size and int(index.max()) >= len(lut):
        raise ValueError(f"segment map holds index {int(index.max())}, but there are only {len(lut) - 1} segments")
    return lut[index]


def segment_map_from_ids(panoptic: np.ndarray, segment_ids: Sequence[int]) -> np.ndarray:
    """The segment map [H, W] uint16 of panoptic ids: index + 1 into ``segment_ids`` (sorted, as segments are),
    0 for ``VOID_ID``. Raises ``ValueError`` for an id that is not among the segments."""
    ids = np.asarray(segment_ids, np.int64)
    if len(ids) > np.iinfo(np.uint16).max or np.any(np.diff(ids) <= 0):
        raise ValueError(f"segment ids must be increasing and at most 65535 of them; got {len(ids)}")
    panoptic = np.asarray(panoptic)
    position = np.searchsorted(ids, panoptic)
    found = (position < len(ids)) & (ids[np.minimum(position, max(len(ids) - 1, 0))] == panoptic) if len(ids) else \
        np.zeros(panoptic.shape, bool)
    void = panoptic == VOID_ID
    if not np.all(found | void):
        raise ValueError(f"panoptic ids {sorted(set(np.unique(panoptic[~(found | void)]).tolist()))[:5]} have no segment")
    return np.where(found, position + 1, 0).astype(np.uint16)


def merge_panoptic(semantic: Tensor, instances: Tensor, instance_classes, table: ClassTable, *,
                   stuff_min_area: int = 0, instance_scores=None, ignore_id: int | None = None,
                   segment_map_out: Tensor | None = None) -> PanopticResult:
    """Panoptic id map and segments from a semantic map and an instance map (detectron2's
    ``combine_semantic_and_instance_outputs`` with PanoNet's non-overlapping instances).

    Ids follow msg/PanopticSegmentation.msg: instance i of class c is ``c * INSTANCE_OFFSET + k``, k = 0, 1, ...
    numbering the instances of class c that have pixels in increasing instance index; a stuff class c is ``c``;
    everything else is ``VOID_ID``: pixels of a thing class not in an instance, pixels labelled ``ignore_id`` (the
    table's by default) or any id outside the table, and stuff regions smaller than ``stuff_min_area`` pixels.
    Instance pixels take their instance's class whatever ``semantic`` says there. A class with more than
    ``INSTANCE_OFFSET`` instances (ids have room for no more) keeps its best by score, then area; the pixels of the
    others become void.

    Args:
        semantic: [H, W] integer class ids.
        instances: [H, W] integer instance index per pixel, -1 for none.
        instance_classes: [K] class id of each instance (sequence or tensor); must be thing classes.
        table: class table of the model; its thing class ids must be >= 1 (so thing ids never equal stuff ids).
        instance_scores: optional [K] confidence of each instance; segments without one get 1.0.
        segment_map_out: optional int16 [H, W] tensor on ``semantic``'s device that the segment map is written
            into (and returned as).
    Returns:
        ``PanopticResult`` with ``panoptic`` on the device of ``semantic``.
    """
    if semantic.dim() != 2 or instances.shape != semantic.shape:
        raise ValueError(f"semantic and instances must both be [H, W]; got {tuple(semantic.shape)} and "
                         f"{tuple(instances.shape)}")
    _check_table(table)
    classes = torch.as_tensor(instance_classes, dtype=torch.int64).flatten()
    instances = instances.to(device=semantic.device, dtype=torch.int64)
    if instances.numel() and (int(instances.min()) < -1 or int(instances.max()) >= len(classes)):
        raise ValueError(f"instances must hold -1 or an index < len(instance_classes) = {len(classes)}; got values "
                         f"in [{int(instances.min())}, {int(instances.max())}]")
    code = panoptic_codes(semantic, instances, len(table), len(classes),
                          table.ignore_id if ignore_id is None else ignore_id)
    return merge_codes(code, classes, table, stuff_min_area=stuff_min_area, instance_scores=instance_scores,
                       segment_map_out=segment_map_out)


def panoptic_codes(semantic: Tensor, instances: Tensor, classes: int, instance_count: int, ignore_id: int) -> Tensor:
    """The compact code of every pixel, as ``merge_codes`` reads it: instance i (``0 <= i < instance_count``) ->
    ``classes + i``; else the pixel's class c (``0 <= c < classes``, not ``ignore_id``) -> c; anything else ->
    ``classes + instance_count``, the void code. int64, the shape of ``semantic``."""
    semantic = semantic.to(torch.int64)
    known = (semantic >= 0) & (semantic < classes) & (semantic != ignore_id)
    code = torch.where(known, semantic, classes + instance_count)
    return torch.where(instances >= 0, instances + classes, code)


def merge_codes(code: Tensor, instance_classes, table: ClassTable, *, stuff_min_area: int = 0, instance_scores=None,
                segment_map_out: Tensor | None = None) -> PanopticResult:
    """``merge_panoptic`` on a map of compact codes (``panoptic_codes``, non-negative): code c < C (the table's
    classes) is a pixel of class c in no instance, a stuff segment of class c if the class has at least
    ``stuff_min_area`` such pixels, else void (a thing class, the table's ignore class, or too small); code C + i
    is instance i; C + K and above are void. Areas, boxes and both maps come from the codes alone: bincounts and
    lookups, so a code map made at a coarser resolution and upsampled once (``predictor.upsample_labels``) is
    merged at the output's resolution without ever forming class and instance maps there. Arguments and result
    as ``merge_panoptic``."""
    _check_table(table)
    device = code.device
    classes = torch.as_tensor(instance_classes, dtype=torch.int64).flatten().to(device)
    n_inst = len(classes)
    is_thing = torch.tensor([c.is_thing for c in table.classes], dtype=torch.bool, device=device)
    if n_inst and (bool((classes < 0).any()) or bool((classes >= len(table)).any()) or
                   not bool(is_thing[classes].all())):
        raise ValueError(f"instance_classes must be thing class ids {table.thing_ids}, got {classes.tolist()}")
    scores = (torch.ones(n_inst, dtype=torch.float64) if instance_scores is None
              else torch.as_tensor(instance_scores, dtype=torch.float64).flatten().cpu())
    if len(scores) != n_inst:
        raise ValueError(f"got {len(scores)} instance_scores for {n_inst} instances")
    n_cls = len(table)
    void_code = n_cls + n_inst
    n_codes = void_code + 1
    if n_codes * max(code.shape, default=0) > _KEY_LIMIT:  # never near it: 2^31 / 2048 columns is 1M codes
        raise ValueError(f"{n_codes} codes in rows or columns of {max(code.shape)} pixels: the segment boxes' keys "
                         f"(code + codes x row) must stay below {_KEY_LIMIT}")
    code = code.clamp(max=void_code).to(torch.int32)  # int32: half the bytes of int64, and bincount reads it faster
    rows_holding = _rows_holding(code, n_codes)
    area = rows_holding.sum(0)

    lut = torch.full((n_codes,), VOID_ID, dtype=torch.int64, device=device)
    stuff_ids = torch.arange(n_cls, device=device)
    stuff = ~is_thing & (stuff_ids != table.ignore_id) & (area[:n_cls] >= max(stuff_min_area, 1))
    lut[:n_cls] = torch.where(stuff, stuff_ids, VOID_ID)
    score_of: dict[int, float] = {}
    if n_inst:
        present = area[n_cls:void_code] > 0
        # Ids have room for INSTANCE_OFFSET instances per class: beyond that (an untrained or broken model), the
        # class keeps its best ones by score, then area, and the others' pixels become void.
        best = _rank_in_class(classes, present, [-scores.to(device), -area[n_cls:void_code].double()])
        dropped = present & (best >= INSTANCE_OFFSET)
        if bool(dropped.any()):
            drop_code = torch.zeros(n_codes, dtype=torch.bool, device=device)
            drop_code[n_cls:void_code] = dropped
            code = torch.where(drop_code[code], void_code, code)
            rows_holding = _rows_holding(code, n_codes)
            area = rows_holding.sum(0)
            present = present & ~dropped
        k = _rank_in_class(classes, present, [])  # how many present instances of its class come before it
        inst_id = classes * INSTANCE_OFFSET + k
        lut[n_cls:void_code] = inst_id
        score_of = {int(i): float(s) for i, s in zip(inst_id[present].tolist(), scores[present.cpu()].tolist())}
    flat = code.view(-1)  # index_select: 4x faster than indexing with the map on the CPU
    panoptic = torch.index_select(lut.to(torch.int32), 0, flat).view(code.shape)
    segments, codes = _segments(code, rows_holding > 0, area, lut, table, score_of)
    if len(segments) > MAX_SEGMENTS:
        raise ValueError(f"{len(segments)} segments: at most {MAX_SEGMENTS} fit a 16-bit segment map")
    index_of_code = torch.zeros(n_codes, dtype=torch.int16, device=device)  # written once, in its final dtype
    index_of_code[codes.to(device)] = torch.arange(1, len(codes) + 1, dtype=torch.int16, device=device)
    if segment_map_out is None:
        return PanopticResult(panoptic, segments, torch.index_select(index_of_code, 0, flat).view(code.shape))
    if segment_map_out.shape != code.shape or segment_map_out.dtype != torch.int16:
        raise ValueError(f"segment_map_out must be int16 {tuple(code.shape)}, got {segment_map_out.dtype} "
                         f"{tuple(segment_map_out.shape)}")
    torch.index_select(index_of_code, 0, flat, out=segment_map_out.view(-1))
    return PanopticResult(panoptic, segments, segment_map_out)


def _check_table(table: ClassTable) -> None:
    """A table whose ids fit the panoptic id scheme: thing ids >= 1, fewer classes than ``INSTANCE_OFFSET``."""
    if 0 in table.thing_ids:
        raise ValueError(f"class table {table.name!r}: class 0 ({table[0].name!r}) is a thing, but thing ids "
                         f"class_id * {INSTANCE_OFFSET} + k would then collide with stuff ids; thing classes "
                         f"need ids >= 1")
    if len(table) > INSTANCE_OFFSET:
        raise ValueError(f"class table {table.name!r} has {len(table)} classes; stuff ids must stay below "
                         f"INSTANCE_OFFSET = {INSTANCE_OFFSET}")


def _rank_in_class(classes: Tensor, present: Tensor, keys: list[Tensor]) -> Tensor:
    """[K] position of each present instance among the present instances of its class, ordered by ``keys`` (each
    [K], ascending, the first most significant), then by index; absent instances rank after every present one."""
    n = len(classes)
    order = torch.arange(n, device=classes.device)
    group = torch.where(present, classes, int(classes.max()) + 1)  # absent instances: a group of their own
    for key in [*reversed(keys), group]:  # least significant first, each sort stable
        order = order[torch.sort(key[order], stable=True).indices]
    sorted_group = group[order]
    position = torch.arange(n, device=classes.device)
    first = torch.full((int(group.max()) + 1,), n, dtype=torch.int64, device=classes.device).scatter_reduce_(
        0, sorted_group, position, "amin")
    rank = torch.empty_like(position).scatter_(0, order, position - first[sorted_group])
    return torch.where(present, rank, n)


def _rows_holding(code: Tensor, n_codes: int) -> Tensor:
    """[H, n_codes] int64: how many pixels of each code each row of ``code`` [H, W] holds (one bincount; their sum
    over rows is the codes' areas)."""
    h = code.shape[0]
    rows = n_codes * torch.arange(h, device=code.device, dtype=code.dtype)[:, None]
    return torch.bincount((code + rows).flatten(), minlength=h * n_codes).view(h, n_codes)


def _segments(code: Tensor, in_rows: Tensor, area: Tensor, lut: Tensor, table: ClassTable,
              score_of: dict[int, float]) -> tuple[list[Segment], Tensor]:
    """Area and tight box of every code of ``code`` [H, W] whose id ``lut[code]`` is not void, sorted by id (the
    boxes from the rows holding each code, ``in_rows`` [H, n_codes] bool, and the columns: a bincount), and those
    codes in the same order."""
    h, w = code.shape
    n_codes = len(lut)
    shown = (area > 0) & (lut != VOID_ID)
    if not bool(shown.any()):
        return [], torch.zeros(0, dtype=torch.int64)
    device = code.device
    columns = n_codes * torch.arange(w, device=device, dtype=code.dtype)[None, :]
    in_cols = torch.bincount((code + columns).flatten(), minlength=w * n_codes).view(w, n_codes) > 0
    y0, x0 = in_rows.int().argmax(0), in_cols.int().argmax(0)  # first row / column holding each code
    y1 = h - 1 - in_rows.flip(0).int().argmax(0)
    x1 = w - 1 - in_cols.flip(0).int().argmax(0)
    codes = torch.nonzero(shown).flatten()
    rows = torch.stack([lut[codes], area[codes], x0[codes], y0[codes], (x1 - x0 + 1)[codes], (y1 - y0 + 1)[codes]],
                       1).cpu().tolist()
    order = sorted(range(len(rows)), key=rows.__getitem__)
    segments = []
    for seg_id, a, x, y, bw, bh in (rows[i] for i in order):
        class_id = seg_id // INSTANCE_OFFSET if seg_id >= INSTANCE_OFFSET else seg_id
        info = table[class_id]
        segments.append(Segment(seg_id, class_id, info.name, info.is_thing, score_of.get(seg_id, 1.0), a,
                                (x, y, bw, bh)))
    return segments, codes.cpu()[order]
