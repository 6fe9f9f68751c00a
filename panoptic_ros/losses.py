"""PanoNet training losses (paper Sec. III-B): cascade cross-entropy (Eq. 1) and discriminative loss (Eq. 2-6).

The maths lives in plain functions over tensors; ``CascadeCrossEntropy`` and ``DiscriminativeLoss`` are thin
``nn.Module`` wrappers that hold the hyper-parameters (defaults: paper Sec. III-E).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CASCADE_WEIGHTS = (1.0, 0.4, 0.16)  # lambda_t for the 1/4, 1/8, 1/16 outputs (Sec. III-E)
_TERMS = ("var", "dist", "reg", "total")


def downsample_nearest(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of label maps [..., H, W] to [..., h, w].

    Output pixel (i, j) takes input pixel (floor(i * H / h), floor(j * W / w)) (torch's ``mode="nearest"`` rule,
    in exact integer arithmetic, so any integer ids survive unchanged; for an integer factor f it is the top-left
    pixel of each f x f block).
    """
    in_h, in_w = labels.shape[-2:]
    h, w = size
    rows = torch.arange(h, device=labels.device) * in_h // h
    cols = torch.arange(w, device=labels.device) * in_w // w
    return labels[..., rows[:, None], cols[None, :]]


def discriminative_loss(
    embedding: Tensor,
    instance_ids: Tensor,
    ignore_index: int = -1,
    delta_v: float = 0.25,
    delta_d: float = 1.0,
    delta_r: float = 6.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.1,
) -> dict[str, Tensor]:
    """Discriminative loss of one image, paper Eq. 2-5, over the instances present.

    With C instances (distinct ids other than ``ignore_index``; any integers), N_c pixels and mean mu_c each:
      var  = 1/C sum_c 1/N_c sum_i [||mu_c - x_i|| - delta_v]_+^2                      (Eq. 2)
      dist = 1/(C(C-1)) sum_{c_a != c_b} [2 delta_d - ||mu_ca - mu_cb||]_+^2  (ordered pairs; Eq. 3)
      reg  = 1/C sum_c 1/N_c [||mu_c|| - delta_r]_+^2                                   (Eq. 4)
      total = alpha var + beta dist + gamma reg                                           (Eq. 5)
    Eq. 4 is implemented as the paper writes it: a hinge at delta_r, divided by N_c (De Brabandere et al.'s
    original is the plain mean of ||mu_c||). dist is 0 for C <= 1; every term is 0 for C = 0, and still part of the
    graph of ``embedding`` so ``total.backward()`` works for images without instances.

    Args:
        embedding: [E, H, W] pixel embeddings.
        instance_ids: [H, W] integer instance id per pixel; ``ignore_index`` marks pixels of no instance.
    Returns:
        dict with scalar tensors ``var``, ``dist``, ``reg`` (un-weighted) and ``total``.
    """
    if embedding.dim() != 3 or instance_ids.shape != embedding.shape[1:]:
        raise ValueError(
            f"embedding must be [E, H, W] and instance_ids [H, W] of the same H, W; "
            f"got {tuple(embedding.shape)} and {tuple(instance_ids.shape)}"
        )
    points = embedding.flatten(1).t()  # [H*W, E]
    ids = instance_ids.flatten()
    valid = ids != ignore_index
    points, ids = points[valid], ids[valid]
    zero = embedding.sum() * 0.0
    if ids.numel() == 0:
        return dict.fromkeys(_TERMS, zero)

    _, cluster = torch.unique(ids, return_inverse=True)  # cluster index 0..C-1 of each pixel
    n_clusters = int(cluster.max()) + 1
    counts = torch.bincount(cluster, minlength=n_clusters).to(points.dtype)
    means = points.new_zeros(n_clusters, points.shape[1]).index_add_(0, cluster, points) / counts[:, None]

    pull = (torch.linalg.vector_norm(points - means[cluster], dim=1) - delta_v).clamp(min=0) ** 2
    var = (points.new_zeros(n_clusters).index_add_(0, cluster, pull) / counts).mean()

    if n_clusters > 1:
        a, b = torch.triu_indices(n_clusters, n_clusters, offset=1, device=points.device)
        push = (2 * delta_d - torch.linalg.vector_norm(means[a] - means[b], dim=1)).clamp(min=0) ** 2
        # Each unordered pair stands for both ordered pairs of Eq. 3: 2 * sum / (C (C - 1)).
        dist = 2 * push.sum() / (n_clusters * (n_clusters - 1))
    else:
        dist = zero

    reg = ((torch.linalg.vector_norm(means, dim=1) - delta_r).clamp(min=0) ** 2 / counts).mean()
    return {"var": var, "dist": dist, "reg": reg, "total": alpha * var + beta * dist + gamma * reg}


