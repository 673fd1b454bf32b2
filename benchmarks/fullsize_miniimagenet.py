"""mini-ImageNet at full size: first decode, cache size, cached load, peak memory, 1 vs 2 decode workers.

    python benchmarks/fullsize_miniimagenet.py [--data-dir /tmp/fullsize-mini] [--cores 0,1]
    -> benchmarks/results/fullsize-miniimagenet/{results.json, README.md, decode-*.log, pickles.log}
    python benchmarks/fullsize_miniimagenet.py --readme     # README.md again from results.json

The real mini-ImageNet is not available offline, so a synthetic tree of the same shape is generated
outside the repository (reused when present): the Ravi & Larochelle split's 60,000 file names and
labels (the packaged CSVs: 38,400 / 9,600 / 12,000 images of 64 / 16 / 20 classes), each an 84x84
RGB JPEG at quality 95 (the real sample's quantisation tables) of smooth random content whose detail
is drawn so that the file sizes follow the real sample's (`../shared/data/miniimagenet-sample`).

Every measurement runs in a fresh subprocess pinned to `--cores` (sched_setaffinity, OMP_NUM_THREADS):
(a) `load_splits('miniimagenet', data_root=...)` of all three splits with an empty cache (decode +
cache write; the progress output goes to a log), (b) the cache files' sizes, (c) the cached load
(median of 3 processes), (d) each process's peak RSS, (e) first loads with 1 and with 2 decode workers
(1: one thread; 2: two forked worker processes, which `images.decode_files` uses from 2,000 files on)
(2, 1, 2, 1 alternated; best of each, with CPU seconds, since other processes may share the cores),
and (f) the same splits from learn2learn's pickle layout (written from the decoded splits).  The JPEGs
are in the OS page cache (generated just before): decode times exclude disk reads.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

OUT = HERE / "results" / "fullsize-miniimagenet"
SAMPLE = REPO.parent / "shared" / "data" / "miniimagenet-sample"
SIDE, QUALITY, SEED = 84, 95, 20240601
DETAILS = [i / 20 for i in range(17)]  # 0 .. 0.8: amplitude of the fine scales (see `_image`)
SPLITS = ("train", "val", "test")
GENERATOR_VERSION = 1


# ----------------------------------------------------------------------------- the real sample


def sample_facts(sample: Path) -> Dict[str, Any]:
    """Pixel sizes, modes and file-size percentiles of the real sample's JPEGs (nothing is copied)."""
    import numpy as np
    from PIL import Image

    shapes: collections.Counter = collections.Counter()
    sizes = []
    for p in sorted((sample / "images").glob("*.jpg")):
        with Image.open(p) as img:
            shapes[f"{img.size[0]}x{img.size[1]} {img.mode}"] += 1
        sizes.append(p.stat().st_size)
    return {"folder": str(sample), "images": len(sizes), "pixel_sizes": dict(shapes),
            "file_bytes": _percentiles(np.array(sizes)), "file_sizes": sizes}


def _percentiles(values) -> Dict[str, float]:
    import numpy as np

    p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    return {"p5": float(p5), "p25": float(p25), "median": float(p50), "p75": float(p75), "p95": float(p95),
            "mean": round(float(np.mean(values)), 1)}


def _quantisation_matches(sample: Path) -> bool:
    """Whether our encoder at QUALITY writes the same quantisation tables as the sample's first JPEG."""
    from PIL import Image

    first = sorted((sample / "images").glob("*.jpg"))[0]
    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE)).save(buf, "JPEG", quality=QUALITY)
    with Image.open(first) as real, Image.open(io.BytesIO(buf.getvalue())) as ours:
        return {k: list(v) for k, v in real.quantization.items()} == {k: list(v) for k, v in ours.quantization.items()}


# ----------------------------------------------------------------------------- the synthetic tree


