"""Checkpoints are written atomically and loaded safely."""
import os
import pickle

import pytest
import torch

from l2l_app.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from l2l_app.errors import CheckpointError


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.randn(3)}, "step": 7, "rng": [3, [1, 2], None]}
    save_checkpoint(state, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_failed_write_keeps_previous(tmp_path):
    save_checkpoint({"step": 1}, tmp_path / "last.pt")

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "last.pt", crash)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_is_reported(tmp_path, monkeypatch):
    save_checkpoint({"step": 1}, tmp_path / "last.pt")

    def full(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device"):
        atomic_write(tmp_path / "last.pt", full)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1


def test_truncated_checkpoint_names_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.randn(100)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.pt is truncated or corrupted") as info:
        load_checkpoint(path)
    # a resume cannot use best.pt instead: the fix says what can
    assert str(info.value).endswith("restore it from a copy of the run (a resume needs it; eval, predict and export "
                                    "can use --checkpoint best)")


@pytest.mark.parametrize("seed", range(20))
def test_garbage_checkpoint(tmp_path, seed):
    """Random bytes fail the unpickler in many ways (IndexError, KeyError, ...): all become one error."""
    import random
    path = tmp_path / "best.pt"
    path.write_bytes(random.Random(seed).randbytes(256))
    with pytest.raises(CheckpointError, match="best.pt is truncated or corrupted.*; pass --checkpoint last, or "
                                              "restore it from a copy of the run$"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (MARKER,))


MARKER = ""


def test_pickled_code_is_refused_not_executed(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "executed")
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pt"):
        load_checkpoint(path)
    assert not os.path.exists(MARKER)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
