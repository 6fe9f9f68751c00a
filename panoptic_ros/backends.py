"""Where the network runs: eager PyTorch, an exported artefact run by ONNX Runtime, or a TensorRT engine.

The ``backend`` setting of ``Predictor.from_weights`` (and of the node, ``predict`` and the benchmarks):

- ``eager``: the PyTorch module as is.
- ``onnxruntime``: the network exported with ``torch.onnx.export`` (the dynamo exporter, over ``torch.export``) for
  one input shape, run by ONNX Runtime's CPU execution provider; fp32. Measured 2.4-2.8x faster than eager for the
  shipped PanoNet on the 2-core CPU (``benchmarks/panonet.py`` reports the side-by-side ratio).
- ``tensorrt``: torch-tensorrt's dynamo frontend as documented (``torch.export.export`` ->
  ``torch_tensorrt.dynamo.compile`` -> ``torch_tensorrt.save``, loaded with ``torch.export.load``), one static shape
  per network input size, on CUDA, in the model's precision (fp16 or fp32). TensorRT cannot be installed on this
  project's machines (PyPI's ``tensorrt`` is a stub), so only its clear error is tested here.
- ``auto``: a documented rule, not a probe: on the CPU, ``onnxruntime`` for fp32 when ONNX Runtime imports; on
  CUDA, ``tensorrt`` when torch-tensorrt imports; else ``eager``. A network that does not export
  (``exportable=False``: the accuracy mode's detector, whose RPN, NMS and RoI heads have data-dependent shapes)
  always runs ``eager``; ``auto`` picks that, ``onnxruntime`` and ``tensorrt`` are refused with the reason.

Artefacts are an explicit step (``python -m panoptic_ros.export``) and live in a cache directory next to a key
(JSON): the digest of the weights, the backend and its version, the input shape, the precision and the device. A
missing or stale artefact is rebuilt with a progress message, or refused with the command that builds it
(``build_missing``). Every artefact is checked against eager on the embedded sample frame before it is written:
the largest absolute logit difference is recorded, and the argmax must agree on at least 99.9% of the pixels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

BACKENDS = ("auto", "eager", "onnxruntime", "tensorrt")
SUFFIXES = {"onnxruntime": ".onnx", "tensorrt": ".ep"}
MIN_ARGMAX_AGREEMENT = 0.999
OUTPUTS = ("semantic", "embedding")


class BackendError(RuntimeError):
    """A backend that cannot run here, or an artefact that is missing, stale or disagrees with eager."""


def default_cache_dir() -> Path:
    """``$PANOPTIC_ROS_CACHE``, else ``$XDG_CACHE_HOME/panoptic_ros``, else ``~/.cache/panoptic_ros``."""
    if os.environ.get("PANOPTIC_ROS_CACHE"):
        return Path(os.environ["PANOPTIC_ROS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "panoptic_ros"


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def tensorrt_available() -> bool:
    return importlib.util.find_spec("torch_tensorrt") is not None


def resolve_backend(backend: str, device: torch.device, precision: str, exportable: bool = True) -> str:
    """The backend ``auto`` stands for on ``device`` at ``precision`` (module docstring); others are checked.
    ``exportable=False``: the network runs eager only."""
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r} is not one of {BACKENDS}")
    if not exportable:
        if backend not in ("auto", "eager"):
            raise BackendError(f"backend {backend!r} needs the network exported as one torch.export graph; the "
                               f"accuracy mode's detector (RPN, NMS, RoI heads: data-dependent shapes) runs eager "
                               f"only: use backend 'eager' or 'auto'")
        return "eager"
    if backend == "auto":
        if device.type == "cpu":
            return "onnxruntime" if precision == "fp32" and onnxruntime_available() else "eager"
        return "tensorrt" if precision in ("fp16", "fp32") and tensorrt_available() else "eager"
    if backend == "tensorrt":
        if device.type != "cuda":
            raise BackendError(f"backend 'tensorrt' needs a CUDA device, got {device} (use 'onnxruntime' or 'eager')")
        if not tensorrt_available():
            raise BackendError("backend 'tensorrt' needs torch-tensorrt and TensorRT, which are not installed: on a "
                               "machine with NVIDIA's TensorRT, pip install torch-tensorrt matching torch "
                               f"{torch.__version__}; or use backend 'eager'")
        if precision not in ("fp16", "fp32"):
            raise BackendError(f"backend 'tensorrt' builds fp16 or fp32 engines, not {precision}")
    if backend == "onnxruntime":
        if not onnxruntime_available():
            raise BackendError("backend 'onnxruntime' needs the onnxruntime package (pip install onnxruntime)")
        if device.type != "cpu" or precision != "fp32":
            raise BackendError(f"backend 'onnxruntime' runs fp32 on the CPU here; got {precision} on {device} "
                               f"(use backend 'eager')")
    return backend


def model_digest(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, dtypes, shapes, values): the weights an artefact holds."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtefactKey:
    """What an artefact was built from and for; any difference makes it stale."""

    digest: str
    backend: str
    version: str
    height: int
    width: int
    precision: str
    device: str

    @property
    def stem(self) -> str:
        return f"{self.backend}-{self.digest[:16]}-{self.width}x{self.height}-{self.precision}-{self.device}"


def backend_version(backend: str) -> str:
    if backend in ("onnxruntime", "tensorrt"):
        module = importlib.import_module({"onnxruntime": "onnxruntime", "tensorrt": "torch_tensorrt"}[backend])
        return f"{backend} {module.__version__}, torch {torch.__version__}"
    return f"torch {torch.__version__}"


def sample_images(height: int, width: int) -> Tensor:
    """The embedded sample frame resized to ``height`` x ``width``, normalised as the Predictor does: [1, 3, H, W]."""
    import cv2

    from .datasets import read_rgb
    from .demo import DEFAULT_IMAGE
    from .transforms import normalize_image

    rgb = cv2.resize(read_rgb(DEFAULT_IMAGE), (width, height), interpolation=cv2.INTER_AREA)
    return normalize_image(rgb)[None]


def agreement(expected: dict[str, Tensor], got: dict[str, Tensor]) -> dict[str, float]:
    """Largest absolute difference of the logits and the share of pixels whose argmax class agrees."""
    a, b = expected["semantic"].float(), got["semantic"].float()
    return {"max_abs_logit_difference": float((a - b).abs().max()),
            "argmax_agreement": float((a.argmax(1) == b.argmax(1)).float().mean())}


class _Outputs(nn.Module):
    """The network with a tuple output (what exporters take), in the order of ``OUTPUTS``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images)
        return out["semantic"], out["embedding"]


