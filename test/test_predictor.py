"""The Predictor: outputs at the input resolution, segments consistent with the id image, clear input errors."""

import numpy as np
import pytest
import torch

from panoptic_ros.checkpoint import WeightsError, read_weights, save_state, save_weights
from panoptic_ros.classes import CAMVID
from panoptic_ros.config import config_from_dict
from panoptic_ros.models import build_model
from panoptic_ros.models.panonet import PanoNet
from panoptic_ros.postprocess import INSTANCE_OFFSET, VOID_ID
from panoptic_ros.postprocess import Segment
from panoptic_ros.predictor import Prediction, Predictor, filter_prediction


@pytest.fixture(scope="module")
def predictor():
    cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]},
                            "postprocess": {"min_instance_pixels": 1, "stuff_min_area": 0}})
    torch.manual_seed(0)
    model = build_model("panonet", **cfg.model.kwargs())
    with torch.no_grad():  # bias the head so that things (cars) appear: the clustering path must run
        model.semantic_decoder.head.bias[8] = 3.0
    return Predictor(model, CAMVID, cfg.postprocess, device="cpu", backend="eager")


def image(h=90, w=130, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_outputs_and_segments_agree(predictor):
    result = predictor(image())
    assert result.semantic.shape == result.panoptic.shape == result.instances.shape == (90, 130)
    assert set(result.timings) == {"preprocess", "model", "clustering", "merge"}
    panoptic = result.panoptic.numpy()
    ids = set(np.unique(panoptic).tolist()) - {VOID_ID}
    assert ids == {s.id for s in result.segments}
    assert any(s.is_thing for s in result.segments)
    for s in result.segments:
        ys, xs = np.nonzero(panoptic == s.id)
        assert s.area == len(ys)
        assert s.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert s.class_name == CAMVID[s.class_id].name and 0 <= s.score <= 1
        assert (s.id // INSTANCE_OFFSET == s.class_id) if s.is_thing else (s.id == s.class_id)
    inst = result.instances.numpy()
    assert np.isin(result.semantic.numpy()[inst >= 0], CAMVID.thing_ids).all()
    # outputs come in the dtypes the node publishes: mono8 classes, 16-bit segment indices (+ 1, 0 = void)
    assert result.semantic.dtype == torch.uint8 and result.segment_map.dtype == torch.int16
    ids_of_index = np.array([VOID_ID] + [s.id for s in result.segments])
    np.testing.assert_array_equal(ids_of_index[result.segment_map.numpy()], panoptic)


def test_scale_changes_the_network_input_not_the_output(predictor):
    predictor.scale = 0.5
    try:
        assert predictor(image(120, 160)).panoptic.shape == (120, 160)
    finally:
        predictor.scale = 1.0


@pytest.mark.parametrize("bad", [np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.float32),
                                 np.zeros((4, 20, 3), np.uint8), np.zeros((20, 20, 4), np.uint8)])
def test_bad_images_raise_a_clear_error(predictor, bad):
    with pytest.raises(ValueError, match="expected a uint8 RGB image"):
        predictor(bad)


@pytest.mark.parametrize("size", [(17, 64), (64, 17), (8, 8), (16, 64)])
def test_images_below_the_network_minimum_name_it(predictor, size):
    """ICNet needs 18 pixels per side; smaller inputs used to fail inside it ("sizes should be greater than 0")."""
    with pytest.raises(ValueError, match="at least 18 x 18"):
        predictor(image(*size))


def test_smallest_images_run_and_a_downscale_stops_at_the_minimum(predictor):
    assert predictor(image(18, 18)).panoptic.shape == (18, 18)
    assert predictor(image(18, 64), scale=0.25).panoptic.shape == (18, 64)  # network input 18 x 18, not 4 x 16


def test_network_size_takes_the_configured_scale_unless_given_one(predictor):
    """``network_size`` as the realtime replay calls it, directly: the configured scale unless one is given, each
    side rounded to the nearest multiple of 32 (halves up), where PanoNet's branches align, and never below the
    smallest multiple of 32 that holds the network's 18 pixels."""
    predictor.scale = 0.5
    try:
        assert predictor.network_size(100, 200) == (64, 96)  # 50 -> 64 (1.56 x 32), 100 -> 96 (3.1 x 32)
        assert predictor.network_size(100, 200, 2.0) == (192, 416)  # 200 -> 192, 400 = 12.5 x 32 -> 416
        assert predictor.network_size(360, 480, 1.0) == (352, 480)  # a CamVid frame runs at the training crop's size
        assert predictor.network_size(352, 480, 1.0) == (352, 480)
        assert predictor.network_size(100, 200, 0.1) == (32, 32)  # never below the network's 18 pixels
    finally:
        predictor.scale = 1.0


def test_frames_are_resized_to_the_network_size_and_outputs_come_back_at_theirs(predictor):
    """A 360 x 480 frame reaches the network as 352 x 480 (the model records what it is given), and the outputs
    are at 360 x 480 again."""
    seen = []
    handle = predictor.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        result = predictor(image(360, 480))
    finally:
        handle.remove()
    assert seen == [(352, 480)]
    assert result.panoptic.shape == result.semantic.shape == (360, 480)


def test_from_weights_and_bad_options(tmp_path):
    cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]}})
    path = save_weights(build_model("panonet", **cfg.model.kwargs()), cfg, tmp_path / "w.safetensors")
    predictor = Predictor.from_weights(path, device="cpu", backend="eager", precision="bf16")
    assert predictor(image()).panoptic.shape == (90, 130)
    with pytest.raises(WeightsError, match="does not exist"):
        Predictor.from_weights(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="precision 'int8' is not allowed"):
        Predictor.from_weights(path, precision="int8")


