"""Timing harness: one meta-training step of each engine, in one process, on the same episodes.

Implementations (``--impl``):

* ``loop``: the algorithm's loop learner (learn2learn, one task at a time), the reference and the baseline;
* ``torchmeta``: `l2l_app.bench.torchmeta_style`, a re-implementation of Torchmeta's way of
  computing MAML (Torchmeta itself pins torch<1.10); MAML/FOMAML only;
* ``batched``: the algorithm's batched learner (torch.func); ``batched-compiled``: the same under
  `torch.compile`; ``batched-cudagraphs``: under `torch.compile(mode="reduce-overhead")` (CUDA
  graphs of the compiled region; GPU only in practice).  A compiled impl's first call,
  compilation included, is reported as ``compile_s``.
* ``batched-captured``: the whole meta-gradient captured as one CUDA graph and replayed
  (`engine.graphs.CapturedMetaGradient`, what training uses on a GPU); ``batched-compiled-captured``:
  the compiled kernels inside that graph.  Its first calls run eagerly (warm-up), the capture
  happens during the warm-up calls, and its gradient column is measured on a replay.
* ``batched-captured-step`` and ``batched-compiled-captured-step`` (end to end only): the whole
  training step -- the tensor sampler's gather, the meta-gradient, clipping and the optimiser
  step (Adam fused, with its step count on the device) -- as one CUDA graph
  (`engine.graphs.CapturedTrainingStep`, what training uses on a GPU where it can).

Modes: ``compute only`` times the meta-gradient on one fixed meta-batch; ``end to end`` times what
a training step does: draw the meta-batch (the impl's sampler), the meta-gradient, gradient
clipping when the workload clips, and the algorithm's optimiser step.  ``--cudnn-benchmark``
turns cuDNN's autotuner on for every impl, ``--conv-impl`` picks how every convolution computes
(native, channels-last or unfold: `backbones.conv`); both are recorded in bench.json's settings.

Every implementation starts from a deep copy of one initialised model and sees the same
meta-batch.  Its first call gives the meta-gradient, compared with the loop's (relative L2 over
the meta-parameters but the conv biases directly before batch norm, whose exact gradient is zero:
`backbones.bn_invariant_biases`);
then ``warmup`` untimed calls and ``repeats`` timed ones.  Each timed call is bracketed by
`torch.cuda.synchronize` on a GPU, so host launch overhead and device time are both counted
(wall time per meta-step, what training sees).

Memory: on CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (per impl).
On CPU, `resource.getrusage` only gives the process-lifetime peak RSS (``maxrss_lifetime_mb``:
it can only grow, so a later impl inherits an earlier impl's peak); the per-impl figure
``peak_mem_mb`` is therefore the highest RSS sampled from /proc/self/statm by a background thread
every few ms during that impl's calls.  Same process, so same episodes and weights for every impl.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

import torch

from .. import runtime
from ..backbones import bn_invariant_biases
from ..config import ExperimentConfig, resolve, validate, with_overrides
from ..data import EpisodeBatch, SplitData, build_task_source
from ..data.types import IMAGES
from ..errors import ConfigError
from ..engine.graphs import CapturedMetaGradient, CapturedTrainingStep
from ..experiment import build_learner, build_model, build_optimizer, load_config_split
from ..fileio import check_output_folder, make_folder, staged_output
from ..learner import apply_meta_gradient
from ..registry import DATASETS
from . import torchmeta_style

IMPLS = ("loop", "torchmeta", "batched", "batched-compiled", "batched-cudagraphs", "batched-captured",
         "batched-compiled-captured", "batched-captured-step", "batched-compiled-captured-step")
#: torch.compile mode of each compiled impl
COMPILE_MODES = {"batched-compiled": "default", "batched-cudagraphs": "reduce-overhead",
                 "batched-compiled-captured": "default", "batched-compiled-captured-step": "default"}
#: the impls whose meta-gradient is one captured CUDA graph (engine.graphs)
CAPTURED = ("batched-captured", "batched-compiled-captured")
#: the impls whose whole training step is one captured CUDA graph (end to end only)
WHOLE_STEP = ("batched-captured-step", "batched-compiled-captured-step")
SWEEPABLE = {"meta-batch": "meta_batch", "inner-steps": "inner_steps"}


# ------------------------------------------------------------------------------ pure timing logic
def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, sync: Optional[Callable[[], None]] = None,
               clock: Callable[[], float] = time.perf_counter) -> List[float]:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; milliseconds per timed call.

    `sync` (e.g. `torch.cuda.synchronize`) is called after every call and before each timed start,
    so asynchronous device work is inside the interval it belongs to.  `clock` returns seconds.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
        sync()
    times: List[float] = []
    for _ in range(repeats):
        sync()
        start = clock()
        fn()
        sync()
        times.append((clock() - start) * 1000.0)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarise(times: Sequence[float]) -> Dict[str, float]:
    """{median, p10, p90, mean, min, max, n} of per-call times (ms)."""
    return {"median": percentile(times, 50), "p10": percentile(times, 10), "p90": percentile(times, 90),
            "mean": sum(times) / len(times), "min": min(times), "max": max(times), "n": len(times)}


def speedup(baseline_ms: Optional[float], ms: Optional[float]) -> Optional[float]:
    """How many times faster than the baseline (baseline / ms); None if either is missing."""
    if baseline_ms is None or ms is None or ms <= 0:
        return None
    return baseline_ms / ms


def relative_l2(grads: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor],
                skip: Collection[str] = ()) -> float:
    """||g - ref|| / ||ref|| over all named tensors but `skip` (in float64); names must match."""
    if set(grads) != set(reference):
        missing = sorted(set(reference) ^ set(grads))
        raise ValueError(f"gradient names differ: {missing[:4]}")
    names = [k for k in reference if k not in skip]
    num = sum(float((grads[k].double().cpu() - reference[k].double().cpu()).pow(2).sum()) for k in names)
    den = sum(float(reference[k].double().cpu().pow(2).sum()) for k in names)
    return math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)


# ------------------------------------------------------------------------------ memory
class RssSampler:
    """Highest resident set size (bytes) seen by a background thread while active (Linux /proc)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def current(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.current())


