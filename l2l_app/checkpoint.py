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
from typing import Any, Dict

import torch

from .errors import CheckpointError
from .fileio import atomic_write


def save_checkpoint(state: Dict[str, Any], path: Path) -> None:
    atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a checkpoint safely; a missing, truncated, corrupted or code-carrying file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; is that the run directory you meant?")
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
                              f"use the other checkpoint in the run directory or retrain") from None
    except Exception as exc:  # noqa: BLE001 - random bytes make the unpickler fail in any way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({first[:120]}); "
                              f"use the other checkpoint in the run directory or retrain") from None


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
