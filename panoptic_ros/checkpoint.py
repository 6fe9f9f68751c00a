"""Shipped weights: a safetensors file (optionally fp16) whose metadata holds the model config (its
``architecture`` names the family: ``panonet`` fast, ``panoptic_fpn`` accuracy) and the family's post-processing
config, so a file alone rebuilds its network and its post-processor; its ``info`` may name the ``input_scale`` the
network is run at by default (chosen on the training set, ``evaluation scales``; 1.0 where it names none). Files
without an architecture-specific post-processing class (every PanoNet file written before the accuracy mode) read as PanoNet's, as before. A PanoNet
file's model config names its ``instance_decoder`` (``embedding``, ``dcme``, ``bridging``), which picks the
post-processing config's class (``config.postprocess_class``); files written before the decoders have no such key
and read as ``embedding``, unchanged.
Training checkpoints (resumable) are separate torch files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import (INPUT_SCALES, ConfigError, DetectionPostprocessConfig, ExperimentConfig, ModelConfig,
                     PanopticFPNConfig, PostprocessConfig, model_config_from_dict, postprocess_config_from_dict)
from .models import build_model

FORMAT = "panoptic_ros.weights.v1"


class WeightsError(RuntimeError):
    """The weights file is missing, unreadable, or does not fit the network it describes."""


def save_weights(model: nn.Module, config: ExperimentConfig, path: str | Path, half: bool = True, info: dict | None = None) -> Path:
    """Write the model's state dict (floating tensors in fp16 when ``half``) with its config as metadata."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return save_state(state, config.model, config.postprocess, {"dataset": config.data.dataset, **(info or {})}, path)


def save_state(state: dict[str, torch.Tensor], model_cfg: ModelConfig | PanopticFPNConfig,
               post_cfg: PostprocessConfig | DetectionPostprocessConfig, info: dict, path: str | Path) -> Path:
    """Write a state dict with its configs (``info["dataset"]`` names the class table)."""
    info = dict(info)
    metadata = {
        "format": FORMAT,
        "model": json.dumps(dataclasses.asdict(model_cfg)),
        "postprocess": json.dumps(dataclasses.asdict(post_cfg)),
        "dataset": info.pop("dataset", ""),
        "info": json.dumps(info),
    }
    state = {k: v.contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig | PanopticFPNConfig,
                                           PostprocessConfig | DetectionPostprocessConfig, dict]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors weights file: {error}") from None
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{path}: expected metadata format {FORMAT!r}, found {metadata.get('format')!r}")
    try:
        model_cfg = model_config_from_dict(json.loads(metadata["model"]), "weights.model")
        post_cfg = postprocess_config_from_dict(json.loads(metadata["postprocess"]), model_cfg,
                                                "weights.postprocess")
        model_cfg.validate("weights.model")
        post_cfg.validate("weights.postprocess")
    except (KeyError, json.JSONDecodeError, ConfigError) as error:
        raise WeightsError(f"{path}: invalid config metadata: {error}") from None
    info = {"dataset": metadata.get("dataset", ""), **json.loads(metadata.get("info", "{}"))}
    scale = info.get("input_scale", 1.0)
    low, high = INPUT_SCALES
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not low <= scale <= high:
        raise WeightsError(f"{path}: input_scale {scale!r} in its metadata is not a number in [{low:g}, {high:g}]")
    return state, model_cfg, post_cfg, info


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, ModelConfig | PanopticFPNConfig,
                                                                            PostprocessConfig | DetectionPostprocessConfig, dict]:
    """Rebuild the network described by a weights file and load its parameters (strictly: every key and shape
    must match, and every value must be finite). No backbone initialisation runs (``for_loading``)."""
    state, model_cfg, post_cfg, info = read_weights(path)
    model = build_model(model_cfg.architecture, **model_cfg.for_loading().kwargs())
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: does not match a {model_cfg.architecture} with {model_cfg.kwargs()}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)}, the network expects {tuple(expected[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise WeightsError(f"{path}: {key} holds NaN or infinite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.to(dtype).eval(), model_cfg, post_cfg, info
