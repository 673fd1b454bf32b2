"""Reports of run directories: Markdown + static HTML with learning curves, every evaluation, published numbers.

`build_report(run_dirs, out_dir, overwrite=False)` writes ``report.md`` (the PNG referenced relatively),
``report.html`` (the same content, the PNG embedded: one file to share) and
``learning_curves.png``.  For each run the report shows

- every evaluation (each ``eval-*.json``, `rundir.list_evaluations`) with its protocol, mean ± 95% CI
  and freshness: one whose checkpoint changed since is marked STALE, with the reason and the
  command that refreshes it;
- the comparison with the published number of its setting (`recipes.find_published`) and with the
  recipe the run names (``config.recipe``).  It is made on the test evaluation whose protocol
  matches the recipe's (its ways and shots; then its query count, a current result and the best
  checkpoint are preferred), and every recipe setting in which the run differs is listed beside it;
- its resolved configuration ("n/a": a setting that does not apply to the algorithm).

Both documents are rendered from one list of blocks (`report_blocks`), so they say the same thing.
The runs are read by `run_records.load_run_records`; the learning curves are drawn by
`plots.plot_learning_curves`, which can be used on its own.  `bench_markdown` renders ``bench.md``
for `bench.run_bench`.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .config import flag
from .fileio import check_output_folder, staged_output
from .plots import plot_learning_curves
from .recipes import Recipe
from .run_records import Comparison, RunRecord, checkpoint_of, load_run_records, shape_label
from .rundir import CONFIG_FILE, Evaluation, check_outside, checkpoint_path, eval_command

NA = "n/a"
CURVES_PNG = "learning_curves.png"


# ------------------------------------------------------------------------------ formatting
def fmt_value(value: Any) -> str:
    """A setting's value for a table: None is 'n/a' (does not apply), floats without noise."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_accuracy(mean: Any, ci: Any = None) -> str:
    if mean is None:
        return "–"
    return f"{float(mean):.2f} ± {float(ci):.2f}" if ci is not None else f"{float(mean):.2f}"


def checkpoint_label(protocol: Dict[str, Any]) -> str:
    name, step = checkpoint_of(protocol)
    return name if step is None else f"{name} (step {step})"


def eval_shape_label(protocol: Dict[str, Any]) -> str:
    """'5-way 1-shot, 15 queries/class' of an evaluation's protocol."""
    return shape_label([protocol.get(k, "?") for k in ("ways", "shots", "queries")])


def citation(recipe: Recipe) -> str:
    """'Snell et al. (2017), Table 1' from 'Snell, Swersky & Zemel (2017), Prototypical ...'."""
    authors = recipe.source.split(" (")[0]
    year = re.search(r"\((\d{4})\)", recipe.source)
    first = authors.split(",")[0].split(" & ")[0]
    who = first + (" et al." if first != authors else "")
    return f"{who} ({year.group(1)}), {recipe.table}" if year else f"{who}, {recipe.table}"


def adaptation_label(protocol: Dict[str, Any]) -> str:
    """'3 steps, lr 0.4' for algorithms that adapt at test time; n/a otherwise."""
    if protocol.get("test_inner_steps") is None:
        return NA
    steps = protocol["test_inner_steps"]
    lr = f"learned lr (from {fmt_value(protocol.get('inner_lr'))})" if protocol.get("inner_lr_learned") \
        else f"lr {fmt_value(protocol.get('inner_lr'))}"
    return f"{steps} step{'' if steps == 1 else 's'}, {lr}"


#: how a non-current evaluation is marked (Markdown bold; the HTML colours the cell)
STATUS_MARK = {"stale": "**STALE**", "unverified": "**unverified**"}


def status_mark(ev: Evaluation) -> str:
    """'' for a current evaluation, else its mark (**STALE**: its checkpoint changed or is gone)."""
    return STATUS_MARK.get(ev.status, "") if ev.stale else ""


def freshness(ev: Evaluation) -> str:
    """'current', or '**STALE**: <reason>' / '**unverified**: <reason>'."""
    return f"{status_mark(ev)}: {ev.reason}" if ev.stale else "current"


