"""Run directories read for reporting: each run's metrics, evaluations and its comparison with published numbers.

`load_run_record(run_dir)` reads one run directory (config.json, metrics.jsonl, run.json and every
``eval-*.json``) into a `RunRecord`; `load_run_records` reads several.  Each record is compared with the
published number of its setting (`recipes.find_published`) and with the recipe the run names
(``config.recipe``): on the test evaluation whose protocol matches the recipe's (its ways and shots; then
its query count, a current result and the best checkpoint are preferred), listing every recipe setting in
which the run differs.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import ExperimentConfig
from .errors import ConfigError
from .fileio import read_json
from .recipes import Recipe, find_published, load_recipe
from .rundir import METRICS_FILE, RUN_INFO_FILE, Evaluation, eval_command, list_evaluations, load_config

#: run.json's "accuracy_unit" when metrics.jsonl holds training accuracy in %; older runs hold fractions
PERCENT = "%"
#: preference among evaluations of the same protocol
STATUS_RANK = {"current": 2, "unverified": 1, "stale": 0}
Shape = Tuple[int, int, int]  # ways, shots, queries per class


# ------------------------------------------------------------------------------ formatting
def same_value(ours: Any, theirs: Any) -> bool:
    """Equal settings; numbers compared with a relative tolerance (0.001 == 1e-3)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if number(ours) and number(theirs):
        return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12)
    return ours == theirs


def shape_label(shape: Sequence[Any]) -> str:
    """(5, 1, 15) -> '5-way 1-shot, 15 queries/class'."""
    ways, shots, queries = shape
    return f"{ways}-way {shots}-shot, {queries} {'query' if queries == 1 else 'queries'}/class"


def checkpoint_of(protocol: Dict[str, Any]) -> Tuple[str, Optional[int]]:
    """(name, step) of the evaluated checkpoint; older files only have 'best (step 20)'."""
    text = str(protocol.get("checkpoint", "?"))
    name = protocol.get("checkpoint_name") or text.split()[0]
    step = protocol.get("checkpoint_step")
    if step is None:
        found = re.search(r"step (\d+)", text)
        step = int(found.group(1)) if found else None
    return name, step


# ------------------------------------------------------------------------------ loading
@dataclass
class Difference:
    """One recipe setting this run does not share; `source`: where the run's value comes from."""
    setting: str
    ours: Any
    theirs: Any
    #: 'evaluation' (the compared evaluation's protocol) | 'config' (the run's config.json) | 'metrics'
    #: (the steps metrics.jsonl logs: a run the time budget or a stop ended before its --iterations)
    source: str


@dataclass
class Comparison:
    """The run against one recipe: the evaluation compared (if any) and every setting that differs."""
    recipe: Recipe
    role: str
    evaluation: Optional[Evaluation]
    differences: List[Difference]
    missing: str = ""  # why nothing is compared, with the command that would make it possible

    @property
    def difference_pp(self) -> Optional[float]:
        """Our accuracy minus the published one, in percentage points."""
        if self.evaluation is None:
            return None
        return float(self.evaluation.result["mean"]) - float(self.recipe.reported_accuracy)


@dataclass
class RunRecord:
    """What a report needs from one run directory (training accuracy always in %)."""
    path: Path
    name: str
    config: ExperimentConfig  # resolved
    train: List[Dict[str, Any]] = field(default_factory=list)
    val: List[Dict[str, Any]] = field(default_factory=list)
    evaluations: List[Evaluation] = field(default_factory=list)
    run_info: Dict[str, Any] = field(default_factory=dict)
    comparisons: List[Comparison] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def train_shape(self) -> Shape:
        c = self.config
        return c.train_ways, c.train_shots, c.train_queries

    @property
    def eval_shape(self) -> Shape:
        t = self.config.task
        return t.ways, t.shots, t.queries

    @property
    def steps(self) -> int:
        return int(self.train[-1]["step"]) if self.train else 0

    @property
    def stale_count(self) -> int:
        return sum(ev.stale for ev in self.evaluations)

    def setting(self) -> str:
        c = self.config
        return f"{c.algo_label} {c.data.dataset}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_row_problem(row: Any) -> Optional[str]:
    """Why a parsed metrics.jsonl line is not a metrics row (None: it is one): an object with a numeric
    'step', text 'kind' and numbers for every other value."""
    if not isinstance(row, dict):
        return f"it is {type(row).__name__}, not a JSON object"
    if not _number(row.get("step")):
        return f"its step is {row.get('step')!r}, not a number"
    if not isinstance(row.get("kind", ""), str):
        return f"its kind is {row['kind']!r}, not text"
    bad = next((k for k, v in row.items() if k != "kind" and not _number(v)), None)
    return None if bad is None else f"its {bad} is {row[bad]!r}, not a number"


