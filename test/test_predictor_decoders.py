"""One Predictor for PanoNet's three instance decoders (issue #13 item 4): a weights file records
``model.instance_decoder`` and its post-processing config, and the Predictor picks the decoder's post-processor
(mean shift, DCME vote grouping, Bridging box voting), each ending in the same panoptic merge. Old files without
the key stay embedding files; settings of one decoder are refused for another, naming key, value and what is
allowed."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from panoptic_ros.backends import onnxruntime_available
from panoptic_ros.checkpoint import read_weights, save_weights
from panoptic_ros.classes import CAMVID
from panoptic_ros.config import (BridgingPostprocessConfig, ConfigError, DCMEPostprocessConfig, ModelConfig,
                                 PostprocessConfig, config_from_dict)
from panoptic_ros.decoders import bridging_targets, dcme_targets
from panoptic_ros.models import build_model
from panoptic_ros.postprocess import INSTANCE_OFFSET, VOID_ID
from panoptic_ros.predictor import (DEFAULT_WEIGHTS, NetworkOutput, Predictor, postprocess_bridging,
                                    postprocess_dcme, postprocess_panonet)

ROAD, POLE, CAR, PEDESTRIAN = 3, 5, 8, 9
DECODERS = {"embedding": ({}, PostprocessConfig, postprocess_panonet),
            "dcme": ({}, DCMEPostprocessConfig, postprocess_dcme),
            "bridging": ({"thing_classes": list(CAMVID.thing_ids)}, BridgingPostprocessConfig, postprocess_bridging)}


def tiny_config(decoder: str):
    extra = DECODERS[decoder][0]
    return config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1],
                                       "instance_decoder": decoder, **extra},
                             "postprocess": {"min_instance_pixels": 1, "stuff_min_area": 0}})


@pytest.fixture(scope="module", params=list(DECODERS))
def saved(request, tmp_path_factory):
    """A randomly initialised tiny PanoNet of each decoder, biased towards cars, saved as a weights file."""
    cfg = tiny_config(request.param)
    torch.manual_seed(0)
    model = build_model("panonet", **cfg.model.kwargs())
    with torch.no_grad():
        model.semantic_decoder.head.bias[CAR] = 3.0
    return request.param, save_weights(model, cfg, tmp_path_factory.mktemp("w") / f"{request.param}.safetensors")


def test_a_weights_file_of_each_decoder_runs_through_the_one_predictor(saved):
    decoder, path = saved
    _, post_class, postprocessor = DECODERS[decoder]
    assert json.loads(safe_open(str(path), "pt").metadata()["model"])["instance_decoder"] == decoder
    predictor = Predictor.from_weights(path, device="cpu", backend="eager")
    assert (predictor.mode, predictor.instance_decoder) == ("fast", decoder)
    assert type(predictor.postprocess) is post_class and predictor.family.postprocess is postprocessor
    assert predictor.bandwidths == ({c: 0.5 for c in CAMVID.thing_ids} if decoder == "embedding" else {})

    rgb = np.random.default_rng(0).integers(0, 256, (90, 130, 3), np.uint8)
    p = predictor(rgb)
    assert p.semantic.shape == p.instances.shape == p.panoptic.shape == p.segment_map.shape == (90, 130)
    assert (p.semantic.dtype, p.instances.dtype, p.panoptic.dtype, p.segment_map.dtype) == (
        torch.uint8, torch.int64, torch.int32, torch.int16)
    assert set(p.timings) == {"preprocess", "model", "clustering", "merge"}
    assert any(s.is_thing for s in p.segments)  # the decoder's instances reached the merge
    ids_of_index = np.array([VOID_ID] + [s.id for s in p.segments])
    np.testing.assert_array_equal(ids_of_index[p.segment_map.numpy()], p.panoptic.numpy())
    index = p.segment_map.long()
    for k, s in enumerate(p.segments):
        assert int((index == k + 1).sum()) == s.area > 0 and bool((p.semantic[index == k + 1] == s.class_id).all())
        assert (s.id // INSTANCE_OFFSET == s.class_id) if s.is_thing else (s.id == s.class_id)
        assert 0 <= s.score <= 1
    inst = p.instances.numpy()
    assert np.isin(p.semantic.numpy()[inst >= 0], CAMVID.thing_ids).all()
    # each instance id is one thing segment
    things = {s.id for s in p.segments if s.is_thing}
    assert len(things) == len(np.unique(inst[inst >= 0]))


def scene():
    """A 12 x 16 network grid (48 x 64 image): road, two touching 4 x 4 cars side by side, a car split in two by a
    pole, a thin pedestrian. Returns (instance ids [12, 16], semantic [12, 16], logits [11, 12, 16])."""
    ids = torch.full((12, 16), -1, dtype=torch.int64)
    ids[1:5, 1:5] = 0
    ids[1:5, 5:9] = 1
    ids[7:10, 1:4] = 2
    ids[7:10, 5:8] = 2  # the same car, behind the pole at column 4
    ids[2:8, 12] = 3
    semantic = torch.full((12, 16), ROAD, dtype=torch.int64)
    semantic[ids >= 0] = CAR
    semantic[ids == 3] = PEDESTRIAN
    semantic[6:11, 4] = POLE
    logits = torch.zeros(11, 12, 16).scatter_(0, semantic[None], 6.0)
    return ids, semantic, logits


def raw(logits, instance_output):
    return NetworkOutput({"semantic": logits, "embedding": instance_output}, (48, 64), (48, 64), {"model": 1.0})


#: Each instance's class and cells in image pixels (x 4): the rows and columns of its box.
BOXES = [(CAR, slice(4, 20), slice(4, 20)), (CAR, slice(4, 20), slice(20, 36)),  # the touching pair
         (CAR, slice(28, 40), slice(4, 32)),  # the occluded car, both parts and the pole between them
         (PEDESTRIAN, slice(8, 32), slice(48, 52))]


def check_scene(p) -> dict[int, int]:
    """Every thing pixel of the published (bilinearly upsampled) semantic map is in the instance whose cells hold
    it, one segment per instance: the touching cars are two, the occluded car one on both sides of the pole.
    Returns {box index: its segment id}."""
    assert [(s.id, s.class_id) for s in p.segments if s.is_thing] == [
        (CAR * INSTANCE_OFFSET + k, CAR) for k in range(3)] + [(PEDESTRIAN * INSTANCE_OFFSET, PEDESTRIAN)]
    area = {s.id: s.area for s in p.segments}
    found = {}
    for k, (class_id, rows, cols) in enumerate(BOXES):
        pixels = p.semantic[rows, cols] == class_id
        ids = p.panoptic[rows, cols][pixels].unique().tolist()
        assert len(ids) == 1 and ids[0] // INSTANCE_OFFSET == class_id, (k, ids)
        found[k] = ids[0]
        assert area[ids[0]] == int(pixels.sum()) > 0.5 * pixels.numel()
    assert len(set(found.values())) == len(BOXES)
    things = torch.isin(p.semantic, torch.tensor([CAR, PEDESTRIAN], dtype=p.semantic.dtype))
    assert int(things.sum()) == sum(area[i] for i in found.values())  # no thing pixel outside its instance
    assert sorted(s.id for s in p.segments if not s.is_thing) == [ROAD, POLE]
    assert not bool((p.panoptic[:, 16:20] == found[2]).any())  # the pole column is the pole's
    return found


def test_dcme_post_processor_on_hand_built_vectors():
    """Exact centre-of-mass vectors (``dcme_targets``): every pixel of an instance votes on its centre, so the two
    touching cars stay two instances and the occluded car one (DCME paper Sec. VI); each is scored by its cells'
    mean confidence."""
    ids, _, logits = scene()
    p = postprocess_dcme(raw(logits, dcme_targets(ids[None])[0]), CAMVID,
                         DCMEPostprocessConfig(min_votes=1, min_instance_pixels=1, stuff_min_area=0))
    found = check_scene(p)
    confidence = float(logits.softmax(0).max(0).values[0, 0])
    assert all(s.score == pytest.approx(confidence) for s in p.segments if s.is_thing)
    # vectors that all point to one spot merge the two touching cars: the vectors decide, not the semantic map
    one_spot = dcme_targets(torch.where(ids <= 1, ids.clamp(max=0), ids)[None])[0]
    merged = postprocess_dcme(raw(logits, one_spot), CAMVID, DCMEPostprocessConfig(min_votes=1, min_instance_pixels=1,
                                                                                 stuff_min_area=0))
    area = {s.id: s.area for s in p.segments}
    assert sorted(s.area for s in merged.segments if s.class_id == CAR) == sorted(
        [area[found[0]] + area[found[1]], area[found[2]]])


def test_bridging_post_processor_on_hand_built_boxes():
    """Exact box regressions (``bridging_targets``, one 4-channel group per thing class): NMS over the pixel boxes
    leaves one kept pixel per instance (Bridging paper Sec. 2.1), the occluded car's halves vote one box; each
    instance is scored by its pixels' mean semantic score."""
    ids, semantic, logits = scene()
    targets = bridging_targets(ids[None], semantic[None], CAMVID.thing_ids)
    regression = torch.zeros(4 * len(CAMVID.thing_ids), 12, 16)
    for t in range(len(CAMVID.thing_ids)):
        regression[4 * t:4 * t + 4] = torch.where(targets.thing[0] == t, targets.boxes[0], 0.0)
    config = BridgingPostprocessConfig(min_instance_pixels=1, stuff_min_area=0)
    p = postprocess_bridging(raw(logits, regression), CAMVID, config)
    check_scene(p)
    # scored by their pixels' mean class probability, a softmax over the classes (kills softmax(1))
    confidence = float(logits.softmax(0).max(0).values[0, 0])
    assert all(s.score == pytest.approx(confidence) for s in p.segments if s.is_thing)
    # a minimum size above the pedestrian's 6 cells drops it (its pixels then form no instance of their own:
    # assign_thing_pixels makes new instances only of at least min_instance_pixels cells too)
    bigger = postprocess_bridging(raw(logits, regression), CAMVID,
                                  BridgingPostprocessConfig(min_instance_pixels=7, stuff_min_area=0))
    assert [s.class_id for s in bigger.segments if s.is_thing] == [CAR, CAR, CAR]


