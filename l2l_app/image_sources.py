"""Reading the raw image data: data roots, archives and decoding.

A source is a checked data root: Omniglot's two archives `images_background` and
`images_evaluation`, each a zip or an extracted folder (the zip wins when both exist), or
mini-ImageNet's `images/` folder.  Its fingerprint (zip content hashes; relative paths, sizes
and mtimes of files) is part of the cache key.  Nothing is ever downloaded.

`decode` turns image bytes of any PIL mode (1-bit, grey, palette, RGB, RGBA, CMYK, 16-bit ...)
into a uint8 array of the dataset's mode (L or RGB), transparency composited over white, resized
with RESIZE_FILTER when not already the target size.  A file that cannot be read or decoded
raises DataError naming it.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

from l2l_app.errors import DataError
from l2l_app.fileio import file_sha256

if TYPE_CHECKING:
    from l2l_app.datasets import DatasetSpec

PathLike = Union[str, Path]

RESIZE_FILTER = "LANCZOS"
OMNIGLOT_ARCHIVES = ("images_background", "images_evaluation")


# ----------------------------------------------------------------------------- sources


class Source:
    """A data root that has been checked to exist; knows how to fingerprint itself."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fingerprint(self, split_file: Path) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


class OmniglotSource(Source):
    """Two archives (zip or folder) mapping alphabet -> character -> sorted PNG names."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.archives: Dict[str, Tuple[str, Path]] = {}  # name -> ('zip'|'folder', path)
        for name in OMNIGLOT_ARCHIVES:
            z, d = root / f"{name}.zip", root / name
            if z.is_file():
                self.archives[name] = ("zip", z)
            elif d.is_dir():
                self.archives[name] = ("folder", d)
        if not self.archives:
            raise DataError(f"no Omniglot data under {root}: expected images_background.zip and "
                            "images_evaluation.zip, or the extracted folders images_background/ and "
                            "images_evaluation/; pass --data-root pointing at the folder that holds them")
        self._fp: Optional[str] = None
        self._folders: Dict[Tuple[str, str], str] = {}  # (alphabet, char) -> its folder, for messages

    def fingerprint(self, split_file: Path) -> str:
        if self._fp is None:
            parts = []
            for name, (kind, path) in sorted(self.archives.items()):
                parts.append(f"{name}:{kind}:{file_sha256(path) if kind == 'zip' else _folder_fingerprint(path)}")
            self._fp = "|".join(parts)
        return self._fp

    def index(self) -> Dict[str, Dict[str, Tuple[str, List[str]]]]:
        """alphabet -> character -> (archive name, sorted member paths)."""
        tree: Dict[str, Dict[str, Tuple[str, List[str]]]] = {}
        for name, (kind, path) in self.archives.items():
            if kind == "zip":
                try:
                    with zipfile.ZipFile(path) as zf:
                        all_names = zf.namelist()
                    members = [m for m in all_names if m.lower().endswith(".png")]
                except (zipfile.BadZipFile, OSError) as e:
                    raise DataError(f"cannot read {path}: {one_line(e)}; replace the corrupt zip or extract it "
                                    "and pass --data-root to the folder") from None
                # directory entries: an empty character folder is still a (too small) class
                dirs = [m.rstrip("/") for m in all_names if m.endswith("/")]
            else:
                files, dirs = _walk(path)
                members = [m for m in files if m.lower().endswith(".png")]
            for d in dirs:
                parts = d.split("/")
                if len(parts) >= 2:
                    tree.setdefault(parts[-2], {}).setdefault(parts[-1], (name, []))
                    self._folders[(parts[-2], parts[-1])] = f"{path}:{d}/" if kind == "zip" else f"{path / d}/"
            for m in members:
                parts = m.split("/")
                if len(parts) < 3:
                    continue
                alphabet, char = parts[-3], parts[-2]
                where = "/".join(parts[:-1])
                self._folders.setdefault((alphabet, char), f"{path}:{where}/" if kind == "zip" else f"{path / where}/")
                entry = tree.setdefault(alphabet, {}).setdefault(char, (name, []))
                entry[1].append(m)
        for chars in tree.values():
            for _, files in chars.values():
                files.sort()
        return tree

    def reader(self, name: str) -> "_Reader":
        kind, path = self.archives[name]
        return _Reader(kind, path)

    def describe_folder(self, archive: str, alphabet: str, char: str) -> str:
        """Where the class folder alphabet/char is (after `index()`)."""
        return self._folders.get((alphabet, char), f"{self.archives[archive][1]} .../{alphabet}/{char}/")


class _Reader:
    """Reads member bytes from a zip or a folder; a context manager."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path, self.zf = kind, path, None

    def __enter__(self) -> "_Reader":
        if self.kind == "zip":
            self.zf = zipfile.ZipFile(self.path)
        return self

    def __exit__(self, *exc) -> None:
        if self.zf is not None:
            self.zf.close()

    def describe(self, member: str) -> str:
        return f"{self.path}:{member}" if self.kind == "zip" else str(self.path / member)

    def read(self, member: str) -> bytes:
        try:
            return self.zf.read(member) if self.zf is not None else (self.path / member).read_bytes()
        except (OSError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
            raise DataError(f"cannot read image {self.describe(member)}: {reason}; restore the file, "
                            "re-extract the dataset or pass --skip-bad-images") from None


class _FolderSource(Source):
    """mini-ImageNet: `images/*.jpg`; fingerprint = relative paths, sizes and mtimes of the split's files."""

    def fingerprint(self, split_file: Path) -> str:
        from l2l_app.datasets import read_csv  # local import: datasets imports this module

        h = hashlib.sha256()
        for name, _ in read_csv(split_file):
            p = self.root / "images" / name
            try:
                st = p.stat()
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{name}:missing\n".encode())
        return h.hexdigest()


def open_source(spec: "DatasetSpec", data_root: Optional[PathLike]) -> Source:
    """The checked source of `spec` under `data_root` (None: the bundled copy), or DataError saying what is wrong."""
    if data_root is None:
        if spec.default_root is None:
            raise DataError(f"{spec.name} has no bundled copy: pass --data-root pointing at a folder with "
                            "images/*.jpg (and optionally train/val/test.csv in the Ravi & Larochelle layout)")
        root = spec.default_root
        if not root.is_dir():
            raise DataError(f"the bundled {spec.name} data is missing at {root}; pass --data-root pointing at "
                            "the folder with images_background.zip and images_evaluation.zip")
    else:
        root = Path(data_root).expanduser()
        if root.is_symlink() and not root.exists():
            try:
                os.stat(root)
                why = "cannot be followed"
            except OSError as e:
                why = "is a symlink loop" if e.errno == errno.ELOOP else f"is a dangling symlink (to {os.readlink(root)})"
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
    if spec.name == "omniglot":
        return OmniglotSource(root)
    if not (root / "images").is_dir():
        raise DataError(_no_images_folder(root))
    return _FolderSource(root)


def _holds_jpegs(folder: Path) -> bool:
    """Whether `folder` itself holds .jpg/.jpeg files (a mini-ImageNet images/ folder)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.lower().endswith((".jpg", ".jpeg")) for e in entries)
    except OSError:
        return False


def _no_images_folder(root: Path) -> str:
    """The message for a mini-ImageNet data root without images/, pointing at the right folder."""
    expected = f"no mini-ImageNet images under {root}: expected a folder images/ with the 84x84 JPEGs"
    if not _holds_jpegs(root):
        return (f"{expected} (and optionally train.csv, val.csv, test.csv); pass --data-root the folder "
                "that contains images/")
    if root.name == "images":
        return (f"{expected}, but {root} is that images/ folder itself (it holds the JPEGs); pass its parent: "
                f"--data-root {root.parent}")
    return (f"{expected}, but {root} holds the JPEGs itself; move them into {root / 'images'} and keep "
            f"--data-root {root}")


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK | os.X_OK)


# ----------------------------------------------------------------------------- fingerprints


def _folder_fingerprint(folder: Path) -> str:
    """sha256 of the sorted (relative path, size, mtime) of every file under `folder` (symlinks followed)."""
    entries: List[str] = []
    files, _ = _walk(folder)
    for rel in files:
        try:
            st = (folder / rel).stat()
            entries.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
        except OSError as e:  # a dangling link or a file that loops onto itself: read later, reported there
            entries.append(f"{rel}:unreadable:{e.errno}")
    entries.sort()
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _walk(folder: Path) -> Tuple[List[str], List[str]]:
    """(files, folders) under `folder` as sorted relative POSIX paths, following symlinks.

    A symlink that leads back to one of its own parent folders (a loop) raises DataError naming
    it; an entry that cannot be stat'ed (a dangling link, a link to itself) is listed as a file,
    so reading it later gives an error naming the file (or skips it under --skip-bad-images).
    """
    files: List[str] = []
    dirs: List[str] = []

    def visit(path: str, prefix: str, ancestors: Tuple[Tuple[int, int], ...]) -> None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"cannot list folder {path}: {one_line(e)}; fix its permissions or pass "
                            "--data-root another copy") from None
        for e in entries:
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


# ----------------------------------------------------------------------------- decoding


def decode(data: bytes, where: str, mode: str, size: int):
    """Bytes of an image -> uint8 numpy array [size, size] (mode 'L') or [size, size, 3] ('RGB').

    Any PIL mode is accepted: 1-bit, grey, palette, RGB, CMYK, 16-bit grey, and images with
    transparency (RGBA, LA, palette with a transparent colour), which are first composited
    over a white background (Omniglot's paper colour) so transparent pixels do not turn black.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = _to_mode(img, mode)
            if img.size != (size, size):
                img = img.resize((size, size), resample=getattr(Image.Resampling, RESIZE_FILTER))
            return np.asarray(img, dtype=np.uint8)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on corrupt files
        raise DataError(f"cannot decode image {where}: {one_line(e)}; the file is corrupt, restore it, "
                        "re-extract the dataset or pass --skip-bad-images") from None


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


# ----------------------------------------------------------------------------- helpers


def one_line(e: BaseException) -> str:
    """`e`'s message on one line (whitespace collapsed), or its type name when empty."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text
