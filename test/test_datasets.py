"""Datasets read their own folder layouts; augmentations keep image and labels aligned."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from panoptic_ros.classes import CAMVID, CITYSCAPES
from panoptic_ros.datasets import CamVid, Cityscapes
from panoptic_ros.models.panonet import coordinate_channels
from panoptic_ros.transforms import IGNORE_LABEL, NO_INSTANCE, TrainAugment, normalize_image


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def camvid_root(tmp_path):
    label = np.full((12, 16), 3, np.uint8)  # road
    label[1:4, 1:5] = 8  # car 1
    label[6:9, 10:15] = 8  # car 2
    label[10:12, 0:3] = 11  # void
    lines = []
    for name in ("a", "b"):
        write_png(tmp_path / "train" / f"{name}.png", np.full((12, 16, 3), 100, np.uint8))
        write_png(tmp_path / "trainannot" / f"{name}.png", label)
        lines.append(f"/SegNet/CamVid/train/{name}.png /SegNet/CamVid/trainannot/{name}.png")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_camvid_maps_void_to_ignore_and_components_to_instances(camvid_root):
    ds = CamVid(camvid_root, "train")
    assert len(ds) == 2
    item = ds[0]
    assert item["image"].shape == (3, 12, 16) and item["image"].dtype == torch.float32
    semantic, instances = item["semantic"], item["instances"]
    assert semantic[11, 0] == IGNORE_LABEL and semantic[0, 0] == 3 and semantic[2, 2] == 8
    assert set(instances.unique().tolist()) == {NO_INSTANCE, 0, 1}
    assert instances[2, 2] != instances[7, 12] and (instances[semantic == 3] == NO_INSTANCE).all()


def test_camvid_missing_listing_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.txt"):
        CamVid(tmp_path, "train")


def test_cityscapes_maps_label_ids_to_train_ids_and_reads_instances(tmp_path):
    gt = tmp_path / "gtFine" / "val" / "ulm"
    label_ids = np.full((8, 10), 7, np.uint8)  # road (train id 0)
    label_ids[0, :] = 0  # unlabeled -> ignore
    label_ids[2:5, 2:6] = 26  # car (train id 13)
    instance_ids = label_ids.astype(np.uint16)
    instance_ids[2:5, 2:4] = 26000
    instance_ids[2:5, 4:6] = 26001
    instance_ids[6, 0:2] = 26  # crowd car region: a car with no instance
    label_ids[6, 0:2] = 26
    write_png(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_000000_000019_leftImg8bit.png", np.zeros((8, 10, 3), np.uint8))
    write_png(gt / "ulm_000000_000019_gtFine_labelIds.png", label_ids)
    write_png(gt / "ulm_000000_000019_gtFine_instanceIds.png", instance_ids)
    item = Cityscapes(tmp_path, "val")[0]
    assert item["semantic"][0, 0] == IGNORE_LABEL and item["semantic"][1, 0] == 0 and item["semantic"][3, 3] == 13
    assert item["instances"][3, 2] == 0 and item["instances"][3, 5] == 1
    assert item["instances"][6, 0] == NO_INSTANCE and item["semantic"][6, 0] == 13


def test_class_tables():
    assert CAMVID.thing_ids == (8, 9, 10) and len(CAMVID) == 11
    assert len(CITYSCAPES) == 19 and CITYSCAPES.thing_ids == tuple(range(11, 19))
    assert CITYSCAPES[13].name == "car" and CITYSCAPES[13].color == (0, 0, 142)


def test_augment_keeps_image_and_labels_aligned():
    # The image encodes the label in its red channel, so any misalignment would show.
    rng = np.random.default_rng(0)
    semantic = rng.integers(0, 11, (40, 60)).astype(np.uint8)
    instances = rng.integers(-1, 4, (40, 60)).astype(np.int32)
    rgb = np.stack([semantic * 20, semantic * 0, semantic * 0], axis=2).astype(np.uint8)
    augment = TrainAugment(crop=(32, 48), scale=(0.5, 2.0), jitter=0.0, seed=1)
    for _ in range(20):
        out_rgb, out_sem, out_inst, _ = augment(rgb, semantic, instances)
        assert out_rgb.shape == (32, 48, 3) and out_sem.shape == (32, 48) and out_inst.shape == (32, 48)
        labelled = out_sem != IGNORE_LABEL
        # nearest-neighbour labels; bilinear image: compare where the label's 3x3 neighbourhood is uniform
        uniform = labelled.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                uniform &= np.roll(out_sem, (dy, dx), (0, 1)) == out_sem
        uniform[[0, -1], :] = uniform[:, [0, -1]] = False
        assert np.abs(out_rgb[..., 0][uniform].astype(int) - out_sem[uniform].astype(int) * 20).max(initial=0) <= 1
        assert set(np.unique(out_inst)) <= {-1, 0, 1, 2, 3}
        assert (out_inst[~labelled] == NO_INSTANCE).all() or labelled.all()


def test_augment_coordinates_are_those_of_the_whole_scaled_image():
    """PanoNet Sec. III-A: a crop's CoordConv channels are the full image's, cut with it. Per-crop coordinates
    (always -1..1 over the crop) or a flip that reverses x fail this."""
    h, w = 40, 60
    # The image carries each pixel's column and row, so the crop shows where it came from.
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    rgb = np.stack([cols * 4, rows * 6, np.zeros_like(cols)], axis=2).astype(np.uint8)
    semantic = np.zeros((h, w), np.uint8)
    augment = TrainAugment(crop=(20, 30), scale=(2.0, 2.0), jitter=0.0, seed=3)
    seen = set()
    for _ in range(12):
        out_rgb, _, _, coords = augment(rgb, semantic, np.full((h, w), -1, np.int32))
        assert coords.shape == (2, 20, 30) and coords.dtype == torch.float32
        xs, ys = coords[0, 0].numpy(), coords[1, :, 0].numpy()
        step = 2.0 / (2 * w)  # one pixel of the 120-pixel-wide scaled image
        assert np.allclose(np.diff(xs), step) and np.allclose(np.diff(ys), 2.0 / (2 * h))  # x grows left to right
        assert -1 <= xs.min() and xs.max() <= 1 and xs.max() - xs.min() < 0.5  # a quarter of the width, not -1..1
        # The column the crop's pixels came from, read from the image, maps to the coordinates given.
        source_col = out_rgb[10, :, 0] / 4.0  # original column of each crop pixel (bilinear: within half a pixel)
        expected = (source_col + 0.5) * (2.0 / w) - 1.0
        flipped = bool(source_col[0] > source_col[-1])
        if flipped:
            expected = -expected  # in the mirrored image, column c of the original sits at w - 1 - c
        seen.add(flipped)
        assert np.abs(xs - expected).max() < 2.5 * step
        source_row = out_rgb[:, 15, 1] / 6.0
        assert np.abs(ys - ((source_row + 0.5) * (2.0 / h) - 1.0)).max() < 2.5 / (2 * h)
    assert seen == {False, True}


def test_preloaded_dataset_gives_the_same_items_with_full_image_coordinates(toy_camvid):
    lazy, preloaded = CamVid(toy_camvid, "train"), CamVid(toy_camvid, "train", preload=True)
    for a, b in zip(lazy, preloaded):
        for key in ("image", "semantic", "instances", "coordinates"):
            assert torch.equal(a[key], b[key])
    grid = preloaded[0]["coordinates"]
    assert grid.shape == (2, 64, 96) and torch.allclose(grid, coordinate_channels(1, 64, 96)[0], atol=1e-6)


def test_normalize_image_rejects_wrong_input():
    assert normalize_image(np.zeros((4, 5, 3), np.uint8)).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="uint8 RGB"):
        normalize_image(np.zeros((4, 5), np.uint8))


class FixedDraws:
    """An rng stand-in whose uniform() returns the given brightness, contrast and saturation offsets."""

    def __init__(self, offsets):
        self.offsets = np.asarray(offsets, dtype=float)

    def uniform(self, low, high, size):
        return self.offsets


@pytest.mark.parametrize("offsets, expected", [
    ((0.2, 0.0, 0.0), lambda x: x * 1.2),                                        # brightness
    ((0.0, -1.0, 0.0), lambda x: np.broadcast_to(x.mean(), x.shape)),             # contrast 0: the mean everywhere
    ((0.0, -0.5, 0.0), lambda x: (x - x.mean()) * 0.5 + x.mean()),               # half contrast about the mean
    ((0.0, 0.0, -1.0), lambda x: np.broadcast_to(x.mean(2, keepdims=True), x.shape)),  # saturation 0: gray
    ((0.0, 0.0, 0.5), lambda x: (x - x.mean(2, keepdims=True)) * 1.5 + x.mean(2, keepdims=True)),
])
def test_jitter_is_brightness_contrast_saturation(offsets, expected):
    rgb = np.random.default_rng(0).integers(60, 180, (30, 40, 3)).astype(np.uint8)
    augment = TrainAugment(jitter=0.25)
    augment.rng = FixedDraws(offsets)
    out = augment._jitter(rgb)
    want = np.clip(expected(rgb.astype(float)), 0, 255)
    assert out.dtype == np.uint8 and np.abs(out - want).max() <= 1.5


def test_normalize_image_values_are_imagenet_normalised_per_channel():
    """(x / 255 - mean) / std per channel, channels first, from a non-contiguous view too (a flipped image)."""
    from panoptic_ros.transforms import MEAN, STD

    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)[:, ::-1]
    expected = ((rgb.astype(np.float64) / 255 - MEAN) / STD).transpose(2, 0, 1)
    got = normalize_image(rgb)
    assert got.dtype == torch.float32 and got.shape == (3, 6, 7)
    assert np.abs(got.numpy() - expected).max() < 1e-5
