"""Instance Mask Projection: compiled kernels against the reference, hand-worked canvases, gradients, opcheck."""

from __future__ import annotations

import logging

import pytest
import torch

from panoptic_ros.ops import imp, project_instance_masks, project_instance_masks_reference
from panoptic_ros.ops._reference import SAMPLING, cell_ranges

pytestmark = pytest.mark.skipif(not imp.extension_available(), reason="IMP extension not built")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_detections(n, mask_hw=(28, 28), canvas=(8, 64, 96), box_scale=0.25, seed=0, dtype=torch.float32):
    """Detections of every kind the op must handle: inside, partly and fully outside the canvas, tiny,
    degenerate (x2 <= x1), non-finite, and with classes outside [0, C) (ignored)."""
    g = torch.Generator().manual_seed(seed)
    num_classes, height, width = canvas
    image_h, image_w = height / box_scale, width / box_scale
    masks = torch.rand((n, *mask_hw), generator=g, dtype=torch.float64).to(dtype)
    scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    classes = torch.randint(-1, num_classes + 1, (n,), generator=g)
    x1 = torch.rand(n, generator=g, dtype=torch.float64) * image_w * 1.4 - image_w * 0.2
    y1 = torch.rand(n, generator=g, dtype=torch.float64) * image_h * 1.4 - image_h * 0.2
    w = torch.rand(n, generator=g, dtype=torch.float64) * image_w * 0.6 - image_w * 0.02  # some negative
    h = torch.rand(n, generator=g, dtype=torch.float64) * image_h * 0.6 - image_h * 0.02
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], dim=1).float()
    if n > 3:
        boxes[1, 2] = float("nan")
        boxes[2] = torch.tensor([5.0, 5.0, 5.4, 5.3])  # smaller than a canvas pixel at this scale
        boxes[3] = torch.tensor([-1e30, -1e30, 1e30, 1e30])  # huge but finite: covers the whole canvas
    return masks, scores, classes, boxes


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b), f"max abs difference {(a.double() - b.double()).abs().max().item()}"


# ---------------------------------------------------------------- hand-worked canvases


@pytest.fixture(params=[project_instance_masks, project_instance_masks_reference], ids=["kernel", "reference"])
def project(request):
    """The hand-worked cases hold for the compiled kernel and for the reference alike. The reference is the oracle
    of the randomised comparisons, so a bug in it must fail here, not only show as a kernel mismatch."""
    return request.param


@pytest.mark.parametrize("sampling", SAMPLING)
def test_cells_cover_box_pixels_scaled_by_score(project, sampling):
    # Cells of 2 x 2 pixels aligned to the pixel grid: both rules read the same cell everywhere.
    masks = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    canvas = project(
        masks, torch.tensor([0.5]), torch.tensor([0]), torch.tensor([[0.0, 0, 4, 4]]), (1, 4, 4), sampling=sampling
    )
    expected = torch.tensor(
        [[[0.05, 0.05, 0.10, 0.10], [0.05, 0.05, 0.10, 0.10], [0.15, 0.15, 0.20, 0.20], [0.15, 0.15, 0.20, 0.20]]]
    )
    assert torch.allclose(canvas, expected)


@pytest.mark.parametrize("sampling", SAMPLING)
def test_box_scale_maps_image_boxes_to_the_canvas(project, sampling):
    masks = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    image_box = torch.tensor([[0.0, 0, 8, 8]])
    args = (masks, torch.tensor([1.0]), torch.tensor([0]))
    scaled = project(*args, image_box, (1, 4, 4), box_scale=0.5, sampling=sampling)
    direct = project(*args, image_box / 2, (1, 4, 4), sampling=sampling)
    assert_same_bits(scaled, direct)
    assert scaled[0, 3, 0] == pytest.approx(0.3)