def read_metrics(path: Path, accuracy_scale: float) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(training rows with accuracy × `accuracy_scale`, validation rows) of a metrics.jsonl.

    A damaged line (not UTF-8, not JSON, not a row of numbers) is a one-line ConfigError naming the
    file and the line."""
    train: List[Dict[str, Any]] = []
    val: List[Dict[str, Any]] = []
    if not path.is_file():
        return train, val
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}; check that you may read it") from None
    fix = "delete that line, or restore the file from a copy of the run"
    for n, data in enumerate(raw.splitlines(), 1):
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: line {n} is not UTF-8 text; the metrics log is damaged: {fix}") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}: line {n} is not JSON; the metrics log is damaged: {fix}") from None
        problem = metrics_row_problem(row)
        if problem is not None:
            raise ConfigError(f"{path}: line {n} is not a metrics row ({problem}); the metrics log is damaged: "
                              f"{fix}")
        if row.get("kind") == "val":
            val.append(row)
        else:
            train.append({**row, "accuracy": row["accuracy"] * accuracy_scale} if "accuracy" in row else row)
    return train, val


def reference_recipes(config: ExperimentConfig) -> Tuple[List[Tuple[Recipe, str]], List[str]]:
    """([(recipe, role)], notes): the published setting of the run and the recipe it names."""
    found: Dict[str, Tuple[Recipe, List[str]]] = {}
    notes: List[str] = []
    published = find_published(config.flat())
    if published is not None:
        found[published.name] = (published, ["published number for this setting"])
    if config.recipe:
        try:
            named = load_recipe(config.recipe)
        except ConfigError:
            notes.append(f"config.json names recipe `{config.recipe}`, which this l2l-app does not know")
        else:
            found.setdefault(named.name, (named, []))[1].append(f"the recipe this run names: --recipe {named.name}")
    return [(recipe, "; ".join(roles)) for recipe, roles in found.values()], notes


def recipe_episodes(recipe: Recipe, config: ExperimentConfig) -> Dict[str, int]:
    """{ways, shots, queries} of the recipe's test episodes (the run's where the recipe sets none)."""
    return {k: recipe.settings.get(k, getattr(config.task, k)) for k in ("ways", "shots", "queries")}


def pick_evaluation(evaluations: Sequence[Evaluation], recipe: Recipe,
                    config: ExperimentConfig) -> Optional[Evaluation]:
    """The test evaluation at the recipe's ways/shots; then its query count, a current result, the
    best checkpoint and more episodes are preferred.  None when there is no such evaluation."""
    want = recipe_episodes(recipe, config)
    candidates = [ev for ev in evaluations if ev.protocol.get("split") == "test"
                  and all(ev.protocol.get(k) == want[k] for k in ("ways", "shots"))]

    def preference(ev: Evaluation) -> Tuple[bool, int, bool, int]:
        p = ev.protocol
        return (p.get("queries") == want["queries"], STATUS_RANK.get(ev.status, 0),
                checkpoint_of(p)[0] == "best", int(p.get("episodes") or 0))
    return max(candidates, key=preference, default=None)


def protocol_differences(config: ExperimentConfig, recipe: Recipe,
                         evaluation: Optional[Evaluation]) -> List[Difference]:
    """Every recipe setting the run does not share.  The run's value is the evaluation's for the
    settings its protocol records (ways, shots, queries, test_inner_steps, ...), else the run's
    resolved config's."""
    trained = config.flat()
    protocol = evaluation.protocol if evaluation is not None else {}
    out = []
    for name, theirs in recipe.settings.items():
        source = "evaluation" if name in protocol else "config"
        ours = protocol[name] if source == "evaluation" else trained.get(name)
        if not same_value(ours, theirs):
            out.append(Difference(name, ours, theirs, source))
    return out


