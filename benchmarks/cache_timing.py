"""Omniglot decode-and-cache time vs cached load time.

    python benchmarks/cache_timing.py     # -> benchmarks/results/cache_timing.json

Cold: every split decoded from the bundled zips (32,460 PNGs, resized to 28x28) and cached,
into a fresh temporary cache folder.  Warm: `load_split` of each split from that cache.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from l2l_app.data import dataset_spec, load_split, load_splits  # noqa: E402
from l2l_app.runtime import environment  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="l2l_cache_timing_"))
    try:
        root = work / "omniglot"
        shutil.copytree(dataset_spec("omniglot").default_root, root, ignore=shutil.ignore_patterns(".cache"))
        os.environ["L2L_APP_CACHE_DIR"] = str(work / "fallback-cache")
        start = time.perf_counter()
        cold = load_splits("omniglot", data_root=root, progress=False)
        cold_s = time.perf_counter() - start
        warm = {}
        for split in ("train", "val", "test"):
            start = time.perf_counter()
            data = load_split("omniglot", split, data_root=root, progress=False)
            warm[split] = round(time.perf_counter() - start, 4)
            assert data.images.shape == cold[split].images.shape
        row = {"cold_all_splits_s": round(cold_s, 2), "warm_s": warm,
               "images": sum(int(d.images.shape[0]) for d in cold.values()),
               "cache_mb": round(sum(f.stat().st_size for f in (root / ".cache").glob("*.pt")) / 2**20, 1),
               "environment": environment(), "loadavg": os.getloadavg()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = HERE / "results" / "cache_timing.json"
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps({k: row[k] for k in ("cold_all_splits_s", "warm_s", "images", "cache_mb")}))


if __name__ == "__main__":
    main()