def _image(seed: Sequence[int], detail: float):
    """A smooth random 84x84 RGB image: random grids of 3, 8, 21 and 42 cells upsampled (bicubic),
    the two fine ones scaled by `detail` (more detail: larger JPEG)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(list(seed))

    def grid(cells: int) -> "np.ndarray":
        coarse = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8), "RGB")
        return np.asarray(coarse.resize((SIDE, SIDE), Image.Resampling.BICUBIC), dtype=np.float32) - 127.5

    pixels = 128 + 0.9 * grid(3) + 0.5 * grid(8) + detail * (0.6 * grid(21) + 0.4 * grid(42))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _jpeg_bytes(seed: Sequence[int], detail: float) -> bytes:
    buf = io.BytesIO()
    _image(seed, detail).save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def calibrate(per_detail: int = 40) -> Tuple[List[float], List[float]]:
    """(details, median JPEG bytes at each): the curve that maps a wanted file size to a detail level."""
    medians = [statistics.median(len(_jpeg_bytes((SEED, 10**6, k, i), d)) for i in range(per_detail))
               for k, d in enumerate(DETAILS)]
    return DETAILS, [float(m) for m in medians]


def _write_chunk(job: Tuple[str, List[Tuple[int, str, float]]]) -> List[int]:
    folder, items = job
    sizes = []
    for index, name, detail in items:
        data = _jpeg_bytes((SEED, index), detail)
        (Path(folder) / name).write_bytes(data)
        sizes.append(len(data))
    return sizes


def generate(data_dir: Path, sample: Dict[str, Any], processes: int) -> Dict[str, Any]:
    """The synthetic tree in `data_dir` (images/, train/val/test.csv); reused when its record matches."""
    import numpy as np

    from l2l_app.data.miniimagenet import MINIIMAGENET, read_csv

    record_path = data_dir / "generated.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("version") == GENERATOR_VERSION:
            print(f"reusing {data_dir} (generated {record['date']})", flush=True)
            return record
    rows = {s: read_csv(MINIIMAGENET.packaged_splits / f"{s}.csv") for s in SPLITS}
    details, medians = calibrate()
    rng = np.random.default_rng(SEED)
    wanted = rng.choice(np.array(sample["file_sizes"]), size=sum(len(r) for r in rows.values()))
    detail_of = np.interp(wanted, np.maximum.accumulate(medians), details)  # file size rises with detail
    shutil.rmtree(data_dir, ignore_errors=True)
    (data_dir / "images").mkdir(parents=True)
    items = [(i, name, float(detail_of[i])) for i, (name, _) in enumerate(r for s in SPLITS for r in rows[s])]
    chunks = [(str(data_dir / "images"), items[k:k + 500]) for k in range(0, len(items), 500)]
    start = time.perf_counter()
    with Pool(processes) as pool:
        sizes = [n for part in pool.imap(_write_chunk, chunks) for n in part]
    for s in SPLITS:
        shutil.copy(MINIIMAGENET.packaged_splits / f"{s}.csv", data_dir / f"{s}.csv")
    record = {"version": GENERATOR_VERSION, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quality": QUALITY,
              "images": len(sizes), "per_split": {s: {"images": len(r), "classes": len({lab for _, lab in r})}
                                                  for s, r in rows.items()},
              "file_bytes": _percentiles(np.array(sizes)), "calibration": {"detail": details, "median_bytes": medians},
              "generation_s": round(time.perf_counter() - start, 1), "processes": processes}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


# ----------------------------------------------------------------------------- measured child processes


def _rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def gil_share(data_dir: Path, count: int = 5000, repeats: int = 3) -> Dict[str, Any]:
    """What share of one thread's `images.decode` time is spent in Pillow's C decoder, which releases
    the GIL (the rest: header parsing in Python, conversion), and the Amdahl bound on the speed-up of
    2 decode threads that follows; single-threaded, so it holds whatever else runs on the machine."""
    from PIL import Image

    from l2l_app.data import images
    from l2l_app.data.miniimagenet import read_csv

    names = [name for name, _ in read_csv(data_dir / "train.csv")][:count]
    blobs = [(data_dir / "images" / name).read_bytes() for name in names]
    real_getdecoder, in_c = Image._getdecoder, [0.0]

    class TimedDecoder:
        def __init__(self, decoder: Any) -> None:
            self._decoder = decoder

        def __getattr__(self, name: str) -> Any:
            return getattr(self._decoder, name)

        def decode(self, data: bytes) -> Any:
            t = time.perf_counter()
            out = self._decoder.decode(data)
            in_c[0] += time.perf_counter() - t
            return out

    totals, shares = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for blob in blobs:
            images.decode(blob, "x", "RGB", SIDE)
        totals.append(time.perf_counter() - start)
        Image._getdecoder, in_c[0] = (lambda *a, **k: TimedDecoder(real_getdecoder(*a, **k))), 0.0
        for blob in blobs:
            images.decode(blob, "x", "RGB", SIDE)
        Image._getdecoder = real_getdecoder
        shares.append(in_c[0])
    total, share = min(totals), min(shares) / min(totals)
    return {"mode": "gil", "images": len(blobs), "us_per_image": round(total / len(blobs) * 1e6, 1),
            "c_decoder_share": round(share, 3), "two_thread_bound": round(1 / ((1 - share) + share / 2), 2)}


def child(mode: str, data_dir: Path) -> Dict[str, Any]:
    """One measurement (run in a fresh, pinned process); returns its figures."""
    import torch

    if mode == "gil":
        return gil_share(data_dir)

    from l2l_app.data import cache as split_cache
    from l2l_app.data import images, load_splits

    after_imports = _rss_mib()
    writes: List[float] = []
    if mode == "cached":  # a decode here would be a cache miss: fail loudly instead of timing it
        def no_decode(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("cache miss in the cached-load measurement")
        images.decode_files = no_decode
    else:  # time the cache writes, to split the first load into decoding and writing
        real_write = split_cache.write_cache

        def timed_write(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = real_write(*args, **kwargs)
            writes.append(time.perf_counter() - t)
            return out
        split_cache.write_cache = timed_write
    cpu_before, start = _cpu_s(), time.perf_counter()
    splits = load_splits("miniimagenet", data_root=data_dir, progress=mode != "cached")
    wall, cpu = time.perf_counter() - start, _cpu_s() - cpu_before
    n = sum(int(d.images.shape[0]) for d in splits.values())
    if mode == "make-pickles":
        return _write_pickles(splits, Path(os.environ["FULLSIZE_PICKLE_DIR"]))
    return {"mode": mode, "wall_s": round(wall, 2), "images": n, "images_per_s": round(n / wall, 1),
            "cpu_s": round(cpu, 2), "cores_busy": round(cpu / wall, 2), "cache_write_s": round(sum(writes), 2), "peak_rss_mib": _rss_mib(), "rss_after_imports_mib": after_imports,
            "shapes": {s: list(d.images.shape) for s, d in splits.items()},
            "classes": {s: d.num_classes for s, d in splits.items()},
            "checksum": {s: _digest(d) for s, d in splits.items()},
            "decode_workers": images.decode_workers(), "torch_threads": torch.get_num_threads(),
            "affinity": sorted(os.sched_getaffinity(0))}


def _digest(split: Any) -> str:
    """sha256 of a split's pixels, labels and class names (equal digests: identical splits)."""
    import hashlib

    h = hashlib.sha256(split.images.contiguous().numpy().data)
    h.update(split.labels.numpy().tobytes())
    h.update("\n".join(split.class_names).encode())
    return h.hexdigest()


