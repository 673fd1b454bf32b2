"""Benchmark harness: timing logic on a fake clock, agreement metrics, Torchmeta-style MAML parity, CLI."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from l2l_app.algorithms.maml import MAML, MAMLSettings
from l2l_app.backbones import Classifier, Conv4
from l2l_app.bench import parse_sweep, percentile, relative_l2, speedup, summarise, time_calls
from l2l_app.cli import cli
from l2l_app.errors import ConfigError
from l2l_app.plots import plot_sweep
from l2l_app.data.types import EpisodeBatch
from l2l_app.bench.torchmeta_style import TorchmetaMAML, from_classifier


class FakeClock:
    """Each fn() call advances time by the next duration; sync and clock calls are recorded."""

    def __init__(self, durations):
        self.now, self.durations, self.events = 0.0, list(durations), []

    def clock(self):
        self.events.append("clock")
        return self.now

    def fn(self):
        self.events.append("fn")
        self.now += self.durations.pop(0)

    def sync(self):
        self.events.append("sync")


def test_time_calls_excludes_warmup_and_syncs():
    fake = FakeClock([9.0, 9.0, 0.001, 0.003, 0.002])  # two slow warm-ups, then 1, 3, 2 ms
    times = time_calls(fake.fn, warmup=2, repeats=3, sync=fake.sync, clock=fake.clock)
    assert times == pytest.approx([1.0, 3.0, 2.0])
    assert fake.events[:4] == ["fn", "sync", "fn", "sync"]  # warm-up: untimed, synchronised
    assert fake.events[4:10] == ["sync", "clock", "fn", "sync", "clock", "sync"]  # sync before each stop
    with pytest.raises(ValueError):
        time_calls(fake.fn, warmup=0, repeats=0)


def test_summarise_percentiles():
    s = summarise([float(v) for v in range(1, 12)])  # 1..11
    assert (s["median"], s["p10"], s["p90"], s["n"]) == (6.0, 2.0, 10.0, 11)
    assert summarise([4.0, 1.0, 2.0, 3.0])["median"] == 2.5
    assert percentile([1.0, 2.0], 25) == 1.25  # numpy's linear interpolation
    assert s["min"] == 1.0 and s["max"] == 11.0 and s["mean"] == 6.0


def test_speedup_and_relative_l2():
    assert speedup(100.0, 25.0) == 4.0
    assert speedup(None, 25.0) is None and speedup(100.0, None) is None
    ref = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
    assert relative_l2(ref, ref) == 0.0
    assert relative_l2({"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([4.0])}, ref) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        relative_l2({"a": ref["a"]}, ref)


def _batch(tasks=2, ways=5, shots=1, queries=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return EpisodeBatch(torch.rand(tasks, ways * shots, 1, 28, 28, generator=g, dtype=dtype),
                        torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1),
                        torch.rand(tasks, ways * queries, 1, 28, 28, generator=g, dtype=dtype),
                        torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1), ways, shots, queries)


@pytest.mark.parametrize("max_pool", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_torchmeta_style_meta_gradient_equals_loop(steps, first_order, max_pool):
    torch.manual_seed(0)
    model = Classifier(Conv4(1, 8, 28, max_pool=max_pool), 5).double()
    batch = _batch()
    settings = MAMLSettings(inner_lr=0.4, inner_steps=steps, first_order=first_order)
    loop = MAML(copy.deepcopy(model), settings)
    tm = TorchmetaMAML(from_classifier(model), settings)
    assert [n for n, _ in tm.model.named_parameters()] == [n for n, _ in model.named_parameters()]
    m1, m2 = loop.meta_step(batch), tm.meta_step(batch)
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-12)
    g_loop = {k: p.grad for k, p in loop.model.named_parameters()}
    g_tm = {k: p.grad for k, p in tm.model.named_parameters()}
    assert relative_l2(g_tm, g_loop) < 1e-10
    sx, sy, qx, _ = batch.task(0)
    assert torch.allclose(tm.predict(sx, sy, qx, 5), loop.predict(sx, sy, qx, 5), atol=1e-10)


def test_parse_sweep():
    assert parse_sweep("meta-batch=1,4,16") == ("meta-batch", [1, 4, 16])
    with pytest.raises(ConfigError, match="meta-batch"):
        parse_sweep("batch=1,2")


@pytest.fixture
def no_compile(monkeypatch):
    """torch.compile on CPU takes minutes; the tests check the plumbing, so compile is the identity."""
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: fn)


def test_bench_cli_synthetic_writes_json_and_md(tmp_path, no_compile):
    out = tmp_path / "bench"
    args = ["bench", "--synthetic", "--device", "cpu", "--hidden", "4", "--queries", "2", "--meta-batch", "2",
            "--warmup", "0", "--repeats", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    rows = {r["impl"]: r for r in report["results"]}
    assert set(rows) == {"loop", "torchmeta", "batched", "batched-compiled"}
    for impl, r in rows.items():
        assert r["status"] == "ok", r
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and len(r["times_ms"]) == 2
        assert r["tasks_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["speedup_vs_loop"] > 0
        if impl != "loop":
            assert r["grad_rel_l2_vs_loop"] < 1e-3
    assert rows["loop"]["speedup_vs_loop"] == 1.0
    assert rows["batched-compiled"]["compile_s"] > 0
    assert report["environment"]["torch"] == torch.__version__ and "learn2learn" in report["environment"]
    assert report["tf32"]["requested"] is False and report["settings"]["meta_batch"] == 2
    md = (out / "bench.md").read_text()
    assert "| loop | compute only |" in md and "re-implementation" in md
    assert "[bench]" in result.output  # progress lines (stderr, mixed in by CliRunner)


def test_bench_protonet_skips_torchmeta_and_sweep_plots(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--synthetic", "--algo", "protonet", "--device", "cpu", "--hidden", "4", "--queries", "2",
            "--meta-batch", "2", "--warmup", "0", "--repeats", "1", "--impl", "loop,torchmeta",
            "--sweep", "meta-batch=1,2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    tm = [r for r in report["results"] if r["impl"] == "torchmeta"][0]
    assert tm["status"] == "skipped" and "not applicable" in tm["note"]
    assert [r["value"] for r in report["sweeps"]["meta-batch"] if r["impl"] == "loop"] == [1, 2]
    assert (out / "sweep-meta-batch.png").read_bytes()[:4] == b"\x89PNG"
    # a bench without the sweep replacing it in the same folder leaves no plot of the earlier one beside its bench.md
    result = CliRunner().invoke(cli, [a for a in args if a not in ("--sweep", "meta-batch=1,2")] + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "sweep-meta-batch.png").exists()


def test_plot_sweep_alone(tmp_path):
    rows = [{"impl": i, "value": v, "status": "ok", "median_ms": v * k, "p10_ms": v * k * 0.9,
             "p90_ms": v * k * 1.1, "peak_mem_mb": 100.0 + v} for i, k in (("loop", 10), ("batched", 2))
            for v in (1, 4, 16, 64)]
    png = plot_sweep("meta-batch", rows, tmp_path / "s.png")
    assert png.stat().st_size > 1000
    from PIL import Image
    cpu_width = Image.open(png).size[0]  # no memory_kind: CPU rows, time panel only
    gpu = plot_sweep("meta-batch", [{**r, "memory_kind": "cuda max_memory_allocated"} for r in rows],
                     tmp_path / "g.png")
    assert Image.open(gpu).size[0] > 1.5 * cpu_width  # and the per-impl CUDA peak beside it


def test_bench_bad_impl_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--synthetic", "--impl", "loop,torchmet", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "torchmet" in result.output and "choose from" in result.output


@pytest.mark.parametrize("extra,message", [
    (["--algo", "protonet", "--sweep", "inner-steps=1,2"], "--inner-steps not used by --algo protonet"),
    (["--algo", "protonet", "--impl", "torchmeta"], "nothing to time: torchmeta: not applicable"),
    (["--impl", "batched-captured-step"], "nothing to time: batched-captured-step times the whole training step "
                                          "(add --with-sampler)"),
], ids=["sweep the algorithm lacks", "no impl applies", "whole step without the sampler"])
def test_bench_refuses_before_timing_or_writing(tmp_path, extra, message):
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["bench", "--synthetic", "--device", "cpu", "--hidden", "4", "--queries", "2",
                                      "--meta-batch", "2", "--warmup", "0", "--repeats", "1", "--out", str(out),
                                      *extra])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "[bench]" not in result.output and not out.exists()


def test_bench_times_the_captured_whole_step_end_to_end(tmp_path, no_compile):
    """`batched-captured-step` (the whole training step as one graph: the eager stand-in on a CPU)
    is timed end to end only, records that it was captured, and the bench records its cuDNN and
    convolution settings."""
    out = tmp_path / "bench"
    args = ["bench", "--synthetic", "--device", "cpu", "--hidden", "4", "--queries", "2", "--meta-batch", "2",
            "--warmup", "3", "--repeats", "1", "--with-sampler", "--conv-impl", "unfold",
            "--impl", "loop,batched-captured-step", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    rows = {(r["impl"], r["mode"]): r for r in report["results"]}
    assert rows[("batched-captured-step", "compute only")]["status"] == "skipped"
    step = rows[("batched-captured-step", "end to end")]
    assert step["status"] == "ok" and step["captured"] is True and step["sampler"] == "tensor", step
    assert "no CUDA graph on a CPU" in step["note"]
    assert step["grad_rel_l2_vs_loop"] < 1e-3
    assert report["settings"]["conv_impl"] == "unfold" and report["cudnn_benchmark"] is False
