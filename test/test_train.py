"""A tiny training run on generated data lowers the loss, resumes from its checkpoint and exports loadable weights."""

import json
import math

import pytest
import torch

from panoptic_ros.checkpoint import load_model
from panoptic_ros.config import config_from_dict
from panoptic_ros.models import build_model
from panoptic_ros.models.panonet import coordinate_channels
from panoptic_ros.train import class_weights_for, forward_batch, poly_schedule, train


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


def test_poly_schedule_restarts_at_the_coordinate_switch():
    """Sec. III-C: the stage with coordinates starts its own learning-rate decay."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = poly_schedule(opt, total_steps=10, power=1.0, restart_step=4)
    rates = []
    for _ in range(10):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert rates == pytest.approx([1.0, 0.75, 0.5, 0.25, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    plain = poly_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 10, 1.0, restart_step=0)
    assert plain.lr_lambdas[0](4) == pytest.approx(0.6)


def test_poly_schedule_holds_the_weight_averaging_rate_after_its_span():
    """With ``constant`` (SWA's rate), the decay spans ``total_steps`` (restart included) and the rate holds at lr
    x constant from there on."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = poly_schedule(opt, total_steps=4, power=1.0, restart_step=2, constant=0.3)
    assert [sched.lr_lambdas[0](step) for step in range(7)] == pytest.approx([1.0, 0.5, 1.0, 0.5, 0.3, 0.3, 0.3])


def test_weight_averaging_exports_the_mean_of_its_epochs_with_fresh_batchnorm(toy_camvid, tmp_path, monkeypatch):
    """``train.swa_epochs: 2`` of 3: epoch 1 at the poly rate, epochs 2 and 3 at ``swa_lr``; the exported weights
    are the mean of the parameters at the end of epochs 2 and 3, their BatchNorm statistics recomputed (neither the
    last epoch's nor the copy's initial ones), the averaged model's validation logged; a resumed run goes on
    averaging where it stopped (2 epochs averaged at epoch 3, not 1)."""
    from torch.optim.swa_utils import AveragedModel

    snapshots = []
    update = AveragedModel.update_parameters

    def recording(self, model):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", recording)
    cfg = config(toy_camvid, epochs=3)
    cfg.train.swa_epochs, cfg.train.swa_lr, cfg.train.coordinate_epoch = 2, 0.004, 0
    torch.manual_seed(0)
    out = tmp_path / "swa"
    train(cfg, out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log[:3]] == pytest.approx([0.004] * 3)  # the rate after each epoch's last step
    assert [r["averaged"] for r in log[:3]] == [0, 1, 2] and log[3]["averaged_epochs"] == 2
    assert len(snapshots) == 2
    model, _, _, info = load_model(out / "weights.safetensors")
    assert info["swa_epochs"] == 2 and info["final_val_miou"] == pytest.approx(log[3]["val_miou"])
    for exported, first, second in zip(model.parameters(), *snapshots):
        torch.testing.assert_close(exported, (first + second) / 2, rtol=1e-3, atol=1e-5)  # fp16 in the file
    last = torch.load(out / "last.pt", weights_only=True)["model"]
    means = {k: v for k, v in model.state_dict().items() if k.endswith("running_mean")}
    assert means and any(not torch.allclose(v, last[k].float(), atol=1e-3) for k, v in means.items())
    assert all(v.abs().sum() > 0 for v in means.values())  # recomputed, not left at the reset zeros

    resumed = tmp_path / "resumed"
    cfg2 = config(toy_camvid, epochs=3)
    cfg2.train.swa_epochs, cfg2.train.swa_lr, cfg2.train.coordinate_epoch = 2, 0.004, 0
    train(config_from_dict({**cfg2.to_dict(), "train": {**cfg2.to_dict()["train"], "epochs": 2, "swa_epochs": 1}}),
          resumed)
    torch.save({**torch.load(resumed / "last.pt", weights_only=True), "config": cfg2.to_dict()}, resumed / "last.pt")
    train(cfg2, resumed, resume=True)
    log = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r.get("averaged") for r in log if "epoch" in r] == [0, 1, 2]


