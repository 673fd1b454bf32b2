"""Omniglot (Lake et al. 2015, Science): the Vinyals split with rotations, as uint8 tensors.

Preprocessing, as in learn2learn's Omniglot benchmark:

* read `images_background/<Alphabet>/characterNN/*.png` and `images_evaluation/...` from the
  two zips or from extracted folders under the data root (the zip wins when both exist);
* convert the 105x105 1-bit PNG to 8-bit grey, resize to 28x28 with PIL's LANCZOS filter
  (antialiased), then **invert** so strokes are bright (255) on a dark (0) background --
  the polarity of learn2learn's ``1.0 - x`` transform;
* the Vinyals et al. (2016) split (or the data root's own `{train,val,test}.txt` when present)
  lists `Alphabet/characterNN/rotDDD`; each rotation is its own class, made with
  ``torch.rot90(img, k=DDD // 90, dims=(-2, -1))``, i.e. DDD degrees **counterclockwise**
  (as `numpy.rot90`).

The source's fingerprint (cache key input) is the zips' content hashes, or the relative paths,
sizes and mtimes of an extracted folder's files.  The bundled copy is `<repo>/data/omniglot`.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from l2l_app.data import images
from l2l_app.data.types import SPLITS_DIR, Dataset, PathLike, Source, SplitData
from l2l_app.errors import DataError
from l2l_app.fileio import file_sha256
from l2l_app.registry import DATASETS

#: the two archives (a zip or an extracted folder each) under an Omniglot data root
ARCHIVES = ("images_background", "images_evaluation")
BUNDLED_ROOT = Path(__file__).resolve().parents[2] / "data" / "omniglot"

#: alphabet -> character -> (archive name, sorted member paths of its PNGs)
Tree = Dict[str, Dict[str, Tuple[str, List[str]]]]


class OmniglotSource(Source):
    """Two archives (zip or folder) mapping alphabet -> character -> sorted PNG names."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.archives: Dict[str, Tuple[str, Path]] = {}  # name -> ('zip'|'extracted', path)
        for name in ARCHIVES:
            z, d = root / f"{name}.zip", root / name
            if z.is_file():
                self.archives[name] = ("zip", z)
            elif d.is_dir():
                self.archives[name] = ("extracted", d)
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
                digest = file_sha256(path) if kind == "zip" else images.folder_fingerprint(path)
                parts.append(f"{name}:{kind}:{digest}")
            self._fp = "|".join(parts)
        return self._fp

    def index(self) -> Tree:
        """alphabet -> character -> (archive name, sorted member paths)."""
        tree: Tree = {}
        for name, (kind, path) in self.archives.items():
            if kind == "zip":
                try:
                    with zipfile.ZipFile(path) as zf:
                        all_names = zf.namelist()
                    members = [m for m in all_names if m.lower().endswith(".png")]
                except (zipfile.BadZipFile, OSError) as e:
                    raise DataError(f"cannot read {path}: {images.one_line(e)}; replace the corrupt zip or "
                                    "extract it and pass --data-root to the folder") from None
                # directory entries: an empty character folder is still a (too small) class
                dirs = [m.rstrip("/") for m in all_names if m.endswith("/")]
            else:
                files, dirs = images.walk(path)
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

    def reader(self, name: str) -> images.ArchiveReader:
        kind, path = self.archives[name]
        return images.ArchiveReader(kind, path)

    def describe_folder(self, archive: str, alphabet: str, char: str) -> str:
        """Where the class folder alphabet/char is (after `index()`)."""
        return self._folders.get((alphabet, char), f"{self.archives[archive][1]} .../{alphabet}/{char}/")


