"""Checkpoints: atomic writes, safe loads.

A checkpoint is a plain dict of tensors and Python containers saved with
`torch.save`; it is written to a temporary file in the same folder, fsynced and
renamed over the old one, so a crash mid-write never leaves a truncated file.
It is loaded with `torch.load(weights_only=True)`: a file that carries pickled code
is refused, never executed.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_write


def save_checkpoint(state: Dict[str, Any], path: Path) -> None:
    atomic_write(Path(path), lambda f: torch.save(state, f))


#: what every checkpoint `l2l-app train` writes holds (the learner's state: under "learner", or
#: "model" in older checkpoints; `learner_state`)
REQUIRED_KEYS = ("step",)
#: what `train --resume` reads from checkpoints/last.pt besides the learner's state
RESUME_KEYS = ("step", "elapsed", "optimizer", "scheduler", "rng", "sampler", "best_val", "best_step")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    required: Sequence[str] = REQUIRED_KEYS) -> Dict[str, Any]:
    """Load a checkpoint safely; a missing, truncated, corrupted or code-carrying file raises CheckpointError,
    and so does one that is not a dict holding the `required` keys (e.g. an exported state dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; is that the run directory you meant?")
    state = _load(path, map_location)
    check_checkpoint(state, path, required)
    return state


def check_checkpoint(state: Any, path: Path, required: Sequence[str] = REQUIRED_KEYS) -> None:
    """CheckpointError unless `state` is a dict holding every key of `required` (what `l2l-app train` writes)."""
    fix = f"{damaged_fix(path)} (an exported model cannot be trained or evaluated as a run)"
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an l2l-app checkpoint (it holds a {type(state).__name__}, not a "
                              f"training state); {fix}")
    missing = [key for key in required if key not in state]
    if missing:
        shown = ", ".join(repr(k) for k in missing)
        held = ", ".join(repr(k) for k in list(state)[:4]) or "nothing"
        raise CheckpointError(f"{path} is not an l2l-app checkpoint (no {shown}; it holds {held}); {fix}")


def damaged_fix(path: Path) -> str:
    """What to do about an unusable checkpoint file: a run's best.pt can be replaced by its last.pt
    for eval, predict and export; its last.pt by best.pt there too, but not for a resume."""
    name = Path(path).name
    if name == "best.pt":
        return "pass --checkpoint last, or restore it from a copy of the run"
    if name == "last.pt":
        return ("restore it from a copy of the run (a resume needs it; eval, predict and export can use "
                "--checkpoint best)")
    return "restore it from a copy, or use another checkpoint"


def _load(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load` with weights_only; its failures as one-line CheckpointErrors."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message opens with a generic paragraph; the line that matters names the global
        # (code or a class: refused) or the opcode it could not read (random or cut bytes).
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        code = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), None)
        if code is not None:
            raise CheckpointError(f"refusing to load {path}: it carries pickled code or objects that "
                                  f"are not plain tensors ({code[:120]}); only load checkpoints you trust "
                                  f"and re-save them as plain state dicts") from None
        detail = next((line for line in lines if "Unsupported operand" in line), lines[0] if lines else "")
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({detail[:120] or 'unreadable'}); "
                              f"{damaged_fix(path)}") from None
    except Exception as exc:  # noqa: BLE001 - random bytes make the unpickler fail in any way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({first[:120]}); "
                              f"{damaged_fix(path)}") from None


def learner_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """The learner's state (`MetaLearner.state_dict()`) from a training checkpoint.

    Checkpoints before the learner owned its state kept the model's weights beside it, under
    "model", and the learner's extra state (Reptile's generator) under "learner".
    """
    learner = dict(state.get("learner") or {})
    if "model" not in learner:
        if "model" not in state:
            raise CheckpointError("checkpoint holds no model weights (neither learner.model nor model); "
                                  "it was not written by l2l-app train")
        learner["model"] = state["model"]
    return learner


def _shape(value: Any) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def weights_mismatch(model: nn.Module, saved: Mapping[str, Any]) -> Optional[str]:
    """The first difference between `model`'s state dict and the `saved` one, briefly ('blocks.0.0.weight
    is 8x1x3x3 in the checkpoint but 16x1x3x3 in the model'), or None when names and shapes agree."""
    if not isinstance(saved, Mapping):
        return f"the weights are a {type(saved).__name__}, not a state dict"
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in saved:
            extra = [n for n in saved if n not in own]
            return (f"the model has {name}, which the checkpoint lacks"
                    + (f" (it holds {extra[0]} instead)" if extra else ""))
        if isinstance(saved[name], torch.Tensor) and saved[name].shape != tensor.shape:
            return f"{name} is {_shape(saved[name])} in the checkpoint but {_shape(tensor)} in the model"
    extra = [n for n in saved if n not in own]
    if extra:
        return f"the checkpoint has {extra[0]}, which the model lacks"
    return None


def load_learner(learner: Any, state: Dict[str, Any], path: Path) -> None:
    """Load a training checkpoint's learner state (`learner_state`) into `learner` (a `MetaLearner`).

    A checkpoint that does not fit the model the run's config.json describes (another --hidden,
    backbone or algorithm: config.json edited, or a checkpoint from another run) is one
    CheckpointError naming the first mismatching tensor and the fix, not torch's multi-line list.
    """
    try:
        wanted = learner_state(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    restore = "restore config.json (or the checkpoint) from a copy of the run"
    problem = weights_mismatch(learner.model, wanted["model"])
    if problem is not None:
        raise CheckpointError(f"{path} does not match the run's config.json: {problem}; {restore}")
    try:
        learner.load_state_dict(wanted)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[-1] if lines else type(exc).__name__)[:160]
        raise CheckpointError(f"{path} cannot be loaded ({detail}): the checkpoint does not fit the model the "
                              f"run's config.json describes; {restore}") from None