def maxrss_lifetime_mb() -> float:
    """Process-lifetime peak RSS (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


class MemoryMeter:
    """Peak memory of a block: CUDA allocator peak on a GPU, sampled RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: Optional[float] = None
        self.start_mb: Optional[float] = None
        self._rss: Optional[RssSampler] = None

    def __enter__(self) -> "MemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._rss = RssSampler().__enter__()
            self.start_mb = self._rss.peak / 2**20
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._rss is not None:
            self._rss.__exit__(*exc)
            self.peak_mb = self._rss.peak / 2**20


# ------------------------------------------------------------------------------ building the impls
@dataclass
class BenchSettings:
    """What to time: the workload (as a training run would set it) and how to time it.

    algorithm: the algorithm's own settings by flat name (e.g. {"inner_steps": 5}); the rest
    from its defaults.
    """

    algo: str = "maml"
    dataset: str = "omniglot"
    data_root: Optional[str] = None
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 32
    algorithm: Dict[str, Any] = field(default_factory=dict)
    hidden: int = 64
    backbone: str = "conv4"
    impls: Tuple[str, ...] = IMPLS
    device: str = "auto"
    warmup: Optional[int] = None
    repeats: Optional[int] = None
    with_sampler: bool = False
    synthetic: bool = False
    tf32: bool = False
    cudnn_benchmark: bool = False
    conv_impl: str = "native"
    seed: int = 0
    sweeps: Dict[str, List[int]] = field(default_factory=dict)
    #: the recipe whose training workload this is (`recipe_workload`), for the record
    recipe: Optional[str] = None


#: the BenchSettings fields that make the workload (what `recipe_workload` sets)
WORKLOAD_FIELDS = ("algo", "dataset", "ways", "shots", "queries", "meta_batch", "hidden", "backbone", "algorithm")