def _write_pickles(splits: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """learn2learn's three pickles from decoded splits (rows in split order; class -> its rows)."""
    import pickle

    from l2l_app.data.miniimagenet import PICKLE_FILES

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for s, d in splits.items():
        class_dict = {name: d.class_indices(c).tolist() for c, name in enumerate(d.class_names)}
        payload = {"image_data": d.images.permute(0, 2, 3, 1).contiguous().numpy(), "class_dict": class_dict}
        with open(folder / PICKLE_FILES[s], "wb") as f:
            pickle.dump(payload, f, protocol=4)
    return {"mode": "make-pickles", "bytes": {s: (folder / PICKLE_FILES[s]).stat().st_size for s in splits}}


def run_child(mode: str, data_dir: Path, cores: List[int], workers: int | None, log: Path | None,
              extra_env: Dict[str, str] | None = None) -> Dict[str, Any]:
    """`child(mode)` in a fresh interpreter pinned to `cores`; progress (stderr) to `log`."""
    env = dict(os.environ, OMP_NUM_THREADS=str(len(cores)), **(extra_env or {}))
    env.pop("L2L_APP_DECODE_WORKERS", None)
    if workers is not None:
        env["L2L_APP_DECODE_WORKERS"] = str(workers)
    load_before = os.getloadavg()
    with open(log if log is not None else os.devnull, "w") as err:
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--data-dir", str(data_dir)],
                              env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
                              preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if done.returncode != 0:
        raise SystemExit(f"child {mode} failed (exit {done.returncode}); see {log}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    print(json.dumps({k: v for k, v in result.items() if k not in ("shapes", "checksum")}), flush=True)
    return result


def cache_files(root: Path) -> Dict[str, Dict[str, Any]]:
    """split -> its cache file's name and size in the data root's .cache folder."""
    out = {}
    for s in SPLITS:
        (p,) = sorted((root / ".cache").glob(f"miniimagenet-{s}-*.pt"))
        out[s] = {"file": p.name, "bytes": p.stat().st_size, "mib": round(p.stat().st_size / 2**20, 1)}
    return out


# ----------------------------------------------------------------------------- the report


def readme(r: Dict[str, Any]) -> str:
    a, c, pk, env = r["first_decode_2_workers"], r["cached_load"], r.get("pickle_layout"), r["environment"]
    counts = r["counts"]

    def row(label: str, x: Dict[str, Any]) -> str:
        return (f"| {label} | {x['wall_s']} | {x['images_per_s']:,} | {x['cpu_s']} | {x['cores_busy']} | "
                f"{x['peak_rss_mib']:,} | {x['loadavg_before'][0]} |")

    lines = [
        "# mini-ImageNet at full size (synthetic JPEGs of the real sample's sizes)",
        "",
        f"`python benchmarks/fullsize_miniimagenet.py` on {env['cpu']}, each measurement a fresh process restricted "
        f"to cores {r['cores']} (OMP_NUM_THREADS={len(r['cores'])}), {env['date']}, git {env.get('git')}.",
        f"{counts['images']:,} JPEGs (train {counts['train']['images']:,} / {counts['train']['classes']} classes, "
        f"val {counts['val']['images']:,} / {counts['val']['classes']}, test {counts['test']['images']:,} / "
        f"{counts['test']['classes']}), 84x84 RGB, quality {r['synthetic']['quality']} (the real sample's "
        f"quantisation tables); median file {r['synthetic']['file_bytes']['median']:.0f} B (real sample: "
        f"{r['sample']['file_bytes']['median']:.0f} B over {r['sample']['images']} images).  The JPEGs are in the "
        "OS page cache.  First loads = decode + cache write, with an empty cache.",
        "",
        "| measurement | wall (s) | images/s | CPU (s) | cores busy | peak RSS (MiB) | load avg before |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in (2, 1):
        for k, x in enumerate(r["decode_runs"][f"{workers}_workers"], 1):
            tag = "(a) " if x is a else ""
            lines.append(row(f"{tag}first load, {'2 decode processes' if workers > 1 else '1 decode thread'}, run {k} "
                             f"(cache write {x['cache_write_s']} s)", x))
    for k, x in enumerate(c["runs"], 1):
        lines.append(row(f"(c) cached load, run {k}", x))
    if pk:
        lines.append(row(f"(f) learn2learn pickles ({pk['pickle_gib']} GiB), empty cache", pk["first"]))
    lines += [
        "",
        f"(c) cached load of all three splits: median {c['wall_s']} s of {c['wall_s_runs']}.",
        f"(e) parallel gain: best 1-thread {r['decode_best_wall_s']['1_workers']} s / best 2-process "
        f"{r['decode_best_wall_s']['2_workers']} s = {r['parallel_speedup']}x.  'cores busy' = CPU s / wall s of "
        "the measured (parent) process; the decode processes' CPU time is not in it.  The load average before "
        "each run counts the other processes sharing this machine's 2 cores.",
        f"Why processes: threads could gain at most {r['gil_analysis']['two_thread_bound']}x here: one thread "
        f"spends {r['gil_analysis']['us_per_image']} us per image in `images.decode`, of which only "
        f"{100 * r['gil_analysis']['c_decoder_share']:.0f}% in Pillow's C decoder (GIL released); the rest "
        "(JPEG header parsing in Python, conversion) holds the GIL (Amdahl bound, measured single-threaded).",
        f"(d) peak RSS (of the measured process; decode processes hold one chunk of 256 images each) includes "
        f"~{a['rss_after_imports_mib']:.0f} MiB of interpreter and imports (torch, PIL).",
        "(b) cache on disk: " + ", ".join(f"{s} {v['mib']} MiB" for s, v in r["cache"].items())
        + f" (total {r['cache_total_mib']} MiB: uint8 [N, 3, 84, 84] per split).",
        "",
        "All decodes (1 thread or 2 processes), the cached loads and the pickle layout gave identical tensors "
        "(sha256).",
        "Progress output of the first loads: `decode-*.log`, `pickles.log`; all figures and machine facts: "
        "`results.json`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/fullsize-mini"))
    ap.add_argument("--pickle-dir", type=Path, default=Path("/tmp/fullsize-mini-l2l"))
    ap.add_argument("--cores", default="0,1", help="CPU cores the measured processes may use")
    ap.add_argument("--no-pickles", action="store_true", help="skip (f), learn2learn's pickle layout")
    ap.add_argument("--readme", action="store_true", help="only rewrite README.md from results.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.readme:
        (OUT / "README.md").write_text(readme(json.loads((OUT / "results.json").read_text())))
        return
    data_dir = args.data_dir.resolve()
    if args.child is not None:
        print(json.dumps(child(args.child, data_dir)))
        return
    if data_dir == REPO or REPO in data_dir.parents:
        raise SystemExit(f"--data-dir {data_dir} is inside the repository; pass a folder outside it")
    cores = [int(c) for c in args.cores.split(",")]
    from l2l_app.runtime import environment

    sample = sample_facts(SAMPLE)
    synthetic = generate(data_dir, sample, processes=len(cores))
    OUT.mkdir(parents=True, exist_ok=True)

    # First loads with an empty cache: 2, 1, 2, 1 decode workers (alternated, so that load from other
    # processes on a shared machine hits both); the first is (a), the best of each count gives (e).
    decodes: Dict[int, List[Dict[str, Any]]] = {1: [], 2: []}
    for workers in (2, 1, 2, 1):
        shutil.rmtree(data_dir / ".cache", ignore_errors=True)
        run = len(decodes[workers]) + 1
        log = OUT / f"decode-{workers}worker{'s' if workers > 1 else ''}-run{run}.log"
        decodes[workers].append(run_child("decode", data_dir, cores, workers, log))
    two, one = decodes[2][0], decodes[1][0]
    cache = cache_files(data_dir)
    cached_runs = [run_child("cached", data_dir, cores, None, None) for _ in range(3)]
    digests = {json.dumps(x["checksum"], sort_keys=True) for x in decodes[1] + decodes[2] + cached_runs}
    assert len(digests) == 1, "1 and 2 decode workers (or the cache) gave different tensors"

    gil = run_child("gil", data_dir, cores, None, None)
    wall = [x["wall_s"] for x in cached_runs]
    best = {w: min(runs, key=lambda x: x["wall_s"]) for w, runs in decodes.items()}
    result: Dict[str, Any] = {
        "environment": environment(), "cores": cores, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "data_dir": str(data_dir),
        "counts": {"images": synthetic["images"], **synthetic["per_split"]},
        "sample": {k: v for k, v in sample.items() if k != "file_sizes"},
        "synthetic": {**synthetic, "quantisation_tables_match_sample": _quantisation_matches(SAMPLE)},
        "first_decode_2_workers": two, "first_decode_1_worker": one,
        "decode_runs": {f"{w}_workers": runs for w, runs in decodes.items()},
        "decode_best_wall_s": {f"{w}_workers": best[w]["wall_s"] for w in decodes},
        "parallel_speedup": round(best[1]["wall_s"] / best[2]["wall_s"], 2),
        "parallel_speedup_note": "best 1-thread wall / best 2-process wall, each of 2 runs with an empty cache",
        "gil_analysis": gil,
        "cache": cache, "cache_total_mib": round(sum(v["bytes"] for v in cache.values()) / 2**20, 1),
        "cached_load": {"wall_s": statistics.median(wall), "wall_s_runs": wall,
                        "peak_rss_mib": max(x["peak_rss_mib"] for x in cached_runs), "runs": cached_runs},
    }
    if not args.no_pickles:
        made = run_child("make-pickles", data_dir, cores, None, None,
                         {"FULLSIZE_PICKLE_DIR": str(args.pickle_dir.resolve())})
        first = run_child("decode", args.pickle_dir.resolve(), cores, None, OUT / "pickles.log")
        assert first["checksum"] == two["checksum"], "the pickle layout gave other pixels than the JPEGs"
        result["pickle_layout"] = {"dir": str(args.pickle_dir.resolve()), "pickle_bytes": made["bytes"],
                                   "pickle_gib": round(sum(made["bytes"].values()) / 2**30, 2), "first": first,
                                   "identical_to_jpeg_layout": True}
    (OUT / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "README.md").write_text(readme(result))
    print(f"written {OUT / 'results.json'} and {OUT / 'README.md'}")


if __name__ == "__main__":
    main()