def test_centre_rule_covers_only_pixel_centres_inside_the_box(project):
    # Box x in [0.6, 2.4): centres 0.5 and 2.5 are outside, only column 1 (centre 1.5) is covered.
    # Box y in [0.0, 1.5): row 0 (centre 0.5) in, row 1 (centre 1.5) out: the box is half-open.
    canvas = project(
        torch.tensor([[[0.8]]]), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([[0.6, 0.0, 2.4, 1.5]]), (1, 3, 4),
        sampling="centre",
    )
    expected = torch.zeros(1, 3, 4)
    expected[0, 0, 1] = 0.8
    assert torch.equal(canvas, expected)


def test_overlap_rule_covers_every_pixel_the_box_overlaps_with_positive_area(project):
    # The same box overlaps columns 0-2 and rows 0-1. Column 3 starts at 3.0 > 2.4; row 2 starts at 2.0 > 1.5.
    canvas = project(
        torch.tensor([[[0.8]]]), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([[0.6, 0.0, 2.4, 1.5]]), (1, 3, 4)
    )
    expected = torch.zeros(1, 3, 4)
    expected[0, :2, :3] = 0.8
    assert torch.equal(canvas, expected)
    # Touching a pixel only along its edge is no overlap: the box [1, 2) x [0, 1) reads pixel (0, 1) alone.
    touching = project(
        torch.tensor([[[0.8]]]), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([[1.0, 0.0, 2.0, 1.0]]), (1, 3, 4)
    )
    assert torch.nonzero(touching).tolist() == [[0, 0, 1]]


def bright_column_detection(column: int):
    """A 28 x 28 mask of 0.1 with one column of 1.0, in an 8 x 8-pixel box: each cell is 2/7 of a pixel."""
    masks = torch.full((1, 28, 28), 0.1)
    masks[0, :, column] = 1.0
    return masks, torch.ones(1), torch.tensor([0]), torch.tensor([[0.0, 0.0, 8.0, 8.0]])


def test_a_column_thinner_than_a_pixel_lands_only_under_the_overlap_rule(project):
    # Pixel centres j + 0.5 fall in cells floor(3.5 j + 1.75) = 1, 5, 8, 12, 15, 19, 22, 26: column 10 is never
    # sampled by the centre rule. Cell 10 spans [2.86, 3.14) pixels, overlapping pixels 2 and 3, so the overlap
    # rule (Algorithm 1) puts the bright column on canvas columns 2 and 3, in every row.
    args = bright_column_detection(10)
    centre = project(*args, (1, 8, 8), sampling="centre")
    assert torch.equal(centre, torch.full((1, 8, 8), 0.1))
    overlap = project(*args, (1, 8, 8), sampling="overlap")
    expected = torch.full((1, 8, 8), 0.1)
    expected[0, :, 2:4] = 1.0
    assert torch.equal(overlap, expected)
    assert torch.equal(overlap, project_instance_masks_reference(*args, (1, 8, 8), sampling="overlap"))
    # Cell 7 starts exactly on pixel 2's left edge (7 * 2/7 = 2.0): it is read by pixel 2, not by pixel 1.
    expected = torch.full((1, 8, 8), 0.1)
    expected[0, :, 2] = 1.0
    assert torch.equal(project(*bright_column_detection(7), (1, 8, 8)), expected)


def test_a_box_smaller_than_a_pixel_projects_its_best_cell_only_under_the_overlap_rule(project):
    # At stride 4, a 1.6 x 1.6-pixel image box is 0.4 canvas pixels, inside pixel (1, 1) and short of its centre.
    masks = torch.rand((1, 28, 28), generator=torch.Generator().manual_seed(0))
    args = (masks, torch.tensor([0.5]), torch.tensor([0]), torch.tensor([[4.2, 4.2, 5.8, 5.8]]))
    assert torch.equal(project(*args, (1, 3, 3), box_scale=0.25, sampling="centre"), torch.zeros(1, 3, 3))
    overlap = project(*args, (1, 3, 3), box_scale=0.25)
    expected = torch.zeros(1, 3, 3)
    expected[0, 1, 1] = masks.max() * 0.5
    assert torch.equal(overlap, expected)