def discriminative_loss_batch(embeddings: Tensor, instance_ids: Tensor, **kwargs) -> dict[str, Tensor]:
    """Eq. 2-5 per image of a batch, averaged over the batch.

    Args:
        embeddings: [B, E, H, W]; instance_ids: [B, H, W]. ``kwargs`` as ``discriminative_loss``.
    Returns:
        dict with scalar tensors ``var``, ``dist``, ``reg``, ``total`` (batch means).
    """
    if embeddings.dim() != 4 or instance_ids.shape != (embeddings.shape[0], *embeddings.shape[2:]):
        raise ValueError(
            f"embeddings must be [B, E, H, W] and instance_ids [B, H, W]; "
            f"got {tuple(embeddings.shape)} and {tuple(instance_ids.shape)}"
        )
    per_image = [discriminative_loss(e, i, **kwargs) for e, i in zip(embeddings, instance_ids)]
    return {k: torch.stack([r[k] for r in per_image]).mean() for k in _TERMS}


def cascade_discriminative_loss(
    embeddings: Sequence[Tensor], instance_ids: Tensor, weights: Sequence[float] = CASCADE_WEIGHTS, **kwargs
) -> dict[str, Tensor]:
    """Cascade instance loss, paper Eq. 6: sum_t lambda_t L_inst,t.

    Args:
        embeddings: one [B, E, h_t, w_t] tensor per scale (finest first, paired with ``weights``).
        instance_ids: [B, H, W] full-resolution instance ids, resized to each scale by ``downsample_nearest``.
        kwargs: hyper-parameters of ``discriminative_loss``.
    Returns:
        dict of scalar tensors: ``var``, ``dist``, ``reg`` are sum_t lambda_t times that term of scale t, and
        ``total`` = sum_t lambda_t total_t (so total = alpha var + beta dist + gamma reg still holds).
    """
    _check_scales(embeddings, weights)
    out = None
    for emb, lam in zip(embeddings, weights):
        terms = discriminative_loss_batch(emb, downsample_nearest(instance_ids, emb.shape[-2:]), **kwargs)
        out = {k: lam * v for k, v in terms.items()} if out is None else {k: out[k] + lam * terms[k] for k in _TERMS}
    return out


def bootstrapped_pixels(loss: Tensor, valid: Tensor, threshold: float = 1.0, min_kept: float = 0.0) -> Tensor:
    """Pixels kept by online bootstrapping (Bridging paper Sec. 2.2, Eq. 1), per crop.

    A pixel is kept when it is labelled and its true-class probability exp(-loss) is below ``threshold``; when a
    crop keeps fewer than ``ceil(min_kept * labelled pixels)``, it keeps its that many hardest labelled pixels
    instead (ties at the cut kept), the paper's "at least a reasonable number of pixels kept per mini-batch".
    ``threshold = 1`` keeps every labelled pixel.

    Args:
        loss: [B, h, w] per-pixel cross-entropy (un-weighted); valid: [B, h, w] bool, labelled pixels.
    Returns:
        [B, h, w] bool.
    """
    if threshold >= 1.0:
        return valid
    keep = valid & (loss > -math.log(threshold))
    if min_kept > 0:
        for b in range(loss.shape[0]):
            labelled = loss[b][valid[b]]
            need = min(len(labelled), math.ceil(min_kept * len(labelled)))
            if need and int(keep[b].sum()) < need:
                cut = torch.topk(labelled.detach(), need, sorted=False).values.min()
                keep[b] = valid[b] & (loss[b] >= cut)
    return keep


