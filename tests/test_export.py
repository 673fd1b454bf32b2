"""`l2l-app export`: the exported network computes what the run's model computes, the sidecar
describes the run, and every refusal is one line that writes nothing.

Two tiny runs (ProtoNet with --normalize, MAML; loop engine, hidden 8, a few steps on the synthetic
Omniglot of conftest) are trained once for the module; a Meta-SGD run checks its learned rates and
a feature-vector run (mlp backbone) the (D,) inputs.  The ONNX round trip needs the optional onnx,
onnxscript and onnxruntime packages and is skipped without them; every other format always runs.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import l2l_app.export as export_module
from l2l_app import __version__
from l2l_app.backbones import TaskBatchNorm2d
from l2l_app.experiment import Experiment, build_model
from l2l_app.export import TRACE_BATCH, float32_tolerance, sidecar_path
from conftest import cli_run, refused

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")]

TINY = ["--hidden", "8", "--ways", "3", "--shots", "1", "--queries", "2", "--iterations", "3", "--val-every", "2",
        "--val-episodes", "2", "--device", "cpu", "--engine", "loop", "--quiet"]
RUNS = {"protonet": ["--algo", "protonet", "--normalize"], "maml": ["--algo", "maml"]}
#: batch sizes compared: one image, and several (neither is the trace batch)
BATCHES = (1, 7)
assert TRACE_BATCH not in BATCHES


run = cli_run


def train(root: Path, out: Path, *args: str) -> Path:
    result = run("train", "--data-root", root, "--out", out, *TINY, *args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def runs(synthetic_data_root, tmp_path_factory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("export_runs")
    with torch.random.fork_rng():
        return {algo: train(synthetic_data_root, base / algo, *args) for algo, args in RUNS.items()}


@pytest.fixture(scope="module")
def rebuilt(runs) -> Dict[str, Experiment]:
    """Each run rebuilt from its best checkpoint (the reference the exports are compared with)."""
    return {algo: Experiment.from_run(path, "best", device="cpu")[0] for algo, path in runs.items()}


def inputs(x: Experiment, batch: int) -> torch.Tensor:
    """The first `batch` test-split images of the run, as model input [batch, C, H, W]."""
    split = x.load_split("test", progress=False)
    return x.preprocessing.to_input(split.images[:batch])


def export(run_dir: Path, out: Path, fmt: str, *args):
    return run("export", run_dir, "--format", fmt, "--out", out, *args)


def exported(run_dir: Path, out: Path, fmt: str) -> Dict:
    """Export and return the sidecar."""
    result = export(run_dir, out, fmt)
    assert result.exit_code == 0, result.output
    assert out.is_file() and sidecar_path(out).is_file()
    return json.loads(sidecar_path(out).read_text())


# ---------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("algo", RUNS)
def test_state_dict_loads_into_a_fresh_model_exactly(runs, rebuilt, tmp_path, algo):
    out = tmp_path / "model.pt"
    exported(runs[algo], out, "state-dict")
    saved = torch.load(out, weights_only=True)
    x = rebuilt[algo]
    fresh = build_model(x.config, tuple(saved["metadata"]["input"]["shape"]))
    fresh.load_state_dict(saved["model"])
    for batch in BATCHES:
        inp = inputs(x, batch)
        with torch.no_grad():
            assert torch.equal(fresh(inp), x.model(inp)), batch
    learner = x.learner.state_dict()
    assert saved["learner"].keys() == learner.keys()
    assert all(torch.equal(saved["learner"]["model"][k], v) for k, v in learner["model"].items())


@pytest.mark.parametrize("algo", RUNS)
def test_torchscript_matches_the_model_for_any_batch_size(runs, rebuilt, tmp_path, algo):
    out = tmp_path / "model.pt"
    sidecar = exported(runs[algo], out, "torchscript")
    traced = torch.jit.load(str(out))
    x = rebuilt[algo]
    for batch in BATCHES:
        inp = inputs(x, batch)
        with torch.no_grad():
            want, got = x.model(inp), traced(inp)
        assert got.shape == want.shape == (batch, sidecar["output"]["size"])
        assert (got - want).abs().max().item() <= float32_tolerance(x.model, inp), batch
    assert sidecar["check"]["checked"] and sidecar["check"]["batch_sizes"] == list(export_module.CHECK_BATCHES)


@pytest.mark.slow  # the torch.export-based exporter takes ~10 s
def test_onnx_round_trip(runs, rebuilt, tmp_path):
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name)
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    sidecar = exported(runs["maml"], out, "onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = rebuilt["maml"]
    for batch in BATCHES:
        inp = inputs(x, batch)
        got = torch.from_numpy(session.run([sidecar["input"]["onnx_output"]],
                                           {sidecar["input"]["onnx_input"]: inp.numpy()})[0])
        with torch.no_grad():
            want = x.model(inp)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= float32_tolerance(x.model, inp), batch
    assert sidecar["check"]["checked"] and sidecar["check"]["runtime"].startswith("onnxruntime")


# ---------------------------------------------------------------------------------- the sidecar
@pytest.mark.parametrize("algo", RUNS)
def test_sidecar_describes_the_run(runs, rebuilt, tmp_path, algo):
    out = tmp_path / "net.ts"
    sidecar = exported(runs[algo], out, "torchscript")
    x = rebuilt[algo]
    assert sidecar["preprocessing"] == json.loads((runs[algo] / "preprocessing.json").read_text())
    assert sidecar["input"]["shape"] == [1, 28, 28]
    assert sidecar["algorithm"] == algo and sidecar["backbone"] == {"name": "conv4", "hidden": 8}
    assert sidecar["format"] == "torchscript" and sidecar["file"] == "net.ts"
    assert sidecar["l2l_app_version"] == __version__ and sidecar["torch_version"] == str(torch.__version__)
    head = x.config.spec.head
    assert sidecar["output"]["kind"] == ("logits" if head else "embedding")
    assert sidecar["output"]["size"] == (3 if head else x.model.feature_size)
    assert sidecar["adaptation"] == x.config.algorithm.protocol()
    assert sidecar["episodes"]["ways"] == 3 and sidecar["episodes"]["shots"] == 1
    best = runs[algo] / "checkpoints" / "best.pt"
    assert sidecar["checkpoint"]["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert sidecar["checkpoint"]["step"] == torch.load(best, weights_only=True)["step"]
    assert Path(sidecar["run_dir"]) == runs[algo].resolve()


def test_the_sidecars_input_recipe_reproduces_the_runs_input(runs, rebuilt, synthetic_data_root, tmp_path):
    """Follow the sidecar's numbers by hand (PIL + numpy) on a raw PNG: the run's own input, exactly."""
    sidecar = exported(runs["protonet"], tmp_path / "m.pt", "state-dict")
    p = sidecar["preprocessing"]
    assert p["mean"] is not None and any("(x - mean[c]) / std[c]" in s for s in sidecar["how_to_prepare_input"])
    png = next(iter(sorted(synthetic_data_root.rglob("*.png"))))
    with Image.open(png) as img:
        v = np.asarray(img.convert("L").resize((p["image_size"],) * 2, Image.Resampling.LANCZOS), dtype=np.float64)
    v = 255.0 - v if p["invert"] else v
    by_hand = torch.from_numpy((v / 255.0 - p["mean"][0]) / p["std"][0]).float()[None, None]
    pre = rebuilt["protonet"].preprocessing
    assert torch.equal(by_hand, pre.to_input(pre.image_pixels(png)[None]))


def test_metasgd_rates_travel_with_the_state_dict_only(synthetic_data_root, tmp_path):
    run_dir = train(synthetic_data_root, tmp_path / "metasgd", "--algo", "metasgd", "--iterations", "2")
    saved_out, traced_out = tmp_path / "m.pt", tmp_path / "m.ts"
    exported(run_dir, saved_out, "state-dict")
    note = " ".join(exported(run_dir, traced_out, "torchscript")["notes"])
    assert "learned per-parameter learning rates" in note and "--format state-dict" in note
    saved = torch.load(saved_out, weights_only=True)
    x, _ = Experiment.from_run(run_dir, "best", device="cpu")
    rates = x.learner.state_dict()["lr"]
    assert saved["learner"]["lr"].keys() == rates.keys()
    assert all(torch.equal(saved["learner"]["lr"][k], v) for k, v in rates.items())


def test_feature_vector_run_exports_an_mlp_over_d_numbers(tmp_path):
    """`--dataset features` (float vectors, standardised per feature) with the mlp backbone."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(24), 6)
    vectors = (rng.normal(0.0, 3.0, (24, 5))[labels] + rng.normal(0.0, 1.0, (labels.size, 5))).astype(np.float32)
    np.savez(tmp_path / "vectors.npz", features=vectors, label=labels)
    run_dir = run("train", "--dataset", "features", "--data-root", tmp_path / "vectors.npz", "--out",
                  tmp_path / "run", "--algo", "protonet", "--backbone", "mlp", "--mlp-hidden", "16,4", "--ways", "3",
                  "--queries", "2", "--iterations", "2", "--val-every", "2", "--val-episodes", "2", "--device", "cpu",
                  "--quiet")
    assert run_dir.exit_code == 0, run_dir.output
    out = tmp_path / "exported" / "mlp.pt"
    sidecar = exported(tmp_path / "run", out, "torchscript")
    assert sidecar["input"]["shape"] == [5] and sidecar["output"]["size"] == 4
    assert sidecar["backbone"]["name"] == "mlp" and sidecar["backbone"]["mlp_hidden"] == "16,4"
    assert any("per feature" in step for step in sidecar["how_to_prepare_input"])
    x, _ = Experiment.from_run(tmp_path / "run", "best", device="cpu")
    split = x.load_split("test", progress=False)
    traced = torch.jit.load(str(out))
    for batch in BATCHES:
        inp = x.preprocessing.to_input(split.images[:batch])
        with torch.no_grad():
            assert (traced(inp) - x.model(inp)).abs().max().item() <= float32_tolerance(x.model, inp)


