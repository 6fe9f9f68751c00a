"""evaluate_bag scores every frame of a bag with the Predictor and reports exactly what a direct computation gives;
frames without usable ground truth, damaged bags and Ctrl-C are reported, and nothing measured is lost."""

import json
from itertools import islice

import numpy as np
import pytest
import torch

from panoptic_ros import evaluate_bag as module
from panoptic_ros.bags import BagReader, BagWriter
from panoptic_ros.classes import CAMVID
from panoptic_ros.datasets import CamVid
from panoptic_ros.evaluate_bag import DEFAULT_BAG, DEFAULT_LABEL_TOPICS
from panoptic_ros.evaluation import evaluate
from panoptic_ros.make_bag import main as make_bag
from panoptic_ros.metrics import InstanceAP, PanopticQuality, SemanticIoU, panoptic_from_labels
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor
from panoptic_ros.postprocess import Segment


def main(argv: list[str]) -> int:
    """The CLI with the network eager unless a test names a backend: the default, auto, would export an artefact
    per weights and resolution first (about 12 s each)."""
    return module.main(argv if "--backend" in argv else [*argv, "--backend", "eager"])


TOPIC = "/camera/image_raw"
SECOND = 1_000_000_000


@pytest.fixture
def toy_bag(toy_camvid, tmp_path):
    make_bag(["--dataset", "camvid", "--root", str(toy_camvid), "--split", "val", "--out", str(tmp_path / "toy.mcap")])
    return tmp_path / "toy.mcap"


def direct(bag, weights, limit=None):
    """mIoU, PQ and AP from the Predictor and the metrics, without evaluate_bag."""
    predictor = Predictor.from_weights(weights, device="cpu", backend="eager")
    iou, pq, ap = SemanticIoU(len(CAMVID), 255), PanopticQuality(CAMVID), InstanceAP(CAMVID)
    with BagReader(bag) as reader:
        for frame in islice(reader.frames(TOPIC, DEFAULT_LABEL_TOPICS), limit):
            result = predictor(frame.rgb)
            truth = panoptic_from_labels(frame.labels["semantic"], frame.labels["instances"], CAMVID, 255)
            iou.update(result.semantic, torch.from_numpy(frame.labels["semantic"].astype(np.int64)))
            pq.update(result.panoptic.numpy(), truth)
            ap.update(result.panoptic.numpy(), {s.id: s.score for s in result.segments}, truth)
    return iou.compute()["miou"], pq.compute(), ap.compute()


def assert_report_matches(report, expected):
    miou, pq, ap = expected
    assert report["miou"] == pytest.approx(miou, abs=1e-12)
    for part in ("all", "things", "stuff"):
        for key in ("pq", "sq", "rq"):
            assert report["panoptic"][part][key] == pytest.approx(pq[part][key], abs=1e-12), (part, key)
    for key in ("ap", "ap50"):
        assert report["instance_ap"][key] == pytest.approx(ap[key], abs=1e-12, nan_ok=True)


def read_report(folder):
    return json.loads((folder / "report.json").read_text())


def test_no_arguments_evaluates_the_shipped_sample_bag(tmp_path, monkeypatch, capsys):
    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped weights")
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    report = read_report(tmp_path / "bag_evaluation")
    assert report["run"]["bag"] == str(DEFAULT_BAG) and report["run"]["topic"] == TOPIC
    assert report["frames"]["predicted"] == report["frames"]["scored"] == report["images"] == 5
    assert report["partial"] is False and report["run"]["model"] == "panonet_camvid"
    assert_report_matches(report, direct(DEFAULT_BAG, DEFAULT_WEIGHTS))
    printed = capsys.readouterr().out
    assert printed.startswith("# Bag evaluation: panonet_camvid on camvid_val.mcap /camera/image_raw")
    assert printed.split("wrote")[0] == (tmp_path / "bag_evaluation" / "report.md").read_text() + "\n"
    assert {p.name for p in (tmp_path / "bag_evaluation").iterdir()} == {
        "report.json", "report.md", "class_iou.png", "latency.png"}