# ------------------------------------------------------------------------------ report content
@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    """A paragraph; `code` and **bold** are the only inline markup."""
    text: str


@dataclass
class Table:
    header: List[str]
    rows: List[List[str]]
    collapsed: Optional[str] = None  # HTML: inside a closed <details> with this summary


@dataclass
class Image:
    alt: str
    path: Path


Block = Union[Heading, Para, Table, Image]


def _compared_cell(comp: Comparison) -> str:
    ev = comp.evaluation
    if ev is None:
        return "none"
    p = ev.protocol
    return f"`{ev.path.name}` ({p.get('split')}, {checkpoint_label(p)}, {eval_shape_label(p)}, {p.get('episodes')} ep.)"


def _ours_cell(comp: Comparison) -> str:
    ev = comp.evaluation
    if ev is None:
        return "not evaluated"
    mark = status_mark(ev)
    return fmt_accuracy(ev.result.get("mean"), ev.result.get("ci95")) + (f" {mark}" if mark else "")


def _published_cell(recipe: Recipe) -> str:
    return f"{fmt_accuracy(recipe.reported_accuracy, recipe.reported_ci95)} ({citation(recipe)})"


def _diff_cell(comp: Comparison) -> str:
    d = comp.difference_pp
    return "–" if d is None else f"{d:+.2f} pp"


def _differences_cell(comp: Comparison) -> str:
    if not comp.differences:
        return "none"
    return f"{len(comp.differences)}: " + ", ".join(d.setting for d in comp.differences)


def _best_val(rec: RunRecord) -> str:
    best = max((v["val_accuracy"] for v in rec.val), default=None)
    return "–" if best is None else f"{best:.2f}"


def _evaluations_cell(rec: RunRecord) -> str:
    n = len(rec.evaluations)
    return f"{n} ({rec.stale_count} not current)" if rec.stale_count else str(n)


SUMMARY_HEADER = ["run", "setting", "training episodes", "steps", "best val acc (%)", "evaluations",
                  "recipe", "compared evaluation", "test acc ± 95% CI (%)", "published (%)", "difference",
                  "protocol differences"]


def summary_rows(records: Sequence[RunRecord]) -> List[List[str]]:
    """One row per run and recipe it is compared with (one row when there is none)."""
    rows = []
    for rec in records:
        run = [rec.name, rec.setting(), shape_label(rec.train_shape), str(rec.steps), _best_val(rec),
               _evaluations_cell(rec)]
        if not rec.comparisons:
            rows.append(run + ["no published number for this setting", "–", "–", "–", "–", "–"])
        for comp in rec.comparisons:
            rows.append(run + [f"`{comp.recipe.name}`", _compared_cell(comp), _ours_cell(comp),
                               _published_cell(comp.recipe), _diff_cell(comp), _differences_cell(comp)])
    return rows


EVAL_HEADER = ["file", "split", "episodes", "# episodes", "episode seed", "checkpoint", "test-time adaptation",
               "accuracy ± 95% CI (%)", "freshness", "refresh with"]


def evaluation_rows(rec: RunRecord) -> List[List[str]]:
    rows = []
    for ev in rec.evaluations:
        p, r = ev.protocol, ev.result
        rows.append([f"`{ev.path.name}`", str(p.get("split", "?")), eval_shape_label(p), fmt_value(p.get("episodes")),
                     fmt_value(p.get("episode_seed")), checkpoint_label(p), adaptation_label(p),
                     fmt_accuracy(r.get("mean"), r.get("ci95")), freshness(ev),
                     f"`{ev.refresh}`" if ev.stale else ""])
    return rows