def recipe_workload(name: str) -> Dict[str, Any]:
    """The meta-step recipe `name` trains, as BenchSettings fields: its algorithm with all its own
    settings, dataset, backbone, filters, meta-batch, and the *training* episode shape
    (train_ways/shots/queries), so a bench and a training run of the recipe time the same step."""
    from ..config import compose

    config = resolve(compose({}, recipe=name))
    own = {n: getattr(config.algorithm, n) for n in config.spec.setting_names()}
    return dict(algo=config.algo, dataset=config.data.dataset, ways=config.train_ways, shots=config.train_shots,
                queries=config.train_queries, meta_batch=config.optim.meta_batch, hidden=config.model.hidden,
                backbone=config.model.backbone, algorithm=own)


def parse_impls(text: str) -> Tuple[str, ...]:
    impls = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [i for i in impls if i not in IMPLS]
    if bad or not impls:
        raise ConfigError(f"--impl {text!r}: unknown {', '.join(bad) or 'empty list'}; choose from "
                          f"{', '.join(IMPLS)} (comma-separated)")
    return impls


def parse_sweep(text: str) -> Tuple[str, List[int]]:
    """'meta-batch=1,4,16' -> ('meta-batch', [1, 4, 16])."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or name not in SWEEPABLE:
        raise ConfigError(f"--sweep {text!r}: use NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}")
    try:
        vals = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep {text!r}: values must be whole numbers, e.g. {name}=1,4,16") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"--sweep {text!r}: give at least one value, each >= 1")
    return name, vals


def experiment_config(s: BenchSettings, **changes: Any) -> ExperimentConfig:
    """The training config whose meta-step is timed (resolved: every derived value filled in)."""
    overrides = dict(algo=s.algo, dataset=s.dataset, data_root=s.data_root, ways=s.ways, shots=s.shots,
                     queries=s.queries, meta_batch=s.meta_batch, hidden=s.hidden, backbone=s.backbone,
                     seed=s.seed, tf32=s.tf32, conv_impl=s.conv_impl, **s.algorithm)
    overrides.update(changes)
    return resolve(validate(with_overrides(ExperimentConfig(), overrides)))


def synthetic_split(dataset: str, ways: int, shots: int, queries: int, seed: int) -> SplitData:
    """Random uint8 images of the dataset's shape: 2*ways classes x (shots+queries) images."""
    spec = DATASETS[dataset]
    if spec.kind != IMAGES:
        raise ConfigError(f"--synthetic makes random images, but --dataset {dataset} holds feature vectors of a "
                          f"length read from the data; drop --synthetic and pass --data-root")
    classes, per_class = max(2 * ways, ways + 1), shots + queries
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, spec.in_channels, spec.image_size, spec.image_size),
                           dtype=torch.uint8, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return SplitData(images, labels, [f"synthetic{c:03d}" for c in range(classes)], dataset, "train (synthetic)")


def build_impl(impl: str, config: ExperimentConfig, model: torch.nn.Module):
    """A fresh learner for `impl` on a deep copy of `model`; (learner, None) or (None, reason to skip)."""
    model = copy.deepcopy(model)
    if impl == "loop":
        return build_learner(config, model, "loop"), None
    if impl == "torchmeta":
        return torchmeta_style.build(config, model)
    if config.spec.batched is None:
        return None, f"not applicable: {config.algo} has only the loop engine"
    return build_learner(config, model, "batched", compile=COMPILE_MODES.get(impl, False) or False), None


def sampler_kind(impl: str) -> str:
    """The episode sampler each impl uses end to end: on-device tensors for batched, learn2learn otherwise."""
    return "tensor" if impl.startswith("batched") else "l2l"


