"""Data-parallel meta-training under `torchrun`: one process per device, exact.

`torchrun --standalone --nproc_per_node N -m l2l_app train ...` starts N copies of the command;
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...) says which one this is.  `join`
turns it into a `World` (gloo on CPU, NCCL with one GPU per local rank, cuda:LOCAL_RANK); without
torchrun it returns the one-process world, whose methods reduce to the plain calls.

Every rank draws the *same* global meta-batch of B tasks from the seeded task source (and the
same per-step random inputs, `learner.step_inputs`), keeps tasks [lo, hi) of it (`shard_bounds`:
sizes differ by at most one), and computes their meta-gradient.  One all-reduce per step (the
gradients flattened into buckets of at most `BUCKET_BYTES`, the metrics and the stop flags
riding in the last bucket) sums each rank's mean weighted by its share n_r / B, which is the mean
over the global batch: every rank then holds the same gradient and steps an identical optimiser.
The result differs from one process only in the order of a few sums.  This is the hand-written
all-reduce that learn2learn's own example uses; its DistributedDataParallel wrapper conflicts
with `clone()` (learn2learn#170), so it is not used.

Also here: the launch checks (world size vs meta-batch, the same settings and data on every rank),
the parameter checksum that catches ranks drifting apart, sharded evaluation, the collective
stop on SIGINT/SIGTERM, naming a rank that died, and torchrun restarts (`restarted_run`).
Rank 0 alone writes the run directory (`Trainer` checks `World.is_main`).
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .data.types import EpisodeBatch
from .errors import ConfigError, L2LAppError

if TYPE_CHECKING:  # pragma: no cover
    from .config import ExperimentConfig
    from .data.types import SplitData
    from .learner import MetaLearner

#: gradient bytes per all-reduce bucket (DDP's default); Conv4 (113k floats, 0.45 MB) is one bucket
BUCKET_BYTES = 25 * 2**20
#: the signals a rank passes on to every rank (Trainer's handlers); their counts ride in the all-reduce
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: how long a surviving rank waits for the others to answer after a collective failed
ANSWER_SECONDS = 10.0
#: how long a rank leaving the job waits for the others to leave too (`World.close`)
EXIT_SECONDS = 60.0
_ALIVE_KEY = "l2l_app/alive/"


class RankFailure(L2LAppError):
    """Another rank died or stopped answering, or the ranks' parameters diverged; the job stops."""


# ----------------------------------------------------------------------------- the launch
@dataclass(frozen=True)
class Launch:
    """What torchrun told this process (its environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    restart: int = 0  # TORCHELASTIC_RESTART_COUNT: 0 on the first attempt
    run_id: str = ""  # TORCHELASTIC_RUN_ID: one id per torchrun job (--rdzv-id; random with --standalone)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Optional["Launch"]:
        """The torchrun launch of this process, or None when it was not started by torchrun."""
        if "RANK" not in env and "WORLD_SIZE" not in env:
            return None
        try:
            rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
            return cls(rank, size, local, int(env.get("LOCAL_WORLD_SIZE", size)),
                       int(env.get("TORCHELASTIC_RESTART_COUNT", 0)), env.get("TORCHELASTIC_RUN_ID", ""))
        except (KeyError, ValueError):
            raise ConfigError(f"RANK={env.get('RANK')!r} and WORLD_SIZE={env.get('WORLD_SIZE')!r} in the environment "
                              f"are not a torchrun launch; start with `torchrun --nproc_per_node N -m l2l_app train "
                              f"...`, or unset them to run one process") from None


def is_main_process() -> bool:
    """False only for a torchrun rank other than 0: the processes that neither print nor write."""
    launch = Launch.from_env()
    return launch is None or launch.rank == 0


def rank_device(requested: str, launch: Launch) -> torch.device:
    """This rank's device for --device `requested`: cpu, or cuda:LOCAL_RANK (one GPU per process)."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        requested = "cuda" if cuda else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"--device {requested} under torchrun: only cpu (gloo) and cuda (NCCL) are supported; "
                          f"use --device cpu or cuda")
    if not cuda or not torch.distributed.is_nccl_available():
        raise ConfigError(f"--device {requested} under torchrun needs NCCL and one GPU per process, but "
                          f"{'CUDA is not available' if not cuda else 'this torch has no NCCL'} here; "
                          f"use --device cpu (gloo)")
    if device.index is not None and launch.local_world_size > 1:
        raise ConfigError(f"--device {requested}: under torchrun each process uses the GPU of its local rank "
                          f"(cuda:LOCAL_RANK); pass --device cuda")
    count = torch.cuda.device_count()
    index = launch.local_rank if device.index is None else device.index
    if index >= count:
        raise ConfigError(f"torchrun started {launch.local_world_size} processes on this node but it has {count} "
                          f"GPU(s); use --nproc_per_node {count} or fewer")
    return torch.device("cuda", index)