def test_from_weights_runs_at_the_files_input_scale_unless_given_one(tmp_path):
    """A file's ``input_scale`` is the Predictor's default scale; an explicit ``scale`` wins; a file naming none runs
    at 1.0."""
    cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]}})
    plain = save_weights(build_model("panonet", **cfg.model.kwargs()), cfg, tmp_path / "w.safetensors")
    state, model_cfg, post_cfg, info = read_weights(plain)
    scaled = save_state(state, model_cfg, post_cfg, {**info, "input_scale": 0.5}, tmp_path / "scaled.safetensors")
    assert Predictor.from_weights(scaled, device="cpu", backend="eager").scale == 0.5
    assert Predictor.from_weights(scaled, scale=2.0, device="cpu", backend="eager").scale == 2.0
    assert Predictor.from_weights(plain, device="cpu", backend="eager").scale == 1.0


@pytest.mark.parametrize("coarse, size", [((9, 12), (36, 48)), ((23, 30), (90, 120)), ((23, 30), (89, 131)),
                                           ((5, 7), (5, 7)), ((8, 8), (3, 5)), ((1, 6), (4, 25))])
def test_upsample_argmax_equals_the_argmax_of_bilinear_logits(coarse, size):
    """Integer, non-integer and downscaling ratios, one-row inputs: the shortcut for pixels between cells of one
    class and the interpolation of the others give torch's bilinear-then-argmax."""
    from panoptic_ros.predictor import argmax_classes, upsample_argmax

    torch.manual_seed(sum(coarse) + sum(size))
    logits = torch.randn(6, *coarse) * 3
    logits[2, : coarse[0] // 2] += 5  # regions of one class, so that both paths run
    dense = argmax_classes(torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear",
                                                           align_corners=False)[0])
    assert torch.equal(upsample_argmax(logits, size), dense)


def reference_upsample_labels(logits, labels, label_class, size):
    """``upsample_labels`` pixel by pixel, as its docstring states it: the bilinear logits' argmax c (torch's
    interpolation), then of the pixel's four cells (``bilinear_sources``) the one of class c with the largest
    weight, first of equals in the order top-left, top-right, bottom-left, bottom-right; else the class code c."""
    from panoptic_ros.predictor import argmax_classes, bilinear_sources

    predicted = argmax_classes(torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear",
                                                               align_corners=False)[0])
    (y0, y1, wy), (x0, x1, wx) = (bilinear_sources(n, c) for n, c in zip(size, labels.shape))
    out = torch.empty(size, dtype=labels.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            c, best, chosen = int(predicted[i, j]), -1.0, int(predicted[i, j])
            for y, x, weight in ((y0[i], x0[j], (1 - wy[i]) * (1 - wx[j])), (y0[i], x1[j], (1 - wy[i]) * wx[j]),
                                 (y1[i], x0[j], wy[i] * (1 - wx[j])), (y1[i], x1[j], wy[i] * wx[j])):
                if int(label_class[labels[y, x]]) == c and float(weight) > best:
                    best, chosen = float(weight), int(labels[y, x])
            out[i, j] = chosen
    return out


@pytest.mark.parametrize("coarse, size", [((6, 8), (24, 32)), ((7, 9), (23, 37)), ((8, 8), (3, 5)),
                                           ((1, 6), (4, 25)), ((5, 1), (17, 3))])
def test_upsample_labels_equals_its_pixel_by_pixel_reference(coarse, size):
    """Instance codes on random logits, at integer, non-integer and downscaling ratios and on one-row and
    one-column grids: the shortcut for pixels between four cells of one code and the matching for the others
    give the reference's labels; their classes are exactly ``upsample_argmax``'s."""
    from panoptic_ros.predictor import argmax_classes, upsample_argmax, upsample_labels

    torch.manual_seed(sum(coarse) + sum(size))
    k = 5
    logits = torch.randn(k, *coarse) * 3
    logits[3, : coarse[0] // 2] += 6  # a region of class 3, cut into instances below
    classes = argmax_classes(logits).long()
    instance = torch.arange(coarse[1]).expand(coarse) // 2  # instances of class 3: two columns each
    labels = torch.where(classes == 3, k + instance, classes).int()
    label_class = torch.cat([torch.arange(k), torch.full((coarse[1],), 3)])
    got = upsample_labels(logits, labels, size, label_class)
    assert got.dtype == torch.int32
    assert torch.equal(got, reference_upsample_labels(logits, labels, label_class, size))
    assert torch.equal(label_class[got.long()], upsample_argmax(logits, size).long())


def test_upsample_labels_by_hand():
    """Two car instances side by side (codes 5 and 6 of class 1), 1 x 2 cells to 1 x 8 pixels: bilinear source
    x = (j + 0.5) / 4 - 0.5, so pixels 0-3 weigh the left cell at least as much (pixel 3: 0.625) and take 5,
    pixels 4-7 take 6. Then a road cell and a grass cell whose mix peaks at a third class
    (sidewalk, 2) between them: those pixels take the class code 2, neither cell's label."""
    from panoptic_ros.predictor import upsample_labels

    logits = torch.zeros(3, 1, 2)
    logits[1] = 5.0
    labels = torch.tensor([[5, 6]], dtype=torch.int32)
    label_class = torch.tensor([0, 1, 2, 0, 0, 1, 1])
    assert upsample_labels(logits, labels, (1, 8), label_class).tolist() == [[5, 5, 5, 5, 6, 6, 6, 6]]
    # 1 x 3 from 2 cells: pixel 1's source x is exactly 0.5, equal weights: the top-left cell (5) wins
    assert upsample_labels(logits, labels, (1, 3), label_class).tolist() == [[5, 5, 6]]
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]], [[1.5, 1.5]]])  # road, car, a class between them
    labels = torch.tensor([[0, 5]], dtype=torch.int32)  # road, car instance 5
    # x = 0.125: 1.75 road, 0.25 car, 1.5 class 2 -> road; x = 0.375: 1.25, 0.75, 1.5 -> class 2 (no cell of it)
    assert upsample_labels(logits, labels, (1, 8), label_class).tolist() == [[0, 0, 0, 2, 2, 5, 5, 5]]


