"""Reading the pickle files some datasets ship in (CIFAR-100 python, learn2learn's mini-ImageNet
cache) without running arbitrary code: only plain containers and NumPy arrays may be rebuilt.

A pickle can call any importable function while loading; these files need only dicts, lists,
strings, numbers and NumPy arrays, so every other global is refused with a DataError naming the file.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Union

from l2l_app.errors import DataError

#: (module, name) pairs a dataset pickle may reference: NumPy's array reconstruction (numpy 1 and 2)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # protocol 5 (Python 3.14's default) rebuilds arrays from a buffer
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    # protocol 2 pickles written by Python 3 store bytes as _codecs.encode(text, 'latin1')
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (only arrays and containers are allowed)")


def load(source: Union[Path, BinaryIO], where: str, encoding: str = "bytes") -> Any:
    """Unpickle `source` (a path or a binary file) allowing only containers and NumPy arrays.

    `encoding`: how Python 2 str objects are read ('bytes' for CIFAR-100's files, 'latin1' also works).
    Raises DataError naming `where` when the file is not such a pickle.
    """
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return _RestrictedUnpickler(io.BufferedReader(f), encoding=encoding).load()
        return _RestrictedUnpickler(source, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            OSError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"cannot read {where}: {reason}; it is not the expected dataset pickle, re-extract or "
                        "re-download it") from None