@pytest.mark.parametrize("sampling", SAMPLING)
def test_a_box_far_thinner_than_a_pixel_reads_only_the_pixel_it_lies_in(project, sampling):
    # A box 1e-20 pixels wide: every other column lies ~1e20 cells away, beyond int64 unless the cell edges are
    # clamped before they become integers (an unclamped edge turns into INT64_MIN and reads every cell). Kills the
    # reference's mutants that drop the upper clamp of the overlap rule's edges.
    masks = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    box = torch.tensor([[1e-20, 0.0, 2e-20, 4.0]])
    canvas = project(masks, torch.ones(1), torch.tensor([0]), box, (1, 4, 4), sampling=sampling)
    expected = torch.zeros(1, 4, 4)
    if sampling == "overlap":  # column 0 overlaps the box and reads both cell columns; the centre 0.5 is outside
        expected[0, :2, 0], expected[0, 2:, 0] = 0.2, 0.4
    assert torch.equal(canvas, expected)

def test_unknown_sampling_is_rejected():
    with pytest.raises(ValueError, match="sampling must be one of"):
        project_instance_masks(*bright_column_detection(0), (1, 8, 8), sampling="center")
    with pytest.raises(ValueError, match="sampling must be one of"):
        project_instance_masks_reference(*bright_column_detection(0), (1, 8, 8), sampling="nearest")


@pytest.mark.parametrize("sampling", SAMPLING)
def test_overlaps_keep_the_maximum_per_class_plane(project, sampling):
    masks = torch.tensor([[[0.2]], [[0.9]], [[0.7]]])
    scores = torch.ones(3)
    classes = torch.tensor([1, 1, 0])
    boxes = torch.tensor([[0.0, 0, 3, 1], [2.0, 0, 4, 1], [0.0, 0, 1, 1]])
    canvas = project(masks, scores, classes, boxes, (2, 1, 4), sampling=sampling)
    expected = torch.tensor([[[0.7, 0.0, 0.0, 0.0]], [[0.2, 0.2, 0.9, 0.9]]])
    assert torch.allclose(canvas, expected)


@pytest.mark.parametrize("sampling", SAMPLING)
def test_box_partly_outside_projects_its_visible_cells(project, sampling):
    masks = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    canvas = project(
        masks, torch.tensor([1.0]), torch.tensor([0]), torch.tensor([[-2.0, -2, 2, 2]]), (1, 4, 4), sampling=sampling
    )
    expected = torch.zeros(1, 4, 4)
    expected[0, :2, :2] = 0.4  # only cell (1, 1) covers pixels of the canvas
    assert torch.allclose(canvas, expected)


@pytest.mark.parametrize("overlap", [True, False])
def test_winner_records_the_flat_cell_index_and_ties_go_to_the_first_detection(overlap):
    masks = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])
    boxes = torch.tensor([[0.0, 0, 2, 1], [1.0, 0, 3, 1]])
    canvas, winner = torch.ops.panoptic_ros.imp_forward(
        masks, torch.ones(2), torch.tensor([0, 0]), boxes, 1, 1, 4, 1.0, overlap, True
    )
    assert torch.allclose(canvas, torch.tensor([[[0.5, 0.5, 0.5, 0.0]]]))
    # pixel 1: detection 0 cell 1 (index 1) and detection 1 cell 0 (index 2) tie; the first detection keeps it.
    assert winner.tolist() == [[[0, 1, 3, -1]]]


