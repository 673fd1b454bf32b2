"""Shared fixtures: a synthetic Omniglot-layout dataset, a tiny in-memory split, the real data paths.

Every test session uses its own cache folder for data roots that cannot hold one
(`L2L_APP_CACHE_DIR` is pointed at a session temporary folder), so tests never write to $HOME.
"""
from __future__ import annotations

import random
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

from l2l_app.data import SplitData

REPO = Path(__file__).resolve().parent.parent
MINIIMAGENET_SAMPLE = REPO.parent / "shared" / "data" / "miniimagenet-sample"

# Synthetic Omniglot: alphabet -> (archive, number of characters).  Each character has 20 drawings.
SYNTH_ALPHABETS = {"Alpha": ("images_background", 3), "Beta_(Two)": ("images_background", 3),
                   "Gamma": ("images_evaluation", 3)}
SYNTH_SPLITS = {
    "train": [f"Alpha/character{c:02d}" for c in (1, 2, 3)] + ["Beta_(Two)/character01"],
    "val": ["Beta_(Two)/character02", "Beta_(Two)/character03"],
    "test": [f"Gamma/character{c:02d}" for c in (1, 2, 3)],
}
SYNTH_DRAWINGS = 20


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """Route fallback caches (read-only data roots) to a session temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L2L_APP_CACHE_DIR", str(tmp_path_factory.mktemp("l2l_app_cache")))
        yield


def _random_strokes_png(rng: random.Random) -> bytes:
    """A 105x105 1-bit PNG: white background, a few black strokes (Omniglot's polarity)."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        pts = [(rng.randint(5, 99), rng.randint(5, 99)) for _ in range(rng.randint(2, 4))]
        draw.line(pts, fill=0, width=rng.randint(2, 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class SyntheticOmniglot:
    """Paths of a generated dataset: `zip_root` (two zips), `folder_root` (extracted), `split_dir`."""

    zip_root: Path
    folder_root: Path
    split_dir: Path
    splits: Dict[str, List[str]]  # split -> class names (with /rotDDD)


def write_synthetic_omniglot(base: Path, seed: int = 0) -> SyntheticOmniglot:
    """Generate the synthetic dataset under `base` in both layouts, plus split files."""
    rng = random.Random(seed)
    zip_root, folder_root, split_dir = base / "zips", base / "folders", base / "splits"
    for d in (zip_root, folder_root, split_dir):
        d.mkdir(parents=True, exist_ok=True)
    members: Dict[str, Dict[str, bytes]] = {"images_background": {}, "images_evaluation": {}}
    for ai, (alphabet, (archive, n_chars)) in enumerate(SYNTH_ALPHABETS.items()):
        for c in range(1, n_chars + 1):
            for k in range(1, SYNTH_DRAWINGS + 1):
                name = f"{archive}/{alphabet}/character{c:02d}/{ai * 100 + c:04d}_{k:02d}.png"
                members[archive][name] = _random_strokes_png(rng)
    for archive, files in members.items():
        with zipfile.ZipFile(zip_root / f"{archive}.zip", "w") as zf:
            for name, data in sorted(files.items()):
                zf.writestr(name, data)
        for name, data in files.items():
            p = folder_root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    splits = {}
    for split, chars in SYNTH_SPLITS.items():
        names = [f"{ch}/rot{r:03d}" for ch in chars for r in (0, 90, 180, 270)]
        (split_dir / f"{split}.txt").write_text("\n".join(names) + "\n")
        splits[split] = names
    return SyntheticOmniglot(zip_root, folder_root, split_dir, splits)


@pytest.fixture(scope="session")
def synthetic_omniglot_pristine(tmp_path_factory) -> SyntheticOmniglot:
    """Generated once per session; copy it (see `synthetic_omniglot`) before writing to it."""
    return write_synthetic_omniglot(tmp_path_factory.mktemp("synthetic_omniglot"))


@pytest.fixture
def synthetic_omniglot(synthetic_omniglot_pristine, tmp_path) -> SyntheticOmniglot:
    """A private copy of the synthetic Omniglot (zips, folders, split files) in this test's tmp_path."""
    src = synthetic_omniglot_pristine
    base = tmp_path / "omniglot"
    shutil.copytree(src.zip_root.parent, base)
    return SyntheticOmniglot(base / "zips", base / "folders", base / "splits", dict(src.splits))


def make_tiny_split(num_classes: int = 12, per_class: int = 10, channels: int = 1, size: int = 28,
                    seed: int = 0, counts: List[int] | None = None) -> SplitData:
    """Random uint8 images, `per_class` per class (or `counts[c]` for class c), labels grouped."""
    g = torch.Generator().manual_seed(seed)
    counts = counts or [per_class] * num_classes
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    images = torch.randint(0, 256, (int(labels.numel()), channels, size, size), dtype=torch.uint8, generator=g)
    return SplitData(images, labels, [f"class{c:03d}" for c in range(len(counts))], "tiny", "train")


@pytest.fixture
def tiny_split() -> SplitData:
    """12 classes x 10 random uint8 images of 1x28x28."""
    return make_tiny_split()


@pytest.fixture
def tiny_split_factory() -> Callable[..., SplitData]:
    """`make_tiny_split(num_classes, per_class, channels, size, seed, counts)`."""
    return make_tiny_split


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """The bundled Omniglot (two zips)."""
    root = REPO / "data" / "omniglot"
    if not (root / "images_background.zip").is_file():
        pytest.skip(f"bundled Omniglot not found at {root}")
    return root


@pytest.fixture(scope="session")
def miniimagenet_sample() -> Path:
    """The shared mini-ImageNet sample (20 images per class); skips when absent."""
    if not (MINIIMAGENET_SAMPLE / "images").is_dir():
        pytest.skip(f"mini-ImageNet sample not found at {MINIIMAGENET_SAMPLE}")
    return MINIIMAGENET_SAMPLE


def with_own_split_files(dataset: SyntheticOmniglot, root: Path) -> Path:
    """Copy the synthetic split files into `root` (the data root's own train/val/test.txt) and return it."""
    for f in dataset.split_dir.glob("*.txt"):
        shutil.copy(f, root / f.name)
    return root


@pytest.fixture(scope="session")
def synthetic_data_root(synthetic_omniglot_pristine, tmp_path_factory) -> Path:
    """A shared (do not modify) synthetic Omniglot folder root carrying its own split files, so
    `l2l-app train --data-root` runs on it in a second or two (train: 16 classes, val: 8, test: 12)."""
    root = tmp_path_factory.mktemp("synthetic_data_root") / "omniglot"
    shutil.copytree(synthetic_omniglot_pristine.folder_root, root)
    return with_own_split_files(synthetic_omniglot_pristine, root)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: on a small shared CPU, tiny convolutions run
    3-5x faster than with two.  Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_episodes(ways: int, shots: int, queries: int, tasks: int, size: int,
                    dtype: torch.dtype = torch.float64, seed: int = 0):
    """An EpisodeBatch of random 1-channel images with shuffled class order per task."""
    from l2l_app.data.types import EpisodeBatch
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, size, size, generator=g).to(dtype)
    qx = torch.rand(tasks, ways * queries, 1, size, size, generator=g).to(dtype)
    sy = torch.stack([torch.randperm(ways, generator=g).repeat_interleave(shots) for _ in range(tasks)])
    qy = torch.stack([torch.randperm(ways, generator=g).repeat_interleave(queries) for _ in range(tasks)])
    return EpisodeBatch(sx, sy, qx, qy, ways, shots, queries)


def corrupt_zip_member(zpath: Path, folder: str, index: int) -> str:
    """Rewrite `zpath` with its `index`-th (sorted) member under `folder` replaced by garbage; its name."""
    with zipfile.ZipFile(zpath) as zf:
        items = [(n, zf.read(n)) for n in zf.namelist()]
    bad = sorted(n for n, _ in items if folder in n)[index]
    with zipfile.ZipFile(zpath, "w") as zf:
        for n, data in items:
            zf.writestr(n, b"garbage" if n == bad else data)
    return bad


def cli_run(*args):
    """`l2l-app ARGS` in-process (click's CliRunner); every argument passed as text."""
    from click.testing import CliRunner

    from l2l_app.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, *fragments) -> str:
    """Assert a one-line `error: ...` with exit code 2 that contains every fragment; the message."""
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    for fragment in fragments:
        assert fragment in err, err
    return err
