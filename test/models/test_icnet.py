"""ICNet's pyramid pooling as matrix products against its reference, torch's adaptive pooling and interpolation."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from panoptic_ros.models.icnet import PyramidPooling, _cached_pyramid_matrices, adaptive_pool_matrix, upsample_matrix


def reference_pyramid_pooling(x, bins=(1, 2, 3, 6)):
    out = x
    for b in bins:
        out = out + F.interpolate(F.adaptive_avg_pool2d(x, b), size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
    return out


# Bins that divide the map and bins that do not (overlapping bins: 6 of 11 rows), maps smaller than the bins
# (a 1 x 1 map, 2 rows for 6 bins), and the 1/32 map of a 1024 x 512 frame.
SHAPES = [(2, 3, 11, 15), (1, 4, 1, 1), (1, 2, 2, 9), (1, 3, 7, 5), (1, 8, 16, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_pyramid_pooling_equals_pooling_and_interpolation(shape):
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(PyramidPooling()(x), reference_pyramid_pooling(x), rtol=0, atol=1e-12)
    x32 = x.float()
    torch.testing.assert_close(PyramidPooling()(x32), reference_pyramid_pooling(x32), rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_pyramid_pooling_gradient_equals_the_reference(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((PyramidPooling()(x) * weight).sum(), x)
    (expected,) = torch.autograd.grad((reference_pyramid_pooling(x) * weight).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_pyramid_pooling_keeps_channels_last_inputs_right():
    x = torch.randn(2, 3, 11, 15).to(memory_format=torch.channels_last)
    torch.testing.assert_close(PyramidPooling()(x), reference_pyramid_pooling(x.contiguous()), rtol=0, atol=2e-6)


def test_adaptive_pool_matrix_rows_are_the_bins():
    """Bin i of n = 7 cells into 3 is [floor(7 i / 3), ceil(7 (i + 1) / 3)): cells 0-2, 2-4, 4-6 (overlapping)."""
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]]) / 3
    torch.testing.assert_close(adaptive_pool_matrix(7, 3, dtype=torch.float64), expected.double())


def test_upsample_matrix_rows_are_the_bilinear_weights():
    """2 cells to 5 (align_corners=False): sources max(0, (i + 0.5) * 2 / 5 - 0.5) = 0, 0.1, 0.5, 0.9, 1.3; the last
    is past the last cell, which takes all of its weight."""
    expected = torch.tensor([[1, 0], [0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0, 1]], dtype=torch.float64)
    torch.testing.assert_close(upsample_matrix(5, 2, dtype=torch.float64), expected)


def test_pyramid_pooling_trains_after_inference_on_the_same_map_size():
    """Eager calls reuse a map size's matrices: made first under inference mode (as the Predictor runs), they must
    still serve a training step's backward (inference tensors cannot be saved for it). The second call is a hit of
    the cache (mutant 18 of ``PyramidPooling.forward`` built the matrices on every call)."""
    pooling = PyramidPooling()
    with torch.inference_mode():
        pooling(torch.randn(1, 2, 13, 17))
    hits = _cached_pyramid_matrices.cache_info().hits
    x = torch.randn(1, 2, 13, 17, requires_grad=True)
    pooling(x).sum().backward()
    assert _cached_pyramid_matrices.cache_info().hits == hits + 1
    torch.testing.assert_close(x.grad, torch.autograd.grad(reference_pyramid_pooling(x).sum(), x)[0], rtol=0,
                               atol=1e-5)


def test_an_export_first_leaves_eager_calls_of_that_size_real_matrices():
    """torch.export traces the matrices into the graph rather than through the eager cache: cached during a trace
    they would be fake tensors, and the next eager call of that map size would return one (mutants 4 and 17 of
    ``PyramidPooling.forward``, which take the cached path while exporting). The size is one no other test uses, so
    the export is its first call."""
    x = torch.randn(1, 2, 5, 19)
    exported = torch.export.export(PyramidPooling(), (x,))
    torch.testing.assert_close(exported.module()(x), reference_pyramid_pooling(x), rtol=0, atol=2e-6)
    eager = PyramidPooling()(x)
    assert type(eager) is torch.Tensor
    torch.testing.assert_close(eager, reference_pyramid_pooling(x), rtol=0, atol=2e-6)


def test_torch_compile_traces_the_matrices_whole_without_the_cache():
    """Under torch.compile too the matrices are built in the graph: one full graph, and no warning from dynamo about
    tracing through the ``lru_cache`` of eager calls (mutant 5 of ``PyramidPooling.forward``, ``and`` for ``or``,
    takes the cached path when compiling but not exporting)."""
    x = torch.randn(1, 2, 7, 23)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = torch.compile(PyramidPooling(), backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(out, reference_pyramid_pooling(x), rtol=0, atol=2e-6)


@pytest.mark.parametrize("height, width, aligned", [(352, 480, True), (64, 96, True), (360, 480, False),
                                                    (72, 100, False)])
def test_branches_are_exact_halves_only_at_multiples_of_the_input_divisor(height, width, aligned):
    """At sides that are multiples of ``INPUT_DIVISOR`` the encoder's three outputs are exactly 1/8, 1/16 and 1/32
    of the input, so each cascade fusion upsamples a map by exactly 2x; at a 360 x 480 CamVid frame the 1/16 map
    has 23 rows and the 1/32 map 11 (not 22.5 and 11.25): the fused grids are shifted against each other, which is
    why ``models.network_input_size`` resizes PanoNet's inputs to such multiples."""
    from panoptic_ros.models import build_model, network_input_size
    from panoptic_ros.models.icnet import ICNetEncoder

    encoder = ICNetEncoder(width=0.125, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        f8, f16, f32 = encoder(torch.zeros(1, 3, height, width))
    sizes = [tuple(f.shape[-2:]) for f in (f8, f16, f32)]
    exact = [(height / s, width / s) for s in (8, 16, 32)]
    assert (sizes == exact) == aligned
    assert ((height % ICNetEncoder.INPUT_DIVISOR == 0) and (width % ICNetEncoder.INPUT_DIVISOR == 0)) == aligned
    model = build_model("panonet", num_classes=11, width=0.125, depths=(1, 1, 1, 1))
    resized = network_input_size(model, height, width)
    assert all(side % 32 == 0 for side in resized) and (resized == (height, width)) == aligned
