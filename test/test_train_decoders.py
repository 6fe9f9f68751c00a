"""The training CLI's ``train()`` for each of PanoNet's instance decoders (issue #13 item 4): the instance loss
follows ``model.instance_decoder`` (PanoNet's discriminative loss, DCME's clipped MSE, Bridging's box regression),
a tiny CPU run on generated data lowers it, and the weights file it writes records the decoder and runs in the
Predictor. Semantic-only weights (Sec. III-C stage 1) start any decoder."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from panoptic_ros.checkpoint import load_model
from panoptic_ros.classes import CAMVID
from panoptic_ros.config import DECODER_POSTPROCESS_CONFIGS, DECODER_TRAIN_KEYS, config_from_dict, load_config
from panoptic_ros.decoders import bridging_cascade_loss, bridging_targets, dcme_cascade_loss
from panoptic_ros.losses import cascade_cross_entropy, cascade_discriminative_loss
from panoptic_ros.predictor import Predictor
from panoptic_ros.train import compute_losses, train
from panoptic_ros.transforms import IGNORE_LABEL, NO_INSTANCE

THINGS = list(CAMVID.thing_ids)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DECODER_MODEL = {"embedding": {}, "dcme": {"instance_decoder": "dcme"},
                 "bridging": {"instance_decoder": "bridging", "thing_classes": THINGS}}


def config(root, decoder, epochs, **train):
    return config_from_dict({
        "model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1], **DECODER_MODEL[decoder]},
        "data": {"root": str(root), "crop": [64, 96], "scale": [1.0, 1.0], "jitter": 0.0, "batch_size": 2,
                 "workers": 0},
        "train": {"epochs": epochs, "coordinate_epoch": 0, "optimizer": "adam", "lr": 0.01, "poly_power": 0.0,
                  **train},
        "postprocess": {"min_instance_pixels": 1},
    })


def batch_of(decoder):
    """A 2-image batch: road, a void corner, two cars (class 8) in image 0 and one pedestrian (class 9) in 1."""
    semantic = torch.full((2, 64, 96), 3, dtype=torch.int64)
    instances = torch.full((2, 64, 96), NO_INSTANCE, dtype=torch.int64)
    semantic[:, :8, :8] = IGNORE_LABEL
    for b, (cls, boxes) in enumerate([(8, [(30, 42, 10, 30), (30, 44, 40, 70)]), (9, [(20, 50, 60, 66)])]):
        for k, (y0, y1, x0, x1) in enumerate(boxes):
            semantic[b, y0:y1, x0:x1] = cls
            instances[b, y0:y1, x0:x1] = k
    torch.manual_seed(0)
    return {"image": torch.randn(2, 3, 64, 96), "coordinates": torch.zeros(2, 2, 64, 96), "semantic": semantic,
            "instances": instances}


def outputs_of(decoder, batch):
    """Hand-made network outputs for ``batch`` at 1/4, 1/8 and 1/16 (16 x 24, 8 x 12, 4 x 6): random logits; the
    instance branch random (embedding, dcme: vectors of up to ~10 cells, beyond DCME's clip) or, for bridging,
    the exact box targets at each scale with noise in image 1 only (image 0's boxes are perfect: IoU 1)."""
    torch.manual_seed(1)
    sizes = [(16, 24), (8, 12), (4, 6)]
    semantic = [torch.randn(2, 11, *size, requires_grad=True) for size in sizes]
    if decoder == "bridging":
        instance = []
        for size in sizes:
            ids = torch.nn.functional.interpolate(batch["instances"][:, None].float(), size, mode="nearest")[:, 0]
            sem = torch.nn.functional.interpolate(batch["semantic"][:, None].float(), size, mode="nearest")[:, 0]
            targets = bridging_targets(ids.long(), sem.long(), THINGS)
            exact = torch.zeros(2, 4 * len(THINGS), *size)
            for t in range(len(THINGS)):
                exact[:, 4 * t:4 * t + 4] = torch.where(targets.thing[:, None] == t, targets.boxes, 0.0)
            exact[1] += 3 * torch.randn_like(exact[1])
            instance.append(exact.requires_grad_())
    else:
        channels = 12 if decoder == "embedding" else 2
        instance = [(5 * torch.randn(2, channels, *size)).requires_grad_() for size in sizes]
    return {"semantic": semantic[0], "semantic_guidance": semantic[1:], "embedding": instance[0],
            "embedding_guidance": instance[1:]}


@pytest.mark.parametrize("decoder", list(DECODER_MODEL))
def test_the_instance_loss_is_the_decoders(decoder):
    """compute_losses = cascade cross-entropy + instance_weight x the decoder's own cascade loss, with the
    config's settings: DCME paper Eq. 6's A (it shapes the gradient, not the value) and Bridging paper Sec.
    2.2's IoU bootstrapping (image 0's perfect boxes are dropped at threshold 0.5)."""
    extra = {"dcme": {"dcme_amplitude": 2.0}, "bridging": {"bridging_bootstrap_threshold": 0.5}}.get(decoder, {})
    cfg = config("unused", decoder, epochs=1, instance_weight=0.5, **extra)
    batch = batch_of(decoder)
    out = outputs_of(decoder, batch)
    losses = compute_losses(out, batch, cfg, None)
    cascade = [out["embedding"], *out["embedding_guidance"]]
    semantic = cascade_cross_entropy([out["semantic"], *out["semantic_guidance"]], batch["semantic"],
                                     ignore_index=IGNORE_LABEL)
    valid = batch["semantic"] != IGNORE_LABEL
    if decoder == "embedding":
        expected = cascade_discriminative_loss(cascade, batch["instances"], ignore_index=NO_INSTANCE)["total"]
        assert set(losses) == {"total", "semantic", "instance", "var", "dist", "reg"}
    elif decoder == "dcme":
        expected = dcme_cascade_loss(cascade, batch["instances"], valid, amplitude=2.0)
        assert set(losses) == {"total", "semantic", "instance"}
    else:
        expected = bridging_cascade_loss(cascade, batch["instances"], batch["semantic"], THINGS,
                                         bootstrap_threshold=0.5)
        assert expected > 1.5 * bridging_cascade_loss(cascade, batch["instances"], batch["semantic"], THINGS)
        assert set(losses) == {"total", "semantic", "instance"}
    torch.testing.assert_close(losses["semantic"], semantic)
    torch.testing.assert_close(losses["instance"], expected)
    torch.testing.assert_close(losses["total"], semantic + 0.5 * expected)
    got = torch.autograd.grad(losses["instance"], out["embedding"], retain_graph=True)[0]
    torch.testing.assert_close(got, torch.autograd.grad(expected, out["embedding"], retain_graph=True)[0])
    if decoder == "dcme":  # the clip amplitude reached the loss: A = 4 would pass larger gradients
        default = dcme_cascade_loss(cascade, batch["instances"], valid)
        assert got.abs().max() < 0.75 * torch.autograd.grad(default, out["embedding"])[0].abs().max()


@pytest.mark.parametrize("decoder", ["dcme", "bridging"])
def test_training_lowers_the_decoders_loss_and_exports_weights_the_predictor_runs(toy_camvid, tmp_path, decoder):
    torch.manual_seed(0)
    out = tmp_path / decoder
    train(config(toy_camvid, decoder, epochs=6), out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6] and "loss_var" not in log[0]
    assert log[-1]["loss_instance"] < 0.7 * log[0]["loss_instance"]
    assert log[-1]["loss_semantic"] < log[0]["loss_semantic"]

    model, model_cfg, post_cfg, info = load_model(out / "weights.safetensors")
    assert model_cfg.instance_decoder == decoder and model.instance_decoder == decoder and info["epochs"] == 6
    assert model_cfg == config(toy_camvid, decoder, epochs=6).model
    predictor = Predictor.from_weights(out / "weights.safetensors", device="cpu", backend="eager")
    assert predictor.instance_decoder == decoder and predictor.bandwidths == {}
    rgb = np.zeros((64, 96, 3), np.uint8)
    p = predictor(rgb)
    assert p.panoptic.shape == (64, 96) and {"clustering", "merge"} <= set(p.timings)

    # --resume continues the same decoder's run from its checkpoint
    train(config(toy_camvid, decoder, epochs=7), out, resume=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6, 7]


def test_semantic_only_weights_start_another_decoder_but_other_weights_do_not(toy_camvid, tmp_path):
    """Sec. III-C's schedule for every decoder: stage 1 (semantic only, written as an embedding model) then
    --init into a dcme model; its semantic branch keeps what stage 1 learnt, its DCME head starts fresh. A
    trained embedding model is no start for a dcme one."""
    stage_one = config(toy_camvid, "embedding", epochs=2, semantic_only=True)
    train(stage_one, tmp_path / "semantic")
    first = json.loads((tmp_path / "semantic" / "log.jsonl").read_text().splitlines()[0])
    semantic_model, _, _, _ = load_model(tmp_path / "semantic" / "weights.safetensors")

    train(config(toy_camvid, "dcme", epochs=1), tmp_path / "dcme", init=tmp_path / "semantic" / "weights.safetensors")
    model, model_cfg, _, _ = load_model(tmp_path / "dcme" / "weights.safetensors")
    assert model_cfg.instance_decoder == "dcme"
    started = json.loads((tmp_path / "dcme" / "log.jsonl").read_text().splitlines()[0])
    assert started["loss_semantic"] < first["loss_semantic"]  # the semantic branch kept its training
    a = semantic_model.semantic_encoder.stem[0][0].weight.flatten()
    b = model.instance_encoder.stem[0][0].weight[:, :3].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9  # copied from the stage-1 semantic encoder

    train(config(toy_camvid, "embedding", epochs=1), tmp_path / "embedding")
    with pytest.raises(ValueError, match="its model config .* differs from the experiment's"):
        train(config(toy_camvid, "dcme", epochs=1), tmp_path / "bad", init=tmp_path / "embedding" / "weights.safetensors")


@pytest.mark.parametrize("decoder", ["dcme", "bridging"])
@pytest.mark.parametrize("stage", ["", "_finetune"], ids=["stage2", "stage3"])
def test_each_decoders_recipe_is_the_shipped_recipe_with_only_the_decoder_changed(decoder, stage):
    """Issue #13 item 5 compares the decoders at the same recipe and budget: network, data, schedule, losses and
    the merge's filters are the embedding recipe's; only the decoder, its own settings and its decoding differ."""
    mine = load_config(CONFIG_DIR / f"panonet_{decoder}_camvid{stage}.yaml")
    base = load_config(CONFIG_DIR / f"panonet_camvid{stage}.yaml")
    assert mine.model.instance_decoder == decoder and base.model.instance_decoder == "embedding"
    assert mine.model.without_instance_decoder() == base.model.without_instance_decoder()
    assert mine.data == base.data
    own = {k: getattr(base.train, k) for k in DECODER_TRAIN_KEYS[decoder]}
    assert dataclasses.replace(mine.train, **own) == base.train
    assert type(mine.postprocess) is DECODER_POSTPROCESS_CONFIGS[decoder]
    assert (mine.postprocess.min_instance_pixels, mine.postprocess.stuff_min_area) == (
        base.postprocess.min_instance_pixels, base.postprocess.stuff_min_area)
