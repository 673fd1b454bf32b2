"""Decoding many image files: threads and worker processes give what one thread gives, in order."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from l2l_app.data import images
from l2l_app.errors import DataError


def write_images(folder, n: int = 24):
    """n small JPEG/PNG files of different sizes and modes, one corrupt file in the middle."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i:03d}.{'png' if i % 3 else 'jpg'}"
        arr = rng.integers(0, 256, (20 + i, 30 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").convert("L" if i % 4 == 0 else "RGB").save(p)
        paths.append(p)
    bad = folder / "bad.png"
    bad.write_bytes(b"not an image")
    paths.insert(n // 2, bad)
    return paths, bad


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_parallel_decoding_equals_one_thread_in_order(tmp_path, monkeypatch, mode):
    paths, bad = write_images(tmp_path)
    reference = images.decode_files(paths, "RGB", 16, "crop", images.BadImages(True), workers=1)
    if mode == "processes":
        monkeypatch.setattr(images, "PROCESS_FROM_FILES", 2)
        monkeypatch.setattr(images, "PROCESS_CHUNK", 5)  # several chunks, one holding the corrupt file
    skipped = images.BadImages(True)
    got = images.decode_files(paths, "RGB", 16, "crop", skipped, workers=2)
    assert len(got) == len(reference) == len(paths)
    for a, b in zip(got, reference):
        assert (a is None and b is None) or np.array_equal(a, b)
    assert got[paths.index(bad)] is None and len(skipped.files) == 1 and str(bad) in skipped.files[0]
    with pytest.raises(DataError, match="cannot decode image .*bad.png"):
        images.decode_files(paths, "RGB", 16, "crop", images.BadImages(False), workers=2)
