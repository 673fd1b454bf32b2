"""`l2l-app`: the command line.  Parse, build a config, call one library function, print.

Every library error becomes a one-line `error: ...` message on stderr and exit code 2
(bad input).  A run stopped by a NaN exits 1; one stopped by SIGINT/SIGTERM exits
128 + signal number after writing a checkpoint.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import click

from .errors import L2LAppError

# (flat config name, click type, help).  Defaults live in config.py / recipes, so every
# option defaults to None here and only flags the user gave override anything.
TRAIN_OPTIONS: List[Tuple[str, Any, str]] = [
    ("algo", str, "protonet | maml | reptile"),
    ("dataset", str, "omniglot | miniimagenet"),
    ("data_root", str, "dataset folder (zips or extracted folders); default: bundled Omniglot"),
    ("sampler", str, "episode sampler: auto | l2l (learn2learn TaskDataset) | tensor (on-device)"),
    ("ways", int, "classes per test/validation episode"),
    ("shots", int, "support images per class (test/validation)"),
    ("queries", int, "query images per class (test/validation)"),
    ("train_ways", int, "classes per training episode (default: --ways)"),
    ("train_shots", int, "support images per class in training (default: --shots)"),
    ("train_queries", int, "query images per class in training (default: --queries)"),
    ("backbone", str, "conv4 | conv4-strided"),
    ("hidden", int, "filters per conv layer"),
    ("inner_lr", float, "MAML/Reptile inner-loop learning rate"),
    ("inner_steps", int, "inner-loop steps in training"),
    ("test_inner_steps", int, "inner-loop steps at evaluation (default: --inner-steps)"),
    ("inner_batch", int, "Reptile inner mini-batch size"),
    ("inner_optimizer", str, "Reptile inner optimiser: adam (beta1=0) | sgd"),
    ("meta_lr", float, "meta learning rate (Adam; Reptile's initial epsilon)"),
    ("meta_lr_final", float, "Reptile's final epsilon (linear annealing; default 0)"),
    ("meta_batch", int, "tasks per meta-step"),
    ("iterations", int, "meta-steps"),
    ("grad_clip", float, "clip the meta-gradient norm"),
    ("lr_decay_every", int, "multiply the meta lr by --lr-decay every N steps"),
    ("lr_decay", float, "meta lr decay factor"),
    ("seed", int, "random seed"),
    ("device", str, "auto | cpu | cuda | cuda:N"),
    ("engine", str, "auto | loop (learn2learn, one task at a time) | batched (torch.func)"),
    ("chunk_size", int, "batched engine: tasks per vmap chunk"),
    ("max_memory", float, "batched engine: memory budget in GiB that picks the chunk size"),
    ("val_every", int, "validate every N steps"),
    ("val_episodes", int, "validation episodes"),
    ("checkpoint_every", int, "write checkpoints/last.pt every N steps"),
    ("checkpoint_minutes", float, "also write it every M minutes"),
    ("time_budget", float, "stop after M minutes of training (a checkpoint is written)"),
]
TRAIN_FLAGS = [
    ("first_order", "--first-order/--second-order", "MAML: first-order approximation (FOMAML)"),
    ("transductive", "--transductive/--no-transductive", "batch-norm statistics over all queries at once"),
    ("compile", "--compile/--no-compile", "batched engine: torch.compile the meta-loss"),
    ("tf32", "--tf32/--no-tf32", "allow TF32 convolutions on GPUs (default off: exact fp32)"),
    ("skip_nonfinite", "--skip-nonfinite/--stop-nonfinite", "skip steps whose loss is NaN/inf"),
    ("skip_bad_images", "--skip-bad-images/--no-skip-bad-images", "skip unreadable images (counted and reported)"),
]


class OneLineErrors(click.Group):
    """A click group that prints every error as one line and exits 2 (never a traceback)."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.UsageError as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        except ExitWith as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.code)
        except L2LAppError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