def test_overlap_ties_inside_one_detection_go_to_the_first_cell_in_row_major_order():
    # One pixel reads all four cells of a 2 x 2 mask; cells (0, 1) and (1, 0) tie for the maximum: (0, 1) wins,
    # in the kernel's winner and in the gradient of the kernel and of the reference alike.
    masks = torch.tensor([[[0.1, 0.6], [0.6, 0.2]]])
    args = (torch.ones(1), torch.tensor([0]), torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    _, winner = torch.ops.panoptic_ros.imp_forward(masks, *args, 1, 1, 1, 1.0, True, True)
    assert winner.tolist() == [[[1]]]
    for fn in (project_instance_masks, project_instance_masks_reference):
        m = masks.clone().requires_grad_()
        fn(m, *args, (1, 1, 1)).sum().backward()
        assert m.grad.tolist() == [[[0.0, 1.0], [0.0, 0.0]]], fn.__name__


@pytest.mark.parametrize(
    "classes, boxes",
    [
        ([5], [[0.0, 0, 4, 4]]),  # class outside [0, C)
        ([-1], [[0.0, 0, 4, 4]]),  # padding class
        ([0], [[2.0, 0, 2, 4]]),  # zero width
        ([0], [[0.0, 2, 4, 2]]),  # zero height
        ([0], [[3.0, 0, 1, 4]]),  # x2 < x1
        ([0], [[float("nan"), 0, 4, 4]]),
        ([0], [[0.0, 0, float("inf"), 4]]),
        ([0], [[10.0, 10, 14, 14]]),  # fully outside
        ([0], [[-3.0, 0, 0, 4]]),  # touches the canvas along its edge only
    ],
)
@pytest.mark.parametrize("sampling", SAMPLING)
def test_invalid_detections_project_nothing(project, classes, boxes, sampling):
    canvas = project(
        torch.ones(1, 2, 2), torch.ones(1), torch.tensor(classes), torch.tensor(boxes), (2, 4, 4), sampling=sampling
    )
    assert torch.equal(canvas, torch.zeros(2, 4, 4))


def test_a_box_holding_no_pixel_centre_projects_nothing_under_the_centre_rule_only(project):
    args = (torch.ones(1, 2, 2), torch.ones(1), torch.tensor([0]), torch.tensor([[1.1, 1.1, 1.4, 1.4]]))
    assert torch.equal(project(*args, (2, 4, 4), sampling="centre"), torch.zeros(2, 4, 4))
    assert torch.nonzero(project(*args, (2, 4, 4), sampling="overlap")).tolist() == [[0, 1, 1]]


@pytest.mark.parametrize("sampling", SAMPLING)
def test_negative_and_nan_values_never_reach_the_canvas(project, sampling):
    masks = torch.tensor([[[-0.5, float("nan")]]])
    box = torch.tensor([[0.0, 0, 2, 1]])
    canvas = project(masks, torch.ones(1), torch.tensor([0]), box, (1, 1, 2), sampling=sampling)
    assert torch.equal(canvas, torch.zeros(1, 1, 2))
    # A pixel reading a NaN cell and a valid one takes the valid one (the box is half a pixel wide).
    masks = torch.tensor([[[float("nan"), 0.3]]])
    canvas = project(masks, torch.ones(1), torch.tensor([0]), box / 4, (1, 1, 2), sampling="overlap")
    assert canvas.tolist() == [[[pytest.approx(0.3), 0.0]]]


def test_no_detections_and_empty_canvas():
    empty = project_instance_masks(torch.zeros(0, 28, 28), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), (3, 5, 7))
    assert torch.equal(empty, torch.zeros(3, 5, 7))
    masks, scores, classes, boxes = random_detections(4)
    assert project_instance_masks(masks, scores, classes, boxes, (0, 5, 7)).shape == (0, 5, 7)
    assert project_instance_masks(masks, scores, classes, boxes, (2, 0, 7)).shape == (2, 0, 7)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, s, c, b: (m[0], s, c, b), "masks must be"),
        (lambda m, s, c, b: (m, s[:-1], c, b), "scores must be"),
        (lambda m, s, c, b: (m, s.double(), c, b), "scores dtype"),
        (lambda m, s, c, b: (m, s, c[:-1], b), "classes must be"),
        (lambda m, s, c, b: (m, s, c, b[:, :3]), "boxes must be"),
        (lambda m, s, c, b: (m.long(), s.long(), c, b), "masks must be floating"),
    ],
)
def test_bad_arguments_raise_a_message_naming_them(change, message):
    args = change(*random_detections(5))
    with pytest.raises(RuntimeError, match=message):
        project_instance_masks(*args, (8, 16, 16))


# ---------------------------------------------------------------- kernels against the reference


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mask_hw", [(28, 28), (14, 14), (7, 11), (1, 1), (56, 56)])
def test_cpu_kernel_equals_reference_bit_for_bit(seed, mask_hw, sampling):
    canvas = (8, 48, 80)
    args = random_detections(24, mask_hw, canvas, box_scale=0.25, seed=seed)
    assert_same_bits(
        project_instance_masks(*args, canvas, box_scale=0.25, sampling=sampling),
        project_instance_masks_reference(*args, canvas, box_scale=0.25, sampling=sampling),
    )