def test_old_weights_read_as_embedding_and_new_ones_record_the_decoder(saved):
    """A shipped file that predates the switch (the stage-2a model): no instance_decoder key, an embedding model
    with bandwidths."""
    old = DEFAULT_WEIGHTS.with_name("panonet_camvid_without_coordinates.safetensors")
    with safe_open(str(old), "pt") as f:
        assert "instance_decoder" not in json.loads(f.metadata()["model"])
    _, model_cfg, post_cfg, _ = read_weights(old)
    assert model_cfg.instance_decoder == "embedding" and type(post_cfg) is PostprocessConfig and post_cfg.bandwidths
    decoder, path = saved
    _, model_cfg, post_cfg, _ = read_weights(path)
    assert model_cfg.instance_decoder == decoder and type(post_cfg) is DECODERS[decoder][1]


@pytest.mark.parametrize("data, message", [
    ({"model": {"instance_decoder": "centres"}},
     "model.instance_decoder = 'centres' is not allowed: expected one of ('embedding', 'dcme', 'bridging')"),
    ({"model": {"instance_decoder": "dcme"}, "postprocess": {"bandwidths": {8: 0.7}}},
     "postprocess: unknown key(s) ['bandwidths']"),
    ({"model": {"instance_decoder": "bridging"}},
     "model.thing_classes = () is not allowed: expected distinct increasing class ids in [0, 11)"),
    ({"model": {"instance_decoder": "bridging", "thing_classes": [8, 9]}},
     "model.thing_classes = (8, 9) is not allowed: expected the camvid thing classes (8, 9, 10)"),
    ({"model": {"instance_decoder": "dcme", "thing_classes": [8, 9, 10]}},
     "model.thing_classes = (8, 9, 10) is not allowed: expected [] for instance_decoder dcme"),
    ({"model": {"instance_decoder": "dcme"}, "postprocess": {"min_votes": 0}},
     "postprocess.min_votes = 0 is not allowed: expected an integer >= 1"),
    ({"model": {"instance_decoder": "bridging", "thing_classes": [8, 9, 10]}, "postprocess": {"iou_threshold": 1.0}},
     "postprocess.iou_threshold = 1.0 is not allowed: expected an IoU in [0, 1)"),
    ({"train": {"dcme_amplitude": 2.0}},
     "train.dcme_amplitude = 2.0 is not allowed: expected its default 4.0: it is the dcme decoder's setting and "
     "the model's instance decoder is embedding"),
    ({"model": {"instance_decoder": "dcme"}, "train": {"bridging_bootstrap_threshold": 0.7}},
     "train.bridging_bootstrap_threshold = 0.7 is not allowed"),
    ({"model": {"instance_decoder": "dcme"}, "train": {"dcme_amplitude": 0.0}},
     "train.dcme_amplitude = 0.0 is not allowed: expected a number > 0"),
])
def test_settings_that_do_not_fit_the_decoder_are_refused(data, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert message in str(error.value)


def test_the_node_overrides_fit_each_decoder():
    """What ``panoptic_node`` does with its filter and bandwidth parameters: dcme and bridging weights declare no
    ``bandwidths.<class>`` (``bandwidths_for`` is empty), refuse them when set, and take the size filters."""
    for config in (DCMEPostprocessConfig(), BridgingPostprocessConfig()):
        assert config.bandwidths_for(CAMVID.thing_ids) == {}
        tuned = config.with_node_filters({}, 5, 100)
        assert (tuned.min_instance_pixels, tuned.stuff_min_area) == (5, 100)
        assert config.with_node_filters({}, -1, -1) == config
        with pytest.raises(ConfigError, match=r"bandwidths\.\* = \{8: 0\.7\} is not allowed: the weights' instance "
                                              r"decoder is (dcme|bridging), which has no mean-shift clustering"):
            config.with_node_filters({CAR: 0.7}, -1, -1)


def test_old_configs_without_the_key_build_the_embedding_model():
    cfg = config_from_dict({"model": {"num_classes": 11}})
    assert cfg.model == ModelConfig(num_classes=11) and cfg.model.instance_decoder == "embedding"
    assert type(cfg.postprocess) is PostprocessConfig


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
def test_the_onnxruntime_backend_exports_every_decoder_and_agrees_with_eager(saved, tmp_path):
    """The instance output keeps the key ``embedding`` whatever the decoder, so the exported graph carries the
    DCME vectors or Bridging boxes and the decoder's post-processor reads them as in eager mode."""
    decoder, path = saved
    if decoder == "embedding":
        pytest.skip("the embedding decoder's export is test_backends.py's")
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), np.uint8)
    eager = Predictor.from_weights(path, device="cpu", backend="eager")
    exported = Predictor.from_weights(path, device="cpu", backend="onnxruntime", cache_dir=tmp_path)
    raw_eager, raw_exported = eager.run_network(rgb), exported.run_network(rgb)
    assert exported.backend == "onnxruntime"
    assert raw_exported.outputs["embedding"].shape == raw_eager.outputs["embedding"].shape == (
        {"dcme": 2, "bridging": 4 * 3}[decoder], 16, 24)
    torch.testing.assert_close(raw_exported.outputs["embedding"], raw_eager.outputs["embedding"], atol=1e-4, rtol=1e-4)
    a, b = eager(rgb), exported(rgb)
    assert [(s.id, s.area) for s in a.segments] == [(s.id, s.area) for s in b.segments]