class ExitWith(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_options(options: List[Tuple[str, Any, str]], flags=()) -> Callable:
    def decorate(fn: Callable) -> Callable:
        for name, typ, help_text in reversed(options):
            fn = click.option("--" + name.replace("_", "-"), name, type=typ, default=None, help=help_text)(fn)
        for name, decl, help_text in reversed(list(flags)):
            fn = click.option(decl, name, default=None, help=help_text)(fn)
        return fn
    return decorate


@click.group(cls=OneLineErrors)
@click.version_option(package_name="l2l_app")
def cli() -> None:
    """Few-shot image classification (ProtoNet, MAML, Reptile) on learn2learn."""


def _build_config(recipe: str | None, overrides: Dict[str, Any]):
    from .config import ExperimentConfig, with_overrides
    from .recipes import load_recipe
    config = ExperimentConfig()
    if recipe:
        config = with_overrides(config, {**load_recipe(recipe).settings, "recipe": recipe})
    return with_overrides(config, overrides)


@cli.command()
@click.option("--recipe", default=None, help="start from a published preset (see `l2l-app recipes`)")
@add_options(TRAIN_OPTIONS, TRAIN_FLAGS)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="run directory to create")
@click.option("--resume", "resume", type=click.Path(path_type=Path), default=None,
              help="continue the run in this directory from its last checkpoint")
@click.option("--overwrite", is_flag=True, help="replace an existing run directory")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train(recipe, out, resume, overwrite, quiet, **overrides) -> None:
    """Meta-train a model into a run directory (config.json, metrics.jsonl, checkpoints/)."""
    from .trainer import Interrupted, NonFiniteLossError, Trainer, resume_config
    given = {k: v for k, v in overrides.items() if v is not None}
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise click.UsageError("--resume RUN_DIR continues that directory; drop --out")
        if recipe:
            raise click.UsageError("cannot change --recipe when resuming")
        config, run_dir = resume_config(resume, given), Path(resume)
    else:
        if out is None:
            raise click.UsageError("--out RUN_DIR is required (or --resume RUN_DIR)")
        config, run_dir = _build_config(recipe, given), Path(out)
    trainer = Trainer(config, run_dir, resume=resume is not None, overwrite=overwrite, progress=not quiet)
    try:
        summary = trainer.fit()
    except NonFiniteLossError as exc:
        raise ExitWith(str(exc), 1) from None
    except Interrupted as exc:
        raise ExitWith(str(exc), 128 + exc.signum) from None
    best = "n/a" if summary.best_val_accuracy is None else \
        f"{summary.best_val_accuracy:.2f}% at step {summary.best_step}"
    note = " (time budget reached)" if summary.stopped_by_budget else ""
    click.echo(f"trained {summary.steps} steps in {summary.seconds:.1f}s{note} "
               f"[{trainer.engine} engine, {trainer.sampler} sampler, {trainer.device}]; "
               f"best validation accuracy {best}; run: {run_dir}")
    compile_seconds = getattr(trainer.learner, "compile_seconds", None)
    if compile_seconds is not None:
        click.echo(f"torch.compile: first call (compilation included) took {compile_seconds:.1f}s")
    if summary.skipped_steps:
        click.echo(f"skipped {summary.skipped_steps} steps with a non-finite loss")
    if summary.bad_images:
        click.echo(f"skipped {summary.bad_images} unreadable images (listed in {run_dir / 'run.json'})")