def cascade_cross_entropy(
    logits: Sequence[Tensor],
    target: Tensor,
    weights: Sequence[float] = CASCADE_WEIGHTS,
    ignore_index: int = -100,
    class_weights: Tensor | None = None,
    bootstrap_threshold: float = 1.0,
    bootstrap_min_kept: float = 0.0,
) -> Tensor:
    """Cascade weighted softmax cross-entropy, paper Eq. 1: sum_t lambda_t L_sce,t.

    Each L_sce,t is the (class-weighted) mean cross-entropy over the pixels of scale t whose target is not
    ``ignore_index`` (pass the class table's ``ignore_id``) and that online bootstrapping keeps
    (``bootstrapped_pixels``; all of them by default); the target of scale t is ``target`` resized by
    ``downsample_nearest``. A scale without such pixels contributes 0 (not NaN).

    Args:
        logits: one [B, K, h_t, w_t] tensor per scale (finest first, paired with ``weights``).
        target: [B, H, W] int64 class ids.
        class_weights: optional [K] weight per class (as ``F.cross_entropy``'s ``weight``).
        bootstrap_threshold, bootstrap_min_kept: as ``bootstrapped_pixels``.
    Returns:
        scalar tensor.
    """
    _check_scales(logits, weights)
    total = logits[0].sum() * 0.0
    for logit, lam in zip(logits, weights):
        t = downsample_nearest(target, logit.shape[-2:])
        loss = F.cross_entropy(logit, t, ignore_index=ignore_index, reduction="none")
        keep = bootstrapped_pixels(loss, t != ignore_index, bootstrap_threshold, bootstrap_min_kept)
        if class_weights is None:
            pixel_weight = keep.to(logit.dtype)
        else:
            pixel_weight = class_weights.to(logit.dtype)[t.clamp(0, logit.shape[1] - 1)] * keep
        norm = pixel_weight.sum()
        total = total + lam * (loss * pixel_weight).sum() / norm.clamp(min=torch.finfo(logit.dtype).tiny)
    return total


def _check_scales(outputs: Sequence[Tensor], weights: Sequence[float]) -> None:
    if len(outputs) != len(weights):
        raise ValueError(f"got {len(outputs)} cascade outputs but {len(weights)} weights {tuple(weights)}")
    if not outputs:
        raise ValueError("need at least one cascade output")


class CascadeCrossEntropy(nn.Module):
    """``cascade_cross_entropy`` (Eq. 1) with its weights, ignore label and optional class weights."""

    def __init__(self, weights: Sequence[float] = CASCADE_WEIGHTS, ignore_index: int = -100,
                 class_weights: Tensor | None = None):
        super().__init__()
        self.weights = tuple(weights)
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Sequence[Tensor], target: Tensor) -> Tensor:
        return cascade_cross_entropy(logits, target, self.weights, self.ignore_index, self.class_weights)


class DiscriminativeLoss(nn.Module):
    """Discriminative loss with the paper's hyper-parameters (Sec. III-E).

    ``forward(embeddings, instance_ids)``: a [B, E, H, W] tensor gives the batch mean of Eq. 5; a sequence of
    per-scale tensors gives the cascade loss of Eq. 6 with ``cascade_weights``. Returns the dict of
    ``discriminative_loss``.
    """

    def __init__(self, delta_v: float = 0.25, delta_d: float = 1.0, delta_r: float = 6.0, alpha: float = 1.0,
                 beta: float = 1.0, gamma: float = 0.1, ignore_index: int = -1,
                 cascade_weights: Sequence[float] = CASCADE_WEIGHTS):
        super().__init__()
        self.hparams = dict(ignore_index=ignore_index, delta_v=delta_v, delta_d=delta_d, delta_r=delta_r,
                            alpha=alpha, beta=beta, gamma=gamma)
        self.cascade_weights = tuple(cascade_weights)

    def forward(self, embeddings: Tensor | Sequence[Tensor], instance_ids: Tensor) -> dict[str, Tensor]:
        if isinstance(embeddings, Tensor):
            return discriminative_loss_batch(embeddings, instance_ids, **self.hparams)
        return cascade_discriminative_loss(embeddings, instance_ids, self.cascade_weights, **self.hparams)
