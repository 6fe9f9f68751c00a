"""One inference path for both modes: the Predictor runs a weights file of either family through the family's
post-processor; weights carry their architecture and post-processing; the accuracy mode's post-processor on a
hand-built network output; backends and precisions that do not fit the accuracy mode are refused with the reason."""

import numpy as np
import pytest
import torch

from panoptic_ros.backends import BackendError
from panoptic_ros.checkpoint import read_weights
from panoptic_ros.classes import CAMVID
from panoptic_ros.config import (ConfigError, DetectionPostprocessConfig, ModelConfig, PanopticFPNConfig,
                                 PostprocessConfig, config_from_dict)
from panoptic_ros.predictor import DEFAULT_WEIGHTS, NetworkOutput, Predictor, postprocess_panoptic_fpn

ROAD, CAR = 3, 8


def raw_output(scores=(0.9, 0.3)) -> NetworkOutput:
    """A 16 x 24 network input for a 32 x 48 image: road everywhere; a car box (4, 4)-(12, 12) with a full mask
    scoring 0.9 and a second box scoring 0.3."""
    logits = torch.zeros(len(CAMVID), 4, 6)
    logits[ROAD] = 5.0
    detections = {"boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0], [14.0, 2.0, 22.0, 14.0]]),
                  "labels": torch.tensor([CAR, CAR]), "scores": torch.tensor(scores),
                  "masks": torch.ones(2, 28, 28)}
    return NetworkOutput({"semantic": logits, "detections": detections}, (32, 48), (16, 24), {"model": 1.0})


def test_accuracy_postprocess_pastes_scaled_masks_and_merges_into_a_prediction():
    p = postprocess_panoptic_fpn(raw_output(), CAMVID, DetectionPostprocessConfig(stuff_min_area=0))
    assert p.semantic.shape == (32, 48) and p.semantic.dtype == torch.uint8
    car = p.instances == 0
    # box x2 (network input -> image): (8, 8)-(24, 24); the full mask pastes onto it (its edge cells half-weight)
    assert bool(car[9:23, 9:23].all()) and not bool(car[:7].any()) and not bool(car[:, 25:].any())
    assert int(p.instances.max()) == 0  # the 0.3 detection is under score_threshold 0.5
    assert bool((p.semantic[car] == CAR).all()) and bool((p.semantic[~car] == ROAD).all())
    assert [(s.id, s.class_id) for s in p.segments] == [(ROAD, ROAD), (CAR * 1000, CAR)]
    assert p.segments[1].score == pytest.approx(0.9) and p.segments[1].area == int(car.sum())
    assert set(p.panoptic.unique().tolist()) == {ROAD, CAR * 1000}
    assert {"model", "semantic", "merge"} == set(p.timings)


def test_accuracy_postprocess_thresholds_and_the_fusion_switch():
    low = postprocess_panoptic_fpn(raw_output(), CAMVID, DetectionPostprocessConfig(score_threshold=0.2))
    assert int(low.instances.max()) == 1
    # fusion: the semantic map (all road) decides foreground, so no car pixel survives
    fused = postprocess_panoptic_fpn(raw_output(), CAMVID, DetectionPostprocessConfig(merge="fusion"))
    assert int(fused.instances.max()) == -1 and [s.id for s in fused.segments] == [ROAD]


@pytest.fixture(scope="module")
def accuracy(tiny_fpn_weights):
    return Predictor.from_weights(tiny_fpn_weights, device="cpu", backend="eager")