def compare(run_dir: Path, config: ExperimentConfig, evaluations: Sequence[Evaluation], recipe: Recipe,
            role: str, trained_steps: Optional[int] = None) -> Comparison:
    """The run against `recipe`: the matching evaluation and every setting that differs; a run that
    trained fewer steps than the recipe's iterations (`trained_steps`, from its metrics) differs in
    those steps, even where its config asked for as many or more (a time budget or a stop ended it)."""
    evaluation = pick_evaluation(evaluations, recipe, config)
    missing = ""
    if evaluation is None:
        want = recipe_episodes(recipe, config)
        command = eval_command(run_dir, {"split": "test", "checkpoint_name": "best", **want,
                                         "episodes": config.eval.episodes, "episode_seed": config.eval.eval_seed})
        missing = (f"no test evaluation at {want['ways']}-way {want['shots']}-shot, so no accuracy is compared; "
                   f"evaluate with `{command}`")
    differences = protocol_differences(config, recipe, evaluation)
    wanted = recipe.settings.get("iterations")
    asked = next((d.ours for d in differences if d.setting == "iterations"), wanted)
    if trained_steps is not None and wanted is not None and trained_steps < wanted and asked != trained_steps:
        # the steps trained, not the --iterations asked for (as many as the recipe's or more, for a
        # run a time budget ended): what the accuracy comes from
        differences = [d for d in differences if d.setting != "iterations"]
        differences.append(Difference("iterations", trained_steps, wanted, "metrics"))
    return Comparison(recipe, role, evaluation, differences, missing)


def load_run_record(run_dir: Path | str) -> RunRecord:
    """Read config.json, metrics.jsonl, run.json and every evaluation of a run directory.

    Raises ConfigError (one line) when `run_dir` is not an l2l-app run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; pass run directories written by `l2l-app train --out`")
    config = load_config(run_dir)
    run_info: Dict[str, Any] = {}
    notes: List[str] = []
    if (run_dir / RUN_INFO_FILE).is_file():
        try:
            run_info = read_json(run_dir / RUN_INFO_FILE, "run info")
        except ConfigError as exc:  # the report still has everything else to show
            notes.append(f"{exc}; engine, device and environment are unknown")
    scale = 1.0 if run_info.get("accuracy_unit") == PERCENT else 100.0
    train, val = read_metrics(run_dir / METRICS_FILE, scale)
    evaluations = list_evaluations(run_dir)
    references, recipe_notes = reference_recipes(config)
    record = RunRecord(run_dir, run_dir.resolve().name, config, train, val, evaluations, run_info,
                       notes=notes + recipe_notes)
    record.comparisons = [compare(run_dir, config, evaluations, recipe, role, record.steps)
                          for recipe, role in references]
    return record


def load_run_records(run_dirs: Sequence[Path | str | RunRecord]) -> List[RunRecord]:
    """`load_run_record` of each run directory (a `RunRecord` is taken as it is), each run once however
    often and in whatever form it is named; runs with the same folder name are named by their path.
    Raises ConfigError when none is given."""
    if not run_dirs:
        raise ConfigError("no run directories given; pass one or more `l2l-app train --out` directories")
    distinct: Dict[Path, Path | str | RunRecord] = {}
    for d in run_dirs:
        distinct.setdefault(Path(d.path if isinstance(d, RunRecord) else d).resolve(), d)
    records = [d if isinstance(d, RunRecord) else load_run_record(d) for d in distinct.values()]
    names = [r.name for r in records]
    for r in records:  # disambiguate runs with the same folder name
        if names.count(r.name) > 1:
            r.name = str(r.path)
    return records


__all__ = ["RunRecord", "Comparison", "Difference", "load_run_record", "load_run_records", "protocol_differences",
           "pick_evaluation", "shape_label", "checkpoint_of"]
