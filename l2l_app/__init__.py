"""l2l_app: few-shot image classification (ProtoNet, MAML, Reptile) on learn2learn."""
from __future__ import annotations

import contextlib
import io
import warnings

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