# ---------------------------------------------------------------------------------- the check
def frozen_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of `model` whose batch norms use fixed statistics, those of batch `x`: what a wrong
    export (running statistics baked in) would compute.  Same outputs on `x`, others elsewhere."""
    frozen, seen = copy.deepcopy(model), {}
    layers = {name: m for name, m in frozen.named_modules() if isinstance(m, TaskBatchNorm2d)}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, i[0])) for name, m in layers.items()]
    with torch.no_grad():
        frozen(x)
    for h in hooks:
        h.remove()
    for name, layer in layers.items():
        bn = nn.BatchNorm2d(layer.weight.numel(), eps=layer.eps).eval()
        with torch.no_grad():
            bn.weight.copy_(layer.weight), bn.bias.copy_(layer.bias)
            bn.running_mean.copy_(seen[name].mean(dim=(0, 2, 3)))
            bn.running_var.copy_(seen[name].var(dim=(0, 2, 3), unbiased=False))
        frozen.set_submodule(name, bn)
    return frozen


def test_an_export_that_fixes_the_batch_statistics_is_refused(runs, rebuilt, tmp_path, monkeypatch):
    x = rebuilt["maml"]
    example = inputs(x, TRACE_BATCH)
    with torch.no_grad():  # the faulty copy agrees on its own batch: only other sizes reveal it
        assert (frozen_statistics(x.model, example)(example) - x.model(example)).abs().max() <= \
            float32_tolerance(x.model, example)
    real = export_module._torchscript_bytes
    monkeypatch.setattr(export_module, "_torchscript_bytes",
                        lambda model, ex: real(frozen_statistics(model, ex), ex))
    out = tmp_path / "model.pt"
    refused(export(runs["maml"], out, "torchscript"), "does not compute what the run's model computes", "nothing")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- refusals
def test_unknown_format_writes_nothing(runs, tmp_path):
    refused(export(runs["maml"], tmp_path / "m.pt", "tflite"), "--format 'tflite'", "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_overwrite(runs, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    refused(export(runs["protonet"], out, "torchscript"), str(out), "--overwrite")
    assert out.read_bytes() == b"keep me" and not sidecar_path(out).exists()
    assert export(runs["protonet"], out, "torchscript", "--overwrite").exit_code == 0
    assert torch.jit.load(str(out)) is not None and sidecar_path(out).is_file()


@pytest.mark.parametrize("target", ["config.json", "checkpoints/best.pt", "model.pt"])
def test_out_inside_the_run_is_refused_even_with_overwrite(runs, target):
    run_dir = runs["protonet"]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused(export(run_dir, run_dir / target, "torchscript", "--overwrite"),
            f"is inside the run directory {run_dir.resolve()}")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_existing_sidecar_needs_overwrite(runs, tmp_path):
    out = tmp_path / "m.pt"
    sidecar_path(out).write_text("{}")
    refused(export(runs["protonet"], out, "state-dict"), str(sidecar_path(out)), "--overwrite")
    assert not out.exists() and sidecar_path(out).read_text() == "{}"


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_onnx_without_its_package_writes_nothing(runs, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnx` raises ImportError
    refused(export(runs["maml"], tmp_path / "m.onnx", "onnx"), missing, "pip install 'l2l_app[onnx]'")
    assert list(tmp_path.iterdir()) == []


def test_missing_run_and_checkpoint(runs, tmp_path):
    out = tmp_path / "out" / "m.pt"
    refused(export(tmp_path / "nowhere", out, "torchscript"), "nowhere does not exist")
    copy_dir = tmp_path / "run"
    shutil.copytree(runs["maml"], copy_dir)
    (copy_dir / "checkpoints" / "last.pt").unlink()
    refused(export(copy_dir, out, "state-dict", "--checkpoint", "last"), "last.pt", "not found")
    refused(export(copy_dir, tmp_path, "state-dict"), "is a folder")
    refused(export(copy_dir, copy_dir / "config.json" / "m.pt", "state-dict"), "is a file, not a folder")
    assert not (tmp_path / "out").exists()


def test_state_dict_file_is_plain_tensors(runs, tmp_path):
    """weights_only loading refuses anything but tensors and containers: the metadata inside is plain too."""
    out = tmp_path / "m.pt"
    exported(runs["maml"], out, "state-dict")
    saved = torch.load(io.BytesIO(out.read_bytes()), weights_only=True)
    assert saved["metadata"]["checkpoint"] == json.loads(sidecar_path(out).read_text())["checkpoint"]


def test_a_failing_exporter_is_one_line_and_writes_nothing(runs, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tracer exploded\nwith a second line")
    monkeypatch.setattr(torch.jit, "trace", broken)
    refused(export(runs["protonet"], tmp_path / "m.pt", "torchscript"), "could not export", "tracer exploded")
    assert list(tmp_path.iterdir()) == []
