"""Mean-shift clustering against sklearn, class-wise instances, and the panoptic merge on toy maps."""

import inspect
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift
from sklearn.metrics import adjusted_rand_score

from panoptic_ros import postprocess
from panoptic_ros.classes import CAMVID, ClassInfo, ClassTable
from panoptic_ros.postprocess import (
    INSTANCE_OFFSET,
    VOID_ID,
    cluster_embeddings,
    assign_thing_pixels,
    cluster_instances,
    coarse_cell_index,
    mean_shift,
    merge_panoptic,
)


def blobs(sizes, std=0.06, separation=2.0, dim=12, seed=0):
    """Embeddings as a trained discriminative loss leaves them: blobs of radius ~delta_v, centres >= 2 delta_d
    apart."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < len(sizes):
        c = rng.uniform(-2.5, 2.5, dim)
        if all(np.linalg.norm(c - d) >= separation for d in centres):
            centres.append(c)
    points = np.concatenate([c + rng.normal(0, std, (n, dim)) for c, n in zip(centres, sizes)])
    return points[rng.permutation(len(points))]


@pytest.fixture(params=["dense", "indexed"])
def ball_sums_path(request, monkeypatch):
    """Runs a test through each way of summing points within a ball: every point (small problems) and the
    pruned group index (large ones)."""
    monkeypatch.setattr(postprocess, "_DENSE_PAIRS", 1 << 40 if request.param == "dense" else 0)
    return request.param


def sklearn_labels(points, bandwidth):
    return MeanShift(bandwidth=bandwidth, bin_seeding=True, min_bin_freq=1, cluster_all=True).fit(points).labels_


@pytest.mark.parametrize("sizes, bandwidth, seed", [
    ((300, 700), 0.5, 0),
    ((50, 400, 1200, 90), 0.4, 1),
    ((800, 30, 250, 600, 120, 400), 0.5, 2),
    ((200, 900, 60, 310, 75, 1500, 40, 500), 0.6, 3),
    ((500,) * 8, 0.3, 4),
])
def test_same_labels_as_sklearn_on_separated_blobs(sizes, bandwidth, seed, ball_sums_path):
    points = blobs(sizes, seed=seed)
    expected = sklearn_labels(points, bandwidth)
    labels = cluster_embeddings(torch.from_numpy(points), bandwidth)
    assert labels.dtype == torch.int64
    assert adjusted_rand_score(expected, labels.numpy()) == 1.0
    assert len(np.unique(expected)) == len(sizes)
    # Same numbering too: clusters ordered as sklearn orders them (most points within bandwidth first).
    assert np.array_equal(labels.numpy(), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_overlapping_blobs_give_sklearns_partition_too(seed, ball_sums_path):
    # Four blobs whose spread (0.15 per dimension) is comparable to their separation: sklearn finds 20-30
    # modes here. Our labels are identical, including the numbering.
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.35, (4, 12))
    points = np.concatenate([c + rng.normal(0, 0.15, (400, 12)) for c in centres])
    expected = sklearn_labels(points, 0.5)
    labels = cluster_embeddings(torch.from_numpy(points), 0.5).numpy()
    assert len(np.unique(expected)) > 4
    assert np.array_equal(labels, expected)


def test_centres_and_counts_match_sklearn(ball_sums_path):
    points = blobs((300, 500, 200), seed=5)
    ms = MeanShift(bandwidth=0.5, bin_seeding=True).fit(points)
    result = mean_shift(torch.from_numpy(points), 0.5)
    assert torch.allclose(result.centres, torch.from_numpy(ms.cluster_centers_), atol=1e-12, rtol=0)
    assert result.intensities.tolist() == sorted(result.intensities.tolist(), reverse=True)


def test_float32_input_and_degenerate_sizes(ball_sums_path):
    points = blobs((200, 300), seed=6)
    expected = sklearn_labels(points, 0.5)
    assert np.array_equal(cluster_embeddings(torch.from_numpy(points).float(), 0.5).numpy(),
                          sklearn_labels(points.astype(np.float32).astype(np.float64), 0.5))
    assert adjusted_rand_score(expected, cluster_embeddings(torch.from_numpy(points).float(), 0.5).numpy()) == 1.0
    empty = cluster_embeddings(torch.zeros(0, 12), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    assert cluster_embeddings(torch.randn(1, 12), 0.5).tolist() == [0]
    assert cluster_embeddings(torch.full((50, 12), 0.3), 0.5).tolist() == [0] * 50


def test_every_point_its_own_cell_uses_points_as_seeds_like_sklearn(ball_sums_path):
    points = np.eye(12) * 0.4 + 0.2  # 12 points 0.57 apart, bandwidth 0.1: 12 clusters
    with pytest.warns(UserWarning, match="Binning data failed"):
        expected = sklearn_labels(points, 0.1)
    assert np.array_equal(cluster_embeddings(torch.from_numpy(points), 0.1).numpy(), expected)


@pytest.mark.parametrize("max_iter", [1, 2])
def test_max_iter_stops_the_climb_where_sklearn_stops(max_iter, ball_sums_path):
    """60 Gaussian points, bandwidth 1.2: after one or two steps the modes are not yet merged, and the labels and
    centres are sklearn's for the same ``max_iter``, through both ball-sum paths (mutant 5 of ``_climb_alone``
    dropped the limit of the problems that climb alone)."""
    points = np.random.default_rng(0).normal(size=(60, 2))
    ms = MeanShift(bandwidth=1.2, bin_seeding=True, max_iter=max_iter).fit(points)
    result = mean_shift(torch.from_numpy(points), 1.2, max_iter=max_iter)
    assert len(ms.cluster_centers_) > len(MeanShift(bandwidth=1.2, bin_seeding=True).fit(points).cluster_centers_)
    assert np.array_equal(result.labels.numpy(), ms.labels_)
    torch.testing.assert_close(result.centres, torch.from_numpy(ms.cluster_centers_), atol=1e-12, rtol=0)


def test_max_iter_defaults_to_sklearns():
    """Every entry point's ``max_iter`` defaults to sklearn's MeanShift (300): no test data needs that many steps,
    so only the signature tells (mutant 1 of ``cluster_embeddings``, ``mean_shift`` and ``mean_shifts``: 301)."""
    for function in (cluster_embeddings, mean_shift, postprocess.mean_shifts, cluster_instances):
        assert inspect.signature(function).parameters["max_iter"].default == MeanShift().max_iter == 300


def test_deterministic_and_order_of_points_only_permutes_labels():
    points = torch.from_numpy(blobs((400, 300, 500), seed=7))
    first = cluster_embeddings(points, 0.5)
    assert torch.equal(first, cluster_embeddings(points, 0.5))
    perm = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))
    assert adjusted_rand_score(first[perm].numpy(), cluster_embeddings(points[perm], 0.5).numpy()) == 1.0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="bandwidth"):
        cluster_embeddings(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        cluster_embeddings(torch.zeros(3, 2, 1), 0.5)


@pytest.mark.parametrize("radii, expected", [
    ((0.3, 0.3, 0.3, 0.3), [0, 0, 0, 1]),  # 1 apart <= 0.5 + 0.3 + 0.3: a chain 0-1-2 (0 and 2, 2 apart, through 1)
    ((0.2, 0.2, 0.2, 0.2), [0, 1, 2, 3]),  # 1 apart > 0.5 + 0.2 + 0.2: none linked
    ((0.55, 0.0, 0.0, 0.0), [0, 0, 1, 2]),  # 0.5 + 0.55 + 0 reaches 1; 0.5 + 0 + 0 does not
    ((0.0, 0.0, 0.0, 8.3), [0, 1, 2, 2]),  # 0.5 + 8.3 reaches sphere 2 (8 away), not 1 or 0 (9 and 10 away)
])
def test_connected_spheres_link_within_the_bandwidth_and_through_chains(radii, expected):
    """``_PointIndex``'s grouping of cells: spheres on a line at 0, 1, 2 and 10, bandwidth 0.5; linked where the
    gap between the spheres is at most the bandwidth, components through chains, numbered from 0 in order."""
    centres = torch.tensor([[0.0, 0.0], [0.6, 0.8], [1.2, 1.6], [6.0, 8.0]], dtype=torch.float64)
    groups = postprocess._connected_spheres(centres, torch.tensor(radii, dtype=torch.float64), 0.5)
    assert groups.tolist() == expected


def test_spheres_far_from_the_origin_with_a_tiny_bandwidth_each_keep_their_own_group():
    """Each sphere is linked to itself whatever the rounding of the expanded distances. Points about 1e6 from their
    mean with bandwidth 1e-3 (cancellation error ~1e-4, above bandwidth^2): a sphere used to link to none, not
    even itself, and the label propagation indexed past the end (IndexError from ``mean_shift`` on these
    points); 600 points 1.34 apart are 600 groups."""
    k = torch.arange(300, dtype=torch.float64)
    x = torch.cat([-1e6 - 1.1 * k, 1e6 + 1.1 * k])[:, None] * torch.tensor([[1.0, 0.7]], dtype=torch.float64)
    groups = postprocess._connected_spheres(x - x.mean(0), torch.zeros(600, dtype=torch.float64), 1e-3)
    assert torch.equal(groups, torch.arange(600))
    labels = cluster_embeddings(x, 1e-3)
    assert labels.shape == (600,) and int(labels.min()) == 0


def test_point_index_groups_each_blob_whole_with_its_mean_and_exact_radius():
    """``_PointIndex`` on three blobs 2.2 apart along the last axis (bandwidth 0.5): the cells of a blob link into
    one group, blobs stay apart (0.5 + two cell radii < 2.2), and each group keeps its points' sum, count, mean and
    farthest distance from that mean. Mutants of ``_PointIndex.__init__`` that change the cells' spheres (centres
    from other columns or times the counts, radii from a sum or clamped at 1) link the blobs or split them; the
    results would be the same, only slower (groups only prune), so no clustering test saw them."""
    rng = np.random.default_rng(3)
    centres = np.zeros((3, 12))
    centres[:, -1] = [0.0, 2.2, 4.4]
    x = torch.from_numpy(np.concatenate([c + rng.normal(0, 0.06, (300, 12)) for c in centres]))
    p = postprocess._prepare(x, 0.5)
    index = postprocess._PointIndex(p.x, p.cell_of_point, p.n_cells, 0.5)
    assert p.n_cells > 3 and len(index.bounds) == 3
    blobs_of_groups = sorted(range(3), key=lambda g: float(index.centres[g, -1]))
    for blob, g in enumerate(blobs_of_groups):
        points = p.x[300 * blob:300 * (blob + 1)]
        a, b = index.bounds[g]
        assert b - a == 300 and torch.equal(index.points[a:b, -1], torch.ones(300, dtype=torch.float64))
        torch.testing.assert_close(index.sums[g], torch.cat([points.sum(0), torch.tensor([300.0])]).double())
        torch.testing.assert_close(index.centres[g], points.mean(0))
        torch.testing.assert_close(index.radii[g], (points - points.mean(0)).norm(dim=1).max())


def test_point_index_with_more_cells_than_it_groups_keeps_them_in_one_group(monkeypatch):
    """Above ``MAX_CELLS_TO_GROUP`` cells the index skips the grouping (one group of every point) and still gives
    sklearn's labels (the branch no test reached: mutants making its group map None or of no length)."""
    monkeypatch.setattr(postprocess, "_DENSE_PAIRS", 0)
    monkeypatch.setattr(postprocess._PointIndex, "MAX_CELLS_TO_GROUP", 4)
    points = blobs((300, 500, 200), seed=9)
    p = postprocess._prepare(torch.from_numpy(points), 0.5)
    assert p.n_cells > 4 and len(postprocess._PointIndex(p.x, p.cell_of_point, p.n_cells, 0.5).bounds) == 1
    assert np.array_equal(cluster_embeddings(torch.from_numpy(points), 0.5).numpy(), sklearn_labels(points, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result():
    points = torch.from_numpy(blobs((2000, 500, 3000, 800, 100), seed=8))
    cpu = mean_shift(points, 0.5)
    cuda = mean_shift(points.cuda().float(), 0.5)
    assert cuda.labels.device.type == "cuda"
    assert torch.equal(cuda.labels.cpu(), mean_shift(points.float(), 0.5).labels)
    assert torch.equal(cpu.labels, cuda.labels.cpu())
    assert torch.allclose(cpu.centres, cuda.centres.cpu(), atol=1e-6, rtol=0)


def toy_instances():
    """4 x 6 map, E = 2. Columns 0-1: car A (8 px, embedding (0, 0)); column 2: road; column 3: pedestrian
    (4 px, embedding (0, 0), the same as car A); columns 4-5, rows 0-2: car B (6 px, embedding (5, 5));
    row 3 of columns 4-5: road."""
    semantic = torch.tensor([[8, 8, 3, 9, 8, 8]] * 3 + [[8, 8, 3, 9, 3, 3]])
    embedding = torch.zeros(2, 4, 6)
    embedding[:, :3, 4:] = 5.0
    embedding += 0.01 * torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    return embedding, semantic


def test_cluster_instances_per_class():
    embedding, semantic = toy_instances()
    result = cluster_instances(embedding, semantic, {8: 0.5, 9: 0.5, 10: 0.5})
    # Car A (8 px) is the densest car cluster, then car B; the pedestrian is separate although its embeddings
    # equal car A's, because each class is clustered on its own.
    expected = torch.tensor([[0, 0, -1, 2, 1, 1]] * 3 + [[0, 0, -1, 2, -1, -1]])
    assert torch.equal(result.ids, expected)
    assert result.classes.tolist() == [8, 8, 9]
    small_dropped = cluster_instances(embedding, semantic, {8: 0.5, 9: 0.5}, min_pixels=5)  # the 4-px pedestrian
    assert torch.equal(small_dropped.ids, torch.where(expected == 2, -1, expected))
    assert small_dropped.classes.tolist() == [8, 8]
    only_big = cluster_instances(embedding, semantic, {8: 0.5, 9: 0.5}, min_pixels=7)
    assert torch.equal(only_big.ids, torch.where(expected == 0, 0, -1))
    one_car = cluster_instances(embedding, semantic, {8: 10.0})  # a huge bandwidth merges both cars
    assert torch.equal(one_car.ids, torch.where(semantic == 8, 0, -1))
    assert one_car.classes.tolist() == [8]


def toy_panoptic():
    semantic = torch.tensor([
        [3, 3, 8, 8, 0, 0],
        [3, 3, 8, 8, 0, 0],
        [3, 1, 9, 8, 11, 0],
        [3, 1, 9, 9, 8, 8],
    ])
    instances = torch.tensor([
        [-1, -1, 0, 0, -1, -1],
        [-1, -1, 0, 0, -1, -1],
        [-1, -1, 1, 2, -1, -1],
        [-1, -1, 1, 1, -1, -1],
    ])
    return semantic, instances, [8, 9, 8]


def test_merge_ids_void_rules_and_segments():
    semantic, instances, classes = toy_panoptic()
    result = merge_panoptic(semantic, instances, classes, CAMVID, stuff_min_area=3, instance_scores=[0.9, 0.8, 0.7])
    assert result.panoptic.dtype == torch.int32
    # Car pixels outside any instance, the ignore label (11) and the 2-pixel building (< 3) are void.
    assert result.panoptic.tolist() == [
        [3, 3, 8000, 8000, 0, 0],
        [3, 3, 8000, 8000, 0, 0],
        [3, -1, 9000, 8001, -1, 0],
        [3, -1, 9000, 9000, -1, -1],
    ]
    got = [(s.id, s.class_id, s.class_name, s.is_thing, s.score, s.area, s.bbox) for s in result.segments]
    assert got == [
        (0, 0, "sky", False, 1.0, 5, (4, 0, 2, 3)),
        (3, 3, "road", False, 1.0, 6, (0, 0, 2, 4)),
        (8000, 8, "car", True, 0.9, 4, (2, 0, 2, 2)),
        (8001, 8, "car", True, 0.7, 1, (3, 2, 1, 1)),
        (9000, 9, "pedestrian", True, 0.8, 3, (2, 2, 2, 2)),
    ]
    for s in result.segments:  # every segment is exactly the pixels with its id, boxed tightly
        ys, xs = torch.nonzero(result.panoptic == s.id, as_tuple=True)
        assert s.area == len(ys)
        assert s.bbox == (xs.min().item(), ys.min().item(), (xs.max() - xs.min() + 1).item(),
                          (ys.max() - ys.min() + 1).item())
    assert {s.id for s in result.segments} == set(result.panoptic.unique().tolist()) - {VOID_ID}
    # the segment map: index + 1 into the segments sorted by id (sky 1, road 2, cars 3 and 4, pedestrian 5), 0 void
    assert result.segment_map.dtype == torch.int16
    assert result.segment_map.tolist() == [
        [2, 2, 3, 3, 1, 1],
        [2, 2, 3, 3, 1, 1],
        [2, 0, 5, 4, 0, 1],
        [2, 0, 5, 5, 0, 0],
    ]


def test_merge_defaults_keep_small_stuff_and_score_one():
    semantic, instances, classes = toy_panoptic()
    result = merge_panoptic(semantic, instances, classes, CAMVID)
    assert result.panoptic[2, 1].item() == 1 and result.panoptic[3, 1].item() == 1
    assert all(s.score == 1.0 for s in result.segments)
    assert VOID_ID == -1 and INSTANCE_OFFSET == 1000


def test_merge_numbers_instances_per_class_skipping_empty_ones():
    semantic, instances, _ = toy_panoptic()
    instances = torch.where(instances >= 0, instances + 1, -1)  # instance 0 (a car) now has no pixels
    result = merge_panoptic(semantic, instances, [8, 8, 9, 8], CAMVID)
    assert result.panoptic[0, 2].item() == 8000 and result.panoptic[2, 3].item() == 8001
    assert result.panoptic[2, 2].item() == 9000


def test_merge_with_no_instances_and_explicit_ignore_id():
    semantic, _, _ = toy_panoptic()
    result = merge_panoptic(semantic, torch.full_like(semantic, -1), [], CAMVID, ignore_id=0)
    assert (result.panoptic[semantic >= 8] == VOID_ID).all()
    assert (result.panoptic[semantic == 0] == VOID_ID).all()  # sky is the ignore id here
    assert result.panoptic[2, 4].item() == VOID_ID  # 11 is outside the table's 0..10


def test_merge_rejects_thing_class_zero_and_bad_instances():
    table = ClassTable("bad", (ClassInfo(0, "car", True, (0, 0, 0)), ClassInfo(1, "road", False, (1, 1, 1))), 2)
    zeros = torch.zeros(2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="thing classes need ids >= 1"):
        merge_panoptic(zeros, zeros - 1, [], table)
    semantic, instances, _ = toy_panoptic()
    with pytest.raises(ValueError, match="instance_classes must be thing class ids"):
        merge_panoptic(semantic, instances, [8, 3, 8], CAMVID)
    with pytest.raises(ValueError, match="instances must hold -1 or an index"):
        merge_panoptic(semantic, instances, [8, 9], CAMVID)
    with pytest.raises(ValueError, match="instance_scores"):
        merge_panoptic(semantic, instances, [8, 9, 8], CAMVID, instance_scores=[1.0])


def test_coarse_cell_index_is_the_exact_nearest_exact_rule():
    """floor((i + 0.5) * coarse / size) in exact rational arithmetic. Pixel centres exactly on a cell edge are
    where float versions of the rule go wrong: pixel 6 of 13 from 120 cells is at 60 (the old float64 code gave
    59), pixel 11 of 23 from 14 cells at 7 (F.interpolate's float32 "nearest-exact" gives 6)."""
    for size, coarse in ((8, 2), (10, 3), (7, 7), (5, 9), (23, 14), (13, 120), (13, 106), (360, 90), (1023, 257)):
        exact = [math.floor((i + Fraction(1, 2)) * coarse / size) for i in range(size)]
        assert coarse_cell_index(size, coarse).tolist() == exact, (size, coarse)
    assert coarse_cell_index(13, 120)[6] == 60 and coarse_cell_index(23, 14)[11] == 7
    assert coarse_cell_index(23, 14).dtype == torch.int64


def test_thing_pixels_join_the_nearest_instance_of_their_class_without_void_rims():
    """A full-resolution car rim outside its coarse cells joins that car; a pedestrian pixel never joins a car."""
    coarse = torch.full((4, 4), -1)
    coarse[1:3, 0:2] = 0  # car instance 0
    coarse[0, 3] = 1      # pedestrian instance 1
    classes = torch.tensor([8, 9])
    semantic = torch.full((8, 8), 3)  # road
    semantic[2:6, 0:5] = 8  # the car, one fine column wider than its coarse cells (column 4 is coarse column 2)
    semantic[0:2, 6:8] = 9  # the pedestrian's cell
    semantic[7, 0] = 9      # a pedestrian pixel next to the car, far from the pedestrian instance
    ids, out_classes = assign_thing_pixels(semantic, coarse, classes, (8, 9, 10), max_distance=2, min_new_area=1)
    assert (ids[2:6, 0:5] == 0).all()  # the rim column 4 (coarse column 2, no instance there) joins the car
    assert (ids[0:2, 6:8] == 1).all()
    assert ids[7, 0] == 2 and out_classes.tolist() == [8, 9, 9]  # too far (3 cells): a new pedestrian
    assert (ids[semantic == 3] == -1).all()
    # with a minimum area it stays without an instance (void in the panoptic map)
    ids, out_classes = assign_thing_pixels(semantic, coarse, classes, (8, 9, 10), max_distance=2, min_new_area=2)
    assert ids[7, 0] == -1 and out_classes.tolist() == [8, 9]
    # growing by one cell only: column 4 is one cell from the car's cells, so it still joins
    ids, _ = assign_thing_pixels(semantic, coarse, classes, (8, 9, 10), max_distance=1, min_new_area=100)
    assert (ids[2:6, 4] == 0).all()
    ids, _ = assign_thing_pixels(semantic, coarse, classes, (8, 9, 10), max_distance=0, min_new_area=100)
    assert (ids[2:6, 4] == -1).all() and (ids[2:6, 0:4] == 0).all()


def test_thing_pixels_take_the_instance_of_their_own_cell_first_and_ties_go_to_the_higher_index():
    coarse = torch.tensor([[0, -1, 1]])
    semantic = torch.full((1, 3), 8)
    ids, _ = assign_thing_pixels(semantic, coarse, torch.tensor([8, 8]), (8,), max_distance=1)
    assert ids.tolist() == [[0, 1, 1]]  # the middle cell is one step from both: the higher index
    # a cell whose instance is of another class does not claim the pixel
    ids, classes = assign_thing_pixels(semantic, coarse, torch.tensor([9, 8]), (8, 9), max_distance=0)
    assert ids.tolist() == [[2, 2, 1]] and classes.tolist() == [9, 8, 8]


def test_assign_thing_pixels_empty_image_and_no_things():
    empty = torch.full((4, 6), 3)
    ids, classes = assign_thing_pixels(empty, torch.full((1, 2), -1), torch.zeros(0, dtype=torch.int64), (8, 9))
    assert (ids == -1).all() and classes.numel() == 0
    ids, _ = assign_thing_pixels(empty, torch.full((1, 2), -1), torch.zeros(0, dtype=torch.int64), ())
    assert (ids == -1).all()


def test_segment_map_and_ids_convert_both_ways_and_reject_what_does_not_fit():
    from panoptic_ros.postprocess import ids_from_segment_map, segment_map_from_ids

    panoptic = np.array([[3, 3, 8000], [-1, 9001, 8000]], np.int32)
    ids = [3, 8000, 9001]
    segment_map = segment_map_from_ids(panoptic, ids)
    assert segment_map.dtype == np.uint16 and segment_map.tolist() == [[1, 1, 2], [0, 3, 2]]
    np.testing.assert_array_equal(ids_from_segment_map(segment_map, ids), panoptic)
    assert segment_map_from_ids(np.full((2, 2), -1), []).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="have no segment"):
        segment_map_from_ids(panoptic, [3, 8000])  # 9001 is missing (also past the last id)
    with pytest.raises(ValueError, match="have no segment"):
        segment_map_from_ids(panoptic, [3, 8000, 9000])  # between and not equal
    with pytest.raises(ValueError, match="increasing"):
        segment_map_from_ids(panoptic, [8000, 3, 9001])
    with pytest.raises(ValueError, match="only 2 segments"):
        ids_from_segment_map(segment_map, [3, 8000])


def test_cluster_instances_keeps_clusters_of_exactly_min_pixels():
    """Clusters of 8, 6 and 4 pixels: a minimum equal to a cluster's size keeps it. Kills ``bincount(labels) >
    min_pixels`` and off-by-one renumbering (``cumsum(keep) - 1`` -> ``cumsum(keep)``)."""
    embedding, semantic = toy_instances()
    expected = torch.tensor([[0, 0, -1, 2, 1, 1]] * 3 + [[0, 0, -1, 2, -1, -1]])
    for min_pixels, kept in ((4, [0, 1, 2]), (6, [0, 1]), (8, [0])):
        result = cluster_instances(embedding, semantic, {8: 0.5, 9: 0.5}, min_pixels=min_pixels)
        assert torch.equal(result.ids, torch.where(torch.isin(expected, torch.tensor(kept)), expected, -1))
        assert result.classes.tolist() == [8, 8, 9][:len(kept)]


def test_merge_keeps_stuff_of_exactly_stuff_min_area_and_one_pixel_stuff_by_default():
    """The building (class 1) has 2 pixels: ``stuff_min_area=2`` keeps it, 3 voids it (above); a 1-pixel stuff
    region survives the default. Kills ``area >= max(stuff_min_area, 1)`` -> ``>`` and ``max(..., 2)``."""
    semantic, instances, classes = toy_panoptic()
    kept = merge_panoptic(semantic, instances, classes, CAMVID, stuff_min_area=2)
    assert kept.panoptic[2:, 1].tolist() == [1, 1] and 1 in [s.id for s in kept.segments]
    semantic[3, 1] = 3  # the building is now one pixel
    one = merge_panoptic(semantic, instances, classes, CAMVID)
    assert one.panoptic[2, 1].item() == 1 and [s.area for s in one.segments if s.id == 1] == [1]
    assert merge_panoptic(semantic, instances, classes, CAMVID, stuff_min_area=1).panoptic[2, 1].item() == 1


def test_merge_class_id_ranges_at_the_edges():
    """Semantic ids -1 and len(table) are void while 0 and len(table) - 1 are classes; instance classes -1 and
    len(table) are rejected, an instance index of -2 too. Kills ``semantic >= 0`` -> ``> 0``, ``semantic < n_cls``
    -> ``<=``, ``classes < 0`` -> ``< -1``, ``classes >= len(table)`` -> ``>`` and ``instances.min() < -1`` ->
    ``< -2``."""
    table = ClassTable("edge", (ClassInfo(0, "road", False, (0, 0, 0)), ClassInfo(1, "car", True, (1, 1, 1)),
                                ClassInfo(2, "sky", False, (2, 2, 2))), 255)
    semantic = torch.tensor([[-1, 0, 2, 3]])
    result = merge_panoptic(semantic, torch.full_like(semantic, -1), [], table)
    assert result.panoptic.tolist() == [[VOID_ID, 0, 2, VOID_ID]]
    one = torch.tensor([[0]])
    car_last = ClassTable("car last", table.classes[:2], 255)  # class -1 would index the car: a thing
    with pytest.raises(ValueError, match="instance_classes must be thing class ids"):
        merge_panoptic(one, one, [-1], car_last)
    with pytest.raises(ValueError, match="instance_classes must be thing class ids"):
        merge_panoptic(one, one, [3], table)
    with pytest.raises(ValueError, match="instances must hold -1 or an index"):
        merge_panoptic(one, one - 2, [1], table)
    assert merge_panoptic(one, one, [1], table).panoptic.tolist() == [[1000]]


@pytest.mark.parametrize("rows, integral", [
    (torch.randint(-20, 21, (3000, 12), generator=torch.Generator().manual_seed(0)).double(), True),  # 41^12 > 2^53
    (torch.randint(0, 2, (500, 40), generator=torch.Generator().manual_seed(1)).double(), True),
    (torch.zeros(2, 12).index_put_((torch.tensor([1]), torch.tensor([7])), torch.tensor(63.0)), True),  # 64^12 wraps
    (torch.tensor([[0.0, 1e17], [3e17, 0.0], [0.0, 1e17], [2.0, 5.0]]), True),  # span > 2^52: ranked first
    (torch.randint(0, 3, (2000, 12), generator=torch.Generator().manual_seed(2)).double() * 0.1, False),
    (torch.tensor([[0.0, -0.0], [-0.0, 0.0], [1.0, 2.0]]), False),
])
def test_unique_rows_groups_exactly_equal_rows_and_finds_their_first(rows, integral):
    """``_unique_rows`` (seeds from grid cells, merging equal means) against torch.unique(dim=0): rows with 40 columns
    need several int64 blocks, and combining those re-ranks before int64 wraps (the two rows of the 64^12 case would
    collide), values beyond 2^52 need ranks; -0.0 equals 0.0."""
    inverse, first = postprocess._unique_rows(rows, integral=integral)
    _, expected = torch.unique(rows + 0.0, dim=0, return_inverse=True)
    # the same partition: equal group exactly where torch.unique's are equal
    pairs = torch.unique(torch.stack([inverse, expected], 1), dim=0)
    assert len(pairs) == len(torch.unique(inverse)) == len(torch.unique(expected))
    assert sorted(torch.unique(inverse).tolist()) == list(range(len(first)))
    arange = torch.arange(len(rows))
    # first[g] is the first row of group g
    assert torch.equal(first, torch.stack([arange[inverse == g].min() for g in range(len(first))]))


def test_a_class_with_more_instances_than_ids_keeps_its_best_by_score_then_area():
    """1003 cars, one more pedestrian: ids hold 1000 instances per class, so the three worst cars (lowest score;
    of two equal scores, the smaller) become void instead of failing the frame; the kept cars are numbered in
    instance order, and the pedestrian is untouched."""
    n = 1003
    instances = torch.arange(n + 1).reshape(1, -1).repeat(2, 1)  # instance i: column i, 2 pixels
    instances[1, 5] = 6  # instance 5 has 1 pixel, instance 6 has 3
    semantic = torch.full(instances.shape, 8)
    semantic[:, n] = 9
    classes = [8] * n + [9]
    scores = torch.ones(n + 1)
    scores[[10, 20]] = 0.1  # the two worst by score
    scores[[5, 6]] = 0.5  # equal scores: 5 (1 pixel) is dropped, 6 (3 pixels) kept
    result = merge_panoptic(semantic, instances, classes, CAMVID, instance_scores=scores)
    dropped = {5, 10, 20}
    for i in dropped:
        assert (result.panoptic[instances == i] == VOID_ID).all()
    kept = [i for i in range(n) if i not in dropped]
    assert [int(result.panoptic[instances == i][0]) for i in kept] == [8 * INSTANCE_OFFSET + k for k in range(1000)]
    assert result.panoptic[0, n] == 9 * INSTANCE_OFFSET
    cars = [s for s in result.segments if s.class_id == 8]
    assert len(cars) == 1000 and min(s.score for s in cars) == 0.5
    assert next(s for s in cars if s.id == 8 * INSTANCE_OFFSET + kept.index(6)).area == 3


# ---- branches and boundaries found by mutation testing (scripts/mutate.py postprocess); each test names the
# ---- mutants it kills


def test_cluster_instances_rejects_each_wrong_shape_with_both_shapes_named():
    """Either argument wrong alone is enough (kills ``or`` -> ``and``); the message names both shapes (kills
    ``ValueError(None)`` and ``tuple(None)``)."""
    embedding, semantic = toy_instances()
    for bad_embedding, bad_semantic in ((embedding[0], semantic), (embedding, semantic[:, :5])):
        shapes = f"got {tuple(bad_embedding.shape)} and {tuple(bad_semantic.shape)}"
        with pytest.raises(ValueError, match=re.escape(f"of the same H, W; {shapes}")):
            cluster_instances(bad_embedding, bad_semantic, {8: 0.5})


def test_cluster_instances_numbers_on_across_three_classes_and_returns_int64_when_none():
    """Instances of a third class continue the numbering of the first two (kills ``n_instances += kept`` ->
    ``=``); with no thing class present the classes are an empty int64 tensor (kills the empty branch's
    ``torch.zeros`` mutants and ``if classes or True``)."""
    embedding, semantic = toy_instances()
    semantic = semantic.clone()
    semantic[3, 4:] = 10  # the road under car B becomes a third thing class (bicyclist), one cluster
    result = cluster_instances(embedding, semantic, {8: 0.5, 9: 0.5, 10: 0.5})
    assert result.classes.tolist() == [8, 8, 9, 10]
    assert result.ids[3].tolist() == [0, 0, -1, 2, 3, 3]
    none = cluster_instances(embedding, torch.full_like(semantic, 3), {8: 0.5, 9: 0.5})
    assert (none.ids == -1).all() and none.classes.dtype == torch.int64 and none.classes.shape == (0,)


def test_cluster_instances_passes_max_iter_on():
    """60 Gaussian points, bandwidth 1.2: one mean-shift step leaves 5 modes where 300 steps converge to 2;
    ``cluster_instances`` must give ``cluster_embeddings``' result for the same ``max_iter`` (kills dropping or
    replacing the argument)."""
    embedding = torch.randn(60, 2, generator=torch.Generator().manual_seed(0)).t().reshape(2, 1, 60)
    semantic = torch.full((1, 60), 8)
    points = embedding[:, 0].t()
    one, converged = cluster_embeddings(points, 1.2, max_iter=1), cluster_embeddings(points, 1.2)
    assert not torch.equal(one, converged)  # the case tells the two apart
    for max_iter, labels in ((1, one), (300, converged)):
        assert torch.equal(cluster_instances(embedding, semantic, {8: 1.2}, max_iter=max_iter).ids[0], labels)


def test_assign_thing_pixels_rejects_each_wrong_shape_with_both_shapes_named():
    semantic, coarse = torch.zeros(4, 4, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64)
    for bad_semantic, bad_coarse in ((semantic[0], coarse), (semantic, coarse[0])):
        shapes = f"got {tuple(bad_semantic.shape)} and {tuple(bad_coarse.shape)}"
        with pytest.raises(ValueError, match=re.escape(f"[H, W] and [h, w]; {shapes}")):
            assign_thing_pixels(bad_semantic, bad_coarse, torch.tensor([8]), (8,))


def test_assign_thing_pixels_defaults_reach_two_cells_and_keep_one_pixel_components():
    """Defaults: an instance grows 2 cells (the pixel 3 cells away is not reached: kills ``max_distance=3``), and
    1-pixel leftovers become instances of their own (kills ``min_new_area=2``). Adjacent instances of one class
    keep their own cells (kills ``reach > 0`` -> ``> 1``, which lets instance 1 overwrite instance 0's cell). A
    uint8 semantic map, as the Predictor passes, gives the same (kills dropping ``semantic.to(torch.int64)``: a
    uint8 index tensor is a mask)."""
    coarse = torch.tensor([[0, 1, -1, -1, -1, -1, -1]])
    semantic = torch.tensor([[8, 8, 8, 8, 8, 3, 8]])  # 1x7 at full resolution = coarse resolution
    for labels in (semantic, semantic.to(torch.uint8)):
        ids, classes = assign_thing_pixels(labels, coarse, torch.tensor([8, 8]), (8,))
        assert ids.tolist() == [[0, 1, 1, 1, 2, -1, 3]] and classes.tolist() == [8, 8, 8, 8]


def test_assign_thing_pixels_ignores_stuff_void_and_negative_ids_next_to_a_thing():
    """Class 0 (stuff), -1 and -2 never join the class-1 instance beside them (kills ``semantic.clamp(min=-1)``
    -> ``min=+1``, which reads class 0 and -1 as class 1, and -> ``min=-2``, which reads -2 as the largest id)."""
    semantic = torch.tensor([[1, 0, -1, -2]])
    ids, classes = assign_thing_pixels(semantic, torch.tensor([[0, 0, 0, 0]]), torch.tensor([1]), (1,))
    assert ids.tolist() == [[0, -1, -1, -1]] and classes.tolist() == [1]


def test_assign_thing_pixels_numbers_new_instances_per_component_and_class():
    """With no given instance, leftovers form new ones numbered from 0 (kills ``new_ids >= 0`` -> ``> 0`` / ``>= 1``):
    two components of class 8 (kills ``+ 1`` -> ``- 1`` on component labels and ``n + arange`` -> ``n - arange``),
    then class 9's after a class-8 component below ``min_new_area`` (kills ``continue`` -> ``break``, ``n +=`` ->
    ``n =`` / ``n -=``)."""
    semantic = torch.tensor([[8, 3, 8, 8, 3, 9, 9, 3, 5, 3, 9]])
    no_instances = torch.zeros(0, dtype=torch.int64)
    ids, classes = assign_thing_pixels(semantic, torch.full((1, 11), -1), no_instances, (5, 8, 9), min_new_area=2)
    assert ids.tolist() == [[-1, -1, 0, 0, -1, 1, 1, -1, -1, -1, -1]] and classes.tolist() == [8, 9]
    ids, classes = assign_thing_pixels(semantic, torch.full((1, 11), -1), no_instances, (5, 8, 9))
    assert ids.tolist() == [[1, -1, 2, 2, -1, 3, 3, -1, 0, -1, 4]] and classes.tolist() == [5, 8, 8, 9, 9]


def test_merge_rejects_each_wrong_shape_and_too_large_tables_with_their_message():
    """Kills ``or`` -> ``and`` in the shape check, ``ValueError(None)`` / ``tuple(None)`` in its message,
    ``table[0]`` -> ``table[1]`` in the class-0 message, and ``len(table) > INSTANCE_OFFSET`` -> ``>=`` (a table of
    exactly INSTANCE_OFFSET classes is accepted)."""
    semantic, instances, classes = toy_panoptic()
    for bad_semantic, bad_instances in ((semantic[0], instances[0]), (semantic, instances[:, :5])):
        with pytest.raises(ValueError, match=re.escape(
                f"both be [H, W]; got {tuple(bad_semantic.shape)} and {tuple(bad_instances.shape)}")):
            merge_panoptic(bad_semantic, bad_instances, classes, CAMVID)
    table = ClassTable("bad", (ClassInfo(0, "car", True, (0, 0, 0)), ClassInfo(1, "road", False, (1, 1, 1))), 2)
    with pytest.raises(ValueError, match=re.escape("class table 'bad': class 0 ('car') is a thing")):
        merge_panoptic(semantic, instances, [], table)
    many = [ClassInfo(i, f"c{i}", False, (0, 0, 0)) for i in range(INSTANCE_OFFSET)]
    one = torch.zeros(1, 1, dtype=torch.int64)
    assert merge_panoptic(one + 999, one - 1, [], ClassTable("full", tuple(many), 255)).panoptic.tolist() == [[999]]
    too_many = ClassTable("too many", (*many, ClassInfo(INSTANCE_OFFSET, "x", False, (0, 0, 0))), 255)
    with pytest.raises(ValueError, match=re.escape(f"class table 'too many' has {INSTANCE_OFFSET + 1} classes; stuff "
                                                   f"ids must stay below INSTANCE_OFFSET = {INSTANCE_OFFSET}")):
        merge_panoptic(one, one - 1, [], too_many)


def test_merge_voids_the_tables_own_ignore_id_by_default():
    """A table whose ignore id is a class id inside the table: by default its pixels are void (kills
    ``table.ignore_id if ignore_id is None`` -> never taking the table's)."""
    table = ClassTable("ignore inside", (ClassInfo(0, "road", False, (0, 0, 0)), ClassInfo(1, "unlabelled", False,
                                                                                          (1, 1, 1))), 1)
    semantic = torch.tensor([[0, 1]])
    assert merge_panoptic(semantic, semantic * 0 - 1, [], table).panoptic.tolist() == [[0, VOID_ID]]


def test_merge_all_void_and_instances_without_pixels_give_no_segments():
    """An image that is void everywhere has no segments and an all-zero segment map (kills the empty branch's
    ``torch.zeros`` mutants in ``_segments``); an instance with no pixels gets no segment (kills ``area > 0`` ->
    ``>= 0``)."""
    semantic = torch.full((2, 3), 11)  # CamVid's ignore id
    result = merge_panoptic(semantic, torch.full_like(semantic, -1), [], CAMVID)
    assert result.segments == [] and result.segment_map.tolist() == [[0, 0, 0], [0, 0, 0]]
    semantic, instances, _ = toy_panoptic()
    instances = torch.where(instances >= 0, instances + 1, -1)  # instance 0 has no pixels
    result = merge_panoptic(semantic, instances, [8, 8, 9, 8], CAMVID)
    assert [s.id for s in result.segments] == [0, 1, 3, 8000, 8001, 9000]


def test_merge_writes_the_segment_map_into_the_given_buffer():
    """``segment_map_out`` receives the same map as without it and is returned; a buffer of the wrong shape or
    dtype is refused, each alone (kills the out branch's mutants: its checks, index_select arguments and the
    returned fields)."""
    semantic, instances, classes = toy_panoptic()
    plain = merge_panoptic(semantic, instances, classes, CAMVID)
    out = torch.full(semantic.shape, 7, dtype=torch.int16)
    result = merge_panoptic(semantic, instances, classes, CAMVID, segment_map_out=out)
    assert result.segment_map is out and torch.equal(out, plain.segment_map)
    assert torch.equal(result.panoptic, plain.panoptic) and result.segments == plain.segments
    for bad in (torch.zeros(semantic.shape, dtype=torch.int32), torch.zeros((4, 5), dtype=torch.int16)):
        with pytest.raises(ValueError, match=re.escape(f"segment_map_out must be int16 (4, 6), got {bad.dtype} "
                                                       f"{tuple(bad.shape)}")):
            merge_panoptic(semantic, instances, classes, CAMVID, segment_map_out=bad)


def test_segment_map_conversions_at_their_limits():
    """65535 increasing ids fit (kills ``len(ids) > 65535`` -> ``>=``); equal ids are refused and consecutive ones
    accepted (kills ``diff <= 0`` -> ``< 0`` / ``<= 1``); an id past a single segment is "no segment", not an
    IndexError (kills ``max(len - 1, 0)`` -> ``max(len - 1, 1)``); the message lists the first five missing ids
    (kills its mutants); ids come back as int32 (kills the lookup table's dtype mutants)."""
    from panoptic_ros.postprocess import ids_from_segment_map, segment_map_from_ids

    ids = list(range(65535))
    assert segment_map_from_ids(np.array([[65534, -1]]), ids).tolist() == [[65535, 0]]
    with pytest.raises(ValueError, match="increasing"):
        segment_map_from_ids(np.array([[3]]), [3, 3])
    assert segment_map_from_ids(np.array([[4]]), [3, 4]).tolist() == [[2]]
    with pytest.raises(ValueError, match=re.escape("panoptic ids [8000] have no segment")):
        segment_map_from_ids(np.array([[8000]]), [3])
    with pytest.raises(ValueError, match=re.escape("panoptic ids [1, 2, 4, 5, 6] have no segment")):
        segment_map_from_ids(np.array([[7, 6, 5, 4, 3, 2, 1, -1]]), [3])
    assert ids_from_segment_map(np.array([[1, 0]], np.uint16), [8000]).dtype == np.int32


def test_merge_accepts_exactly_max_segments_and_refuses_one_more(monkeypatch):
    """With the limit lowered to the 6 segments of the toy map (the real 32767 needs a huge image): 6 pass, 5 are
    too few, with the count in the message. Kills ``len(segments) > MAX_SEGMENTS`` -> ``>=`` and its message's
    ``ValueError(None)``."""
    semantic, instances, classes = toy_panoptic()
    monkeypatch.setattr(postprocess, "MAX_SEGMENTS", 6)
    assert len(merge_panoptic(semantic, instances, classes, CAMVID).segments) == 6
    monkeypatch.setattr(postprocess, "MAX_SEGMENTS", 5)
    with pytest.raises(ValueError, match=re.escape("6 segments: at most 5 fit a 16-bit segment map")):
        merge_panoptic(semantic, instances, classes, CAMVID)


def test_merge_codes_refuses_more_codes_than_its_int32_keys_hold(monkeypatch):
    """The toy map has 1 x 8 pixels and 13 codes (11 classes, 1 instance, void): keys up to 13 x 8 - 1 = 103.
    With the limit lowered to 104 (the real 2^31 needs a huge map) it merges, at 103 it is refused with the
    numbers in the message. Kills ``>`` -> ``>=`` and a check on the rows alone (1 row)."""
    code = torch.tensor([[0, 1, 2, 3, 11, 11, 12, 5]])
    monkeypatch.setattr(postprocess, "_KEY_LIMIT", 104)
    result = postprocess.merge_codes(code, [8], CAMVID)
    assert result.panoptic.tolist() == [[0, 1, 2, 3, 8000, 8000, VOID_ID, 5]]
    assert [(s.id, s.bbox) for s in result.segments][-1] == (8000, (4, 0, 2, 1))
    monkeypatch.setattr(postprocess, "_KEY_LIMIT", 103)
    with pytest.raises(ValueError, match=re.escape("13 codes in rows or columns of 8 pixels: the segment boxes' keys "
                                                   "(code + codes x row) must stay below 103")):
        postprocess.merge_codes(code, [8], CAMVID)


def test_merge_voids_small_stuff_of_class_zero_and_far_negative_ids_in_the_segment_map_too():
    """Only class 0 (sky), below ``stuff_min_area``, and ids far below 0: everything is void, the segment map all 0
    (kills ``_segments``' empty branch returning code 0, which would mark the sky pixels as segment 1) and a
    negative id is no index into the class table (kills dropping the lower clamp: ``is_thing[-20]`` is out of
    range)."""
    semantic = torch.tensor([[0, 0, -20]])
    result = merge_panoptic(semantic, torch.full_like(semantic, -1), [], CAMVID, stuff_min_area=5)
    assert result.segments == [] and result.segment_map.tolist() == [[0, 0, 0]]
    assert result.panoptic.tolist() == [[VOID_ID] * 3]


def test_merge_of_a_uint8_semantic_map_with_many_instances():
    """The Predictor passes uint8 class maps; with 11 classes and 250 instances the void code (261) does not fit
    uint8, so the map must be widened before codes are built (kills dropping ``semantic.to(torch.int64)``)."""
    n = 250
    instances = torch.cat([torch.arange(n), torch.tensor([-1, -1])])[None]
    semantic = torch.cat([torch.full((n,), 8), torch.tensor([8, 3])])[None]  # a car pixel outside instances: void
    wide = merge_panoptic(semantic, instances, [8] * n, CAMVID)
    narrow = merge_panoptic(semantic.to(torch.uint8), instances, [8] * n, CAMVID)
    assert wide.panoptic[0, -2:].tolist() == [VOID_ID, 3]
    assert torch.equal(narrow.panoptic, wide.panoptic) and torch.equal(narrow.segment_map, wide.segment_map)


def test_cluster_instances_keeps_one_pixel_clusters_by_default():
    """The default ``min_pixels`` is 1: two cars one pixel each stay two instances (kills the default 1 -> 2)."""
    embedding = torch.tensor([[[0.0, 5.0, 0.0]], [[0.0, 5.0, 0.0]]])
    result = cluster_instances(embedding, torch.tensor([[8, 8, 3]]), {8: 0.5})
    assert sorted(result.ids[0, :2].tolist()) == [0, 1] and result.ids[0, 2] == -1  # equal density: either order
    assert result.classes.tolist() == [8, 8]


def test_merge_codes_voids_thing_codes_the_ignore_class_and_codes_past_the_instances():
    """Codes as ``panoptic_codes`` makes them, merged directly: a thing class's own code (a car pixel in no
    instance) and the table's ignore class are void, as is every code from C + K up; a stuff code is its class;
    an instance code its id. Built by hand on a table whose ignore class is inside it (so its code can occur)."""
    from panoptic_ros.postprocess import merge_codes, panoptic_codes

    classes = (ClassInfo(0, "road", False, (0, 0, 0)), ClassInfo(1, "car", True, (1, 1, 1)),
               ClassInfo(2, "unlabelled", False, (2, 2, 2)))
    table = ClassTable("small", classes, 2)
    c = 3  # classes; instance 0 is code 3, the void code 4
    code = torch.tensor([[0, 1, 2, 3, 4, 9]])
    result = merge_codes(code, [1], table, instance_scores=[0.5])
    assert result.panoptic.tolist() == [[0, VOID_ID, VOID_ID, 1000, VOID_ID, VOID_ID]]
    assert [(s.id, s.area, s.bbox, s.score) for s in result.segments] == [(0, 1, (0, 0, 1, 1), 1.0),
                                                                        (1000, 1, (3, 0, 1, 1), 0.5)]
    assert result.segment_map.tolist() == [[1, 0, 0, 2, 0, 0]]
    semantic = torch.tensor([[0, 1, 2, 1, 7, -1]])
    instances = torch.tensor([[-1, -1, -1, 0, -1, -1]])
    assert panoptic_codes(semantic, instances, c, 1, 2).tolist() == [[0, 1, 4, 3, 4, 4]]
    assert torch.equal(merge_panoptic(semantic, instances, [1], table, instance_scores=[0.5]).panoptic,
                       result.panoptic)


@pytest.mark.parametrize("shape", [(3, 7, 9), (1, 1, 1), (2, 1, 5), (2, 6, 1), (4, 33, 40)])
def test_max3x3_is_max_pool2d_with_padding(shape):
    """``_max3x3`` (the reach growth of ``assign_thing_pixels``) against torch's 3 x 3 max pool, at the edges and
    on one-row and one-column planes."""
    torch.manual_seed(sum(shape))
    planes = torch.randint(0, 50, shape)
    expected = torch.nn.functional.max_pool2d(planes[None].float(), 3, stride=1, padding=1)[0].long()
    assert torch.equal(postprocess._max3x3(planes), expected)


def test_mean_shifts_of_several_problems_equal_their_separate_runs(monkeypatch):
    """Problems that climb together (``_DensePoints`` of several parts) give each problem's separate result: the
    same points under two bandwidths (their seeds coincide, so sharing a mean across problems would mix them), a
    third set, an empty one and one too large to climb with the others (``_PointIndex``); labels, centres
    and counts as ``mean_shift`` of each alone, and ``cluster_embeddings`` as sklearn."""
    rng = np.random.default_rng(3)
    blobs = np.concatenate([rng.normal(c, 0.15, (60, 4)) for c in ((0, 0, 0, 0), (1, 1, 0, 0), (0, 2, 1, 0))])
    points = torch.from_numpy(blobs)
    other = torch.from_numpy(rng.normal(0, 0.2, (40, 4)) + 3)
    problems = [(points, 0.5), (points, 1.2), (other, 0.3), (points[:0], 0.5)]
    problems.append((points, 0.25))  # 180 points x 99 bin seeds, more than the others (at most 33 seeds)
    monkeypatch.setattr(postprocess, "_DENSE_PAIRS", 180 * 99 - 1)  # so that it climbs alone, with _PointIndex
    assert [postprocess._prepare(x, b).dense for x, b in problems if len(x)] == [True, True, True, False]
    together = postprocess.mean_shifts(problems)
    for (x, bandwidth), result in zip(problems, together):
        alone = postprocess.mean_shift(x, bandwidth)
        assert torch.equal(result.labels, alone.labels) and torch.equal(result.intensities, alone.intensities)
        assert torch.allclose(result.centres, alone.centres, rtol=0, atol=1e-12)
    expected = MeanShift(bandwidth=0.5, bin_seeding=True, min_bin_freq=1, cluster_all=True).fit_predict(blobs)
    assert adjusted_rand_score(expected, together[0].labels.numpy()) == 1.0
    assert len(together[1].centres) < len(together[0].centres) and len(together[3].labels) == 0
    # 1-D, bandwidth 0.5, both problems centred on 0.125 (climbing subtracts the mean): the seed at 0 of each moves
    # to 0.125, where they part (0.5625 is within 0.5 of 0.125, not of 0); one computation for the two equal means
    # would give one problem the other's points, in whichever order they come
    a = torch.tensor([[0.0], [0.25]], dtype=torch.float64)
    b = torch.tensor([[0.0], [0.25], [0.5625], [1.0], [-1.1875]], dtype=torch.float64)
    for first, second in ((a, b), (b, a)):
        for x, result in zip((first, second), postprocess.mean_shifts([(first, 0.5), (second, 0.5)])):
            alone = postprocess.mean_shift(x, 0.5)
            assert torch.equal(result.centres, alone.centres) and torch.equal(result.intensities, alone.intensities)
    assert postprocess.mean_shift(a, 0.5).centres.tolist() == [[0.125]]


def test_cluster_instances_clusters_every_class_together_as_each_alone():
    """Three classes in one call give the instances of three calls with one class each, numbered on by class."""
    rng = np.random.default_rng(4)
    semantic = torch.from_numpy(rng.choice([0, 8, 9, 10], (12, 20)))
    embedding = torch.from_numpy(rng.normal(0, 1, (3, 12, 20)))
    bandwidths = {8: 0.8, 9: 1.0, 10: 1.4}
    together = cluster_instances(embedding, semantic, bandwidths)
    offset = 0
    for class_id, bandwidth in bandwidths.items():
        alone = cluster_instances(embedding, semantic, {class_id: bandwidth})
        mask = semantic == class_id
        assert torch.equal(together.ids[mask], alone.ids[mask] + offset)
        offset += len(alone.classes)
    assert together.classes.tolist() == sorted(together.classes.tolist()) and len(together.classes) == offset
