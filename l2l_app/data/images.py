"""Reading raw image data, for any dataset: data roots, folders, zip archives and decoding.

* `resolve_root` checks a data root (or a dataset's bundled one) and says what is wrong;
* `walk` / `folder_fingerprint` list and fingerprint a folder tree (symlinks followed, loops caught);
* `ArchiveReader` reads members of a zip or an extracted folder;
* `decode` turns image bytes of any PIL mode (1-bit, grey, palette, RGB, RGBA, CMYK, 16-bit ...)
  into a uint8 array of the wanted mode (L or RGB), transparency composited over white, resized
  with RESIZE_FILTER when not already the target size;
* `decode_files` reads and decodes many files in parallel (threads, or processes for many files);
  `to_chw` stacks the arrays;
* `BadImages` and `decode_progress` serve the datasets' decoding loops.

A file that cannot be read or decoded raises DataError naming it.  Nothing is ever downloaded.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

from l2l_app.errors import DataError
from l2l_app.progress import Progress

if TYPE_CHECKING:
    import numpy as np
    import torch

    from l2l_app.data.types import Dataset, PathLike

#: PIL's resampling filter for resizing (part of the cache key)
RESIZE_FILTER = "LANCZOS"
#: what counts as an image file in a folder of images (compared lower-case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".webp", ".gif", ".tif", ".tiff")
#: mean per-pixel spread max(R, G, B) - min(R, G, B), of 255, above which an image shows colour
#: (grey photos saved as RGB JPEGs spread by a few levels from compression alone)
COLOUR_SPREAD = 12.0


def relative_name(path: Path, root: Path) -> str:
    """`path` relative to the data root `root` where it lies inside it (how messages and `data
    check` name files), else the whole path."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def is_hidden(name: str) -> bool:
    """A hidden file or folder ('.DS_Store', '.cache', '.git'): never data."""
    return name.startswith(".")


def is_image(name: str) -> bool:
    """An image file by its extension, in any case."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder: Path) -> Tuple[List[Path], List[str]]:
    """(image files, ignored entries) anywhere below `folder` (symlinks followed), sorted by path.

    Ignored entries are relative to `folder`: non-image files, hidden files, and hidden folders
    (once, with a trailing '/', not their contents).
    """
    files, dirs = walk(folder)
    hidden_dirs = [d for d in dirs if is_hidden(d.rsplit("/", 1)[-1])]
    ignored = [d + "/" for d in hidden_dirs if not any(d.startswith(h + "/") for h in hidden_dirs)]
    found: List[Path] = []
    for rel in files:
        if any(rel.startswith(h + "/") for h in hidden_dirs):
            continue
        name = rel.rsplit("/", 1)[-1]
        if is_hidden(name) or not is_image(name):
            ignored.append(rel)
        else:
            found.append(folder / rel)
    return found, sorted(ignored)


# ----------------------------------------------------------------------------- data roots


def resolve_root(dataset: "Dataset", data_root: Optional["PathLike"]) -> Path:
    """The checked data root of `dataset`: `data_root`, or its bundled copy when None; DataError
    saying what is wrong (missing, a file, a broken link, unreadable)."""
    if data_root is None:
        if dataset.default_root is None:
            raise DataError(f"{dataset.name} has no bundled copy: pass --data-root pointing at {dataset.root_hint}")
        root = dataset.default_root
        if not root.is_dir():
            raise DataError(f"the bundled {dataset.name} data is missing at {root}; pass --data-root pointing at "
                            f"{dataset.root_hint}")
    else:
        root = Path(data_root).expanduser()
        if root.is_symlink() and not root.exists():
            try:
                os.stat(root)
                why = "cannot be followed"
            except OSError as e:
                why = ("is a symlink loop" if e.errno == errno.ELOOP
                       else f"is a dangling symlink (to {os.readlink(root)})")
            raise DataError(f"data root {root} {why}; fix the link or pass --data-root the real folder")
        if not root.exists():
            raise DataError(f"data root {root} does not exist; pass --data-root an existing folder")
        if not root.is_dir():
            hint = f" (pass its folder {root.parent})" if root.suffix == ".zip" or root.parent.is_dir() else ""
            raise DataError(f"data root {root} is a file, not a folder; pass --data-root the folder that holds "
                            f"the data{hint}")
    if not _readable(root):
        raise DataError(f"data root {root} is not readable (permission denied); fix its permissions or pass "
                        "--data-root a readable copy")
    return root


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK | os.X_OK)


# ----------------------------------------------------------------------------- folders and archives


def sorted_entries(folder: Union[str, Path]) -> List[os.DirEntry]:
    """The entries directly in `folder`, sorted by name; DataError naming it when it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list folder {folder}: {one_line(e)}; fix its permissions or pass "
                        "--data-root another copy") from None


