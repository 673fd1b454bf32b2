"""Model inputs on another device are bit-identical to the CPU's.

    python benchmarks/input_parity.py --device cuda --out benchmarks/results/gpu-h100/input_parity.json

The samplers turn stored uint8 pixels into model inputs with lookup tables computed on the CPU
(`l2l_app.data.preprocess`): pixels / 255, or standardised with a run's train-split statistics.
This script checks, for grey and RGB images with and without normalisation and for feature
vectors, that `Preprocessing.to_input` on `--device` equals the CPU result bit for bit, and that
the tensor sampler's batch equals `to_input` of the images at the indices it drew.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from l2l_app.data import Preprocessing, SplitData, build_task_source  # noqa: E402
from l2l_app.data.preprocess import channel_stats  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402


def split_of(channels: int, size: int, seed: int) -> SplitData:
    """20 classes x 6 random uint8 images [C, size, size]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(20).repeat_interleave(6)
    images = torch.randint(0, 256, (labels.numel(), channels, size, size), dtype=torch.uint8, generator=g)
    return SplitData(images, labels, [f"c{i}" for i in range(20)], "synthetic", "train")


def cases():
    for channels, size in ((1, 28), (3, 84)):
        split = split_of(channels, size, seed=channels)
        plain = Preprocessing("synthetic", "image", channels, size, "stretch")
        mean, std = channel_stats(split)
        yield f"{channels}x{size} pixels/255", split, plain
        yield f"{channels}x{size} normalised", split, Preprocessing("synthetic", "image", channels, size, "stretch",
                                                                     mean, std)
    g = torch.Generator().manual_seed(7)
    vectors = SplitData(torch.randn(120, 16, generator=g) * 3 + 1, torch.arange(20).repeat_interleave(6),
                        [f"c{i}" for i in range(20)], "features", "train")
    mean, std = channel_stats(vectors)
    yield "features normalised", vectors, Preprocessing("features", "vectors", 16, 0, "stretch", mean, std)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    for name, split, pre in cases():
        cpu = pre.to_input(split.images)
        dev = pre.to_input(split.images.to(args.device)).cpu()
        source = build_task_source("tensor", split, 5, 1, 3, seed=0, device=args.device, preprocessing=pre)
        batch, support_idx, query_idx = source.sample_with_indices(8)
        sampled_ok = (torch.equal(batch.support_x.cpu(), cpu[support_idx.cpu()])
                      and torch.equal(batch.query_x.cpu(), cpu[query_idx.cpu()]))
        rows.append({"case": name, "bit_identical": bool(torch.equal(cpu, dev)),
                     "max_abs_difference": float((cpu - dev).abs().max()), "sampler_batch_identical": sampled_ok})
        print(f"{name:<24} bit-identical {rows[-1]['bit_identical']}  sampler batch identical {sampled_ok}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "environment": environment(), "cases": rows}, indent=2))
    if not all(r["bit_identical"] and r["sampler_batch_identical"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
