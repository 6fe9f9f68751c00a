"""Network backends: the documented auto rule, ONNX Runtime artefacts checked against eager, cached by a key, and
rebuilt or refused (with the command) when missing or stale."""

import json
import sys

import numpy as np
import pytest
import torch

from panoptic_ros import export as export_cli
from panoptic_ros import backends
from panoptic_ros.backends import (SUFFIXES, BackendError, Networks, artefact_paths, code_digest, compile_available,
                                   model_digest, onnxruntime_available, resolve_backend)
from panoptic_ros.predictor import Predictor

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_onnxruntime = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")


def test_auto_rule_and_unsupported_combinations(monkeypatch):
    monkeypatch.setattr("panoptic_ros.backends.onnxruntime_available", lambda: True)
    assert resolve_backend("auto", CPU, "fp32") == "onnxruntime"
    assert resolve_backend("auto", CPU, "bf16") == "eager" and resolve_backend("auto", CUDA, "fp32") == "eager"
    assert resolve_backend("eager", CUDA, "fp16") == "eager"
    with pytest.raises(BackendError, match="runs fp32 on the CPU here"):
        resolve_backend("onnxruntime", CPU, "fp16")
    with pytest.raises(BackendError, match="not one of"):
        resolve_backend("tensorflow", CPU, "fp32")
    monkeypatch.setattr("panoptic_ros.backends.onnxruntime_available", lambda: False)
    monkeypatch.setattr("panoptic_ros.backends.compile_available", lambda device: False)
    assert resolve_backend("auto", CPU, "fp32") == "eager"
    with pytest.raises(BackendError, match="needs the onnxruntime package"):
        resolve_backend("onnxruntime", CPU, "fp32")


def test_auto_is_the_default_of_the_predictor_the_node_and_the_command_lines(tiny_weights, monkeypatch):
    """Issue #11: ``auto`` unless told otherwise. The Predictor resolves it by the rule (nothing is built until a
    frame comes); the node's parameter and each command line's ``--backend`` default to it."""
    import argparse

    from panoptic_ros import evaluate_bag, evaluation, predict
    from panoptic_ros.node_config import NodeConfig

    monkeypatch.setattr("panoptic_ros.backends.onnxruntime_available", lambda: True)
    assert Predictor.from_weights(tiny_weights, device="cpu").backend == "onnxruntime"
    assert Predictor.from_weights(tiny_weights, device="cpu", precision="bf16").backend == "eager"
    assert NodeConfig().backend == "auto"
    defaults = []
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *a, **k: defaults.append(self.get_default("backend")) or sys.exit(0))
    for cli in (evaluate_bag.main, evaluation.main, predict.main):
        with pytest.raises(SystemExit):
            cli()
    assert defaults == ["auto"] * 3


def test_tensorrt_rule_and_its_clear_errors(monkeypatch):
    """TensorRT cannot be installed here: what can be checked is the rule and the errors a user would see."""
    monkeypatch.setattr("panoptic_ros.backends.tensorrt_available", lambda: False)
    assert resolve_backend("auto", CUDA, "fp16") == "eager"
    with pytest.raises(BackendError, match="needs torch-tensorrt and TensorRT, which are not installed: .*pip "
                                           "install torch-tensorrt"):
        resolve_backend("tensorrt", CUDA, "fp16")
    with pytest.raises(BackendError, match="needs a CUDA device, got cpu"):
        resolve_backend("tensorrt", CPU, "fp16")
    monkeypatch.setattr("panoptic_ros.backends.tensorrt_available", lambda: True)
    assert resolve_backend("auto", CUDA, "fp16") == resolve_backend("tensorrt", CUDA, "fp32") == "tensorrt"
    assert resolve_backend("auto", CUDA, "bf16") == "eager"
    with pytest.raises(BackendError, match="fp16 or fp32 engines, not bf16"):
        resolve_backend("tensorrt", CUDA, "bf16")


def test_digest_follows_the_weights(tiny_weights):
    model = Predictor.from_weights(tiny_weights, device="cpu", backend="eager").model
    before = model_digest(model)
    assert model_digest(model) == before
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1
    assert model_digest(model) != before