class OnnxRuntimeNetwork:
    """An ONNX artefact in an ONNX Runtime CPU session: ``network(images)`` -> {"semantic", "embedding"} tensors."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # warnings of graph optimisation are not the user's business
        # ONNX Runtime's idle workers spin for a while after each run; on a CPU shared with the post-processing
        # that follows, the spinning took the cores from it (clustering and merge 1.7x slower on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images.numpy())})
        return {name: torch.from_numpy(value) for name, value in zip(OUTPUTS, outputs)}


class TensorRTNetwork:
    """A saved torch-tensorrt program (``torch_tensorrt.save``): ``network(images)`` -> output dict."""

    def __init__(self, path: Path):
        import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops the program calls)

        self.module = torch.export.load(str(path)).module()

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        return dict(zip(OUTPUTS, self.module(images)))


def load_network(backend: str, path: Path) -> Callable[[Tensor], dict[str, Tensor]]:
    return OnnxRuntimeNetwork(path) if backend == "onnxruntime" else TensorRTNetwork(path)


def artefact_paths(cache_dir: Path, key: ArtefactKey) -> tuple[Path, Path]:
    return cache_dir / f"{key.stem}{SUFFIXES[key.backend]}", cache_dir / f"{key.stem}.json"


def read_key(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def progress(message: str) -> None:
    print(f"panoptic_ros: {message}", file=sys.stderr, flush=True)


def _build(wrapper: nn.Module, key: ArtefactKey, images: Tensor, model_path: Path) -> None:
    if key.backend == "onnxruntime":
        torch.onnx.export(wrapper, (images,), str(model_path), input_names=["images"], output_names=list(OUTPUTS),
                          dynamo=True, verbose=False)
    elif key.backend == "tensorrt":  # torch-tensorrt's documented AOT path; the dtype is the model's
        import torch_tensorrt

        program = torch.export.export(wrapper, (images,))
        engine = torch_tensorrt.dynamo.compile(program, arg_inputs=[images], use_explicit_typing=True)
        torch_tensorrt.save(engine, str(model_path), arg_inputs=[images])
    else:
        raise BackendError(f"backend {key.backend!r} has no artefact to export")


def export(model: nn.Module, key: ArtefactKey, cache_dir: Path, log: Callable[[str], None] = progress) -> Path:
    """Export ``model`` (on its device, in its dtype) for ``key`` into ``cache_dir``, check it against eager on the
    sample frame, then write the key (with the agreement) next to it; raises ``BackendError`` when they disagree."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_path, key_path = artefact_paths(cache_dir, key)
    parameter = next(model.parameters())
    images = sample_images(key.height, key.width).to(parameter.device, parameter.dtype)
    wrapper = _Outputs(model).eval()
    log(f"exporting the network for {key.backend} at {key.width}x{key.height} to {model_path} (seconds to minutes)")
    with torch.inference_mode():
        expected = dict(zip(OUTPUTS, wrapper(images)))
    _build(wrapper, key, images, model_path)
    with torch.inference_mode():
        checked = agreement(expected, load_network(key.backend, model_path)(images))
    if checked["argmax_agreement"] < MIN_ARGMAX_AGREEMENT:
        model_path.unlink(missing_ok=True)
        raise BackendError(f"the {key.backend} artefact disagrees with eager: {checked}")
    key_path.write_text(json.dumps({**asdict(key), **checked}, indent=2) + "\n")
    log(f"exported: {checked}")
    return model_path


