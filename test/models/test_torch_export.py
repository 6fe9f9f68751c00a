"""torch.export of the shipped PanoNet: the whole network is one graph (what torch-tensorrt's dynamo frontend and
AOT compilation stand on), in fp32 and fp16, and the exported program computes what the eager module does."""

import pytest
import torch

from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
def test_panonet_exports_as_one_graph_and_matches_eager(dtype, tolerance):
    model = Predictor.from_weights(DEFAULT_WEIGHTS, device="cpu", backend="eager").model.to(dtype).eval()
    images = torch.randn(1, 3, 96, 128).to(dtype)
    with torch.inference_mode():
        expected = model(images)
    program = torch.export.export(model, (images,))  # raises on anything it cannot capture: no graph breaks
    assert not any(node.op == "call_module" for node in program.graph.nodes)  # fully traced into aten ops
    with torch.inference_mode():
        got = program.module()(images)
    for key in ("semantic", "embedding"):
        assert got[key].dtype == dtype and got[key].shape == expected[key].shape, key
        scale = expected[key].float().abs().max().clamp(min=1)
        assert (got[key].float() - expected[key].float()).abs().max() / scale < tolerance, key
