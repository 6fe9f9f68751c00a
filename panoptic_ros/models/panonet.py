"""PanoNet (../shared/papers/panonet.txt, Sec. III, Fig. 2): semantic segmentation and a position-sensitive
instance embedding from two ICNet branches, with no detector.

* Semantic branch: ICNet on RGB, K class logits (Sec. III-A).
* Instance branch: ICNet on RGB + two CoordConv channels (normalised x and y in [-1, 1], left/top = -1,
  Liu et al. 2018), producing a 12-channel embedding trained with the discriminative loss (Sec. III-B, III-C).
* The coordinates are those of the whole image (Sec. III-A); a training crop passes its own, cut from the full
  (scaled) image's (``transforms.TrainAugment``), so training and full-frame inference agree on their scale.
* ``use_coordinates=False`` feeds zeros in place of the coordinate channels: the first stage of the paper's
  two-stage schedule (Sec. III-C). Switching it on later starts from exactly the stage-one function, because
  the input weights of the coordinate channels start at zero.
* ``instance=False`` runs the semantic branch alone (the semantic pre-training that Sec. III-C starts from).
* ``share_encoder=True`` is the shared-weights variant of Sec. IV-e: one encoder (on RGB + coordinates) and a
  decoder per task ("shared weights except for the final three layers": the two CFF units and the head).
* ``instance_decoder`` (issue #13) picks the instance branch's decoder on the same encoder (``INSTANCE_DECODERS``):
  ``embedding`` (PanoNet's E-channel embedding, the default), ``dcme`` (``decoders.DCMEHead``: 2 channels, the
  vector to the instance's centre of mass, DCME paper Sec. III-IV) or ``bridging`` (``decoders.BridgingHead``: 4
  channels per thing class, box offset and size, Bridging paper Sec. 2.1; ``thing_classes`` names those classes).
  All three have ICNet's decoder contract, and the attribute stays ``embedding_decoder`` whichever it is, so every
  weights file keeps its state-dict keys.
* ``semantic_head`` (issue #13 item 3) picks the semantic branch's head on the same encoder (``SEMANTIC_HEADS``):
  ``icnet`` (ICNet's cascade feature fusion, Sec. III-A, the default) or ``fusion`` (the fusion scheme's semantic
  head, ``fusion_head.FusionSemanticHead``: ASP at 1/32 and 1/16, two 3x3 convolutions at 1/8, the refinement
  pyramid, concatenation at 1/4 and a 1x1 classifier; on ICNet's three encoder levels, without the paper's 1/4
  level). Its ``channels`` follow ``width`` as ICNet's decoder does (128 x width; the paper's 128 at width 1). It
  has no cascade guidance outputs, so Eq. 1's cascade loss has its one 1/4 term (lambda = 1) with it. The
  attribute stays ``semantic_decoder``.

``forward`` returns raw outputs at 1/4 resolution: ``semantic`` [B, K, h, w] and ``embedding`` [B, E, h, w], the
instance branch's output (E = ``embedding_dim``, 2 for dcme, 4 T for bridging), plus in training the cascade
guidance outputs ``semantic_guidance`` / ``embedding_guidance`` (1/8, 1/16). The key is ``embedding`` for every
decoder, so the export backends (``backends.OUTPUTS``) and the Predictor read one contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .fusion_head import FusionSemanticHead
from .icnet import ICNetDecoder, ICNetEncoder


@dataclass(frozen=True)
class PanoNetConfig:
    num_classes: int
    embedding_dim: int = 12
    width: float = 1.0
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    share_encoder: bool = False
    instance_decoder: str = "embedding"
    thing_classes: tuple[int, ...] = ()
    semantic_head: str = "icnet"


def _embedding_decoder(channels, width, embedding_dim, thing_classes):
    return ICNetDecoder(channels, embedding_dim, width)


def _dcme_decoder(channels, width, embedding_dim, thing_classes):
    from ..decoders.dcme import DCMEHead  # here, not at import: decoders import models.icnet

    return DCMEHead(channels, width)


def _bridging_decoder(channels, width, embedding_dim, thing_classes):
    from ..decoders.bridging import BridgingHead

    if not thing_classes:
        raise ValueError("instance_decoder 'bridging' needs thing_classes (4 output channels per thing class)")
    return BridgingHead(channels, len(thing_classes), width)


#: The instance branch's decoder per ``instance_decoder``: (encoder channels, width, embedding_dim, thing_classes)
#: -> a module with ``ICNetDecoder``'s contract. Only the chosen one is built.
INSTANCE_DECODERS = {"embedding": _embedding_decoder, "dcme": _dcme_decoder, "bridging": _bridging_decoder}

#: The semantic branch's head per ``semantic_head``: (encoder channels, num_classes, width) -> a module with
#: ``ICNetDecoder``'s contract (``(logits at 1/4, guidance outputs)``).
SEMANTIC_HEADS = {
    "icnet": lambda channels, num_classes, width: ICNetDecoder(channels, num_classes, width),
    "fusion": lambda channels, num_classes, width: FusionSemanticHead(channels, num_classes,
                                                                      max(4, int(round(128 * width)))),
}


def coordinate_channels(batch: int, height: int, width: int, device=None, dtype=None) -> Tensor:
    """[B, 2, H, W]: x then y of each pixel centre, normalised to [-1, 1] (align_corners=False convention)."""
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * (2.0 / width) - 1.0
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * (2.0 / height) - 1.0
    grid = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)])
    return grid.expand(batch, 2, height, width)


class PanoNet(nn.Module):
    def __init__(self, num_classes: int, embedding_dim: int = 12, width: float = 1.0,
                 depths: tuple[int, int, int, int] = (3, 4, 6, 3), share_encoder: bool = False,
                 instance_decoder: str = "embedding", thing_classes: tuple[int, ...] = (),
                 semantic_head: str = "icnet"):
        super().__init__()
        if instance_decoder not in INSTANCE_DECODERS:
            raise ValueError(f"instance_decoder {instance_decoder!r} is not allowed: expected one of "
                             f"{tuple(INSTANCE_DECODERS)}")
        if semantic_head not in SEMANTIC_HEADS:
            raise ValueError(f"semantic_head {semantic_head!r} is not allowed: expected one of {tuple(SEMANTIC_HEADS)}")
        self.config = PanoNetConfig(num_classes, embedding_dim, width, tuple(depths), share_encoder, instance_decoder,
                                    tuple(thing_classes), semantic_head)
        self.instance_encoder = ICNetEncoder(5, width, depths)
        self.semantic_encoder = None if share_encoder else ICNetEncoder(3, width, depths)
        channels = self.instance_encoder.channels
        self.semantic_decoder = SEMANTIC_HEADS[semantic_head](channels, num_classes, width)
        self.embedding_decoder = INSTANCE_DECODERS[instance_decoder](channels, width, embedding_dim,
                                                                     tuple(thing_classes))
        self.register_buffer("use_coordinates", torch.tensor(True))
        self._zero_coordinate_weights()

    def _zero_coordinate_weights(self) -> None:
        with torch.no_grad():
            for conv in (self.instance_encoder.sub1[0][0], self.instance_encoder.stem[0][0]):
                conv.weight[:, 3:].zero_()

    @property
    def instance_decoder(self) -> str:
        """``embedding``, ``dcme`` or ``bridging``: what the instance branch's output holds."""
        return self.config.instance_decoder

    @property
    def min_input_size(self) -> int:
        """Smallest height and width the network accepts."""
        return self.instance_encoder.MIN_INPUT_SIZE

    @property
    def input_divisor(self) -> int:
        """Input sides the branches align at are multiples of this (``ICNetEncoder``); others run, misaligned."""
        return self.instance_encoder.INPUT_DIVISOR

    def set_use_coordinates(self, enabled: bool) -> None:
        """Stage one of Sec. III-C trains with ``False``; stage two switches the coordinates on."""
        self.use_coordinates.fill_(enabled)

    def forward(self, images: Tensor, coordinates: Tensor | None = None,
                instance: bool = True) -> dict[str, Tensor | list[Tensor]]:
        """images: [B, 3, H, W] normalised RGB; coordinates: [B, 2, H, W] CoordConv channels of these pixels in
        full-image terms (default: the images are whole frames, ``coordinate_channels``)."""
        b, _, h, w = images.shape
        if coordinates is None:
            coordinates = coordinate_channels(b, h, w, images.device, images.dtype)
        elif coordinates.shape != (b, 2, h, w):
            raise ValueError(f"coordinates must be [B, 2, H, W] = {(b, 2, h, w)}, got {tuple(coordinates.shape)}")
        out: dict[str, Tensor | list[Tensor]] = {}
        instance_features = None
        if instance or self.semantic_encoder is None:
            coords = coordinates.to(images.dtype) * self.use_coordinates.to(images.dtype)
            instance_features = self.instance_encoder(torch.cat([images, coords], dim=1))
        semantic_features = instance_features if self.semantic_encoder is None else self.semantic_encoder(images)
        out["semantic"], semantic_guidance = self.semantic_decoder(semantic_features)
        if self.training:
            out["semantic_guidance"] = semantic_guidance
        if instance:
            out["embedding"], embedding_guidance = self.embedding_decoder(instance_features)
            if self.training:
                out["embedding_guidance"] = embedding_guidance
        return out

    def init_instance_from_semantic(self) -> None:
        """Sec. III-C: the instance branch starts from the trained semantic branch. The semantic encoder's
        parameters and statistics are copied into the instance encoder (the coordinate input weights stay zero),
        and the instance decoder (the branch's last layers, whichever ``instance_decoder``) is re-initialised. With a shared encoder only the
        decoder is re-initialised."""
        if self.semantic_encoder is not None:
            target = self.instance_encoder.state_dict()
            with torch.no_grad():
                for key, value in self.semantic_encoder.state_dict().items():
                    if target[key].shape == value.shape:
                        target[key].copy_(value)
                    else:  # first convolutions: RGB columns copied, coordinate columns zero
                        target[key].zero_()[:, :value.shape[1]].copy_(value)
        for module in self.embedding_decoder.modules():
            if module is not self.embedding_decoder and hasattr(module, "reset_parameters"):
                module.reset_parameters()
