"""A tiny training run on generated data lowers the loss, resumes from its checkpoint and exports loadable weights."""

import json

import pytest
import torch

from panoptic_ros.checkpoint import load_model
from panoptic_ros.config import config_from_dict
from panoptic_ros.train import train


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

    # Fine-tuning starts from those parameters: its first epoch is already at the trained loss level.
    tuned = tmp_path / "tuned"
    train(config(toy_camvid, epochs=2), tuned, init=out / "weights.safetensors")
    first = json.loads((tuned / "log.jsonl").read_text().splitlines()[0])
    assert first["loss_total"] < 0.8 * log[0]["loss_total"]


@pytest.mark.slow
def test_torchrun_trains_with_two_processes(toy_camvid, tmp_path):
    """DistributedDataParallel on two CPU processes (gloo): rank 0 logs, checkpoints and exports."""
    import subprocess
    import sys

    import yaml

    cfg = config(toy_camvid, epochs=2).to_dict()
    cfg["train"]["epochs"] = 1
    cfg["train"]["coordinate_epoch"] = 1
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "ddp"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "panoptic_ros.train", "--config", str(cfg_path), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]  # one log line: only rank 0 writes
    assert (out / "weights.safetensors").exists() and (out / "last.pt").exists()