def test_forward_batch_gives_the_network_the_crops_coordinates():
    cfg = config("unused", epochs=2)
    model = build_model("panonet", **cfg.model.kwargs()).eval()
    with torch.no_grad():
        model.instance_encoder.stem[0][0].weight[:, 3:].fill_(1.0)
    images = torch.randn(1, 3, 32, 48)
    crop = coordinate_channels(1, 32, 48) * 0.25 + 0.5  # a crop of the right half, as TrainAugment gives
    out = forward_batch(model, {"image": images, "coordinates": crop}, cfg)
    assert torch.allclose(out["embedding"], model(images, crop)["embedding"])
    assert not torch.allclose(out["embedding"], model(images)["embedding"])


def test_semantic_stage_then_instance_stage_from_it(toy_camvid, tmp_path):
    """The schedule of Sec. III-C through the CLI's train(): a semantic-only run, then --init from its weights."""
    semantic_cfg = config(toy_camvid, epochs=2)
    semantic_cfg.train.semantic_only = True
    semantic_cfg.train.coordinate_epoch = 0
    train(semantic_cfg, tmp_path / "semantic")
    log = [json.loads(line) for line in (tmp_path / "semantic" / "log.jsonl").read_text().splitlines()]
    assert "loss_instance" not in log[0] and log[-1]["loss_semantic"] < log[0]["loss_semantic"]
    assert not any(r["coordinates"] for r in log)  # coordinate_epoch 0 is ignored: no coordinate stage here
    stage_one, _, _, info = load_model(tmp_path / "semantic" / "weights.safetensors")
    assert info["semantic_only"] is True

    train(config(toy_camvid, epochs=3), tmp_path / "instance", init=tmp_path / "semantic" / "weights.safetensors")
    model, _, _, info = load_model(tmp_path / "instance" / "weights.safetensors")
    assert info["semantic_only"] is False and bool(model.use_coordinates)
    without, _, _, info = load_model(tmp_path / "instance" / "weights_without_coordinates.safetensors")
    assert info["epochs"] == 2 and not bool(without.use_coordinates)  # the stage before the switch, for Fig. 5
    first = json.loads((tmp_path / "instance" / "log.jsonl").read_text().splitlines()[0])
    assert first["loss_semantic"] < log[0]["loss_semantic"]  # the semantic branch kept its training
    # the instance encoder was copied from the semantic one before training moved it: its RGB filters correlate
    a = stage_one.semantic_encoder.stem[0][0].weight.flatten()
    b = model.instance_encoder.stem[0][0].weight[:, :3].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


def test_bf16_autocast_trains(toy_camvid, tmp_path):
    cfg = config(toy_camvid, epochs=2)
    cfg.train.epochs = 1
    cfg.train.coordinate_epoch = 1
    cfg.train.precision = "bf16"
    train(cfg, tmp_path / "bf16")
    record = json.loads((tmp_path / "bf16" / "log.jsonl").read_text())
    assert record["precision"] == "bf16" and math.isfinite(record["loss_total"]) and record["val_miou"] >= 0


class _Labels:
    """A dataset of hand-made label maps, as class_weights_for reads them (decode(index)[1])."""

    def __init__(self, *maps):
        self.maps = [torch.tensor(m, dtype=torch.uint8).numpy() for m in maps]

    def __len__(self):
        return len(self.maps)

    def decode(self, index):
        return None, self.maps[index]


def test_class_weights_follow_enet_and_their_power():
    # 6 labelled pixels: class 0 four times, class 1 twice, class 2 never; 255 is ignored.
    data = _Labels([[0, 0, 255], [1, 0, 255]], [[0, 1, 255]])
    p = torch.tensor([4 / 6, 2 / 6, 0.0], dtype=torch.float64)
    enet = 1.0 / torch.log(1.02 + p)
    torch.testing.assert_close(class_weights_for(data, 3), enet.float())
    torch.testing.assert_close(class_weights_for(data, 3, power=0.5), enet.sqrt().float())
    with pytest.raises(ValueError, match="class_weight_power"):
        config_from_dict({"train": {"class_weight_power": 0}})