def read_omniglot_split(path: Path) -> List[Tuple[str, str, int]]:
    """Lines `Alphabet/characterNN/rotDDD` -> [(alphabet, character, degrees)]."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        m = re.fullmatch(r"rot(\d{3})", parts[-1]) if len(parts) == 3 else None
        if m is None or int(m.group(1)) % 90 or int(m.group(1)) >= 360:
            raise DataError(f"{path} line {n}: expected 'Alphabet/characterNN/rotDDD' with DDD in "
                            f"000/090/180/270, got {line!r}; fix the split file")
        out.append((parts[0], parts[1], int(m.group(1))))
    return out


class Omniglot(Dataset):
    """Omniglot: grey 28x28, inverted, each rotation of a character its own class."""

    def open(self, data_root: Optional[PathLike]) -> OmniglotSource:
        return OmniglotSource(images.resolve_root(self, data_root))

    def cache_params(self) -> Dict[str, Any]:
        return {**super().cache_params(), "rotations": True, "invert": True}

    def build(self, source: Source, files: Dict[str, Path], progress: bool,
              skip_bad_images: bool = False) -> Dict[str, SplitData]:
        """Decode each character the splits `files` name once (from its archive), then make each
        split's classes as rotations of those images."""

        assert isinstance(source, OmniglotSource)
        lines = {s: read_omniglot_split(f) for s, f in files.items()}
        needed = self._needed_characters(source, lines, files)
        base: Dict[Tuple[str, str], torch.Tensor] = {}  # (alphabet, char) -> uint8 [n, C, size, size]
        decoded: Dict[Tuple[str, str], List[str]] = {}  # (alphabet, char) -> the members decoded, in order
        bad = images.BadImages(skip_bad_images)
        size = self.image_size
        total = sum(len(m) for _, m in needed.values())
        with images.decode_progress(total, f"decoding {self.name} ({', '.join(files)})", progress) as bar:
            for archive in sorted({a for a, _ in needed.values()}):
                with source.reader(archive) as reader:
                    for key, (arch, members) in needed.items():
                        if arch != archive:
                            continue
                        arrs = []
                        for m in members:
                            data = bad.attempt(reader.read, m)
                            arr = None if data is None else bad.attempt(images.decode, data, reader.describe(m),
                                                                        self.mode, size, self.resize)
                            if arr is not None:
                                arrs.append(arr)
                                decoded.setdefault(key, []).append(reader.source_name(m, source.root))
                        base[key] = 255 - images.to_chw(arrs, self.mode, size)  # invert: strokes 255, background 0
                        bar.advance(len(members))
        out = {}
        for s, entries in lines.items():
            imgs = [torch.rot90(base[(alphabet, char)], k=deg // 90, dims=(-2, -1)) for alphabet, char, deg in entries]
            names = [f"{alphabet}/{char}/rot{deg:03d}" for alphabet, char, deg in entries]
            chars = {(a, ch) for a, ch, _ in entries}
            skipped = [f for f in bad.files if any(f"/{a}/{ch}/" in f for a, ch in chars)]
            sources = [f"{member} rot{deg:03d}" if deg else member
                       for alphabet, char, deg in entries for member in decoded.get((alphabet, char), [])]
            out[s] = SplitData.from_classes(imgs, names, self.name, s, files[s], skipped, sources=sources)
        return out

    def _needed_characters(self, source: OmniglotSource, lines: Dict[str, List[Tuple[str, str, int]]],
                           files: Dict[str, Path]) -> Dict[Tuple[str, str], Tuple[str, List[str]]]:
        """(alphabet, char) -> (archive, its PNG members) for every character the split `lines` name;
        DataError for a character not in the data or with fewer than 2 images."""
        tree = source.index()
        needed: Dict[Tuple[str, str], Tuple[str, List[str]]] = {}
        absent = "".join(f" ({a}.zip or {a}/ not found)" for a in ARCHIVES if a not in source.archives)
        for s, entries in lines.items():
            for alphabet, char, deg in entries:
                name = f"{alphabet}/{char}/rot{deg:03d}"
                if alphabet not in tree:
                    raise DataError(f"class {name} of the {self.name} {s} split ({files[s]}) is not in the data "
                                    f"under {source.root}: alphabet {alphabet!r} is not in "
                                    f"{' or '.join(sorted(source.archives))}{absent}; pass --data-root with both "
                                    "zips or folders, or fix the split file")
                if char not in tree[alphabet]:
                    raise DataError(f"class {name} of the {self.name} {s} split ({files[s]}) is not in the data "
                                    f"under {source.root}: alphabet {alphabet} has no {char}; pass the right "
                                    "--data-root or fix the split file")
                needed[(alphabet, char)] = tree[alphabet][char]
        for (alphabet, char), (arch, members) in needed.items():
            if len(members) < 2:
                folder = source.describe_folder(arch, alphabet, char)
                empty = f" (its folder {folder} holds no .png images)" if not members else ""
                raise DataError(f"too few images for class {alphabet}/{char} under {source.root}: found "
                                f"{len(members)}{empty}, need at least 2 (one support, one query); restore the "
                                "dataset or remove the class from the split file")
        return needed


OMNIGLOT = Omniglot("omniglot", in_channels=1, image_size=28, default_root=BUNDLED_ROOT, split_suffix="txt",
                    packaged_splits=SPLITS_DIR / "omniglot-vinyals",
                    root_hint="the folder with images_background.zip and images_evaluation.zip")
DATASETS.register(OMNIGLOT.name, OMNIGLOT)
