"""Train a network: ``python -m panoptic_ros.train --config config/panonet_camvid.yaml --out runs/camvid``.

PanoNet Sec. III-E: cascade cross-entropy (Eq. 1) on the semantic branch and the cascade discriminative loss
(Eq. 6) on the instance branch, Adadelta with polynomial decay by default (adam / adamw / sgd allowed), and the
schedule of Sec. III-C:

1. ``train.semantic_only``: the semantic branch alone (the instance branch is not even run);
2. ``--init`` with that run's weights: the instance branch starts from the trained semantic encoder, its last
   layers (the embedding decoder) re-initialised (``PanoNet.init_instance_from_semantic``); it trains without
   coordinates before ``train.coordinate_epoch`` and with them from there on, and the learning-rate schedule
   restarts at that switch.

The instance loss follows ``model.instance_decoder`` (``INSTANCE_LOSSES``, issue #13): the discriminative loss for
``embedding``, DCME's clipped-gradient MSE (``decoders.dcme_cascade_loss``) for ``dcme``, Bridging's weighted,
bootstrapped smooth-L1 box regression (``decoders.bridging_cascade_loss``) for ``bridging``; all with PanoNet's
cascade weights. Stage 1's semantic-only weights start any of them with ``--init`` (the decoder is
re-initialised either way).

Optional: online bootstrapping of hard pixels in the cross-entropy (Bridging paper Eq. 1), bf16 autocast and
channels_last (``train.precision``, ``train.channels_last``). Validation always runs in fp32.

``model.architecture: panoptic_fpn`` trains the accuracy mode (IMP paper Sec. 3.3) on the same datasets and
augmentation (multi-scale crops, flips, colour jitter: ``TrainAugment``): each batch carries the detector targets
of its crops (``detection_targets``: one box and mask per connected-component instance), and the losses are Mask
R-CNN's plus the top-k bootstrapped semantic cross-entropy (``model.bootstrap_ratio``). ``train.stage: detector``
trains Mask R-CNN alone (no semantic head, no IMP); ``train.stage: full`` with ``--init`` from that run trains the
whole model with IMP in the graph (gradients reach the mask and class logits through it). Validation mIoU is of
the semantic head (not computed in the detector stage, which has none).

``train.swa_epochs`` > 0 adds stochastic weight averaging (Izmailov et al., UAI 2018): the last epochs run at the
constant rate ``train.swa_lr``, the weights at the end of each are averaged (``AveragedModel``, kept in
``last.pt``), and the average, its BatchNorm statistics recomputed over one pass of the training set
(``recompute_batchnorm``), is validated and exported.

Writes ``last.pt`` (resumable: model, optimiser, schedule, epoch) after every epoch, ``best.pt`` by validation
mIoU, ``log.jsonl`` (losses and metrics per epoch), ``weights_without_coordinates.safetensors`` at the end of the
stage without coordinates and, at the end, ``weights.safetensors`` (fp16, with its config) for the Predictor. ``--resume`` continues from ``last.pt`` in ``--out``. Multi-GPU:
``torchrun --nproc-per-node N -m panoptic_ros.train ...`` (DistributedDataParallel, one process per GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, default_collate
from tqdm import tqdm

from .checkpoint import load_model, save_weights
from .config import STAGES, ExperimentConfig, ModelConfig, load_config
from .datasets import DATASETS
from .decoders import bridging_cascade_loss, dcme_cascade_loss
from .losses import CASCADE_WEIGHTS, cascade_cross_entropy, cascade_discriminative_loss
from .metrics import SemanticIoU
from .models import build_model, network_input_size
from .models.panoptic_fpn import detection_targets
from .transforms import IGNORE_LABEL, NO_INSTANCE, TrainAugment


def make_optimizer(params, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)


def poly_schedule(optimizer, total_steps: int, power: float, restart_step: int = 0,
                  constant: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Polynomial decay per iteration: lr * (1 - step / total) ** power, restarted at ``restart_step`` when that
    is in (0, total): two decays, [0, restart) and [restart, total), each from the full rate (Sec. III-C). From
    ``total_steps`` on, lr * ``constant`` when given (stochastic weight averaging's constant rate)."""

    def factor(step: int) -> float:
        if constant is not None and step >= total_steps:
            return constant
        if 0 < restart_step < total_steps:
            span = restart_step if step < restart_step else total_steps - restart_step
            step = step if step < restart_step else step - restart_step
        else:
            span = total_steps
        return max(0.0, 1 - step / span) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``precision: bf16``, or for ``auto`` where the device computes bf16 natively (CPUs with AVX512-BF16
    or AMX, CUDA GPUs that support it); None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def class_weights_for(dataset, num_classes: int, power: float = 1.0) -> torch.Tensor:
    """ENet weighting (1 / ln(1.02 + p_c)) ** power from the label frequencies of the (un-augmented) training set;
    a power below 1 keeps the rare classes' boost with less of the false positives full weights bring."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for index in range(len(dataset)):
        semantic = dataset.decode(index)[1]
        s = torch.from_numpy(semantic.astype("int64")).flatten()
        counts += torch.bincount(s[s != IGNORE_LABEL], minlength=num_classes)[:num_classes].double()
    p = counts / counts.sum().clamp(min=1)
    return (1.0 / torch.log(1.02 + p)).pow(power).float()


def forward_batch(model, batch: dict, cfg: ExperimentConfig) -> dict:
    """The network on a training batch: its crops with their full-image coordinates (Sec. III-A), the instance
    branch only when it trains, in the configured memory format."""
    images, coordinates = batch["image"], batch["coordinates"]
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return model(images, coordinates, instance=not cfg.train.semantic_only)


def compute_losses(outputs: dict, batch: dict, cfg: ExperimentConfig, class_weights) -> dict[str, torch.Tensor]:
    """Eq. 1 (with optional bootstrapping) and the instance decoder's loss (``INSTANCE_LOSSES``: Eq. 6's cascade
    discriminative loss for embeddings), in fp32 whatever precision the network ran in."""
    scales = [outputs["semantic"].float(), *(g.float() for g in outputs["semantic_guidance"])]
    semantic = cascade_cross_entropy(
        scales, batch["semantic"], CASCADE_WEIGHTS[:len(scales)],  # the fusion head has no guidance outputs
        ignore_index=IGNORE_LABEL, class_weights=class_weights,
        bootstrap_threshold=cfg.train.bootstrap_threshold, bootstrap_min_kept=cfg.train.bootstrap_min_kept,
    )
    if cfg.train.semantic_only:
        return {"total": semantic, "semantic": semantic}
    cascade = [outputs["embedding"].float(), *(g.float() for g in outputs["embedding_guidance"])]
    instance = INSTANCE_LOSSES[cfg.model.instance_decoder](cascade, batch, cfg)
    total = semantic + cfg.train.instance_weight * instance["instance"]
    return {"total": total, "semantic": semantic, **instance}


def embedding_loss(cascade: list[torch.Tensor], batch: dict, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """PanoNet's cascade discriminative loss (Eq. 2-6) on the embeddings, with its three terms."""
    loss = cascade_discriminative_loss(cascade, batch["instances"], ignore_index=NO_INSTANCE)
    return {"instance": loss["total"], "var": loss["var"], "dist": loss["dist"], "reg": loss["reg"]}


