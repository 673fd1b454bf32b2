"""Data-parallel meta-training under torchrun (`l2l_app.distributed`).

* In-process: shard bounds, buckets, the launch checks (a meta-batch smaller than the world,
  NCCL without a GPU, more processes than GPUs, a malformed environment, settings that differ
  across ranks), which run a torchrun restart resumes.
* One 2-rank gloo launch of this file (`worker` below), library level, float64: every registered
  algorithm on every engine takes STEPS steps on a meta-batch of 5 tasks split 3 + 2; both ranks
  stay bit-identical to each other and within 1e-12 relative of one process stepping the same
  global batches.  The same launch checks sharded evaluation, the parameter checksum (a
  perturbed rank is named) and the settings check (a differing --meta-batch is named).
* Real `torchrun -m l2l_app train` jobs on 2 CPU ranks (marker `training`): after 10 Adam steps
  the weights match one `python -m l2l_app train` process within 1e-5 relative (float32);
  SIGTERM to the job writes one checkpoint and `--resume` then ends bit for bit where the
  uninterrupted 2-rank job ends; SIGKILL of rank 1 makes rank 0 stop naming it, and
  `--max-restarts 1` resumes from the last checkpoint to the same end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

from l2l_app import distributed
from l2l_app.config import compose
from l2l_app.distributed import (Launch, World, buckets, check_tasks, rank_device, restarted_run, settings_mismatch,
                                 shard_bounds)
from l2l_app.errors import ConfigError
from conftest import cli_run, refused
from test_kill_resume import last_step, wait_for_step

#: the in-process parts run on one thread (tiny convolutions: 3-5x faster than on two)
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def env() -> Dict[str, str]:
    """The environment of the processes: one thread per rank (2 ranks on CI's 2 cores; two threads
    each oversubscribe them), this checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


#: the float64 library-level problem: 3-way 2-shot 2-query episodes of 16x16 images, 5 tasks per step
WAYS, SHOTS, QUERIES, TASKS, STEPS, SGD_LR = 3, 2, 2, 5, 3, 0.1
#: an inner loop by plain SGD where an algorithm lets one choose (see `train_steps`)
PLAIN_INNER = {"inner_optimizer": "sgd"}
#: the CLI jobs: steps of the 2-rank jobs that are interrupted and resumed
ITERATIONS = 40
#: the float32 comparison with one process stops here (see test_two_ranks_end_with_the_weights_of_one_process)
PARITY_ITERATIONS = 10
#: MAML with Adam on the MLP backbone (no batch norm, so no exactly-zero gradients for Adam to amplify:
#: see train_steps), 5 tasks per step split 3 + 2, a checkpoint every step
SETTINGS = ["--algo", "maml", "--backbone", "mlp", "--ways", "5", "--shots", "1", "--queries", "5", "--meta-batch",
            "5", "--checkpoint-every", "1", "--val-every", "5", "--val-episodes", "6", "--seed", "5", "--device", "cpu",
            "--quiet"]