@pytest.mark.parametrize("decoder", ["dcme", "bridging"])
def test_the_shipped_decoder_models_find_the_sample_frames_things(decoder):
    """The shipped DCME and Bridging files (issue #13, ``panoptic_ros/weights/README.md``) record their decoder, are
    stored in fp16, and on the embedded CamVid frame find the car and pedestrians the embedding model finds, with a
    semantic map within 5% of its (the three share stage 1)."""
    from panoptic_ros.datasets import read_rgb
    from panoptic_ros.demo import DEFAULT_IMAGE

    path = DEFAULT_WEIGHTS.with_name(f"panonet_{decoder}_camvid.safetensors")
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    assert path.stat().st_size < 50 * 2**20
    rgb = read_rgb(DEFAULT_IMAGE)
    predictor = Predictor.from_weights(path, device="cpu", backend="eager")
    assert predictor.instance_decoder == decoder and not predictor.bandwidths
    prediction = predictor(rgb)
    embedding = Predictor.from_weights(DEFAULT_WEIGHTS, device="cpu", backend="eager")(rgb)
    assert (prediction.semantic == embedding.semantic).float().mean() >= 0.95
    things = [s.class_id for s in prediction.segments if s.id >= INSTANCE_OFFSET]
    assert things.count(CAR) >= 1 and things.count(PEDESTRIAN) >= 1


