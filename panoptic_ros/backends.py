"""Where the network runs: eager PyTorch, an AOTInductor package, an exported artefact run by ONNX Runtime, or a
TensorRT engine.

The ``backend`` setting of ``Predictor.from_weights`` (and of the node, ``predict`` and the benchmarks):

- ``eager``: the PyTorch module as is.
- ``onnxruntime``: the network exported with ``torch.onnx.export`` (the dynamo exporter, over ``torch.export``) for
  one input shape, run by ONNX Runtime's CPU execution provider; fp32. Measured 2.4-2.8x faster than eager for the
  shipped PanoNet on the 2-core CPU (``benchmarks/panonet.py`` reports the side-by-side ratio).
- ``compile``: torch.compile's inductor, ahead of time (AOTInductor): ``torch.export.export`` ->
  ``torch._inductor.aoti_compile_and_package`` (a ``.pt2`` package of C++ / Triton kernels and the weights) ->
  ``torch._inductor.aoti_load_package``, one static shape per network input size. An explicit, cached artefact as
  the others, rather than ``torch.compile`` on the first frame, which would build silently (minutes) inside the
  node. On CUDA: inductor's ``max_autotune``, and the loaded package captured in a CUDA graph and replayed
  (AOTInductor itself never uses CUDA graphs: inductor turns ``triton.cudagraphs`` off when compiling ahead of
  time); fp32, fp16 or bf16; written to the API but not run here (no GPU on this project's machines). On the CPU:
  inductor's defaults, fp32 only (fp16 / bf16 are refused, as ``onnxruntime`` does: no native half precision on
  this CPU). ``freezing`` measured the same (95.1 vs 96.1 ms at 480x360, 1 thread), ``cpp.simdlen`` was not tried.
  Inductor writes torch's thread count into the package's OpenMP loops, so the key records it: a process with
  another ``torch.get_num_threads()`` finds the artefact stale. A build takes 1-2.5 min for the shipped PanoNet on
  the 2-core CPU.
- ``tensorrt``: torch-tensorrt's dynamo frontend as documented (``torch.export.export`` ->
  ``torch_tensorrt.dynamo.compile`` -> ``torch_tensorrt.save``, loaded with ``torch.export.load``), one static shape
  per network input size, on CUDA, in the model's precision (fp16 or fp32). TensorRT cannot be installed on this
  project's machines (PyPI's ``tensorrt`` is a stub), so only its clear error is tested here.
- ``auto``: a documented rule, not a probe, from the measurements below: on the CPU, for fp32, ``onnxruntime``
  when ONNX Runtime imports, else ``compile`` when a C++ compiler is found, else ``eager`` (other precisions:
  ``eager``); on CUDA, ``tensorrt`` when torch-tensorrt imports, else ``eager`` (``compile`` on CUDA is unmeasured:
  no GPU here, so ``auto`` does not pick it). A network that does not export (``exportable=False``: the accuracy
  mode's detector, whose RPN, NMS and RoI heads have data-dependent shapes) always runs ``eager``; ``auto`` picks
  that, ``compile``, ``onnxruntime`` and ``tensorrt`` are refused with the reason.

Artefacts are an explicit step (``python -m panoptic_ros.export``) and live in a cache directory next to a key
(JSON): the digest of the weights, the digest of the network's code (the package modules its layers come from:
an upgrade that changes the graph, with the same weights, makes the artefact stale), the backend and its version,
the input shape, the precision and the device. A missing or stale artefact is rebuilt with a progress message, or refused with the command that builds it
(``build_missing``). Every artefact is checked against eager on the embedded sample frame before it is written:
the largest absolute logit difference is recorded, and the argmax must agree on at least 99.9% of the pixels.

The CPU rule, measured (shipped PanoNet, network alone, the three side by side in one process, frames in turn,
median of 15-25; AMD EPYC, 2 cores shared with a concurrent mutation-testing run, so absolute times are inflated;
torch 2.14.1, onnxruntime 1.32.0):

| threads, resolution | eager ms | onnxruntime ms (x eager) | compile ms (x eager) |
| --- | --- | --- | --- |
| 1, 480x360 | 143.5 / 103.0 | 74.9 (1.91x) / 45.3 (2.28x) | 96.1 (1.49x) / 59.7 (1.73x) |
| 1, 1024x512 | 232.0 / 253.5 | 126.7 (1.83x) / 142.8 (1.77x) | 143.5 (1.62x) / 168.6 (1.50x) |
| 2, 480x360 | 69.6 / 1740 | 36.9 (1.88x) / 60.2 (28.9x) | 34.2 (2.03x) / 916 (1.90x) |
| 2, 1024x512 | 1816 / 1780 | 151.0 (12.0x) / 158.6 (11.2x) | 949 (1.91x) / 960 (1.86x) |

(two runs, x / y). ONNX Runtime is first in all but one cell, and the only one of the three that holds up with 2
threads while the other load takes the cores: torch's and inductor's OpenMP loops wait on a descheduled thread
(6-29x slower than ONNX Runtime then), ONNX Runtime's own pool with spinning off does not. ``compile`` is
1.5-2x eager everywhere, hence second. All three agree with eager on 100% of the argmax (logits within 1.4e-5).
``benchmarks/backends.py`` (1 thread, ``benchmarks/results/backends-cpu.md``) agrees: onnxruntime 2.05x / 1.95x
eager at 512x256 / 1024x512, compile 1.56x / 1.48x; at 2048x1024 the two tie (678 vs 658 ms, 1.67x / 1.72x).

OpenVINO (issue #11: a backend only if faster than ONNX Runtime on this CPU) is not one: OpenVINO 2026.4.1's CPU
plugin (f32, latency hint) on the same ONNX artefact, side by side with ONNX Runtime 1.32.0, ran 0.86x / 0.87x
ONNX Runtime's speed at 480x360 / 1024x512 with 1 thread (54.0 vs 46.5 ms, 145.5 vs 126.0 ms) and 0.81x / 0.89x
with 2 (59.5 vs 48.0 ms, 182.1 vs 161.2 ms), argmax identical.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

BACKENDS = ("auto", "eager", "compile", "onnxruntime", "tensorrt")
SUFFIXES = {"compile": ".pt2", "onnxruntime": ".onnx", "tensorrt": ".ep"}
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


@functools.cache
def _cpp_compiler() -> str | None:
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except Exception:  # inductor raises InvalidCxxCompiler (or an OSError) when it finds none
        return None


def compile_available(device: torch.device) -> bool:
    """AOTInductor can build here: a C++ compiler on the CPU (inductor's search: ``$CXX``, g++, ...), Triton on
    CUDA."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return _cpp_compiler() is not None


def compile_options(device: torch.device) -> dict:
    """Inductor settings of the ``compile`` artefact: max-autotune on CUDA (issue #11); on the CPU the defaults,
    which measured as fast as ``freezing`` (module docstring)."""
    return {"max_autotune": True} if device.type == "cuda" else {}


def add_backend_argument(parser) -> None:
    """The ``--backend`` option every command line shares (argparse ``parser``), ``auto`` by default."""
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="where the network runs (README, Backends): auto, the default, is the fastest for the "
                             "device; an exported backend builds a missing artefact first")


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
            if precision != "fp32":
                return "eager"
            if onnxruntime_available():
                return "onnxruntime"
            return "compile" if compile_available(device) else "eager"
        return "tensorrt" if precision in ("fp16", "fp32") and tensorrt_available() else "eager"
    if backend == "compile":
        if not compile_available(device):
            raise BackendError("backend 'compile' needs " + (
                "Triton on CUDA (pip install triton matching torch)" if device.type == "cuda" else
                "a C++ compiler for AOTInductor on the CPU (g++ or clang++, or $CXX), none found") +
                "; or use backend 'eager'")
        if device.type == "cpu" and precision != "fp32":
            raise BackendError(f"backend 'compile' builds fp32 on the CPU here; got {precision} (fp16 / bf16 run on "
                               f"CUDA; use backend 'eager' for {precision} on the CPU)")
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