class Networks:
    """The network per input shape for one backend: eager runs the module; onnxruntime loads (or builds) the
    artefact of each shape once, from ``cache_dir``."""

    def __init__(self, model: nn.Module, backend: str, device: torch.device, precision: str,
                 cache_dir: Path | None = None, build_missing: bool = True, weights: str = "",
                 log: Callable[[str], None] = progress, exportable: bool = True):
        self.model, self.device, self.precision = model, device, precision
        self.backend = resolve_backend(backend, device, precision, exportable)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.build_missing, self.weights, self.log = build_missing, weights, log
        self._digest: str | None = None
        self._sessions: dict[tuple[int, int], Callable] = {}

    def key(self, height: int, width: int) -> ArtefactKey:
        if self._digest is None:
            self._digest = model_digest(self.model)
        return ArtefactKey(self._digest, self.backend, backend_version(self.backend), height, width, self.precision,
                           self.device.type)

    def prepare(self, height: int, width: int) -> Callable:
        """The network for [1, 3, height, width] inputs: loaded from the cache, or built if ``build_missing``."""
        if self.backend == "eager":
            return self.model
        shape = (height, width)
        if shape not in self._sessions:
            key = self.key(height, width)
            model_path, key_path = artefact_paths(self.cache_dir, key)
            stored = read_key(key_path)
            if not model_path.is_file() or stored is None or {k: stored.get(k) for k in asdict(key)} != asdict(key):
                if not self.build_missing:
                    raise BackendError(
                        f"no {self.backend} artefact for {width}x{height} in {self.cache_dir} (missing or stale); "
                        f"build it with: python -m panoptic_ros.export --weights {self.weights or 'W'} --backend "
                        f"{self.backend} --resolution {width}x{height} --cache-dir {self.cache_dir}")
                export(self.model, key, self.cache_dir, self.log)
            self._sessions[shape] = load_network(self.backend, model_path)
        return self._sessions[shape]

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        return self.prepare(*images.shape[2:])(images)
