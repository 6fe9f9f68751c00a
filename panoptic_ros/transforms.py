"""Image normalisation (shared by training and the Predictor) and joint training augmentations."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch

# ImageNet statistics, the usual normalisation of ResNet trunks (RGB, 0..1 scale).
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
_SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
_OFFSET = (MEAN / STD).astype(np.float32)
IGNORE_LABEL = 255  # semantic pixels without a label (void) in training targets
NO_INSTANCE = -1  # instance-id pixels that belong to no thing instance


def normalized_centres(start: int, count: int, full: int) -> np.ndarray:
    """[count] float32: centres of pixels start..start+count-1 of a row of ``full`` pixels, normalised to [-1, 1]
    (the CoordConv channels of PanoNet Sec. III-A; pixels outside the row extrapolate linearly)."""
    return ((start + np.arange(count, dtype=np.float64) + 0.5) * (2.0 / full) - 1.0).astype(np.float32)


def coordinate_map(xs: np.ndarray, ys: np.ndarray) -> torch.Tensor:
    """float32 [2, H, W] (x then y) from the column coordinates [W] and row coordinates [H]."""
    return torch.from_numpy(np.stack(np.broadcast_arrays(xs[None, :], ys[:, None])).copy())


def normalize_image(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W] on ``device``, ImageNet-normalised. The uint8 image is uploaded (a
    quarter of the float's bytes) and normalised there, one channel at a time: ``x * (1 / (255 std)) - mean / std``
    straight from the interleaved bytes into its plane (4x faster on the CPU than converting the whole image with
    numpy and transposing it)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {rgb.dtype} {rgb.shape}")
    array = np.ascontiguousarray(rgb)
    with warnings.catch_warnings():  # a read-only frame (a message's buffer) is only read here
        warnings.simplefilter("ignore", UserWarning)
        pixels = torch.from_numpy(array).to(device)
    out = torch.empty((3, *rgb.shape[:2]), dtype=torch.float32, device=pixels.device)
    for channel in range(3):
        torch.mul(pixels[:, :, channel], float(_SCALE[channel]), out=out[channel]).sub_(float(_OFFSET[channel]))
    return out


@dataclass
class TrainAugment:
    """Random scale, crop (padding with ignore labels), horizontal flip and colour jitter applied jointly to an
    image and its semantic and instance maps. Labels are resampled with centre-aligned nearest neighbour
    (INTER_NEAREST_EXACT): plain INTER_NEAREST is offset by half a pixel from the bilinear image.

    Also returns the crop's CoordConv coordinates in full-image terms (PanoNet Sec. III-A): x and y of each crop
    pixel, normalised over the whole scaled (and flipped) image, so that a crop teaches the instance branch the
    same coordinate scale that full-frame inference gives it. A flipped crop is the mirrored window of the
    flipped image, so x still increases from left to right. Padded pixels extrapolate."""

    crop: tuple[int, int] = (352, 480)  # (height, width)
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.25  # max relative change of brightness, contrast and saturation
    seed: int | None = None

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, rgb: np.ndarray, semantic: np.ndarray, instances: np.ndarray):
        s = self.rng.uniform(*self.scale)
        h, w = semantic.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        semantic = cv2.resize(semantic, size, interpolation=cv2.INTER_NEAREST_EXACT)
        instances = cv2.resize(instances.astype(np.int32), size, interpolation=cv2.INTER_NEAREST_EXACT)
        ch, cw = self.crop
        pad_h, pad_w = max(ch - size[1], 0), max(cw - size[0], 0)
        if pad_h or pad_w:
            fill = tuple(int(v) for v in (MEAN * 255).round())
            rgb = cv2.copyMakeBorder(rgb, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=fill)
            semantic = cv2.copyMakeBorder(semantic, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_LABEL)
            instances = cv2.copyMakeBorder(instances, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=NO_INSTANCE)
        y = int(self.rng.integers(0, semantic.shape[0] - ch + 1))
        x = int(self.rng.integers(0, semantic.shape[1] - cw + 1))
        rgb, semantic, instances = (a[y:y + ch, x:x + cw] for a in (rgb, semantic, instances))
        flipped = self.flip and self.rng.random() < 0.5
        if flipped:
            rgb, semantic, instances = rgb[:, ::-1], semantic[:, ::-1], instances[:, ::-1]
            x = size[0] - x - cw  # the same window, seen in the mirrored image
        coordinates = coordinate_map(normalized_centres(x, cw, size[0]), normalized_centres(y, ch, size[1]))
        if self.jitter > 0:
            rgb = self._jitter(rgb)
        return (np.ascontiguousarray(rgb), np.ascontiguousarray(semantic), np.ascontiguousarray(instances),
                coordinates)

    def _jitter(self, rgb: np.ndarray) -> np.ndarray:
        """Brightness b (x * b), contrast c about the image mean, saturation s about each pixel's channel mean, in
        uint8 OpenCV operations: brightness and contrast are one lookup table, saturation one weighted sum."""
        b, c, s = 1 + self.rng.uniform(-self.jitter, self.jitter, 3)
        mean = b * float(np.mean(cv2.mean(rgb)[:3]))
        lut = np.clip(np.arange(256) * b * c + mean * (1 - c), 0, 255).round().astype(np.uint8)
        x = cv2.LUT(rgb, lut)
        gray = cv2.transform(x, np.full((1, 3), 1 / 3))
        return cv2.addWeighted(x, s, cv2.merge([gray, gray, gray]), 1 - s, 0)