def _grads(learner) -> Dict[str, torch.Tensor]:
    return {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for k, p in learner.named_meta_parameters()}


Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """Holds the data, the initial model and the fixed meta-batches; measures impls on demand."""

    def __init__(self, s: BenchSettings, progress: Progress = _stderr) -> None:
        self.s = s
        self.progress = progress
        self.device = runtime.resolve_device(s.device)
        runtime.set_tf32(s.tf32)
        runtime.set_cudnn_benchmark(s.cudnn_benchmark)
        if s.warmup is None:
            s.warmup = 2 if self.device.type == "cpu" else 5
        if s.repeats is None:
            s.repeats = 5 if self.device.type == "cpu" else 30
        self.config = experiment_config(s)
        self.split = (synthetic_split(s.dataset, s.ways, s.shots, s.queries, s.seed) if s.synthetic
                      else load_config_split(self.config, "train", progress=False))
        runtime.seed_everything(s.seed)
        self.model = build_model(self.config, self.split.input_shape).to(self.device)
        self._batches: Dict[int, EpisodeBatch] = {}

    def batch(self, meta_batch: int) -> EpisodeBatch:
        """The fixed meta-batch of that size (learn2learn sampler, seeded): every impl gets this one."""
        if meta_batch not in self._batches:
            src = build_task_source("l2l", self.split, self.s.ways, self.s.shots, self.s.queries,
                                    seed=self.s.seed, device=self.device)
            self._batches[meta_batch] = src.sample(meta_batch)
        return self._batches[meta_batch]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, impl: str, config: ExperimentConfig, end_to_end: bool = False,
                reference: Optional[Dict[str, torch.Tensor]] = None, label: str = "") -> Dict[str, Any]:
        """Time one impl on `config`'s meta-batch size; returns a result dict (status ok/skipped/error)."""
        mb = config.optim.meta_batch
        out: Dict[str, Any] = {"impl": impl, "mode": "end to end" if end_to_end else "compute only",
                               "meta_batch": mb, "inner_steps": getattr(config.algorithm, "inner_steps", None)}
        if impl in WHOLE_STEP and not end_to_end:
            out.update(status="skipped", note="end to end only: it captures the whole training step")
            self.progress(f"[bench] {label}{impl:<17} skipped in compute-only mode (end to end only)")
            return out
        try:
            learner, skip = build_impl(impl, config, self.model)
        except Exception as exc:  # e.g. the batched engine unavailable: report, don't abort the bench
            learner, skip = None, f"error building: {type(exc).__name__}: {exc}"
            out["status"] = "error"
        if learner is None:
            out.setdefault("status", "skipped")
            out["note"] = skip
            self.progress(f"[bench] {label}{impl:<17} {out['status']}: {skip}")
            return out
        batch = self.batch(mb)
        meta_gradient = CapturedMetaGradient(learner) if impl in CAPTURED else learner.meta_gradient
        fn: Callable[[], Any]
        if end_to_end:
            source = build_task_source(sampler_kind(impl), self.split, self.s.ways, self.s.shots,
                                       self.s.queries, seed=self.s.seed, device=self.device)
            out["sampler"] = sampler_kind(impl)
            whole = impl in WHOLE_STEP
            optimizer, _ = build_optimizer(config, learner, capturable=whole and self.device.type == "cuda")
            clip = config.optim.grad_clip
            if whole:
                fn = CapturedTrainingStep(learner, source, mb, optimizer, clip)
            else:
                def fn() -> None:
                    meta_gradient(source.sample(mb))
                    apply_meta_gradient(learner, optimizer, clip)
        else:
            fn = lambda: meta_gradient(batch)  # noqa: E731
        try:
            with MemoryMeter(self.device) as mem:
                self.sync()
                replayed = impl in CAPTURED and not end_to_end  # its gradient is checked on a replay
                # the learner's generators before the first call draws (the replay redraws the same)
                drawn = copy.deepcopy(learner.extra_state()) if replayed else None
                start = time.perf_counter()
                metrics = learner.meta_step(batch)  # first call: gradient check (and compilation)
                self.sync()
                first_ms = (time.perf_counter() - start) * 1000.0
                grads = _grads(learner)
                times = time_calls(fn, self.s.warmup, self.s.repeats, self.sync)
                if replayed:  # the gradient of a replay, not of the eager call,
                    learner.load_extra_state(drawn)  # with the first call's random draws (Reptile's schedule)
                    meta_gradient(batch)
                    self.sync()
                    grads = _grads(learner)
                    out["captured"] = getattr(meta_gradient, "captured", False)
                if impl in WHOLE_STEP:
                    out["captured"] = fn.captured
                if out.get("captured") and self.device.type != "cuda":
                    out["note"] = ("no CUDA graph on a CPU: the step's eager stand-in (the capture protocol, "
                                   "replayed eagerly)")
        except Exception as exc:
            out.update(status="error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            self.progress(f"[bench] {label}{impl:<17} error: {out['note']}")
            return out
        stats = summarise(times)
        out.update(status="ok", times_ms=[round(t, 4) for t in times], first_call_ms=round(first_ms, 3),
                   **{f"{k}_ms" if k != "n" else "repeats": v for k, v in stats.items()},
                   tasks_per_s=mb / (stats["median"] / 1000.0), peak_mem_mb=mem.peak_mb,
                   mem_before_mb=mem.start_mb,
                   memory_kind="cuda max_memory_allocated" if self.device.type == "cuda"
                   else "peak RSS sampled during this impl",
                   loss=metrics.get("loss"))
        if self.device.type != "cuda":
            out["maxrss_lifetime_mb"] = maxrss_lifetime_mb()
        if impl in COMPILE_MODES:
            out["compile_s"] = getattr(learner, "compile_seconds", None) or first_ms / 1000.0
        out["_grads"] = grads
        if reference is not None:
            out["grad_rel_l2_vs_loop"] = relative_l2(grads, reference, skip=bn_invariant_biases(self.model))
        mem_txt = f"{mem.peak_mb:.0f} MiB" if mem.peak_mb is not None else "n/a"
        self.progress(f"[bench] {label}{impl:<17} {out['mode']:<12} mb={mb:<3} steps={out['inner_steps'] or '-':<2} "
                      f"median {stats['median']:9.2f} ms (p10 {stats['p10']:.2f}, p90 {stats['p90']:.2f})  "
                      f"{out['tasks_per_s']:8.1f} tasks/s  mem {mem_txt}")
        return out


def _finish(results: List[Dict[str, Any]]) -> None:
    """Speed-ups over the loop of the same mode; drop the gradient tensors."""
    base = {r["mode"]: r.get("median_ms") for r in results if r["impl"] == "loop" and r.get("status") == "ok"}
    for r in results:
        r.pop("_grads", None)
        if r.get("status") == "ok":
            r["speedup_vs_loop"] = speedup(base.get(r["mode"]), r["median_ms"])


#: the files that say a folder holds a bench's results (replaced only with `overwrite`)
BENCH_RESULTS = ("bench.json", "bench.md")


def run_bench(s: BenchSettings, out_dir: Path, progress: Progress = _stderr, overwrite: bool = False) -> Dict[str, Any]:
    """Measure every impl (and every sweep), write bench.json, bench.md and sweep plots into `out_dir`.

    Refused before anything is loaded or timed when `out_dir` cannot be written or (without
    `overwrite`) already holds a bench; a refused bench creates nothing.  `out_dir` is created at
    the first measurement (bench.partial.json); an earlier bench's files there are replaced only
    once the new ones are written.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, BENCH_RESULTS, overwrite, "bench")
    bench = Bench(s, progress)
    impls = list(s.impls)
    if "loop" in impls:  # the loop is the reference for gradients and speed-ups: measure it first
        impls.remove("loop")
        impls.insert(0, "loop")
    modes = [False, True] if s.with_sampler else [False]
    # every refusal before anything is timed or written: the sweeps' settings, and a bench with nothing to time
    sweep_configs = {name: [(v, experiment_config(s, **{SWEEPABLE[name]: v})) for v in values]
                     for name, values in s.sweeps.items()}
    check_something_runs(bench, impls, modes)
    bench.batch(s.meta_batch)  # the episode shape against the data (e.g. --ways above its classes)
    results: List[Dict[str, Any]] = []
    for end_to_end in modes:
        reference = None
        for impl in impls:
            r = bench.measure(impl, bench.config, end_to_end, reference)
            if impl == "loop" and r.get("status") == "ok":
                reference = r["_grads"]
            results.append(r)
            _write_partial(out_dir, results)
        _finish(results)
    sweeps: Dict[str, List[Dict[str, Any]]] = {}
    for name, configs in sweep_configs.items():
        rows: List[Dict[str, Any]] = []
        for v, config in configs:
            reference = None
            for impl in impls:
                r = bench.measure(impl, config, False, reference, label=f"{name}={v} ")
                if impl == "loop" and r.get("status") == "ok":
                    reference = r["_grads"]
                r["value"] = v
                rows.append(r)
            if name == "meta-batch" and v != s.meta_batch:
                bench._batches.pop(v, None)  # free the sweep's episodes
            _finish(rows[-len(impls):])
        sweeps[name] = rows
    env = runtime.environment()
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items() if k != "algorithm"}
    report: Dict[str, Any] = {
        # the algorithm's settings as resolved, flat like the other settings
        "settings": {**settings, **dataclasses.asdict(bench.config.algorithm),
                     "label": bench.config.algo_label},
        "device": str(bench.device),
        "device_name": env["cuda"] if bench.device.type == "cuda" else env["cpu"],
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": {"requested": s.tf32, "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                 "applies": bench.device.type == "cuda"},
        "data": "synthetic random images" if s.synthetic else f"{s.dataset} train split (load_split)",
        "environment": env,
        "timing": ("wall time per meta-step, torch.cuda.synchronize before and after each timed call on CUDA; "
                   "compute only: the meta-gradient of one fixed meta-batch (fills .grad; no optimiser step); "
                   "end to end: drawing the meta-batch, the meta-gradient and the optimiser step; first call "
                   f"(gradient check, compilation) excluded, then {s.warmup} warm-up and {s.repeats} timed calls "
                   f"(a captured impl is captured during its warm-up)"),
        "memory": ("torch.cuda.max_memory_allocated per impl (reset before each)" if bench.device.type == "cuda"
                   else "peak RSS sampled from /proc/self/statm during each impl's calls (same process); "
                        "maxrss_lifetime_mb is getrusage's process-lifetime peak, which only grows"),
        "torchmeta_note": "torchmeta = l2l_app.bench.torchmeta_style, a re-implementation of Torchmeta's MAML "
                          "computation (MetaModule forward(x, params), gradient_update_parameters, one task at "
                          "a time); the torchmeta package itself requires torch<1.10",
        "results": results,
        "sweeps": sweeps,
    }
    from ..plots import plot_sweep
    from ..report import bench_markdown
    with staged_output(out_dir) as new:  # the new files first, then each moved over its earlier namesake
        plots = [plot_sweep(name, rows, new / f"sweep-{name}.png") for name, rows in sweeps.items()]
        report["plots"] = [p.name for p in plots]
        (new / "bench.json").write_text(_json(report))
        (new / "bench.md").write_text(bench_markdown(report))
    for old_plot in out_dir.glob("sweep-*.png"):  # an earlier bench's, in this folder
        if old_plot.name not in report["plots"]:
            old_plot.unlink()
    (out_dir / "bench.partial.json").unlink(missing_ok=True)
    return report


def check_something_runs(bench: Bench, impls: List[str], modes: List[bool]) -> None:
    """ConfigError, before anything is timed, when no impl applies in any mode (each would be skipped)."""
    reasons = []
    for impl in impls:
        if all(impl in WHOLE_STEP and not end_to_end for end_to_end in modes):
            reasons.append(f"{impl} times the whole training step (add --with-sampler)")
            continue
        try:
            learner, skip = build_impl(impl, bench.config, bench.model)
        except Exception as exc:  # noqa: BLE001 - reported as a reason
            learner, skip = None, f"{type(exc).__name__}: {exc}"
        if learner is not None:
            return
        reasons.append(f"{impl}: {skip}")
    raise ConfigError(f"nothing to time: {'; '.join(reasons)}; choose other --impl values")


def _write_partial(out_dir: Path, results: List[Dict[str, Any]]) -> None:
    """bench.partial.json after every measurement, so an interrupted bench keeps what it measured."""
    rows = [{k: v for k, v in r.items() if k != "_grads"} for r in results]
    make_folder(out_dir)  # created at the first measurement: a refused bench leaves no folder
    (out_dir / "bench.partial.json").write_text(_json({"results": rows}))


def _json(obj: Any) -> str:
    import json
    return json.dumps(obj, indent=2, default=str) + "\n"