@cli.command("eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="a train --out directory")
@click.option("--episodes", type=int, default=None, help="test episodes (default 1000)")
@click.option("--split", default="test", help="train | val | test")
@click.option("--checkpoint", default="best", help="best (validation) | last")
@click.option("--seed", type=int, default=None, help="episode seed (default: the run's eval seed)")
@click.option("--device", default=None, help="auto | cpu | cuda")
@click.option("--engine", default=None, help="auto | loop | batched")
@click.option("--ways", type=int, default=None, help="episode classes (default: the run's --ways)")
@click.option("--shots", type=int, default=None, help="support images per class (default: the run's)")
@click.option("--queries", type=int, default=None, help="query images per class (default: the run's)")
@click.option("--quiet", is_flag=True)
def eval_cmd(run_dir, episodes, split, checkpoint, seed, device, engine, ways, shots, queries, quiet) -> None:
    """Evaluate a run: mean accuracy and 95% CI over fixed-seed episodes."""
    from .trainer import evaluate_run
    result = evaluate_run(run_dir, split=split, episodes=episodes, checkpoint=checkpoint, seed=seed,
                          device=device, engine=engine, progress=not quiet, ways=ways, shots=shots,
                          queries=queries)
    p = result.protocol
    click.echo(f"{p['dataset']} {p['split']} {p['ways']}-way {p['shots']}-shot ({p['queries']} queries/class, "
               f"{p['checkpoint']} checkpoint, {p['batchnorm']}): accuracy {result}")
    click.echo(f"written to {Path(run_dir) / p['file']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def recipes(as_json) -> None:
    """List the published presets: source, setting and the accuracy the source reports."""
    from .recipes import load_recipe, recipe_names
    rows = [load_recipe(n) for n in recipe_names()]
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    width = max(len(r.name) for r in rows)
    click.echo(f"{'recipe':<{width}}  {'setting':<7}  {'published':<15}  source")
    for r in rows:
        ci = f" ± {r.reported_ci95}" if r.reported_ci95 is not None else ""
        s = r.settings
        author, year = r.source.split(",")[0], r.source.split("(")[1].split(")")[0]
        click.echo(f"{r.name:<{width}}  {str(s['ways']) + 'w' + str(s['shots']) + 's':<7}  "
                   f"{str(r.reported_accuracy) + ci + '%':<15}  {author} {year}, {r.table}")


@cli.command()
@click.option("--algo", default="maml", show_default=True, help="maml | protonet | reptile")
@click.option("--dataset", default="omniglot", show_default=True, help="omniglot | miniimagenet (train split)")
@click.option("--data-root", default=None, help="dataset folder (default: bundled Omniglot)")
@click.option("--ways", type=int, default=5, show_default=True)
@click.option("--shots", type=int, default=1, show_default=True)
@click.option("--queries", type=int, default=15, show_default=True)
@click.option("--meta-batch", type=int, default=32, show_default=True, help="tasks per meta-step")
@click.option("--inner-steps", type=int, default=1, show_default=True)
@click.option("--inner-lr", type=float, default=None, help="default: the config default")
@click.option("--first-order/--second-order", default=False, help="FOMAML instead of MAML")
@click.option("--hidden", type=int, default=64, show_default=True, help="filters per conv layer")
@click.option("--backbone", default="conv4", show_default=True)
@click.option("--impl", "impls", default="loop,torchmeta,batched,batched-compiled", show_default=True,
              help="comma-separated: loop | torchmeta | batched | batched-compiled")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--warmup", type=int, default=None, help="untimed calls after the first (default 2 on CPU, 5 on GPU)")
@click.option("--repeats", type=int, default=None, help="timed calls (default 5 on CPU, 30 on GPU)")
@click.option("--with-sampler/--no-sampler", default=False,
              help="also time end to end: each step draws its meta-batch (tensor sampler for batched, "
                   "learn2learn TaskDataset otherwise)")
@click.option("--sweep", "sweeps", multiple=True, help="meta-batch=1,4,16,32,64 or inner-steps=1,2,5,10 (repeatable)")
@click.option("--synthetic", is_flag=True, help="random images of the dataset's shape instead of real data")
@click.option("--tf32/--no-tf32", default=False, help="allow TF32 on CUDA (default off)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for bench.json, bench.md, plots")
def bench(out, impls, sweeps, **settings) -> None:
    """Time one meta-training step of each implementation on the same weights and episodes."""
    from .bench import BenchSettings, parse_impls, parse_sweep, run_bench
    s = BenchSettings(impls=parse_impls(impls), sweeps=dict(parse_sweep(t) for t in sweeps), **settings)
    result = run_bench(s, out)
    for r in result["results"]:
        if r.get("status") == "ok":
            up = r.get("speedup_vs_loop")
            click.echo(f"{r['impl']:<17} {r['mode']:<12} {r['median_ms']:10.1f} ms/step  "
                       f"{r['tasks_per_s']:8.1f} tasks/s" + (f"  {up:.2f}x vs loop" if up else ""))
        else:
            click.echo(f"{r['impl']:<17} {r['mode']:<12} {r.get('status')}: {r.get('note')}")
    click.echo(f"written to {Path(out) / 'bench.json'} and {Path(out) / 'bench.md'}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for report.md/.html and PNGs")
def report(run_dirs, out) -> None:
    """Markdown + HTML report of runs: test accuracy vs the published number, learning curves, configs."""
    from .report import build_report
    paths = build_report(run_dirs, out)
    click.echo(f"written {paths['md']} and {paths['html']}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