def walk(folder: Path) -> Tuple[List[str], List[str]]:
    """(files, folders) under `folder` as sorted relative POSIX paths, following symlinks.

    A symlink that leads back to one of its own parent folders (a loop) raises DataError naming
    it; an entry that cannot be stat'ed (a dangling link, a link to itself) is listed as a file,
    so reading it later gives an error naming the file (or skips it under --skip-bad-images).
    """
    files: List[str] = []
    dirs: List[str] = []

    def visit(path: str, prefix: str, ancestors: Tuple[Tuple[int, int], ...]) -> None:
        for e in sorted_entries(path):
            rel = prefix + e.name
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(rel)
                continue
            try:
                st = os.stat(e.path)
            except OSError:
                files.append(rel)
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in ancestors:
                raise DataError(f"symlink loop in the data: {e.path} leads back to its parent folder "
                                f"{os.path.realpath(e.path)}; remove or fix the link")
            dirs.append(rel)
            visit(e.path, rel + "/", ancestors + (ident,))

    st = os.stat(folder)
    visit(str(folder), "", ((st.st_dev, st.st_ino),))
    return files, dirs


def folder_fingerprint(folder: Path) -> str:
    """sha256 of the sorted (relative path, size, mtime) of every file under `folder` (symlinks followed)."""
    entries: List[str] = []
    files, _ = walk(folder)
    for rel in files:
        try:
            st = (folder / rel).stat()
            entries.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
        except OSError as e:  # a dangling link or a file that loops onto itself: read later, reported there
            entries.append(f"{rel}:unreadable:{e.errno}")
    entries.sort()
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


class ArchiveReader:
    """Reads member bytes from a zip (`kind` 'zip') or an extracted folder ('extracted'); a context manager."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.zf: Optional[zipfile.ZipFile] = None

    def __enter__(self) -> "ArchiveReader":
        if self.kind == "zip":
            self.zf = zipfile.ZipFile(self.path)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.zf is not None:
            self.zf.close()

    def describe(self, member: str) -> str:
        """Where `member` is, for messages: `archive.zip:member` or the file's path."""
        return f"{self.path}:{member}" if self.kind == "zip" else str(self.path / member)

    def source_name(self, member: str, root: Path) -> str:
        """`member` as `SplitData.sources` names it: `archive.zip:member`, or its path relative to `root`."""
        return f"{self.path.name}:{member}" if self.kind == "zip" else relative_name(self.path / member, root)

    def read(self, member: str) -> bytes:
        try:
            return self.zf.read(member) if self.zf is not None else (self.path / member).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
            raise DataError(f"cannot read image {self.describe(member)}: {reason}; restore the file, "
                            "re-extract the dataset or pass --skip-bad-images") from None


# ----------------------------------------------------------------------------- decoding


