"""Dataset pickles load with every protocol Python writes, and nothing else runs."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from l2l_app.data import safe_pickle
from l2l_app.errors import DataError


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_and_containers_load_with_every_protocol(protocol):
    data = {"image_data": np.arange(48, dtype=np.uint8).reshape(2, 2, 4, 3), "class_dict": {"n01": [0, 1]},
            "raw": b"\x00\xffbytes", "names": ["a", "b"]}
    out = safe_pickle.load(io.BytesIO(pickle.dumps(data, protocol=protocol)), "test.pkl", encoding="latin1")
    assert np.array_equal(out["image_data"], data["image_data"]) and out["image_data"].dtype == np.uint8
    assert out["class_dict"] == data["class_dict"] and out["raw"] == data["raw"] and out["names"] == data["names"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_calls_a_function_is_refused_in_one_line():
    with pytest.raises(DataError, match=r"cannot read evil.pkl: refused to load (posix|os)\.system") as e:
        safe_pickle.load(io.BytesIO(pickle.dumps({"x": _Exploit()})), "evil.pkl")
    assert "\n" not in str(e.value)