def comparison_blocks(rec: RunRecord, comp: Comparison) -> List[Block]:
    recipe = comp.recipe
    blocks: List[Block] = [
        Heading(f"against `{recipe.name}`", 4),
        Para(f"`{recipe.name}` ({comp.role}): {_published_cell(recipe)}; their protocol: {recipe.protocol}.")]
    if comp.evaluation is None:
        blocks.append(Para(f"This run: {comp.missing}."))
    else:
        ev = comp.evaluation
        note = f" — {freshness(ev)}; refresh with `{ev.refresh}`" if ev.stale else ""
        blocks.append(Para(f"This run: {_ours_cell(comp)} on `{ev.path.name}` ({checkpoint_label(ev.protocol)}, "
                           f"{eval_shape_label(ev.protocol)}, {ev.protocol.get('episodes')} episodes){note}; "
                           f"difference {_diff_cell(comp)}."))
    if not comp.differences:
        blocks.append(Para("Protocol: every setting of the recipe matches this run."))
        return blocks
    caveat = ", so the difference above is not like for like" if comp.evaluation is not None else ""
    blocks.append(Para(f"**Protocol differs in {len(comp.differences)} setting(s)**{caveat}:"))
    blocks.append(Table(["setting", "this run", "recipe", "this run's value from"],
                        [[f"`{flag(d.setting)}`", fmt_value(d.ours), fmt_value(d.theirs),
                          DIFFERENCE_SOURCES.get(d.source, CONFIG_FILE)]
                         for d in comp.differences]))
    return blocks


#: where a run's value of a differing setting comes from, as the report says it
DIFFERENCE_SOURCES = {"evaluation": "the compared evaluation", "config": CONFIG_FILE,
                      "metrics": "the steps it trained (metrics.jsonl)"}


def _run_info_line(rec: RunRecord) -> Optional[str]:
    info = rec.run_info
    if not info:
        return None
    env = info.get("environment", {})
    return (f"Run: engine {fmt_value(info.get('engine'))}, sampler {fmt_value(info.get('sampler'))}, device "
            f"{fmt_value(info.get('device'))}; torch {fmt_value(env.get('torch'))}, learn2learn "
            f"{fmt_value(env.get('learn2learn'))}, git {fmt_value(env.get('git'))}.")


def config_rows(rec: RunRecord) -> List[List[str]]:
    """The resolved configuration, one setting per row; 'n/a' where it does not apply."""
    flat = {"recipe": rec.config.recipe, **rec.config.flat()}
    return [[name, fmt_value(value)] for name, value in flat.items()]


def run_blocks(rec: RunRecord) -> List[Block]:
    blocks: List[Block] = [Heading(rec.name), Para(f"Directory: `{rec.path}`")]
    info = _run_info_line(rec)
    if info:
        blocks.append(Para(info))
    blocks += [Para(note) for note in rec.notes]
    blocks.append(Heading("Comparison with published results", 3))
    if not rec.comparisons:
        blocks.append(Para("No published number for this setting and no recipe named."))
    for comp in rec.comparisons:
        blocks += comparison_blocks(rec, comp)
    blocks.append(Heading(f"Evaluations ({len(rec.evaluations)})", 3))
    if rec.evaluations:
        blocks.append(Table(EVAL_HEADER, evaluation_rows(rec)))
    else:
        c = rec.config
        name = "best" if checkpoint_path(rec.path, "best").is_file() else "last"  # no validation yet: no best
        command = eval_command(rec.path, {"split": c.eval.split, "checkpoint_name": name, "ways": c.task.ways,
                                          "shots": c.task.shots, "queries": c.task.queries,
                                          "episodes": c.eval.episodes, "episode_seed": c.eval.eval_seed})
        blocks.append(Para(f"Not evaluated yet: `{command}`"))
    blocks.append(Heading("Configuration (resolved; n/a: does not apply)", 3))
    blocks.append(Table(["setting", "value"], config_rows(rec), collapsed="all settings"))
    return blocks


INTRO = ("Accuracies are means over fixed-seed episodes with their 95% confidence interval (1.96·std/√n); "
         "*difference* is ours minus the published number, in percentage points, on the test evaluation whose "
         "protocol matches the recipe's. Every recipe setting the run does not share is listed with it. "
         "An evaluation whose checkpoint has changed since is **STALE**.")