@pytest.mark.parametrize("decoder, config, function", [
    ("decode_dcme", DCMEPostprocessConfig(peak_radius=3, min_votes=4, max_distance=6.5, min_instance_pixels=2,
                                          stuff_min_area=0), postprocess_dcme),
    ("decode_bridging", BridgingPostprocessConfig(top_n=2, iou_threshold=0.35, region_iou_threshold=0.45,
                                                  min_instance_pixels=2, stuff_min_area=0), postprocess_bridging)])
def test_the_decoders_post_processors_pass_every_setting_on(decoder, config, function, monkeypatch):
    """Each decoder setting (none at its default) reaches the decoding function under its own keyword. Kills the
    post-processors' pass-through mutants (``postprocess_bridging``'s ``top_n``, ``iou_threshold`` and
    ``region_iou_threshold`` dropped, ``postprocess_dcme``'s ``max_distance`` None)."""
    import panoptic_ros.predictor as predictor

    seen = {}
    real = getattr(predictor, decoder)

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, decoder, spy)
    ids, semantic, logits = scene()
    instance_output = (dcme_targets(ids[None])[0] if decoder == "decode_dcme"
                       else torch.zeros(4 * len(CAMVID.thing_ids), 12, 16))
    function(raw(logits, instance_output), CAMVID, config)
    expected = {"min_pixels": 2, **({"peak_radius": 3, "min_votes": 4, "max_distance": 6.5} if decoder == "decode_dcme"
                                    else {"top_n": 2, "iou_threshold": 0.35, "region_iou_threshold": 0.45})}
    assert seen == expected
