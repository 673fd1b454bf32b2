"""Reports of run directories: Markdown + static HTML with learning curves and published numbers.

`build_report(run_dirs, out_dir)` writes ``report.md`` (PNGs referenced relatively),
``report.html`` (the same content, PNGs embedded as base64: one file to share) and
``learning_curves.png``.  For each run: test accuracy ± 95% CI from its ``eval-test-*.json``
next to the number the paper reports for the same setting (`recipes.find_published` on the
run's flat config) and the difference in percentage points; its full configuration and the
evaluation protocol.  `plot_learning_curves(run_dirs, out_png)` can be used on its own.
"""
from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .config import ExperimentConfig, load_json
from .errors import ConfigError
from .recipes import Recipe, find_published

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class RunRecord:
    """What a report needs from one run directory."""
    path: Path
    name: str
    config: ExperimentConfig
    train: List[Dict[str, Any]] = field(default_factory=list)
    val: List[Dict[str, Any]] = field(default_factory=list)
    evaluation: Optional[Dict[str, Any]] = None
    eval_file: Optional[str] = None
    run_info: Dict[str, Any] = field(default_factory=dict)
    published: Optional[Recipe] = None

    @property
    def difference(self) -> Optional[float]:
        """Our test accuracy minus the published one, in percentage points."""
        if self.evaluation is None or self.published is None:
            return None
        return float(self.evaluation["mean"]) - float(self.published.reported_accuracy)

    def setting(self) -> str:
        c = self.config
        algo = "fomaml" if c.algorithm.algo == "maml" and c.algorithm.first_order else c.algorithm.algo
        return f"{algo} {c.data.dataset} {c.task.ways}-way {c.task.shots}-shot"


def _pick_eval(run_dir: Path) -> Optional[Path]:
    """eval-test-best.json, else eval-test-last.json, else any eval-test-*.json."""
    for name in ("eval-test-best.json", "eval-test-last.json"):
        if (run_dir / name).is_file():
            return run_dir / name
    others = sorted(run_dir.glob("eval-test-*.json"))
    return others[0] if others else None


