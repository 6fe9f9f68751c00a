"""Session-wide test environment.

ROS 2 traffic of a test run stays on loopback and in a DDS domain of its own, so concurrent runs (and robots on
the network) never see each other. Set at import, before any test module imports rclpy.
"""

import os
import tempfile

import cv2
import numpy as np
import pytest
import torch

from panoptic_ros.checkpoint import save_weights
from panoptic_ros.config import config_from_dict
from panoptic_ros.models import build_model
from panoptic_ros.ros.env import isolate

# Artefacts of the exported backends (the default, auto, is one on the CPU) go to a cache of the run's own, never
# the user's.
os.environ["PANOPTIC_ROS_CACHE"] = tempfile.mkdtemp(prefix="panoptic_ros_test_cache_")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
isolate()  # and the shipped shared-memory Fast DDS profile, for 2 MP frames
# Domains 1..100 keep Fast DDS's well-known ports out of the ephemeral range.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)


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


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """An untrained small PanoNet (CamVid classes) biased towards cars, so that clustering, thing PQ and AP see
    instances; quick enough for any evaluator test."""
    cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]},
                            "postprocess": {"min_instance_pixels": 1}})
    torch.manual_seed(0)
    model = build_model("panonet", **cfg.model.kwargs())
    with torch.no_grad():
        model.semantic_decoder.head.bias[8] = 2.0
    return save_weights(model, cfg, tmp_path_factory.mktemp("weights") / "tiny.safetensors")


#: A PanopticFPN small enough for any test (ResNet-18, narrow heads, few proposals), CamVid classes.
TINY_FPN = {"architecture": "panoptic_fpn", "backbone": "resnet18", "fpn_channels": 32, "semantic_channels": 32,
            "box_head_channels": 64, "mask_head_channels": 32, "rpn_pre_nms_top_n_train": 100,
            "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30,
            "box_batch_size_per_image": 32, "box_score_thresh": 0.0, "box_detections_per_img": 20}


@pytest.fixture
def tiny_fpn():
    """``TINY_FPN``, the model section of a tiny PanopticFPN config (a fixture: ``conftest`` is not importable
    by name where several test folders hold one)."""
    return dict(TINY_FPN)


@pytest.fixture(scope="session")
def tiny_fpn_weights(tmp_path_factory):
    """An untrained tiny PanopticFPN (accuracy mode) whose every detection reaches the merge (thresholds 0), so
    the outputs hold thing segments."""
    cfg = config_from_dict({"model": TINY_FPN, "postprocess": {"score_threshold": 0.0, "stuff_min_area": 0},
                            "data": {"crop": [64, 96]}})
    torch.manual_seed(0)
    model = build_model("panoptic_fpn", **cfg.model.kwargs())
    return save_weights(model, cfg, tmp_path_factory.mktemp("weights") / "tiny_fpn.safetensors")