def decode(data: bytes, where: str, mode: str, size: int, resize: str = "stretch") -> "np.ndarray":
    """Bytes of an image -> uint8 numpy array [size, size] (mode 'L') or [size, size, 3] ('RGB').

    Any PIL mode is accepted: 1-bit, grey, palette, RGB, CMYK, 16-bit grey, and images with
    transparency (RGBA, LA, palette with a transparent colour), which are first composited
    over a white background (Omniglot's paper colour) so transparent pixels do not turn black.
    `resize`: 'stretch' resizes to size x size; 'crop' scales the shorter side to `size` and
    keeps the centre square (no distortion).  An image already size x size is not resampled.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return prepare(img, mode, size, resize)
    except Image.UnidentifiedImageError:  # its message names our BytesIO object, not the file
        raise DataError(f"cannot decode image {where}: PIL cannot identify it (the file is corrupt or not an "
                        "image); restore or remove it, or pass --skip-bad-images") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on corrupt files
        raise DataError(f"cannot decode image {where}: {one_line(e)}; the file is corrupt, restore it, "
                        "re-extract the dataset or pass --skip-bad-images") from None


def prepare(img: Any, mode: str, size: int, resize: str = "stretch") -> "np.ndarray":
    """A PIL image of any mode -> uint8 array [size, size] ('L') or [size, size, 3] ('RGB'), as `decode`.

    Turned upright first by its EXIF orientation tag, as viewers show it (phone photos store the
    pixels as the sensor read them, sideways, and the turn in that tag)."""
    import numpy as np
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    img = _to_mode(img, mode)
    if img.size != (size, size):
        img = _resize(img, size, resize)
    return np.asarray(img, dtype=np.uint8)


def has_colour(image: Any) -> bool:
    """True when an image (a path, bytes or a PIL image) visibly holds colour: the mean over its
    pixels of max(R, G, B) - min(R, G, B) exceeds COLOUR_SPREAD.  Unreadable images: False."""
    import numpy as np
    from PIL import Image

    try:
        if isinstance(image, (str, os.PathLike)):
            image = Image.open(image)
        elif isinstance(image, (bytes, bytearray)):
            image = Image.open(io.BytesIO(bytes(image)))
        if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
            return False
        small = _to_mode(image, "RGB")
        small.thumbnail((64, 64))
        rgb = np.asarray(small, dtype=np.int16)                            # [h, w, 3]
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean()) > COLOUR_SPREAD


def _resize(img, size: int, policy: str):
    """`img` as size x size: 'stretch' (squash) or 'crop' (shorter side to size, centre square)."""
    from PIL import Image

    resample = getattr(Image.Resampling, RESIZE_FILTER)
    if policy == "stretch":
        return img.resize((size, size), resample=resample)
    if policy != "crop":
        raise ValueError(f"unknown resize policy {policy!r}")
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), resample=resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_workers() -> int:
    """Threads that decode in parallel: $L2L_APP_DECODE_WORKERS, else the CPUs this process may use
    (PIL releases the GIL while it decodes and resizes)."""
    env = os.environ.get("L2L_APP_DECODE_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


#: from this many files on, `decode_files` decodes in worker processes (below it, start-up costs more)
PROCESS_FROM_FILES = 2000
#: files per task sent to a worker process
PROCESS_CHUNK = 256

DecodeResult = Tuple[Optional["np.ndarray"], Optional[str]]


def _read_and_decode(path: Path, mode: str, size: int, resize: str) -> DecodeResult:
    """(array, None), or (None, the DataError message) for a file that cannot be read or decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        reason = e.strerror if e.strerror else one_line(e)
        return None, (f"cannot read image {path}: {reason}; fix its permissions, restore the file or pass "
                      "--skip-bad-images")
    try:
        return decode(data, str(path), mode, size, resize), None
    except DataError as e:
        return None, str(e)


def _decode_chunk(task: Tuple[Sequence[Path], str, int, str]) -> List[DecodeResult]:
    """A worker process's share: `_read_and_decode` of each path, in order."""
    paths, mode, size, resize = task
    return [_read_and_decode(p, mode, size, resize) for p in paths]


