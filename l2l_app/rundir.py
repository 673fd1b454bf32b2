"""The run directory: its layout and file names, atomic writes, the training lock, safe
replacement (`--overwrite`), and evaluation files keyed by their protocol.

Layout of a run directory::

    config.json        every resolved setting
    run.json           engine, sampler, device, environment, skipped images
    preprocessing.json how inputs are decoded and normalised (train-split statistics)
    splits.json        the classes of each split, when the dataset derives them (class folders)
    metrics.jsonl      one JSON object per training step / validation
    checkpoints/last.pt, checkpoints/best.pt
    eval-<split>-<checkpoint>-<W>w<S>s<Q>q-<E>ep-seed<N>.json   one file per evaluation protocol
    .lock              held (flock) by the process training in the directory

Rules this module enforces:
- a process trains in a run directory only while it holds the directory's lock; the lock is
  an OS file lock, so it is released when the process dies (a killed run can be resumed);
- `--overwrite` never removes the old run before the new one exists: the new run is built in
  a hidden staging folder beside it and swapped in when it writes its first checkpoint;
- every file but the append-only metrics log is written atomically (`fileio.atomic_write`);
- an evaluation records the checkpoint's step and SHA-256, so a later change of the
  checkpoint (training resumed) marks the evaluation stale.
"""
from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .config import ExperimentConfig, load_json, resolve
from .errors import ConfigError
from .fileio import file_sha256, missing_folders, nearest_existing, read_json

if TYPE_CHECKING:
    from .data import Preprocessing

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run.json"
PREPROCESSING_FILE = "preprocessing.json"
SPLITS_FILE = "splits.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
EVAL_GLOB = "eval-*.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_NAMES = ("best", "last")


#: the entries l2l-app writes into a run directory, besides EVAL_GLOB's files; anything else is
#: the user's, and stops `--overwrite` from replacing the folder
RUN_ENTRIES = (CONFIG_FILE, RUN_INFO_FILE, PREPROCESSING_FILE, SPLITS_FILE, METRICS_FILE, CHECKPOINT_DIR,
               TENSORBOARD_DIR, LOCK_FILE)


def checkpoint_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{name}.pt"


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def foreign_entries(run_dir: Path) -> List[str]:
    """What a run directory holds that l2l-app did not write (sorted; folders end in '/'):
    entries beside RUN_ENTRIES and the evaluation files, and files in checkpoints/ other than
    the checkpoints and the temporary files of their atomic writes."""
    run_dir = Path(run_dir)
    found = [p.name + "/" * p.is_dir() for p in run_dir.iterdir()
             if p.name not in RUN_ENTRIES and not fnmatch.fnmatch(p.name, EVAL_GLOB)]
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir():
        ours = {f"{name}.pt" for name in CHECKPOINT_NAMES}
        found += [f"{CHECKPOINT_DIR}/{p.name}" + "/" * p.is_dir() for p in checkpoints.iterdir()
                  if p.name not in ours and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    return sorted(found)


def enclosing_run(path: Path) -> Optional[Path]:
    """The run directory `path` lies inside (its nearest ancestor holding a run), or None."""
    for parent in Path(path).resolve().parents:
        if is_run_dir(parent):
            return parent
    return None


def check_outside(path: Path, folder: Path, flag: str, what: str, example: Optional[Path] = None) -> None:
    """ConfigError when `path` is `folder` or lies inside it (compared resolved, named as given);
    `what` names the folder in the message, `example` a path outside it to suggest."""
    resolved, outer = Path(path).resolve(), Path(folder).resolve()
    if resolved == outer or outer in resolved.parents:
        suggestion = f", e.g. {example}" if example is not None else ""
        raise ConfigError(f"{flag} {path} is inside {what} {folder}; choose a path outside it{suggestion}")


def load_config(run_dir: Path) -> ExperimentConfig:
    """The resolved config of an existing run directory (one-line ConfigError if it is not one)."""
    if not Path(run_dir).exists():
        raise ConfigError(f"{run_dir} does not exist; pass the --out directory of `l2l-app train`")
    if Path(run_dir).is_file():
        raise ConfigError(f"{run_dir} is a file, not a run directory; pass the run's folder "
                          f"({Path(run_dir).parent}), the --out directory of `l2l-app train`")
    if not is_run_dir(run_dir):
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); "
                          f"pass the --out directory of `l2l-app train`")
    return resolve(load_json(Path(run_dir) / CONFIG_FILE))