def test_the_predictor_runs_either_family_from_its_weights_file(accuracy, tiny_weights):
    rgb = np.random.default_rng(0).integers(0, 256, (70, 100, 3), np.uint8)
    fast = Predictor.from_weights(tiny_weights, device="cpu", backend="eager")
    assert (fast.mode, fast.architecture, accuracy.mode, accuracy.architecture) == (
        "fast", "panonet", "accuracy", "panoptic_fpn")
    assert isinstance(accuracy.postprocess, DetectionPostprocessConfig) and accuracy.bandwidths == {}
    for predictor, stages in ((fast, {"clustering"}), (accuracy, {"semantic"})):
        p = predictor(rgb)
        assert p.semantic.shape == p.instances.shape == p.panoptic.shape == p.segment_map.shape == (70, 100)
        assert {"preprocess", "model", "merge"} | stages == set(p.timings)
        index = p.segment_map.long()
        for k, s in enumerate(p.segments):
            assert bool((p.semantic[index == k + 1] == s.class_id).all())
    scaled = accuracy(rgb, scale=0.7)  # boxes come back to image pixels
    assert scaled.panoptic.shape == (70, 100) and any(s.is_thing for s in scaled.segments)


def test_accuracy_weights_run_eager_only_and_fp32_on_the_cpu(tiny_fpn_weights):
    assert Predictor.from_weights(tiny_fpn_weights, device="cpu", backend="auto").backend == "eager"
    for backend in ("onnxruntime", "tensorrt"):
        with pytest.raises(BackendError, match="runs eager only"):
            Predictor.from_weights(tiny_fpn_weights, device="cpu", backend=backend)
    # configure-time: allowed
    half = Predictor.from_weights(tiny_fpn_weights, device="cpu", backend="eager", precision="bf16")
    with pytest.raises(ValueError, match="precision 'bf16' on the CPU is not allowed"):
        half(np.zeros((64, 64, 3), np.uint8))


def test_weights_carry_architecture_and_postprocess_and_old_panonet_files_still_load(tiny_fpn_weights):
    _, model_cfg, post_cfg, _ = read_weights(DEFAULT_WEIGHTS)  # shipped before the accuracy mode, unchanged
    assert type(model_cfg) is ModelConfig and type(post_cfg) is PostprocessConfig and post_cfg.bandwidths
    assert Predictor.from_weights().mode == "fast"
    _, model_cfg, post_cfg, _ = read_weights(tiny_fpn_weights)
    assert type(model_cfg) is PanopticFPNConfig and model_cfg.backbone == "resnet18"
    assert post_cfg == DetectionPostprocessConfig(score_threshold=0.0, stuff_min_area=0)


