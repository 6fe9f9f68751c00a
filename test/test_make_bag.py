"""make_bag writes frames at the given rate with label topics in the convention evaluate_bag reads back."""

import shutil

import cv2
import numpy as np
import pytest

from panoptic_ros.bags import BagReader
from panoptic_ros.datasets import CamVid, camvid_targets, read_label, read_rgb
from panoptic_ros.make_bag import main

SECOND = 1_000_000_000


def test_from_a_dataset_split(toy_camvid, tmp_path):
    summary = main(["--dataset", "camvid", "--root", str(toy_camvid), "--split", "val", "--limit", "3",
                    "--rate", "4", "--out", str(tmp_path / "toy.mcap")])
    assert summary["frames"] == summary["labelled"] == 3 and summary["bytes"] == (tmp_path / "toy.mcap").stat().st_size
    dataset = CamVid(toy_camvid, "val")
    with BagReader(tmp_path / "toy.mcap") as bag:
        assert {t: i.count for t, i in bag.topics.items()} == {
            "/camera/image_raw": 3, "/camera/camera_info": 3, "/camera/labels/semantic": 3, "/camera/labels/instances": 3}
        frames = list(bag.frames("/camera/image_raw", ["/camera/labels/semantic", "/camera/labels/instances"]))
        assert bag.frame_names == {SECOND + k * SECOND // 4: f"f{k}" for k in range(3)}
    assert [f.stamp_ns for f in frames] == [SECOND, SECOND + SECOND // 4, SECOND + SECOND // 2]
    for frame, files in zip(frames, dataset.pairs):
        semantic, instances = dataset.load_targets(files[1:])
        np.testing.assert_array_equal(frame.rgb, read_rgb(files[0]))
        np.testing.assert_array_equal(frame.labels["semantic"], semantic)
        np.testing.assert_array_equal(frame.labels["instances"], instances)
        assert frame.encoding == "rgb8" and frame.frame_id == "camera"


def test_from_a_folder_with_labels_named_like_the_images(toy_camvid, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(toy_camvid / "trainannot" / "f0.png", labels / "f0.png")
    shutil.copy(toy_camvid / "trainannot" / "f2.png", labels / "f2_label.png")
    summary = main([str(toy_camvid / "train"), "--labels", str(labels), "--out", str(tmp_path / "bag"),
                    "--storage", "sqlite3", "--encoding", "png", "--topic", "/cam/image", "--label-topic", "/gt",
                    "--frame-id", "cam_optical", "--rate", "2", "--start", "5"])
    assert (summary["frames"], summary["labelled"]) == (4, 2) and (tmp_path / "bag" / "metadata.yaml").exists()
    with BagReader(tmp_path / "bag") as bag:
        assert set(bag.topics) == {"/cam/image", "/cam/camera_info", "/gt/semantic", "/gt/instances"}
        frames = list(bag.frames("/cam/image", ["/gt/semantic", "/gt/instances"]))
    assert [f.stamp_ns for f in frames] == [5 * SECOND + k * SECOND // 2 for k in range(4)]
    assert [sorted(f.labels) for f in frames] == [["instances", "semantic"], [], ["instances", "semantic"], []]
    semantic, instances = camvid_targets(read_label(labels / "f2_label.png"))
    np.testing.assert_array_equal(frames[2].labels["semantic"], semantic)
    np.testing.assert_array_equal(frames[2].labels["instances"], instances)
    assert frames[0].encoding == "png" and frames[0].frame_id == "cam_optical"
    np.testing.assert_array_equal(frames[1].rgb, read_rgb(toy_camvid / "train" / "f1.png"))  # png is lossless


def test_label_of_another_size_is_an_error(toy_camvid, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    cv2.imwrite(str(labels / "f0.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"f0.png is 10 x 10, image .*f0.png is 96 x 64"):
        main([str(toy_camvid / "train" / "f0.png"), "--labels", str(labels), "--out", str(tmp_path / "b.mcap")])


@pytest.mark.parametrize("argv,message", [
    (["--out", "x.mcap"], "give image folders or files, or --dataset"),
    (["--dataset", "camvid", "--out", "x.mcap"], "--dataset needs --root"),
    (["img", "--encoding", "rgb9", "--out", "x.mcap"], "encoding 'rgb9' is not allowed: expected one of rgb8"),
    (["img", "--rate", "0", "--out", "x.mcap"], "rate 0.0 is not allowed"),
])
def test_bad_arguments_are_explained(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
