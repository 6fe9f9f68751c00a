"""A tiny training run on generated data lowers the loss, resumes from its checkpoint and exports loadable weights."""

import json

import cv2
import numpy as np
import pytest
import torch

from panoptic_ros.checkpoint import load_model
from panoptic_ros.config import config_from_dict
from panoptic_ros.train import train


@pytest.fixture
def toy_camvid(tmp_path):
    """Four 64 x 96 frames: road below, sky above, and two 'cars' (class 8) as coloured boxes."""
    rng = np.random.default_rng(0)
    lines = []
    for k in range(4):
        label = np.zeros((64, 96), np.uint8)
        label[32:] = 3
        image = np.zeros((64, 96, 3), np.uint8)
        image[:32] = (200, 200, 255)
        image[32:] = (90, 90, 90)
        for _ in range(2):
            y, x = rng.integers(30, 50), rng.integers(0, 80)
            label[y:y + 12, x:x + 16] = 8
            image[y:y + 12, x:x + 16] = (200, 30, 30)
        for folder, array in (("train", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), ("trainannot", label)):
            (tmp_path / folder).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / folder / f"f{k}.png"), array)
        lines.append(f"/SegNet/CamVid/train/f{k}.png /SegNet/CamVid/trainannot/f{k}.png")
    for split in ("train", "val"):
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def config(root, epochs):
    return config_from_dict({
        "model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]},
        "data": {"root": str(root), "crop": [64, 96], "scale": [1.0, 1.0], "jitter": 0.0, "batch_size": 2, "workers": 0},
        "train": {"epochs": epochs, "coordinate_epoch": 2, "optimizer": "adam", "lr": 0.01, "poly_power": 0.0},
    })


def test_training_lowers_the_loss_resumes_and_exports(toy_camvid, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "run"
    train(config(toy_camvid, epochs=3), out)
    train(config(toy_camvid, epochs=6), out, resume=True)  # continues at epoch 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r["coordinates"] for r in log] == [False, False, True, True, True, True]
    assert log[-1]["loss_total"] < 0.7 * log[0]["loss_total"]
    assert log[-1]["loss_semantic"] < log[0]["loss_semantic"]
    assert log[-1]["val_miou"] > log[0]["val_miou"]
    model, model_cfg, _, info = load_model(out / "weights.safetensors")
    assert model_cfg.num_classes == 11 and info["epochs"] == 6