@needs_onnxruntime
def test_code_digest_follows_the_network_code_and_is_part_of_the_key(tiny_weights, monkeypatch):
    """An edit to a module the network's layers come from (the ICNet trunk) or to the exported wrapper's module
    changes the code digest, and so the artefact key: the same weights exported by other code are stale. An edit
    elsewhere (the post-processing) does not."""
    model = Predictor.from_weights(tiny_weights, device="cpu", backend="eager").model
    before = code_digest(model)
    assert Networks(model, "eager", CPU, "fp32").key(72, 100).code == before
    source = backends.inspect.getsource
    for module, changes in [("panoptic_ros.models.icnet", True), ("panoptic_ros.backends", True),
                            ("panoptic_ros.postprocess", False)]:
        monkeypatch.setattr(backends.inspect, "getsource",
                            lambda m, module=module: source(m) + ("# edited" if m.__name__ == module else ""))
        assert (code_digest(model) != before) == changes, module


def test_export_cli_refuses_what_it_cannot_build(tiny_weights, tmp_path):
    with pytest.raises(SystemExit, match="below the network's smallest input"):
        export_cli.main(["--weights", str(tiny_weights), "--backend", "onnxruntime", "--resolution", "8x8",
                         "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="runs fp32 on the CPU here"):
        export_cli.main(["--weights", str(tiny_weights), "--backend", "onnxruntime", "--resolution", "64x48",
                         "--precision", "fp16", "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        export_cli.main(["--backend", "onnxruntime", "--resolution", "64by48"])
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        export_cli.main(["--weights", str(tiny_weights), "--backend", "tensorrt", "--resolution", "64x48",
                         "--precision", "fp16", "--cache-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="'compile' builds fp32 on the CPU here; got bf16"):
        export_cli.main(["--weights", str(tiny_weights), "--backend", "compile", "--resolution", "64x48",
                         "--precision", "bf16", "--cache-dir", str(tmp_path)])
    threads = torch.get_num_threads()
    with pytest.raises(SystemExit):
        export_cli.main(["--backend", "compile", "--resolution", "64x48", "--threads", "0"])
    assert torch.get_num_threads() == threads and not list(tmp_path.iterdir())  # refused before building anything


def test_export_cli_builds_the_network_size_a_frame_runs_at(tiny_weights, tmp_path, capsys):
    """``--resolution`` is the frame size, at the weights' own input scale unless ``--scale`` says otherwise: a
    100x72 frame of a file naming 0.5 runs at 64x32 (sides multiples of 32), at scale 1 at 96x64. The command builds
    what a Predictor that may not build one then finds, and the command a refusal names builds the missing one."""
    from panoptic_ros.checkpoint import read_weights, save_state

    state, model_cfg, post_cfg, info = read_weights(tiny_weights)
    scaled = save_state(state, model_cfg, post_cfg, {**info, "input_scale": 0.5}, tmp_path / "scaled.safetensors")
    cache = tmp_path / "cache"
    export_cli.main(["--weights", str(scaled), "--backend", "onnxruntime", "--resolution", "100x72",
                     "--cache-dir", str(cache)])
    assert "onnxruntime 100x72 (network input 64x32)" in capsys.readouterr().out
    rgb = np.random.default_rng(0).integers(0, 255, (72, 100, 3), dtype=np.uint8)
    cached = Predictor.from_weights(scaled, device="cpu", backend="onnxruntime", cache_dir=cache, build_missing=False)
    assert cached(rgb).panoptic.shape == (72, 100)
    with pytest.raises(BackendError, match="build it with: python -m panoptic_ros.export ") as refused:
        cached(rgb, scale=1.0)  # 96x64: not built
    command = str(refused.value).split("build it with: python -m panoptic_ros.export ")[1].split()
    export_cli.main(command)
    assert "onnxruntime 96x64 (network input 96x64)" in capsys.readouterr().out
    assert cached(rgb, scale=1.0).panoptic.shape == (72, 100)


needs_compiler = pytest.mark.skipif(not compile_available(CPU), reason="no C++ compiler for AOTInductor")


def test_compile_rule_and_its_clear_errors(monkeypatch):
    monkeypatch.setattr("panoptic_ros.backends.compile_available", lambda device: True)
    assert resolve_backend("compile", CPU, "fp32") == "compile"
    assert resolve_backend("compile", CUDA, "fp16") == resolve_backend("compile", CUDA, "bf16") == "compile"
    with pytest.raises(BackendError, match="'compile' builds fp32 on the CPU here; got bf16 .*use backend 'eager'"):
        resolve_backend("compile", CPU, "bf16")
    monkeypatch.setattr("panoptic_ros.backends.onnxruntime_available", lambda: False)
    assert resolve_backend("auto", CPU, "fp32") == "compile"  # measured: onnxruntime first, then compile
    assert resolve_backend("auto", CPU, "fp16") == "eager"
    monkeypatch.setattr("panoptic_ros.backends.compile_available", lambda device: False)
    assert resolve_backend("auto", CPU, "fp32") == "eager"
    with pytest.raises(BackendError, match="needs a C\\+\\+ compiler for AOTInductor on the CPU"):
        resolve_backend("compile", CPU, "fp32")
    with pytest.raises(BackendError, match="needs Triton on CUDA"):
        resolve_backend("compile", CUDA, "fp16")


def test_compile_key_records_the_threads_inductor_builds_for(tiny_weights):
    """Inductor writes torch's thread count into the artefact's OpenMP loops: another count is another key."""
    threads = torch.get_num_threads()
    model = Predictor.from_weights(tiny_weights, device="cpu", backend="eager").model
    networks = Networks(model, "compile", CPU, "fp32")
    try:
        torch.set_num_threads(1)
        one = networks.key(72, 100)
        torch.set_num_threads(2)
        two = networks.key(72, 100)
    finally:
        torch.set_num_threads(threads)
    assert one.version.endswith("1 threads") and two.version.endswith("2 threads") and one.stem == two.stem
    assert torch.__version__ in one.version and one != two and one.digest == two.digest


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("onnxruntime", marks=needs_onnxruntime),
                                     pytest.param("compile", marks=needs_compiler)])
def test_exported_predictor_matches_eager_and_caches_its_artefact(backend, tiny_weights, tmp_path, capfd):
    """Built once with a message, checked against eager, reloaded from the cache without a rebuild; a key from
    another version is stale: refused with the command that builds it, or rebuilt."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    eager = Predictor.from_weights(tiny_weights, device="cpu", backend="eager")
    fast = Predictor.from_weights(tiny_weights, device="cpu", backend=backend, cache_dir=tmp_path)
    assert fast.backend == backend
    expected, got = eager(rgb), fast(rgb)
    assert f"exporting the network for {backend} at 96x64" in capfd.readouterr().err  # said, not silent
    assert (expected.semantic == got.semantic).float().mean() >= 0.999
    np.testing.assert_allclose(fast.run_network(rgb).logits, eager.run_network(rgb).logits, atol=1e-4)
    key = fast.network.key(64, 96)
    model_path, key_path = artefact_paths(tmp_path, key)
    stored = json.loads(key_path.read_text())
    assert model_path.suffix == SUFFIXES[backend] and model_path.is_file()
    assert stored["digest"] == key.digest and stored["version"] == key.version and stored["argmax_agreement"] >= 0.999
    again = Predictor.from_weights(tiny_weights, device="cpu", backend=backend, cache_dir=tmp_path,
                                   build_missing=False)
    np.testing.assert_array_equal(again(rgb).semantic, got.semantic)  # the cached artefact, not rebuilt
    assert "exporting" not in capfd.readouterr().err
    stored["version"] = "0.0"  # built by another version: stale
    key_path.write_text(json.dumps(stored))
    refusing = Predictor.from_weights(tiny_weights, device="cpu", backend=backend, cache_dir=tmp_path,
                                      build_missing=False)
    with pytest.raises(BackendError, match=r"missing or stale\); build it with: python -m panoptic_ros.export "
                                           rf".* --backend {backend} --resolution 96x64 --scale 1 "):
        refusing(rgb)
    Networks(again.model, backend, torch.device("cpu"), "fp32", tmp_path).prepare(64, 96)
    assert json.loads(key_path.read_text())["version"] == key.version  # rebuilt


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compile_on_cuda_replays_its_cuda_graph_with_each_new_input(tiny_weights, tmp_path):
    """max-autotune AOTInductor, captured in a CUDA graph: a second, different frame gives its own outputs (the
    graph's static input is refilled), equal to eager's."""
    eager = Predictor.from_weights(tiny_weights, device="cuda")
    fast = Predictor.from_weights(tiny_weights, device="cuda", backend="compile", cache_dir=tmp_path)
    rng = np.random.default_rng(1)
    outputs = []
    for _ in range(2):
        rgb = rng.integers(0, 255, (72, 100, 3), dtype=np.uint8)
        got, expected = fast.run_network(rgb).logits, eager.run_network(rgb).logits
        assert (got.argmax(0) == expected.argmax(0)).float().mean() >= 0.999  # TF32 convolutions either way
        outputs.append(got.cpu())
    assert fast.network.prepare(72, 100).graph is not None and not torch.equal(*outputs)
