"""Process-level concerns: seeding, device choice, RNG snapshots, environment capture."""
from __future__ import annotations

import importlib.util
import os
import platform
import random
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; validates explicit names."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but CUDA is not available here; use --device cpu")
    return device


def set_tf32(enabled: bool) -> None:
    """TF32 convolutions/matmuls on Ampere+ GPUs (off by default: it moves fp32 meta-gradients ~12%)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def gpu_compile_problem() -> Optional[str]:
    """Why torch.compile could not build GPU kernels here (None: nothing missing): they are Triton
    kernels, whose launchers Triton builds with a C compiler ($CC, else cc, gcc or clang)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if not os.environ.get("CC") and not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        return "no C compiler (cc, gcc or clang) on PATH for Triton"
    return None


def set_cudnn_benchmark(enabled: bool) -> None:
    """cuDNN's autotuner: time the algorithms for each new convolution shape, keep the fastest."""
    torch.backends.cudnn.benchmark = enabled


def rng_state() -> Dict[str, Any]:
    """Snapshot of every global RNG (Python, NumPy, torch CPU and CUDA)."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    # Plain ints, floats and tensors only, so checkpoints load with weights_only=True.
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    # a checkpoint loaded with map_location=cuda holds these byte tensors on the GPU: the setters need them on the CPU
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_python_state(state: Any) -> tuple:
    """random.getstate() round-trips through checkpoints as lists; make it tuples again."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def environment() -> Dict[str, Any]:
    """Versions, machine and git revision, stamped into run directories and benchmark results."""
    import learn2learn
    info: Dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "learn2learn": learn2learn.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": _git_revision(),
    }
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
