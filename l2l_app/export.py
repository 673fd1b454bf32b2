"""`l2l-app export`: a trained run's network as a file that is used without l2l_app.

What is exported is the run's model (`Experiment.from_run`, rebuilt on the CPU from a
checkpoint): ProtoNet's embedding network, or for the algorithms with an output layer (MAML,
FOMAML, Reptile, ANIL, Meta-SGD) the meta-learned initialisation, backbone plus the N-way head.

Formats (`FORMATS`):

* ``state-dict``: `torch.save` of ``{"model": model.state_dict(), "learner": learner.state_dict(),
  "metadata": {...}}``, plain tensors and containers, loadable with
  ``torch.load(path, weights_only=True)``.  "learner" is the whole learner state ("model" again,
  stored once, plus e.g. Meta-SGD's learned per-parameter rates under "lr").
* ``torchscript``: `torch.jit.trace` of the model on a batch of `TRACE_BATCH` inputs; load with
  ``torch.jit.load(path)``.
* ``onnx``: `torch.onnx.export` (the torch.export-based exporter), input "input" and output
  "output" with a dynamic batch axis.  Needs the optional packages onnx and onnxscript
  (``pip install 'l2l_app[onnx]'``).

Batch norm uses the statistics of the batch it is given (`l2l_app.backbones.TaskBatchNorm2d`: no
running statistics), so the exported graph computes them from its input too: one image's output
depends on the images beside it, and a task's images go through in one batch, as the run
evaluated.  Before anything is written, each export is loaded back and compared with the model
on batches of other sizes than the one it was traced with (`CHECK_BATCHES`): exactly for the
state dict, within float32 rounding (`float32_tolerance`) for TorchScript and, when onnxruntime
is installed, ONNX.

Beside FILE a JSON sidecar ``FILE.json`` (the full file name plus ".json", so ``model.pt`` and
``model.onnx`` exported side by side do not collide) says what the file holds and how to use
it: formats and versions, algorithm, backbone, input shape and preprocessing (in numbers and in
words), output, the adaptation settings the run evaluates with, episode shapes, the checkpoint
(step, SHA-256) and the run directory.  Meta-SGD's learned learning rates are part of the
learner state: the state-dict export holds them; TorchScript and ONNX hold the network only and
the sidecar says so.

Both files are written atomically, and only after every check passed: a refused export (unknown
format, existing FILE without --overwrite, missing onnx, missing run or checkpoint) writes nothing.
"""
from __future__ import annotations

import copy
import importlib
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import __version__
from .data.preprocess import Preprocessing
from .data.types import VECTORS
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write, nearest_existing, write_json
from .rundir import check_outside

if TYPE_CHECKING:  # the experiment imports the algorithms; only `export_run` needs it
    from .experiment import Experiment

FORMATS: Tuple[str, ...] = ("state-dict", "torchscript", "onnx")
#: the packages `--format onnx` needs (the torch.export-based exporter uses onnxscript)
ONNX_PACKAGES: Tuple[str, ...] = ("onnx", "onnxscript")
ONNX_INSTALL = "pip install 'l2l_app[onnx]'"
#: the sidecar of FILE is FILE + SIDECAR_SUFFIX
SIDECAR_SUFFIX = ".json"
#: inputs in the batch the TorchScript / ONNX graph is traced with
TRACE_BATCH = 5
#: batch sizes (other than TRACE_BATCH) on which an export is compared with the model
CHECK_BATCHES: Tuple[int, ...] = (1, 8)
ONNX_INPUT, ONNX_OUTPUT = "input", "output"
#: float32 machine epsilon
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)

Forward = Callable[[torch.Tensor], torch.Tensor]


def sidecar_path(out: Path) -> Path:
    """The JSON sidecar of export file `out`: `out` + '.json' (model.pt -> model.pt.json)."""
    out = Path(out)
    return out.with_name(out.name + SIDECAR_SUFFIX)