def test_panoptic_fpn_config_rejects_bad_values_naming_key_value_and_what_is_allowed():
    base = {"architecture": "panoptic_fpn"}
    cases = [({**base, "backbone": "resnet9"}, "model.backbone = 'resnet9' is not allowed: expected one of"),
             ({**base, "thing_classes": [9, 8]}, "model.thing_classes = (9, 8) is not allowed: expected distinct"),
             ({**base, "semantic_features": "none", "imp": False}, "model.imp = False is not allowed"),
             ({**base, "backbone_norm": "gn", "backbone_weights": "imagenet"}, "model.backbone_weights = 'imagenet'"),
             ({"architecture": "maskrcnn"}, "architecture = 'maskrcnn' is not allowed: expected one of")]
    for model, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config_from_dict({"model": model, "data": {"crop": [64, 64]}})
    with pytest.raises(ConfigError, match="postprocess.merge = 'vote' is not allowed"):
        config_from_dict({"model": base, "postprocess": {"merge": "vote"}, "data": {"crop": [64, 64]}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bandwidths'\]"):  # PanoNet's, not this family's
        config_from_dict({"model": base, "postprocess": {"bandwidths": {8: 1.0}}, "data": {"crop": [64, 64]}})
    with pytest.raises(ConfigError, match="data.crop = .* each >= 64 for panoptic_fpn"):
        config_from_dict({"model": base, "data": {"crop": [32, 64]}})
    with pytest.raises(ConfigError, match="train.stage = 'detector' is not allowed: expected full for panonet"):
        config_from_dict({"train": {"stage": "detector"}})


def test_tools_run_accuracy_weights_through_the_same_predictor(toy_camvid, tiny_fpn_weights, tmp_path):
    from panoptic_ros import demo
    from panoptic_ros.evaluate_bag import main as evaluate_bag
    from panoptic_ros.make_bag import main as make_bag
    from panoptic_ros.predictor import mode_of_weights

    assert mode_of_weights(tiny_fpn_weights) == "accuracy" and mode_of_weights(DEFAULT_WEIGHTS) == "fast"
    make_bag(["--dataset", "camvid", "--root", str(toy_camvid), "--split", "val", "--out", str(tmp_path / "toy.mcap")])
    out = tmp_path / "eval"
    assert evaluate_bag([str(tmp_path / "toy.mcap"), "--weights", str(tiny_fpn_weights), "--out", str(out),
                         "--device", "cpu"]) == 0
    report = __import__("json").loads((out / "report.json").read_text())
    assert report["images"] == 4 and report["run"]["mode"] == "accuracy"
    assert set(report["latency_ms"]) == {"preprocess", "model", "semantic", "merge", "total"}
    image = np.zeros((64, 96, 3), np.uint8)
    label = np.full((64, 96), 3, np.uint8)
    (tmp_path / "demo").mkdir()
    summary = demo.run_panoptic(image, label, tmp_path / "demo", tiny_fpn_weights)
    assert set(summary["latency_ms"]) == {"preprocess", "model", "semantic", "merge"}
    assert (tmp_path / "demo" / "panoptic_overlay.png").is_file()


def test_accuracy_postprocess_passes_every_merge_setting_and_fills_the_output_buffers(monkeypatch):
    """Each ``DetectionPostprocessConfig`` value (none at its default) reaches ``merge_detections`` under its own
    keyword, and the final maps are computed into the caller's buffers. Kills ``postprocess_panoptic_fpn`` 51, 61-64
    (``mask_threshold``, ``overlap_threshold``, ``stuff_min_area``, ``min_new_area`` dropped or None) and 112, 118
    (a buffer not passed to ``to_output``)."""
    import panoptic_ros.predictor as predictor
    from panoptic_ros.predictor import OutputBuffers

    seen = {}
    real = predictor.merge_detections

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "merge_detections", spy)
    config = DetectionPostprocessConfig(merge="panoptic_fpn", score_threshold=0.25, overlap_threshold=0.35,
                                        mask_threshold=0.45, stuff_min_area=7, min_new_area=9)
    raw = raw_output()
    raw.out = OutputBuffers(semantic=torch.full((32, 48), 99, dtype=torch.uint8),
                            segment_map=torch.full((32, 48), -5, dtype=torch.int16))
    p = postprocess_panoptic_fpn(raw, CAMVID, config)
    assert {k: seen[k] for k in ("merge", "score_threshold", "overlap_threshold", "mask_threshold", "stuff_min_area",
                                 "min_new_area")} == {"merge": "panoptic_fpn", "score_threshold": 0.25,
                                                      "overlap_threshold": 0.35, "mask_threshold": 0.45,
                                                      "stuff_min_area": 7, "min_new_area": 9}
    assert p.semantic.data_ptr() == raw.out.semantic.data_ptr() and int(raw.out.semantic.max()) < len(CAMVID)
    assert p.segment_map.data_ptr() == raw.out.segment_map.data_ptr() and int(raw.out.segment_map.min()) >= -1


def test_family_of_refuses_a_network_of_no_architecture_by_name():
    """Kills ``family_of``'s mutants 2-4 (the message dropped, the type's name or the architecture list lost: the
    last raised TypeError instead): a network that is none of ``ARCHITECTURES`` is refused by its class name."""
    from panoptic_ros.predictor import family_of

    with pytest.raises(ValueError) as refused:
        family_of(torch.nn.Linear(1, 1))
    assert str(refused.value) == "Linear is not one of the architectures ['panonet', 'panoptic_fpn']"
