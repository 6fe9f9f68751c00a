"""Shipped weights rebuild their network; wrong, corrupt or NaN files fail with a message saying what was expected."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from panoptic_ros.checkpoint import WeightsError, load_model, save_weights
from panoptic_ros.config import config_from_dict
from panoptic_ros.models import build_model

TINY = {"model": {"num_classes": 4, "width": 0.125, "depths": [1, 1, 1, 1]}, "postprocess": {"bandwidths": {2: 0.7}}}


@pytest.fixture
def saved(tmp_path):
    cfg = config_from_dict(TINY)
    torch.manual_seed(0)
    model = build_model("panonet", **cfg.model.kwargs()).eval()
    path = save_weights(model, cfg, tmp_path / "w.safetensors", half=True, info={"note": "test"})
    return model, cfg, path


def test_round_trip_rebuilds_the_network(saved):
    model, cfg, path = saved
    loaded, model_cfg, post_cfg, info = load_model(path)
    assert model_cfg == cfg.model and post_cfg.bandwidth(2) == 0.7 and info["note"] == "test"
    for key, value in model.state_dict().items():  # fp16 storage: equal after the same rounding
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], expected), key
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = loaded(images)["semantic"]
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


def test_mismatched_weights_name_what_was_expected(saved, tmp_path):
    _, _, path = saved
    state = load_file(str(path))
    del state["semantic_decoder.head.weight"]
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=metadata)
    with pytest.raises(WeightsError, match=r"does not match a panonet .*missing \['semantic_decoder.head.weight'\]"):
        load_model(broken)
    state = load_file(str(path))
    state["semantic_decoder.head.bias"] = torch.full_like(state["semantic_decoder.head.bias"], float("nan"))
    save_file(state, str(broken), metadata=metadata)
    with pytest.raises(WeightsError, match="semantic_decoder.head.bias holds NaN"):
        load_model(broken)


def test_unreadable_or_foreign_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(tmp_path / "none.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="expected metadata format 'panoptic_ros.weights.v1'"):
        load_model(foreign)


def test_rewriting_postprocess_keeps_the_network(saved, tmp_path):
    import dataclasses

    from panoptic_ros.checkpoint import read_weights, save_state

    _, _, path = saved
    state, model_cfg, post_cfg, info = read_weights(path)
    tuned = dataclasses.replace(post_cfg, bandwidths={8: 0.35, 9: 0.7})
    out = save_state(state, model_cfg, tuned, info, tmp_path / "tuned.safetensors")
    state2, model_cfg2, post_cfg2, info2 = read_weights(out)
    assert post_cfg2.bandwidths == {8: 0.35, 9: 0.7} and model_cfg2 == model_cfg and info2 == info
    assert all(torch.equal(state[k], state2[k]) for k in state)


@pytest.mark.parametrize("scale", [0.0, 5.0, "1.1", True, None])
def test_an_input_scale_outside_the_predictors_range_is_refused(saved, tmp_path, scale):
    """The ``input_scale`` a file carries is the scale every tool runs it at by default: a value the Predictor
    would refuse, or no number at all, is refused when the file is read, naming it."""
    from panoptic_ros.checkpoint import read_weights, save_state

    state, model_cfg, post_cfg, info = read_weights(saved[2])
    path = save_state(state, model_cfg, post_cfg, {**info, "input_scale": scale}, tmp_path / "scaled.safetensors")
    with pytest.raises(WeightsError, match=rf"input_scale {scale!r} in its metadata is not a number in \[0.05, 4\]"):
        read_weights(path)
    good = save_state(state, model_cfg, post_cfg, {**info, "input_scale": 4}, tmp_path / "good.safetensors")
    assert read_weights(good)[3]["input_scale"] == 4