# ------------------------------------------------------------------------------ validation
def missing_onnx_packages() -> List[str]:
    """The packages of ONNX_PACKAGES that cannot be imported."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def check_request(out: Path, fmt: str, checkpoint: str, overwrite: bool, run_dir: Optional[Path] = None) -> None:
    """Refuse (one-line ConfigError) what can be refused before the run is read: an unknown
    format or checkpoint, an --out that is a folder, lies under a file or inside the run directory
    `run_dir`, or exists (with its sidecar) without `overwrite`, and --format onnx without its
    packages.  Missing folders of --out are created when writing, as every --out is."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint {checkpoint!r} must be best or last")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, e.g. --out {out / 'model.pt'}")
    blocking = nearest_existing(out.parent)
    if not blocking.is_dir():
        raise ConfigError(f"--out {out}: {blocking} is a file, not a folder; choose another --out")
    if run_dir is not None:
        check_outside(out, run_dir, "--out", "the run directory")
    if not overwrite:
        existing = [str(p) for p in (out, sidecar_path(out)) if p.exists()]
        if existing:
            raise ConfigError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              f"pass --overwrite to replace, or choose another --out")
    if fmt == "onnx":
        missing = missing_onnx_packages()
        if missing:
            raise ConfigError(f"--format onnx needs the optional package{'s' if len(missing) > 1 else ''} "
                              f"{' and '.join(missing)}; install with {ONNX_INSTALL}")


# ------------------------------------------------------------------------------ numbers
def example_inputs(pre: Preprocessing, batch: int, seed: int = 0) -> torch.Tensor:
    """float32 model input [batch, *pre.input_shape]: random raw items (uint8 pixels, or
    standard-normal feature vectors) prepared like the run's data (`Preprocessing.to_input`)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *pre.input_shape)
    if pre.kind == VECTORS:
        raw = torch.randn(shape, generator=g)
    else:
        raw = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    return pre.to_input(raw)


def float32_tolerance(model: nn.Module, x: torch.Tensor) -> float:
    """How far two float32 evaluations of `model` on `x` [N, ...] may differ in any output.

    Each evaluation (eager, TorchScript, ONNX Runtime; other kernels sum in other orders) differs
    from the exact result by its rounding error.  The exact result is approximated in float64;
    the eager float32 model's largest error E against it is measured, each evaluation is allowed
    2E, so two differ by at most 4E; plus 8 ulps of the largest output for outputs whose measured
    error happens to be ~0.
    """
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double())
        error = (model(x).double() - exact).abs().max().item()
    return 4.0 * error + 8.0 * FLOAT32_EPS * exact.abs().max().item()


def _outputs(forward: Forward, x: torch.Tensor, failures: Tuple[type, ...] = (ValueError,)) -> Optional[torch.Tensor]:
    """forward(x), or None when it raises one of `failures` (the model: ValueError, a batch too
    small for batch norm, a single value per channel; a loaded export: any error)."""
    try:
        with torch.no_grad():
            return forward(x)
    except failures:
        return None


# ------------------------------------------------------------------------------ formats
def _state_dict_bytes(x: "Experiment", metadata: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": x.model.state_dict(), "learner": x.learner.state_dict(), "metadata": metadata}, buf)
    return buf.getvalue()


def _torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The traced model.  The tracer's warnings (deprecation; the batch-norm size check it
    records as a constant) are silenced: the batch sizes are checked on the loaded file."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (example,)), buf)
    return buf.getvalue()


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as one self-contained ONNX file, its batch axis dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, external_data=False,
                                    input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto.SerializeToString()


def _loaded(fmt: str, data: bytes, x: "Experiment") -> Tuple[Optional[Forward], str]:
    """The exported file loaded back as a function input -> output, and what ran it
    (None and why, for ONNX without onnxruntime)."""
    if fmt == "state-dict":
        from .experiment import build_model
        saved = torch.load(io.BytesIO(data), weights_only=True)
        fresh = build_model(x.config, x.preprocessing.input_shape)
        fresh.load_state_dict(saved["model"])
        return fresh.eval(), "a freshly built model with the saved state dict"
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(io.BytesIO(data)), "torch.jit.load"
    try:
        import onnxruntime
    except ImportError:
        return None, "not checked: onnxruntime is not installed"
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: inp.numpy()})[0])

    return run, f"onnxruntime {onnxruntime.__version__}"


def check_export(fmt: str, data: bytes, x: "Experiment") -> Dict[str, Any]:
    """Load the exported `data` back and compare it with the model on CHECK_BATCHES batches:
    exactly for the state dict, within `float32_tolerance` otherwise.  A difference raises
    CheckpointError (nothing is written).  Returns what was checked, for the sidecar."""
    run, runtime = _loaded(fmt, data, x)
    if run is None:
        return {"checked": False, "runtime": runtime}
    sizes, worst, bound = [], 0.0, 0.0
    for batch in CHECK_BATCHES:
        inp = example_inputs(x.preprocessing, batch, seed=batch)
        want = _outputs(x.model, inp)
        if want is None:
            continue
        got = _outputs(run, inp, (Exception,))
        tolerance = 0.0 if fmt == "state-dict" else float32_tolerance(x.model, inp)
        diff = float("inf") if got is None or got.shape != want.shape else (got - want).abs().max().item()
        if not diff <= tolerance:
            raise CheckpointError(f"the {fmt} export does not compute what the run's model computes on a batch of "
                                  f"{batch} (largest difference {diff:.3g}, allowed {tolerance:.3g}); nothing was "
                                  f"written; export --format state-dict instead and report this")
        sizes.append(batch)
        worst, bound = max(worst, diff), max(bound, tolerance)
    return {"checked": True, "runtime": runtime, "batch_sizes": sizes, "max_abs_diff": worst, "tolerance": bound}


# ------------------------------------------------------------------------------ the sidecar
def input_steps(pre: Preprocessing) -> List[str]:
    """How to turn raw data into the network's input, in plain words, one step a line."""
    if pre.kind == VECTORS:
        steps = [f"a vector of {pre.channels} numbers per item, as float32"]
    else:
        colour = "grey (PIL mode L)" if pre.channels == 1 else "RGB (PIL mode RGB)"
        resize = ("squash to the square" if pre.resize == "stretch"
                  else "scale the shorter side to the size, then keep the centre square")
        steps = ["turn the image upright by its EXIF orientation tag, if it has one (PIL: ImageOps.exif_transpose)",
                 f"decode the image to {colour}, compositing any transparency over a white background",
                 f"resize to {pre.image_size}x{pre.image_size} ({pre.resize}: {resize}; Lanczos)"]
        if pre.invert:
            steps.append("invert the pixels: v -> 255 - v (the run's data was stored inverted)")
        steps.append("divide the uint8 pixels by 255: x = v / 255")
    if pre.normalised:
        per, i = ("per feature d", "d") if pre.kind == VECTORS else ("per channel c", "c")
        steps.append(f"standardise {per}: x = (x - mean[{i}]) / std[{i}], with the train split's mean = {list(pre.mean)} "
                     f"and std = {list(pre.std)} (also under 'preprocessing')")
    shape = "N, D" if pre.kind == VECTORS else "N, C, H, W"
    steps.append(f"stack as float32 [{shape}] = [N, {', '.join(map(str, pre.input_shape))}]")
    return steps