def report_blocks(records: Sequence[RunRecord], curves_png: Path) -> List[Block]:
    """The report's content, rendered by `markdown_report` and `html_report`."""
    blocks: List[Block] = [Heading("l2l-app report", 1), Para(INTRO), Table(SUMMARY_HEADER, summary_rows(records)),
                           Heading("Learning curves"), Image("learning curves", Path(curves_png))]
    for rec in records:
        blocks += run_blocks(rec)
    return blocks


# ------------------------------------------------------------------------------ rendering
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_report(blocks: Sequence[Block]) -> str:
    lines: List[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            lines.append(b.text)
        elif isinstance(b, Table):
            lines += ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        elif isinstance(b, Image):
            lines.append(f"![{b.alt}]({b.path.name})")
        lines.append("")
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def _cell_class(text: str) -> str:
    if "**STALE**" in text:
        return "stale"
    if "**unverified**" in text:
        return "unverified"
    if re.fullmatch(r"[+-]\d+\.\d+ pp", text):
        return "num neg" if text.startswith("-") else "num pos"
    return "muted" if text in ("none", "–", "not evaluated", NA) else ""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = []
        for c in row:
            cls = _cell_class(c)
            cells.append(f"<td{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{_inline_html(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    out = f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
    return f"<details><summary>{html.escape(table.collapsed)}</summary>{out}</details>" if table.collapsed else out


CSS = """body{font-family:system-ui,-apple-system,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}.neg{color:#b00}.pos{color:#070}
.muted{color:#888}td.stale{background:#fde8e8;color:#900}td.unverified{background:#fff6dd;color:#7a5600}
h2{border-top:2px solid #ddd;padding-top:.8em;margin-top:2em}h4{margin:1.2em 0 .3em}details{margin:.5em 0}
code{background:#f4f4f4;padding:1px 3px;font-size:12px}img{max-width:100%}"""


def html_report(blocks: Sequence[Block]) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>l2l-app report</title>",
             f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(b.alt)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


#: the files a report writes; report.md or report.html in --out means an earlier report is there
REPORT_FILES = ("report.md", "report.html", CURVES_PNG)


def build_report(run_dirs: Sequence[Path | str], out_dir: Path | str, overwrite: bool = False) -> Dict[str, Path]:
    """Write report.md, report.html and learning_curves.png into `out_dir`; returns their paths.

    Refused before anything is written when `out_dir` is inside a run, cannot be written, or
    (without `overwrite`) already holds a report; an earlier report there is replaced only once
    the new files are written.
    """
    records = load_run_records(run_dirs)
    out_dir = Path(out_dir)
    for rec in records:
        check_outside(out_dir, rec.path, "--out", "the run", example=rec.path.resolve().parent / "report")
    check_output_folder(out_dir, REPORT_FILES[:2], overwrite, "report")
    with staged_output(out_dir) as new:  # the new files first, then each moved over its earlier namesake
        curves = plot_learning_curves(records, new / CURVES_PNG)
        blocks = report_blocks(records, curves)
        (new / "report.md").write_text(markdown_report(blocks))
        (new / "report.html").write_text(html_report(blocks))
    return {"md": out_dir / "report.md", "html": out_dir / "report.html", "png": out_dir / CURVES_PNG}


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
    steps = f", {s['inner_steps']} inner step(s)" if s.get("inner_steps") is not None else ""
    queries = f"{s['queries']} quer{'y' if s['queries'] == 1 else 'ies'}"
    network = f"; {s['backbone']}, {s['hidden']} filters" if s.get("backbone") else ""
    recipe = f" (recipe `{s['recipe']}`: its training step; flags given override it)" if s.get("recipe") else ""
    lines = [f"## l2l-app bench: {s.get('label') or s['algo']} {s['dataset']} {s['ways']}-way {s['shots']}-shot, "
             f"{queries}, meta-batch {s['meta_batch']}{steps}{network}{recipe}", "",
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


__all__ = ["report_blocks", "build_report", "markdown_report", "html_report", "bench_markdown"]
