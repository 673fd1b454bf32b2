"""How a run turns raw data into model input, saved with the run and reused everywhere.

A `Preprocessing` records the decoding (image size, channels, resize policy) and the input
normalisation (per-channel mean and std of the train split, or none).  The trainer computes it
when a run starts (`Preprocessing.for_run`) and writes it into the run directory
(`preprocessing.json`); eval, predict and export read it back (`l2l_app.rundir.load_preprocessing`),
so a new image is prepared exactly like the training images, and cross-domain evaluation decodes
the other dataset at the run's size and channels.

Model input (`to_input`): uint8 pixels v -> v / 255, then (x - mean[c]) / std[c] when
normalising; feature vectors (float32 [.., D]) -> (x - mean) / std per feature.  For uint8 the
mapping is a lookup table computed on the CPU, so every device gives bit-identical inputs.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from l2l_app.data.types import IMAGES, VECTORS, Dataset, SplitData
from l2l_app.errors import ConfigError, DataError

#: std below this is treated as 1 (a constant channel or feature carries no scale)
MIN_STD = 1e-6


#: the entries every preprocessing.json holds (mean, std and invert may be absent: None, None, False)
REQUIRED_ENTRIES = ("dataset", "kind", "channels", "image_size", "resize")
_TYPE_WORDS = {str: "text", int: "a whole number", bool: "true or false", float: "a number"}


def _entry(d: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """`d[key]` checked to be of `kind` (`default` when absent); ValueError naming the entry otherwise."""
    value = d.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"its {key!r} entry is {value!r}, not {_TYPE_WORDS[kind]}")
    return value


def _numbers(d: Mapping[str, Any], key: str) -> Optional[Tuple[float, ...]]:
    """`d[key]` as a tuple of floats (None when absent or null); ValueError naming the entry otherwise."""
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"its {key!r} entry is {value!r}, not a list of numbers or null")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Preprocessing:
    """Decoding and normalisation of one run's inputs.

    dataset: the dataset trained on; kind: IMAGES ('image') or VECTORS ('vectors'); channels: image channels (1 or 3)
    or the feature dimension D; image_size: the square side (0 for features); resize: 'stretch' or
    'crop'; mean / std: per channel (images, in [0, 1] units) or per feature, None = not normalised;
    invert: pixels are stored as 255 - v (Omniglot: strokes 255 on a 0 background).
    """

    dataset: str
    kind: str
    channels: int
    image_size: int
    resize: str
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    invert: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_run(cls, dataset: Dataset, train: SplitData) -> "Preprocessing":
        """The preprocessing of a run on `dataset` (already `configured`), normalised with `train`'s
        statistics when the dataset's `normalize` is on.  Features take D from the data."""
        base = cls.unnormalised(dataset)
        if dataset.kind == VECTORS:
            base = replace(base, channels=int(train.input_shape[0]))
        if not dataset.normalize:
            return base
        mean, std = channel_stats(train)
        return replace(base, mean=mean, std=std)

    @classmethod
    def unnormalised(cls, dataset: Dataset) -> "Preprocessing":
        """What a run without a saved preprocessing.json used: the dataset's decoding, pixels / 255."""
        return cls(dataset.name, dataset.kind, int(dataset.in_channels), int(dataset.image_size), dataset.resize,
                   invert=bool(dataset.cache_params().get("invert", False)))

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["mean"] = None if self.mean is None else list(self.mean)
        out["std"] = None if self.std is None else list(self.std)
        out["input"] = self.describe()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of `to_dict` (preprocessing.json).  A damaged one raises ValueError naming the entry
        that is missing or of the wrong type (`rundir.load_preprocessing` adds the file and the fix)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a JSON object with {', '.join(map(repr, REQUIRED_ENTRIES))}, got a "
                             f"{type(d).__name__}")
        missing = [key for key in REQUIRED_ENTRIES if key not in d]
        if missing:
            raise ValueError(f"it has no {' and '.join(map(repr, missing))} entr{'ies' if len(missing) > 1 else 'y'}")
        return cls(_entry(d, "dataset", str), _entry(d, "kind", str), _entry(d, "channels", int),
                   _entry(d, "image_size", int), _entry(d, "resize", str), _numbers(d, "mean"), _numbers(d, "std"),
                   _entry(d, "invert", bool, False))

    @classmethod
    def read(cls, path: Path) -> "Preprocessing":
        """A run's preprocessing.json; unreadable, truncated or damaged -> one ConfigError naming the file,
        what is wrong and the fix (`from_dict` names a missing or mistyped entry)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}; check that you may read it") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            what = "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"it is not valid JSON ({exc})"
            raise ConfigError(f"cannot read {path}: {what}; restore it from a copy of the run") from None
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ConfigError(f"cannot read {path}: {exc}; restore it from a copy of the run") from None

    # ------------------------------------------------------------------ facts
    @property
    def normalised(self) -> bool:
        return self.mean is not None

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """One model input: (C, H, W) for images, (D,) for feature vectors."""
        if self.kind == VECTORS:
            return (self.channels,)
        return (self.channels, self.image_size, self.image_size)

    @property
    def mode(self) -> str:
        """The PIL mode images are decoded to."""
        return "L" if self.channels == 1 else "RGB"

    def describe(self) -> str:
        """One line for run.json, predict and export sidecars."""
        if self.kind == VECTORS:
            what = f"feature vectors of {self.channels} numbers"
        else:
            what = (f"{'grey' if self.channels == 1 else 'RGB'} {self.image_size}x{self.image_size} images "
                    f"({self.resize}{', inverted' if self.invert else ''}), pixels / 255")
        return what + (", standardised with the train split's mean and std" if self.normalised else "")

    def dataset_settings(self) -> Dict[str, Any]:
        """The data settings (`DataConfig` names) that decode another dataset like this run's data."""
        if self.kind == VECTORS:
            return {}
        return {"image_size": self.image_size, "channels": self.channels, "resize": self.resize}

    # ------------------------------------------------------------------ new images
    def image_pixels(self, image: Any) -> torch.Tensor:
        """One new image as the run stores its training images: uint8 [C, S, S].

        `image`: a path, raw bytes, or a PIL image of any mode and size; decoded to the run's
        channels and size with its resize policy (and inverted when the run's data was).
        Unreadable files raise DataError naming them.
        """
        from l2l_app.data import images

        if self.kind != IMAGES:
            raise ValueError("image_pixels: this run was trained on feature vectors, not images")
        if isinstance(image, (str, Path)):
            path = Path(image)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DataError(f"cannot read image {path}: {e.strerror or e}; check the path") from None
            arr = images.decode(data, str(path), self.mode, self.image_size, self.resize)
        elif isinstance(image, (bytes, bytearray)):
            arr = images.decode(bytes(image), "<bytes>", self.mode, self.image_size, self.resize)
        else:
            arr = images.prepare(image, self.mode, self.image_size, self.resize)
        pixels = images.to_chw([arr], self.mode, self.image_size)[0]
        return 255 - pixels if self.invert else pixels

    # ------------------------------------------------------------------ model input
    def pixel_table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 [C, 256]: the model input of pixel value v in channel c (images only): v / 255,
        or (v / 255 - mean[c]) / std[c] computed in float64 on the CPU when normalising."""
        if not self.normalised:
            return _plain_pixel_table(torch.device(device)).expand(self.channels, 256)
        mean = torch.tensor(self.mean, dtype=torch.float64)[:, None]
        std = torch.tensor(self.std, dtype=torch.float64)[:, None]
        return ((torch.arange(256, dtype=torch.float64) / 255.0 - mean) / std).float().to(device)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Raw items -> float32 model input. uint8 [..., C, H, W] or float32 [..., D] (same shape out)."""
        return input_function(self, x.device)(x)