def test_argmax_classes_equals_torch_argmax_with_ties():
    from panoptic_ros.predictor import argmax_classes

    logits = torch.randn(11, 37, 53)
    logits[3, :5] = logits[7, :5] = 100.0  # ties: the first class wins, as in torch.argmax
    assert torch.equal(argmax_classes(logits), logits.argmax(0))
    assert argmax_classes(logits)[0, 0] == 3
    assert argmax_classes(logits).dtype == torch.uint8
    many = torch.randn(300, 4, 5)  # class ids above 255 need a wider type
    assert argmax_classes(many).dtype == torch.int64 and torch.equal(argmax_classes(many), many.argmax(0))


def test_instance_scores_are_the_mean_confidence_of_each_instance():
    from panoptic_ros.predictor import instance_scores

    ids = torch.tensor([[0, 0, -1], [1, 2, 2]])
    confidence = torch.tensor([[0.2, 0.4, 0.9], [0.5, 0.6, 1.0]])
    assert instance_scores(ids, confidence, 4) == pytest.approx([0.3, 0.5, 0.8, 0.0])


def test_filter_prediction_voids_weak_or_small_things_only():
    panoptic = torch.tensor([[3, 3, 8000, 8000], [3, 9000, 8000, 8001]], dtype=torch.int32)
    instances = torch.tensor([[-1, -1, 0, 0], [-1, 1, 0, 2]])
    segments = [Segment(3, 3, "road", False, 0.1, 3, (0, 0, 2, 2)), Segment(8000, 8, "car", True, 0.9, 3, (2, 0, 2, 2)),
                Segment(8001, 8, "car", True, 0.9, 1, (3, 1, 1, 1)), Segment(9000, 9, "pedestrian", True, 0.2, 1, (1, 1, 1, 1))]
    segment_map = torch.tensor([[1, 1, 2, 2], [1, 4, 2, 3]], dtype=torch.int16)
    prediction = Prediction(panoptic.long() // 1000, instances, panoptic, segments, segment_map)
    kept = filter_prediction(prediction, score_threshold=0.5, min_area=2)
    assert [s.id for s in kept.segments] == [3, 8000]  # stuff stays whatever its score
    assert kept.panoptic.tolist() == [[3, 3, 8000, 8000], [3, VOID_ID, 8000, VOID_ID]]
    assert kept.instances.tolist() == [[-1, -1, 0, 0], [-1, -1, 0, -1]]
    assert kept.segment_map.tolist() == [[1, 1, 2, 2], [1, 0, 2, 0]] and kept.segment_map.dtype == torch.int16
    # removing a segment shifts the indices of those after it: car 8000 (index 2) goes, pedestrian 9000 (4) -> 3
    weak_car = [segments[0], Segment(8000, 8, "car", True, 0.1, 3, (2, 0, 2, 2)), segments[2], segments[3]]
    shifted = filter_prediction(Prediction(panoptic.long() // 1000, instances, panoptic, weak_car, segment_map), 0.15)
    assert [s.id for s in shifted.segments] == [3, 8001, 9000]
    assert shifted.segment_map.tolist() == [[1, 1, 0, 0], [1, 3, 0, 2]]
    assert filter_prediction(prediction) is prediction


class Ramp(PanoNet):
    """A stand-in network whose output depends only on its input size: at 1/4 of the input (floor), the road logit
    (class 3) rises by 1 per coarse column from -2.3 at column 0, every other class is 0 (sky, class 0, wins ties)
    or -100. Records the size and dtype it was given. It takes any input size (``input_divisor`` 1), so the sizes
    below are the scale's alone."""

    min_input_size = 18
    input_divisor = 1

    def __init__(self):
        torch.nn.Module.__init__(self)  # a PanoNet (the fast family) in name only
        self.weight = torch.nn.Parameter(torch.zeros(1))  # gives .to() a dtype to set
        self.seen = []

    def forward(self, images):
        self.seen.append((tuple(images.shape[2:]), images.dtype))
        h, w = images.shape[2] // 4, images.shape[3] // 4
        logits = torch.full((1, 11, h, w), -100.0, dtype=images.dtype)
        logits[:, 0] = 0.0
        logits[:, 3] = torch.arange(w, dtype=images.dtype) - 2.3
        return {"semantic": logits, "embedding": torch.zeros(1, 12, h, w, dtype=images.dtype)}


def ramp_predictor(**kwargs):
    cfg = config_from_dict({"postprocess": {"stuff_min_area": 0}})
    return Predictor(Ramp(), CAMVID, cfg.postprocess, device="cpu", backend="eager", **kwargs)


def test_scale_is_honoured_and_classes_are_upsampled_bilinearly_at_a_non_integer_ratio():
    """Pixel-exact: a 90 x 130 image at scale 0.6 reaches the network as 54 x 78 (19 coarse columns), so the
    ratio is 130 / 19 = 6.84. Bilinearly upsampled, the road logit at pixel column x is (x + 0.5) * 19 / 130 - 0.5
    - 2.3 (above 0 from x = 19 on); nearest-neighbour upsampling would start the road where the nearest coarse
    column is 3, at x = 21, and a scale of 1 (32 coarse columns) at x = 11. Kills ignoring ``self.scale``, a mode
    other than bilinear and an off-by-one in the source coordinates (``bilinear_sources``)."""
    predictor = ramp_predictor(scale=0.6)
    result = predictor(image(90, 130))
    assert predictor.model.seen == [((54, 78), torch.float32)]
    expected = np.zeros((90, 130), np.uint8)
    expected[:, 19:] = 3
    np.testing.assert_array_equal(result.semantic.numpy(), expected)
    assert [(s.id, s.area, s.bbox) for s in result.segments] == [(0, 90 * 19, (0, 0, 19, 90)),
                                                                  (3, 90 * 111, (19, 0, 111, 90))]
    full = ramp_predictor()(image(90, 130))  # scale 1: 32 coarse columns, road from (x + 0.5) > 2.8 * 130 / 32
    assert (full.semantic[:, :11] == 0).all() and (full.semantic[:, 11:] == 3).all()
    per_call = predictor(image(90, 130), scale=1.0)  # the call's scale overrides the configured one
    assert torch.equal(per_call.semantic, full.semantic) and predictor.model.seen[-1][0] == (90, 130)


def test_bf16_runs_the_network_in_bf16_and_post_processes_in_float32():
    """The network gets bfloat16 input; its logits are read back as float32 (bfloat16 holds -2.3 as -2.296875, so
    the road still starts at x = 19), and the result equals fp32's pixel for pixel. Kills dropping the precision
    (the network would see float32) and dropping the ``.float()`` of the outputs (a bfloat16 argmax)."""
    predictor = ramp_predictor(scale=0.6, precision="bf16")
    result = predictor(image(90, 130))
    assert predictor.model.seen == [((54, 78), torch.bfloat16)] and predictor.model.weight.dtype == torch.bfloat16
    assert torch.equal(result.semantic, ramp_predictor(scale=0.6)(image(90, 130)).semantic)
    outputs = predictor.run_network(image(90, 130)).outputs
    assert outputs["semantic"].dtype == outputs["embedding"].dtype == torch.float32
    assert outputs["semantic"].shape == (11, 13, 19)


def test_filter_prediction_keeps_things_exactly_at_the_thresholds():
    """A car scoring exactly ``score_threshold`` and one of exactly ``min_area`` pixels stay; the semantic map and
    the timings pass through. Kills ``s.score <= score_threshold``, ``s.area <= min_area`` and the mutants that
    drop the semantic map or the timings of a filtered prediction."""
    panoptic = torch.tensor([[3, 8000, 8000, 8001, 9000]], dtype=torch.int32)
    segments = [Segment(3, 3, "road", False, 1.0, 1, (0, 0, 1, 1)), Segment(8000, 8, "car", True, 0.5, 2, (1, 0, 2, 1)),
                Segment(8001, 8, "car", True, 0.9, 1, (3, 0, 1, 1)), Segment(9000, 9, "pedestrian", True, 0.4, 1, (4, 0, 1, 1))]
    semantic = torch.tensor([[3, 8, 8, 8, 9]], dtype=torch.uint8)
    prediction = Prediction(semantic, torch.tensor([[-1, 0, 0, 1, 2]]), panoptic, segments,
                            torch.tensor([[1, 2, 2, 3, 4]], dtype=torch.int16), {"model": 1.5})
    by_score = filter_prediction(prediction, score_threshold=0.5)
    assert [s.id for s in by_score.segments] == [3, 8000, 8001]  # 0.5 is kept, 0.4 is not
    assert by_score.semantic is semantic and by_score.timings == {"model": 1.5}
    by_area = filter_prediction(prediction, min_area=2)
    assert [s.id for s in by_area.segments] == [3, 8000] and by_area.segment_map.tolist() == [[1, 2, 2, 0, 0]]


def test_output_buffers_receive_the_final_maps_without_a_copy(predictor, monkeypatch):
    """``out``: the semantic and segment maps are computed into the given buffers (the node's message memory)
    and returned as them, with the values of a run without buffers; a buffer of another dtype or shape gets one
    copy instead, and merge_panoptic refuses a segment buffer it cannot write. Kills ``merge_instances`` mutants
    that stop handing either buffer on (``segment_map_out=None``, ``fitting(None, ...)``, ...): the outputs stay
    right through ``to_output``'s copy, which the spy sees."""
    from panoptic_ros import predictor as module
    from panoptic_ros.predictor import OutputBuffers

    rgb = image()
    plain = predictor(rgb)
    semantic, segments = torch.full((90, 130), 77, dtype=torch.uint8), torch.full((90, 130), -5, dtype=torch.int16)
    copied = []
    real = module.to_output
    monkeypatch.setattr(module, "to_output", lambda tensor, buffer: copied.append(
        tensor.data_ptr() != buffer.data_ptr()) or real(tensor, buffer))
    got = predictor(rgb, out=OutputBuffers(semantic, segments))
    assert copied == [False, False]  # both computed in place
    monkeypatch.undo()
    assert got.semantic.data_ptr() == semantic.data_ptr() and got.segment_map.data_ptr() == segments.data_ptr()
    assert torch.equal(semantic, plain.semantic) and torch.equal(segments, plain.segment_map)
    assert got.segments == plain.segments and torch.equal(got.panoptic, plain.panoptic)
    wide = torch.zeros(90, 130, dtype=torch.int64)  # not the class dtype: filled by a copy
    got = predictor(rgb, out=OutputBuffers(wide, None))
    assert got.semantic is wide and torch.equal(wide, plain.semantic.long())
    assert torch.equal(got.segment_map, plain.segment_map)
    from panoptic_ros.postprocess import merge_panoptic

    with pytest.raises(ValueError, match="segment_map_out must be int16"):
        merge_panoptic(plain.semantic, torch.full((90, 130), -1), [], CAMVID, segment_map_out=torch.zeros(90, 130))


def test_resolve_device_and_its_message_without_cuda(monkeypatch):
    """``auto`` is the CPU without CUDA and CUDA with it; an unavailable CUDA device is refused with the request
    named. Kills the ``auto`` branch's and the check's mutants (``cuda`` -> other strings, ``and`` -> ``or``,
    ``ValueError(None)``)."""
    from panoptic_ros.predictor import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device 'cuda:1' requested but CUDA is not available$"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")


def test_first_image_takes_image_zero_of_every_kind_of_output():
    """A batch tensor gives its image 0 (floating -> float32, integers kept); a list gives its first dict with
    floating tensors as float32; a dict applies both to each value. Kills ``outputs[0]`` -> ``outputs[1]``, the
    float conversions dropped and the type branches swapped."""
    from panoptic_ros.predictor import first_image

    batch = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    assert first_image(batch).dtype == torch.float32 and first_image(batch).tolist() == [0.0, 1.0, 2.0]
    ints = torch.arange(6).reshape(2, 3)
    assert first_image(ints).dtype == torch.int64 and first_image(ints).tolist() == [0, 1, 2]
    detections = [{"boxes": torch.ones(1, 4, dtype=torch.float16), "labels": torch.tensor([3])},
                  {"boxes": torch.zeros(1, 4), "labels": torch.tensor([5])}]
    first = first_image(detections)
    assert first["boxes"].dtype == torch.float32 and first["boxes"].tolist() == [[1.0] * 4]
    assert first["labels"].tolist() == [3]
    nested = first_image({"semantic": batch, "detections": detections})
    assert nested["semantic"].tolist() == [0.0, 1.0, 2.0] and nested["detections"]["labels"].tolist() == [3]


def test_lap_records_milliseconds_since_start_and_returns_now():
    """Kills ``* 1e3`` -> other factors, ``now - start`` -> ``now + start`` and returning ``start``."""
    import time

    from panoptic_ros.predictor import lap

    timings = {}
    start = time.perf_counter() - 0.25  # 250 ms ago
    now = lap(timings, "stage", start, torch.device("cpu"))
    assert 250 <= timings["stage"] < 250 + 1e3 * (time.perf_counter() - start - 0.25) + 1
    assert start + 0.25 <= now <= time.perf_counter()


def test_lap_waits_for_the_cuda_device_it_times_and_for_no_cpu(monkeypatch):
    """Kills ``lap``'s mutants 2-4 (another device type than "cuda" compared, ``synchronize(None)``): a CUDA
    stage's time must include its queued kernels, of the device the stage ran on (a spy stands in for
    ``torch.cuda.synchronize``, so no GPU is needed)."""
    from panoptic_ros.predictor import lap

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    lap({}, "stage", 0.0, torch.device("cpu"))
    assert waited == []
    lap({}, "stage", 0.0, torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]


def test_lap_records_exact_milliseconds_of_the_clock(monkeypatch):
    """Kills ``lap``'s mutant 9 (``* 1001.0``, within the wall-clock test's tolerance): with the clock fixed, the
    stage takes exactly (now - start) * 1000 ms."""
    import time

    from panoptic_ros.predictor import lap

    monkeypatch.setattr(time, "perf_counter", lambda: 1.5)
    timings = {"before": 3.0}
    assert lap(timings, "stage", 1.25, torch.device("cpu")) == 1.5
    assert timings == {"before": 3.0, "stage": 250.0}


def test_class_maps_are_uint8_up_to_255_classes_so_255_stays_free():
    """Kills ``class_dtype``'s mutants 3 and 4 (``<= 256`` / ``< 257``): 256 classes would use id 255, the
    marker, so they take int64."""
    from panoptic_ros.predictor import class_dtype

    assert [class_dtype(k) for k in (1, 255, 256, 300)] == [torch.uint8, torch.uint8, torch.int64, torch.int64]


def test_fitting_takes_only_a_contiguous_buffer_of_the_maps_device_dtype_and_shape():
    """Kills ``fitting``'s mutant 1 (``or not contiguous`` -> ``and not contiguous``): a transposed buffer of the
    right shape cannot be computed into directly."""
    from panoptic_ros.predictor import fitting

    cpu = torch.device("cpu")
    buffer = torch.zeros(4, 6, dtype=torch.int16)
    assert fitting(buffer, cpu, torch.int16, (4, 6)) is buffer
    assert fitting(torch.zeros(6, 4, dtype=torch.int16).t(), cpu, torch.int16, (4, 6)) is None
    assert fitting(buffer, cpu, torch.int32, (4, 6)) is None and fitting(buffer, cpu, torch.int16, (6, 4)) is None
    assert fitting(None, cpu, torch.int16, (4, 6)) is None


def test_to_output_copies_only_what_was_not_computed_into_the_buffer(monkeypatch):
    """Kills ``to_output``'s mutants 5 and 6 (``shape ==`` / ``dtype ==``: the buffer copied onto itself, a
    wasted pass over the map each frame): a map computed into the buffer is returned as it is, any other is
    copied into it once (a spy on ``Tensor.copy_`` counts)."""
    from panoptic_ros.predictor import to_output

    copies = []
    real = torch.Tensor.copy_
    monkeypatch.setattr(torch.Tensor, "copy_", lambda self, src, *a, **k: copies.append(src) or real(self, src, *a, **k))
    buffer = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    assert to_output(buffer, buffer) is buffer and copies == []
    other = torch.full((2, 3), 7, dtype=torch.int16)
    assert to_output(other, buffer) is buffer and len(copies) == 1 and buffer.tolist() == [[7] * 3] * 2
    wider = torch.full((2, 3), 9, dtype=torch.int64)
    assert to_output(wider, buffer) is buffer and len(copies) == 2 and buffer.dtype == torch.int16
    assert buffer.tolist() == [[9] * 3] * 2
    fresh = to_output(other, None)
    assert fresh.tolist() == other.tolist() and len(copies) == 2


def test_to_moves_the_network_rebuilds_it_and_frees_gpu_memory_only_when_moving_to_the_cpu(predictor, monkeypatch):
    """Kills ``Predictor.to``'s mutants: the device not resolved or stored, the model not moved, the network not
    rebuilt, and the CPU test of the cache release turned around (with CUDA reported present, moving to the CPU
    empties the cache once)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    old_network = predictor.network
    assert predictor.to("cpu") is predictor and predictor.device == torch.device("cpu") and calls == [1]
    assert predictor.network is not old_network and predictor.network.device == torch.device("cpu")
    assert all(p.device == torch.device("cpu") for p in predictor.model.parameters())
    monkeypatch.undo()
    assert predictor(image()).panoptic.shape == (90, 130)


def panonet_output(size=(16, 16)):
    """A hand-made PanoNet output at 1/4 of 16 x 16: road (class 3, logit 5) on the right half, car (class 8,
    logit 5) in a 2 x 2-cell block on the left, sky elsewhere; one embedding for every pixel (one car)."""
    logits = torch.zeros(11, 4, 4)
    logits[3, :, 2:] = 5.0
    logits[0, :, :2] = 5.0
    logits[0, 1:3, :2], logits[8, 1:3, :2] = 0.0, 5.0
    from panoptic_ros.predictor import NetworkOutput

    return NetworkOutput({"semantic": logits, "embedding": torch.zeros(2, 4, 4)}, size, size, {})


def test_postprocess_panonet_scores_instances_by_their_class_softmax_and_drops_small_clusters():
    """The car's score is the mean over its cells of the class softmax (over classes, dim 0: e^5 / (e^5 + 10));
    a ``min_instance_pixels`` above its 4 cells drops it (its 4 cells are also under the new-instance minimum of
    5 cells: void). Kills ``softmax(0)`` -> ``softmax(1)`` and dropping ``min_instance_pixels``."""
    from panoptic_ros.config import PostprocessConfig
    from panoptic_ros.predictor import postprocess_panonet

    kept = postprocess_panonet(panonet_output(), CAMVID, PostprocessConfig(min_instance_pixels=4, stuff_min_area=0))
    cars = [s for s in kept.segments if s.is_thing]
    assert [(s.id, s.area) for s in cars] == [(8000, 64)]
    assert cars[0].score == pytest.approx(np.exp(5) / (np.exp(5) + 10))
    dropped = postprocess_panonet(panonet_output(), CAMVID, PostprocessConfig(min_instance_pixels=5, stuff_min_area=0))
    assert not [s for s in dropped.segments if s.is_thing] and (dropped.panoptic[4:12, :8] == VOID_ID).all()


def test_postprocess_panoptic_fpn_upsamples_the_logits_by_the_network_stride_of_a_scaled_input():
    """A 30 x 40 image run at half scale (network input 15 x 20, logits 4 x 5): one logit cell covers 8 image
    pixels, so the semantic map is the argmax of the logits upsampled bilinearly to 32 x 40 and cut to 30 x 40.
    Kills the stride's mutants (``4 * height * net_h``, ``5 * height / net_h``, and the same for the width)."""
    from panoptic_ros.config import DetectionPostprocessConfig
    from panoptic_ros.predictor import NetworkOutput, postprocess_panoptic_fpn

    logits = torch.randn(11, 4, 5, generator=torch.Generator().manual_seed(3))
    detections = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
                  "masks": torch.zeros(0, 28, 28)}
    raw = NetworkOutput({"semantic": logits, "detections": detections}, (30, 40), (15, 20), {})
    result = postprocess_panoptic_fpn(raw, CAMVID, DetectionPostprocessConfig(stuff_min_area=0))
    expected = torch.nn.functional.interpolate(logits[None], size=(32, 40), mode="bilinear",
                                               align_corners=False)[0].argmax(0)[:30, :40]
    assert torch.equal(result.semantic.long(), expected)


def test_cells_of_no_cluster_become_a_new_instance_scored_by_their_confidence():
    """The car's 4 cells have embeddings 2 apart (bandwidth 0.5): mean shift makes 4 one-cell clusters, all under
    ``min_instance_pixels`` = 2 and dropped; the 4 cells, one component of at least 2, become one new instance in
    the merge, scored by its cells' mean confidence (e^5 / (e^5 + 10)), not by 1.0 and not 0. Kills leaving the
    new instance's first index out of its score map (``ids > len(scores)``) and dropping the new scores."""
    from panoptic_ros.config import PostprocessConfig
    from panoptic_ros.predictor import postprocess_panonet

    raw = panonet_output()
    raw.outputs["embedding"][0, 1:3, :2] = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    p = postprocess_panonet(raw, CAMVID, PostprocessConfig(min_instance_pixels=2, stuff_min_area=0,
                                                           bandwidths={8: 0.5}))
    cars = [s for s in p.segments if s.is_thing]
    assert [(s.id, s.area) for s in cars] == [(8000, 64)]
    assert cars[0].score == pytest.approx(np.exp(5) / (np.exp(5) + 10))


@pytest.mark.parametrize("stuff_min_area, kept", [(128, True), (129, False)])
def test_postprocess_panonet_passes_stuff_min_area_on_in_input_pixels(stuff_min_area, kept):
    """The hand-made output's road takes columns 8-15 of the 16 x 16 image after the bilinear upsampling (pixel 8
    weighs the road cell 5/8): 128 pixels, kept at a minimum of exactly 128, void at 129. Kills dropping
    ``stuff_min_area`` from the merge (``merge_instances`` 85)."""
    from panoptic_ros.config import PostprocessConfig
    from panoptic_ros.predictor import postprocess_panonet

    p = postprocess_panonet(panonet_output(), CAMVID, PostprocessConfig(min_instance_pixels=4,
                                                                      stuff_min_area=stuff_min_area))
    road = p.semantic == 3
    assert int(road.sum()) == 128 and bool(road[:, 8:].all())
    assert ([s.area for s in p.segments if s.id == 3] == [128]) == kept
    assert bool((p.panoptic[road] == 3).all()) == kept and bool((p.panoptic[road] == VOID_ID).all()) != kept
    # the instance map: the car's index 0 on its pixels, -1 on every other (kills merge_instances 137 and 138,
    # another value for the pixels of no instance)
    assert torch.equal(p.instances, torch.where(p.panoptic == 8000, 0, -1)) and int((p.instances == 0).sum()) == 64


def test_pixels_of_the_tables_ignore_class_are_void_and_of_no_instance():
    """A table whose ignore id is one of the network's classes (here sky, 0): cells that peak at it take the void
    code, so their pixels are void in the panoptic map and of no instance (-1) in the instance map, and the car
    keeps index 0. Kills ``merge_instances`` 148 and 149 (the void code's instance +1 or -2 instead of -1)."""
    import dataclasses

    from panoptic_ros.config import PostprocessConfig
    from panoptic_ros.predictor import postprocess_panonet

    table = dataclasses.replace(CAMVID, ignore_id=0)
    p = postprocess_panonet(panonet_output(), table, PostprocessConfig(min_instance_pixels=4, stuff_min_area=0))
    sky = p.semantic == 0
    assert int(sky.sum()) > 0 and bool((p.panoptic[sky] == VOID_ID).all())
    assert torch.equal(p.instances, torch.where(p.panoptic == 8000, 0, -1)) and int((p.instances == 0).sum()) == 64


def test_from_weights_takes_the_files_class_table_name_and_path(tmp_path):
    """A Cityscapes file gets the Cityscapes table (every other test loads CamVid files), a file without a dataset
    CamVid's, a file whose class count is not its table's a whole error; the Predictor is named after the file and
    hands its path on (the export command a refused artefact names). Kills ``xǁPredictorǁfrom_weights__mutmut_4``
    -``9`` (the recorded dataset not read, or another fallback), ``_11`` (the message), ``_15``, ``_20`` (the
    name) and ``_16``, ``_21``, ``_24`` (the path); with the backend's settings handed on,
    ``xǁPredictorǁ_networks__mutmut_6``, ``_8``, ``_15`` and ``_16`` (the cache folder, the path or
    ``build_missing`` dropped or shifted)."""
    cfg = config_from_dict({"model": {"num_classes": 19, "width": 0.125, "depths": [1, 1, 1, 1]},
                            "data": {"dataset": "cityscapes"}})
    path = save_weights(build_model("panonet", **cfg.model.kwargs()), cfg, tmp_path / "city.safetensors")
    predictor = Predictor.from_weights(path, device="cpu", backend="eager", cache_dir=tmp_path / "cache",
                                       build_missing=False)
    assert predictor.table.name == "cityscapes" and len(predictor.table) == 19
    assert predictor.name == "city" and predictor.network.weights == str(path)
    assert predictor.network.cache_dir == tmp_path / "cache" and predictor.network.build_missing is False
    state, model_cfg, post_cfg, _ = read_weights(path)
    unnamed = save_state(state, model_cfg, post_cfg, {"dataset": ""}, tmp_path / "unnamed.safetensors")
    with pytest.raises(ValueError) as error:
        Predictor.from_weights(unnamed, device="cpu", backend="eager")
    assert str(error.value) == f"{unnamed}: 19 classes, but the camvid table has 11"
    camvid = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]}})
    state, model_cfg, post_cfg, _ = read_weights(save_weights(build_model("panonet", **camvid.model.kwargs()), camvid,
                                                              tmp_path / "camvid.safetensors"))
    unnamed = save_state(state, model_cfg, post_cfg, {"dataset": ""}, tmp_path / "unnamed_camvid.safetensors")
    assert Predictor.from_weights(unnamed, device="cpu", backend="eager").table.name == "camvid"


def test_a_predictor_built_from_a_model_is_named_panonet_and_has_no_weights_file(predictor):
    """The defaults of a Predictor made from a module rather than a file: reports name it ``panonet``, and its
    backend has no weights path (a refused artefact's export command then says ``--weights W``). Kills
    ``xǁPredictorǁ__init____mutmut_6``, ``_7`` (another default name) and ``_11`` (a default path)."""
    assert predictor.name == "panonet" and predictor.network.weights == ""


@pytest.mark.parametrize("scale", [0.049, 4.001])
def test_scales_outside_the_range_are_refused_whole_and_its_ends_accepted(scale):
    """``scale`` in [0.05, 4], both ends included. Kills ``xǁPredictorǁ__init____mutmut_17``, ``_18`` (an end
    excluded), ``_19`` (another upper end) and ``_20`` (the message)."""
    assert ramp_predictor(scale=0.05).scale == 0.05 and ramp_predictor(scale=4.0).scale == 4.0
    with pytest.raises(ValueError) as error:
        ramp_predictor(scale=scale)
    assert str(error.value) == f"scale {scale!r} is not allowed: expected a number in [0.05, 4]"