def load_preprocessing(run_dir: Path, config: Optional[ExperimentConfig] = None) -> "Preprocessing":
    """The run's `Preprocessing` (preprocessing.json); a run written before that file existed used
    its dataset's decoding with pixels / 255."""
    from .data import Preprocessing
    from .registry import DATASETS

    path = Path(run_dir) / PREPROCESSING_FILE
    if path.is_file():
        return Preprocessing.read(path)
    config = config if config is not None else load_config(run_dir)
    return Preprocessing.unnormalised(DATASETS[config.data.dataset].configured(config.data))


# ------------------------------------------------------------------------------ locking
def _lock_holder(lock_file: Path) -> str:
    """'process 1234 on host (l2l-app train ...)' from a lock file's contents."""
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        info = {}
    pid = info.get("pid", "?")
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"process {pid}{where}"


def _held_by_another(directory: Path) -> Optional[str]:
    """The holder of `directory`'s lock if another process holds it, else None. Creates nothing."""
    lock_file = Path(directory) / LOCK_FILE
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody ever trained here with a lock, or it was never taken
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(lock_file)
    finally:
        os.close(fd)  # closing drops our probe lock
    return None


def _busy_error(directory: Path, holder: str) -> ConfigError:
    return ConfigError(f"run directory {directory} is in use by {holder}, which is training in it; "
                       f"wait for it to finish or stop it first (a killed run's lock is released)")


class _Lock:
    """An exclusive flock on DIR/.lock, recording who holds it; released on close or process death."""

    def __init__(self, directory: Path) -> None:
        lock_file = Path(directory) / LOCK_FILE
        self.fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise _busy_error(directory, _lock_holder(lock_file)) from None
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": " ".join(sys.argv)[:500]})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, record.encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------ the run directory
def _contents(directory: Path) -> List[str]:
    """Entries of a directory, ignoring our own lock file."""
    return [p.name for p in Path(directory).iterdir() if p.name != LOCK_FILE]


def check_run_target(path: Path, mode: str) -> None:
    """Refuse, without touching the disk, a run directory that `mode` cannot use.

    mode: 'new' (train --out), 'overwrite' (train --out --overwrite) or 'resume' (train --resume).
    """
    path = Path(path)
    flag = "--resume" if mode == "resume" else "--out"
    # The nearest existing ancestor must be a folder we can create things in.
    existing = nearest_existing(path)
    if existing != path and not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder; choose a path under a folder")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot create folders in {existing} (permission denied); "
                          f"choose another {flag}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file; choose a directory path")
    if path.is_dir():
        holder = _held_by_another(path)
        if holder is not None:
            raise _busy_error(path, holder)
    if mode != "resume" and (outer := enclosing_run(path)) is not None:
        raise ConfigError(f"--out {path} is inside the run directory {outer}; choose a path outside any run")
    if mode == "resume":
        if not path.exists():
            raise ConfigError(f"--resume {path}: it does not exist; start a new run with --out {path}")
        if not is_run_dir(path):
            raise ConfigError(f"--resume {path}: no {CONFIG_FILE} there, so it is not a run directory; "
                              f"start a new run with --out")
        if not checkpoint_path(path, "last").is_file():
            raise ConfigError(f"--resume: no checkpoint to resume from ({CHECKPOINT_DIR}/last.pt): "
                              + _no_checkpoints(path, f"start it again with --out {path} --overwrite"))
    elif path.is_dir() and _contents(path):
        if not is_run_dir(path):
            doing = "refusing to --overwrite" if mode == "overwrite" else "--out"
            raise ConfigError(f"{doing} {path}: it holds files but is not an l2l-app run directory (no "
                              f"{CONFIG_FILE}); choose a new or empty folder")
        if mode == "new" and not list((path / CHECKPOINT_DIR).glob("*.pt")):
            raise ConfigError(_no_checkpoints(path, "pass --overwrite to start it again"))
        if mode == "new":
            raise ConfigError(f"run directory {path} already exists; pass --resume to continue it "
                              f"or --overwrite to replace it")
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(f"refusing to --overwrite {path}: it holds {shown}, which l2l-app did not write; "
                              f"move them out of the run directory first, or choose another --out")
        try:
            load_json(path / CONFIG_FILE)
        except ConfigError as exc:
            raise ConfigError(f"refusing to --overwrite {path}: its {CONFIG_FILE} is not a run's config "
                              f"({' '.join(str(exc).split())}); remove the folder yourself if it is to go, "
                              f"or choose another --out") from None


def no_checkpoint_message(path: Path, fix: str) -> str:
    """Why run `path` has no checkpoint, and `fix`; a run still training before its first
    checkpoint is named as that."""
    holder = _held_by_another(path)
    if holder is not None:
        return (f"run {path} has no checkpoint yet: {holder} is training it and writes the first at its first "
                f"validation or --checkpoint-every; wait for that")
    return _no_checkpoints(path, fix)


