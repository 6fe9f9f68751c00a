"""Shared checks of the instance-decoder tests."""

import pytest
import torch
from sklearn.metrics import adjusted_rand_score


def _same_instances(predicted: torch.Tensor, expected: torch.Tensor) -> bool:
    """Both maps mark the same pixels as instance pixels (ids >= 0) and split them identically, up to relabelling
    (adjusted Rand index 1 over those pixels; 1 also when both have a single instance)."""
    if not torch.equal(predicted >= 0, expected >= 0):
        return False
    inside = expected >= 0
    if not bool(inside.any()):
        return True
    return adjusted_rand_score(expected[inside].numpy(), predicted[inside].numpy()) == 1.0


@pytest.fixture
def same_instances():
    return _same_instances


@pytest.fixture
def scene():
    """A 12 x 16 grid: two touching 4 x 4 cars (class 8) side by side, a car split in two by a pole (class 5),
    a 1-pixel-wide pedestrian (class 9) 6 pixels tall, and a single-pixel car; -1 elsewhere.
    Returns (instance ids [12, 16], semantic [12, 16]); road (class 3) where there is no object."""
    ids = torch.full((12, 16), -1, dtype=torch.int64)
    ids[1:5, 1:5] = 0
    ids[1:5, 5:9] = 1
    ids[7:10, 1:4] = 2  # left part of the occluded car ...
    ids[7:10, 5:8] = 2  # ... and its right part, behind the pole at column 4
    ids[2:8, 12] = 3  # thin pedestrian
    ids[11, 15] = 4  # one-pixel car
    semantic = torch.full((12, 16), 3, dtype=torch.int64)
    semantic[ids >= 0] = 8
    semantic[ids == 3] = 9
    semantic[6:11, 4] = 5  # the pole
    return ids, semantic