@pytest.mark.parametrize("sampling", SAMPLING)
def test_cell_edges_on_pixel_boundaries_follow_the_float32_rule(sampling):
    # Box edges on a 0.1 grid with 10 cells put cell edges exactly on pixel centres and pixel edges in real
    # arithmetic, so the cells a pixel reads depend on float32 rounding. The kernel must round exactly as the
    # documented rule does.
    edges = torch.arange(0, 61, dtype=torch.float64) / 10
    lo, hi = torch.meshgrid(edges, edges, indexing="ij")
    keep = hi > lo
    x1, x2 = lo[keep].float(), hi[keep].float()
    n = x1.numel()
    boxes = torch.stack([x1, x1.flip(0), x2, x2.flip(0)], dim=1)
    masks = torch.rand((n, 10, 10), generator=torch.Generator().manual_seed(0))
    args = (masks, torch.rand(n, generator=torch.Generator().manual_seed(1)), torch.zeros(n, dtype=torch.long), boxes)
    assert_same_bits(
        project_instance_masks(*args, (1, 8, 8), sampling=sampling),
        project_instance_masks_reference(*args, (1, 8, 8), sampling=sampling),
    )

    # The case is sharp: evaluating the same rule in float64 would pick other cells for some pixels.
    overlap = sampling == "overlap"
    points = torch.arange(8, dtype=torch.float64) + (0.0 if overlap else 0.5)
    in_float64 = ((points[None] - x1[:, None].double()) * 10 / (x2 - x1)[:, None].double()).clamp(-1, 10).floor()
    in_float32 = torch.stack([cell_ranges(8, a, b - a, 10, overlap)[0] for a, b in zip(x1, x2)]).double()
    assert (in_float64.clamp(min=0 if overlap else -1) != in_float32).any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampling", SAMPLING)
def test_cpu_kernel_equals_reference_in_every_dtype(dtype, sampling):
    canvas = (4, 40, 56)
    args = random_detections(30, (28, 28), canvas, box_scale=0.5, seed=7, dtype=dtype)
    out = project_instance_masks(*args, canvas, box_scale=0.5, sampling=sampling)
    assert out.dtype == dtype
    assert_same_bits(out, project_instance_masks_reference(*args, canvas, box_scale=0.5, sampling=sampling))


@pytest.mark.parametrize("sampling", SAMPLING)
def test_large_number_of_detections(sampling):
    canvas = (8, 64, 128)
    args = random_detections(1000, (28, 28), canvas, box_scale=0.25, seed=3)
    assert_same_bits(
        project_instance_masks(*args, canvas, 0.25, sampling),
        project_instance_masks_reference(*args, canvas, 0.25, sampling),
    )


def test_overlap_canvas_dominates_the_centre_canvas():
    # Every cell the centre rule reads, the overlap rule reads too (the centre lies inside the pixel).
    canvas = (8, 48, 80)
    args = random_detections(60, (28, 28), canvas, box_scale=0.25, seed=14)
    centre = project_instance_masks(*args, canvas, 0.25, "centre")
    overlap = project_instance_masks(*args, canvas, 0.25, "overlap")
    assert (overlap >= centre).all() and (overlap > centre).any()


def test_non_contiguous_inputs_give_the_contiguous_result():
    masks, scores, classes, boxes = random_detections(20, (28, 28), seed=5)
    canvas = (8, 64, 96)
    expected = project_instance_masks(masks, scores, classes, boxes, canvas, 0.25)
    masks_t = masks.transpose(1, 2).contiguous().transpose(1, 2)
    scores_s = torch.stack([scores, scores], 1)[:, 0]
    classes_s = torch.stack([classes, classes], 1)[:, 1]
    boxes_t = boxes.t().contiguous().t()
    assert not (masks_t.is_contiguous() or scores_s.is_contiguous() or boxes_t.is_contiguous())
    assert_same_bits(project_instance_masks(masks_t, scores_s, classes_s, boxes_t, canvas, 0.25), expected)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("sampling", SAMPLING)