def code_digest(model: nn.Module) -> str:
    """sha256 of the source of the package modules that define the model's layers, and of this module (its
    ``_Outputs`` wrapper is exported with them): an artefact holds the graph that code traced, so a change to it
    makes the artefact stale even with the same weights. torch's own layers are covered by the backend version."""
    package = __name__.rpartition(".")[0]
    names = {type(m).__module__ for m in model.modules() if type(m).__module__.startswith(package + ".")}
    digest = hashlib.sha256()
    for name in sorted(names | {__name__}):
        digest.update(name.encode() + b"\0" + inspect.getsource(sys.modules[name]).encode() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtefactKey:
    """What an artefact was built from and for; any difference makes it stale."""

    digest: str
    code: str
    backend: str
    version: str
    height: int
    width: int
    precision: str
    device: str

    @property
    def stem(self) -> str:
        return f"{self.backend}-{self.digest[:16]}-{self.width}x{self.height}-{self.precision}-{self.device}"


def backend_version(backend: str, device: torch.device = torch.device("cpu")) -> str:
    """What an artefact depends on besides the weights and shape. A CPU ``compile`` artefact also records the
    number of threads: inductor writes it into its OpenMP loops at build time."""
    if backend in ("onnxruntime", "tensorrt"):
        module = importlib.import_module({"onnxruntime": "onnxruntime", "tensorrt": "torch_tensorrt"}[backend])
        return f"{backend} {module.__version__}, torch {torch.__version__}"
    if backend == "compile":
        if device.type == "cuda":
            return f"torch {torch.__version__}, AOTInductor max-autotune"
        return f"torch {torch.__version__}, AOTInductor, {torch.get_num_threads()} threads"
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


class CompiledNetwork:
    """An AOTInductor package (``.pt2``): ``network(images)`` -> output dict.

    On CUDA the loaded model is captured in a CUDA graph on the first call and replayed after it: AOTInductor
    itself never uses CUDA graphs (inductor turns ``triton.cudagraphs`` off when compiling ahead of time), and its
    loader's ``run_single_threaded`` is there for callers that capture it. Each call copies the images into the
    graph's static input and returns copies of its static outputs."""

    def __init__(self, path: Path, device: torch.device):
        from torch._inductor import aoti_load_package

        self.cuda = device.type == "cuda"
        self.module = aoti_load_package(
            str(path), run_single_threaded=self.cuda, device_index=-1 if device.index is None else device.index)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _capture(self, images: Tensor) -> None:
        self.static = images.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up runs outside the capture, as torch.cuda.graph requires
            for _ in range(2):
                self.module(self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self.module(self.static)

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        if not self.cuda:
            return dict(zip(OUTPUTS, self.module(images)))
        if self.graph is None:
            self._capture(images)
        self.static.copy_(images)
        self.graph.replay()
        return {name: output.clone() for name, output in zip(OUTPUTS, self.outputs)}


def load_network(backend: str, path: Path, device: torch.device = torch.device("cpu")) -> Callable:
    """The artefact at ``path`` as a callable: images [1, 3, H, W] -> {"semantic", "embedding"}."""
    if backend == "compile":
        return CompiledNetwork(path, device)
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
    elif key.backend == "compile":  # AOTInductor: torch.export, then inductor's C++ / Triton code in a .pt2 package
        from torch._inductor import aoti_compile_and_package

        program = torch.export.export(wrapper, (images,))
        aoti_compile_and_package(program, package_path=str(model_path), inductor_configs=compile_options(images.device))
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
        checked = agreement(expected, load_network(key.backend, model_path, images.device)(images))
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
        self._digests: tuple[str, str] | None = None
        self._sessions: dict[tuple[int, int], Callable] = {}

    def key(self, height: int, width: int) -> ArtefactKey:
        if self._digests is None:
            self._digests = model_digest(self.model), code_digest(self.model)
        return ArtefactKey(*self._digests, self.backend, backend_version(self.backend, self.device), height, width,
                           self.precision, self.device.type)

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
                        f"{self.backend} --resolution {width}x{height} --scale 1 --cache-dir {self.cache_dir}")
                export(self.model, key, self.cache_dir, self.log)
            self._sessions[shape] = load_network(self.backend, model_path, self.device)
        return self._sessions[shape]

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        return self.prepare(*images.shape[2:])(images)