def output_info(x: "Experiment", size: int) -> Dict[str, Any]:
    """What the network outputs and how a task is classified with it."""
    protocol = x.config.algorithm.protocol()
    if not x.config.spec.head:
        return {"kind": "embedding", "size": size, "shape": ["N", size],
                "use": "embed a task's support and query images together, in one batch; each class's prototype is "
                       "the mean of its support embeddings; a query's logits are minus its squared Euclidean "
                       "distances to the prototypes (any number of classes)"}
    steps = protocol.get("test_inner_steps")
    lr = "the learned per-parameter rates" if protocol.get("inner_lr_learned") else f"lr {protocol.get('inner_lr')}"
    adapted = protocol.get("adapted", "all parameters")
    return {"kind": "logits", "size": size, "shape": ["N", size],
            "use": f"a meta-learned initialisation, not a classifier of fixed classes: for a task of {size} classes "
                   f"(labels 0..{size - 1}), take {steps} SGD step(s) with {lr} on the cross-entropy of the support "
                   f"set ({adapted}), then the argmax of the adapted network's query logits"}


def export_metadata(x: "Experiment", info: Dict[str, Any], fmt: str, out: Path, run_dir: Path,
                    output_size: int) -> Dict[str, Any]:
    """The sidecar's content (without the check): everything needed to use the exported file."""
    c, pre = x.config, x.preprocessing
    protocol = c.algorithm.protocol()
    notes = [f"batch norm normalises with the statistics of the batch it is given (no running statistics; the run "
             f"evaluated with {protocol['batchnorm']}): put a task's images through together, in one batch; an "
             f"image alone gets other numbers"]
    if protocol.get("inner_lr_learned"):
        notes.append("adaptation needs the learned per-parameter learning rates: "
                     + ("they are in this file's learner state, under 'lr'" if fmt == "state-dict" else
                        "this file holds the network only; export --format state-dict for the rates "
                        "(its 'learner' entry, under 'lr')"))
    return {
        "format": fmt,
        "file": Path(out).name,
        "l2l_app_version": __version__,
        "torch_version": str(torch.__version__),  # a str subclass torch.load(weights_only) refuses
        "algorithm": c.algo_label,
        "backbone": {"name": c.model.backbone, "hidden": c.model.hidden,
                     **{k: v for k, v in asdict(c.model).items() if k not in ("backbone", "hidden") and v is not None}},
        "input": {"shape": list(pre.input_shape), "dtype": "float32", "layout": ["N", *pre.input_shape],
                  **({"onnx_input": ONNX_INPUT, "onnx_output": ONNX_OUTPUT} if fmt == "onnx" else {})},
        "output": output_info(x, output_size),
        "preprocessing": pre.to_dict(),
        "how_to_prepare_input": input_steps(pre),
        "adaptation": protocol,
        "episodes": {"ways": c.task.ways, "shots": c.task.shots, "queries": c.task.queries,
                     "train_ways": c.train_ways, "train_shots": c.train_shots, "train_queries": c.train_queries},
        "checkpoint": {"name": info["checkpoint"], "step": info["step"], "sha256": info["checkpoint_sha256"]},
        "run_dir": str(Path(run_dir).resolve()),
        "notes": notes,
    }