def load_run_record(run_dir: Path | str) -> RunRecord:
    """Read config.json, metrics.jsonl, run.json and the test evaluation of a run directory.

    Raises ConfigError (one line) when `run_dir` is not an l2l-app run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; pass run directories written by `l2l-app train --out`")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass the --out directory "
                          f"of `l2l-app train`")
    config = load_json(run_dir / CONFIG_FILE)
    rec = RunRecord(run_dir, run_dir.resolve().name, config)
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        for n, line in enumerate(metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{metrics}: line {n} is not JSON; the metrics log is damaged") from None
            (rec.val if row.get("kind") == "val" else rec.train).append(row)
    eval_path = _pick_eval(run_dir)
    if eval_path is not None:
        try:
            rec.evaluation = json.loads(eval_path.read_text())
            rec.eval_file = eval_path.name
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {eval_path}: {exc}; re-run `l2l-app eval --run {run_dir}`") from None
    if (run_dir / "run.json").is_file():
        try:
            rec.run_info = json.loads((run_dir / "run.json").read_text())
        except json.JSONDecodeError:
            rec.run_info = {}
    rec.published = find_published(config.flat())
    return rec


def _records(run_dirs: Sequence[Path | str]) -> List[RunRecord]:
    if not run_dirs:
        raise ConfigError("no run directories given; pass one or more `l2l-app train --out` directories")
    records = [load_run_record(d) for d in run_dirs]
    names = [r.name for r in records]
    for r in records:  # disambiguate runs with the same folder name
        if names.count(r.name) > 1:
            r.name = str(r.path)
    return records


# ------------------------------------------------------------------------------ plots
def plot_learning_curves(run_dirs: Sequence[Path | str], out_png: Path | str) -> Path:
    """Loss and train/validation accuracy (%) vs step and vs wall time, one colour per run."""
    records = run_dirs if run_dirs and isinstance(run_dirs[0], RunRecord) else _records(run_dirs)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rec in enumerate(records):
        colour = colours[i % len(colours)]
        for col, xkey in enumerate(("step", "time")):
            tr = [r for r in rec.train if xkey in r]
            va = [r for r in rec.val if xkey in r]
            scale = (lambda t: t / 60.0) if xkey == "time" else (lambda s: s)
            if tr:
                axes[0, col].plot([scale(r[xkey]) for r in tr], [r["loss"] for r in tr], color=colour,
                                  label=rec.name, lw=1)
                axes[1, col].plot([scale(r[xkey]) for r in tr], [100.0 * r["accuracy"] for r in tr],
                                  color=colour, lw=1, alpha=0.6, label=f"{rec.name} train")
            if va:
                axes[1, col].plot([scale(r[xkey]) for r in va], [r["val_accuracy"] for r in va], color=colour,
                                  ls="--", marker="o", ms=3, label=f"{rec.name} validation")
    for col, xlabel in enumerate(("meta-training step", "wall time (minutes)")):
        axes[0, col].set_title(f"training loss vs {xlabel.split(' (')[0]}")
        axes[1, col].set_title(f"accuracy vs {xlabel.split(' (')[0]}")
        axes[1, col].set_xlabel(xlabel)
        for row in range(2):
            axes[row, col].grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("query loss (train episodes)")
    axes[1, 0].set_ylabel("accuracy (%)")
    if any(r.train for r in records):
        axes[0, 0].legend(fontsize=8)
    if any(r.train or r.val for r in records):
        axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


# ------------------------------------------------------------------------------ report
def _acc(mean: Any, ci: Any) -> str:
    if mean is None:
        return "–"
    return f"{float(mean):.2f} ± {float(ci):.2f}" if ci is not None else f"{float(mean):.2f}"


def _eval_cell(rec: RunRecord) -> str:
    if rec.evaluation is None:
        return f"not evaluated (run `l2l-app eval --run {rec.path}`)"
    e = rec.evaluation
    return f"{_acc(e.get('mean'), e.get('ci95'))} ({e.get('episodes')} episodes)"


def _published_cell(rec: RunRecord) -> str:
    if rec.published is None:
        return "no published number for this setting"
    p = rec.published
    return f"{_acc(p.reported_accuracy, p.reported_ci95)} ({p.source.split(',')[0]}, {p.table})"


def _diff_cell(rec: RunRecord) -> str:
    d = rec.difference
    return "–" if d is None else f"{d:+.2f} pp"


def _summary_rows(records: List[RunRecord]) -> List[List[str]]:
    rows = []
    for rec in records:
        last = rec.train[-1] if rec.train else {}
        best_val = max((v["val_accuracy"] for v in rec.val), default=None)
        rows.append([rec.name, rec.setting(), str(last.get("step", 0)),
                     "–" if best_val is None else f"{best_val:.2f}",
                     _eval_cell(rec), _published_cell(rec), _diff_cell(rec)])
    return rows


HEADER = ["run", "setting", "steps", "best val acc (%)", "test acc ± 95% CI (%)", "published (%)", "difference"]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _flat_config(rec: RunRecord) -> Dict[str, Any]:
    flat = rec.config.flat()
    flat["recipe"] = rec.config.recipe
    return flat


def markdown_report(records: List[RunRecord], curves_png: str) -> str:
    lines = ["# l2l-app report", "",
             "Test accuracy is the mean over fixed-seed episodes with its 95% confidence interval "
             "(1.96·std/√n); *difference* is ours minus the published number, in percentage points.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in _summary_rows(records)]
    lines += ["", "## Learning curves", "", f"![learning curves]({curves_png})", ""]
    for rec in records:
        lines += [f"## {rec.name}", "", f"Directory: `{rec.path}`", ""]
        if rec.evaluation is None:
            lines += [f"Not evaluated: run `l2l-app eval --run {rec.path}`.", ""]
        else:
            lines += [f"Evaluation (`{rec.eval_file}`): {_eval_cell(rec)}", "", "Protocol:", "",
                      "| key | value |", "|---|---|"]
            lines += [f"| {k} | {_md_escape(str(v))} |" for k, v in rec.evaluation.get("protocol", {}).items()]
            lines.append("")
        if rec.published is not None:
            p = rec.published
            lines += [f"Published: {_published_cell(rec)}; protocol: {p.protocol}", ""]
        if rec.run_info:
            env = rec.run_info.get("environment", {})
            lines += [f"Run: engine {rec.run_info.get('engine')}, sampler {rec.run_info.get('sampler')}, "
                      f"device {rec.run_info.get('device')}; torch {env.get('torch')}, learn2learn "
                      f"{env.get('learn2learn')}, git {env.get('git')}", ""]
        lines += ["Configuration:", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_md_escape(str(v))} |" for k, v in _flat_config(rec).items()]
        lines.append("")
    return "\n".join(lines) + "\n"


CSS = """body{font-family:system-ui,-apple-system,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right}.neg{color:#b00}.pos{color:#070}.muted{color:#777}
details{margin:.5em 0}code{background:#f6f6f6;padding:1px 3px}img{max-width:100%}"""


def _html_table(header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = ""
    for row in rows:
        cells = []
        for c in row:
            cls = ""
            if re.fullmatch(r"[+-]\d+\.\d+ pp", c):
                cls = ' class="num ' + ("neg" if c.startswith("-") else "pos") + '"'
            elif c.startswith("not evaluated") or c.startswith("no published"):
                cls = ' class="muted"'
            text = html.escape(c)
            text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
            cells.append(f"<td{cls}>{text}</td>")
        body += "<tr>" + "".join(cells) + "</tr>\n"
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def html_report(records: List[RunRecord], curves_png: Path) -> str:
    data = base64.b64encode(Path(curves_png).read_bytes()).decode("ascii")
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>l2l-app report</title>",
             f"<style>{CSS}</style></head><body><h1>l2l-app report</h1>",
             "<p>Test accuracy is the mean over fixed-seed episodes with its 95% confidence interval "
             "(1.96&middot;std/&radic;n); <em>difference</em> is ours minus the published number, in "
             "percentage points.</p>",
             _html_table(HEADER, _summary_rows(records)),
             "<h2>Learning curves</h2>",
             f"<img alt='learning curves' src='data:image/png;base64,{data}'>"]
    for rec in records:
        parts.append(f"<h2>{html.escape(rec.name)}</h2><p>Directory: <code>{html.escape(str(rec.path))}</code></p>")
        if rec.evaluation is None:
            parts.append(f"<p class='muted'>Not evaluated: run <code>l2l-app eval --run "
                         f"{html.escape(str(rec.path))}</code>.</p>")
        else:
            parts.append(f"<p>Evaluation (<code>{html.escape(rec.eval_file or '')}</code>): "
                         f"{html.escape(_eval_cell(rec))}</p>")
            proto = rec.evaluation.get("protocol", {})
            parts.append("<details open><summary>Evaluation protocol</summary>" +
                         _html_table(["key", "value"], [[k, str(v)] for k, v in proto.items()]) + "</details>")
        if rec.published is not None:
            parts.append(f"<p>Published: {html.escape(_published_cell(rec))}; protocol: "
                         f"{html.escape(rec.published.protocol)}</p>")
        if rec.run_info:
            env = rec.run_info.get("environment", {})
            parts.append(f"<p>Run: engine {html.escape(str(rec.run_info.get('engine')))}, sampler "
                         f"{html.escape(str(rec.run_info.get('sampler')))}, device "
                         f"{html.escape(str(rec.run_info.get('device')))}; torch {html.escape(str(env.get('torch')))}"
                         f", learn2learn {html.escape(str(env.get('learn2learn')))}</p>")
        parts.append("<details><summary>Configuration</summary>" +
                     _html_table(["setting", "value"], [[k, str(v)] for k, v in _flat_config(rec).items()]) +
                     "</details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(run_dirs: Sequence[Path | str], out_dir: Path | str) -> Dict[str, Path]:
    """Write report.md, report.html and learning_curves.png into `out_dir`; returns their paths."""
    records = _records(run_dirs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; choose a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_learning_curves(records, out_dir / "learning_curves.png")
    md = out_dir / "report.md"
    md.write_text(markdown_report(records, curves.name))
    page = out_dir / "report.html"
    page.write_text(html_report(records, curves))
    return {"md": md, "html": page, "png": curves}



# ------------------------------------------------------------------------------ benchmark results (bench.py)
def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _mem(r: Dict[str, Any]) -> str:
    """'1091 (+13)': peak and its growth over the memory in use when the impl started."""
    peak, before = r.get("peak_mem_mb"), r.get("mem_before_mb")
    if peak is None:
        return "–"
    return f"{peak:.0f}" + (f" (+{peak - before:.0f})" if before is not None else "")


def bench_markdown(report: Dict[str, Any]) -> str:
    """bench.md: a table to paste into an issue, from `bench.run_bench`'s result."""
    s = report["settings"]
    env = report["environment"]
    fo = "FOMAML" if s.get("first_order") else s["algo"].upper() if s["algo"] == "maml" else s["algo"]
    lines = [f"## l2l-app bench: {fo} {s['dataset']} {s['ways']}-way {s['shots']}-shot, {s['queries']} queries, "
             f"meta-batch {s['meta_batch']}, {s['inner_steps']} inner step(s)", "",
             f"Device: `{report['device']}` ({report['device_name']}); torch {env['torch']}, learn2learn "
             f"{env['learn2learn']}, Python {env['python']}, {env['torch_threads']} torch threads; "
             f"TF32 {'on' if report['tf32']['requested'] else 'off'}"
             f"{'' if report['tf32']['applies'] else ' (no TF32 on CPU)'}; data: {report['data']}; "
             f"{s['warmup']} warm-up + {s['repeats']} timed steps; git {env.get('git')}, {env['date']}.", "",
             "| impl | mode | median ms/step | p10–p90 ms | tasks/s | peak mem MiB (+growth) | speed-up vs loop "
             "| grad rel. L2 vs loop | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['impl']} | {r['mode']} | – | – | – | – | – | – | {r.get('status')}: {r.get('note')} |")
            continue
        note = f"compile (first call) {r['compile_s']:.1f} s" if r.get("compile_s") is not None else ""
        if r.get("sampler"):
            note = (note + "; " if note else "") + f"{r['sampler']} sampler"
        lines.append(f"| {r['impl']} | {r['mode']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f}–{r['p90_ms']:.1f} | "
                     f"{r['tasks_per_s']:.1f} | {_mem(r)} | "
                     f"{_f(r.get('speedup_vs_loop'), '{:.2f}x')} | {_f(r.get('grad_rel_l2_vs_loop'), '{:.1e}')} "
                     f"| {note} |")
    lines += ["", f"Memory: {report['memory']}.", "", f"Timing: {report['timing']}.", "",
              f"Note: {report['torchmeta_note']}."]
    for name, rows in report["sweeps"].items():
        lines += ["", f"### sweep {name}", "", "| impl | " + name + " | median ms/step | tasks/s | peak mem MiB (+growth) "
                  "| speed-up vs loop |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r.get("status") == "ok":
                lines.append(f"| {r['impl']} | {r['value']} | {r['median_ms']:.1f} | {r['tasks_per_s']:.1f} | "
                             f"{_mem(r)} | {_f(r.get('speedup_vs_loop'), '{:.2f}x')} |")
            else:
                lines.append(f"| {r['impl']} | {r['value']} | {r.get('status')}: {r.get('note')} | | | |")
        lines += ["", f"![sweep {name}](sweep-{name}.png)"]
    return "\n".join(lines) + "\n"


def plot_sweep(name: str, rows: List[Dict[str, Any]], out_png: Path) -> Path:
    """ms/step and peak memory vs the swept value, one line per impl (log scales where values span >= 8x)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    for impl in impls:
        pts = [(r["value"], r["median_ms"], r.get("p10_ms"), r.get("p90_ms"), r.get("peak_mem_mb"))
               for r in rows if r["impl"] == impl and r.get("status") == "ok"]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        line, = ax_t.plot(xs, [p[1] for p in pts], marker="o", label=impl)
        ax_t.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=line.get_color(), alpha=0.15)
        if all(p[4] is not None for p in pts):
            ax_m.plot(xs, [p[4] for p in pts], marker="o", label=impl, color=line.get_color())
    values = sorted({r["value"] for r in rows})
    for ax in (ax_t, ax_m):
        if values and values[0] > 0 and values[-1] / values[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(name)
        ax.set_xticks(values)
        ax.set_xticklabels([str(v) for v in values])
        ax.grid(True, alpha=0.3, which="both")
        ax.legend()
    ax_t.set_yscale("log")
    ax_t.set_ylabel("ms per meta-step (median, p10–p90 band)")
    ax_m.set_ylabel("peak memory (MiB)")
    ax_t.set_title(f"time per meta-step vs {name}")
    ax_m.set_title(f"peak memory vs {name}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)

__all__ = ["RunRecord", "load_run_record", "plot_learning_curves", "build_report", "markdown_report",
           "html_report", "bench_markdown", "plot_sweep"]