def test_tiny_bag_report_output_bag_and_cityscapes_export(toy_bag, tiny_weights, tmp_path):
    out = tmp_path / "eval"
    assert main([str(toy_bag), "--weights", str(tiny_weights), "--out", str(out), "--output-bag",
                 str(tmp_path / "pred.mcap"), "--export-cityscapes"]) == 0
    report = read_report(out)
    assert_report_matches(report, direct(toy_bag, tiny_weights))
    assert report["frames"]["predicted"] == report["images"] == 4 and report["device"] == "cpu"
    assert set(report["latency_ms"]) == {"preprocess", "model", "clustering", "merge", "total"}
    assert set(report["overhead_ms"]) == {"bag decode", "metrics", "outputs"}
    assert report["run"]["ground truth"] == "label topics /camera/labels/semantic, /camera/labels/instances"

    predictor = Predictor.from_weights(tiny_weights, device="cpu", backend="eager")
    with BagReader(toy_bag) as inputs, BagReader(tmp_path / "pred.mcap") as outputs:
        assert {t: i.count for t, i in outputs.topics.items()} == {
            "/panoptic/semantic": 4, "/panoptic/instances": 4, "/panoptic/segmentation": 4, "/panoptic/overlay": 4}
        labels = ["/panoptic/semantic", "/panoptic/instances", "/panoptic/segmentation"]
        for frame, written in zip(inputs.frames(TOPIC), outputs.frames("/panoptic/overlay", labels)):
            result = predictor(frame.rgb)
            assert (written.stamp_ns, written.log_time_ns, written.frame_id) == (frame.stamp_ns, frame.log_time_ns, "camera")
            np.testing.assert_array_equal(written.labels["semantic"], result.semantic.numpy())
            np.testing.assert_array_equal(written.labels["instances"], result.instances.numpy())
            np.testing.assert_array_equal(written.labels["panoptic"], result.panoptic.numpy())

    exported = json.loads((out / "cityscapes" / "predictions.json").read_text())
    assert [a["image_id"] for a in exported["annotations"]] == ["f0", "f1", "f2", "f3"]  # names make_bag recorded
    assert len(json.loads((out / "cityscapes" / "ground_truth.json").read_text())["annotations"]) == 4