# ------------------------------------------------------------------------------ export
@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    metadata: Dict[str, Any]

    def describe(self) -> str:
        m = self.metadata
        out = m["output"]
        return (f"exported {m['algorithm']} ({m['backbone']['name']}, {out['kind']} of {out['size']}) from "
                f"{m['run_dir']} step {m['checkpoint']['step']} ({m['checkpoint']['name']} checkpoint) as "
                f"{m['format']} to {self.path}; how to use it: {self.sidecar}")


def export_run(run_dir: Path, out: Path, fmt: str = "torchscript", checkpoint: str = "best",
               overwrite: bool = False) -> ExportResult:
    """Export the network of the run in `run_dir` (its `checkpoint`) to `out` in format `fmt`,
    with its sidecar `sidecar_path(out)`.  Everything is validated, exported in memory and
    checked (`check_export`) before the two files are written atomically.  One-line errors
    (ConfigError / CheckpointError) for every refusal; a refused export writes nothing."""
    from .experiment import Experiment

    out, run_dir = Path(out), Path(run_dir)
    check_request(out, fmt, checkpoint, overwrite, run_dir)
    x, info = Experiment.from_run(run_dir, checkpoint, device="cpu")
    model = x.model.eval()
    example = example_inputs(x.preprocessing, TRACE_BATCH)
    with torch.no_grad():
        output_size = int(model(example).shape[-1])
    metadata = export_metadata(x, info, fmt, out, run_dir, output_size)
    try:
        if fmt == "state-dict":
            data = _state_dict_bytes(x, metadata)
        elif fmt == "torchscript":
            data = _torchscript_bytes(model, example)
        else:
            data = _onnx_bytes(model, example)
    except Exception as exc:  # noqa: BLE001 - the tracers and exporters fail in many ways; one line here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        fix = "report this" if fmt == "state-dict" else "try --format state-dict"
        raise CheckpointError(f"could not export the model as {fmt} ({type(exc).__name__}: {first[:200]}); "
                              f"nothing was written; {fix}") from None
    sidecar = {**metadata, "check": check_export(fmt, data, x)}
    _write_pair(out, data, sidecar)
    return ExportResult(out, sidecar_path(out), sidecar)


def _write_pair(out: Path, data: bytes, sidecar: Dict[str, Any]) -> None:
    """Write the export and then its sidecar, each atomically; if the sidecar cannot be written,
    a newly created export file is removed again."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the folder of --out {out}: {exc.strerror or exc}; "
                              f"choose another --out") from None
    existed = out.exists()
    atomic_write(out, lambda f: f.write(data))
    try:
        write_json(sidecar_path(out), sidecar)
    except BaseException:
        if not existed:
            out.unlink(missing_ok=True)
        raise


__all__ = ["FORMATS", "ExportResult", "export_run", "check_export", "check_request", "example_inputs",
           "float32_tolerance", "input_steps", "missing_onnx_packages", "sidecar_path"]
