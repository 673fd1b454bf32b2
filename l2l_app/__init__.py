"""l2l_app: few-shot image classification (ProtoNet, MAML, Reptile) on learn2learn.

The Python API (`l2l_app.api`): `train`, `load`, `Run` (`.evaluate`, `.predict`), `Predictions`
(= `PredictionResult`).  They are imported on first use (PEP 562), so importing one module of the
package does not pull in the whole library.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from typing import Any, List

__version__ = "0.1.0"


def _import_gym_quietly() -> None:
    """`import learn2learn` imports gym 0.26, which prints an 'unmaintained' notice to stderr.

    Import it once here with that notice swallowed, so our one-line errors stay one line.
    """
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import gym  # noqa: F401
    except ImportError:
        pass


_import_gym_quietly()


#: the public API, loaded from `l2l_app.api` on first access (PEP 562)
__all__: List[str] = ["PredictionResult", "Predictions", "Run", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(list(globals()) + __all__)