def test_gradients_equal_reference_autograd(sampling):
    canvas = (4, 32, 48)
    masks, scores, classes, boxes = random_detections(12, (7, 7), canvas, box_scale=0.5, seed=11, dtype=torch.float64)
    weight = torch.rand(canvas, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (project_instance_masks, project_instance_masks_reference):
        m, s = masks.clone().requires_grad_(), scores.clone().requires_grad_()
        (fn(m, s, classes, boxes, canvas, 0.5, sampling) * weight).sum().backward()
        grads.append((m.grad, s.grad))
    assert grads[0][0].abs().sum() > 0 and grads[0][1].abs().sum() > 0
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("overlap", [True, False])
def test_canvas_is_the_same_with_and_without_the_winner_index(overlap):
    canvas = (8, 48, 80)
    args = random_detections(40, (28, 28), canvas, box_scale=0.25, seed=10)
    plain, no_winner = torch.ops.panoptic_ros.imp_forward(*args, *canvas, 0.25, overlap, False)
    traced, winner = torch.ops.panoptic_ros.imp_forward(*args, *canvas, 0.25, overlap, True)
    assert no_winner.numel() == 0 and winner.shape == canvas
    assert_same_bits(plain, traced)
    with pytest.raises(RuntimeError, match="with_winner=True"):
        torch.ops.panoptic_ros.imp_backward(torch.ones(canvas), no_winner, *args, 0.25, overlap)


@pytest.mark.parametrize("sampling", SAMPLING)
def test_gradcheck_float64(sampling):
    canvas = (3, 12, 16)
    masks, scores, classes, boxes = random_detections(6, (5, 4), canvas, box_scale=0.5, seed=2, dtype=torch.float64)
    masks.requires_grad_()
    scores.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda m, s: project_instance_masks(m, s, classes, boxes, canvas, 0.5, sampling), (masks, scores),
        eps=1e-6, atol=1e-8,
    )


def test_tied_pixels_send_their_gradient_to_the_first_detection_only(project):
    masks = torch.full((2, 1, 1), 0.5, requires_grad=True)
    scores = torch.ones(2, requires_grad=True)
    boxes = torch.tensor([[0.0, 0, 2, 1], [0.0, 0, 2, 1]])
    project(masks, scores, torch.tensor([0, 0]), boxes, (1, 1, 2)).sum().backward()
    assert masks.grad.flatten().tolist() == [2.0, 0.0]
    assert scores.grad.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("overlap", [True, False])
def test_opcheck_forward_and_backward(overlap):
    canvas = (4, 24, 32)
    masks, scores, classes, boxes = random_detections(8, (7, 7), canvas, box_scale=0.5, seed=4)
    for with_winner in (True, False):
        fwd_args = (masks.requires_grad_(with_winner), scores, classes, boxes, *canvas, 0.5, overlap, with_winner)
        torch.library.opcheck(torch.ops.panoptic_ros.imp_forward.default, fwd_args)
    canvas_out, winner = torch.ops.panoptic_ros.imp_forward(masks, scores, classes, boxes, *canvas, 0.5, overlap, True)
    bwd_args = (torch.rand_like(canvas_out), winner, masks.detach(), scores.detach(), classes, boxes, 0.5, overlap)
    torch.library.opcheck(torch.ops.panoptic_ros.imp_backward.default, bwd_args)


