"""`--dataset folder`: the user's own images, one sub-folder per class, as uint8 tensors.

Two layouts of the data root DIR, detected automatically:

* split folders: ``DIR/{train,val,test}/<class>/...`` -- the three split folders hold the classes
  (all three are required; ``--split-file`` is refused);
* class folders: ``DIR/<class>/...`` -- the classes are split by ``--split-file`` (JSON or
  sectioned text, `l2l_app.data.class_split`) or, without one, by a seeded class-level split
  (``--split-seed``, ``--split-ratios``).

A class is a top-level folder (of DIR, or of a split folder); every image anywhere below it
(nested folders too) belongs to it.  Class names are the folder names, NFC-normalised (macOS
writes names decomposed, split files are usually composed); spaces and non-ASCII letters are
kept.  Within a split the classes are in sorted order, on every OS.

Images: the extensions of images.IMAGE_EXTENSIONS in any case, any PIL mode, any size, decoded by
`images.decode` to `Dataset.mode` at `image_size` with `resize` (default 'crop': no distortion).
Ignored, and listed in `SplitData.ignored` of the split that holds them (paths relative to DIR):
hidden files and folders (names starting with '.'; a hidden folder is listed once, not its
files) and non-image files inside class and split folders.  Stray entries at the top of DIR
(files; in the split-folders layout also folders other than train/val/test) belong to no split
and are listed with the train split; a --split-file kept in DIR is not listed.  Hidden entries
at the top of DIR (the loader's own ``.cache``, ``.DS_Store``, ``.git``) are skipped without
listing and are not part of the cache key, so writing the cache does not change it.

The source's fingerprint (cache key input) is `images.folder_fingerprint` of every top-level
non-hidden folder of DIR plus the sizes and mtimes of its top-level files, so touching, adding
or removing a file misses the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from l2l_app.data import class_split, images
from l2l_app.data.types import Dataset, PathLike, Source, SplitData
from l2l_app.errors import DataError
from l2l_app.registry import DATASETS

#: the two layouts of a data root (recorded in the cache key)
SPLIT_FOLDERS, CLASS_FOLDERS = "split-folders", "class-folders"
#: the split whose `SplitData.ignored` also lists the stray entries at the top of DIR
STRAYS_SPLIT = "train"


@dataclass
class Listing:
    """The top level of a folder: classes (NFC name -> its folder) and stray entries (relative
    names of hidden and non-folder entries, hidden ones skipped when `skip_hidden`)."""

    classes: Dict[str, Path]
    strays: List[str]


def list_top(folder: Path, skip_hidden: bool = False) -> Listing:
    """The class folders and stray entries directly in `folder` (symlinks followed), sorted by name."""
    entries = images.sorted_entries(folder)
    classes: Dict[str, Path] = {}
    strays: List[str] = []
    for e in entries:
        if images.is_hidden(e.name):
            if not skip_hidden:
                strays.append(e.name + ("/" if _is_dir(e) else ""))
            continue
        if not _is_dir(e):
            strays.append(e.name)
            continue
        name = unicodedata.normalize("NFC", e.name)
        if name in classes:
            raise DataError(f"{folder} holds two class folders named {name!r} (written with different Unicode "
                            f"forms: {classes[name].name!r} and {e.name!r}); rename or merge one")
        classes[name] = Path(e.path)
    return Listing(classes, strays)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # a dangling link or a link to itself: a stray file
        return False


def split_folders_in(folder: Path, splits: Tuple[str, ...]) -> List[str]:
    """The split names that are sub-folders of `folder`."""
    return [s for s in splits if (folder / s).is_dir()]


def class_contents(folder: Path, prefix: str) -> Tuple[List[Path], List[str]]:
    """(image files, ignored entries) anywhere below the class folder `folder`, in sorted order;
    ignored entries relative to DIR (`prefix` is the folder's own relative path plus '/')."""
    found, ignored = images.image_files(folder)
    return found, [prefix + rel for rel in ignored]


class FolderSource(Source):
    """A checked data root in one of the two layouts, with each split's classes assigned.

    `layout`: SPLIT_FOLDERS or CLASS_FOLDERS; `assignment`: split -> sorted class names;
    `class_dirs`: split -> class name -> its folder; `strays`: ignored entries at the top of DIR
    and of the split folders (relative paths), by split.
    """

    def __init__(self, root: Path, layout: str, assignment: Dict[str, List[str]],
                 class_dirs: Dict[str, Dict[str, Path]], strays: Dict[str, List[str]]) -> None:
        super().__init__(root)
        self.layout, self.assignment, self.class_dirs, self.strays = layout, assignment, class_dirs, strays
        self._contents: Dict[Path, Tuple[List[Path], List[str]]] = {}
        self._fp: Optional[str] = None

    def contents(self, split: str, name: str) -> Tuple[List[Path], List[str]]:
        """(image files, ignored entries relative to DIR) of class `name` of `split` (walked once)."""
        folder = self.class_dirs[split][name]
        if folder not in self._contents:
            prefix = folder.relative_to(self.root).as_posix() + "/"
            self._contents[folder] = class_contents(folder, prefix)
        return self._contents[folder]

    def fingerprint(self, split_file: Path) -> str:
        """Every top-level non-hidden entry of DIR: folder fingerprints, and files' sizes and mtimes."""
        if self._fp is None:
            h = hashlib.sha256()
            listing = list_top(self.root, skip_hidden=True)
            for folder in sorted(listing.classes.values()):
                h.update(f"{folder.name}/:{images.folder_fingerprint(folder)}\n".encode())
            for name in listing.strays:
                try:
                    st = (self.root / name).stat()
                    h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
                except OSError as e:
                    h.update(f"{name}:unreadable:{e.errno}\n".encode())
            self._fp = h.hexdigest()
        return self._fp


@dataclass(frozen=True)
class ClassFolders(Dataset):
    """Images in one folder per class (see the module doc).  `split_file` (--split-file), `split_seed`
    and `split_ratios` choose the class split of the class-folders layout."""

    split_file: Optional[str] = None
    split_seed: int = 0
    split_ratios: str = "0.64,0.16,0.2"

    # ------------------------------------------------------------------ opening
    def open(self, data_root: Optional[PathLike]) -> FolderSource:
        """The checked data root: its layout, each split's classes (checked: known, disjoint, at least
        2 per split) and at least one image; DataError saying what is wrong and how to fix it."""
        root = images.resolve_root(self, data_root)
        present = split_folders_in(root, self.splits)
        if present:
            return self._open_split_folders(root, present)
        parent = split_folders_in(root.parent, self.splits)
        if root.name in self.splits and len(parent) == len(self.splits):
            raise DataError(f"data root {root} is the {root.name} split folder of {root.parent}, which holds "
                            f"{', '.join(s + '/' for s in self.splits)}; pass --data-root {root.parent}")
        listing = list_top(root, skip_hidden=True)
        if not listing.classes:
            loose = sum(images.is_image(n) for n in listing.strays)
            found = f" (it holds {loose} image(s) itself)" if loose else ""
            raise DataError(f"no class folders under {root}{found}: expected one folder per class ({root}/<class>/"
                            f"<image>) or {', '.join(s + '/' for s in self.splits)} folders each holding class "
                            "folders; move the images into class folders or pass --data-root the right folder")
        names = sorted(listing.classes)
        if self.split_file is not None:
            split_path = Path(self.split_file).expanduser()
            assignment = {s: sorted(unicodedata.normalize("NFC", c) for c in v)
                          for s, v in class_split.read_split_file(split_path).items()}
            class_split.check_split(assignment, names, f"--split-file {split_path}")
            strays = [n for n in listing.strays if not _same_file(root / n, split_path)]
        else:
            assignment = class_split.seeded_split(names, self.ratios, self.split_seed)
            strays = listing.strays
        source = FolderSource(root, CLASS_FOLDERS, {s: assignment[s] for s in self.splits},
                              {s: listing.classes for s in self.splits},
                              {s: strays if s == STRAYS_SPLIT else [] for s in self.splits})
        self._check_has_images(source)
        return source

    def _open_split_folders(self, root: Path, present: List[str]) -> FolderSource:
        missing = [s for s in self.splits if s not in present]
        if missing:
            raise DataError(f"{root} has the split folder(s) {', '.join(s + '/' for s in present)} but not "
                            f"{', '.join(s + '/' for s in missing)}: give it all of "
                            f"{', '.join(s + '/' for s in self.splits)} (each with one folder per class), or keep "
                            f"one folder per class directly in {root} and split them with --split-file or "
                            "--split-seed (rename folders named like a split)")
        if self.split_file is not None:
            raise DataError(f"--split-file {self.split_file} cannot be used with {root}: it already has the split "
                            f"folders {', '.join(s + '/' for s in self.splits)}; drop --split-file")
        listings = {s: list_top(root / s) for s in self.splits}
        for s, listing in listings.items():
            if not listing.classes:
                raise DataError(f"no class folders in the split folder {root / s}: expected one folder per class "
                                f"({root / s}/<class>/<image>); add them")
        assignment = {s: sorted(listing.classes) for s, listing in listings.items()}
        class_split.check_split(assignment, [c for v in assignment.values() for c in v],
                                f"{root} ({', '.join(s + '/' for s in self.splits)} folders)")
        strays = {s: [f"{s}/{n}" for n in listing.strays] for s, listing in listings.items()}
        top = list_top(root, skip_hidden=True)
        others = [f"{path.name}/" for path in top.classes.values() if path.name not in self.splits]
        strays[STRAYS_SPLIT] = sorted(top.strays + others) + strays[STRAYS_SPLIT]
        source = FolderSource(root, SPLIT_FOLDERS, assignment, {s: listings[s].classes for s in self.splits}, strays)
        self._check_has_images(source)
        return source

    def _check_has_images(self, source: FolderSource) -> None:
        """DataError unless some class folder holds an image (walks classes until it finds one)."""
        for s, names in source.assignment.items():
            if any(source.contents(s, name)[0] for name in names):
                return
        raise DataError(f"no images under the class folders of {source.root}: expected files ending in "
                        f"{', '.join(images.IMAGE_EXTENSIONS)} (any case); convert the images or pass --data-root the "
                        "right folder")

    @property
    def ratios(self) -> Tuple[float, float, float]:
        """The parsed --split-ratios (DataError with the fix when malformed)."""
        return class_split.split_ratios(self.split_ratios)

    # ------------------------------------------------------------------ split files and identity
    def split_files(self, root: Path, split_dir: Optional[PathLike]) -> Dict[str, Path]:
        """Each split's 'file': its split folder (split-folders layout), else the --split-file, else DIR
        itself (a seeded split).  `split_dir` is not used: the split comes from --split-file."""
        if split_folders_in(root, self.splits):
            return {s: root / s for s in self.splits}
        where = Path(self.split_file).expanduser() if self.split_file is not None else root
        return {s: where for s in self.splits}

    def split_identity(self, split: str, split_file: Path) -> bytes:
        """JSON of the layout, the split's sorted class names, and for a seeded split its seed and ratios."""
        identity: Dict[str, object]
        if split_file.is_file():
            listed = class_split.read_split_file(split_file).get(split, [])
            identity = {"layout": CLASS_FOLDERS, "by": "split-file",
                        "classes": sorted(unicodedata.normalize("NFC", c) for c in listed)}
        elif split_file.name == split and len(split_folders_in(split_file.parent, self.splits)) == len(self.splits):
            identity = {"layout": SPLIT_FOLDERS, "classes": sorted(list_top(split_file).classes)}
        else:
            names = sorted(list_top(split_file, skip_hidden=True).classes)
            ratios = self.ratios
            identity = {"layout": CLASS_FOLDERS, "by": "seed", "seed": self.split_seed, "ratios": list(ratios),
                        "classes": class_split.seeded_split(names, ratios, self.split_seed)[split]}
        return json.dumps(identity, sort_keys=True, ensure_ascii=False).encode("utf-8")

    def class_lists(self, source: Source, files: Dict[str, Path]) -> Optional[Dict[str, List[str]]]:
        """split -> sorted class names of every split in `files` (known without decoding)."""
        assert isinstance(source, FolderSource)
        return {s: list(source.assignment[s]) for s in files}

    # ------------------------------------------------------------------ decoding
    def build(self, source: Source, files: Dict[str, Path], progress: bool,
              skip_bad_images: bool = False) -> Dict[str, SplitData]:
        """Decode the images of every class of the splits `files` (threads), under one progress bar.

        Each split: images uint8 [N, C, image_size, image_size], classes in sorted order.
        """
        assert isinstance(source, FolderSource)
        contents = {s: [source.contents(s, name) for name in source.assignment[s]] for s in files}
        for s, per_class in contents.items():
            for name, (paths, _) in zip(source.assignment[s], per_class):
                if not paths:
                    raise DataError(f"class folder {source.class_dirs[s][name]} holds no images (files ending in "
                                    f"{', '.join(images.IMAGE_EXTENSIONS)}); add images to it or remove it")
        total = sum(len(paths) for per_class in contents.values() for paths, _ in per_class)
        out: Dict[str, SplitData] = {}
        with images.decode_progress(total, f"decoding {self.name} ({', '.join(files)})", progress) as bar:
            for s, per_class in contents.items():
                bad = images.BadImages(skip_bad_images)
                paths = [p for class_paths, _ in per_class for p in class_paths]
                arrays = images.decode_files(paths, self.mode, self.image_size, self.resize, bad, bar)
                per_class_images, start = [], 0
                for class_paths, _ in per_class:
                    kept = [a for a in arrays[start:start + len(class_paths)] if a is not None]
                    per_class_images.append(images.to_chw(kept, self.mode, self.image_size))
                    start += len(class_paths)
                sources = [images.relative_name(p, source.root) for p, a in zip(paths, arrays) if a is not None]
                ignored = source.strays[s] + [entry for _, class_ignored in per_class for entry in class_ignored]
                out[s] = SplitData.from_classes(per_class_images, source.assignment[s], self.name, s, files[s],
                                                bad.files, ignored, sources)
        return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


FOLDER = ClassFolders("folder", in_channels=3, image_size=84, default_root=None, resize="crop", normalize=True,
                      options=("image_size", "channels", "resize", "normalize", "split_file", "split_seed",
                               "split_ratios"),
                      root_hint="a folder with one sub-folder of images per class (DIR/<class>/...), or with "
                                "train/, val/ and test/ folders that each hold class folders")
DATASETS.register(FOLDER.name, FOLDER)
