"""Matplotlib figures: the learning curves of runs (report) and the benchmark sweeps (bench).

`plot_learning_curves(run_dirs, out_png)` writes the learning curves of run directories (or
`run_records.RunRecord` objects); `plot_sweep(name, rows, out_png)` a benchmark sweep's time and memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

from .run_records import RunRecord, Shape, load_run_records, shape_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def smooth(values: Sequence[float], span: int) -> List[float]:
    """Bias-corrected exponential moving average with weight 1 - 1/span (TensorBoard's smoothing):
    the first value is kept, a constant stays constant; span <= 1 returns the values."""
    if span <= 1:
        return [float(v) for v in values]
    weight = 1.0 - 1.0 / span
    out, average = [], 0.0
    for i, v in enumerate(values, 1):
        average = weight * average + (1.0 - weight) * float(v)
        out.append(average / (1.0 - weight ** i))
    return out


def smoothing_span(points: int) -> int:
    """About 7% of a curve's points (1 for short curves: no smoothing)."""
    return max(1, round(points / 15))


#: the fewest points a training curve is smoothed at (the legend says shorter ones are drawn raw)
SMOOTHED_FROM_POINTS = next(n for n in range(1, 1000) if smoothing_span(n) > 1)


def group_by_train_shape(records: Sequence[RunRecord]) -> Dict[Shape, List[RunRecord]]:
    """Runs whose training episodes have the same (ways, shots, queries), in first-seen order:
    their training loss and accuracy are comparable only within a group."""
    groups: Dict[Shape, List[RunRecord]] = {}
    for rec in records:
        groups.setdefault(rec.train_shape, []).append(rec)
    return groups


def _time_unit(records: Sequence[RunRecord]) -> Tuple[float, str]:
    """(seconds per unit, unit) that keeps the wall-time axis readable."""
    longest = max((row.get("time", 0.0) for rec in records for row in rec.train + rec.val), default=0.0)
    return (1.0, "s") if longest <= 120 else (60.0, "min") if longest <= 7200 else (3600.0, "h")


def _draw_train(ax: Any, rows: List[Dict[str, Any]], xkey: str, ykey: str, scale: float, colour: str) -> None:
    """A training curve: raw values faint, their moving average solid."""
    rows = [r for r in rows if xkey in r and ykey in r]
    if not rows:
        return
    xs = [r[xkey] / scale for r in rows]
    ys = [r[ykey] for r in rows]
    ax.plot(xs, ys, color=colour, lw=0.8, alpha=0.25)
    ax.plot(xs, smooth(ys, smoothing_span(len(ys))), color=colour, lw=1.4)


def _draw_val(ax: Any, rows: List[Dict[str, Any]], xkey: str, scale: float, colour: str) -> None:
    """A validation curve: thick, with markers, drawn above the training curves."""
    rows = [r for r in rows if xkey in r and "val_accuracy" in r]
    if rows:
        ax.plot([r[xkey] / scale for r in rows], [r["val_accuracy"] for r in rows], color=colour, lw=2.4,
                marker="o", ms=5, mec="white", mew=0.8, zorder=5)


def learning_curves_figure(records: Sequence[RunRecord]) -> "Figure":
    """One row of panels per training episode shape (titled with it): training loss vs step,
    accuracy (%) vs step and vs wall time.  Training curves are smoothed (raw values faint behind),
    validation is thick with markers; colours are runs; the legend sits right of each row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    groups = group_by_train_shape(records)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {id(rec): colours[i % len(colours)] for i, rec in enumerate(records)}
    seconds, unit = _time_unit(records)
    fig = plt.figure(figsize=(17, 4.2 * len(groups)), layout="constrained")
    rows = fig.subfigures(len(groups), 1, squeeze=False)[:, 0]
    for row, (shape, runs) in zip(rows, groups.items()):
        row.suptitle(f"training episodes: {shape_label(shape)}", fontweight="bold", fontsize=12)
        # the legend gets its own column, so it never covers data (matplotlib >= 3.5)
        ax_loss, ax_step, ax_time, ax_legend = row.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 0.5]})
        ax_legend.axis("off")
        for rec in runs:
            colour = colour_of[id(rec)]
            _draw_train(ax_loss, rec.train, "step", "loss", 1.0, colour)
            for ax, xkey, scale in ((ax_step, "step", 1.0), (ax_time, "time", seconds)):
                _draw_train(ax, rec.train, xkey, "accuracy", scale, colour)
                _draw_val(ax, rec.val, xkey, scale, colour)
        ax_loss.set(title="training loss", xlabel="meta-training step", ylabel="query loss (training episodes)")
        ax_step.set(title="accuracy vs step", xlabel="meta-training step", ylabel="accuracy (%)")
        ax_time.set(title="accuracy vs wall time", xlabel=f"wall time ({unit})", ylabel="accuracy (%)")
        for ax in (ax_loss, ax_step, ax_time):
            ax.grid(True, alpha=0.3)
        for ax in (ax_loss, ax_step):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles = [Line2D([], [], color=colour_of[id(rec)], lw=2.4,
                          label=f"{rec.name}\n(validation: {shape_label(rec.eval_shape)})") for rec in runs]
        handles += [Line2D([], [], color="grey", lw=1.4,
                           label=f"training, moving average\n(raw values faint; a run of\nfewer than "
                                 f"{SMOOTHED_FROM_POINTS} points: raw)"),
                    Line2D([], [], color="grey", lw=2.4, marker="o", ms=5, mec="white",
                           label="validation (% of queries)")]
        ax_legend.legend(handles=handles, loc="upper left", fontsize=9, frameon=False, borderaxespad=0)
    return fig


def plot_learning_curves(run_dirs: Sequence[Path | str | RunRecord], out_png: Path | str) -> Path:
    """Write `learning_curves_figure` of the runs to `out_png`."""
    import matplotlib.pyplot as plt

    fig = learning_curves_figure(load_run_records(run_dirs))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_sweep(name: str, rows: List[Dict[str, Any]], out_png: Path) -> Path:
    """ms/step and peak memory vs the swept value, one line per impl (log scales where values span >= 8x).

    The memory panel only for GPU rows (CUDA's per-impl allocator peak): on a CPU the only figure is
    the process's RSS, which keeps what earlier settings allocated, so it says nothing per point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.get("status") == "ok"]
    per_point_memory = bool(measured) and all(str(r.get("memory_kind", "")).startswith("cuda") for r in measured)
    if per_point_memory:
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    else:
        fig, ax_t = plt.subplots(1, 1, figsize=(6, 4.2))
        ax_m = None
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    for impl in impls:
        pts = [(r["value"], r["median_ms"], r.get("p10_ms"), r.get("p90_ms"), r.get("peak_mem_mb"))
               for r in rows if r["impl"] == impl and r.get("status") == "ok"]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        line, = ax_t.plot(xs, [p[1] for p in pts], marker="o", label=impl)
        ax_t.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=line.get_color(), alpha=0.15)
        if ax_m is not None and all(p[4] is not None for p in pts):
            ax_m.plot(xs, [p[4] for p in pts], marker="o", label=impl, color=line.get_color())
    values = sorted({r["value"] for r in rows})
    for ax in (ax_t, ax_m) if ax_m is not None else (ax_t,):
        if values and values[0] > 0 and values[-1] / values[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(name)
        ax.set_xticks(values)
        ax.set_xticklabels([str(v) for v in values])
        ax.grid(True, alpha=0.3, which="both")
        ax.legend()
    ax_t.set_yscale("log")
    ax_t.set_ylabel("ms per meta-step (median, p10–p90 band)")
    ax_t.set_title(f"time per meta-step vs {name}")
    if ax_m is not None:
        ax_m.set_ylabel("peak memory (MiB)")
        ax_m.set_title(f"peak memory vs {name}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


__all__ = ["smooth", "group_by_train_shape", "learning_curves_figure", "plot_learning_curves", "plot_sweep"]