_PIXEL_TABLES: Dict[torch.device, torch.Tensor] = {}


def _plain_pixel_table(device: torch.device) -> torch.Tensor:
    """float32 [256]: v / 255 computed on the CPU, so every device gives bit-identical pixels
    (CUDA's division by a scalar multiplies by a reciprocal and can differ in the last bit)."""
    if device not in _PIXEL_TABLES:
        _PIXEL_TABLES[device] = (torch.arange(256, dtype=torch.float32) / 255.0).to(device)
    return _PIXEL_TABLES[device]


def input_function(pre: Optional[Preprocessing], device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function raw items -> float32 model input on `device`, its tables built once.

    uint8 [..., C, H, W] -> table lookup (pixels / 255, then standardised when `pre` normalises);
    float32 [..., D] -> (x - mean) / std when `pre` normalises, else unchanged.  `pre` None: pixels / 255.
    """
    device = torch.device(device)
    table = pre.pixel_table(device) if pre is not None and pre.kind == IMAGES and pre.normalised else None
    stats = None
    if pre is not None and pre.kind == VECTORS and pre.normalised:
        stats = (torch.tensor(pre.mean, dtype=torch.float32, device=device),
                 torch.tensor(pre.std, dtype=torch.float32, device=device))

    def convert(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            if table is None:
                return _plain_pixel_table(x.device)[x.long()]
            channel = torch.arange(x.shape[-3], device=x.device).view(-1, 1, 1)  # [C, 1, 1]
            return table.to(x.device)[channel, x.long()]
        x = x.float()
        if stats is None:
            return x
        return (x - stats[0].to(x.device)) / stats[1].to(x.device)

    return convert


def channel_stats(split: SplitData, chunk: int = 4096) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel (images, pixels in [0, 1]) or per-feature mean and population std of `split`,
    accumulated in float64 in chunks (a 38,400-image split never makes a float copy of itself)."""
    x = split.images
    reduce_dims = (0, 2, 3) if x.dim() == 4 else (0,)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].double()
        if x.dtype == torch.uint8:
            part = part / 255.0
        total += part.sum(dim=reduce_dims)
        total_sq += part.pow(2).sum(dim=reduce_dims)
        count += part.numel() // x.shape[1]
    mean = total / count
    var = (total_sq / count - mean.pow(2)).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std < MIN_STD, torch.ones_like(std), std)
    return tuple(_round(v) for v in mean.tolist()), tuple(_round(v) for v in std.tolist())


def _round(v: float) -> float:
    """Statistics as written to JSON (12 significant digits: stable across machines' summation order)."""
    return float(f"{v:.12g}") if math.isfinite(v) else v


__all__: List[str] = ["Preprocessing", "channel_stats", "input_function", "MIN_STD"]