def check_tasks(meta_batch: int, world_size: int, resume: bool = False) -> None:
    """ConfigError unless every one of `world_size` ranks gets at least one of the meta-batch's tasks
    (a resumed run keeps its meta-batch: then only fewer processes help)."""
    if meta_batch < world_size:
        fix = (f"resume it with at most {meta_batch} processes (--nproc_per_node; a resumed run keeps its "
               f"meta-batch)" if resume else
               f"use --meta-batch {world_size} or more, or fewer processes (--nproc_per_node)")
        raise ConfigError(f"--meta-batch {meta_batch} is smaller than the {world_size} processes torchrun started: "
                          f"every rank needs at least one task; {fix}")


def shard_bounds(num_tasks: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Tasks [lo, hi) of rank `rank`: consecutive slices whose sizes differ by at most one (the
    first num_tasks % world_size ranks take one more).  A slice may be empty (evaluation)."""
    base, extra = divmod(num_tasks, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def task_slice(batch: EpisodeBatch, lo: int, hi: int) -> EpisodeBatch:
    """Tasks [lo, hi) of `batch` (views; every tensor keeps its trailing shape)."""
    return EpisodeBatch(batch.support_x[lo:hi], batch.support_y[lo:hi], batch.query_x[lo:hi],
                        batch.query_y[lo:hi], batch.ways, batch.shots, batch.queries)


def local_meta_gradient(learner: "MetaLearner", batch: EpisodeBatch, lo: int, hi: int) -> Dict[str, torch.Tensor]:
    """`learner.meta_gradient` on tasks [lo, hi) of the global `batch`.

    The step's random inputs (`learner.step_inputs`: Reptile's mini-batch schedule [B, ...]) are
    drawn for the whole global batch, so every rank's generator advances as one process's would,
    and sliced like the batch.  `.grad` then holds the mean over the rank's hi - lo tasks.
    """
    inputs = learner.step_inputs(batch)
    return learner.meta_gradient(task_slice(batch, lo, hi), **{k: v[lo:hi] for k, v in inputs.items()})


def buckets(tensors: Sequence[torch.Tensor], limit: int = BUCKET_BYTES) -> List[List[int]]:
    """Indices of `tensors` grouped into runs of one dtype and device of at most `limit` bytes each
    (a tensor larger than `limit` is a bucket of its own), in order."""
    out: List[List[int]] = []
    size, key = 0, None
    for i, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if not out or (t.dtype, t.device) != key or size + nbytes > limit:
            out.append([])
            size, key = 0, (t.dtype, t.device)
        out[-1].append(i)
        size += nbytes
    return out


def settings_mismatch(per_rank: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """The first setting that differs between ranks, as 'NAME is A on rank 0 but B on rank 2'; None if all agree."""
    for name in sorted(set().union(*per_rank), key=str):
        values = [s.get(name) for s in per_rank]
        bad = next((r for r, v in enumerate(values) if v != values[0]), None)
        if bad is not None:
            return f"{name} is {values[0]!r} on rank 0 but {values[bad]!r} on rank {bad}"
    return None


def split_digest(split: "SplitData") -> str:
    """A short hash of a split's classes, labels and image shape (and every 97th image's bytes)."""
    h = hashlib.sha256(repr((split.class_names, tuple(split.images.shape), str(split.images.dtype))).encode())
    h.update(split.labels.numpy().tobytes())
    h.update(split.images[::97].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def parameter_digest(params: Sequence[torch.Tensor]) -> str:
    """SHA-256 of the parameters' bytes: equal on two ranks exactly when their parameters are."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _process_gone(pid: int) -> bool:
    """True if process `pid` (on this host) has exited: no such process, or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False


# ----------------------------------------------------------------------------- the world
class World:
    """The processes of one training job and this process's place in it.

    `size` 1 without torchrun: every method is then the plain one-process operation and no
    process group exists.  `device`: this rank's device under torchrun (None: the config's).
    """

    def __init__(self, launch: Optional[Launch] = None, device: Optional[torch.device] = None) -> None:
        self.launch = launch
        self.rank = launch.rank if launch else 0
        self.size = launch.world_size if launch else 1
        self.device = device
        self.steps = 0  # all-reduced meta-steps, for messages
        self.reduce_seconds = 0.0  # wall time in the step all-reduce (flatten, reduce, unflatten)
        self.timed = False  # synchronise CUDA around the all-reduce so that reduce_seconds is exact
        self._procs: List[Tuple[str, int]] = []  # (host, pid) of every rank
        self._failed = False  # a collective failed: the process group is not torn down politely

    @property
    def distributed(self) -> bool:
        return self.launch is not None

    @property
    def device_name(self) -> Optional[str]:
        """This rank's device as --device takes it ('cuda:1'); None without torchrun (the config decides)."""
        return None if self.device is None else str(self.device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    def describe(self) -> Dict[str, Any]:
        """What run.json records about the launch."""
        out: Dict[str, Any] = {"world_size": self.size}
        if self.launch is not None and self.launch.run_id:
            out["torchrun_run_id"] = self.launch.run_id
        return out

    def shard(self, num_tasks: int) -> Tuple[int, int]:
        return shard_bounds(num_tasks, self.rank, self.size)

    # ---- the launch checks ----------------------------------------------------------------
    def check_launch(self, config: "ExperimentConfig", step: int, splits: Sequence["SplitData"]) -> None:
        """Refuse (ConfigError, before anything is written) ranks that differ in settings, starting
        step (resume), data (a hash of each split), or l2l_app/torch versions."""
        if not self.distributed:
            return
        check_tasks(config.optim.meta_batch, self.size)
        from . import __version__
        ours = {**{"--" + k.replace("_", "-"): v for k, v in config.flat().items() if k != "device"},
                "the step resumed from": step, "l2l_app": __version__, "torch": torch.__version__,
                **{f"the {s.split or 'data'} split (hash)": split_digest(s) for s in splits}}
        digest = hashlib.sha256(repr(sorted(ours.items(), key=str)).encode()).hexdigest()
        if len(set(self._gather_objects(digest, "the settings check"))) > 1:
            problem = settings_mismatch(self._gather_objects(ours, "the settings check"))
            raise ConfigError(f"the ranks were launched differently: {problem}; start every rank with the same "
                              f"command, data (a run directory on a shared filesystem to resume) and versions")

    # ---- one meta-step --------------------------------------------------------------------
    def meta_step(self, learner: "MetaLearner", batch: EpisodeBatch,
                  pending_signal: Optional[int] = None) -> Tuple[Dict[str, float], Optional[int]]:
        """The meta-gradient of the global `batch` in `.grad` of every rank, and its metrics.

        Returns (metrics as floats, the signal every rank stops for: one of STOP_SIGNALS when some
        rank has seen it, `pending_signal`, else None).  One process: `learner.meta_step(batch)`.
        """
        if not self.distributed:
            return learner.meta_step(batch), pending_signal
        lo, hi = self.shard(batch.num_tasks)
        metrics = local_meta_gradient(learner, batch, lo, hi)
        flags = [float(pending_signal == s) for s in STOP_SIGNALS]
        reduced = self.all_reduce_step(learner.meta_parameters(), metrics, (hi - lo) / batch.num_tasks, flags)
        stop = next((s for s, n in zip(STOP_SIGNALS, reduced["flags"]) if n > 0), None)
        return {k: v for k, v in reduced.items() if k != "flags"}, stop

    def all_reduce_step(self, params: Sequence[torch.Tensor], metrics: Mapping[str, torch.Tensor], weight: float,
                        flags: Sequence[float] = ()) -> Dict[str, Any]:
        """Replace each `.grad` by sum over ranks of weight_r * grad_r, in one all-reduce per bucket.

        metrics: 0-d tensors (means over the rank's tasks), reduced the same way; flags: summed
        unweighted (counts of ranks).  Returns {metric: float, 'flags': [float]}.
        """
        start = self._clock()
        grads = [p.grad for p in params if p.grad is not None]
        groups = buckets(grads)
        names = sorted(metrics)
        dtype = grads[groups[-1][0]].dtype if grads else torch.float64
        device = grads[groups[-1][0]].device if grads else (self.device or torch.device("cpu"))
        tail = torch.cat([*(torch.as_tensor(metrics[k], dtype=dtype, device=device).reshape(1) * weight for k in names),
                          torch.tensor(list(flags), dtype=dtype, device=device)])
        flats = [torch.cat([grads[i].reshape(-1) for i in g]).mul_(weight) for g in groups] or [tail[:0]]
        flats[-1] = torch.cat([flats[-1], tail])
        self._collective(lambda: [w.wait() for w in [torch.distributed.all_reduce(f, async_op=True)
                                                      for f in flats]], f"the all-reduce of step {self.steps + 1}")
        for g, flat in zip(groups, flats):
            offset = 0
            for i in g:
                n = grads[i].numel()
                grads[i].copy_(flat[offset:offset + n].view_as(grads[i]))
                offset += n
        values = flats[-1][flats[-1].numel() - tail.numel():].tolist()
        self.steps += 1
        self.reduce_seconds += self._clock() - start
        return {**dict(zip(names, values[:len(names)])), "flags": values[len(names):]}

    def any(self, flag: bool, what: str = "the stop decision") -> bool:
        """True on every rank if `flag` is true on some rank (one small all-reduce)."""
        if not self.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        self._collective(lambda: torch.distributed.all_reduce(t), what)
        return bool(t.item() > 0)

    def check_parameters(self, params: Sequence[torch.Tensor], step: int) -> None:
        """RankFailure naming the ranks whose meta-parameters differ from rank 0's (byte for byte)."""
        if not self.distributed:
            return
        digests = self._gather_objects(parameter_digest(params), "the parameter check")
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            ranks = ", ".join(map(str, bad))
            raise RankFailure(f"the meta-parameters of rank(s) {ranks} differ from rank 0's at step {step} "
                              f"(parameter checksum {digests[bad[0]][:12]} vs {digests[0][:12]}): the ranks no "
                              f"longer train the same model; run every rank on the same kind of device with the "
                              f"same versions, and resume from the last checkpoint with --resume")

    # ---- sharded evaluation ---------------------------------------------------------------
    def sharded(self, learner: "MetaLearner") -> "MetaLearner":
        """`learner` whose `query_accuracy` scores this rank's slice of each batch and gathers every
        rank's, in task order (the learner itself on one process)."""
        return learner if not self.distributed else _ShardedLearner(learner, self)  # type: ignore[return-value]

    def gather_tasks(self, local: torch.Tensor, num_tasks: int) -> torch.Tensor:
        """float64 [num_tasks]: every rank's per-task values (`local`: [hi - lo] of `shard`), in order."""
        width = -(-num_tasks // self.size)
        padded = torch.zeros(width, dtype=torch.float64, device=self.device)
        padded[:local.numel()] = local.double().to(padded.device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective(lambda: torch.distributed.all_gather(parts, padded), "the sharded evaluation")
        sizes = [hi - lo for lo, hi in (shard_bounds(num_tasks, r, self.size) for r in range(self.size))]
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    # ---- plumbing --------------------------------------------------------------------------
    def _clock(self) -> float:
        if self.timed and self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _gather_objects(self, obj: Any, what: str) -> List[Any]:
        out: List[Any] = [None] * self.size
        self._collective(lambda: torch.distributed.all_gather_object(out, obj), what)
        return out

    def _collective(self, fn: Callable[[], Any], what: str) -> Any:
        """Run a collective; when it fails, find which ranks are gone and raise RankFailure naming them."""
        try:
            return fn()
        except RuntimeError as exc:  # gloo: 'Connection closed by peer'; NCCL: communicator aborted
            self._failed = True
            raise RankFailure(self._failure_message(what, exc)) from None

    def _failure_message(self, what: str, exc: BaseException) -> str:
        missing = self._unanswered()
        cause = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", (str(exc).strip().splitlines() or [""])[0])
        cause = cause.split(". ")[0][:120] or type(exc).__name__
        who = (f"rank {missing[0]}" if len(missing) == 1 else f"ranks {', '.join(map(str, missing))}") \
            if missing else "another rank"
        return (f"{who} stopped (exited, was killed or lost its connection) during {what}; rank {self.rank} stops "
                f"too ({cause}); torchrun --max-restarts N restarts the job from the last checkpoint, or rerun the "
                f"torchrun command with --resume RUN_DIR")

    def _unanswered(self) -> List[int]:
        """Ranks that are gone: on this host, a rank's process that has exited; on other hosts, a
        rank that does not check in through the job's store within ANSWER_SECONDS (every
        survivor checks in when its collective fails).  [] when nothing can tell.

        A killed rank's connections close while its process is still exiting, so the survivors'
        collective can fail before the process is seen gone: a local rank that neither checked in
        nor is gone yet is waited for like a remote one."""
        host = socket.gethostname()
        local = {r for r, (h, _) in enumerate(self._procs) if h == host}
        others = [r for r in range(self.size) if r != self.rank]
        deadline = time.monotonic() + ANSWER_SECONDS
        try:
            store = torch.distributed.distributed_c10d._get_default_store()
            store.set(f"{_ALIVE_KEY}{self.rank}", "1")
        except Exception:  # noqa: BLE001 - the store's host may be gone too: the local processes alone
            store = None
        while True:
            gone = {r for r in local if _process_gone(self._procs[r][1])}
            late = time.monotonic() > deadline
            if store is None:  # only the processes on this host can tell: wait for one to be gone
                if gone or late or all(r not in local for r in others):
                    return sorted(gone)
            else:  # wait until every other rank is gone or has checked in
                silent = [r for r in others if r not in gone and not store.check([f"{_ALIVE_KEY}{r}"])]
                if not silent or late:
                    return sorted(gone | {r for r in silent if r not in local})
            time.sleep(0.05)

    def close(self) -> None:
        """Leave the process group (at exit) once every rank is leaving: a rank whose group is torn
        down while another still talks to it can abort in gloo's teardown.  Skipped after a failed
        collective, and when the other ranks do not arrive within EXIT_SECONDS."""
        dist = torch.distributed
        if not self.distributed or self._failed or not dist.is_initialized():
            return
        try:
            dist.barrier(async_op=True).wait(timeout=timedelta(seconds=EXIT_SECONDS))
        except Exception:  # noqa: BLE001 - another rank is gone or elsewhere: the process's end cleans up
            return
        dist.destroy_process_group()


class _ShardedLearner:
    """A learner whose `query_accuracy` is computed by slices across the ranks (see `World.sharded`)."""

    def __init__(self, learner: "MetaLearner", world: World) -> None:
        self._learner, self._world = learner, world

    def query_accuracy(self, batch: EpisodeBatch) -> torch.Tensor:
        """[B] per-task query accuracy, each task scored by one rank."""
        lo, hi = self._world.shard(batch.num_tasks)
        local = self._learner.query_accuracy(task_slice(batch, lo, hi)) if hi > lo else torch.zeros(0)
        return self._world.gather_tasks(local, batch.num_tasks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._learner, name)


class NoRunDirectory:
    """What ranks other than 0 hold in place of a `rundir.RunDirectory`: the run's path, never
    written to (staged False; commit, discard and release do nothing)."""

    staged = False

    def __init__(self, path: Path) -> None:
        self.path = self.final = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def commit(self) -> None:
        """Nothing to swap in: rank 0 holds the directory."""

    discard = release = commit


def join(device: str = "auto", meta_batch: Optional[int] = None, resume: bool = False) -> World:
    """This process's World: under torchrun, join the job's process group (gloo for --device cpu,
    NCCL for cuda, on cuda:LOCAL_RANK) unless already joined; else the one-process world.

    Bad launches (NCCL without GPUs, more processes than GPUs, a malformed environment, a
    `meta_batch` smaller than the world) raise a one-line ConfigError before any process group exists;
    `resume`: the run being resumed keeps its meta-batch (what the message may suggest).
    """
    launch = Launch.from_env()
    if launch is None:
        return World()
    if meta_batch is not None:
        check_tasks(meta_batch, launch.world_size, resume)
    dev = rank_device(device, launch)
    dist = torch.distributed
    world = World(launch, dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            store, _, _ = next(dist.rendezvous("env://", launch.rank, launch.world_size))
            if launch.restart:  # torchrun shares one store across restarts: the last attempt's keys (gloo's
                # addresses, NCCL's id) are still in it (pytorch#135712); each attempt gets its own prefix
                store = dist.PrefixStore(f"l2l_app/attempt{launch.restart}/", store)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=store, rank=launch.rank,
                                    world_size=launch.world_size, **({"device_id": dev} if dev.type == "cuda" else {}))
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"could not join the torchrun job as rank {launch.rank} of {launch.world_size} "
                              f"({str(exc).strip().splitlines()[0][:200]}); check --rdzv-endpoint / MASTER_ADDR and "
                              f"that every node runs the same command") from None
        atexit.register(world.close)
    elif dist.get_world_size() != launch.world_size:
        raise ConfigError(f"a process group of {dist.get_world_size()} ranks exists, but WORLD_SIZE is "
                          f"{launch.world_size}; destroy it first")
    world._procs = world._gather_objects((socket.gethostname(), os.getpid()), "joining the job")
    return world


def restarted_run(run_dir: Path) -> Optional[str]:
    """Under `torchrun --max-restarts`, what a restarted `train --out RUN_DIR` does with the run its
    own job created: 'resume' (it has checkpoints/last.pt) or 'overwrite' (it died before its first
    checkpoint).  None on a first attempt, outside torchrun, or when RUN_DIR belongs to another job
    (its run.json names another torchrun run id): then --out behaves as usual."""
    from .fileio import read_json
    from .rundir import RUN_INFO_FILE, checkpoint_path

    launch = Launch.from_env()
    info_file = Path(run_dir) / RUN_INFO_FILE
    if launch is None or launch.restart == 0 or not launch.run_id or not info_file.is_file():
        return None
    if read_json(info_file, "run info").get("torchrun_run_id") != launch.run_id:
        return None
    return "resume" if checkpoint_path(run_dir, "last").is_file() else "overwrite"


__all__ = ["World", "Launch", "RankFailure", "NoRunDirectory", "join", "is_main_process", "restarted_run", "shard_bounds", "task_slice",
           "local_meta_gradient", "buckets", "settings_mismatch", "parameter_digest", "BUCKET_BYTES"]