# ----------------------------------------------------------------------------- pieces, in process
def test_shards_cover_the_batch_once_in_order_with_sizes_differing_by_at_most_one():
    for world in range(1, 9):
        for tasks in range(0, 41):
            bounds = [shard_bounds(tasks, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == tasks
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # consecutive, no gap or overlap
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert [shard_bounds(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]


def test_buckets_respect_size_dtype_and_order():
    ts = [torch.zeros(10), torch.zeros(10), torch.zeros(30), torch.zeros(5, dtype=torch.float64), torch.zeros(1)]
    assert buckets(ts, limit=80) == [[0, 1], [2], [3], [4]]  # 40+40 bytes fit; 120 alone; dtype change splits
    assert buckets(ts, limit=10**9) == [[0, 1, 2], [3], [4]]
    assert buckets([]) == []


def test_settings_mismatch_names_the_setting_and_the_ranks():
    same = {"--meta-batch": 4, "--seed": 0}
    assert settings_mismatch([same, dict(same), dict(same)]) is None
    problem = settings_mismatch([same, same, {**same, "--seed": 1}])
    assert problem == "--seed is 0 on rank 0 but 1 on rank 2"


def test_launch_is_read_from_torchruns_environment():
    assert Launch.from_env({}) is None
    launch = Launch.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                              "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_RUN_ID": "job"})
    assert launch == Launch(3, 4, 1, 2, 1, "job")
    with pytest.raises(ConfigError, match="are not a torchrun launch"):
        Launch.from_env({"RANK": "0"})


def test_nccl_without_gpus_and_more_processes_than_gpus_are_refused(monkeypatch):
    launch = Launch(1, 2, 1, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", launch) == torch.device("cpu")  # auto: gloo on the CPU
    with pytest.raises(ConfigError, match=r"needs NCCL and one GPU per process, but CUDA is not available here; "
                                          r"use --device cpu \(gloo\)"):
        rank_device("cuda", launch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"started 2 processes on this node but it has 1 GPU\(s\); "
                                          r"use --nproc_per_node 1"):
        rank_device("cuda", launch)
    with pytest.raises(ConfigError, match=r"each process uses the GPU of its local rank"):
        rank_device("cuda:0", launch)
    assert rank_device("cuda", Launch(0, 2, 0, 2)) == torch.device("cuda", 0)


def test_a_meta_batch_smaller_than_the_world_is_refused_before_anything_is_built(synthetic_data_root, tmp_path,
                                                                               monkeypatch):
    """`train` as rank 0 of 2 (torchrun's environment, no rank 1 anywhere): refused in one line
    before any process group is joined or file written."""
    assert check_tasks(2, 2) is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = tmp_path / "run"
    result = cli_run("train", "--data-root", synthetic_data_root, "--out", run_dir, *SETTINGS, "--meta-batch", "1",
                     "--iterations", "1")
    assert refused(result) == ("error: --meta-batch 1 is smaller than the 2 processes torchrun started: every rank "
                               "needs at least one task; use --meta-batch 2 or more, or fewer processes "
                               "(--nproc_per_node)")
    assert not run_dir.exists() and not torch.distributed.is_initialized()
    with pytest.raises(ConfigError) as resumed:  # a resumed run keeps its meta-batch: only fewer processes help
        check_tasks(1, 2, resume=True)
    assert str(resumed.value).endswith("resume it with at most 1 processes (--nproc_per_node; a resumed run keeps "
                                       "its meta-batch)") and "--meta-batch 2 or more" not in str(resumed.value)


def test_a_torchrun_restart_resumes_only_its_own_jobs_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"torchrun_run_id": "job-a"}))
    env = {"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "job-a", "TORCHELASTIC_RESTART_COUNT": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert restarted_run(run) == "overwrite"  # died before its first checkpoint: start again
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert restarted_run(run) == "resume"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert restarted_run(run) is None  # another job's run: --out refuses it as usual
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert restarted_run(run) is None  # a first attempt never takes over an existing directory


class _FakeStore:
    """The job's store as `World._unanswered` uses it: survivors set their alive key."""

    def __init__(self, alive: List[int]) -> None:
        self.keys = {f"{distributed._ALIVE_KEY}{r}" for r in alive}

    def set(self, key: str, _value: str) -> None:
        self.keys.add(key)

    def check(self, keys: List[str]) -> bool:
        return all(k in self.keys for k in keys)


@pytest.mark.parametrize("store_reachable", [True, False])
def test_a_killed_rank_still_exiting_when_the_collective_fails_is_named(monkeypatch, store_reachable):
    """Rank 1's connections close while its process is still exiting: rank 0's collective fails
    before the process is seen gone.  Rank 0 waits for it (a few polls here) and names rank 1,
    not 'another rank'; rank 2, alive on another host, checked in and is not named."""
    world = World(Launch(rank=0, world_size=3, local_rank=0, local_world_size=2))
    host = distributed.socket.gethostname()
    world._procs = [(host, 100), (host, 101), ("elsewhere", 102)]
    polls = {"n": 0}

    def process_gone(pid: int) -> bool:  # rank 1's process exits on the fourth look
        if pid == 101:
            polls["n"] += 1
            return polls["n"] >= 4
        return False

    def store():
        if not store_reachable:
            raise RuntimeError("the store's host is gone")
        return _FakeStore(alive=[2])
    monkeypatch.setattr(distributed, "_process_gone", process_gone)
    monkeypatch.setattr(torch.distributed.distributed_c10d, "_get_default_store", store)
    assert world._unanswered() == [1]
    assert polls["n"] == 4
    message = world._failure_message("the parameter check", RuntimeError("Connection reset by peer"))
    assert message.startswith("rank 1 stopped (exited, was killed or lost its connection) during the parameter "
                              "check; rank 0 stops too (Connection reset by peer)")


def test_one_process_is_the_plain_path(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.join("cpu")
    assert not world.distributed and world.size == 1 and world.is_main
    assert world.device_name is None and world.describe() == {"world_size": 1}
    assert world.any(True) and not world.any(False)


# ----------------------------------------------------------------------------- float64, 2 ranks
def cases() -> List[Tuple[str, str]]:
    from enrol import ENGINE_CASES
    return ENGINE_CASES


def train_steps(world: World, algo: str, engine: str) -> Dict[str, Any]:
    """STEPS meta-steps of `algo` on `engine` in float64, each followed by a plain SGD step of
    SGD_LR; the global batch of step s is random_episodes(seed=s).  Returns the final
    meta-parameters, each step's meta-gradient and metrics, and the per-task query accuracies of
    one more batch (scored by slices on 2 ranks).

    Plain SGD (outer, and inner where the algorithm has a choice: PLAIN_INNER) makes the weights'
    difference between two runs lr times the sum of their gradients' differences.  Adam would
    divide the rounding noise of the exactly-zero gradients (conv biases before batch norm) by
    eps = 1e-8 (see test_every_algorithm), turning a 1e-16 difference of the weights into 1e-9 of
    the next meta-gradient: a property of Adam, seen between two thread counts of one process too.
    The CLI test below covers Adam end to end in float32."""
    from conftest import random_episodes
    from enrol import SIZE, make_learner, make_net, small_settings
    from l2l_app.registry import ALGORITHMS

    plain = {k: v for k, v in PLAIN_INNER.items() if k in ALGORITHMS[algo].setting_names()}
    learner = make_learner(algo, engine, make_net(algo, torch.float64), small_settings(algo, **plain))
    optimizer = torch.optim.SGD(learner.meta_parameters(), lr=SGD_LR)
    metrics, grads = [], []
    for step in range(STEPS):
        m, _ = world.meta_step(learner, random_episodes(WAYS, SHOTS, QUERIES, TASKS, SIZE, torch.float64, seed=step))
        grads.append(torch.cat([p.grad.reshape(-1) for p in learner.meta_parameters()]))
        optimizer.step()
        metrics.append(m)
    batch = random_episodes(WAYS, SHOTS, QUERIES, TASKS, SIZE, torch.float64, seed=99)
    return {"params": {n: p.detach().clone() for n, p in learner.named_meta_parameters()}, "metrics": metrics,
            "grads": grads, "accuracy": world.sharded(learner).query_accuracy(batch).double(), "learner": learner}


def worker(out_dir: Path) -> None:
    """Run under torchrun: every case, then the parameter and settings checks; writes rank<R>.pt."""
    world = distributed.join("cpu")
    results: Dict[str, Any] = {"world_size": world.size}
    for algo, engine in cases():
        r = train_steps(world, algo, engine)
        results[f"{algo}/{engine}"] = {k: v for k, v in r.items() if k != "learner"}
    params = r["learner"].meta_parameters()
    world.check_parameters(params, STEPS)  # identical ranks pass
    if world.rank == 1:
        with torch.no_grad():
            params[0].view(-1)[0] += 1e-9
    try:
        world.check_parameters(params, STEPS)
    except distributed.RankFailure as exc:
        results["divergence"] = str(exc)
    try:
        world.check_launch(compose({"algo": "protonet", "meta_batch": 4 + world.rank}), 0, [])
    except ConfigError as exc:
        results["mismatch"] = str(exc)
    torch.save(results, out_dir / f"rank{world.rank}.pt")


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> List[Dict[str, Any]]:
    out = tmp_path_factory.mktemp("float64-ranks")
    proc = subprocess.run([*TORCHRUN, __file__, "worker", str(out)], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("algo,engine", cases())
def test_two_ranks_step_like_one_process_in_float64(two_rank_results, algo, engine):
    """Both ranks hold the same bytes; at every step the all-reduced meta-gradient, the weights
    after the step and the loss/accuracy are within 1e-12 relative (L2) of one process's.  The only
    difference is the order of the sums (each rank's mean of 3 or 2 task gradients, then one
    weighted sum of 2 terms, instead of one running sum of 5): a few more roundings of 1.1e-16 in
    sums whose terms are the tasks' gradients, far below 1e-12 relative (measured: at most 2e-14)."""
    ref = train_steps(World(), algo, engine)
    r0, r1 = (r[f"{algo}/{engine}"] for r in two_rank_results)
    assert two_rank_results[0]["world_size"] == 2
    for got, want in zip(r0["grads"], ref["grads"]):
        assert relative(got, want) < 1e-12, relative(got, want)
    for name, want in ref["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        assert relative(r0["params"][name], want) < 1e-12, (name, relative(r0["params"][name], want))
    for got, want in zip(r0["metrics"], ref["metrics"]):
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) <= 1e-12 * abs(want[k]) + 1e-15 for k in want), (got, want)
    assert torch.equal(r0["accuracy"], ref["accuracy"])  # sharded evaluation: every task scored once, in order
    assert torch.equal(r1["accuracy"], ref["accuracy"])


def test_a_diverged_rank_and_differing_settings_are_named(two_rank_results):
    for r in two_rank_results:
        assert r["divergence"].startswith("the meta-parameters of rank(s) 1 differ from rank 0's at step 3")
        assert r["mismatch"].startswith("the ranks were launched differently: --meta-batch is 4 on rank 0 but 5 on "
                                        "rank 1; start every rank with the same command")


# ----------------------------------------------------------------------------- torchrun jobs of the CLI


def launch(*args: str, ranks: bool = True, extra: Tuple[str, ...] = ()) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 [extra] -m l2l_app ARGS` (ranks) or `python -m l2l_app ARGS`."""
    head = [*TORCHRUN, *extra] if ranks else [sys.executable]
    return subprocess.Popen([*head, "-m", "l2l_app", *args], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> Tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def train_job(data_root: Path, run_dir: Path, ranks: bool = True, extra: Tuple[str, ...] = (),
              iterations: int = ITERATIONS) -> subprocess.Popen:
    return launch("train", "--data-root", str(data_root), "--out", str(run_dir), *SETTINGS, "--iterations",
                  str(iterations), ranks=ranks, extra=extra)


def checkpoint(run_dir: Path) -> Dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def log(run_dir: Path) -> List[Dict[str, Any]]:
    """metrics.jsonl without the wall time."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def worker_pid(agent: int, rank: int) -> int:
    """The pid of rank `rank` among torchrun's worker processes (children of the agent, RANK in their environment)."""
    for task in Path(f"/proc/{agent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
    raise AssertionError(f"no worker with RANK={rank} under torchrun {agent}")


@pytest.fixture(scope="module")
def two_ranks(synthetic_data_root, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank job that the interrupted ones must end like."""
    run_dir = tmp_path_factory.mktemp("two-ranks") / "run"
    code, out, err = finish(train_job(synthetic_data_root, run_dir))
    assert code == 0, err
    return run_dir


@pytest.mark.training
def test_two_ranks_end_with_the_weights_of_one_process(synthetic_data_root, tmp_path):
    """`python -m l2l_app train` and the same command under torchrun with 2 ranks, 10 Adam steps in
    float32: every weight tensor within 1e-5 relative (L2), every logged loss within 1e-5;
    validation is sharded (each rank scores 3 of the 6 episodes) and may differ by at most one
    flipped query prediction of the 150 (0.67%); rank 0 alone wrote the log and printed.  Then
    `eval` of the 2-rank run, sharded, gives one process's per-episode accuracies.

    Why 10 steps: this run barely learns (loss ~ln 5), and its float32 trajectory amplifies any
    change of rounding about 3x per step from step ~16 on: one process on the batched engine
    (another summation order) parts from the loop engine just as the 2-rank job does (measured:
    loss 1e-8 apart to step 16, 1e-4 by step 40, for both).  The float64 test above checks the
    sums themselves to 1e-12."""
    one, two = tmp_path / "one", tmp_path / "two"
    jobs = [train_job(synthetic_data_root, one, ranks=False, iterations=PARITY_ITERATIONS),
            train_job(synthetic_data_root, two, iterations=PARITY_ITERATIONS)]
    (code_one, _, err_one), (code, out, err) = (finish(job) for job in jobs)
    assert code_one == 0 and code == 0, err_one + err
    run_dir, one_process = two, one
    a, b = checkpoint(one_process)["learner"]["model"], checkpoint(run_dir)["learner"]["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert relative(b[name].double(), a[name].double()) < 1e-5, (name, relative(b[name].double(),
                                                                                     a[name].double()))
    one, two = log(one_process), log(run_dir)
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]  # each step once
    for x, y in zip(one, two):
        if x["kind"] == "train":
            assert abs(y["loss"] - x["loss"]) <= 1e-5 * abs(x["loss"]), (x, y)
        else:
            assert abs(y["val_accuracy"] - x["val_accuracy"]) <= 100 / (6 * 5 * 5) + 1e-9, (x, y)
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    assert out.count(f"trained {PARITY_ITERATIONS} steps") == 1, out

    # `eval` under torchrun: each rank scores half of every batch of episodes; the gathered
    # per-episode accuracies are one process's, in order, and rank 0 alone writes and prints
    alone = cli_run("eval", run_dir, "--episodes", 30, "--quiet")
    assert alone.exit_code == 0, alone.output
    written = run_dir / "eval-test-best-5w1s5q-30ep-seed1234.json"
    expected = json.loads(written.read_text())
    written.unlink()
    code, out, err = finish(launch("eval", str(run_dir), "--episodes", "30", "--quiet"))
    assert code == 0, err
    assert out == alone.stdout
    assert json.loads(written.read_text())["accuracies"] == expected["accuracies"]


@pytest.mark.training
def test_sigterm_to_the_job_checkpoints_once_and_resume_ends_where_the_job_ends(synthetic_data_root, two_ranks,
                                                                               tmp_path):
    """torchrun passes SIGTERM to both ranks; they stop after the same step (the decision rides in
    the all-reduce), rank 0 writes that step's checkpoint, each exits 143 naming the step; resuming
    under 2 ranks ends bit for bit where the uninterrupted 2-rank job ends."""
    run_dir = tmp_path / "run"
    job = train_job(synthetic_data_root, run_dir)
    wait_for_step(job, run_dir, 5)
    job.send_signal(signal.SIGTERM)
    code, out, err = finish(job)
    assert code != 0
    stops = {line for line in err.splitlines() if line.startswith("error: stopped by signal 15 after step ")}
    assert len(stops) == 1, err[-3000:]  # both ranks print the same line: the same step
    stopped_at = int(stops.pop().split("after step ")[1].split(";")[0])
    assert 5 <= stopped_at < ITERATIONS
    assert checkpoint(run_dir)["step"] == stopped_at == last_step(run_dir)

    code, out, err = finish(launch("train", "--resume", str(run_dir), "--quiet"))
    assert code == 0, err
    straight = two_ranks
    a, b = checkpoint(straight), checkpoint(run_dir)
    assert a["step"] == b["step"] == ITERATIONS
    assert all(torch.equal(a["learner"]["model"][k], b["learner"]["model"][k]) for k in a["learner"]["model"])
    assert log(run_dir) == log(straight)


@pytest.mark.training
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_is_named_and_max_restarts_resumes_to_the_same_end(synthetic_data_root, two_ranks, tmp_path):
    """SIGKILL of rank 1 mid-run: rank 0 stops with one line naming rank 1; torchrun --max-restarts 1
    starts the job again, which resumes its own run from the last checkpoint and ends bit for bit
    where the uninterrupted job ends, every step logged once."""
    run_dir = tmp_path / "run"
    job = train_job(synthetic_data_root, run_dir, extra=("--max-restarts", "1"))
    wait_for_step(job, run_dir, 5)
    os.kill(worker_pid(job.pid, 1), signal.SIGKILL)
    code, out, err = finish(job)
    assert code == 0, err[-3000:]
    named = [line for line in err.splitlines() if line.startswith("error: rank 1 stopped")]
    assert named and "torchrun --max-restarts N restarts the job from the last checkpoint" in named[0], err[-3000:]
    straight = two_ranks
    a, b = checkpoint(straight), checkpoint(run_dir)
    assert b["step"] == ITERATIONS
    assert all(torch.equal(a["learner"]["model"][k], b["learner"]["model"][k]) for k in a["learner"]["model"])
    assert log(run_dir) == log(straight)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    worker(Path(sys.argv[2]))