def test_dataset_folder_ground_truth_equals_the_dataset_evaluation(toy_camvid, tiny_weights, tmp_path):
    make_bag([str(toy_camvid / "train"), "--out", str(tmp_path / "images.mcap")])  # images only, names recorded
    assert main([str(tmp_path / "images.mcap"), "--weights", str(tiny_weights), "--out", str(tmp_path / "eval"),
                 "--gt", str(toy_camvid), "--gt-layout", "camvid", "--gt-split", "val"]) == 0
    report = read_report(tmp_path / "eval")
    expected = evaluate(Predictor.from_weights(tiny_weights, device="cpu", backend="eager"), CamVid(toy_camvid, "val"))
    assert report["images"] == expected["images"] == 4
    assert report["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert report["panoptic"]["all"]["pq"] == pytest.approx(expected["panoptic"]["all"]["pq"], abs=1e-12)


def test_frames_without_ground_truth_are_counted(toy_camvid, tiny_weights, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("f0", "f2"):
        (labels / f"{name}.png").write_bytes((toy_camvid / "trainannot" / f"{name}.png").read_bytes())
    make_bag([str(toy_camvid / "train"), "--labels", str(labels), "--out", str(tmp_path / "half.mcap")])
    assert main([str(tmp_path / "half.mcap"), "--weights", str(tiny_weights), "--out", str(tmp_path / "eval")]) == 0
    report = read_report(tmp_path / "eval")
    assert (report["frames"]["predicted"], report["frames"]["scored"]) == (4, 2)
    assert report["frames"]["not scored"] == {"no label with the frame's stamp": 2}
    assert "| not scored: no label with the frame's stamp | 2 |" in (tmp_path / "eval" / "report.md").read_text()


def segments_of(panoptic):
    """The segments of a panoptic id map (only the ids matter to a label bag)."""
    ids = sorted(set(np.unique(panoptic).tolist()) - {-1})
    return [Segment(i, i // 1000 if i >= 1000 else i, CAMVID[i // 1000 if i >= 1000 else i].name, i >= 1000, 1.0,
                    int((panoptic == i).sum()), (0, 0, 1, 1)) for i in ids]


def write_bag_with_labels(path, frames):
    """frames: (rgb, labels) pairs; labels maps a kind to an array (semantic mono8, instances 32SC1, panoptic)."""
    with BagWriter(path) as bag:
        for k, (rgb, labels) in enumerate(frames):
            stamp = (k + 1) * SECOND
            bag.write_image(TOPIC, stamp, rgb, "rgb8", "camera")
            if "semantic" in labels:
                bag.write_image("/l/semantic", stamp, labels["semantic"], "mono8", "camera")
            if "instances" in labels:
                bag.write_image("/l/instances", stamp, labels["instances"], "32SC1", "camera")
            if "panoptic" in labels:
                bag.write_panoptic("/l/panoptic", stamp, labels["panoptic"], segments_of(labels["panoptic"]), CAMVID,
                                   "camera", "gt")


def toy_frame(height=64, width=96):
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[height // 2:] = 90
    semantic = np.zeros((height, width), np.uint8)
    semantic[height // 2:] = 3
    semantic[40:52, 10:30] = 8
    instances = np.where(semantic == 8, 0, -1).astype(np.int32)
    return rgb, semantic, instances


def test_label_size_mismatch_is_counted_not_scored(tiny_weights, tmp_path):
    rgb, semantic, instances = toy_frame()
    small = {"semantic": semantic[::2, ::2].copy(), "instances": instances[::2, ::2].copy()}
    write_bag_with_labels(tmp_path / "b.mcap", [(rgb, {"semantic": semantic, "instances": instances}), (rgb, small)])
    assert main([str(tmp_path / "b.mcap"), "--weights", str(tiny_weights), "--out", str(tmp_path / "eval"),
                 "--label-topic", "/l/semantic", "--label-topic", "/l/instances"]) == 0
    report = read_report(tmp_path / "eval")
    assert (report["frames"]["predicted"], report["images"]) == (2, 1)
    assert report["frames"]["not scored"] == {"label size differs from the image": 1}


def test_panoptic_and_semantic_only_label_topics(tiny_weights, tmp_path):
    rgb, semantic, instances = toy_frame()
    panoptic = panoptic_from_labels(semantic, instances, CAMVID, 255).astype(np.int32)
    write_bag_with_labels(tmp_path / "b.mcap", [(rgb, {"panoptic": panoptic, "semantic": semantic})])
    for topic in ("/l/panoptic", "/l/semantic"):
        out = tmp_path / topic.rsplit("/", 1)[1]
        assert main([str(tmp_path / "b.mcap"), "--weights", str(tiny_weights), "--out", str(out),
                     "--label-topic", topic]) == 0
    from_panoptic, from_semantic = read_report(tmp_path / "panoptic"), read_report(tmp_path / "semantic")
    assert from_panoptic["images"] == from_semantic["images"] == 1
    # one car: its connected component is the instance the panoptic label holds, so the scores agree
    assert from_panoptic["miou"] == from_semantic["miou"]
    assert from_panoptic["panoptic"] == from_semantic["panoptic"]
    assert from_semantic["frames"]["notes"] == {"instances from connected components (no instance label)": 1}


class InterruptingPredictor:
    """Wraps a Predictor and presses Ctrl-C on its ``after + 1``-th call (evaluate_bag's warm-up is the first)."""

    def __init__(self, predictor, after):
        self.predictor, self.after, self.calls = predictor, after, 0

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def __call__(self, rgb):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.predictor(rgb)


def test_ctrl_c_writes_a_partial_report_of_the_frames_done(toy_bag, tiny_weights, tmp_path, monkeypatch, capsys):
    real = Predictor.from_weights
    monkeypatch.setattr(module.Predictor, "from_weights",
                        classmethod(lambda cls, *a, **k: InterruptingPredictor(real(*a, **k), after=3)))
    out = tmp_path / "eval"
    assert main([str(toy_bag), "--weights", str(tiny_weights), "--out", str(out),
                 "--output-bag", str(tmp_path / "pred.mcap")]) == 130
    report = read_report(out)
    assert report["partial"] is True and report["stopped"] == "interrupted"
    assert report["frames"]["predicted"] == report["images"] == 2
    assert_report_matches(report, direct(toy_bag, tiny_weights, limit=2))
    assert "**Partial report**: stopped after 2 frames (interrupted)" in (out / "report.md").read_text()
    with BagReader(tmp_path / "pred.mcap") as written:  # the output bag was closed properly
        assert written.topics["/panoptic/segmentation"].count == 2
    assert "partial report: interrupted" in capsys.readouterr().err


def test_damaged_bag_midway_gives_a_partial_report_naming_the_file(tiny_weights, tmp_path):
    rng = np.random.default_rng(0)
    _, semantic, instances = toy_frame(360, 480)
    frames = [(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8), {"semantic": semantic, "instances": instances})
              for _ in range(6)]
    write_bag_with_labels(tmp_path / "full.mcap", frames)
    data = (tmp_path / "full.mcap").read_bytes()
    (tmp_path / "cut.mcap").write_bytes(data[: len(data) * 2 // 3])
    assert main([str(tmp_path / "cut.mcap"), "--weights", str(tiny_weights), "--out", str(tmp_path / "eval"),
                 "--label-topic", "/l/semantic", "--label-topic", "/l/instances"]) == 1
    report = read_report(tmp_path / "eval")
    assert report["partial"] is True and "cut.mcap: truncated or corrupt" in report["stopped"]
    assert 1 <= report["frames"]["predicted"] == report["images"] < 6


def test_missing_topic_is_an_error_listing_the_topics(toy_bag, tiny_weights, tmp_path, capsys):
    assert main([str(toy_bag), "--weights", str(tiny_weights), "--out", str(tmp_path / "eval"), "--topic", "/x"]) == 2
    err = capsys.readouterr().err
    assert "no topic '/x'; the bag has: /camera/camera_info [sensor_msgs/msg/CameraInfo, 4]" in err
    assert not (tmp_path / "eval").exists()


def test_dataset_labels_of_another_class_table_are_refused(toy_bag, tiny_weights, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(toy_bag), "--weights", str(tiny_weights), "--out", str(tmp_path / "e"), "--gt", str(tmp_path),
              "--gt-layout", "cityscapes"])
    assert "--gt-layout cityscapes labels cityscapes classes, but tiny.safetensors predicts camvid classes" in (
        capsys.readouterr().err)


def test_realtime_runs_the_node_process_and_scores_what_it_published(tmp_path):
    assert main([str(DEFAULT_BAG), "--realtime", "--rate", "0.25", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    realtime = report["realtime"]
    assert realtime["published"] == 5 and realtime["received"] + realtime["dropped"] == 5
    assert report["images"] == realtime["received"] and 0 < report["miou"] <= 1
    assert len(list(tmp_path.glob("overlay_*.png"))) == realtime["received"]


def test_realtime_refuses_offline_only_options(tmp_path):
    with pytest.raises(SystemExit):
        main(["--realtime", "--limit", "2", "--out", str(tmp_path)])