def test_torch_compile_fullgraph_matches_eager():
    canvas = (4, 24, 32)
    masks, scores, classes, boxes = random_detections(8, (7, 7), canvas, box_scale=0.5, seed=6)

    def features(m, s):
        return torch.sigmoid(project_instance_masks(m, s, classes, boxes, canvas, 0.5) * 3.0).sum()

    compiled = torch.compile(features, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (features, compiled):
        m, s = masks.clone().requires_grad_(), scores.clone().requires_grad_()
        out = fn(m, s)
        out.backward()
        results.append((out.detach(), m.grad, s.grad))
    for eager, comp in zip(*results):
        torch.testing.assert_close(eager, comp)


def test_torch_export_keeps_the_operator():
    class Projector(torch.nn.Module):
        def forward(self, masks, scores, classes, boxes):
            return project_instance_masks(masks, scores, classes, boxes, (4, 24, 32), 0.5)

    args = random_detections(8, (7, 7), (4, 24, 32), box_scale=0.5, seed=8)
    exported = torch.export.export(Projector(), args)
    assert "panoptic_ros.imp_forward" in str(exported.graph)
    assert_same_bits(exported.module()(*args), Projector()(*args))


# ---------------------------------------------------------------- missing extension


def test_missing_extension_is_an_explicit_error_or_a_logged_fallback(monkeypatch, caplog):
    args = random_detections(6, (7, 7), (2, 16, 16), box_scale=0.5, seed=9)
    monkeypatch.setattr(imp, "_LOAD_ERROR", ImportError("simulated: no _C"))
    monkeypatch.setattr(imp, "_warned_fallback", False)
    monkeypatch.delenv(imp.FALLBACK_ENV, raising=False)
    with pytest.raises(RuntimeError, match="simulated: no _C.*make setup"):
        project_instance_masks(*args, (2, 16, 16), 0.5)
    monkeypatch.setenv(imp.FALLBACK_ENV, "1")
    with caplog.at_level(logging.WARNING, logger=imp.__name__):
        out = project_instance_masks(*args, (2, 16, 16), 0.5)
    assert "pure-PyTorch reference" in caplog.text
    assert_same_bits(out, project_instance_masks_reference(*args, (2, 16, 16), 0.5))


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@cuda
@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_forward_and_winner_equal_cpu_bit_for_bit(seed, dtype, overlap):
    canvas = (8, 64, 128)
    args = random_detections(200, (28, 28), canvas, box_scale=0.25, seed=seed, dtype=dtype)
    cpu = torch.ops.panoptic_ros.imp_forward(*args, *canvas, 0.25, overlap, True)
    gpu = torch.ops.panoptic_ros.imp_forward(*(a.cuda() for a in args), *canvas, 0.25, overlap, True)
    assert_same_bits(gpu[0].cpu(), cpu[0])
    assert torch.equal(gpu[1].cpu(), cpu[1])


@cuda
@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_backward_equals_cpu_bit_for_bit(dtype, sampling):
    canvas = (8, 64, 128)
    masks, scores, classes, boxes = random_detections(100, (28, 28), canvas, box_scale=0.25, seed=12, dtype=dtype)
    weight = torch.rand(canvas, dtype=dtype, generator=torch.Generator().manual_seed(2))
    grads = []
    for device in ("cpu", "cuda"):
        m = masks.to(device).requires_grad_()
        s = scores.to(device).requires_grad_()
        out = project_instance_masks(m, s, classes.to(device), boxes.to(device), canvas, 0.25, sampling)
        (out * weight.to(device)).sum().backward()
        grads.append((m.grad.cpu(), s.grad.cpu()))
    assert_same_bits(grads[1][0], grads[0][0])
    assert_same_bits(grads[1][1], grads[0][1])


@cuda
@pytest.mark.parametrize("sampling", SAMPLING)
def test_cuda_edge_cases(sampling):
    empty = project_instance_masks(
        torch.zeros(0, 28, 28, device="cuda"), torch.zeros(0, device="cuda"),
        torch.zeros(0, dtype=torch.long, device="cuda"), torch.zeros(0, 4, device="cuda"), (3, 5, 7),
    )
    assert torch.equal(empty.cpu(), torch.zeros(3, 5, 7))
    canvas = (8, 64, 128)
    args = random_detections(1000, (28, 28), canvas, box_scale=0.25, seed=13)
    masks_t = args[0].transpose(1, 2).contiguous().transpose(1, 2)
    gpu = project_instance_masks(masks_t.cuda(), *(a.cuda() for a in args[1:]), canvas, 0.25, sampling)
    assert_same_bits(gpu.cpu(), project_instance_masks_reference(*args, canvas, 0.25, sampling))