def decode_files(paths: Sequence[Path], mode: str, size: int, resize: str, bad: "BadImages",
                 bar: Optional[Progress] = None, workers: Optional[int] = None) -> List[Optional["np.ndarray"]]:
    """Read and decode image files in parallel, in order: one uint8 array [size, size] ('L') or
    [size, size, 3] ('RGB') per path, or None for a file `bad` skipped (an unreadable file raises
    DataError naming it unless `bad` skips).  `bar` advances by one per file.

    On Linux, from PROCESS_FROM_FILES files on, `workers` forked processes decode chunks of
    PROCESS_CHUNK files (forked: no re-import of the caller's script, which spawned workers would
    need; a child runs only PIL and NumPy, with PIL's plugins loaded before the fork).  Fewer
    files, or another OS, use threads, which gain less: PIL holds the GIL for about half of a
    small JPEG's decode.
    """
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    n = workers or decode_workers()
    out: List[Optional["np.ndarray"]] = []

    def collect(results: Iterable[DecodeResult]) -> None:
        for arr, error in results:
            if error is not None:
                bad.record(DataError(error))
            out.append(arr)
            if bar is not None:
                bar.advance(1)

    if n > 1 and len(paths) >= PROCESS_FROM_FILES and sys.platform.startswith("linux"):
        import multiprocessing

        from PIL import Image

        Image.init()  # every format plugin imported before the fork: children import nothing
        context = multiprocessing.get_context("fork")
        tasks = [(list(paths[i:i + PROCESS_CHUNK]), mode, size, resize) for i in range(0, len(paths), PROCESS_CHUNK)]
        with ProcessPoolExecutor(max_workers=n, mp_context=context) as pool:
            for chunk in pool.map(_decode_chunk, tasks):
                collect(chunk)
        return out
    with ThreadPoolExecutor(max_workers=n) as pool:
        window = max(64, 16 * n)  # map keeps the order; a bounded window keeps memory flat
        for start in range(0, len(paths), window):
            collect(pool.map(lambda p: _read_and_decode(p, mode, size, resize), paths[start:start + window]))
    return out


def to_chw(arrays: Sequence["np.ndarray"], mode: str, size: int) -> "torch.Tensor":
    """Decoded arrays ([size, size] or [size, size, 3], uint8) -> uint8 tensor [n, C, size, size]."""
    import numpy as np
    import torch

    channels = 1 if mode == "L" else 3
    if not arrays:
        return torch.zeros((0, channels, size, size), dtype=torch.uint8)
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked.unsqueeze(1).contiguous() if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2).contiguous()


def _to_mode(img, mode: str):
    """Convert a PIL image of any mode to 'L' or 'RGB' (transparency composited over white)."""
    from PIL import Image

    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, not clip
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
        return img if mode == "L" else img.convert(mode)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("L", "1") and "transparency" in img.info:
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert(mode)


class BadImages:
    """Collects the images skipped under skip_bad_images ("file: reason"); re-raises the DataError otherwise."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.files: List[str] = []

    def record(self, error: DataError) -> None:
        """Note the unreadable image `error` names, or raise `error` when skipping is off."""
        if not self.skip:
            raise error
        self.files.append(str(error).split("; ")[0])

    def attempt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), or None (recorded) when it raises DataError and skipping is on."""
        try:
            return fn(*args)
        except DataError as e:
            self.record(e)
            return None


def decode_progress(total: int, desc: str, enabled: bool) -> Progress:
    """Decoding progress of `total` images: a redrawn line on a terminal, a plain line per tenth otherwise."""
    return Progress(desc, total, enabled=enabled, log_every=max(1, total // 10), unit="image")


def one_line(e: BaseException) -> str:
    """`e`'s message on one line (whitespace collapsed), or its type name when empty."""
    return " ".join(str(e).split()) or type(e).__name__