def dcme_instance_loss(cascade: list[torch.Tensor], batch: dict, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """DCME's MSE (DCME paper Eq. 4-5) with the clipped error gradient of Eq. 6 (``train.dcme_amplitude``) per
    cascade scale (PanoNet Eq. 6's weights); pixels of void semantic label are left out, every other pixel
    regresses its vector to its instance's centre of mass, (0, 0) outside instances."""
    valid = batch["semantic"] != IGNORE_LABEL
    return {"instance": dcme_cascade_loss(cascade, batch["instances"], valid, amplitude=cfg.train.dcme_amplitude,
                                          ignore_index=NO_INSTANCE)}


def bridging_instance_loss(cascade: list[torch.Tensor], batch: dict, cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Bridging's size-weighted smooth-L1 box regression (Bridging paper Sec. 2.1) with IoU bootstrapping (Sec.
    2.2: ``train.bridging_bootstrap_threshold``, ``train.bridging_bootstrap_min_kept``) per cascade scale (PanoNet
    Eq. 6's weights), over the pixels of instances of ``model.thing_classes``."""
    return {"instance": bridging_cascade_loss(
        cascade, batch["instances"], batch["semantic"], cfg.model.thing_classes,
        bootstrap_threshold=cfg.train.bridging_bootstrap_threshold,
        bootstrap_min_kept=cfg.train.bridging_bootstrap_min_kept, ignore_index=NO_INSTANCE)}


#: The instance branch's training loss per ``model.instance_decoder``: (cascade outputs, finest first; batch;
#: config) -> {"instance": the loss, and any terms to log}.
INSTANCE_LOSSES = {"embedding": embedding_loss, "dcme": dcme_instance_loss, "bridging": bridging_instance_loss}


def panonet_losses(model, batch: dict, cfg: ExperimentConfig, class_weights, amp_dtype) -> dict[str, torch.Tensor]:
    """PanoNet's training losses on a batch: the network under autocast, the losses in fp32."""
    with torch.autocast(batch["image"].device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        outputs = forward_batch(model, batch, cfg)
    return compute_losses(outputs, batch, cfg, class_weights)


def panoptic_fpn_losses(model, batch: dict, cfg: ExperimentConfig, class_weights, amp_dtype) -> dict[str, torch.Tensor]:
    """PanopticFPN's training losses on a batch (IMP paper Sec. 3.3): Mask R-CNN's (``objectness``,
    ``rpn_box_reg``, ``classifier``, ``box_reg``, ``mask``), plus ``semantic`` (top-k bootstrapped) in the full
    stage, summed into ``total`` in fp32."""
    images = batch["image"]
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        losses = model(images, batch["targets"], detector_only=cfg.train.stage == "detector")
    losses = {k.removeprefix("loss_"): v.float() for k, v in losses.items()}
    return {"total": sum(losses.values()), **losses}


def collate_detection_targets(items: list[dict], thing_classes) -> dict:
    """The default collation plus ``targets``: per crop, ``detection_targets`` of its semantic and instance maps
    (boxes, dataset labels, masks) and the semantic map, as ``PanopticFPN`` trains on them."""
    batch = default_collate(items)
    batch["targets"] = [{**detection_targets(semantic, instances, thing_classes), "semantic": semantic}
                        for semantic, instances in zip(batch["semantic"], batch["instances"])]
    return batch


def panonet_logits(model, images):
    """[B, K, H, W]: the 1/4 logits of the images resized as the Predictor resizes them
    (``models.network_input_size``), upsampled bilinearly to the input."""
    full = tuple(images.shape[-2:])
    size = network_input_size(model, *full)
    if size != full:
        images = F.interpolate(images, size, mode="bilinear", align_corners=False)
    logits = model(images, instance=False)["semantic"]
    return F.interpolate(logits, size=full, mode="bilinear", align_corners=False)


def panoptic_fpn_logits(model, images):
    """[B, K, H, W]: the stride-4 logits (rounded-up grid) upsampled 4x, cut where the input ends."""
    logits = model(images)["semantic"]
    full = F.interpolate(logits, scale_factor=model.output_stride, mode="bilinear", align_corners=False)
    return full[..., :images.shape[-2], :images.shape[-1]]


#: Per architecture: the training losses of a batch and the semantic logits of a validation batch.
TRAINING = {"panonet": (panonet_losses, panonet_logits), "panoptic_fpn": (panoptic_fpn_losses, panoptic_fpn_logits)}


def to_device(value, device):
    """Tensors, and lists or dicts of them, moved to ``device``; anything else as it is."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value


@torch.no_grad()
def evaluate_semantic(model, loader, num_classes: int, device, logits_of=panonet_logits) -> dict:
    """Semantic mIoU at full label resolution (``logits_of``: the architecture's logits upsampled to the input),
    in fp32."""
    model.eval()
    metric = SemanticIoU(num_classes, IGNORE_LABEL)
    for batch in loader:
        metric.update(logits_of(model, batch["image"].to(device)).argmax(1).cpu(), batch["semantic"])
    return metric.compute()


def recompute_batchnorm(model: nn.Module, loader, steps: int, losses_of, device) -> None:
    """BatchNorm running statistics of ``model`` recomputed as the plain mean over ``steps`` training batches
    (each layer's momentum None while it runs), as averaged weights need (SWA, Izmailov et al. Sec. 3.2):
    statistics averaged with the weights belong to none of the networks. ``losses_of(model, batch)`` runs a batch
    as training does (torch.optim.swa_utils.update_bn calls ``model(input)`` alone, which PanoNet's coordinates
    and the detector's targets do not fit); no gradient is taken."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    with torch.no_grad():
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            losses_of(model, to_device(batch, device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        return rank, world, device
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(cfg: ExperimentConfig, out_dir: Path, resume: bool = False, max_steps_per_epoch: int | None = None,
          init: Path | None = None) -> dict:
    """Run (or continue) a training; returns the final validation metrics. ``init`` starts from the parameters of
    a weights file (fine-tuning; its architecture must match). ``max_steps_per_epoch`` shortens epochs (tests)."""
    rank, world, device = setup_distributed()
    main_process = rank == 0
    torch.manual_seed(cfg.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset_cls = DATASETS[cfg.data.dataset]
    augment = TrainAugment(cfg.data.crop, cfg.data.scale, jitter=cfg.data.jitter, seed=cfg.train.seed + rank)
    train_set = dataset_cls(cfg.data.root, cfg.data.train_split, augment=augment, preload=cfg.data.preload)
    val_set = dataset_cls(cfg.data.root, cfg.data.val_split)
    sampler = DistributedSampler(train_set, world, rank, seed=cfg.train.seed) if world > 1 else None
    detector = cfg.model.architecture == "panoptic_fpn"
    collate = partial(collate_detection_targets, thing_classes=cfg.model.thing_classes) if detector else None
    train_loader = DataLoader(train_set, cfg.data.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=cfg.data.workers, drop_last=True, persistent_workers=cfg.data.workers > 0,
                              collate_fn=collate)
    training_losses, validation_logits = TRAINING[cfg.model.architecture]
    val_loader = DataLoader(val_set, 1, num_workers=cfg.data.workers)

    # Parameters that come from --init or --resume need no backbone initialisation (no ImageNet download).
    restored = init is not None or (resume and (out_dir / "last.pt").exists())
    model = build_model(cfg.model.architecture, **(cfg.model.for_loading() if restored else cfg.model).kwargs())
    if init is not None:
        initial, init_cfg, _, init_info = load_model(init)
        # Semantic-only weights (Sec. III-C stage 1) start any instance decoder: theirs is re-initialised below.
        any_decoder = (bool(init_info.get("semantic_only")) and not cfg.train.semantic_only
                       and isinstance(init_cfg, ModelConfig) and isinstance(cfg.model, ModelConfig))
        if any_decoder and init_cfg.without_instance_decoder() == cfg.model.without_instance_decoder():
            model.load_state_dict({k: v for k, v in initial.state_dict().items()
                                   if not k.startswith("embedding_decoder.")}, strict=False)
            initial_keys = set(initial.state_dict())
            if not all(k in initial_keys for k in model.state_dict() if not k.startswith("embedding_decoder.")):
                raise ValueError(f"--init {init}: its parameters do not cover the experiment's network {cfg.model}")
        elif init_cfg.for_loading() != cfg.model.for_loading():
            raise ValueError(f"--init {init}: its model config {init_cfg} differs from the experiment's {cfg.model}")
        else:
            model.load_state_dict(initial.state_dict())
        if init_info.get("stage") == "detector" and cfg.train.stage == "full" and main_process:
            print(f"full model (IMP in the graph) from the detector of {init} (IMP paper Sec. 3.3)")
        if init_info.get("semantic_only") and not cfg.train.semantic_only:
            model.init_instance_from_semantic()
            if main_process:
                print(f"instance branch initialised from the semantic encoder of {init} (Sec. III-C)")
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    core = model
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=cfg.train.semantic_only or cfg.train.stage == "detector")
    steps_per_epoch = min(len(train_loader), max_steps_per_epoch or len(train_loader))
    optimizer = make_optimizer(model.parameters(), cfg)
    # A semantic-only run, and a PanopticFPN (no coordinates), have no coordinate stage: no schedule restart.
    coordinate_epoch = cfg.train.epochs if cfg.train.semantic_only or detector else cfg.train.coordinate_epoch
    swa_epoch = cfg.train.epochs - cfg.train.swa_epochs  # the first averaged epoch (epochs if SWA is off)
    scheduler = poly_schedule(optimizer, swa_epoch * steps_per_epoch, cfg.train.poly_power,
                              coordinate_epoch * steps_per_epoch,
                              cfg.train.swa_lr / cfg.train.lr if cfg.train.swa_epochs else None)
    averaged = AveragedModel(core, use_buffers=False) if cfg.train.swa_epochs else None
    weights = (class_weights_for(train_set, cfg.model.num_classes, cfg.train.class_weight_power).to(device)
               if cfg.train.class_weighting else None)

    start_epoch, best = 0, -1.0
    last = out_dir / "last.pt"
    if resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state["best_miou"]
        if averaged is not None and "averaged" in state:
            averaged.load_state_dict(state["averaged"])
        if main_process:
            print(f"resumed from {last} at epoch {start_epoch}")

    metrics: dict = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        if not detector:
            core.set_use_coordinates(epoch >= coordinate_epoch)
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not main_process, leave=False)
        for step, batch in enumerate(bar):
            if step >= steps_per_epoch:
                break
            losses = training_losses(model, to_device(batch, device), cfg, weights, amp_dtype)
            if not torch.isfinite(losses["total"]):
                raise FloatingPointError(f"epoch {epoch}, step {step}: loss is {losses['total'].item()}")
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            bar.set_postfix(loss=f"{losses['total'].item():.3f}")
        if averaged is not None and epoch >= swa_epoch:
            averaged.update_parameters(core)
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 1),
                  "lr": scheduler.get_last_lr()[0], "coordinates": bool(getattr(core, "use_coordinates", False)),
                  **({"stage": cfg.train.stage} if detector else {}),
                  "precision": "bf16" if amp_dtype is not None else "fp32",
                  **({"averaged": int(averaged.n_averaged)} if averaged is not None else {}),
                  **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()}}
        if main_process:
            evaluated = ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs) and not (
                detector and cfg.train.stage == "detector")  # the detector stage has no trained semantic head
            if evaluated:
                metrics = evaluate_semantic(core, val_loader, cfg.model.num_classes, device, validation_logits)
                record.update(val_miou=metrics["miou"], val_pixel_accuracy=metrics["pixel_accuracy"])
            improved = evaluated and metrics["miou"] > best
            best = metrics["miou"] if improved else best
            state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch, "best_miou": best, "config": cfg.to_dict(),
                     **({"averaged": averaged.state_dict()} if averaged is not None else {})}
            torch.save(state, out_dir / "last.tmp")
            os.replace(out_dir / "last.tmp", last)  # a crash mid-write never corrupts the resumable checkpoint
            if improved:
                torch.save(state, out_dir / "best.pt")
            if epoch + 1 == coordinate_epoch < cfg.train.epochs:
                # the converged stage without coordinates (Sec. III-C), kept for the Fig. 5 comparison
                save_weights(core, cfg, out_dir / "weights_without_coordinates.safetensors",
                             info={"epochs": epoch + 1, "semantic_only": False, "coordinates": False})
            with open(out_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            print(json.dumps(record))
    exported = core
    if main_process and averaged is not None:
        exported = averaged.module
        for mine, theirs in zip(exported.buffers(), core.buffers()):  # only the parameters were averaged
            mine.copy_(theirs)
        recompute_batchnorm(exported, train_loader, steps_per_epoch, partial(training_losses, cfg=cfg,
                                                                                class_weights=weights,
                                                                                amp_dtype=amp_dtype), device)
        metrics = evaluate_semantic(exported, val_loader, cfg.model.num_classes, device, validation_logits)
        with open(out_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"averaged_epochs": int(averaged.n_averaged), "val_miou": metrics["miou"],
                                  "val_pixel_accuracy": metrics["pixel_accuracy"]}) + "\n")
        print(f"weights averaged over the last {int(averaged.n_averaged)} epochs: val mIoU {metrics['miou']:.4f}")
    if main_process:
        info = {"epochs": cfg.train.epochs, "final_val_miou": metrics.get("miou"), "best_val_miou": best,
                "semantic_only": cfg.train.semantic_only, **({"stage": cfg.train.stage} if detector else {}),
                **({"swa_epochs": cfg.train.swa_epochs} if averaged is not None else {})}
        save_weights(exported, cfg, out_dir / "weights.safetensors", info=info)
    if world > 1:
        dist.destroy_process_group()
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description="Train PanoNet (PanoNet Sec. III-E) or PanopticFPN (IMP paper "
                                                 "Sec. 3.3), by the config's model.architecture.")
    parser.add_argument("--config", required=True, type=Path, help="experiment YAML, e.g. config/panonet_camvid.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/panonet"), help="output folder (checkpoints, logs)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--init", type=Path, help="start from the parameters of this weights file (fine-tuning)")
    parser.add_argument("--data-root", help="override data.root")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--stage", choices=STAGES, help="override train.stage (panoptic_fpn, IMP paper Sec. 3.3)")
    opts = parser.parse_args()
    cfg = load_config(opts.config)
    if opts.stage:
        cfg.train.stage = opts.stage
    if opts.data_root:
        cfg.data.root = opts.data_root
    if opts.epochs:
        cfg.train.epochs = opts.epochs
        cfg.train.coordinate_epoch = min(cfg.train.coordinate_epoch, opts.epochs)
    cfg.validate()
    final = train(cfg, opts.out, resume=opts.resume, init=opts.init)
    if not math.isnan(final.get("miou", float("nan"))):
        print(f"final validation mIoU {final['miou']:.4f}")


if __name__ == "__main__":
    main()