def _no_checkpoints(path: Path, fix: str) -> str:
    """Why run `path` has no checkpoint, and `fix`.  A run killed before its first checkpoint has
    no evaluation and logged no validation (the first validation writes best.pt); one that has
    either had its checkpoints removed, and `fix` would discard what it has."""
    evaluated = any(path.glob(EVAL_GLOB))
    if evaluated or _validated(path / METRICS_FILE):
        return (f"run directory {path} has no checkpoints, but its {'evaluations' if evaluated else 'metrics log'} "
                f"show it had some ({CHECKPOINT_DIR}/ was removed or emptied): restore {CHECKPOINT_DIR}/ from a "
                f"copy of the run to use it; or {fix}, which also replaces its metrics and evaluations")
    return f"run directory {path} holds a run that wrote no checkpoint (it was killed before its first); {fix}"


def _validated(metrics_file: Path) -> bool:
    """Whether a metrics log holds a validation row (unreadable lines are passed over)."""
    try:
        lines = metrics_file.read_text(errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            if json.loads(line).get("kind") == "val":
                return True
        except (ValueError, AttributeError):
            continue
    return False


class RunDirectory:
    """A run directory held by this process: files go to `.path`; `.final` is the user's path.

    For `--overwrite` of an existing run, `.path` is a hidden staging folder beside it until
    `commit()` (called when the first checkpoint has been written) swaps it in and removes the old
    run; `discard()` (the new run failed before that) removes the staging folder and leaves the
    old run as it was.  Open it only after every setting has been validated.
    """

    def __init__(self, final: Path, mode: str) -> None:
        check_run_target(final, mode)
        self.final = Path(final)
        self.path = self.final
        self._old_lock: Optional[_Lock] = None
        self._created: Optional[Path] = None  # the topmost folder this object created (new runs)
        self._emptied: Optional[Path] = None  # or the empty folder it started a new run in
        replacing = mode == "overwrite" and self.final.is_dir() and bool(_contents(self.final))
        try:
            if replacing:
                self._old_lock = _Lock(self.final)  # nobody may resume the old run meanwhile
                self._remove_abandoned_staging()
                self.path = self.final.parent / f".{self.final.name}.staging-{os.getpid()}"
                self.path.mkdir()
            elif mode != "resume":
                self._created = next(reversed(missing_folders(self.final)), None)  # the outermost
                self._emptied = self.final if self._created is None else None
                self.final.mkdir(parents=True, exist_ok=True)
                if _contents(self.final):  # another process created it after our check
                    raise ConfigError(f"run directory {self.final} already exists; pass --resume to "
                                      f"continue it or --overwrite to replace it")
            self._lock = _Lock(self.path)
        except OSError as exc:
            self._release_old()
            if mode == "resume":
                raise ConfigError(f"cannot write to run directory {self.path}: {exc.strerror or exc}; give yourself "
                                  f"write permission on it, or copy the run and resume the copy") from None
            raise ConfigError(f"cannot create run directory {self.path}: {exc.strerror or exc}; "
                              f"choose another --out") from None
        except ConfigError:
            self._release_old()
            raise

    @property
    def staged(self) -> bool:
        return self.path != self.final

    def commit(self) -> None:
        """Swap a staged run in for the old one (a no-op when not staged)."""
        if not self.staged:
            return
        aside = self.final.parent / f".{self.final.name}.replaced-{os.getpid()}"
        os.rename(self.final, aside)
        os.rename(self.path, self.final)
        self.path = self.final
        self._release_old()
        shutil.rmtree(aside, ignore_errors=True)

    def discard(self) -> None:
        """Undo a run that failed or stopped before its first checkpoint: remove a staged run (the
        old run stays), the folders a new run created, or what it wrote into the empty folder it was given."""
        self._lock.release()
        if self.staged:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = self.final
        elif self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
        elif self._emptied is not None:  # empty before: what is in it now is this run's
            for entry in self._emptied.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.name != LOCK_FILE:
                    entry.unlink(missing_ok=True)
        self._release_old()

    def release(self) -> None:
        self._lock.release()
        self._release_old()

    def _release_old(self) -> None:
        if self._old_lock is not None:
            self._old_lock.release()
            self._old_lock = None

    def _remove_abandoned_staging(self) -> None:
        """Staging folders of killed --overwrite runs (nobody holds their lock)."""
        for stale in self.final.parent.glob(f".{self.final.name}.staging-*"):
            if stale.is_dir() and _held_by_another(stale) is None:
                shutil.rmtree(stale, ignore_errors=True)

    # -- files ---------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint(self, name: str) -> Path:
        return checkpoint_path(self.path, name)


# ------------------------------------------------------------------------------ evaluations
def eval_file_name(split: str, checkpoint: str, ways: int, shots: int, queries: int, episodes: int,
                   seed: int, other_data: Optional[str] = None) -> str:
    """The file of one evaluation protocol, e.g. eval-test-best-5w1s15q-1000ep-seed1234.json;
    `other_data` names a cross-domain evaluation's data (eval-cub-3f9a2c-test-...): the dataset
    and a short hash of its data root, so evaluations on two copies never share a file."""
    prefix = f"{other_data}-" if other_data else ""
    return f"eval-{prefix}{split}-{checkpoint}-{ways}w{shots}s{queries}q-{episodes}ep-seed{seed}.json"


def other_data_label(dataset: str, data_root: Optional[str]) -> str:
    """'folder-3f9a2c1b' for a cross-domain evaluation on `dataset` at `data_root` (its resolved path hashed)."""
    import hashlib

    root = "" if data_root is None else str(Path(data_root).expanduser().resolve())
    return f"{dataset}-{hashlib.sha256(root.encode()).hexdigest()[:8]}"


def eval_command(run_dir: Path, protocol: Dict[str, Any]) -> str:
    """The `l2l-app eval` command that (re)computes an evaluation with this protocol."""
    p = protocol
    name = p.get("checkpoint_name") or str(p.get("checkpoint", "best")).split()[0]
    other = p.get("cross_domain")
    data = f" --dataset {other['dataset']}" + (f" --data-root {other['data_root']}" if other.get("data_root") else "") \
        if other else ""
    return (f"l2l-app eval {run_dir}{data} --split {p['split']} --checkpoint {name} --ways {p['ways']} "
            f"--shots {p['shots']} --queries {p['queries']} --episodes {p['episodes']} "
            f"--seed {p['episode_seed']}")


@dataclass
class Evaluation:
    """One eval-*.json of a run, with whether its checkpoint has changed since."""
    path: Path
    result: Dict[str, Any]
    status: str  # 'current' | 'stale' (checkpoint changed) | 'unverified' (no hash recorded, or no checkpoint)
    reason: str
    refresh: str

    @property
    def protocol(self) -> Dict[str, Any]:
        return self.result.get("protocol", {})

    @property
    def stale(self) -> bool:
        return self.status != "current"


def evaluation_status(run_dir: Path, protocol: Dict[str, Any]) -> tuple[str, str]:
    """('current' | 'stale' | 'unverified', reason) of an evaluation's checkpoint.

    Stale: the checkpoint's bytes differ from those evaluated.  Unverified: nothing to compare
    (an older eval file without a hash, or a copy of a run without its checkpoints, such as the
    records committed under benchmarks/results/runs/).
    """
    recorded = protocol.get("checkpoint_sha256")
    name = protocol.get("checkpoint_name")
    if not recorded or not name:
        return "unverified", "written by an older l2l-app: no checkpoint hash recorded"
    path = checkpoint_path(run_dir, name)
    if not path.is_file():
        return "unverified", (f"{CHECKPOINT_DIR}/{name}.pt is not here (run records kept without their "
                              f"checkpoints?), so the evaluation cannot be checked against it")
    if file_sha256(path) != recorded:
        step = protocol.get("checkpoint_step")
        return "stale", (f"{CHECKPOINT_DIR}/{name}.pt has changed since this evaluation "
                         f"(it evaluated step {step})")
    return "current", f"{CHECKPOINT_DIR}/{name}.pt unchanged (step {protocol.get('checkpoint_step')})"


def list_evaluations(run_dir: Path) -> List[Evaluation]:
    """Every evaluation file of a run, sorted by name, each with its freshness."""
    run_dir = Path(run_dir)
    out = []
    for path in sorted(run_dir.glob(EVAL_GLOB)):
        result = read_json(path, "evaluation")
        protocol = result.get("protocol", {})
        status, reason = evaluation_status(run_dir, protocol)
        try:
            refresh = eval_command(run_dir, protocol)
        except KeyError:
            refresh = f"l2l-app eval {run_dir}"
        out.append(Evaluation(path, result, status, reason, refresh))
    return out


__all__ = ["CONFIG_FILE", "RUN_INFO_FILE", "METRICS_FILE", "CHECKPOINT_DIR", "LOCK_FILE", "RunDirectory",
           "checkpoint_path", "check_run_target",
           "eval_file_name", "eval_command", "Evaluation", "evaluation_status", "list_evaluations"]
